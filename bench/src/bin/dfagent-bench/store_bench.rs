//! `store-put` and `store-get`: crates/store's API against plain files holding the same bytes
//! (one file per chunk, named by its digest), with the same durability: the store's `put` is a
//! RocksDB write batch with the WAL but without fsync (crash-safe for the process, not for the
//! machine), so the files are written without fsync too.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context};
use dfagent_bench::report::{fmt_ratio, fmt_value, Series, Table};
use dfagent_core::{ChunkDigest, Compression, DigestAlgo};
use dfagent_store::{Store, StoreConfig};

use crate::env::Env;
use crate::outcome::{alternate, mb, Outcome};

struct Case {
    chunk: usize,
    count: usize,
    blob_files: bool,
}

fn chunks(case: &Case, seed: u64) -> Vec<(ChunkDigest, Vec<u8>)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..case.count)
        .map(|_| {
            let mut v = vec![0u8; case.chunk];
            rng.fill(&mut v);
            (DigestAlgo::Blake3.digest(&v), v)
        })
        .collect()
}

/// (put MB/s, get MB/s) for the store.
fn store_side(
    dir: &Path,
    case: &Case,
    data: &[(ChunkDigest, Vec<u8>)],
) -> anyhow::Result<(f64, f64)> {
    let store = Store::open(
        dir,
        StoreConfig {
            capacity: 64 << 30,
            blob_files: case.blob_files,
            ..StoreConfig::default()
        },
    )?;
    let bytes = (case.chunk * case.count) as u64;
    let t0 = Instant::now();
    for (d, v) in data {
        store.put(d, Compression::None, v.len() as u32, v)?;
    }
    let put = mb(bytes) / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut got = 0u64;
    for (d, v) in data {
        let s = store
            .get(d)?
            .with_context(|| format!("chunk {d} is missing from the store"))?;
        ensure!(
            s.data.as_ref() == v.as_slice(),
            "chunk {d} came back different"
        );
        got += s.data.len() as u64;
    }
    let get = mb(got) / t0.elapsed().as_secs_f64();
    Ok((put, get))
}

/// (put MB/s, get MB/s) for one file per chunk.
fn file_side(
    dir: &Path,
    case: &Case,
    data: &[(ChunkDigest, Vec<u8>)],
) -> anyhow::Result<(f64, f64)> {
    std::fs::create_dir_all(dir)?;
    let bytes = (case.chunk * case.count) as u64;
    let t0 = Instant::now();
    for (d, v) in data {
        std::fs::write(dir.join(d.hex()), v)?;
    }
    let put = mb(bytes) / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut got = 0u64;
    for (d, v) in data {
        let b = std::fs::read(dir.join(d.hex()))?;
        ensure!(&b == v, "file {} came back different", d.hex());
        got += b.len() as u64;
    }
    let get = mb(got) / t0.elapsed().as_secs_f64();
    Ok((put, get))
}

/// The store scenario.
pub fn run(env: &mut Env) -> anyhow::Result<Outcome> {
    let scale = if env.opts.quick { 1 } else { 16 };
    let cases: Vec<Case> = [
        (1usize << 20, 16 * scale, true),
        (1 << 20, 16 * scale, false),
        (64 << 10, 128 * scale, true),
        (16 << 10, 512 * scale, true),
        (4 << 10, 1024 * scale, true),
        (4 << 10, 1024 * scale, false),
    ]
    .into_iter()
    .map(|(chunk, count, blob_files)| Case {
        chunk,
        count,
        blob_files,
    })
    .collect();
    let mut put = Series::new("store-put", "MB/s", true);
    let mut get = Series::new("store-get", "MB/s", true);
    let mut table = Table::new(&[
        "chunk",
        "chunks",
        "RocksDB blob files",
        "put: store MB/s",
        "put: files MB/s",
        "put ratio",
        "get: store MB/s",
        "get: files MB/s",
        "get ratio",
    ]);
    for (ci, case) in cases.iter().enumerate() {
        let mut medians = (Series::new("p", "", true), Series::new("g", "", true));
        for r in 0..env.opts.rounds {
            let data = chunks(case, (ci * 1000 + r) as u64);
            let sdir = env.scratch("store");
            let fdir = env.scratch("files");
            let (s, f) = alternate(
                r,
                || store_side(&sdir, case, &data),
                || file_side(&fdir, case, &data),
            )?;
            std::fs::remove_dir_all(&sdir).ok();
            std::fs::remove_dir_all(&fdir).ok();
            medians.0.push(s.0, f.0);
            medians.1.push(s.1, f.1);
            if ci == 0 {
                put.push(s.0, f.0);
                get.push(s.1, f.1);
            }
        }
        table.row(vec![
            format!("{} KiB", case.chunk >> 10),
            case.count.to_string(),
            if case.blob_files { "on" } else { "off" }.into(),
            fmt_value(medians.0.dfagent_median()),
            fmt_value(medians.0.baseline_median()),
            fmt_ratio(medians.0.ratio()),
            fmt_value(medians.1.dfagent_median()),
            fmt_value(medians.1.baseline_median()),
            fmt_ratio(medians.1.ratio()),
        ]);
        eprintln!(
            "dfagent-bench: store {} KiB x {} (blob files {}): put {:.0} vs {:.0} MB/s, get {:.0} vs {:.0} MB/s",
            case.chunk >> 10,
            case.count,
            case.blob_files,
            medians.0.dfagent_median(),
            medians.0.baseline_median(),
            medians.1.dfagent_median(),
            medians.1.baseline_median()
        );
    }
    Ok(Outcome {
        file: "store",
        title: "Chunk store vs one file per chunk".into(),
        notes: format!(
            "In-process, on the work directory's filesystem ({}). Each round writes fresh random (incompressible) chunks \
             with `Store::put` (compression `none`, digest blake3) into a new store, then reads each back with \
             `Store::get` and compares the bytes; the baseline writes the same bytes to one file per chunk named by \
             the digest (`std::fs::write`), then reads each back (`std::fs::read`) and compares. Durability is equal: \
             the store writes a WAL batch without fsync, the files are not fsynced. Reads follow the writes with the \
             page cache warm on both sides (this measures software overhead, not the disk). The summary lines are \
             the first row (1 MiB chunks, blob files on: the store's default); `RocksDB blob files` is \
             `StoreConfig::blob_files`. MB/s = 10^6 bytes/s; medians of {} rounds.",
            env.work.display(),
            env.opts.rounds
        ),
        series: vec![put, get],
        extra: vec![("All cases (medians)".into(), table)],
        json: serde_json::json!({}),
    })
}
