//! `dfagent check`: verify an image against its blob directory and print a summary.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use dfagent_rafs::Image;
use dfagent_resolver::check::check_image;
use dfagent_resolver::BlobDirTier;

pub fn run(bootstrap: &Path, blob_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let img = Image::open(bootstrap).with_context(|| format!("opening {}", bootstrap.display()))?;
    let r = check_image(&img, &BlobDirTier::new(blob_dir));
    if json {
        let v = serde_json::json!({
            "inodes": r.inodes, "files": r.files, "dirs": r.dirs, "symlinks": r.symlinks,
            "bytes": r.bytes, "chunks": r.chunks, "unique_chunks": r.unique_chunks,
            "blobs": r.blobs, "compressed_bytes": r.compressed_bytes, "problems": r.problems,
        });
        println!("{v}");
    } else {
        println!(
            "inodes {}, files {}, dirs {}, symlinks {}, bytes {}, chunks {}, unique chunks {}, blobs {}, compressed bytes {}",
            r.inodes, r.files, r.dirs, r.symlinks, r.bytes, r.chunks, r.unique_chunks, r.blobs, r.compressed_bytes
        );
    }
    if r.problems.is_empty() {
        if !json {
            println!("ok");
        }
        return Ok(ExitCode::SUCCESS);
    }
    for p in &r.problems {
        eprintln!("problem: {p}");
    }
    eprintln!("dfagent: check found {} problem(s)", r.problems.len());
    Ok(ExitCode::FAILURE)
}
