//! dfagent-faults: the fault campaign's long runs, whose short forms are tests. Each subcommand
//! prints one summary line and writes `NAME.md` under the results directory; the counts go into
//! `docs/reliability.md`. Needs root (FUSE mounts).
//!
//! - `crash`: `dfagent pull` killed with SIGKILL at random moments, 50 rounds by default, each
//!   followed by `cache verify`, a check that the store lost nothing it held before, and a full
//!   re-read through a mount (the test `crash_cli` runs 4 rounds of the same).
//! - `readers`: 64 threads reading random files (whole, or a random range) of the Debian image
//!   for 60 s through a `dfagent daemon` mount, the registry behind the link-shaping proxy
//!   (20 MB/s, 30 ms): every byte compared with the root filesystem the image was built from;
//!   errors, wrong bytes, hung readers and the daemon's peak RSS against its configured caches
//!   + 64 MiB. `--quick`: the texture fixture image, 10 s.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dfagent_test_support::cli::Dfagent;
use dfagent_test_support::crash::{summary, CrashCampaign};

#[derive(Parser)]
#[command(name = "dfagent-faults", about, long_about = None)]
struct Cli {
    /// The dfagent binary (default: the one beside this binary in the target dir).
    #[arg(long, global = true)]
    dfagent: Option<PathBuf>,
    /// Where `NAME.md` goes (default: bench/results).
    #[arg(long, global = true)]
    results_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Fault,
}

#[derive(Subcommand)]
enum Fault {
    /// kill -9 of `dfagent pull` at random moments.
    Crash {
        /// Rounds (one kill each).
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// Seed of the kill moments (default: the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Concurrent readers of random files through a daemon mount over a throttled link.
    Readers(readers::ReadersArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("dfagent-faults: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    let dfagent = match cli.dfagent {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("dfagent"),
    };
    anyhow::ensure!(dfagent.is_file(), "no dfagent at {}", dfagent.display());
    let results = cli
        .results_dir
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    match cli.command {
        Fault::Crash { rounds, seed } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
            eprintln!("dfagent-faults: crash, {rounds} rounds, seed {seed}");
            let campaign = CrashCampaign::start(&Dfagent::new(&dfagent));
            let started = std::time::Instant::now();
            let got = campaign.run(rounds, seed);
            let line = format!("crash: {}", summary(&got));
            println!("{line}");
            let mut md = format!(
                "# crash: kill -9 of `dfagent pull` at random moments\n\n\
                 `dfagent-faults crash --rounds {rounds} --seed {seed}` with `{}`, {:.0} s.\n\n\
                 {line}\n\n\
                 | round | kill after (ms) | finished first | chunks after kill | bad chunks | kept image bytes re-fetched | re-read |\n\
                 |---|---|---|---|---|---|---|\n",
                dfagent.display(),
                started.elapsed().as_secs_f64()
            );
            for (i, r) in got.iter().enumerate() {
                md.push_str(&format!(
                    "| {i} | {} | {} | {} | {} | {} | {} |\n",
                    r.kill_after.as_millis(),
                    r.finished_first,
                    r.chunks_after_kill,
                    r.bad_chunks,
                    r.kept_refetched_bytes,
                    if r.reread_ok { "ok" } else { "FAILED" }
                ));
            }
            for r in got.iter().filter(|r| !r.clean()) {
                eprintln!("dfagent-faults: {r:#?}");
            }
            std::fs::create_dir_all(&results)?;
            let path = results.join("crash.md");
            std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
            Ok(got.iter().all(|r| r.clean()))
        }
        Fault::Readers(args) => readers::run(&dfagent, &results, &args),
    }
}

/// The `readers` row: concurrent readers of random files through a daemon's mount.
mod readers {
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use anyhow::{bail, ensure, Context};
    use dfagent_bench::proxy::{Proxy, ShapeConfig};
    use dfagent_test_support::cli::Dfagent;
    use dfagent_test_support::daemon::DfagentDaemon;
    use dfagent_test_support::fixtures::{fixture, make_texture};
    use dfagent_test_support::registry::Registry;

    /// The Debian root filesystem `scripts/setup.sh` caches.
    const ROOTFS: &str = "/var/cache/dfagent/rootfs/bookworm-minbase-python3";
    /// Bound of building and pushing the image.
    const LONG: Duration = Duration::from_secs(1800);
    /// How long readers may overrun the end of the run before they count as hung.
    const GRACE: Duration = Duration::from_secs(120);
    /// Largest range of a range read, and largest file read whole.
    const MAX_RANGE: u64 = 1 << 20;
    const MAX_WHOLE: u64 = 16 << 20;
    /// The allowance beyond the configured caches, MiB.
    const ALLOWANCE_MIB: u64 = 64;
    /// `cache.write_queue` (default 64 chunks, each at most a 1 MiB chunk as stored).
    const WRITE_QUEUE_MIB: u64 = 64;
    const MIB: f64 = 1024.0 * 1024.0;

    /// Options of `dfagent-faults readers`.
    #[derive(clap::Args)]
    pub struct ReadersArgs {
        /// Reader threads.
        #[arg(long, default_value_t = 64)]
        threads: usize,
        /// How long they read (default 60; 10 with --quick).
        #[arg(long)]
        seconds: Option<u64>,
        /// The texture fixture image instead of the Debian image (no build; 10 s).
        #[arg(long)]
        quick: bool,
        /// Link bandwidth to the registry, MB/s.
        #[arg(long, default_value_t = 20.0)]
        bandwidth_mbps: f64,
        /// Added round-trip time to the registry, ms.
        #[arg(long, default_value_t = 30.0)]
        rtt_ms: f64,
        /// The daemon's decoded-chunk cache (`--cache-mib`).
        #[arg(long, default_value_t = 64)]
        cache_mib: u64,
        /// The mount's background fetching (`none`: every chunk is fetched by a reader).
        #[arg(long, default_value = "none")]
        prefetch: String,
        /// Seed of the readers' choices (default: the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
    }

    fn run_cmd(cmd: &mut Command, what: &str) -> anyhow::Result<Output> {
        let out = dfagent_test_support::process::output_within(cmd, LONG)
            .with_context(|| format!("starting {what}"))?
            .with_context(|| format!("{what} did not finish within {LONG:?}"))?;
        ensure!(
            out.status.success(),
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// The image in the registry at `reference` (pushed directly) and the tree it was made of.
    fn image(
        cli: &Dfagent,
        work: &Path,
        reference: &str,
        quick: bool,
    ) -> anyhow::Result<(PathBuf, String)> {
        if quick {
            let tree = work.join("texture");
            make_texture(&tree, 1);
            cli.with_store(&work.join("push-store"))
                .push(&fixture("v6-zstd-blake3"), reference);
            return Ok((tree, "fixture v6-zstd-blake3 (texture tree 1)".into()));
        }
        let tree = PathBuf::from(ROOTFS);
        ensure!(
            tree.join("usr/bin/python3").exists(),
            "{ROOTFS} is missing: run scripts/setup.sh"
        );
        let layout = work.join("oci-layout");
        let image = format!("{}:v1", layout.display());
        let t = Instant::now();
        run_cmd(
            Command::new("umoci")
                .args(["init", "--layout"])
                .arg(&layout),
            "umoci init",
        )?;
        run_cmd(
            Command::new("umoci").args(["new", "--image", &image]),
            "umoci new",
        )?;
        run_cmd(
            Command::new("umoci")
                .args(["insert", "--image", &image])
                .arg(&tree)
                .arg("/"),
            "umoci insert",
        )?;
        run_cmd(
            cli.command()
                .arg("build")
                .arg(format!("oci:{image}"))
                .arg("--push")
                .arg(reference)
                .arg("--output-dir")
                .arg(work.join("nydus")),
            "dfagent build",
        )?;
        eprintln!(
            "dfagent-faults: Debian image built and pushed ({:.0} s)",
            t.elapsed().as_secs_f64()
        );
        Ok((
            tree,
            "Debian bookworm minbase + python3 (dfagent build of the setup.sh rootfs)".into(),
        ))
    }

    /// Regular files under `root` (relative paths) and their sizes; symlinks are not followed.
    fn regular_files(root: &Path) -> anyhow::Result<Vec<(PathBuf, u64)>> {
        let mut out = Vec::new();
        let mut dirs = vec![PathBuf::new()];
        // Bounded by the tree: each directory is visited once (no symlinks followed).
        while let Some(rel) = dirs.pop() {
            for e in std::fs::read_dir(root.join(&rel))
                .with_context(|| format!("listing {}", root.join(&rel).display()))?
            {
                let e = e?;
                let ft = e.file_type()?;
                let p = rel.join(e.file_name());
                if ft.is_dir() {
                    dirs.push(p);
                } else if ft.is_file() {
                    out.push((p, e.metadata()?.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Counters shared by the readers.
    #[derive(Default)]
    struct Counts {
        reads: AtomicU64,
        whole: AtomicU64,
        ranges: AtomicU64,
        bytes: AtomicU64,
        errors: AtomicU64,
        wrong_bytes: AtomicU64,
        first_errors: Mutex<Vec<String>>,
    }

    impl Counts {
        fn error(&self, what: String) {
            self.errors.fetch_add(1, Relaxed);
            let mut v = self.first_errors.lock().unwrap_or_else(|p| p.into_inner());
            if v.len() < 10 {
                v.push(what);
            }
        }
    }

    /// Bytes of `got` that differ from `want` (a length difference counts as wrong bytes).
    fn differing(got: &[u8], want: &[u8]) -> u64 {
        let common = got.iter().zip(want).filter(|(a, b)| a != b).count() as u64;
        common + (got.len() as i64 - want.len() as i64).unsigned_abs()
    }

    /// Read `len` bytes at `off` (fewer at the end of the file).
    fn read_range(f: &File, off: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        let mut done = 0usize;
        // Bounded: each turn reads at least one byte or ends.
        while done < buf.len() {
            let n = f.read_at(&mut buf[done..], off + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn one_read(
        rng: &mut fastrand::Rng,
        mp: &Path,
        tree: &Path,
        files: &[(PathBuf, u64)],
        c: &Counts,
    ) {
        let (rel, size) = &files[rng.usize(..files.len())];
        c.reads.fetch_add(1, Relaxed);
        if *size <= MAX_WHOLE && rng.bool() {
            c.whole.fetch_add(1, Relaxed);
            match std::fs::read(mp.join(rel)) {
                Ok(got) => {
                    c.bytes.fetch_add(got.len() as u64, Relaxed);
                    match std::fs::read(tree.join(rel)) {
                        Ok(want) => {
                            c.wrong_bytes.fetch_add(differing(&got, &want), Relaxed);
                        }
                        Err(e) => c.error(format!("tree {}: {e}", rel.display())),
                    }
                }
                Err(e) => c.error(format!("{}: {e}", rel.display())),
            }
            return;
        }
        c.ranges.fetch_add(1, Relaxed);
        let off = rng.u64(0..=*size);
        let len = rng.u64(1..=MAX_RANGE);
        let got = File::open(mp.join(rel)).and_then(|f| read_range(&f, off, len));
        match got {
            Ok(got) => {
                c.bytes.fetch_add(got.len() as u64, Relaxed);
                match File::open(tree.join(rel)).and_then(|f| read_range(&f, off, len)) {
                    Ok(want) => {
                        c.wrong_bytes.fetch_add(differing(&got, &want), Relaxed);
                    }
                    Err(e) => c.error(format!("tree {}: {e}", rel.display())),
                }
            }
            Err(e) => c.error(format!("{} at {off}+{len}: {e}", rel.display())),
        }
    }

    /// `(VmRSS, VmHWM, RssAnon, RssFile)` of `pid` in KiB.
    fn mem_kib(pid: u32) -> Option<(u64, u64, u64, u64)> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        Some((
            field("VmRSS:")?,
            field("VmHWM:")?,
            field("RssAnon:")?,
            field("RssFile:")?,
        ))
    }

    pub fn run(dfagent: &Path, results: &Path, a: &ReadersArgs) -> anyhow::Result<bool> {
        // SAFETY: geteuid has no preconditions.
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "readers needs root (FUSE mounts)"
        );
        ensure!(a.threads > 0, "--threads must be at least 1");
        let seconds = a.seconds.unwrap_or(if a.quick { 10 } else { 60 });
        let seed = a.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
        let work = dfagent_test_support::tmp_dir("dfagent-faults-readers-");
        let cli = Dfagent::new(dfagent);
        let reg = Registry::start();
        let direct = format!("{}/faults/readers:v1", reg.host());
        let (tree, label) = image(&cli, work.path(), &direct, a.quick)?;
        let files = regular_files(&tree)?;
        ensure!(!files.is_empty(), "no regular files in {}", tree.display());
        let tree_bytes: u64 = files.iter().map(|f| f.1).sum();

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("faults-proxy")
            .enable_all()
            .build()?;
        let shape = ShapeConfig {
            bytes_per_sec: a.bandwidth_mbps * 1e6,
            rtt: Duration::from_secs_f64(a.rtt_ms / 1e3),
            per_connection: false,
        };
        let proxy = rt.block_on(Proxy::start(reg.addr(), shape))?;
        let reference = format!("{}/faults/readers:v1", proxy.addr());

        let ddir = work.path().join("daemon");
        std::fs::create_dir_all(&ddir)?;
        let daemon = DfagentDaemon::start(
            &cli,
            &ddir,
            &work.path().join("store"),
            &["--cache-mib", &a.cache_mib.to_string()],
        );
        let pid = daemon.pid();
        let idle = mem_kib(pid).context("reading the daemon's /proc status")?;
        let mp = work.path().join("mnt");
        std::fs::create_dir_all(&mp)?;
        let _mount = daemon.mount(&reference, &mp, &["--prefetch", &a.prefetch]);
        let mounted = mem_kib(pid).context("reading the daemon's /proc status")?;
        eprintln!(
            "dfagent-faults: readers: {} threads x {seconds} s over {} files ({:.0} MiB) of {label}, \
             link {} MB/s + {} ms, seed {seed}",
            a.threads,
            files.len(),
            tree_bytes as f64 / MIB,
            a.bandwidth_mbps,
            a.rtt_ms
        );

        // The daemon's RSS, sampled every 100 ms while the readers run.
        let stop = Arc::new(AtomicBool::new(false));
        let peak_rss = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (stop, peak) = (stop.clone(), peak_rss.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    if let Some((rss, ..)) = mem_kib(pid) {
                        peak.fetch_max(rss, Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };

        let counts = Arc::new(Counts::default());
        let files = Arc::new(files);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let readers: Vec<_> = (0..a.threads)
            .map(|i| {
                let (c, files, mp, tree) =
                    (counts.clone(), files.clone(), mp.clone(), tree.clone());
                std::thread::spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(i as u64));
                    while Instant::now() < deadline {
                        one_read(&mut rng, &mp, &tree, &files, &c);
                    }
                })
            })
            .collect();
        let give_up = deadline + GRACE;
        while readers.iter().any(|r| !r.is_finished()) && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(50));
        }
        let hung = readers.iter().filter(|r| !r.is_finished()).count();
        let elapsed = started.elapsed().as_secs_f64();
        stop.store(true, Relaxed);
        let _ = sampler.join();
        let end = mem_kib(pid).context("reading the daemon's /proc status")?;
        let fetched = proxy.counters().to_client;
        if hung == 0 {
            for r in readers {
                if r.join().is_err() {
                    bail!("a reader thread panicked");
                }
            }
        }

        let peak_mib = (peak_rss.load(Relaxed).max(end.0) as f64) / 1024.0;
        let hwm_mib = end.1 as f64 / 1024.0;
        // Configured caches: the decoded-chunk cache and the store's fixed RocksDB budgets
        // (memtables, block cache).
        let store_mib = (dfagent_store::MEMORY_BUDGET >> 20) as u64;
        let caches = a.cache_mib + store_mib;
        let strict = (caches + ALLOWANCE_MIB) as f64;
        let with_queue = (caches + WRITE_QUEUE_MIB + ALLOWANCE_MIB) as f64;
        let c = &counts;
        let (reads, errors, wrong) = (
            c.reads.load(Relaxed),
            c.errors.load(Relaxed),
            c.wrong_bytes.load(Relaxed),
        );
        let line = format!(
            "readers: {} threads x {seconds} s: {reads} reads ({} whole files, {} ranges), {:.0} MiB read, \
             errors={errors} wrong_bytes={wrong} hung={hung}; daemon VmHWM {hwm_mib:.0} MiB (peak sampled VmRSS {peak_mib:.0}) \
             vs configured caches (decoded {} MiB + store {store_mib} MiB) + {ALLOWANCE_MIB} MiB = {strict:.0} MiB{}",
            a.threads,
            c.whole.load(Relaxed),
            c.ranges.load(Relaxed),
            c.bytes.load(Relaxed) as f64 / MIB,
            a.cache_mib,
            if hwm_mib <= strict {
                String::new()
            } else {
                format!(
                    " (over; with the write-back queue's {WRITE_QUEUE_MIB} MiB: {with_queue:.0} MiB)"
                )
            }
        );
        println!("{line}");
        let errs = c
            .first_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for e in &errs {
            eprintln!("dfagent-faults: read error: {e}");
        }
        let md = format!(
            "# readers: {} concurrent readers of random files through a daemon mount\n\n\
             `dfagent-faults readers{} --threads {} --seconds {seconds} --cache-mib {} --prefetch {} \
             --bandwidth-mbps {} --rtt-ms {} --seed {seed}` with `{}`, {elapsed:.0} s.\n\n\
             Image: {label}, {} regular files, {:.0} MiB; registry behind the shaping proxy \
             ({} MB/s shared link, {} ms RTT); bytes fetched through it: {:.0} MiB.\n\n\
             {line}\n\n\
             | | VmRSS, MiB | VmHWM, MiB | RssAnon, MiB | RssFile, MiB |\n|---|---|---|---|---|\n\
             | daemon idle | {:.0} | {:.0} | {:.0} | {:.0} |\n\
             | mounted, before reads | {:.0} | {:.0} | {:.0} | {:.0} |\n\
             | after {seconds} s of reads | {:.0} (sampled peak {peak_mib:.0}) | {hwm_mib:.0} | {:.0} | {:.0} |\n\n\
             Budget: decoded-chunk cache {} MiB + the store's memtables and block cache {store_mib} MiB \
             + {ALLOWANCE_MIB} MiB = {strict:.0} MiB \
             (with the write-back queue's up to {WRITE_QUEUE_MIB} MiB: {with_queue:.0} MiB).\n\n\
             First errors: {}\n",
            a.threads,
            if a.quick { " --quick" } else { "" },
            a.threads,
            a.cache_mib,
            a.prefetch,
            a.bandwidth_mbps,
            a.rtt_ms,
            dfagent.display(),
            files.len(),
            tree_bytes as f64 / MIB,
            a.bandwidth_mbps,
            a.rtt_ms,
            fetched as f64 / MIB,
            idle.0 as f64 / 1024.0,
            idle.1 as f64 / 1024.0,
            idle.2 as f64 / 1024.0,
            idle.3 as f64 / 1024.0,
            mounted.0 as f64 / 1024.0,
            mounted.1 as f64 / 1024.0,
            mounted.2 as f64 / 1024.0,
            mounted.3 as f64 / 1024.0,
            end.0 as f64 / 1024.0,
            end.2 as f64 / 1024.0,
            end.3 as f64 / 1024.0,
            a.cache_mib,
            if errs.is_empty() {
                "none".to_string()
            } else {
                errs.join("; ")
            },
        );
        std::fs::create_dir_all(results)?;
        let name = if a.quick {
            "readers-quick.md"
        } else {
            "readers.md"
        };
        let path = results.join(name);
        std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
        if hung > 0 {
            // The mount guard detaches the mount and the daemon is stopped on the way out,
            // which ends the hung reads.
            eprintln!("dfagent-faults: {hung} readers still in a read {GRACE:?} after the end");
        }
        daemon.stop();
        Ok(errors == 0 && wrong == 0 && hung == 0 && hwm_mib <= with_queue)
    }
}
