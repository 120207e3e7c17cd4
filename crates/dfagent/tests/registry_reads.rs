//! What a registry mount asks the registry for, and what it does with bad answers: a recording
//! (and corrupting) proxy sits between `dfagent mount` and a real `docker-registry`.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::proxy::{Corrupt, Proxy, Seen};
use common::{assert_store_verifies, expected, fixture, listing, push, stat_json, Mount, Registry};
use sha2::Digest as _;

const IMAGE: &str = "v6-chunkdict";
const LISTING: &str = "texture2.expected.jsonl";

/// A registry holding the fixture, a work directory with an empty store and a mount point.
struct Setup {
    reg: Registry,
    repo: String,
    store: PathBuf,
    mp: PathBuf,
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
        push(
            &fixture(IMAGE),
            &format!("127.0.0.1:{}/{repo}", reg.port),
            &work.path().join("push-store"),
        );
        Setup {
            reg,
            repo,
            store,
            mp,
            _work: work,
        }
    }

    /// A proxy in front of the registry, and the image's reference through it.
    fn proxied(&self, corrupt: Corrupt) -> (Proxy, String) {
        let proxy = Proxy::start(self.reg.port, corrupt);
        let reference = format!("127.0.0.1:{}/{}", proxy.port, self.repo);
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

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// The sha256 the fixture listing gives for `path`.
fn expected_sha256(path: &str) -> String {
    let line = expected(LISTING)
        .into_iter()
        .find(|l| l.contains(&format!("\"path\": \"{path}\"")))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["sha256"].as_str().unwrap().to_string()
}

#[test]
fn a_cold_mount_fetches_only_the_bootstrap_and_the_ranges_it_reads() {
    let s = Setup::new();
    let (store, mp) = (s.store.clone(), s.mp.clone());
    let (proxy, reference) = s.proxied(Corrupt::Never);

    let m = Mount::start(&reference, &mp, &store, "none");
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
    let (store, mp) = (s.store.clone(), s.mp.clone());
    let (proxy, reference) = s.proxied(Corrupt::Never);

    // First run: a mount that reads everything, so every chunk lands in the store.
    let m = Mount::start(&reference, &mp, &store, "none");
    assert_eq!(listing(&mp), expected(LISTING));
    m.stop();
    assert!(!range_gets(&proxy.take_log()).is_empty());

    // Second run, registry up: the manifest may be checked, but no blob is fetched.
    let m = Mount::start(&reference, &mp, &store, "all");
    assert_eq!(listing(&mp), expected(LISTING));
    m.stop();
    let log = proxy.take_log();
    let blob_gets: Vec<_> = log.iter().filter(|s| s.is_blob_get()).collect();
    assert!(blob_gets.is_empty(), "{blob_gets:#?}");
}

#[test]
fn a_flipped_byte_is_retried_and_permanent_corruption_is_eio() {
    let s = Setup::new();
    let (store, mp) = (s.store.clone(), s.mp.clone());
    let (proxy, reference) = s.proxied(Corrupt::FirstOfEachRange);

    // Each range's first answer is corrupted: the resolver asks again and readers see only
    // the right bytes.
    let m = Mount::start(&reference, &mp, &store, "none");
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
    assert_store_verifies(&store);
}

#[test]
fn a_store_smaller_than_the_image_still_serves_all_of_it() {
    let s = Setup::new();
    let (store, mp) = (s.store.clone(), s.mp.clone());
    let reference = format!("127.0.0.1:{}/{}", s.reg.port, s.repo);
    let image_bytes: u64 = dfagent_rafs::Image::open(fixture(IMAGE).join("bootstrap"))
        .unwrap()
        .all_chunks()
        .unwrap()
        .iter()
        .map(|c| u64::from(c.compressed_size))
        .sum();
    let capacity = image_bytes / 3;
    let cap = capacity.to_string();

    let m = Mount::start_with(
        &reference,
        &mp,
        &store,
        &["--prefetch", "none", "--cache-capacity", &cap],
    );
    assert_eq!(listing(&mp), expected(LISTING));
    // Twice: the second pass reads chunks that were evicted in between.
    assert_eq!(listing(&mp), expected(LISTING));
    let mp_log = mp.with_extension("log");
    m.stop();
    let st = stat_json(&store);
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
