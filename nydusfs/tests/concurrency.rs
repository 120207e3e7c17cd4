//! Concurrent readers get the right bytes, and a read stuck on one slow chunk blocks neither
//! the session nor reads of other files.

pub mod common;

use std::collections::HashSet;
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{file_chunk_refs, inode_at, TestMount};
use dfagent_resolver::BlobDirTier;
use dfagent_test_support::fixtures::{
    expected_file, expected_files, fixture, sha256_hex, ExpectedFile,
};
use dfagent_test_support::tiers::{digests, GatedTier, OpenOnDrop};
use dfagent_test_support::wait::{bounded, wait_until};

const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Start `readers` threads together (a barrier), each reading the file its entry names, and
/// collect `(path, sha256 or error)` within a bounded time.
fn read_in_parallel(m: &TestMount, files: &[ExpectedFile]) {
    let barrier = Arc::new(Barrier::new(files.len()));
    let (tx, rx) = mpsc::channel();
    for f in files {
        let (barrier, tx) = (barrier.clone(), tx.clone());
        let (path, full) = (f.path.clone(), m.join(&f.path));
        std::thread::spawn(move || {
            barrier.wait();
            let r = std::fs::read(&full).map(|d| sha256_hex(&d));
            let _ = tx.send((path, r));
        });
    }
    drop(tx);
    let deadline = Instant::now() + READ_TIMEOUT;
    for _ in files {
        let left = deadline.saturating_duration_since(Instant::now());
        let (path, r) = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("parallel readers did not all finish in time: {e}"));
        let sha = r.unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let want = files.iter().find(|f| f.path == path).unwrap();
        assert_eq!(sha, want.sha256, "{path}: wrong bytes under concurrency");
    }
}

/// 16 different files (the largest ones first, one path per inode), read by 16 threads at once.
fn sixteen_different_files(image: &str) -> Vec<ExpectedFile> {
    let img = common::open_image(image);
    let mut files = expected_files(image);
    files.sort_by(|a, b| b.size.cmp(&a.size).then(a.path.cmp(&b.path)));
    let mut seen = HashSet::new();
    let picked: Vec<_> = files
        .into_iter()
        .filter(|f| seen.insert(inode_at(&img, &f.path).nid))
        .take(16)
        .collect();
    assert_eq!(picked.len(), 16);
    picked
}

fn parallel_reads(image: &str) {
    let m = TestMount::fixture(image);
    read_in_parallel(&m, &sixteen_different_files(image));
    m.unmount();

    // A fresh mount (cold page cache and chunk cache): 16 readers of the same multi-chunk file.
    let m = TestMount::fixture(image);
    let f = expected_file(image, "multi-chunk.bin");
    assert!(file_chunk_refs(&m.image, "multi-chunk.bin").len() > 1);
    read_in_parallel(&m, &vec![f; 16]);
    m.unmount();
}

#[test]
fn sixteen_readers_zstd_blake3() {
    parallel_reads("v6-zstd-blake3");
}

#[test]
fn sixteen_readers_none_64k() {
    parallel_reads("v6-none-64k");
}

#[test]
fn a_stuck_chunk_blocks_only_its_own_reader() {
    let image = "v6-zstd-blake3";
    let img = common::open_image(image);
    let multi = file_chunk_refs(&img, "multi-chunk.bin");
    let gated = multi[0].digest;
    let tier = Arc::new(GatedTier::new(
        Arc::new(BlobDirTier::new(fixture(image).join("blobs"))),
        gated,
    ));
    let m = TestMount::with_tier(image, tier.clone());
    // Declared after the mount, so dropped (gate opened) before the mount is torn down.
    let gate = OpenOnDrop(tier.clone());

    let (tx, blocked) = mpsc::channel();
    let p = m.join("multi-chunk.bin");
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(p).map(|d| sha256_hex(&d)));
    });
    assert!(
        wait_until(Duration::from_secs(10), || tier.hits() > 0),
        "the read of multi-chunk.bin never reached the gated chunk"
    );

    // Files that do not need the gated chunk, read while it is held back.
    let others: Vec<ExpectedFile> = expected_files(image)
        .into_iter()
        .filter(|f| f.size > 0 && !digests(&file_chunk_refs(&img, &f.path)).contains(&gated))
        .filter(|f| {
            [
                "hello.txt",
                "xattr.txt",
                "exactly-1MiB.bin",
                "zeros-3MiB.bin",
                "text/big.txt",
                "bin/tool",
                "owned/by-1000",
            ]
            .contains(&f.path.as_str())
        })
        .collect();
    assert_eq!(others.len(), 7, "fixture changed: {others:?}");
    let paths: Vec<_> = others
        .iter()
        .map(|f| (f.clone(), m.join(&f.path)))
        .collect();
    bounded(
        "reading other files while a chunk is held back",
        Duration::from_secs(10),
        move || {
            for (f, p) in paths {
                let d = std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", f.path));
                assert_eq!(sha256_hex(&d), f.sha256, "{}: wrong bytes", f.path);
            }
        },
    );
    // Metadata of the blocked file itself still answers.
    let p = m.join("multi-chunk.bin");
    let md = bounded(
        "stat of the blocked file",
        Duration::from_secs(10),
        move || std::fs::metadata(p),
    )
    .unwrap();
    assert_eq!(md.len(), 2109497);

    assert!(
        matches!(blocked.try_recv(), Err(TryRecvError::Empty)),
        "the read of multi-chunk.bin finished while its first chunk was held back"
    );
    tier.open();
    let sha = blocked
        .recv_timeout(Duration::from_secs(10))
        .expect("the blocked read did not finish within 10 s of opening the gate")
        .expect("the blocked read failed");
    assert_eq!(sha, expected_file(image, "multi-chunk.bin").sha256);
    drop(gate);
    m.unmount();
}
