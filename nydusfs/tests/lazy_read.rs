//! Laziness: mounting fetches nothing, and reading one file through the mount asks the tier for
//! that file's chunks and no others.

pub mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{file_chunk_refs, TestMount};
use dfagent_core::ChunkDigest;
use dfagent_resolver::BlobDirTier;
use dfagent_test_support::fixtures::{expected_file, fixture, sha256_hex};
use dfagent_test_support::tiers::{digests, CountingTier};
use dfagent_test_support::wait::{bounded, wait_until};

/// A tier that records every chunk it is asked for, then lets `image`'s blob directory answer.
fn counting_tier(image: &str) -> Arc<CountingTier> {
    Arc::new(CountingTier::new(
        "counting",
        Arc::new(BlobDirTier::new(fixture(image).join("blobs"))),
    ))
}

/// Mount `image`, read only `path` (lookups, no listing), and check that exactly its chunks
/// were fetched, each once.
fn read_fetches_only_that_file(image: &str, path: &str) {
    let tier = counting_tier(image);
    let m = TestMount::with_tier(image, tier.clone());
    assert!(
        tier.record.requested().is_empty(),
        "mounting fetched chunks: {:?}",
        tier.record.requested()
    );

    let want = expected_file(image, path);
    let p = m.join(path);
    let data = bounded(
        &format!("reading {path}"),
        Duration::from_secs(10),
        move || std::fs::read(p),
    )
    .unwrap_or_else(|e| panic!("reading {path}: {e}"));
    assert_eq!(data.len() as u64, want.size);
    assert_eq!(
        sha256_hex(&data),
        want.sha256,
        "{image}/{path}: wrong bytes"
    );

    let expected = digests(&file_chunk_refs(&m.image, path));
    assert!(!expected.is_empty());
    let requested = tier.record.requested();
    let requested_set: HashSet<ChunkDigest> = requested.iter().copied().collect();
    assert_eq!(
        requested_set, expected,
        "{image}: reading {path} fetched other chunks than its own"
    );
    assert_eq!(
        requested.len(),
        requested_set.len(),
        "{image}: a chunk of {path} was fetched more than once: {requested:?}"
    );

    // A second read is served without the tier (page cache or the resolver's cache).
    let p = m.join(path);
    let again = bounded("reading again", Duration::from_secs(10), move || {
        std::fs::read(p)
    })
    .unwrap();
    assert_eq!(sha256_hex(&again), want.sha256);
    assert_eq!(tier.record.requested().len(), requested.len());
    m.unmount();
}

#[test]
fn reading_hello_fetches_only_its_chunk() {
    read_fetches_only_that_file("v6-zstd-blake3", "hello.txt");
}

#[test]
fn reading_a_multi_chunk_file_fetches_only_its_chunks() {
    // 200000 bytes in 64 KiB chunks: four chunks, shared with text/copy-of-big.txt and no other.
    let image = common::open_image("v6-none-64k");
    assert_eq!(file_chunk_refs(&image, "text/big.txt").len(), 4);
    read_fetches_only_that_file("v6-none-64k", "text/big.txt");
}

#[test]
fn reading_a_file_of_the_second_layer_fetches_only_its_chunks() {
    read_fetches_only_that_file("v6-nydusify-2layer", "added.txt");
}

#[test]
fn metadata_operations_fetch_nothing() {
    let tier = counting_tier("v6-zstd-blake3");
    let m = TestMount::with_tier("v6-zstd-blake3", tier.clone());
    let root = m.path().to_path_buf();
    bounded("metadata walk", Duration::from_secs(30), move || {
        // A full walk: readdir, stat, readlink and xattrs of every entry, no file data.
        let mut stack = vec![root];
        let mut n = 0;
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let md = std::fs::symlink_metadata(e.path()).unwrap();
                if md.is_dir() {
                    stack.push(e.path());
                } else if md.file_type().is_symlink() {
                    std::fs::read_link(e.path()).unwrap();
                }
                n += 1;
            }
        }
        assert!(n > 600, "walk saw only {n} entries");
    });
    assert!(
        tier.record.requested().is_empty(),
        "metadata operations fetched chunks: {:?}",
        tier.record.requested()
    );
    m.unmount();
}

#[test]
fn a_sequential_reader_gets_the_next_chunks_fetched_ahead() {
    // multi-chunk.bin: 2109497 bytes in 64 KiB chunks (33), well inside the 16 MiB window.
    let image = "v6-none-64k";
    let path = "multi-chunk.bin";
    let tier = counting_tier(image);
    let m = TestMount::with_tier(image, tier.clone());
    let own = digests(&file_chunk_refs(&m.image, path));
    assert!(own.len() > 30);
    let p = m.join(path);
    let head = bounded(
        "reading the first 4 KiB",
        Duration::from_secs(10),
        move || {
            use std::io::Read;
            let mut f = std::fs::File::open(p)?;
            let mut buf = vec![0u8; 4096];
            f.read_exact(&mut buf).map(|_| buf)
        },
    )
    .unwrap();
    assert_eq!(head.len(), 4096);
    // The rest of the file is fetched in the background, each chunk once, nothing else.
    let done = wait_until(Duration::from_secs(10), || {
        tier.record.requested().iter().collect::<HashSet<_>>().len() == own.len()
    });
    let requested = tier.record.requested();
    assert!(
        done,
        "only {} of {} chunks fetched ahead",
        requested.len(),
        own.len()
    );
    assert!(requested.iter().all(|d| own.contains(d)));
    assert!(m.metrics.snapshot().readahead_chunks > 0);
    m.unmount();
}

#[test]
fn random_reads_get_no_read_ahead() {
    let image = "v6-none-64k";
    let path = "multi-chunk.bin";
    let tier = counting_tier(image);
    let m = TestMount::with_tier(image, tier.clone());
    let p = m.join(path);
    bounded("random reads", Duration::from_secs(10), move || {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(p).unwrap();
        // posix_fadvise(RANDOM) turns the kernel's own read-ahead off for this file.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                libc::POSIX_FADV_RANDOM,
            )
        };
        let mut buf = [0u8; 4096];
        for off in [1_500_000u64, 300_000, 1_900_000, 800_000] {
            f.read_exact_at(&mut buf, off).unwrap();
        }
    });
    assert_eq!(m.metrics.snapshot().readahead_chunks, 0);
    // Each 4 KiB read touches one chunk, or two where it straddles a boundary.
    assert!(
        tier.record.requested().len() <= 8,
        "{:?}",
        tier.record.requested()
    );
    m.unmount();
}
