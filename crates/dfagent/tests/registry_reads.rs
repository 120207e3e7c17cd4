//! What a registry mount asks the registry for, and what it does with bad answers: a recording
//! (and corrupting) proxy sits between `dfagent mount` and a real `docker-registry`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use dfagent_test_support::cli::Dfagent;
use dfagent_test_support::dfagent_cli;
use dfagent_test_support::fixtures::{
    fixture, list_tree_without_root, listing_files, listing_without_root, sha256_hex,
};
use dfagent_test_support::proxy::{Corrupt, Proxy, Seen};
use dfagent_test_support::registry::Registry;

const IMAGE: &str = "v6-chunkdict";
const LISTING: &str = "texture2.expected.jsonl";

/// A registry holding the fixture, a work directory with an empty store and a mount point.
struct Setup {
    reg: Registry,
    repo: String,
    mp: PathBuf,
    /// The CLI on the work directory's store.
    cli: Dfagent,
    _work: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let work = tempfile::tempdir().unwrap();
        let store = work.path().join("store");
        let mp = work.path().join("mnt");
        std::fs::create_dir(&mp).unwrap();
        let reg = Registry::start();
        let repo = format!("test/{IMAGE}:v1");
        dfagent_cli!()
            .with_store(&work.path().join("push-store"))
            .push(&fixture(IMAGE), &format!("{}/{repo}", reg.host()));
        let cli = dfagent_cli!().with_store(&store);
        Setup {
            reg,
            repo,
            mp,
            cli,
            _work: work,
        }
    }

    /// A proxy in front of the registry, and the image's reference through it.
    fn proxied(&self, corrupt: Corrupt) -> (Proxy, String) {
        let proxy = Proxy::start(self.reg.addr(), corrupt);
        let reference = format!("{}/{}", proxy.host(), self.repo);
        (proxy, reference)
    }
}

/// `(blob digest, first byte, last byte)` of every chunk of `path` in the fixture.
fn chunk_ranges(path: &str) -> BTreeSet<(String, u64, u64)> {
    let img = dfagent_rafs::Image::open(fixture(IMAGE).join("bootstrap")).unwrap();
    let mut nid = img.root();
    for part in path.split('/') {
        nid = img.lookup(nid, part.as_bytes()).unwrap().unwrap().nid;
    }
    let inode = img.inode(nid).unwrap();
    img.chunks(&inode, 0, inode.size)
        .unwrap()
        .into_iter()
        .map(|c| {
            let first = c.chunk.compressed_offset;
            (
                c.chunk.blob.to_string(),
                first,
                first + u64::from(c.chunk.compressed_size) - 1,
            )
        })
        .collect()
}

fn range_gets(log: &[Seen]) -> Vec<&Seen> {
    log.iter()
        .filter(|s| s.is_blob_get() && s.range.is_some())
        .collect()
}

/// The sha256 the fixture listing gives for `path`.
fn expected_sha256(path: &str) -> String {
    listing_files(LISTING)
        .into_iter()
        .find(|f| f.path == path)
        .unwrap()
        .sha256
}

#[test]
fn a_cold_mount_fetches_only_the_bootstrap_and_the_ranges_it_reads() {
    let s = Setup::new();
    let mp = s.mp.clone();
    let (proxy, reference) = s.proxied(Corrupt::Never);

    let m = s.cli.mount(&reference, &mp, "none");
    let data = std::fs::read(mp.join("hello.txt")).unwrap();
    assert_eq!(sha256_hex(&data), expected_sha256("hello.txt"));
    let log = proxy.take_log();

    // One whole-blob GET (the bootstrap layer), then only the chunk of hello.txt.
    let whole: Vec<_> = log
        .iter()
        .filter(|s| s.is_blob_get() && s.range.is_none())
        .collect();
    assert_eq!(whole.len(), 1, "{log:#?}");
    let data_blobs: Vec<String> = chunk_ranges("multi-chunk.bin")
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert!(
        !data_blobs
            .iter()
            .any(|b| whole[0].path.contains(b.as_str())),
        "the whole-blob GET must be the bootstrap layer, not a data blob: {}",
        whole[0].path
    );
    let want = chunk_ranges("hello.txt");
    let got: BTreeSet<(String, u64, u64)> = range_gets(&log)
        .iter()
        .map(|s| {
            let blob = s.path.rsplit("sha256:").next().unwrap().to_string();
            let (a, b) = s.range.unwrap();
            (blob, a, b)
        })
        .collect();
    assert_eq!(got, want, "{log:#?}");
    let fetched: u64 = range_gets(&log).iter().map(|s| s.body_len).sum();
    let wanted: u64 = want.iter().map(|(_, a, b)| b - a + 1).sum();
    assert_eq!(fetched, wanted);

    // A multi-chunk file: every byte fetched lies inside its chunks' span.
    let data = std::fs::read(mp.join("multi-chunk.bin")).unwrap();
    assert_eq!(sha256_hex(&data), expected_sha256("multi-chunk.bin"));
    let want = chunk_ranges("multi-chunk.bin");
    let lo = want.iter().map(|r| r.1).min().unwrap();
    let hi = want.iter().map(|r| r.2).max().unwrap();
    let log = proxy.take_log();
    assert!(!range_gets(&log).is_empty());
    for s in range_gets(&log) {
        let (a, b) = s.range.unwrap();
        assert!(a >= lo && b <= hi, "range {a}-{b} outside {lo}-{hi}");
    }
    assert!(!log.iter().any(|s| s.is_blob_get() && s.range.is_none()));
    m.stop();
}

#[test]
fn a_restarted_agent_asks_the_registry_for_nothing_it_has() {
    let s = Setup::new();
    let mp = s.mp.clone();
    let (proxy, reference) = s.proxied(Corrupt::Never);

    // First run: a mount that reads everything, so every chunk lands in the store.
    let m = s.cli.mount(&reference, &mp, "none");
    assert_eq!(list_tree_without_root(&mp), listing_without_root(LISTING));
    m.stop();
    assert!(!range_gets(&proxy.take_log()).is_empty());

    // Second run, registry up: the manifest may be checked, but no blob is fetched.
    let m = s.cli.mount(&reference, &mp, "all");
    assert_eq!(list_tree_without_root(&mp), listing_without_root(LISTING));
    m.stop();
    let log = proxy.take_log();
    let blob_gets: Vec<_> = log.iter().filter(|s| s.is_blob_get()).collect();
    assert!(blob_gets.is_empty(), "{blob_gets:#?}");
}

#[test]
fn a_flipped_byte_is_retried_and_permanent_corruption_is_eio() {
    let s = Setup::new();
    let mp = s.mp.clone();
    let (proxy, reference) = s.proxied(Corrupt::FirstOfEachRange);

    // Each range's first answer is corrupted: the resolver asks again and readers see only
    // the right bytes.
    let m = s.cli.mount(&reference, &mp, "none");
    let data = std::fs::read(mp.join("multi-chunk.bin")).unwrap();
    assert_eq!(sha256_hex(&data), expected_sha256("multi-chunk.bin"));
    let log = proxy.take_log();
    assert!(log.iter().any(|s| s.corrupted), "{log:#?}");
    assert!(m.log().contains("failed verification"), "{}", m.log());

    // Now every answer is corrupted: the read fails with EIO and the log names the file.
    proxy.set_corrupt(Corrupt::Always);
    let err = std::fs::read(mp.join("shared-multi.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Retries are bounded: the same range was asked for a few times, not forever.
    let log = proxy.take_log();
    assert!(range_gets(&log).len() <= 3 * 4, "{log:#?}");
    let mount_log = m.log();
    assert!(
        mount_log.contains("shared-multi.bin") && mount_log.contains("verification"),
        "{mount_log}"
    );
    // Other files still read once the path is healthy again.
    proxy.set_corrupt(Corrupt::Never);
    let data = std::fs::read(mp.join("hello.txt")).unwrap();
    assert_eq!(sha256_hex(&data), expected_sha256("hello.txt"));
    m.stop();

    // Nothing that failed verification was stored.
    s.cli.assert_store_verifies();
}

#[test]
fn a_store_smaller_than_the_image_still_serves_all_of_it() {
    let s = Setup::new();
    let mp = s.mp.clone();
    let reference = format!("{}/{}", s.reg.host(), s.repo);
    let image_bytes: u64 = dfagent_rafs::Image::open(fixture(IMAGE).join("bootstrap"))
        .unwrap()
        .all_chunks()
        .unwrap()
        .iter()
        .map(|c| u64::from(c.compressed_size))
        .sum();
    let capacity = image_bytes / 3;
    let cap = capacity.to_string();

    let m = s.cli.mount_with(
        &reference,
        &mp,
        &["--prefetch", "none", "--cache-capacity", &cap],
    );
    assert_eq!(list_tree_without_root(&mp), listing_without_root(LISTING));
    // Twice: the second pass reads chunks that were evicted in between.
    assert_eq!(list_tree_without_root(&mp), listing_without_root(LISTING));
    let mp_log = mp.with_extension("log");
    m.stop();
    let st = s.cli.cache_stat();
    let used = st["bytes"].as_u64().unwrap();
    assert!(
        used <= capacity,
        "store holds {used} bytes, capacity {capacity}"
    );
    // The mount's own report: it evicted to stay within the capacity.
    let log = std::fs::read_to_string(mp_log).unwrap();
    let evictions: u64 = log
        .split("evictions ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no store report in the mount log: {log}"));
    assert!(evictions > 0, "{log}");
}
