//! `ttfb` and `cold-read`: the first byte, and then all, of one file through a cold mount
//! (empty store, no prefetch) against plain HTTP range GETs of the same stored byte ranges
//! straight to the registry through the same proxy.

use std::fs::File;
use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use dfagent_bench::http::Conn;
use dfagent_bench::report::{fmt_value, Series, Table};
use dfagent_core::ChunkRef;
use dfagent_rafs::{FileType, Image};
use dfagent_registry::{Registry, RegistryConfig};
use sha2::{Digest, Sha256};

use crate::env::{drop_caches, Env, NYDUS_REPO};
use crate::mount::{Mount, MountSpec};
use crate::outcome::{alternate, Outcome};

const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// The file read: the largest regular file whose chunks are all distinct (so both sides move
/// the same bytes), its chunks, and the image's blob names.
struct Target {
    path: String,
    size: u64,
    chunks: Vec<ChunkRef>,
}

fn pick(image: &Image) -> anyhow::Result<Target> {
    let mut best: Option<(u64, String, u64)> = None;
    image.walk(|e| {
        if e.inode.file_type == FileType::File && e.inode.size > 0 {
            let better = match &best {
                None => true,
                Some((s, p, _)) => {
                    e.inode.size > *s || (e.inode.size == *s && e.path.as_slice() < p.as_bytes())
                }
            };
            if better {
                let chunks = image.chunks(&e.inode, 0, e.inode.size)?;
                let mut d: Vec<_> = chunks.iter().map(|c| c.chunk.digest).collect();
                d.sort();
                d.dedup();
                if d.len() == chunks.len() {
                    best = Some((
                        e.inode.size,
                        String::from_utf8_lossy(&e.path).into_owned(),
                        e.inode.nid,
                    ));
                }
            }
        }
        Ok(())
    })?;
    let Some((size, path, nid)) = best else {
        bail!("the image has no regular file with distinct chunks");
    };
    let inode = image.inode(nid)?;
    let chunks = image
        .chunks(&inode, 0, size)?
        .into_iter()
        .map(|c| c.chunk)
        .collect();
    Ok(Target { path, size, chunks })
}

/// Contiguous stored ranges (blob, start, end) covering `chunks` in file order.
fn ranges(chunks: &[ChunkRef]) -> Vec<(String, u64, u64)> {
    let mut out: Vec<(String, u64, u64)> = Vec::new();
    for c in chunks {
        let blob = c.blob.oci_digest();
        let r = c.blob_range();
        match out.last_mut() {
            Some(last) if last.0 == blob && last.2 == r.start => last.2 = r.end,
            _ => out.push((blob, r.start, r.end)),
        }
    }
    out
}

/// The ttfb / cold-read scenario.
pub fn run(env: &mut Env) -> anyhow::Result<Outcome> {
    let how = env.nydus()?;
    let registry = Registry::new(RegistryConfig::default())?;
    let direct = env.direct(NYDUS_REPO);
    let image = env.rt.block_on(async {
        let img = registry.resolve(&direct).await?;
        let boot = registry.fetch_bootstrap(&img).await?;
        anyhow::Ok(Image::from_bytes(boot)?)
    })?;
    let target = pick(&image)?;
    let ranges = ranges(&target.chunks);
    let stored: u64 = ranges.iter().map(|r| r.2 - r.1).sum();
    let reference = env.via_proxy(NYDUS_REPO);

    let mut ttfb = Series::new("ttfb", "ms", false);
    let mut whole = Series::new("cold-read", "ms", false);
    let mut table = Table::new(&["round", "dfagent MB fetched", "baseline MB fetched"]);
    let mut rounds = Vec::new();
    for r in 0..env.opts.rounds {
        let dfagent = |env: &Env| -> anyhow::Result<(f64, f64, String, u64)> {
            let store = env.scratch("empty-store");
            let mp = env.scratch("mnt");
            let log = env.scratch("mount.log");
            let m = Mount::start(&MountSpec {
                dfagent: &env.dfagent,
                reference: &reference,
                store: &store,
                prefetch: "none",
                mp: &mp,
                log: &log,
            })?;
            drop_caches()?;
            let before = env.counters();
            let t0 = Instant::now();
            let p = m.path().join(&target.path);
            let mut f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
            // The bytes are kept and hashed after the clock stops, as the baseline's are: the
            // timed part is the reading alone on both sides.
            let mut got = Vec::with_capacity(usize::try_from(target.size).unwrap_or(0));
            let mut buf = vec![0u8; 4096];
            let n = f.read(&mut buf)?;
            let first = t0.elapsed();
            ensure!(n > 0, "{} read 0 bytes", p.display());
            got.extend_from_slice(&buf[..n]);
            buf.resize(1 << 20, 0);
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let all = t0.elapsed();
            let mut h = Sha256::new();
            h.update(&got);
            drop(got);
            let bytes = env.counters().since(&before).to_client;
            drop(f);
            m.unmount()?;
            std::fs::remove_dir_all(&store).ok();
            Ok((
                first.as_secs_f64() * 1e3,
                all.as_secs_f64() * 1e3,
                hex::encode(h.finalize()),
                bytes,
            ))
        };
        let baseline = |env: &Env| -> anyhow::Result<(f64, f64, String, u64)> {
            // As for dfagent: the registry reads the blob from a cold page cache, not from
            // the pages the other side's round left behind.
            drop_caches()?;
            let before = env.counters();
            let t0 = Instant::now();
            let mut conn = Conn::connect(env.proxy.addr(), HTTP_TIMEOUT)?;
            let mut first = None;
            let mut bodies = Vec::new();
            for (blob, start, end) in &ranges {
                let path = format!("/v2/{NYDUS_REPO}/blobs/{blob}");
                let reply = conn.get_range(&path, *start, *end)?;
                first.get_or_insert(t0.elapsed().saturating_sub(reply.total) + reply.first_byte);
                bodies.push(reply.body);
            }
            let all = t0.elapsed();
            let bytes = env.counters().since(&before).to_client;
            // Untimed: decode and verify what came, so the baseline is shown to carry the file.
            let mut h = Sha256::new();
            let mut joined = Vec::new();
            for b in &bodies {
                joined.extend_from_slice(b);
            }
            let mut at = 0usize;
            for c in &target.chunks {
                let n = c.compressed_size as usize;
                let stored = joined
                    .get(at..at + n)
                    .context("the range answers are shorter than the chunks")?;
                let data = dfagent_core::decode_chunk(c, stored)?;
                h.update(&data);
                at += n;
            }
            Ok((
                first.unwrap_or_default().as_secs_f64() * 1e3,
                all.as_secs_f64() * 1e3,
                hex::encode(h.finalize()),
                bytes,
            ))
        };
        let (d, b) = alternate(r, || dfagent(env), || baseline(env))?;
        ensure!(
            d.2 == b.2,
            "ttfb: {} read through the mount has sha256 {}, the registry's ranges decode to {}",
            target.path,
            d.2,
            b.2
        );
        ensure!(
            b.3 >= stored,
            "the baseline moved {} bytes through the proxy, less than the {stored} stored bytes",
            b.3
        );
        ttfb.push(d.0, b.0);
        whole.push(d.1, b.1);
        table.row(vec![
            (r + 1).to_string(),
            fmt_value(d.3 as f64 / 1e6),
            fmt_value(b.3 as f64 / 1e6),
        ]);
        rounds.push(serde_json::json!({
            "dfagent_ttfb_ms": d.0, "baseline_ttfb_ms": b.0,
            "dfagent_read_ms": d.1, "baseline_read_ms": b.1,
            "dfagent_bytes": d.3, "baseline_bytes": b.3, "sha256_match": d.2 == b.2,
        }));
        eprintln!(
            "dfagent-bench: ttfb round {}: dfagent {:.1} / {:.1} ms, baseline {:.1} / {:.1} ms",
            r + 1,
            d.0,
            d.1,
            b.0,
            b.1
        );
    }
    Ok(Outcome {
        file: "ttfb",
        title: "First byte and whole file through a cold mount vs plain range GETs".into(),
        notes: format!(
            "Workload: {}; Nydus image: {how}. File: `{}` ({} bytes, {} chunks, {stored} stored bytes in {} contiguous range(s)). Link: {}.\n\n\
             - **dfagent**: a fresh `dfagent mount --prefetch none` with an empty store (mount time not counted), page caches dropped; \
             timed from `open` to the first 4 KiB `read` returning (ttfb) and to the end of the file (cold-read); the bytes are hashed after the clock stops. \
             Each read goes FUSE → resolver → registry range GET through the proxy → decode → verify.\n\
             - **baseline**: plain HTTP/1.1 range GETs of the same stored ranges, on a new connection through the same proxy, \
             page caches dropped as for dfagent (so the registry reads the blob from disk on both sides), timed from connecting to the first body byte (ttfb) and to the last byte (cold-read). No decompression or \
             verification is timed; afterwards the bytes are decoded and verified, and the file's sha256 must equal what the mount returned.",
            env.workload.label,
            target.path,
            target.size,
            target.chunks.len(),
            ranges.len(),
            crate::cold_start::link_desc(env)
        ),
        series: vec![ttfb, whole],
        extra: vec![("Bytes through the proxy".into(), table)],
        json: serde_json::json!({ "file": target.path, "stored_bytes": stored, "rounds": rounds }),
    })
}
