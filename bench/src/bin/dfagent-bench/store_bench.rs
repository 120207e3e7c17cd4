//! `store-put` and `store-get`: crates/store's API against plain files holding the same bytes
//! (one file per chunk, named by its digest), with the same durability: the store's `put` is a
//! RocksDB write batch with the WAL but without fsync (crash-safe for the process, not for the
//! machine), so the files are written without fsync too.
//!
//! `store-get-under-put`: gets of stored chunks while another thread puts continuously into the
//! same store, against gets of the same chunks with no put running (same store, same round).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use dfagent_bench::report::{fmt_ratio, fmt_value, Series, Table};
use dfagent_core::{BlobId, ChunkDigest, Compression, DigestAlgo};
use dfagent_store::{Store, StoreConfig};

use crate::env::Env;
use crate::outcome::{alternate, mb, Outcome};

/// The blob every chunk of these runs is stored under (the inventory is not what is measured).
fn bench_blob() -> BlobId {
    BlobId::from_bytes([0x5b; 32])
}

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

/// CPU time (s) of the whole process (every thread: RocksDB's background threads too).
fn process_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// What one side of a `store` round measured.
struct Side {
    put_mbps: f64,
    get_mbps: f64,
    /// Process CPU seconds per GB (10^9 bytes) put, and got.
    put_cpu: f64,
    get_cpu: f64,
}

impl Side {
    /// A side's figures once its gets are done: `put` MB/s for `bytes` put, `got` bytes read
    /// back since `t0`, and the process CPU time taken before the puts and before the gets.
    fn measured(put: f64, bytes: u64, got: u64, t0: Instant, [c0, c1]: [f64; 2]) -> Self {
        let get = mb(got) / t0.elapsed().as_secs_f64();
        let c2 = process_cpu();
        Side {
            put_mbps: put,
            get_mbps: get,
            put_cpu: (c1 - c0) / (bytes as f64 / 1e9),
            get_cpu: (c2 - c1) / (got.max(1) as f64 / 1e9),
        }
    }
}

/// Put and get throughput, and process CPU per GB, for the store.
fn store_side(dir: &Path, case: &Case, data: &[(ChunkDigest, Vec<u8>)]) -> anyhow::Result<Side> {
    let store = Store::open(
        dir,
        StoreConfig {
            capacity: 64 << 30,
            blob_files: case.blob_files,
            ..StoreConfig::default()
        },
    )?;
    let bytes = (case.chunk * case.count) as u64;
    let c0 = process_cpu();
    let t0 = Instant::now();
    for (d, v) in data {
        store.put(d, &bench_blob(), Compression::None, v.len() as u32, v)?;
    }
    let put = mb(bytes) / t0.elapsed().as_secs_f64();
    let c1 = process_cpu();
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
    Ok(Side::measured(put, bytes, got, t0, [c0, c1]))
}

/// Put and get throughput, and process CPU per GB, for one file per chunk.
fn file_side(dir: &Path, case: &Case, data: &[(ChunkDigest, Vec<u8>)]) -> anyhow::Result<Side> {
    std::fs::create_dir_all(dir)?;
    let bytes = (case.chunk * case.count) as u64;
    let c0 = process_cpu();
    let t0 = Instant::now();
    for (d, v) in data {
        std::fs::write(dir.join(d.hex()), v)?;
    }
    let put = mb(bytes) / t0.elapsed().as_secs_f64();
    let c1 = process_cpu();
    let t0 = Instant::now();
    let mut got = 0u64;
    for (d, v) in data {
        let b = std::fs::read(dir.join(d.hex()))?;
        ensure!(&b == v, "file {} came back different", d.hex());
        got += b.len() as u64;
    }
    Ok(Side::measured(put, bytes, got, t0, [c0, c1]))
}

/// One case of `store-get-under-put`.
struct UnderPut {
    chunk: usize,
    /// Chunks read back in turn (pinned, so the putter's evictions never take them).
    get_set: usize,
    /// Room for the putter's chunks beyond the get set: it evicts its own oldest ones.
    put_room: usize,
    /// How long each side reads.
    window: Duration,
}

/// What one side of a `store-get-under-put` round measured.
struct GetWindow {
    /// Get throughput, MB/s.
    mbps: f64,
    /// Slowest get, microseconds.
    max_us: f64,
    /// 99th percentile get, microseconds.
    p99_us: f64,
    /// Share of the window the reading thread was on a CPU.
    on_cpu: f64,
    /// Times the reading thread blocked (voluntary context switches: a lock, I/O) per 1000 gets.
    blocked_per_k: f64,
    /// Puts completed during the window (0 for the idle side).
    puts: u64,
}

/// Most gets of one window (a bound on the loop besides its time).
const MAX_GETS: usize = 1_000_000;

/// CPU time (s) and voluntary context switches (times it blocked) of the calling thread.
fn thread_usage() -> (f64, i64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(u.ru_utime) + tv(u.ru_stime), u.ru_nvcsw)
}

/// Read the get set in turn for `window`, comparing every chunk.
fn get_window(
    store: &Store,
    data: &[(ChunkDigest, Vec<u8>)],
    window: Duration,
) -> anyhow::Result<GetWindow> {
    let mut lat = Vec::new();
    let mut got = 0u64;
    let (cpu0, waits0) = thread_usage();
    let t0 = Instant::now();
    for (d, v) in data.iter().cycle().take(MAX_GETS) {
        let t = Instant::now();
        let s = store
            .get(d)?
            .with_context(|| format!("chunk {d} is missing from the store"))?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        ensure!(
            s.data.as_ref() == v.as_slice(),
            "chunk {d} came back different"
        );
        got += s.data.len() as u64;
        if t0.elapsed() >= window {
            break;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, waits1) = thread_usage();
    lat.sort_by(f64::total_cmp);
    let p99 = lat
        .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    Ok(GetWindow {
        mbps: mb(got) / wall,
        max_us: lat.last().copied().unwrap_or(0.0),
        p99_us: p99,
        on_cpu: (cpu1 - cpu0) / wall,
        blocked_per_k: (waits1 - waits0) as f64 * 1000.0 / lat.len().max(1) as f64,
        puts: 0,
    })
}

/// Gets with no put running.
fn idle_side(
    store: &Store,
    data: &[(ChunkDigest, Vec<u8>)],
    case: &UnderPut,
) -> anyhow::Result<GetWindow> {
    get_window(store, data, case.window)
}

/// Gets while a thread of its own puts fresh chunks into the same store without pause. The
/// putter's bytes come from a few random buffers under made-up digests (the store does not
/// verify on put; its callers do), so it spends its time in `put`, as the resolver's writer does.
fn busy_side(
    store: &Arc<Store>,
    data: &[(ChunkDigest, Vec<u8>)],
    case: &UnderPut,
    seed: u64,
) -> anyhow::Result<GetWindow> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let pool: Vec<Vec<u8>> = (0..4)
        .map(|_| {
            let mut v = vec![0u8; case.chunk];
            rng.fill(&mut v);
            v
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let (started_tx, started_rx) = mpsc::channel();
    let putter = {
        let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
        std::thread::Builder::new()
            .name("bench-putter".into())
            .spawn(move || -> anyhow::Result<u64> {
                // The node's puts come from its store writer thread, which runs lowered
                // (`dfagent_core::priority`, crates/resolver/src/writeback.rs): so does this one.
                let _ = dfagent_core::priority::lower_this_thread(
                    dfagent_core::priority::BACKGROUND_NICE_DELTA,
                    dfagent_core::priority::BackgroundIo::BestEffortLowest,
                );
                let deadline = Instant::now() + Duration::from_secs(600);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 10_000_000 && Instant::now() < deadline {
                    let mut key = seed.to_le_bytes().to_vec();
                    key.extend_from_slice(&n.to_le_bytes());
                    let v = &pool[n as usize % pool.len()];
                    store.put(
                        &DigestAlgo::Blake3.digest(&key),
                        &bench_blob(),
                        Compression::None,
                        v.len() as u32,
                        v,
                    )?;
                    n += 1;
                    done.store(n, Ordering::Relaxed);
                    if n == 1 {
                        let _ = started_tx.send(());
                    }
                }
                Ok(n)
            })?
    };
    // The window opens once the putter is inside its loop (its first put is done).
    let measured = started_rx.recv_timeout(Duration::from_secs(60)).map(|()| {
        let before = done.load(Ordering::Relaxed);
        let w = get_window(store, data, case.window);
        (w, done.load(Ordering::Relaxed) - before)
    });
    stop.store(true, Ordering::Relaxed);
    let puts = putter
        .join()
        .map_err(|_| anyhow::anyhow!("the putter thread panicked"))??;
    let (w, puts_in_window) =
        measured.map_err(|_| anyhow::anyhow!("the putter did not finish a put within 60 s"))?;
    let mut w = w?;
    ensure!(puts > 0, "the putter stopped");
    w.puts = puts_in_window;
    Ok(w)
}

/// One round of `store-get-under-put`: (under put, idle).
fn under_put_round(
    env: &Env,
    case: &UnderPut,
    round: usize,
) -> anyhow::Result<(GetWindow, GetWindow)> {
    let data = chunks(
        &Case {
            chunk: case.chunk,
            count: case.get_set,
            blob_files: true,
        },
        (90_000 + round) as u64,
    );
    let dir = env.scratch("store-under-put");
    let config = StoreConfig {
        capacity: ((case.get_set + case.put_room) * case.chunk) as u64,
        ..StoreConfig::default()
    };
    {
        // Filled, then closed (which flushes the memtables), so both sides read the get set
        // from the same place.
        let store = Store::open(&dir, config.clone())?;
        for (d, v) in &data {
            store.put(d, &bench_blob(), Compression::None, v.len() as u32, v)?;
        }
        let digests: Vec<ChunkDigest> = data.iter().map(|(d, _)| *d).collect();
        store.pin("bench-get-set", &digests)?;
    }
    let store = Arc::new(Store::open(&dir, config)?);
    let out = alternate(
        round,
        || busy_side(&store, &data, case, round as u64),
        || idle_side(&store, &data, case),
    );
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
    out
}

/// The `store-get-under-put` line and its table.
fn under_put(env: &Env) -> anyhow::Result<(Series, Table)> {
    let window = Duration::from_millis(if env.opts.quick { 200 } else { 2000 });
    let cases = [
        UnderPut {
            chunk: 1 << 20,
            get_set: 64,
            put_room: 64,
            window,
        },
        UnderPut {
            chunk: 64 << 10,
            get_set: 1024,
            put_room: 1024,
            window,
        },
    ];
    let mut line = Series::new("store-get-under-put", "MB/s", true);
    let mut table = Table::new(&[
        "chunk",
        "get set",
        "get idle MB/s",
        "get under put MB/s",
        "ratio",
        "p99 get idle µs",
        "p99 get under put µs",
        "slowest get idle µs",
        "slowest get under put µs",
        "reader on CPU idle %",
        "reader on CPU under put %",
        "reader blocked per 1000 gets idle",
        "reader blocked per 1000 gets under put",
        "ratio per reader CPU-second",
        "puts during the window",
    ]);
    for (ci, case) in cases.iter().enumerate() {
        let mut s = Series::new("", "", true);
        let mut sides: Vec<(GetWindow, GetWindow)> = Vec::new();
        for r in 0..env.opts.rounds {
            let (busy, idle) = under_put_round(env, case, r)?;
            s.push(busy.mbps, idle.mbps);
            if ci == 0 {
                line.push(busy.mbps, idle.mbps);
            }
            sides.push((busy, idle));
        }
        let med = |f: &dyn Fn(&(GetWindow, GetWindow)) -> f64| {
            fmt_value(dfagent_bench::report::median(
                &sides.iter().map(f).collect::<Vec<_>>(),
            ))
        };
        table.row(vec![
            format!("{} KiB", case.chunk >> 10),
            case.get_set.to_string(),
            fmt_value(s.baseline_median()),
            fmt_value(s.dfagent_median()),
            fmt_ratio(s.ratio()),
            med(&|p| p.1.p99_us),
            med(&|p| p.0.p99_us),
            med(&|p| p.1.max_us),
            med(&|p| p.0.max_us),
            med(&|p| p.1.on_cpu * 100.0),
            med(&|p| p.0.on_cpu * 100.0),
            med(&|p| p.1.blocked_per_k),
            med(&|p| p.0.blocked_per_k),
            fmt_ratio(dfagent_bench::report::median(
                &sides
                    .iter()
                    .map(|(busy, idle)| {
                        (busy.mbps / busy.on_cpu.max(1e-9)) / (idle.mbps / idle.on_cpu.max(1e-9))
                    })
                    .collect::<Vec<_>>(),
            )),
            med(&|p| p.0.puts as f64),
        ]);
        eprintln!(
            "dfagent-bench: store get under put {} KiB: idle {:.0} MB/s, under put {:.0} MB/s ({:.2})",
            case.chunk >> 10,
            s.baseline_median(),
            s.dfagent_median(),
            s.ratio()
        );
    }
    Ok((line, table))
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
        "put CPU s/GB: store",
        "put CPU s/GB: files",
        "get CPU s/GB: store",
        "get CPU s/GB: files",
    ]);
    for (ci, case) in cases.iter().enumerate() {
        let mut medians = (Series::new("p", "", true), Series::new("g", "", true));
        // Process CPU per GB, (store, files): put, then get.
        let mut cpu = (Series::new("pc", "", false), Series::new("gc", "", false));
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
            medians.0.push(s.put_mbps, f.put_mbps);
            medians.1.push(s.get_mbps, f.get_mbps);
            cpu.0.push(s.put_cpu, f.put_cpu);
            cpu.1.push(s.get_cpu, f.get_cpu);
            if ci == 0 {
                put.push(s.put_mbps, f.put_mbps);
                get.push(s.get_mbps, f.get_mbps);
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
            fmt_value(cpu.0.dfagent_median()),
            fmt_value(cpu.0.baseline_median()),
            fmt_value(cpu.1.dfagent_median()),
            fmt_value(cpu.1.baseline_median()),
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
    let (under, under_table) = under_put(env)?;
    Ok(Outcome {
        file: "store",
        title: "Chunk store vs one file per chunk".into(),
        notes: format!(
            "In-process, on the work directory's filesystem ({}). Each round writes fresh random (incompressible) chunks \
             with `Store::put` (compression `none`, digest blake3) into a new store, then reads each back with \
             `Store::get` and compares the bytes; the baseline writes the same bytes to one file per chunk named by \
             the digest (`std::fs::write`), then reads each back (`std::fs::read`) and compares. Durability is equal: \
             the store writes its records as a WAL batch without fsync (and a chunk of at least \
             `StoreConfig::file_min_size`, 64 KiB, to a file of its own before it, not fsynced either), the files \
             are not fsynced. The CPU columns are the process's CPU time (every thread, RocksDB's background \
             threads too; `getrusage(RUSAGE_SELF)`) during the puts and during the gets, per GB. Reads follow the writes with the \
             page cache warm on both sides (this measures software overhead, not the disk). The summary lines are \
             the first row (1 MiB chunks, blob files on: the store's default); `RocksDB blob files` is \
             `StoreConfig::blob_files`. MB/s = 10^6 bytes/s; medians of {} rounds.\n\n\
             `store-get-under-put` (the `dfagent` column) is `Store::get` throughput of a pinned set of stored \
             chunks (1 MiB: 64 of them; the table adds 64 KiB: 1024), read in turn and compared, for {} ms while \
             another thread `put`s fresh chunks of the same size into the same store without pause (capacity \
             = the get set plus as much again, so every put also evicts one of the putter's own chunks); its \
             `baseline` column is the same gets of the same open store with no put running. Both sides run in \
             the same round on a store that was filled and reopened (memtables flushed), alternating which \
             goes first. The second table adds the reading thread's p99 and slowest get, its share of the \
             window on a CPU (`getrusage(RUSAGE_THREAD)`), how often it blocked (voluntary context switches \
             per 1000 gets: lock waits, I/O), and the ratio per CPU-second of the reader (throughput / \
             on-CPU share, under put / idle), which separates waiting and slower gets from a smaller share \
             of the CPU. Goal: at least 0.8.",
            env.work.display(),
            env.opts.rounds,
            if env.opts.quick { 200 } else { 2000 }
        ),
        series: vec![put, get, under],
        extra: vec![
            ("All cases (medians)".into(), table),
            ("Gets under a continuous put (medians)".into(), under_table),
        ],
        json: serde_json::json!({}),
    })
}
