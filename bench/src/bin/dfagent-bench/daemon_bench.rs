//! The daemon's scenarios: `mount-latency` (prints `mount-latency` and `mount-latency-16`) and
//! `daemon-memory`.
//!
//! Each runs its own `dfagent daemon` (own socket and store under the scratch directory,
//! `--metrics-addr none`), waits for "daemon ready" on its stderr, and stops it with SIGTERM
//! (it unmounts everything). The 16 mounts are the workload's Nydus image under 16 repository
//! names (`bench/nydus-01` … `-16`, copied inside the registry with `skopeo copy
//! --preserve-digests`), so each is a mount of its own with its own bootstrap.
//!
//! mount-latency: from launching `dfagent mount REF MP` until `MP/<a known file>` reads back
//! its bytes — through the daemon (warm store) vs `--no-daemon` (in-process, foreground, its own
//! warm store); and 16 such mounts launched together through the daemon (until all 16 read) vs
//! one.
//!
//! daemon-memory: a daemon with a known decoded-chunk cache (`--cache-mib`) mounts the 16
//! images, one thread per mount reads every regular file of its mount in full (in a shuffled
//! order of its own), and the daemon's `/proc/PID/status` (VmRSS, VmHWM, RssAnon, RssFile)
//! is read with everything still mounted.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use dfagent_bench::report::{fmt_value, median, Series, Table};

use crate::cleanup::{self, Action};
use crate::cold_start::link_desc;
use crate::env::{Env, LONG, NYDUS_REPO};
use crate::mount::is_fuse_mounted;
use crate::outcome::{alternate, Outcome};
use crate::procs::{self, Service};

/// Mounts started together, and images the memory scenario mounts.
const MOUNTS: usize = 16;
/// How long a mount may take to become readable.
const READY: Duration = Duration::from_secs(120);
/// How long a daemon may take to say it is ready.
const DAEMON_READY: Duration = Duration::from_secs(60);
/// How long a daemon may take to unmount everything and exit on SIGTERM (its own shutdown
/// limit is 20 s).
const DAEMON_STOP: Duration = Duration::from_secs(40);
/// Bound of the small CLI calls (umount, ps).
const CLI: Duration = Duration::from_secs(60);
/// The goal for the daemon's memory beyond its configured caches, MiB.
const GOAL_MIB: f64 = 64.0;
/// `cache.write_queue`'s default: verified chunks that may wait for the store writer.
const WRITE_QUEUE_CHUNKS: u64 = 64;
const MIB: f64 = 1024.0 * 1024.0;

fn tail(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .trim()
        .lines()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A child process whose pid we need (for `/proc/PID/status`), with its output in a log file;
/// registered for teardown, stopped (SIGTERM, bounded wait, then SIGKILL) on drop.
struct Proc {
    child: Option<Child>,
    reg: u64,
    log: PathBuf,
    name: &'static str,
}

impl Proc {
    fn start(cmd: &mut Command, name: &'static str, log: &Path) -> anyhow::Result<Proc> {
        cleanup::check_not_stopping()?;
        let f = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let reg = cleanup::register(Action::Kill(child.id() as i32));
        Ok(Proc {
            child: Some(child),
            reg,
            log: log.to_path_buf(),
            name,
        })
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Fail if it has exited.
    fn check_running(&mut self, what: &str) -> anyhow::Result<()> {
        let Some(c) = self.child.as_mut() else {
            bail!("{} is not running", self.name);
        };
        if let Some(st) = c.try_wait()? {
            self.child = None;
            cleanup::deregister(self.reg);
            bail!("{} exited ({st}) {what}: {}", self.name, tail(&self.log));
        }
        Ok(())
    }

    /// Wait until it handles SIGTERM (its `SigCgt` mask in `/proc/PID/status` has the bit): a
    /// process that has not installed its handler yet would die of the signal's default action.
    fn wait_sigterm_handler(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
            let caught = status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0);
            if caught & (1 << (libc::SIGTERM - 1)) != 0 {
                return Ok(());
            }
            self.check_running("before handling SIGTERM")?;
            ensure!(
                Instant::now() < deadline,
                "{} did not install a SIGTERM handler within 30 s",
                self.name
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGTERM, wait up to `limit`; fails unless it exited 0.
    fn stop(&mut self, limit: Duration) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        cleanup::deregister(self.reg);
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait()? {
                ensure!(
                    st.success(),
                    "{} ended with {st}: {}",
                    self.name,
                    tail(&self.log)
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not stop within {limit:?} of SIGTERM; killed: {}",
                    self.name,
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.stop(Duration::from_secs(10)) {
            procs::warn(&format!("{e:#}"));
        }
    }
}

/// A running `dfagent daemon` with its own socket and store.
struct Daemon {
    proc: Proc,
    socket: PathBuf,
    log: PathBuf,
    dfagent: PathBuf,
}

impl Daemon {
    fn start(env: &Env, store: &Path, cache_mib: Option<u64>) -> anyhow::Result<Daemon> {
        let dir = env.scratch("daemon");
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("dfagent.sock");
        let log = dir.join("daemon.log");
        let mut cmd = Command::new(&env.dfagent);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("daemon")
            .arg("--store")
            .arg(store)
            .args(["--metrics-addr", "none"]);
        if let Some(c) = cache_mib {
            cmd.arg("--cache-mib").arg(c.to_string());
        }
        let mut d = Daemon {
            proc: Proc::start(&mut cmd, "dfagent daemon", &log)?,
            socket,
            log,
            dfagent: env.dfagent.clone(),
        };
        let deadline = Instant::now() + DAEMON_READY;
        loop {
            if std::fs::read_to_string(&d.log)
                .unwrap_or_default()
                .contains("daemon ready")
            {
                d.proc.wait_sigterm_handler()?;
                return Ok(d);
            }
            d.proc.check_running("before it was ready")?;
            ensure!(
                Instant::now() < deadline,
                "dfagent daemon not ready within {DAEMON_READY:?}: {}",
                tail(&d.log)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// `dfagent --socket SOCKET` (a client of this daemon).
    fn cli(&self) -> Command {
        let mut c = Command::new(&self.dfagent);
        c.arg("--socket").arg(&self.socket);
        c
    }

    /// `dfagent umount MP` through the daemon.
    fn umount(&self, mp: &Path) -> anyhow::Result<()> {
        procs::run(self.cli().arg("umount").arg(mp), CLI)?;
        ensure!(
            !is_fuse_mounted(mp),
            "{} is still mounted after dfagent umount",
            mp.display()
        );
        Ok(())
    }

    /// `dfagent ps --json`.
    fn ps(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = procs::run(self.cli().args(["ps", "--json"]), CLI)?;
        let v: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).context("parsing dfagent ps --json")?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// SIGTERM (the daemon unmounts everything), wait for it; fails unless it exited 0.
    fn stop(&mut self) -> anyhow::Result<()> {
        self.proc.stop(DAEMON_STOP)
    }
}

/// A mount point: created, registered for a forced detach on teardown; on drop detached if
/// still mounted, deregistered and removed.
struct MountPoint {
    path: PathBuf,
    reg: u64,
}

impl MountPoint {
    fn new(env: &Env) -> anyhow::Result<MountPoint> {
        let p = env.scratch("mnt");
        std::fs::create_dir_all(&p)?;
        let path = p.canonicalize()?;
        let reg = cleanup::register(Action::Unmount(path.clone()));
        Ok(MountPoint { path, reg })
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        if is_fuse_mounted(&self.path) {
            cleanup::detach(&self.path);
        }
        cleanup::deregister(self.reg);
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The file whose readability marks a mount as ready: the smallest of the workload's check
/// files, and its bytes (from the tree the image was made of).
struct Probe {
    file: String,
    want: Vec<u8>,
}

fn probe(env: &Env) -> anyhow::Result<Probe> {
    let tree = &env.workload.tree;
    let mut best: Option<(u64, &String)> = None;
    for f in &env.workload.check_files {
        let len = std::fs::metadata(tree.join(f))
            .with_context(|| format!("{}", tree.join(f).display()))?
            .len();
        if best.is_none_or(|(l, _)| len < l) {
            best = Some((len, f));
        }
    }
    let (_, file) = best.context("the workload has no check files")?;
    Ok(Probe {
        file: file.clone(),
        want: std::fs::read(tree.join(file))?,
    })
}

/// Wait until `mp/probe.file` reads back its bytes in every one of `mps`; seconds since `t0`
/// per mount point. `check` runs between polls (to fail fast when a process died).
fn wait_readable(
    mps: &[&Path],
    probe: &Probe,
    t0: Instant,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<f64>> {
    let mut done: Vec<Option<f64>> = vec![None; mps.len()];
    let deadline = t0 + READY;
    let mut last_err = String::from("not there yet");
    loop {
        for (i, mp) in mps.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let p = mp.join(&probe.file);
            match std::fs::read(&p) {
                Ok(b) if b == probe.want => done[i] = Some(t0.elapsed().as_secs_f64()),
                Ok(b) => bail!(
                    "{} read back {} bytes that differ from the tree's {}",
                    p.display(),
                    b.len(),
                    probe.want.len()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => last_err = format!("{}: {e}", p.display()),
            }
        }
        if done.iter().all(Option::is_some) {
            return Ok(done.into_iter().flatten().collect());
        }
        check()?;
        ensure!(
            Instant::now() < deadline,
            "{} of {} mounts not readable within {READY:?} (last error: {last_err})",
            done.iter().filter(|d| d.is_none()).count(),
            mps.len()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Times of mounts through the daemon.
struct DaemonTiming {
    /// Per mount: seconds from launching the first client until its probe file read.
    ready: Vec<f64>,
    /// Per mount: seconds until its `dfagent mount` client exited (0).
    client_exit: Vec<f64>,
}

/// Launch `dfagent mount --prefetch P REF MP` through `daemon` for every reference at once,
/// wait until every mount reads its probe file and every client exited 0; then unmount all
/// (untimed).
fn daemon_mounts(
    env: &Env,
    daemon: &Daemon,
    refs: &[String],
    probe: &Probe,
) -> anyhow::Result<DaemonTiming> {
    let mps: Vec<MountPoint> = refs
        .iter()
        .map(|_| MountPoint::new(env))
        .collect::<Result<_, _>>()?;
    let logs: Vec<PathBuf> = refs.iter().map(|_| env.scratch("client.log")).collect();
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for ((r, mp), log) in refs.iter().zip(&mps).zip(&logs) {
        clients.push(Service::start(
            daemon
                .cli()
                .arg("mount")
                .arg("--prefetch")
                .arg(&env.opts.prefetch)
                .arg(r)
                .arg(&mp.path),
            "dfagent mount (client)",
            log,
        )?);
    }
    let mut exits: Vec<Option<f64>> = vec![None; refs.len()];
    let mut poll_clients = |exits: &mut Vec<Option<f64>>| -> anyhow::Result<()> {
        for (i, c) in clients.iter_mut().enumerate() {
            if exits[i].is_some() {
                continue;
            }
            if let Some(st) = c.exited()? {
                ensure!(
                    st.success(),
                    "dfagent mount {} through the daemon failed ({st}): {} | daemon: {}",
                    refs[i],
                    tail(&logs[i]),
                    tail(&daemon.log)
                );
                exits[i] = Some(t0.elapsed().as_secs_f64());
            }
        }
        Ok(())
    };
    let paths: Vec<&Path> = mps.iter().map(|m| m.path.as_path()).collect();
    let ready = wait_readable(&paths, probe, t0, || poll_clients(&mut exits))?;
    let deadline = Instant::now() + READY;
    while exits.iter().any(Option::is_none) {
        poll_clients(&mut exits)?;
        ensure!(
            Instant::now() < deadline,
            "a dfagent mount client did not exit within {READY:?} of its mount being readable"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    for mp in &mps {
        daemon.umount(&mp.path)?;
    }
    Ok(DaemonTiming {
        ready,
        client_exit: exits.into_iter().flatten().collect(),
    })
}

/// Seconds from launching `n` `dfagent ps` clients of `daemon` together until all exited 0:
/// what starting that many client processes and one small call each costs, without a mount.
fn clients_floor(env: &Env, daemon: &Daemon, n: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..n {
        let log = env.scratch("ps.log");
        let s = Service::start(daemon.cli().arg("ps"), "dfagent ps", &log)?;
        clients.push((s, log));
    }
    let deadline = t0 + READY;
    for (s, log) in &mut clients {
        loop {
            if let Some(st) = s.exited()? {
                ensure!(st.success(), "dfagent ps failed ({st}): {}", tail(log));
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "dfagent ps did not return within {READY:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// `dfagent --no-daemon mount --store STORE --prefetch P REF MP` in the foreground: seconds
/// from launching it until the probe file reads; then stopped with SIGTERM (untimed).
fn inprocess_mount(env: &Env, store: &Path, r: &str, probe: &Probe) -> anyhow::Result<f64> {
    let mp = MountPoint::new(env)?;
    let log = env.scratch("mount.log");
    let t0 = Instant::now();
    let mut p = Proc::start(
        Command::new(&env.dfagent)
            .arg("--no-daemon")
            .arg("mount")
            .arg("--store")
            .arg(store)
            .arg("--prefetch")
            .arg(&env.opts.prefetch)
            .arg(r)
            .arg(&mp.path),
        "dfagent mount --no-daemon",
        &log,
    )?;
    let ready = wait_readable(&[mp.path.as_path()], probe, t0, || {
        p.check_running("before its mount was readable")
    })?[0];
    // The mount can be readable before the process handles SIGTERM (see docs/benchmarks.md).
    p.wait_sigterm_handler()?;
    p.stop(Duration::from_secs(15))?;
    ensure!(
        !is_fuse_mounted(&mp.path),
        "dfagent mount --no-daemon left its mount"
    );
    Ok(ready)
}

/// Repositories already holding a copy of the workload image in this run's registry.
static COPIED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The workload's Nydus image under [`MOUNTS`] more repository names (copied inside the
/// registry, digests preserved); the repositories.
fn copies(env: &mut Env) -> anyhow::Result<Vec<String>> {
    env.nydus()?;
    let t = Instant::now();
    let mut repos = Vec::new();
    for i in 1..=MOUNTS {
        let repo = format!("{NYDUS_REPO}-{i:02}");
        let mut copied = COPIED.lock().unwrap_or_else(|p| p.into_inner());
        if !copied.contains(&repo) {
            procs::run(
                Command::new("skopeo").args([
                    "copy",
                    "--quiet",
                    "--preserve-digests",
                    "--src-tls-verify=false",
                    "--dest-tls-verify=false",
                    &format!("docker://{}", env.direct(NYDUS_REPO)),
                    &format!("docker://{}", env.direct(&repo)),
                ]),
                LONG,
            )?;
            copied.push(repo.clone());
        }
        repos.push(repo);
    }
    eprintln!(
        "dfagent-bench: the Nydus image under {MOUNTS} repository names ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    Ok(repos)
}

/// The mount-latency scenario (`mount-latency` and `mount-latency-16`).
pub fn latency(env: &mut Env) -> anyhow::Result<Outcome> {
    let how = env.nydus()?;
    let repos = copies(env)?;
    let inproc_store = env.warm_store()?;
    let probe = probe(env)?;
    let main_ref = env.via_proxy(NYDUS_REPO);
    let refs: Vec<String> = repos.iter().map(|r| env.via_proxy(r)).collect();

    let dstore = env.scratch("daemon-store");
    let mut daemon = Daemon::start(env, &dstore, None)?;
    // The daemon's store warm: every reference pulled through it (the first pull fetches the
    // chunks, the others only their manifests and find the rest there).
    let t = Instant::now();
    for r in std::iter::once(&main_ref).chain(&refs) {
        procs::run(daemon.cli().arg("pull").arg(r), LONG)?;
    }
    eprintln!(
        "dfagent-bench: daemon store warm ({} references pulled through the daemon, {:.1} s)",
        refs.len() + 1,
        t.elapsed().as_secs_f64()
    );
    // One untimed mount of each kind (page cache of the binary and the stores).
    daemon_mounts(env, &daemon, std::slice::from_ref(&main_ref), &probe)?;
    inprocess_mount(env, &inproc_store, &main_ref, &probe)?;

    let mut one = Series::new("mount-latency", "ms", false);
    let mut many = Series::new("mount-latency-16", "ms", false);
    let mut table = Table::new(&[
        "round",
        "daemon: client exited, ms",
        "16: first readable, ms",
        "16: median readable, ms",
        "16: all readable, ms",
        "16: all clients exited, ms",
        "16: one mount (baseline), ms",
        "16 `dfagent ps` clients together, ms",
    ]);
    let mut rounds = Vec::new();
    for r in 0..env.opts.rounds {
        let (d, b) = alternate(
            r,
            || daemon_mounts(env, &daemon, std::slice::from_ref(&main_ref), &probe),
            || inprocess_mount(env, &inproc_store, &main_ref, &probe),
        )?;
        let (m, o) = alternate(
            r,
            || daemon_mounts(env, &daemon, &refs, &probe),
            || daemon_mounts(env, &daemon, std::slice::from_ref(&main_ref), &probe),
        )?;
        ensure!(
            m.ready.len() == MOUNTS && m.client_exit.len() == MOUNTS,
            "{} of {MOUNTS} mounts were readable",
            m.ready.len()
        );
        let floor = clients_floor(env, &daemon, MOUNTS)?;
        let all = m.ready.iter().copied().fold(0.0, f64::max);
        let first = m.ready.iter().copied().fold(f64::INFINITY, f64::min);
        let all_exit = m.client_exit.iter().copied().fold(0.0, f64::max);
        one.push(d.ready[0] * 1e3, b * 1e3);
        many.push(all * 1e3, o.ready[0] * 1e3);
        eprintln!(
            "dfagent-bench: mount-latency round {}: daemon {:.0} ms (client exited {:.0} ms), in-process {:.0} ms; 16 together {:.0} ms (first {:.0} ms), one {:.0} ms",
            r + 1,
            d.ready[0] * 1e3,
            d.client_exit[0] * 1e3,
            b * 1e3,
            all * 1e3,
            first * 1e3,
            o.ready[0] * 1e3
        );
        table.row(vec![
            (r + 1).to_string(),
            fmt_value(d.client_exit[0] * 1e3),
            fmt_value(first * 1e3),
            fmt_value(median(&m.ready) * 1e3),
            fmt_value(all * 1e3),
            fmt_value(all_exit * 1e3),
            fmt_value(o.ready[0] * 1e3),
            fmt_value(floor * 1e3),
        ]);
        rounds.push(serde_json::json!({
            "daemon_ms": d.ready[0] * 1e3,
            "daemon_client_exit_ms": d.client_exit[0] * 1e3,
            "inprocess_ms": b * 1e3,
            "mounts": m.ready.len(),
            "clients_exited": m.client_exit.len(),
            "sixteen_ready_ms": m.ready.iter().map(|s| s * 1e3).collect::<Vec<_>>(),
            "sixteen_all_ms": all * 1e3,
            "one_ms": o.ready[0] * 1e3,
            "sixteen_ps_clients_ms": floor * 1e3,
        }));
    }
    daemon.stop()?;
    Ok(Outcome {
        file: "mount-latency",
        title: "Mount latency: through the daemon vs in-process; 16 at once vs one".into(),
        notes: format!(
            "Workload: {}; Nydus image: {how}, in the registry behind the shaping proxy ({}), also \
             under {MOUNTS} repository names (`{NYDUS_REPO}-01` … `-{MOUNTS}`, copied inside the registry \
             with `skopeo copy --preserve-digests`: the same bytes, but each a mount of its own with its \
             own bootstrap in memory). Every mount uses `--prefetch {}`.\n\n\
             Timed: from launching `dfagent mount REF MP` until `MP/{}` reads back the tree's bytes \
             (polled every 1 ms; before the mount appears the read fails with ENOENT on the empty mount \
             point). Page caches are not dropped: this is the warm path.\n\n\
             - **mount-latency**: dfagent = the command as a client of a running `dfagent daemon` (own \
             socket and store, `--metrics-addr none`) whose store holds the image (every reference \
             pulled through it beforehand); the client returns once the daemon reports the mount \
             ready (its exit time is in the table). Baseline = `dfagent --no-daemon mount --store \
             WARM` in the foreground (a store filled by `dfagent pull` beforehand): the process opens \
             the store (RocksDB), resolves the tag and mounts by itself.\n\
             - **mount-latency-16**: dfagent = {MOUNTS} clients launched together (one after the \
             other without waiting, ~1 ms apart), each mounting one of the {MOUNTS} repositories at \
             its own mount point through the same daemon; time until all {MOUNTS} read their file. \
             Baseline = one mount through the daemon, the same way. Ratio ≈ the cost of concurrency \
             (1 = free, {MOUNTS} = fully serial). For scale, the table also gives {MOUNTS} `dfagent ps` \
             clients launched together against the same daemon (untimed for the lines): starting \
             {MOUNTS} client processes at once and one small call each, without any mount.\n\n\
             One untimed mount of each kind first; mounts are unmounted after each side (untimed: \
             `dfagent umount` through the daemon, SIGTERM to the foreground process). Sides alternate \
             which goes first.",
            env.workload.label,
            link_desc(env),
            env.opts.prefetch,
            probe.file
        ),
        series: vec![one, many],
        extra: vec![("Per round".into(), table)],
        json: serde_json::json!({
            "mounts": MOUNTS,
            "probe_file": probe.file,
            "rounds": rounds,
        }),
    })
}

/// Regular files under `root` (every path, hard links each time), not following symlinks.
fn regular_files(root: &Path) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).with_context(|| format!("{}", p.display()))?;
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                out.push((p, md.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Read every regular file under `root` in full, in an order shuffled by `seed`; (files, bytes).
fn read_everything(root: &Path, seed: u64) -> anyhow::Result<(u64, u64)> {
    let mut files = regular_files(root)?;
    fastrand::Rng::with_seed(seed).shuffle(&mut files);
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    for (p, len) in &files {
        let got = crate::outcome::read_through(p, &mut buf, |_| {})?;
        ensure!(
            got == *len,
            "{}: read {got} bytes, its size is {len}",
            p.display()
        );
        bytes += got;
    }
    Ok((files.len() as u64, bytes))
}

/// What `/proc/PID/status` says about a process's memory, in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss: u64,
    hwm: u64,
    anon: u64,
    file: u64,
    threads: u64,
}

fn proc_status(pid: i32) -> anyhow::Result<Mem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Mem {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
        threads: field("Threads:")?,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The daemon-memory scenario.
pub fn memory(env: &mut Env) -> anyhow::Result<Outcome> {
    let how = env.nydus()?;
    let repos = copies(env)?;
    let refs: Vec<String> = repos.iter().map(|r| env.via_proxy(r)).collect();
    // The decoded-chunk cache: smaller than the image's data in both modes, so that reading
    // it fills the cache and subtracting its whole size is fair.
    let cache_mib: u64 = if env.opts.quick { 2 } else { 64 };
    let tree_files = regular_files(&env.workload.tree)?;
    let (want_files, want_bytes) = (
        tree_files.len() as u64,
        tree_files.iter().map(|f| f.1).sum::<u64>(),
    );
    // Distinct bytes of file data in the tree: an upper bound of what the decoded cache can
    // hold (the 16 images share their chunks).
    let distinct_bytes: u64 = {
        let mut seen = std::collections::HashSet::new();
        let mut n = 0;
        for (p, len) in &tree_files {
            if seen.insert(std::fs::symlink_metadata(p)?.ino()) {
                n += len;
            }
        }
        n
    };
    let cache_share_mib = (cache_mib as f64).min(distinct_bytes as f64 / MIB);
    let queue_mib = WRITE_QUEUE_CHUNKS as f64; // up to 1 MiB of stored bytes per chunk

    // One store for every round, every reference pulled into it beforehand (in-process).
    let store = env.scratch("daemon-store");
    let t = Instant::now();
    for r in &refs {
        procs::run(
            Command::new(&env.dfagent)
                .arg("--no-daemon")
                .arg("pull")
                .arg("--store")
                .arg(&store)
                .arg(r),
            LONG,
        )?;
    }
    eprintln!(
        "dfagent-bench: daemon store warm ({} references pulled, {:.1} s)",
        refs.len(),
        t.elapsed().as_secs_f64()
    );

    let mut series = Series::new("daemon-memory", "MiB", false);
    let mut table = Table::new(&[
        "round",
        "idle RSS, MiB",
        "mounted, before reads: RSS, MiB",
        "VmRSS, MiB",
        "VmHWM, MiB",
        "RssAnon, MiB",
        "RssFile, MiB",
        "threads",
        "RSS − cache, MiB",
        "RSS − cache − write queue, MiB",
        "HWM − cache, MiB",
        "RSS − idle, MiB",
        "read, GB",
        "read, s",
    ]);
    let mut rounds = Vec::new();
    for r in 0..env.opts.rounds {
        // Every round from the same state: a copy of the pulled store (each mount rewrites its
        // image's pins, so a reused store would differ from round to round).
        let round_store = env.scratch("round-store");
        procs::run(
            Command::new("cp").arg("-a").arg(&store).arg(&round_store),
            LONG,
        )?;
        let mut daemon = Daemon::start(env, &round_store, Some(cache_mib))?;
        std::thread::sleep(Duration::from_millis(500));
        let idle = proc_status(daemon.pid())?;
        let mps: Vec<MountPoint> = refs
            .iter()
            .map(|_| MountPoint::new(env))
            .collect::<Result<_, _>>()?;
        // Mount all 16 together (clients launched at once; each returns when its mount is
        // ready).
        let mut clients = Vec::new();
        for (i, (rf, mp)) in refs.iter().zip(&mps).enumerate() {
            let log = env.scratch("client.log");
            let s = Service::start(
                daemon
                    .cli()
                    .arg("mount")
                    .arg("--prefetch")
                    .arg(&env.opts.prefetch)
                    .arg(rf)
                    .arg(&mp.path),
                "dfagent mount (client)",
                &log,
            )?;
            clients.push((i, s, log));
        }
        let deadline = Instant::now() + READY;
        for (i, s, log) in &mut clients {
            loop {
                if let Some(st) = s.exited()? {
                    ensure!(
                        st.success(),
                        "dfagent mount {} failed ({st}): {} | daemon: {}",
                        refs[*i],
                        tail(log),
                        tail(&daemon.log)
                    );
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "dfagent mount {} did not return within {READY:?}",
                    refs[*i]
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        let mounted = proc_status(daemon.pid())?;
        // Read everything: one thread per mount, each in its own shuffled order.
        let t0 = Instant::now();
        let results: Vec<anyhow::Result<(u64, u64)>> = std::thread::scope(|s| {
            let hs: Vec<_> = mps
                .iter()
                .enumerate()
                .map(|(i, mp)| {
                    let p = mp.path.clone();
                    s.spawn(move || read_everything(&p, (r * MOUNTS + i) as u64))
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a reader panicked")))
                })
                .collect()
        });
        let read_secs = t0.elapsed().as_secs_f64();
        let mut read_bytes = 0u64;
        let mut per_mount = Vec::new();
        for (i, res) in results.into_iter().enumerate() {
            let (files, bytes) =
                res.with_context(|| format!("reading the mount of {}", refs[i]))?;
            ensure!(
                files == want_files && bytes == want_bytes,
                "mount of {}: read {files} files / {bytes} bytes, the tree has {want_files} / {want_bytes}",
                refs[i]
            );
            read_bytes += bytes;
            per_mount.push(serde_json::json!({ "files": files, "bytes": bytes }));
        }
        // Background prefetch finished everywhere (steady state), all 16 serving.
        let deadline = Instant::now() + READY;
        let ps = loop {
            let ps = daemon.ps()?;
            let running = ps
                .iter()
                .filter(|m| m["prefetch"]["state"] == "running")
                .count();
            if running == 0 {
                break ps;
            }
            ensure!(
                Instant::now() < deadline,
                "{running} prefetches still running {READY:?} after the reads"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        ensure!(
            ps.len() == MOUNTS && ps.iter().all(|m| m["state"] == "serving"),
            "dfagent ps lists {} mounts, not {MOUNTS} serving: {ps:?}",
            ps.len()
        );
        let m = proc_status(daemon.pid())?;
        daemon.stop()?;
        for mp in &mps {
            ensure!(
                !is_fuse_mounted(&mp.path),
                "{} is still mounted after the daemon stopped",
                mp.path.display()
            );
        }
        drop(mps);
        std::fs::remove_dir_all(&round_store)?;
        let beyond = mib(m.rss) - cache_share_mib;
        eprintln!(
            "dfagent-bench: daemon-memory round {}: VmRSS {:.1} MiB (idle {:.1}), VmHWM {:.1} MiB, beyond the {cache_share_mib:.0} MiB cache {beyond:.1} MiB; read {:.2} GB in {read_secs:.1} s",
            r + 1,
            mib(m.rss),
            mib(idle.rss),
            mib(m.hwm),
            read_bytes as f64 / 1e9
        );
        series.push(beyond, GOAL_MIB);
        table.row(vec![
            (r + 1).to_string(),
            fmt_value(mib(idle.rss)),
            fmt_value(mib(mounted.rss)),
            fmt_value(mib(m.rss)),
            fmt_value(mib(m.hwm)),
            fmt_value(mib(m.anon)),
            fmt_value(mib(m.file)),
            m.threads.to_string(),
            fmt_value(beyond),
            fmt_value(beyond - queue_mib),
            fmt_value(mib(m.hwm) - cache_share_mib),
            fmt_value(mib(m.rss) - mib(idle.rss)),
            fmt_value(read_bytes as f64 / 1e9),
            fmt_value(read_secs),
        ]);
        rounds.push(serde_json::json!({
            "idle_rss_kib": idle.rss,
            "idle_hwm_kib": idle.hwm,
            "mounted_rss_kib": mounted.rss,
            "mounted_threads": mounted.threads,
            "vmrss_kib": m.rss,
            "vmhwm_kib": m.hwm,
            "rss_anon_kib": m.anon,
            "rss_file_kib": m.file,
            "threads": m.threads,
            "beyond_cache_mib": beyond,
            "mounts_serving": ps.len(),
            "read_bytes": read_bytes,
            "read_s": read_secs,
            "per_mount": per_mount,
        }));
    }
    Ok(Outcome {
        file: "daemon-memory",
        title: "Daemon memory with 16 images mounted and read".into(),
        notes: format!(
            "Workload: {}; Nydus image: {how}, under {MOUNTS} repository names (`{NYDUS_REPO}-01` … \
             `-{MOUNTS}`, same bytes; each mount parses and keeps its own bootstrap). Link: {}.\n\n\
             Each round starts `dfagent daemon --cache-mib {cache_mib} --metrics-addr none` on a fresh \
             copy of a store that already holds the image (all {MOUNTS} references pulled beforehand \
             with `dfagent pull`), reads its idle RSS half a second after \"daemon ready\", launches \
             {MOUNTS} `dfagent mount --prefetch {} REF MP` clients together (RSS again half a second \
             after the last returned: \"mounted, before reads\"), then {MOUNTS} threads (one per mount) read every regular file \
             of their mount in full ({want_files} files, {want_bytes} bytes per mount, each thread in \
             its own shuffled order, 1 MiB reads), waits until no background prefetch is running \
             (`dfagent ps --json`), and reads `/proc/PID/status` of the daemon with everything still \
             mounted. Then SIGTERM (the daemon unmounts all and must exit 0).\n\n\
             **The summary line.** dfagent = VmRSS − the decoded-chunk cache ({cache_share_mib:.1} MiB: \
             `--cache-mib {cache_mib}`, or the tree's distinct file bytes if fewer — the cache cannot \
             hold more; the reads of {} MB of distinct data fill it), i.e. the daemon's memory beyond \
             its configured cache. Baseline = the issue's goal, {GOAL_MIB:.0} MiB, a constant, not a \
             measurement: ratio ≤ 1 means the goal is met. Rounds cannot alternate against a \
             constant; each round is a fresh daemon.\n\n\
             In the table: the idle daemon's RSS (store open, no mounts) for scale; VmHWM (peak RSS) \
             also minus the cache; RssAnon (heap, stacks) and RssFile (pages of the mapped binary and \
             libraries — shared with other processes running the same binary and reclaimable); and \
             RSS − cache − the write-back queue's bound (`cache.write_queue` = {WRITE_QUEUE_CHUNKS} \
             chunks of up to 1 MiB stored bytes = {queue_mib:.0} MiB). With a warm store nothing is \
             written back, so that queue is empty here and the column only shows what the bound \
             would allow; the line does not subtract it. The RocksDB store's own memory (block \
             cache, memtables) is not a configured cache of dfagent's and is counted in full.",
            env.workload.label,
            link_desc(env),
            env.opts.prefetch,
            fmt_value(distinct_bytes as f64 / 1e6),
        ),
        series: vec![series],
        extra: vec![("Per round".into(), table)],
        json: serde_json::json!({
            "mounts": MOUNTS,
            "cache_mib": cache_mib,
            "cache_share_mib": cache_share_mib,
            "goal_mib": GOAL_MIB,
            "tree_files": want_files,
            "tree_bytes": want_bytes,
            "rounds": rounds,
        }),
    })
}
