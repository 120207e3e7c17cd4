//! A quick, single-case version of the bench's `store` scenario for profiling (`perf record`,
//! `valgrind --tool=callgrind`): put COUNT chunks of CHUNK bytes into a fresh store, read them
//! back, and print MB/s for the store and for one file per chunk.
//!
//! Usage: `put_get [CHUNK_BYTES] [COUNT] [ROUNDS] [store|files|both] [DIR]`; the environment
//! variable `PUT_GET_FILE_MIN` sets `StoreConfig::file_min_size` (`max`: every chunk in RocksDB),
//! `PUT_GET_GET_REPEAT` how many times the gets are repeated (default 1).

use std::time::Instant;

use dfagent_core::{BlobId, Compression, DigestAlgo};
use dfagent_store::{Store, StoreConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let chunk: usize = args.get(1).map_or(Ok(1 << 20), |s| s.parse())?;
    let count: usize = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let rounds: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    let which = args.get(4).cloned().unwrap_or_else(|| "both".into());
    let base = args
        .get(5)
        .cloned()
        .unwrap_or_else(|| "/var/tmp/put-get".into());
    let mut state = 0x1234_5678_9abc_def0u64;
    let data: Vec<_> = (0..count)
        .map(|_| {
            let v: Vec<u8> = (0..chunk)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            (DigestAlgo::Blake3.digest(&v), v)
        })
        .collect();
    let blob = BlobId::from_bytes([0x5b; 32]);
    let file_min_size = match std::env::var("PUT_GET_FILE_MIN").ok().as_deref() {
        None => StoreConfig::default().file_min_size,
        Some("max") => u64::MAX,
        Some(n) => n.parse()?,
    };
    let get_repeat: usize = match std::env::var("PUT_GET_GET_REPEAT") {
        Ok(n) => n.parse()?,
        Err(_) => 1,
    };
    let mb = |bytes: usize, secs: f64| bytes as f64 / 1e6 / secs;
    for r in 0..rounds {
        let dir = std::path::PathBuf::from(format!("{base}-{r}"));
        let _ = std::fs::remove_dir_all(&dir);
        if which != "files" {
            let store = Store::open(
                &dir.join("store"),
                StoreConfig {
                    capacity: 64 << 30,
                    file_min_size,
                    ..StoreConfig::default()
                },
            )?;
            let t = Instant::now();
            for (d, v) in &data {
                store.put(d, &blob, Compression::None, v.len() as u32, v)?;
            }
            let put = mb(chunk * count, t.elapsed().as_secs_f64());
            let t = Instant::now();
            let mut got = 0;
            for _ in 0..get_repeat {
                for (d, v) in &data {
                    let s = store.get(d)?.ok_or("missing")?;
                    if s.data.as_ref() != v.as_slice() {
                        return Err("differs".into());
                    }
                    got += s.data.len();
                }
            }
            let get = mb(got, t.elapsed().as_secs_f64());
            println!("round {r}: store put {put:.0} MB/s, get {get:.0} MB/s");
        }
        if which != "store" {
            let fdir = dir.join("files");
            std::fs::create_dir_all(&fdir)?;
            let t = Instant::now();
            for (d, v) in &data {
                std::fs::write(fdir.join(d.hex()), v)?;
            }
            let put = mb(chunk * count, t.elapsed().as_secs_f64());
            let t = Instant::now();
            for _ in 0..get_repeat {
                for (d, v) in &data {
                    if &std::fs::read(fdir.join(d.hex()))? != v {
                        return Err("differs".into());
                    }
                }
            }
            let get = mb(chunk * count * get_repeat, t.elapsed().as_secs_f64());
            println!("round {r}: files put {put:.0} MB/s, get {get:.0} MB/s");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
