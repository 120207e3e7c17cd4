//! The chunk store on a real RocksDB on disk: persistence, ownership, capacity and pins,
//! tamper detection through the resolver, and crash safety under kill -9.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dfagent_core::{BlobId, ChunkDigest, ChunkRef, Compression, DigestAlgo};
use dfagent_resolver::{Resolver, ResolverConfig, ResolverCore};
use dfagent_store::{Store, StoreConfig, StoreError, StoreTier};
use dfagent_test_support::tiers::MemTier;

fn chunk(i: u32, len: usize) -> (ChunkDigest, Vec<u8>) {
    let data: Vec<u8> = (0..len)
        .map(|j| (j as u32).wrapping_mul(31).wrapping_add(i) as u8)
        .collect();
    (DigestAlgo::Blake3.digest(&data), data)
}

fn config(capacity: u64) -> StoreConfig {
    StoreConfig {
        capacity,
        ..StoreConfig::default()
    }
}

#[test]
fn chunks_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (d, data) = chunk(1, 100_000);
    {
        let s = Store::open(dir.path(), config(1 << 30)).unwrap();
        s.put(&d, Compression::None, data.len() as u32, &data)
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
        s.put(d, Compression::None, data.len() as u32, data)
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
        s.put(d, Compression::None, data.len() as u32, data)
            .unwrap();
    }
    let (d, data) = &chunks[2];
    assert!(matches!(
        s.put(d, Compression::None, data.len() as u32, data),
        Err(StoreError::Full(_))
    ));
    s.unpin("img").unwrap();
    s.put(d, Compression::None, data.len() as u32, data)
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
        .put(&d, Compression::None, bad.len() as u32, &bad)
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
        .put(&d, Compression::None, bad.len() as u32, &bad)
        .unwrap();
    let (d2, z) = {
        let (d2, raw) = chunk(8, 30_000);
        (d2, (zstd::bulk::compress(&raw, 3).unwrap(), raw.len()))
    };
    store.put(&d2, Compression::Zstd, z.1 as u32, &z.0).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].0, d);
    assert!(!store.contains(&d) && store.contains(&d2));
}

/// Child mode of the crash test: write chunks forever, printing each digest once `put` returned.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var("DFAGENT_STORE_CRASH_DIR") else {
        return;
    };
    let s = Store::open(std::path::Path::new(&dir), config(1 << 30)).unwrap();
    for i in 0..100_000u32 {
        let (d, data) = chunk(i, 64 << 10);
        s.put(&d, Compression::None, data.len() as u32, &data)
            .unwrap();
        println!("ACK {i}");
    }
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DFAGENT_STORE_CRASH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < 200 && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(i) = l.strip_prefix("ACK ") {
                    acked.push(i.parse::<u32>().unwrap());
                }
            }
            _ => break,
        }
    }
    // SAFETY: sending SIGKILL to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert!(
        acked.len() >= 200,
        "child acknowledged only {} chunks",
        acked.len()
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
    assert!(
        s.verify().unwrap().removed.is_empty(),
        "a wrong chunk survived the crash"
    );
}

#[test]
fn re_pinning_writes_only_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), config(1 << 30)).unwrap();
    let chunks: Vec<(ChunkDigest, Vec<u8>)> = (0..5).map(|i| chunk(40 + i, 1000)).collect();
    for (d, data) in &chunks {
        s.put(d, Compression::None, data.len() as u32, data)
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
