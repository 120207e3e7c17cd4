//! The fault campaign of `docs/reliability.md`, end to end: `dfagent mount` (in-process or
//! through a `dfagent daemon`) of a fixture image in a real `docker-registry`, reached through
//! the fault-injecting proxy of test-support. Each test is one row of the table (or two, for
//! a transient and a permanent form of the same fault) and prints
//!
//! `fault-campaign: ROW injected=N wrong_bytes=0 reads_failed=M data_lost=0 reads=R`
//!
//! Every file read is compared with the fixture listing's sha256: a wrong byte fails the test,
//! whatever the fault. A fault the client can ride out (a few bad answers per range) must cost
//! no read; a permanent one must fail the reads it touches with EIO, bounded in time, never
//! return wrong bytes and never leave anything bad in the store. Permanent phases run first, on
//! a few files, so the later phases still find the registry's data unread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dfagent_core::ChunkDigest;
use dfagent_store::{Store, StoreConfig};
use dfagent_test_support::campaign::{
    first_k_of_each_range, is_range_get, line, number_before, read_files, write_docker_config,
    Tally,
};
use dfagent_test_support::cli::Dfagent;
use dfagent_test_support::daemon::DfagentDaemon;
use dfagent_test_support::dfagent_cli;
use dfagent_test_support::fixtures::{fixture, listing_files, ExpectedFile};
use dfagent_test_support::proxy::{Action, Corrupt, Proxy, Request, RetryAfter, Seen};
use dfagent_test_support::registry::Registry;
use dfagent_test_support::tmp_dir;
use dfagent_test_support::tmpfs::Tmpfs;
use dfagent_test_support::token::{ExpiresIn, TokenServer};

const IMAGE: &str = "v6-chunkdict";
const LISTING: &str = "texture2.expected.jsonl";
/// Bound of one pass of reads over the whole image (a hang fails the test).
const PASS: Duration = Duration::from_secs(600);
/// Files a permanent fault is tried on (each costs the client's whole retry budget).
const PERMANENT_FILES: usize = 3;

/// A registry holding the fixture, a work directory with an empty store and a mount point.
struct Setup {
    reg: Option<Registry>,
    reg_host: String,
    repo: String,
    mp: PathBuf,
    store: PathBuf,
    cli: Dfagent,
    work: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let work = tmp_dir("dfagent-faults-");
        let store = work.path().join("store");
        let mp = work.path().join("mnt");
        std::fs::create_dir(&mp).unwrap();
        let reg = Registry::start();
        let repo = format!("faults/{IMAGE}:v1");
        dfagent_cli!()
            .with_store(&work.path().join("push-store"))
            .push(&fixture(IMAGE), &format!("{}/{repo}", reg.host()));
        let _ = std::fs::remove_dir_all(work.path().join("push-store"));
        Setup {
            reg_host: reg.host(),
            reg: Some(reg),
            repo,
            mp,
            cli: dfagent_cli!().with_store(&store),
            store,
            work,
        }
    }

    fn reg(&self) -> &Registry {
        self.reg.as_ref().expect("the registry is running")
    }

    /// A proxy in front of the registry deciding each request with `policy`, and the image's
    /// reference through it.
    fn proxied(
        &self,
        corrupt: Corrupt,
        policy: impl Fn(&Request) -> Action + Send + Sync + 'static,
    ) -> (Proxy, String) {
        let proxy = Proxy::builder()
            .upstream(self.reg().addr())
            .corrupt(corrupt)
            .policy(policy)
            .start();
        let reference = format!("{}/{}", proxy.host(), self.repo);
        (proxy, reference)
    }

    /// The image's reference straight at the registry.
    fn direct(&self) -> String {
        format!("{}/{}", self.reg_host, self.repo)
    }
}

/// Regular files of the image with data (a read of one fetches at least one chunk).
fn data_files() -> Vec<ExpectedFile> {
    listing_files(LISTING)
        .into_iter()
        .filter(|f| f.size > 0)
        .collect()
}

/// [`PERMANENT_FILES`] files of at least 16 KiB (whose chunks a 1-byte cut does shorten), for a
/// permanent fault; and the other files with data, in listing order.
fn split_files() -> (Vec<ExpectedFile>, Vec<ExpectedFile>) {
    let (mut perm, mut rest) = (Vec::new(), Vec::new());
    for f in data_files() {
        if perm.len() < PERMANENT_FILES && f.size >= 16 << 10 {
            perm.push(f);
        } else {
            rest.push(f);
        }
    }
    assert_eq!(perm.len(), PERMANENT_FILES);
    (perm, rest)
}

/// Every chunk digest of the image.
fn image_chunks() -> Vec<ChunkDigest> {
    let mut d: Vec<ChunkDigest> = dfagent_rafs::Image::open(fixture(IMAGE).join("bootstrap"))
        .unwrap()
        .all_chunks()
        .unwrap()
        .iter()
        .map(|c| c.digest)
        .collect();
    d.sort_by_key(|c| c.to_string());
    d.dedup();
    d
}

/// Which of `chunks` the (closed) store at `dir` holds.
fn stored(dir: &Path, chunks: &[ChunkDigest]) -> Vec<ChunkDigest> {
    let store = Store::open(dir, StoreConfig::default()).expect("opening the store");
    chunks
        .iter()
        .filter(|d| store.contains(d))
        .copied()
        .collect()
}

/// `(checked, bad)` of `dfagent cache verify`, which must exit 0 with no bad chunk.
fn verify_clean(cli: &Dfagent) -> u64 {
    let out = cli.run(&["cache", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "cache verify: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(number_before(&text, " bad ones"), Some(0), "{text}");
    number_before(&text, " chunks, removed").unwrap_or(0)
}

/// A policy whose behaviour the test switches between phases: [`Phase::Clean`] forwards,
/// [`Phase::Storm`] asks `storm`, [`Phase::Always`] gives every range GET `always`.
#[derive(Clone)]
struct Switch(Arc<AtomicU8>);

#[derive(Clone, Copy)]
#[repr(u8)]
enum Phase {
    Clean = 0,
    Storm = 1,
    Always = 2,
}

impl Switch {
    fn new() -> Switch {
        Switch(Arc::new(AtomicU8::new(Phase::Clean as u8)))
    }

    fn set(&self, p: Phase) {
        self.0.store(p as u8, Ordering::SeqCst);
    }

    fn policy(
        &self,
        storm: impl Fn(&Request) -> Action + Send + Sync + 'static,
        always: Action,
    ) -> impl Fn(&Request) -> Action + Send + Sync + 'static {
        let phase = self.0.clone();
        move |r: &Request| match phase.load(Ordering::SeqCst) {
            1 => storm(r),
            2 if is_range_get(r) => always,
            _ => Action::Forward,
        }
    }
}

/// Requests of `log` the proxy answered with a status of its own `status`.
fn count_status(log: &[Seen], status: u16) -> u64 {
    log.iter()
        .filter(|s| s.is_blob_get() && s.status == status)
        .count() as u64
}

/// Range answers the proxy cut short.
fn count_truncated(log: &[Seen]) -> u64 {
    log.iter()
        .filter(|s| {
            s.status == 206
                && s.range
                    .is_some_and(|(a, b)| b >= a && s.body_len < b - a + 1)
        })
        .count() as u64
}

/// A permanent fault: every read of `files` fails with EIO and returns no wrong byte.
fn assert_permanent(row: &str, t: &Tally, files: usize) {
    assert_eq!(t.wrong_bytes, 0, "{row}: wrong bytes in {:?}", t.wrong);
    assert_eq!(t.failed, files as u64, "{row}: {t:?}");
    assert!(t.all_failed_with(libc::EIO), "{row}: {:?}", t.errors);
}

/// A transient fault: every read served with the right bytes.
fn assert_served(row: &str, t: &Tally, log: &str) {
    assert_eq!(t.wrong_bytes, 0, "{row}: wrong bytes in {:?}", t.wrong);
    assert_eq!(t.failed, 0, "{row}: {:?}\nmount log:\n{log}", t.errors);
}

#[test]
fn corrupt_registry_bytes_are_never_served() {
    let s = Setup::new();
    let (perm, files) = split_files();
    let (proxy, reference) = s.proxied(Corrupt::Always, |_| Action::Forward);
    let m = s.cli.mount(&reference, &s.mp, "none");

    // Always corrupt: EIO, bounded retries, nothing stored.
    let t = read_files(&s.mp, &perm, PASS);
    let log = proxy.take_log();
    let injected = log.iter().filter(|x| x.corrupted).count() as u64;
    println!("{}", line("corrupt-bytes-always", injected, &t, 0));
    assert_permanent("corrupt-bytes-always", &t, PERMANENT_FILES);
    assert!(injected > 0);

    // The first answer of each range corrupted: asked again, every read right.
    proxy.set_corrupt(Corrupt::FirstOfEachRange);
    let mut t = read_files(&s.mp, &files, PASS);
    t.add(&read_files(&s.mp, &perm, PASS));
    let log = proxy.take_log();
    let injected = log.iter().filter(|x| x.corrupted).count() as u64;
    println!(
        "{}",
        line("corrupt-bytes-first-of-each-range", injected, &t, 0)
    );
    assert_served("corrupt-bytes-first-of-each-range", &t, &m.log());
    assert!(injected > 0, "{log:#?}");
    m.stop();
    // Nothing that failed verification was kept.
    verify_clean(&s.cli);
}

#[test]
fn truncated_range_responses_are_retried_or_fail_with_eio() {
    let s = Setup::new();
    let (perm, files) = split_files();
    let switch = Switch::new();
    let storm = first_k_of_each_range(3, is_range_get, Action::Truncate(1));
    let (proxy, reference) = s.proxied(Corrupt::Never, switch.policy(storm, Action::Truncate(1)));
    let m = s.cli.mount(&reference, &s.mp, "none");

    switch.set(Phase::Always);
    let t = read_files(&s.mp, &perm, PASS);
    let injected = count_truncated(&proxy.take_log());
    println!("{}", line("truncated-range-always", injected, &t, 0));
    assert_permanent("truncated-range-always", &t, PERMANENT_FILES);
    assert!(injected > 0);

    // Three cut answers per range (of five attempts): all served. On a part of the image (each
    // cut costs a backoff), the rest clean.
    switch.set(Phase::Storm);
    let t = read_files(&s.mp, &files[..40], PASS);
    let injected = count_truncated(&proxy.take_log());
    switch.set(Phase::Clean);
    let mut all = t.clone();
    all.add(&read_files(&s.mp, &files[40..], PASS));
    all.add(&read_files(&s.mp, &perm, PASS));
    println!("{}", line("truncated-range-3-per-range", injected, &all, 0));
    assert_served("truncated-range-3-per-range", &all, &m.log());
    assert!(injected >= 3, "{injected}");
    m.stop();
    verify_clean(&s.cli);
}

#[test]
fn status_503_storms_are_ridden_out_or_fail_with_eio() {
    let s = Setup::new();
    let (perm, files) = split_files();
    let switch = Switch::new();
    let storm = first_k_of_each_range(3, is_range_get, Action::Status(503));
    let (proxy, reference) = s.proxied(Corrupt::Never, switch.policy(storm, Action::Status(503)));
    let m = s.cli.mount(&reference, &s.mp, "none");

    switch.set(Phase::Always);
    let t = read_files(&s.mp, &perm, PASS);
    let injected = count_status(&proxy.take_log(), 503);
    println!("{}", line("503-always", injected, &t, 0));
    assert_permanent("503-always", &t, PERMANENT_FILES);
    assert!(injected > 0);

    switch.set(Phase::Storm);
    let t = read_files(&s.mp, &files[..40], PASS);
    let injected = count_status(&proxy.take_log(), 503);
    println!("{}", line("503-storm-3-per-range", injected, &t, 0));
    assert_served("503-storm-3-per-range", &t, &m.log());
    assert!(injected >= 3);
    switch.set(Phase::Clean);
    let mut t = read_files(&s.mp, &files[40..], PASS);
    t.add(&read_files(&s.mp, &perm, PASS));
    assert_served("503 storm, the rest", &t, &m.log());
    m.stop();
    verify_clean(&s.cli);
}

#[test]
fn status_503_with_retry_after_is_honoured() {
    let s = Setup::new();
    let (perm, files) = split_files();
    let switch = Switch::new();
    // One 503 (Retry-After: 1 s) and one 429 (Retry-After as an HTTP date) per range.
    let after_503 = first_k_of_each_range(
        1,
        is_range_get,
        Action::StatusRetryAfter(503, RetryAfter::Seconds(1)),
    );
    let after_429 = first_k_of_each_range(
        2,
        is_range_get,
        Action::StatusRetryAfter(429, RetryAfter::DateIn(0)),
    );
    let storm = move |r: &Request| match after_503(r) {
        Action::Forward => after_429(r),
        a => a,
    };
    let (proxy, reference) = s.proxied(
        Corrupt::Never,
        switch.policy(storm, Action::StatusRetryAfter(503, RetryAfter::Seconds(1))),
    );
    let m = s.cli.mount(&reference, &s.mp, "none");

    // A registry that keeps saying "503, retry after 1 s": the client gives up (EIO) within
    // its retry budget.
    switch.set(Phase::Always);
    let t = read_files(&s.mp, &perm, PASS);
    let injected = count_status(&proxy.take_log(), 503);
    println!("{}", line("503-retry-after-always", injected, &t, 0));
    assert_permanent("503-retry-after-always", &t, PERMANENT_FILES);
    assert!(injected > 0);

    // Each range: 503 + Retry-After 1 s, then 429 + a Retry-After date, then the data.
    switch.set(Phase::Storm);
    let t = read_files(&s.mp, &files[..12], PASS);
    let log = proxy.take_log();
    let injected = count_status(&log, 503) + count_status(&log, 429);
    println!("{}", line("503-429-retry-after-storm", injected, &t, 0));
    assert_served("503-429-retry-after-storm", &t, &m.log());
    assert!(count_status(&log, 503) >= 1 && count_status(&log, 429) >= 1);
    switch.set(Phase::Clean);
    let mut t = read_files(&s.mp, &files[12..], PASS);
    t.add(&read_files(&s.mp, &perm, PASS));
    assert_served("retry-after storm, the rest", &t, &m.log());
    m.stop();
    verify_clean(&s.cli);
}

#[test]
fn a_slow_trickle_is_served_correctly() {
    let s = Setup::new();
    let files = data_files();
    let trickle = Action::Trickle {
        chunk: 4096,
        pause_ms: 2,
    };
    let (proxy, reference) = s.proxied(Corrupt::Never, move |r: &Request| {
        if is_range_get(r) {
            trickle
        } else {
            Action::Forward
        }
    });
    let m = s.cli.mount(&reference, &s.mp, "none");
    let t = read_files(&s.mp, &files, PASS);
    let log = proxy.take_log();
    let injected = log.iter().filter(|x| x.status == 206).count() as u64;
    println!("{}", line("slow-trickle-4KiB-per-2ms", injected, &t, 0));
    assert_served("slow-trickle", &t, &m.log());
    assert!(injected > 0);
    m.stop();
    verify_clean(&s.cli);
}

#[test]
fn the_registry_disappears_mid_read_and_after_a_pull_everything_is_served() {
    let mut s = Setup::new();
    let files = data_files();
    let chunks = image_chunks();
    // The link to the registry: forwarded, or cut (connections closed without an answer).
    let switch = Switch::new();
    let (proxy, reference) = s.proxied(
        Corrupt::Never,
        switch.policy(|_| Action::Close, Action::Close),
    );
    let dir = s.work.path().join("daemon");
    std::fs::create_dir_all(&dir).unwrap();
    let daemon = DfagentDaemon::start(&s.cli, &dir, &s.store, &[]);
    let _mount = daemon.mount(&reference, &s.mp, &["--prefetch", "none"]);

    // A lazy mount reads a third of the files.
    let third = files.len() / 3;
    let t = read_files(&s.mp, &files[..third], PASS);
    assert_served("before the registry goes", &t, &daemon.log());

    // The link goes (every connection closed unanswered): what was read is still served, what
    // was not fails with EIO within the retry budget.
    switch.set(Phase::Storm);
    let mut t = read_files(&s.mp, &files[files.len() - PERMANENT_FILES..], PASS);
    let failed_unread = t.failed;
    t.add(&read_files(&s.mp, &files[..third], PASS));
    let injected = proxy.take_log().iter().filter(|x| x.status == 0).count() as u64;
    println!(
        "{}",
        line("registry-gone-mid-read-before-pull", injected, &t, 0)
    );
    assert_eq!(t.wrong_bytes, 0, "{:?}", t.wrong);
    assert_eq!(failed_unread, PERMANENT_FILES as u64, "{t:?}");
    assert_eq!(t.failed, failed_unread, "a read file was not served: {t:?}");
    assert!(t.all_failed_with(libc::EIO), "{:?}", t.errors);

    // The link comes back; the image is pulled while mounted (through the daemon).
    switch.set(Phase::Clean);
    daemon.ok(&["pull", &reference]);
    let stat = |d: &DfagentDaemon| -> u64 {
        let out = d.ok(&["cache", "stat", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["chunks"].as_u64().unwrap()
    };
    let before = stat(&daemon);
    assert!(before >= chunks.len() as u64, "{before} < {}", chunks.len());

    // The registry process dies and the proxy with it: every file is served.
    drop(proxy);
    drop(s.reg.take());
    let t = read_files(&s.mp, &files, PASS);
    let after = stat(&daemon);
    let lost = before.saturating_sub(after);
    println!("{}", line("registry-gone-after-pull", 1, &t, lost));
    assert_served("registry-gone-after-pull", &t, &daemon.log());
    assert_eq!(lost, 0);
    let out = daemon.ok(&["cache", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(number_before(&text, " bad ones"), Some(0), "{text}");
    daemon.stop();
}

/// A store on a 4 MiB tmpfs (the image has about 6.4 MB of chunk data), mounted and read in
/// full: the disk fills, the store's writes fail with ENOSPC (logged by the mount), every read
/// is still served. The mount process is then stopped, as a node restart would.
fn fill_the_disk(s: &Setup, disk: &Tmpfs) -> Dfagent {
    let files = data_files();
    let store = disk.path().join("store");
    let cli = dfagent_cli!().with_store(&store);
    let m = cli.mount(&s.direct(), &s.mp, "none");
    let t = read_files(&s.mp, &files, PASS);
    let (_, free) = disk.space();
    let log = m.log();
    let injected = log.matches("No space left on device").count() as u64;
    println!("{}", line("full-disk-under-store", injected, &t, 0));
    assert_served("full-disk-under-store", &t, &log);
    assert!(free < 1 << 20, "the disk did not fill ({free} bytes free)");
    assert!(injected > 0, "no ENOSPC in the mount's log: {log}");
    m.stop();
    cli
}

#[test]
fn a_full_disk_under_the_store_costs_no_read() {
    let s = Setup::new();
    let files = data_files();
    let disk = Tmpfs::mount(&s.work.path().join("disk"), 4 << 20);
    let cli = fill_the_disk(&s, &disk);

    // Room is made on the disk: the store opens, nothing half-written was kept, and a new
    // mount reads everything.
    disk.resize(64 << 20);
    verify_clean(&cli);
    let store = disk.path().join("store");
    let held = stored(&store, &image_chunks());
    let m = cli.mount(&s.direct(), &s.mp, "none");
    let t = read_files(&s.mp, &files, PASS);
    let log = m.log();
    m.stop();
    verify_clean(&cli);
    let after = stored(&store, &image_chunks());
    let lost = held.iter().filter(|d| !after.contains(d)).count() as u64;
    println!(
        "{} held_before={}",
        line("full-disk-then-room-made", 0, &t, lost),
        held.len()
    );
    assert_served("full-disk-then-room-made", &t, &log);
    assert_eq!(lost, 0);
    drop(disk);
}

#[test]
fn a_store_on_a_full_disk_opens_again() {
    let s = Setup::new();
    let files = data_files();
    let disk = Tmpfs::mount(&s.work.path().join("disk"), 4 << 20);
    let cli = fill_the_disk(&s, &disk);
    // The disk is still full: a new mount must still serve every read.
    // The store cannot be opened on it: the mount says so and serves from the registry.
    let m = cli.mount(&s.direct(), &s.mp, "none");
    let t = read_files(&s.mp, &files, PASS);
    let log = m.log();
    m.stop();
    println!("{}", line("full-disk-restart", 0, &t, 0));
    assert_served("full-disk-restart", &t, &log);
    assert!(
        log.contains("serving without it"),
        "the mount did not say it runs without its store: {log}"
    );
    // Store commands say why they cannot run, rather than acting on nothing.
    let out = cli.run(&["cache", "verify"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("chunk store") && err.contains("No space left"),
        "{err}"
    );
    // Once there is room the store opens again, clean.
    disk.resize(64 << 20);
    verify_clean(&cli);
    drop(disk);
}

/// Flip one byte at `n` evenly spaced places of every file under `dir` whose name ends with
/// `suffix`; the number of bytes flipped.
fn flip_bytes(dir: &Path, suffix: &str, n: u64) -> u64 {
    let mut flipped = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if !p.to_string_lossy().ends_with(suffix) {
            continue;
        }
        let mut data = std::fs::read(&p).unwrap();
        let len = data.len() as u64;
        if len < 1024 {
            continue;
        }
        for i in 1..=n {
            let at = (len * i / (n + 1)) as usize;
            data[at] ^= 0x5a;
            flipped += 1;
        }
        std::fs::write(&p, data).unwrap();
    }
    flipped
}

#[test]
fn tampered_chunk_data_in_the_store_is_refetched() {
    let s = Setup::new();
    let files = data_files();
    let chunks = image_chunks();
    s.cli.ok(&["pull", &s.direct()]);
    let held = stored(&s.store, &chunks);
    assert_eq!(held.len(), chunks.len());

    // Small chunks live in RocksDB's blob files, big ones in chunk files of their own: flip
    // bytes in both.
    let injected = flip_bytes(&s.store.join("db"), ".blob", 8);
    assert!(injected > 0, "no blob files in {}", s.store.display());
    let in_files = flip_bytes(&s.store.join("chunks"), "", 8);
    assert!(in_files > 0, "no chunk files in {}", s.store.display());
    let injected = injected + in_files;
    let (proxy, reference) = s.proxied(Corrupt::Never, |_| Action::Forward);
    let m = s.cli.mount(&reference, &s.mp, "none");
    let t = read_files(&s.mp, &files, PASS);
    let refetched = proxy
        .take_log()
        .iter()
        .filter(|x| x.is_blob_get() && x.range.is_some())
        .count();
    let mount_log = m.log();
    m.stop();
    verify_clean(&s.cli);
    let after = stored(&s.store, &chunks);
    let lost = held.iter().filter(|d| !after.contains(d)).count() as u64;
    println!(
        "{} refetched_ranges={refetched}",
        line("tampered-store-blob-files", injected, &t, lost)
    );
    assert_served("tampered-store-blob-files", &t, &mount_log);
    assert!(refetched > 0, "no bad chunk was noticed: {mount_log}");
    assert!(mount_log.contains("failed verification"), "{mount_log}");
    assert_eq!(lost, 0, "bad chunks were not stored again");
}

#[test]
fn tampered_sst_files_of_the_store() {
    let s = Setup::new();
    let files = data_files();
    s.cli.ok(&["pull", &s.direct()]);
    let injected = flip_bytes(&s.store.join("db"), ".sst", 4);
    assert!(injected > 0, "no SST files in {}", s.store.display());
    let (_proxy, reference) = s.proxied(Corrupt::Never, |_| Action::Forward);
    let m = s.cli.mount(&reference, &s.mp, "none");
    let t = read_files(&s.mp, &files, PASS);
    let mount_log = m.log();
    m.stop();
    println!("{}", line("tampered-store-sst-files", injected, &t, 0));
    assert_served("tampered-store-sst-files", &t, &mount_log);
    // The corrupt database was set aside (kept for a look, named in the log) and an empty
    // store took its place, which the reads filled again.
    assert!(
        mount_log.contains("set aside"),
        "the mount did not say it set the store aside: {mount_log}"
    );
    let aside: Vec<_> = std::fs::read_dir(s.store.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "one store set aside");
    verify_clean(&s.cli);
}

#[test]
fn a_tampered_write_ahead_log_costs_no_read() {
    let s = Setup::new();
    let files = data_files();
    let chunks = image_chunks();
    let reference = s.direct();
    // A mount that reads everything, then is killed: its chunks are in the write-ahead log
    // (the memtable was never flushed).
    let mut m = s.cli.mount(&reference, &s.mp, "none");
    let t = read_files(&s.mp, &files, PASS);
    assert_served("before the kill", &t, &m.log());
    // Let the store writer drain its queue (not asserted: the kill leaves what it leaves).
    std::thread::sleep(Duration::from_secs(2));
    m.child().kill().unwrap();
    let _ = m.child().wait();
    drop(m);
    let injected = flip_bytes(&s.store.join("db"), ".log", 4);
    assert!(injected > 0, "no write-ahead log in {}", s.store.display());
    // Opening replays the tampered log: RocksDB stops at the first bad record, so what
    // followed it is gone from the store (and fetched again when read).
    let held = stored(&s.store, &chunks);
    let m = s.cli.mount(&reference, &s.mp, "none");
    let t = read_files(&s.mp, &files, PASS);
    let mount_log = m.log();
    m.stop();
    verify_clean(&s.cli);
    let after = stored(&s.store, &chunks);
    let lost = (chunks.len() - after.len()) as u64;
    println!(
        "{} dropped_by_recovery={}",
        line("tampered-store-wal", injected, &t, lost),
        chunks.len() - held.len()
    );
    assert_served("tampered-store-wal", &t, &mount_log);
    assert_eq!(lost, 0, "chunks read again were not stored again");
}

#[test]
fn tokens_expiring_during_reads_cost_no_read() {
    // Bearer tokens that live 2 s, announced as 600 s (they die early, as revoked ones do):
    // the mount's reads, spread over four lifetimes, meet dead tokens and renew them.
    let work = tmp_dir("dfagent-faults-tokens-");
    let tokens = TokenServer::builder()
        .credentials("carol", "t0ken-pw")
        .lifetime(Duration::from_secs(2))
        .expires_in(ExpiresIn::Seconds(600))
        .start();
    let reg = Registry::builder()
        .config_extra(&tokens.registry_config())
        .start();
    let auth = write_docker_config(work.path(), &[&reg.host()], "carol", "t0ken-pw");
    let auth = auth.to_str().unwrap().to_string();
    let reference = format!("{}/team/{IMAGE}:v1", reg.host());
    let img = fixture(IMAGE);
    dfagent_cli!()
        .with_store(&work.path().join("push-store"))
        .ok(&[
            "push",
            "--docker-config",
            &auth,
            "--bootstrap",
            img.join("bootstrap").to_str().unwrap(),
            "--blob-dir",
            img.join("blobs").to_str().unwrap(),
            &reference,
        ]);
    let cli = dfagent_cli!().with_store(&work.path().join("store"));
    let mp = work.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let issued_before = tokens.issued();
    let m = cli.mount_with(
        &reference,
        &mp,
        &["--prefetch", "none", "--docker-config", &auth],
    );
    let files = data_files();
    let mut t = Tally::default();
    let slices = 5;
    let per = files.len().div_ceil(slices);
    for part in files.chunks(per) {
        t.add(&read_files(&mp, part, PASS));
        // A pause longer than a token's life between slices (a fixed pause, not a timing
        // assertion).
        std::thread::sleep(Duration::from_millis(2500));
    }
    let renewed = (tokens.issued() - issued_before) as u64;
    let log = m.log();
    m.stop();
    println!("{}", line("tokens-expire-every-2s", renewed, &t, 0));
    assert_served("tokens-expire-every-2s", &t, &log);
    // Tokens were renewed as they died under the reads (about one per slice).
    assert!(renewed >= 3, "{renewed} tokens issued");
    verify_clean(&cli);
}
