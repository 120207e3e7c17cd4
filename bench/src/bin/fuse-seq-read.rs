//! fuse-seq-read: warm sequential read throughput through a dfagent FUSE mount, against the same
//! bytes read from local files.
//!
//! Mounts a fixture image in-process (resolver over its blob directory, as `dfagent mount`
//! does), reads every file bigger than 1 MiB once through the mount (warming the chunk cache
//! and the page cache) while extracting it to a local directory under /tmp, then measures
//! alternating rounds: the mount's files, then the local copies, each read sequentially with
//! the same buffer, reopened in a loop until at least 1 GiB was read. Nothing is dropped
//! between rounds. Prints one summary line with the medians and writes the per-round table to
//! `bench/results/seq-read-warm.md` (`dfagent-bench seq-read` writes the cold variant).
//!
//! usage: fuse-seq-read [IMAGE]   (a folder of `$DFAGENT_SHARED/fixtures/rafs`, default
//! v6-zstd-blake3). Needs root (or fusermount3) and /dev/fuse. Run it in release mode.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use dfagent_nydusfs::{FsConfig, NydusFs};
use dfagent_rafs::{FileType, Image};
use dfagent_resolver::{BlobDirTier, Resolver, ResolverConfig};

const ROUNDS: usize = 5;
const MIN_BYTES_PER_ROUND: u64 = 1 << 30;
const BUF_SIZE: usize = 1 << 20;
const MIN_FILE_SIZE: u64 = 1 << 20;

fn shared_dir() -> PathBuf {
    match std::env::var_os("DFAGENT_SHARED") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// Read each of `paths` from start to end, `passes` times over; bytes read and time taken.
fn read_all(paths: &[PathBuf], passes: u64, buf: &mut [u8]) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let mut total = 0u64;
    for _ in 0..passes {
        for p in paths {
            let mut f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
            loop {
                let n = f
                    .read(buf)
                    .with_context(|| format!("reading {}", p.display()))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
    }
    Ok((total, start.elapsed()))
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    let image_name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "v6-zstd-blake3".to_owned());
    let fixture = shared_dir().join("fixtures/rafs").join(&image_name);
    let bootstrap = fixture.join("bootstrap");
    let image = Arc::new(
        Image::open(&bootstrap).with_context(|| format!("opening {}", bootstrap.display()))?,
    );

    // Every regular file bigger than 1 MiB, one path per inode (hard links read once).
    let mut files: Vec<(String, u64)> = Vec::new();
    let mut seen = HashSet::new();
    image.walk(|e| {
        if e.inode.file_type == FileType::File
            && e.inode.size > MIN_FILE_SIZE
            && seen.insert(e.inode.nid)
        {
            files.push((String::from_utf8_lossy(&e.path).into_owned(), e.inode.size));
        }
        Ok(())
    })?;
    files.sort();
    if files.is_empty() {
        bail!("{image_name} has no file bigger than 1 MiB");
    }
    let set_bytes: u64 = files.iter().map(|f| f.1).sum();
    let passes = MIN_BYTES_PER_ROUND.div_ceil(set_bytes);

    let dir = tempfile::Builder::new()
        .prefix("fuse-seq-read-")
        .tempdir_in("/tmp")?;
    let mp = dir.path().join("mnt");
    let local = dir.path().join("local");
    std::fs::create_dir(&mp)?;
    std::fs::create_dir(&local)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("bench-io")
        .enable_all()
        .build()?;
    let resolver = Arc::new(Resolver::standalone(
        vec![Arc::new(BlobDirTier::new(fixture.join("blobs")))],
        ResolverConfig::default(),
    ));
    let fs = NydusFs::new(
        image.clone(),
        resolver,
        rt.handle().clone(),
        FsConfig::default(),
    );
    let metrics = fs.metrics();
    // Dropping `mounted` (also on an early return) unmounts.
    let mounted = dfagent_nydusfs::mount(fs, &mp, &format!("fuse-seq-read:{image_name}"))
        .with_context(|| format!("mounting at {}", mp.display()))?;

    // Warm-up: read everything once through the mount, writing the local copies.
    let mut buf = vec![0u8; BUF_SIZE];
    let mut mount_paths = Vec::new();
    let mut local_paths = Vec::new();
    for (i, (path, size)) in files.iter().enumerate() {
        let src = mp.join(path);
        let dst = local.join(format!("{i}.bin"));
        let mut r = File::open(&src).with_context(|| format!("opening {}", src.display()))?;
        let mut w = File::create(&dst)?;
        let mut copied = 0u64;
        loop {
            let n = r
                .read(&mut buf)
                .with_context(|| format!("reading {}", src.display()))?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n])?;
            copied += n as u64;
        }
        w.sync_all()?;
        ensure!(
            copied == *size,
            "{path}: read {copied} bytes, expected {size}"
        );
        mount_paths.push(src);
        local_paths.push(dst);
    }
    // One untimed pass of each, so both start from the page cache.
    read_all(&mount_paths, 1, &mut buf)?;
    read_all(&local_paths, 1, &mut buf)?;

    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let before = metrics.snapshot();
        let (db, dt) = read_all(&mount_paths, passes, &mut buf)?;
        let after = metrics.snapshot();
        let (bb, bt) = read_all(&local_paths, passes, &mut buf)?;
        ensure!(
            db == set_bytes * passes && bb == db,
            "short read: {db} / {bb} bytes"
        );
        rounds.push((
            mb_per_s(db, dt),
            mb_per_s(bb, bt),
            after.requests - before.requests,
            after.reads - before.reads,
        ));
    }
    mounted
        .unmount()
        .with_context(|| format!("unmounting {}", mp.display()))?;
    rt.shutdown_timeout(Duration::from_secs(2));

    let d_med = median(&rounds.iter().map(|r| r.0).collect::<Vec<_>>());
    let b_med = median(&rounds.iter().map(|r| r.1).collect::<Vec<_>>());
    let ratio = d_med / b_med;
    let summary =
        format!("seq-read: dfagent {d_med:.0} MB/s, baseline {b_med:.0} MB/s, ratio {ratio:.2}");

    let mut md = String::new();
    writeln!(
        md,
        "# Sequential read through a dfagent FUSE mount (warm)\n"
    )?;
    writeln!(
        md,
        "Made by `cargo run --release -p dfagent-bench --bin fuse-seq-read -- {image_name}`.\n"
    )?;
    writeln!(
        md,
        "Image `{image_name}`, mounted in-process (resolver over the fixture's blob directory, \
         default 256 MiB chunk cache, default `FsConfig`). Files read (every regular file over \
         1 MiB, one path per inode):"
    )?;
    for (p, s) in &files {
        writeln!(md, "- `{p}` ({s} bytes)")?;
    }
    writeln!(
        md,
        "\nEvery file was read once through the mount (and copied to a local file under /tmp, \
         fsynced), then once more from each side untimed. Each round reads the whole set \
         {passes} times ({} MiB), reopening each file every time, with a {} KiB buffer: first \
         through the mount (`dfagent`), then the local copies (`baseline`). Nothing is dropped \
         between rounds, so both sides are served mostly from the page cache. MB/s = 10^6 \
         bytes per second.\n",
        (set_bytes * passes) >> 20,
        BUF_SIZE >> 10
    )?;
    writeln!(
        md,
        "`FUSE requests` counts every request the mount answered during the dfagent half of a \
         round ({} file opens), `FUSE reads` the read requests among them (data not already in \
         the page cache).\n",
        passes * files.len() as u64
    )?;
    writeln!(
        md,
        "| round | dfagent MB/s | baseline MB/s | ratio | FUSE requests | FUSE reads |"
    )?;
    writeln!(md, "| ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for (i, r) in rounds.iter().enumerate() {
        writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.2} | {} | {} |",
            i + 1,
            r.0,
            r.1,
            r.0 / r.1,
            r.2,
            r.3
        )?;
    }
    writeln!(
        md,
        "| median | {d_med:.0} | {b_med:.0} | {ratio:.2} (of medians) | | |\n"
    )?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    writeln!(
        md,
        "Machine: {} CPUs, kernel {}.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )?;
    writeln!(md, "```\n{summary}\n```")?;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/seq-read-warm.md");
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;

    println!("{summary}");
    Ok(())
}
