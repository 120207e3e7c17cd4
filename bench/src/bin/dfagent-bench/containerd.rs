//! `containerd`: a container started by containerd on a cold node, through the dfagent
//! snapshotter (Nydus image, mounted lazily by `dfagent daemon`) vs containerd's own overlayfs
//! snapshotter after an ordinary pull of the OCI image. Prints `containerd-start` (seconds from
//! the start of the pull until the container printed `42`) and `containerd-egress` (MB the
//! registry sent, through the shaping proxy, in the same span).
//!
//! Every round, each side gets a fresh node under a 0700 directory in `/var/lib`: its own
//! containerd (test-support's private [`Containerd`]: own config, root, state and sockets, CRI
//! off) and, on dfagent's side, its own `dfagent daemon` (empty store, snapshotter on by
//! default: socket beside the control socket, root beside the store) registered as the proxy
//! snapshotter `dfagent`. Both sides are up before the clock starts; page caches are dropped
//! right before it. The registry already holds both images.
//!
//! - dfagent: `dfagent containerd pull REF --address SOCK -n NS` (manifest and config only),
//!   then `ctr run --rm --snapshotter dfagent REF ID CMD`.
//! - baseline: `ctr image pull --plain-http REF` (download and unpack into overlayfs), then
//!   `ctr run --rm REF ID CMD`.
//!
//! The full mode runs the workload's images (`python3 -c 'print(42)'` in the Debian + python3
//! root file system). The quick mode's fixture tree has no userland, so it builds a tiny image
//! of its own: the host's `dash` and the libraries it links, running `/bin/sh -c 'echo 42'`.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use dfagent_bench::proxy::CounterSnapshot;
use dfagent_bench::report::{fmt_value, Series, Table};
use dfagent_test_support::containerd::{mounts_under, unmount_under, Containerd, ProxySnapshotter};

use crate::cleanup::{self, Action};
use crate::env::{drop_caches, Env, LONG, NYDUS_REPO, OCI_REPO, TAG};
use crate::outcome::{alternate, mb, Outcome};
use crate::procs::{self, Service};

/// The containerd namespace every command uses.
const NS: &str = "dfagent-bench";
/// The proxy snapshotter's name in containerd's config.
const SNAPSHOTTER: &str = "dfagent";
/// What the container prints.
const EXPECTED: &str = "42";
/// Bound of one side's pull and of its container run, each.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a daemon may take to say it is ready.
const DAEMON_READY: Duration = Duration::from_secs(60);
/// How long a daemon may take to unmount everything and exit on SIGTERM.
const DAEMON_STOP: Duration = Duration::from_secs(40);
/// Repositories of the quick mode's own images.
const QUICK_OCI_REPO: &str = "bench/ctr-oci";
const QUICK_NYDUS_REPO: &str = "bench/ctr-nydus";
/// The parent of the nodes' directory ([`NodeBase`]).
const NODE_PARENT: &str = "/var/lib";
/// Most stdout lines of a container kept (the rest are counted, not stored).
const MAX_LINES: usize = 1000;

/// The images both sides start and the command they run.
struct Images {
    oci: String,
    nydus: String,
    cmd: Vec<String>,
    label: String,
    how: String,
    /// Compressed size of the OCI image's layers.
    oci_layer_bytes: u64,
}

/// Whether `tool` is on the PATH.
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Fail unless containerd, ctr, runc, skopeo and umoci are installed.
fn require_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = ["containerd", "ctr", "runc", "skopeo", "umoci"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    ensure!(
        missing.is_empty(),
        "the containerd scenario needs {missing:?} (scripts/setup.sh installs them)"
    );
    Ok(())
}

/// Sum of the layer sizes of the (only) image in an OCI layout.
fn layout_layer_bytes(layout: &Path) -> anyhow::Result<u64> {
    Ok(crate::env::layout_layers(layout)?
        .iter()
        .map(|(_, size)| size)
        .sum())
}

/// The quick mode's tree: the host's `dash` as `/bin/sh` and the libraries `ldd` names, each
/// copied to the same path.
fn tiny_tree(tree: &Path) -> anyhow::Result<()> {
    let dash = Path::new("/bin/dash");
    ensure!(dash.is_file(), "no /bin/dash on this machine");
    std::fs::create_dir_all(tree.join("bin"))?;
    std::fs::copy(dash, tree.join("bin/sh"))?;
    let out = procs::run(Command::new("ldd").arg(dash), Duration::from_secs(30))?;
    let mut copied = 0;
    for line in out.stdout.lines().take(64) {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        let dest = tree.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(path, &dest).with_context(|| format!("copying {path}"))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
        copied += 1;
    }
    ensure!(copied > 0, "ldd named no library of /bin/dash");
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    std::fs::write(tree.join("etc/hostname"), "bench\n")?;
    Ok(())
}

/// The images: the workload's (full mode), or the quick mode's tiny image built here.
fn images(env: &mut Env) -> anyhow::Result<Images> {
    if let Some(cmd) = env.workload.start.clone() {
        let how = env.nydus()?;
        let oci_layer_bytes = layout_layer_bytes(&env.oci()?.layout)?;
        return Ok(Images {
            oci: env.via_proxy(OCI_REPO),
            nydus: env.via_proxy(NYDUS_REPO),
            cmd,
            label: env.workload.label.clone(),
            how,
            oci_layer_bytes,
        });
    }
    let t = Instant::now();
    let tree = env.scratch("ctr-tree");
    tiny_tree(&tree)?;
    let layout = env.scratch("ctr-layout");
    let image = format!("{}:{TAG}", layout.display());
    let umoci = |args: &[&str]| procs::run(Command::new("umoci").args(args), LONG).map(|_| ());
    umoci(&["init", "--layout", &layout.to_string_lossy()])?;
    umoci(&["new", "--image", &image])?;
    umoci(&["insert", "--image", &image, &tree.to_string_lossy(), "/"])?;
    procs::run(
        Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{image}"),
            &format!("docker://{}", env.direct(QUICK_OCI_REPO)),
        ]),
        LONG,
    )?;
    procs::run(
        Command::new(&env.dfagent)
            .arg("build")
            .arg(format!("oci:{image}"))
            .arg("--push")
            .arg(env.direct(QUICK_NYDUS_REPO))
            .arg("--output-dir")
            .arg(env.scratch("ctr-nydus-build")),
        LONG,
    )?;
    let oci_layer_bytes = layout_layer_bytes(&layout)?;
    eprintln!(
        "dfagent-bench: containerd quick images built ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    Ok(Images {
        oci: env.via_proxy(QUICK_OCI_REPO),
        nydus: env.via_proxy(QUICK_NYDUS_REPO),
        cmd: vec!["/bin/sh".into(), "-c".into(), format!("echo {EXPECTED}")],
        label: "a tiny image: the host's dash and the libraries it links (the quick mode's \
                fixture tree has no userland)"
            .into(),
        how: "built by `dfagent build` from the OCI image".into(),
        oci_layer_bytes,
    })
}

/// One cold node: a private containerd and, on dfagent's side, a `dfagent daemon` as its proxy
/// snapshotter, all under one root-only directory. Torn down (containerd, then the daemon,
/// then any mount left, then the directory) by [`Node::teardown`] or on drop.
struct Node {
    dir: PathBuf,
    ctd: Option<Containerd>,
    ctd_reg: Option<u64>,
    daemon: Option<Service>,
    daemon_log: PathBuf,
}

/// Where the nodes live: a 0700 directory under `/var/lib` (the daemon mounts container root
/// file systems only under directories owned by root and writable by no one else, all the way
/// up, which `/var/tmp` is not; `/var/lib` is on disk, unlike `/run` on most machines).
/// Removed (after any mount left below it is detached) on drop and on teardown.
struct NodeBase {
    dir: PathBuf,
    reg: u64,
}

impl NodeBase {
    fn new() -> anyhow::Result<NodeBase> {
        let dir = tempfile::Builder::new()
            .prefix("dfagent-bench-containerd-")
            .tempdir_in(NODE_PARENT)
            .with_context(|| format!("making a directory under {NODE_PARENT}"))?
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let reg = cleanup::register(Action::RemoveDir(dir.clone()));
        Ok(NodeBase { dir, reg })
    }

    /// A fresh path below it (not created).
    fn path(&self, name: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.join(format!("{name}-{n}"))
    }
}

impl Drop for NodeBase {
    fn drop(&mut self) {
        unmount_under(&self.dir);
        cleanup::deregister(self.reg);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Node {
    fn start(env: &Env, base: &NodeBase, name: &str, with_dfagent: bool) -> anyhow::Result<Node> {
        cleanup::check_not_stopping()?;
        let dir = base.path(name);
        std::fs::create_dir_all(&dir)?;
        // Container root file systems live only under directories no other user can enter.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let dir = dir.canonicalize()?;
        let mut node = Node {
            daemon_log: dir.join("daemon.log"),
            dir,
            ctd: None,
            ctd_reg: None,
            daemon: None,
        };
        let snapshotter = if with_dfagent {
            Some(node.start_daemon(env)?)
        } else {
            None
        };
        let ctd_dir = node.dir.join("containerd");
        std::fs::create_dir_all(&ctd_dir)?;
        let mut ctd = Containerd::start(&ctd_dir, snapshotter)
            .with_context(|| format!("starting containerd in {}", ctd_dir.display()))?;
        if let Some(pid) = ctd.pid() {
            node.ctd_reg = Some(cleanup::register(Action::Kill(pid as i32)));
        }
        node.ctd = Some(ctd);
        Ok(node)
    }

    /// Start the daemon (empty store, `[mount] prefetch` from `--prefetch`) and wait until it
    /// is ready; the snapshotter to register with containerd.
    fn start_daemon(&mut self, env: &Env) -> anyhow::Result<ProxySnapshotter> {
        let config = self.dir.join("dfagent.toml");
        std::fs::write(
            &config,
            format!("[mount]\nprefetch = {:?}\n", env.opts.prefetch),
        )?;
        let run = self.dir.join("run");
        std::fs::create_dir_all(&run)?;
        let mut cmd = Command::new(&env.dfagent);
        cmd.arg("--socket")
            .arg(run.join("dfagent.sock"))
            .arg("daemon")
            .arg("--store")
            .arg(self.dir.join("store"))
            .arg("--config")
            .arg(&config)
            .args(["--metrics-addr", "none"]);
        let mut daemon = Service::start(&mut cmd, "dfagent daemon", &self.daemon_log)?;
        let deadline = Instant::now() + DAEMON_READY;
        loop {
            if std::fs::read_to_string(&self.daemon_log)
                .unwrap_or_default()
                .contains("daemon ready")
            {
                break;
            }
            if let Some(st) = daemon.exited()? {
                bail!(
                    "dfagent daemon exited ({st}) before it was ready: {}",
                    self.daemon_tail()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "dfagent daemon not ready within {DAEMON_READY:?}: {}",
                self.daemon_tail()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.daemon = Some(daemon);
        let socket = run.join("snapshotter.sock");
        ensure!(
            socket.exists(),
            "the daemon is ready but serves no snapshotter socket at {}: {}",
            socket.display(),
            self.daemon_tail()
        );
        Ok(ProxySnapshotter {
            name: SNAPSHOTTER.into(),
            socket,
        })
    }

    fn daemon_tail(&self) -> String {
        std::fs::read_to_string(&self.daemon_log)
            .unwrap_or_default()
            .trim()
            .lines()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .join(" | ")
    }

    fn ctd(&self) -> anyhow::Result<&Containerd> {
        self.ctd.as_ref().context("containerd is not running")
    }

    /// `ctr --address SOCK --namespace NS run --rm <runc root, FIFO dir> OPTS IMAGE ID CMD`.
    fn ctr_run(&self, opts: &[&str], image: &str, cmd: &[String]) -> anyhow::Result<Command> {
        let ctd = self.ctd()?;
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(ctd.address())
            .arg("--namespace")
            .arg(NS)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .env_remove("CONTAINERD_SNAPSHOTTER")
            .args(["run", "--rm"])
            .args(ctd.run_args())
            .args(opts)
            .arg(image)
            .arg("bench-start")
            .args(cmd);
        Ok(c)
    }

    /// The daemon's image mounts (FUSE, source `dfagent:...`) under the node's directory.
    fn image_mounts(&self) -> usize {
        mounts_under(&self.dir)
            .iter()
            .filter(|m| m.source.starts_with("dfagent:"))
            .count()
    }

    /// Everything stopped and removed; an error if the daemon did not stop cleanly.
    fn teardown(&mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        if let Some(mut ctd) = self.ctd.take() {
            if let Err(e) = ctd.stop() {
                result = Err(anyhow::anyhow!("stopping containerd: {e}"));
            }
            // Its drop kills the shims left, detaches the mounts under its directory and
            // removes the cgroups of the namespaces used.
            drop(ctd);
        }
        if let Some(reg) = self.ctd_reg.take() {
            cleanup::deregister(reg);
        }
        if let Some(mut d) = self.daemon.take() {
            match d.stop(DAEMON_STOP) {
                Some(st) if st.success() => {}
                other => {
                    if result.is_ok() {
                        result = Err(anyhow::anyhow!(
                            "dfagent daemon did not exit 0 on SIGTERM ({other:?}): {}",
                            self.daemon_tail()
                        ));
                    }
                }
            }
        }
        unmount_under(&self.dir);
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        result
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            procs::warn(&format!("{e:#}"));
        }
    }
}

/// A container run until it printed [`EXPECTED`] and exited.
struct Started {
    /// When the expected line arrived (None: never).
    output_at: Option<Instant>,
    /// The proxy's counters since `before` at that moment.
    bytes_at_output: u64,
    /// When `ctr` exited.
    exited_at: Instant,
    /// Its stdout, trimmed.
    stdout: String,
}

/// Run `cmd` (a `ctr run`), watching its stdout line by line, within `timeout`.
fn run_watching(
    env: &Env,
    cmd: &mut Command,
    before: &CounterSnapshot,
    timeout: Duration,
) -> anyhow::Result<Started> {
    cleanup::check_not_stopping()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ctr run")?;
    let pid = child.id() as i32;
    let reg = cleanup::register(Action::Kill(pid));
    let (Some(out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        cleanup::stop_pid(pid, Duration::from_secs(2));
        cleanup::deregister(reg);
        bail!("ctr run has no piped output");
    };
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    let mut output_at = None;
    let mut bytes_at_output = 0;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if output_at.is_none() && line.trim() == EXPECTED {
                    output_at = Some(Instant::now());
                    bytes_at_output = env.counters().since(before).to_client;
                }
                if lines.len() < MAX_LINES {
                    lines.push(line);
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                cleanup::stop_pid(pid, Duration::from_secs(2));
                cleanup::deregister(reg);
                bail!("ctr run did not finish within {timeout:?}; killed");
            }
        }
    }
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            cleanup::stop_pid(pid, Duration::from_secs(2));
            cleanup::deregister(reg);
            bail!("ctr run closed its output but did not exit within {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let exited_at = Instant::now();
    cleanup::deregister(reg);
    let stderr = err_reader.join().unwrap_or_default();
    ensure!(
        status.success(),
        "ctr run failed ({status}): {}",
        stderr
            .trim()
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    Ok(Started {
        output_at,
        bytes_at_output,
        exited_at,
        stdout: lines.join("\n").trim().to_owned(),
    })
}

/// One side's figures.
struct Side {
    /// From the start of the pull until the container printed the expected line.
    secs: f64,
    /// The pull alone.
    pull_secs: f64,
    /// Until `ctr run --rm` exited (container gone).
    exit_secs: f64,
    /// Registry bytes (proxy to client) until the output.
    bytes: u64,
    /// Until `ctr` exited.
    bytes_at_exit: u64,
    connections: u64,
    output: String,
    /// dfagent: image mounts of the daemon after the run.
    image_mounts: usize,
}

fn finish(
    env: &Env,
    t0: Instant,
    pull_secs: f64,
    before: &CounterSnapshot,
    s: Started,
) -> anyhow::Result<Side> {
    let at_exit = env.counters().since(before);
    let Some(output_at) = s.output_at else {
        bail!(
            "the container never printed {EXPECTED:?}; its output: {:?}",
            s.stdout
        );
    };
    Ok(Side {
        secs: output_at.duration_since(t0).as_secs_f64(),
        pull_secs,
        exit_secs: s.exited_at.duration_since(t0).as_secs_f64(),
        bytes: s.bytes_at_output,
        bytes_at_exit: at_exit.to_client,
        connections: at_exit.connections,
        output: s.stdout,
        image_mounts: 0,
    })
}

fn dfagent_side(env: &Env, base: &NodeBase, images: &Images) -> anyhow::Result<Side> {
    let mut node = Node::start(env, base, "dfagent", true)?;
    let address = node.ctd()?.address().to_path_buf();
    let mut run = node.ctr_run(&["--snapshotter", SNAPSHOTTER], &images.nydus, &images.cmd)?;
    drop_caches()?;
    let before = env.counters();
    let t0 = Instant::now();
    let out = procs::run(
        Command::new(&env.dfagent)
            .args(["containerd", "pull", &images.nydus, "--address"])
            .arg(&address)
            .args(["-n", NS, "--snapshotter", SNAPSHOTTER, "--json"]),
        STEP_TIMEOUT,
    )?;
    let pull_secs = t0.elapsed().as_secs_f64();
    let started = run_watching(env, &mut run, &before, STEP_TIMEOUT)?;
    let mut side = finish(env, t0, pull_secs, &before, started)?;
    let pulled: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .context("parsing dfagent containerd pull --json")?;
    ensure!(
        pulled["layers"].as_u64().unwrap_or(0) >= 1,
        "dfagent containerd pull reported no layer: {pulled}"
    );
    side.image_mounts = node.image_mounts();
    ensure!(
        side.image_mounts >= 1,
        "the container ran, but the daemon has no image mount: {}",
        node.daemon_tail()
    );
    node.teardown()?;
    Ok(side)
}

fn baseline_side(env: &Env, base: &NodeBase, images: &Images) -> anyhow::Result<Side> {
    let mut node = Node::start(env, base, "overlayfs", false)?;
    let mut run = node.ctr_run(&[], &images.oci, &images.cmd)?;
    drop_caches()?;
    let before = env.counters();
    let t0 = Instant::now();
    let pull = node
        .ctd()?
        .ctr_within(
            NS,
            ["image", "pull", "--plain-http", &images.oci],
            STEP_TIMEOUT,
        )
        .context("ctr image pull")?;
    ensure!(
        pull.status.success(),
        "ctr image pull failed ({}): {}",
        pull.status,
        String::from_utf8_lossy(&pull.stderr).trim()
    );
    let pull_secs = t0.elapsed().as_secs_f64();
    let started = run_watching(env, &mut run, &before, STEP_TIMEOUT)?;
    let side = finish(env, t0, pull_secs, &before, started)?;
    node.teardown()?;
    Ok(side)
}

/// `/proc/loadavg`'s first three fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The containerd scenario.
pub fn run(env: &mut Env) -> anyhow::Result<Outcome> {
    require_tools()?;
    let images = images(env)?;
    let base = NodeBase::new()?;
    let load_before = loadavg();
    let mut start = Series::new("containerd-start", "s", false);
    let mut egress = Series::new("containerd-egress", "MB", false);
    let mut table = Table::new(&[
        "round",
        "dfagent: pull, s",
        "baseline: pull + unpack, s",
        "dfagent: ctr exited, s",
        "baseline: ctr exited, s",
        "dfagent MB by exit",
        "baseline MB by exit",
        "dfagent connections",
        "baseline connections",
    ]);
    let mut rounds = Vec::new();
    for r in 0..env.opts.rounds {
        let (d, b) = alternate(
            r,
            || dfagent_side(env, &base, &images),
            || baseline_side(env, &base, &images),
        )?;
        ensure!(
            d.output == b.output,
            "dfagent's container printed {:?}, the baseline's {:?}",
            d.output,
            b.output
        );
        ensure!(
            b.bytes >= images.oci_layer_bytes,
            "the baseline fetched {} bytes through the proxy, less than the image's {} layer bytes",
            b.bytes,
            images.oci_layer_bytes
        );
        ensure!(d.bytes > 0, "dfagent fetched nothing through the proxy");
        eprintln!(
            "dfagent-bench: containerd round {}: dfagent {:.2} s (pull {:.2} s, {:.1} MB), baseline {:.2} s (pull {:.2} s, {:.1} MB)",
            r + 1,
            d.secs,
            d.pull_secs,
            mb(d.bytes),
            b.secs,
            b.pull_secs,
            mb(b.bytes)
        );
        start.push(d.secs, b.secs);
        egress.push(mb(d.bytes), mb(b.bytes));
        table.row(vec![
            (r + 1).to_string(),
            fmt_value(d.pull_secs),
            fmt_value(b.pull_secs),
            fmt_value(d.exit_secs),
            fmt_value(b.exit_secs),
            fmt_value(mb(d.bytes_at_exit)),
            fmt_value(mb(b.bytes_at_exit)),
            d.connections.to_string(),
            b.connections.to_string(),
        ]);
        rounds.push(serde_json::json!({
            "dfagent_s": d.secs, "baseline_s": b.secs,
            "dfagent_pull_s": d.pull_secs, "baseline_pull_s": b.pull_secs,
            "dfagent_exit_s": d.exit_secs, "baseline_exit_s": b.exit_secs,
            "dfagent_bytes": d.bytes, "baseline_bytes": b.bytes,
            "dfagent_bytes_at_exit": d.bytes_at_exit, "baseline_bytes_at_exit": b.bytes_at_exit,
            "dfagent_connections": d.connections, "baseline_connections": b.connections,
            "dfagent_output": d.output, "baseline_output": b.output,
            "output_match": d.output == b.output,
            "dfagent_image_mounts": d.image_mounts,
        }));
    }
    let load_after = loadavg();
    let cmd = shell_words(&images.cmd);
    Ok(Outcome {
        file: "containerd",
        title: "containerd: ctr run through the dfagent snapshotter vs overlayfs after a full pull"
            .into(),
        notes: format!(
            "Workload: {label}; command `{cmd}` (it prints {EXPECTED}). Nydus image: {how}. \
             containerd {ctd}, runc, each side's registry traffic through the shaping proxy ({link}).\n\n\
             Every round each side gets a fresh cold node under a 0700 directory in {NODE_PARENT} \
             (the daemon mounts container root file systems only below directories that root owns \
             and no one else may write, all the way up): its own containerd \
             (private config, root, state and sockets; CRI plugin off; namespace `{NS}`) and, for \
             dfagent, its own `dfagent daemon` (empty store; `[mount] prefetch = \"{prefetch}\"`; its \
             snapshotter registered with that containerd as the proxy snapshotter `{SNAPSHOTTER}`). Both are \
             up before the clock starts; page caches are dropped right before it; sides alternate \
             which goes first. The registry already holds both images.\n\n\
             - **dfagent**: `dfagent containerd pull REF --address SOCK -n {NS}` (manifest and \
             config only; the layers become remote snapshots), then `ctr run --rm --snapshotter \
             {SNAPSHOTTER} REF ID {cmd}`: the daemon mounts the image lazily and reads on demand.\n\
             - **baseline**: `ctr image pull --plain-http REF` (the OCI image: download, then \
             unpack into containerd's default overlayfs snapshotter), then `ctr run --rm REF ID {cmd}`.\n\n\
             `containerd-start`: seconds from the start of the pull until the container's `{EXPECTED}` \
             reached `ctr`'s stdout. `containerd-egress`: MB (10^6 bytes) the proxy sent from the \
             registry in the same span (manifests, configs, blobs). With `--prefetch all` the daemon \
             goes on fetching the rest of the image in the background after the output; the \
             table gives both sides' bytes by the time `ctr run --rm` exited. OCI image layers: \
             {layer} bytes. Load average (1/5/15 min) at the start: {load_before}; at the end: \
             {load_after}.",
            label = images.label,
            how = images.how,
            ctd = containerd_version(),
            link = crate::cold_start::link_desc(env),
            prefetch = env.opts.prefetch,
            layer = images.oci_layer_bytes,
        ),
        series: vec![start, egress],
        extra: vec![("Pulls, exits, bytes".into(), table)],
        json: serde_json::json!({
            "oci_layer_bytes": images.oci_layer_bytes,
            "command": images.cmd,
            "prefetch": env.opts.prefetch,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "rounds": rounds,
        }),
    })
}

/// `args` as a shell would need them typed (single quotes where needed), for the notes.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-=:,".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `containerd --version`'s version field.
fn containerd_version() -> String {
    procs::run(
        Command::new("containerd").arg("--version"),
        Duration::from_secs(30),
    )
    .ok()
    .and_then(|o| o.stdout.split_whitespace().nth(2).map(str::to_owned))
    .unwrap_or_else(|| "(unknown version)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quote_what_a_shell_would_split() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shell_words(&a(&["python3", "-c", "print(42)"])),
            "python3 -c 'print(42)'"
        );
        assert_eq!(
            shell_words(&a(&["/bin/sh", "-c", "echo 42"])),
            "/bin/sh -c 'echo 42'"
        );
        assert_eq!(shell_words(&a(&["it's"])), "'it'\\''s'");
    }
}
