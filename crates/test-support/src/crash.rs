//! The kill -9 campaign: `dfagent pull` killed at random moments, each round followed by
//! `cache verify`, a check that nothing stored before the pull was lost, and a full re-read of
//! the killed image through a mount. A test runs a few rounds; `dfagent-bench crash` runs 50
//! and prints the counts for `docs/reliability.md`.
//!
//! Each round works on a fresh store: it pulls the `kept` image completely, starts a pull of the
//! `victim` image and kills it with SIGKILL after a random delay in `[0, window]` (so some kills
//! land while the store opens, most while chunks are written, a few after the pull ended), then
//! checks:
//! - `cache verify` finds no bad chunk (nothing half-written was kept);
//! - pulling `kept` again takes no byte from the registry (nothing committed was lost);
//! - a mount of `victim` lists and reads every file with the right contents (the store, whatever
//!   the kill left in it, serves correct bytes and the rest comes from the registry).
//!
//! Infrastructure failures (a command that cannot start, a mount that never appears) panic;
//! the checks themselves are counted, so a bench can report them.

use std::time::{Duration, Instant};

use crate::cli::Dfagent;
use crate::fixtures::{fixture, list_tree_without_root, listing_of, listing_without_root};
use crate::process::wait_exit;
use crate::registry::Registry;

/// The image pulled completely before each kill.
const KEPT: &str = "v6-lz4-sha256";
/// The image whose pull is killed.
const VICTIM: &str = "v6-chunkdict";

/// How long a killed `dfagent pull` may take to be reaped.
const REAP: Duration = Duration::from_secs(10);

/// What one round saw.
#[derive(Clone, Debug)]
pub struct CrashRound {
    /// When the kill was sent, after the pull started.
    pub kill_after: Duration,
    /// The pull had exited on its own before the kill.
    pub finished_first: bool,
    /// Chunks in the store after the kill (as `cache stat` counts them).
    pub chunks_after_kill: u64,
    /// Bad chunks `cache verify` found (and removed) after the kill: must be 0.
    pub bad_chunks: u64,
    /// Bytes the second pull of the kept image took from the registry: must be 0.
    pub kept_refetched_bytes: u64,
    /// The mount of the victim listed and read every file correctly.
    pub reread_ok: bool,
    /// What went wrong, if anything (for the failure message).
    pub problem: Option<String>,
}

impl CrashRound {
    /// No wrong byte, no lost data, no failed read.
    pub fn clean(&self) -> bool {
        self.bad_chunks == 0 && self.kept_refetched_bytes == 0 && self.reread_ok
    }
}

/// A campaign's fixtures: a registry holding the kept image (`v6-lz4-sha256`) and the victim
/// (`v6-chunkdict`, the larger one), pushed through `cli`, and a scratch directory.
pub struct CrashCampaign {
    cli: Dfagent,
    kept: String,
    victim: String,
    work: tempfile::TempDir,
    _reg: Registry,
}

impl CrashCampaign {
    /// Start the registry and push both images.
    pub fn start(cli: &Dfagent) -> CrashCampaign {
        let work = crate::tmp_dir("dfagent-crash-");
        let reg = Registry::start();
        let pusher = cli.with_store(&work.path().join("push-store"));
        let kept = format!("{}/crash/kept:v1", reg.host());
        let victim = format!("{}/crash/victim:v1", reg.host());
        pusher.push(&fixture(KEPT), &kept);
        pusher.push(&fixture(VICTIM), &victim);
        let _ = std::fs::remove_dir_all(work.path().join("push-store"));
        CrashCampaign {
            cli: cli.clone(),
            kept,
            victim,
            work,
            _reg: reg,
        }
    }

    /// Run `rounds` rounds (one store each, removed after it), kill moments drawn from `seed`.
    pub fn run(&self, rounds: usize, seed: u64) -> Vec<CrashRound> {
        let window = self.calibrate();
        let mut rng = XorShift(seed | 1);
        (0..rounds)
            .map(|i| {
                let frac = (rng.next() % 1_000) as f64 / 1_000.0;
                // Up to 20 % past the calibrated pull time, so a few kills find it finished.
                let delay = window.mul_f64(frac * 1.2);
                let dir = self.work.path().join(format!("round-{i}"));
                let r = self.round(&dir, delay);
                let _ = std::fs::remove_dir_all(&dir);
                r
            })
            .collect()
    }

    /// The time of one uninterrupted pull of the victim on an empty store.
    fn calibrate(&self) -> Duration {
        let dir = self.work.path().join("calibrate");
        let cli = self.cli.with_store(&dir.join("store"));
        let started = Instant::now();
        cli.ok(&["pull", &self.victim]);
        let took = started.elapsed();
        let _ = std::fs::remove_dir_all(&dir);
        took
    }

    fn round(&self, dir: &std::path::Path, delay: Duration) -> CrashRound {
        std::fs::create_dir_all(dir).expect("creating a round's directory");
        let cli = self.cli.with_store(&dir.join("store"));
        cli.ok(&["pull", &self.kept]);

        let mut child = cli
            .command()
            .args(["pull", &self.victim])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawning dfagent pull");
        std::thread::sleep(delay);
        let finished_first = matches!(child.try_wait(), Ok(Some(_)));
        // SIGKILL, as an OOM kill or a node crash would end it; an exited child is not signalled.
        if !finished_first {
            let _ = child.kill();
        }
        wait_exit(&mut child, REAP).expect("a killed dfagent pull is reaped");

        let mut r = CrashRound {
            kill_after: delay,
            finished_first,
            chunks_after_kill: cli.cache_stat()["chunks"].as_u64().unwrap_or(0),
            bad_chunks: 0,
            kept_refetched_bytes: 0,
            reread_ok: false,
            problem: None,
        };
        let verify = cli.run(&["cache", "verify"]);
        let text = String::from_utf8_lossy(&verify.stdout).to_string();
        r.bad_chunks = number_before(&text, " bad ones").unwrap_or(u64::MAX);
        if !verify.status.success() || r.bad_chunks != 0 {
            r.problem = Some(format!("cache verify: {text}"));
        }

        let again = cli.ok(&["pull", &self.kept]);
        let said = String::from_utf8_lossy(&again.stderr).to_string();
        r.kept_refetched_bytes =
            number_before(&said, " bytes from the registry").unwrap_or(u64::MAX);
        if r.kept_refetched_bytes != 0 {
            r.problem = Some(format!("the kept image was fetched again: {said}"));
        }

        let mp = dir.join("mnt");
        std::fs::create_dir_all(&mp).expect("creating a mount point");
        let m = cli.mount(&self.victim, &mp, "none");
        let got = list_tree_without_root(&mp);
        let want = listing_without_root(listing_of(VICTIM));
        r.reread_ok = got == want;
        if !r.reread_ok {
            r.problem = Some(format!("re-read differs: got {got:#?}, want {want:#?}"));
        }
        m.stop();
        r
    }
}

/// The decimal number right before `marker` in `text` ("removed 3 bad ones" → 3).
fn number_before(text: &str, marker: &str) -> Option<u64> {
    let head = &text[..text.find(marker)?];
    head.rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
}

/// A small deterministic generator for the kill moments (no dependency for one number a round).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A summary line of a campaign: rounds, kills that landed mid-pull, and the failure counts.
pub fn summary(rounds: &[CrashRound]) -> String {
    let killed = rounds.iter().filter(|r| !r.finished_first).count();
    let bad: u64 = rounds.iter().map(|r| r.bad_chunks.min(1 << 32)).sum();
    let lost = rounds
        .iter()
        .filter(|r| r.kept_refetched_bytes != 0)
        .count();
    let failed = rounds.iter().filter(|r| !r.reread_ok).count();
    format!(
        "{} rounds, {killed} killed mid-pull, {bad} bad chunks kept, {lost} rounds lost stored data, {failed} re-reads failed",
        rounds.len()
    )
}
