//! The chunk store on a real RocksDB on disk: persistence, ownership, capacity and pins,
//! eviction order by reads, tamper detection through the resolver, gets that never wait for a
//! put's write, and crash safety under kill -9.

mod common;

use common::{blob, chunk, config};

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dfagent_core::{BlobId, ChunkDigest, ChunkRef, Compression};
use dfagent_resolver::{Resolver, ResolverConfig, ResolverCore};
use dfagent_store::{Store, StoreConfig, StoreError, StoreTier};
use dfagent_test_support::tiers::MemTier;

#[test]
fn chunks_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (d, data) = chunk(1, 100_000);
    {
        let s = Store::open(dir.path(), config(1 << 30)).unwrap();
        s.put(&d, &blob(0), Compression::None, data.len() as u32, &data)
            .unwrap();
        s.put_image_record("localhost:5000/x:v1", b"{}").unwrap();
        s.put_bootstrap("sha256:00", b"boot").unwrap();
        s.mark_pulled("localhost:5000/x:v1").unwrap();
    }
    let s = Store::open(dir.path(), config(1 << 30)).unwrap();
    let v = s.get(&d).unwrap().expect("chunk kept across reopen");
    assert_eq!(&v.data[..], &data[..]);
    assert_eq!(v.compression, Compression::None);
    assert_eq!(
        s.image_record("localhost:5000/x:v1").unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    assert_eq!(
        s.bootstrap("sha256:00").unwrap().as_deref(),
        Some(&b"boot"[..])
    );
    assert!(s.is_pulled("localhost:5000/x:v1").unwrap());
    assert!(!s.is_pulled("localhost:5000/y:v1").unwrap());
    s.unmark_pulled("localhost:5000/x:v1").unwrap();
    assert!(!s.is_pulled("localhost:5000/x:v1").unwrap());
    assert_eq!(s.stats().chunks, 1);
    assert_eq!(s.stats().bytes, 100_000);
}

#[test]
fn a_second_owner_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _s = Store::open(dir.path(), config(1 << 20)).unwrap();
    match Store::open(dir.path(), config(1 << 20)) {
        Err(StoreError::Locked { owner, .. }) => {
            assert!(
                owner.contains(&format!("pid {}", std::process::id())),
                "{owner}"
            )
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("two owners of one store"),
    }
}

#[test]
fn capacity_is_kept_and_pinned_chunks_go_last() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), config(40_000)).unwrap();
    let chunks: Vec<_> = (0..10).map(|i| chunk(i, 10_000)).collect();
    s.pin("img", &[chunks[0].0]).unwrap();
    for (d, data) in &chunks {
        s.put(d, &blob(0), Compression::None, data.len() as u32, data)
            .unwrap();
        assert!(s.stats().bytes <= 40_000);
    }
    assert!(
        s.contains(&chunks[0].0),
        "the pinned chunk was evicted before unpinned ones"
    );
    assert!(s.contains(&chunks[9].0) && !s.contains(&chunks[1].0));
    assert!(s.stats().evictions >= 6);
    drop(s);

    // With pinned chunks protected, a store full of them refuses new chunks.
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path(),
        StoreConfig {
            capacity: 20_000,
            evict_pinned: false,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    s.pin("img", &[chunks[0].0, chunks[1].0]).unwrap();
    for (d, data) in &chunks[..2] {
        s.put(d, &blob(0), Compression::None, data.len() as u32, data)
            .unwrap();
    }
    let (d, data) = &chunks[2];
    assert!(matches!(
        s.put(d, &blob(0), Compression::None, data.len() as u32, data),
        Err(StoreError::Full(_))
    ));
    s.unpin("img").unwrap();
    s.put(d, &blob(0), Compression::None, data.len() as u32, data)
        .unwrap();
    assert_eq!(s.gc().unwrap().chunks, 2);
}

#[test]
fn a_tampered_chunk_is_detected_dropped_and_refetched() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), config(1 << 30)).unwrap());
    let (d, data) = chunk(7, 50_000);
    let mut bad = data.clone();
    bad[1234] ^= 0x40;
    store
        .put(&d, &blob(0), Compression::None, bad.len() as u32, &bad)
        .unwrap();

    let r = ChunkRef {
        digest: d,
        blob: BlobId::from_bytes([1; 32]),
        compressed_offset: 0,
        compressed_size: data.len() as u32,
        uncompressed_size: data.len() as u32,
        compression: Compression::None,
    };
    let truth = Arc::new(MemTier::new("truth", &[(r, Bytes::from(data.clone()))]));
    let core = ResolverCore::with_store(
        Arc::new(StoreTier::new(store.clone())),
        ResolverConfig::default(),
    )
    .unwrap();
    let resolver = Resolver::new(core, vec![truth.clone()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = rt.block_on(resolver.read(&r)).unwrap();
    assert_eq!(&got[..], &data[..]);
    assert_eq!(truth.record.requests().len(), 1);
    // The good copy goes to the store off the read's path: wait for it.
    rt.block_on(resolver.flush());
    assert_eq!(resolver.metrics().snapshot().verify_failures, 1);
    assert_eq!(store.stats().rejected, 1);
    // The store now holds the good bytes.
    let kept = store.get(&d).unwrap().unwrap();
    assert_eq!(&kept.data[..], &data[..]);

    // `verify` finds a tampered value on its own too.
    store.remove(&d).unwrap();
    store
        .put(&d, &blob(0), Compression::None, bad.len() as u32, &bad)
        .unwrap();
    let (d2, z) = {
        let (d2, raw) = chunk(8, 30_000);
        (d2, (zstd::bulk::compress(&raw, 3).unwrap(), raw.len()))
    };
    store
        .put(&d2, &blob(0), Compression::Zstd, z.1 as u32, &z.0)
        .unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].0, d);
    assert!(!store.contains(&d) && store.contains(&d2));
}

/// Where the crash test's child writes (set by the parent; its presence makes the test the child).
const CRASH_DIR_VAR: &str = "DFAGENT_STORE_CRASH_DIR";
/// The child's first line: it opened the store and is entering its write loop.
const CHILD_WRITING: &str = "WRITING";

/// The child half of `kill_9_loses_nothing_acknowledged`: the test runs its own binary again
/// (`--exact` that test, with [`CRASH_DIR_VAR`] set) and this runs in that child, which the
/// parent kills: writes chunks until killed, printing each one's index once `put` returned,
/// while a second thread reads chunks already written (so access records of reads go out with
/// the writes).
fn crash_child_writer(dir: &str) {
    let s = Arc::new(Store::open(std::path::Path::new(&dir), config(1 << 30)).unwrap());
    let acked = Arc::new(AtomicU32::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    let reader = {
        let (s, acked) = (s.clone(), acked.clone());
        std::thread::spawn(move || {
            for n in 0..10_000_000u32 {
                if Instant::now() >= deadline {
                    break;
                }
                let written = acked.load(Ordering::Acquire);
                if written == 0 {
                    std::thread::yield_now();
                    continue;
                }
                let i = n.wrapping_mul(7919) % written;
                let (d, _) = chunk(i, 64 << 10);
                if !matches!(s.get(&d), Ok(Some(_))) {
                    println!("\nMISSING {i}");
                }
            }
        })
    };
    // On a line of its own (libtest's "test kill_9_... " has no newline yet).
    println!("\n{CHILD_WRITING}");
    for i in 0..100_000u32 {
        if Instant::now() >= deadline {
            break;
        }
        let (d, data) = chunk(i, 64 << 10);
        s.put(&d, &blob(0), Compression::None, data.len() as u32, &data)
            .unwrap();
        acked.store(i + 1, Ordering::Release);
        println!("ACK {i}");
    }
    reader.join().unwrap();
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    if let Ok(dir) = std::env::var(CRASH_DIR_VAR) {
        // This process is the child the test below started.
        return crash_child_writer(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_9_loses_nothing_acknowledged",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_VAR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Lines come through a thread, so a silent child cannot hang the wait below.
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut writing = false;
    let mut acked = Vec::new();
    let mut missing = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < 200 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(l) = rx.recv_timeout(left) else { break };
        if l == CHILD_WRITING {
            writing = true;
        } else if let Some(i) = l.strip_prefix("ACK ") {
            acked.push(i.parse::<u32>().unwrap());
        } else if let Some(i) = l.strip_prefix("MISSING ") {
            missing.push(i.to_string());
        }
    }
    // SAFETY: sending SIGKILL to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    assert!(
        writing,
        "the child never reached its write loop (not run, filtered out, or failed to open the store)"
    );
    assert!(
        acked.len() >= 200,
        "child acknowledged only {} chunks",
        acked.len()
    );
    assert_eq!(
        acked,
        (0..acked.len() as u32).collect::<Vec<_>>(),
        "acknowledgements out of order"
    );
    assert!(
        missing.is_empty(),
        "the child's reader missed written chunks: {missing:?}"
    );
    // It was still writing when the signal came: killed, not exited.
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the child was not killed mid-write: {status}"
    );

    let s = Store::open(dir.path(), config(1 << 30)).unwrap();
    for i in &acked {
        let (d, data) = chunk(*i, 64 << 10);
        let v = s
            .get(&d)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged chunk {i} lost"));
        assert_eq!(&v.data[..], &data[..]);
    }
    let report = s.verify().unwrap();
    assert!(
        report.removed.is_empty(),
        "a wrong chunk survived the crash: {:?}",
        report.removed
    );
    // Every chunk record has its access record and no access record lacks its chunk.
    assert_eq!(report.checked, s.stats().chunks);
}

#[test]
fn a_get_completes_while_a_put_is_held_inside_its_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(dir.path(), config(1 << 30)).unwrap());
    let (a, a_data) = chunk(60, 100_000);
    let (b, b_data) = chunk(61, 100_000);
    s.put(
        &a,
        &blob(0),
        Compression::None,
        a_data.len() as u32,
        &a_data,
    )
    .unwrap();

    let (parked_tx, parked_rx) = mpsc::channel::<ChunkDigest>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    s.set_put_hook(Some(Arc::new(move |d: &ChunkDigest| {
        let _ = parked_tx.send(*d);
        // Bounded, and a test that fails drops the sender: never parked for good.
        let _ = release_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(60));
    })));
    let (put_done_tx, put_done_rx) = mpsc::channel();
    let putter = {
        let (s, b_data) = (s.clone(), b_data.clone());
        std::thread::spawn(move || {
            let r = s.put(
                &b,
                &blob(0),
                Compression::None,
                b_data.len() as u32,
                &b_data,
            );
            let _ = put_done_tx.send(r.map_err(|e| e.to_string()));
        })
    };
    let parked = parked_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the put never reached its write");
    assert_eq!(parked, b);

    // The put is parked inside its write. Gets of another chunk complete — enough of them that
    // one also applies the log of uses to the eviction index — and so do `contains`, `stats`,
    // and a get of the chunk being written (not there yet).
    let (got_tx, got_rx) = mpsc::channel();
    let getter = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut last = None;
            for _ in 0..1500 {
                last = s.get(&a).unwrap();
            }
            let b_now = s.get(&b).unwrap().is_some();
            let _ = got_tx.send((last, s.contains(&a), s.contains(&b), b_now, s.stats()));
        })
    };
    let (last, has_a, has_b, b_now, stats) = got_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a get waited for a put's write");
    assert!(
        put_done_rx.try_recv().is_err(),
        "the put finished before it was released: the gets did not run while it was parked"
    );
    assert_eq!(&last.expect("chunk a is stored").data[..], &a_data[..]);
    assert!(has_a && !has_b && !b_now);
    assert_eq!(stats.chunks, 1);
    assert_eq!(stats.hits, 1500);

    release_tx.send(()).unwrap();
    let done = put_done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the released put did not finish");
    assert_eq!(done, Ok(()));
    putter.join().unwrap();
    getter.join().unwrap();
    s.set_put_hook(None);
    assert_eq!(&s.get(&b).unwrap().unwrap().data[..], &b_data[..]);
    assert_eq!(s.stats().chunks, 2);
}

#[test]
fn a_chunk_read_since_it_was_written_is_evicted_after_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), config(40_000)).unwrap();
    let chunks: Vec<_> = (70..76).map(|i| chunk(i, 10_000)).collect();
    let put = |i: usize| {
        let (d, data) = &chunks[i];
        s.put(d, &blob(0), Compression::None, data.len() as u32, data)
            .unwrap();
    };
    for i in 0..4 {
        put(i);
    }
    // Read 0: the oldest write is now the most recent use, so 1 goes first, then 2.
    assert!(s.get(&chunks[0].0).unwrap().is_some());
    put(4);
    assert!(s.contains(&chunks[0].0) && !s.contains(&chunks[1].0));
    assert!(s.get(&chunks[2].0).unwrap().is_some());
    put(5);
    assert!(s.contains(&chunks[2].0) && !s.contains(&chunks[3].0));
    assert!(s.contains(&chunks[0].0));
}

#[test]
fn the_recency_of_reads_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (80..85).map(|i| chunk(i, 10_000)).collect();
    {
        let s = Store::open(dir.path(), config(40_000)).unwrap();
        for (d, data) in &chunks[..4] {
            s.put(d, &blob(0), Compression::None, data.len() as u32, data)
                .unwrap();
        }
        // Read after the last write: its access record is only written at close.
        assert!(s.get(&chunks[0].0).unwrap().is_some());
    }
    let s = Store::open(dir.path(), config(40_000)).unwrap();
    let (d, data) = &chunks[4];
    s.put(d, &blob(0), Compression::None, data.len() as u32, data)
        .unwrap();
    assert!(
        s.contains(&chunks[0].0),
        "the read before the close was forgotten: the chunk read last was evicted first"
    );
    assert!(!s.contains(&chunks[1].0));
}

#[test]
fn re_pinning_writes_only_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), config(1 << 30)).unwrap();
    let chunks: Vec<(ChunkDigest, Vec<u8>)> = (0..5).map(|i| chunk(40 + i, 1000)).collect();
    for (d, data) in &chunks {
        s.put(d, &blob(0), Compression::None, data.len() as u32, data)
            .unwrap();
    }
    let d = |i: usize| chunks[i].0;
    s.pin("img", &[d(0), d(1), d(2), d(2)]).unwrap();
    assert_eq!(s.stats().pinned_chunks, 3);
    // The same set again: nothing changes (a second mount, a mount of a pulled image).
    s.pin("img", &[d(2), d(1), d(0)]).unwrap();
    assert_eq!(s.stats().pinned_chunks, 3);
    // Another image sharing a chunk.
    s.pin("other", &[d(2), d(3)]).unwrap();
    assert_eq!(s.stats().pinned_chunks, 4);
    // A new set for "img": 0 goes, 4 comes; 2 stays pinned by both.
    s.pin("img", &[d(1), d(2), d(4)]).unwrap();
    assert_eq!(s.stats().pinned_chunks, 4);
    s.unpin("other").unwrap();
    assert_eq!(s.stats().pinned_chunks, 3);
    assert_eq!(s.gc().unwrap().chunks, 2);
    // Reopened, the pins are what was written.
    drop(s);
    let s = Store::open(dir.path(), config(1 << 30)).unwrap();
    assert_eq!(s.stats().pinned_chunks, 3);
    assert_eq!(s.pinned_images().unwrap(), vec!["img".to_string()]);
}
