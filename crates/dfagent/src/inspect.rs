//! `dfagent inspect`: list an image's tree, optionally reading every file through the resolver.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use dfagent_rafs::{FileType, Image};
use dfagent_resolver::{BlobDirTier, Resolver, ResolverConfig};
use sha2::Digest as _;

use crate::listing;

pub fn run(bootstrap: &Path, blob_dir: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let img = Image::open(bootstrap).with_context(|| format!("opening {}", bootstrap.display()))?;
    let mut entries = Vec::new();
    img.walk(|e| {
        entries.push((e.path.clone(), e.inode.clone()));
        Ok(())
    })
    .with_context(|| format!("walking {}", bootstrap.display()))?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));

    let resolver = blob_dir.map(|d| {
        Resolver::standalone(
            vec![Arc::new(BlobDirTier::new(d))],
            ResolverConfig::default(),
        )
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut out = std::io::stdout().lock();
    for (raw_path, inode) in &entries {
        let path = if raw_path.is_empty() {
            ".".to_string()
        } else {
            String::from_utf8_lossy(raw_path).into_owned()
        };
        let mut obj = listing::entry(&img, &path, inode)?;
        if let (Some(resolver), FileType::File) = (&resolver, inode.file_type) {
            let sha = rt.block_on(file_sha256(&img, resolver, inode, &path))?;
            obj.insert("sha256".into(), sha.into());
        }
        use std::io::Write;
        let line = if json {
            listing::to_line(&obj)
        } else {
            human_line(&obj)
        };
        match writeln!(out, "{line}") {
            // The reader went away (`| head`): stop quietly, as command-line tools do.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            r => r?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Read a whole file chunk by chunk through the resolver and hash it.
async fn file_sha256(
    img: &Image,
    resolver: &Resolver,
    inode: &dfagent_rafs::Inode,
    path: &str,
) -> anyhow::Result<String> {
    let mut h = sha2::Sha256::new();
    for c in img
        .chunks(inode, 0, inode.size)
        .with_context(|| format!("file {path}"))?
    {
        let data = resolver.read(&c.chunk).await.with_context(|| {
            format!(
                "file {path}: chunk {} at blob {} offset {}",
                c.chunk.digest, c.chunk.blob, c.chunk.compressed_offset
            )
        })?;
        h.update(&data);
    }
    Ok(hex::encode(h.finalize()))
}

fn human_line(obj: &serde_json::Map<String, serde_json::Value>) -> String {
    let s = |k: &str| {
        obj.get(k)
            .map(|v| v.to_string().trim_matches('"').to_string())
    };
    let mut line = format!(
        "{:<8} {:>7} {:>5}:{:<5} {:>10} {}",
        s("type").unwrap_or_default(),
        s("mode").unwrap_or_default(),
        s("uid").unwrap_or_default(),
        s("gid").unwrap_or_default(),
        s("size").unwrap_or_default(),
        s("path").unwrap_or_default()
    );
    if let Some(t) = s("target") {
        line.push_str(&format!(" -> {t}"));
    }
    if let Some(h) = s("sha256") {
        line.push_str(&format!("  sha256:{h}"));
    }
    line
}
