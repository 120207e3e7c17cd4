//! A private containerd for tests: the system's `containerd` (Debian's 1.6) started with a
//! config of its own under a directory the caller owns — its own root, state, gRPC and ttrpc
//! sockets, `opt` directory and runc roots, the CRI plugin disabled (it wants CNI), no metrics
//! listener — optionally with a proxy snapshotter plugin (`[proxy_plugins.<name>]`), so real
//! containers run (`ctr run`, runc) without touching the machine's containerd.
//!
//! What containerd 1.6 still puts outside the directory, and how it is undone on drop:
//! - each runc v2 shim listens on `/run/containerd/s/<sha256(address/ns/id)>` (a path compiled
//!   into containerd): the sockets of this instance's shims are removed, and the directories
//!   `/run/containerd/s` and `/run/containerd` too when they did not exist at start, are empty
//!   and no other shim runs;
//! - runc makes cgroups `<ns>/<id>` under every hierarchy of `/sys/fs/cgroup` and leaves the
//!   `<ns>` one behind: the empty ones of the namespaces used through [`Containerd::ctr`] are
//!   removed (use namespace names of your own, not `default`);
//! - `ctr run` keeps runc's state in `/run/containerd/runc` and its FIFOs in
//!   `/run/containerd/fifo` unless told otherwise: [`Containerd::run`] passes `--runc-root` and
//!   `--fifo-dir` under the directory ([`Containerd::run_args`] for a hand-made `ctr run`).
//!
//! Drop kills the tasks (through containerd while it runs, then any shim of this instance and
//! its children by force — shims outlive containerd), stops containerd, and detaches every
//! mount under the directory (deepest first, lazily). It removes nothing the caller owns.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::fixtures::sha256_hex;
use crate::mountinfo::{parse, MountEntry};
use crate::process::{output_within, wait_exit};

/// How long containerd may take to answer `ctr version` after it is started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound of one `ctr` command ([`Containerd::ctr`]); imports of a few hundred MB fit.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(180);
/// How long containerd gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of the whole cleanup through containerd on drop (tasks killed, containers deleted).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of one `ctr` command during the cleanup.
const CLEANUP_CTR_TIMEOUT: Duration = Duration::from_secs(10);
/// The directory containerd 1.6 puts shim sockets in, whatever its config says.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// Longest socket path accepted (`sun_path` is 108 bytes; the ttrpc socket adds `.ttrpc`).
const MAX_SOCKET_PATH: usize = 100;

/// The cached Debian + python3 root file system (`scripts/setup.sh` makes it with debootstrap):
/// what container tests run.
pub const DEBIAN_ROOTFS: &str = "/var/cache/dfagent/rootfs/bookworm-minbase-python3";

/// Fail the calling test unless a container test can run here: root, `tools` on `PATH` (besides
/// containerd's own: `containerd`, `ctr`, `runc`, `containerd-shim-runc-v2`) and, with `rootfs`,
/// the cached root file system. `scripts/setup.sh` provides all of it; a test that skipped
/// instead would pass while checking nothing.
pub fn prerequisites(test: &str, tools: &[&str], rootfs: bool) {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_owned());
    }
    let base = ["containerd", "ctr", "runc", "containerd-shim-runc-v2"];
    for tool in base.iter().chain(tools) {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push((*tool).to_owned());
        }
    }
    if rootfs && !Path::new(DEBIAN_ROOTFS).join("usr/bin/python3").exists() {
        missing.push(format!("{DEBIAN_ROOTFS} (scripts/setup.sh makes it)"));
    }
    assert!(
        missing.is_empty(),
        "{test} cannot run: missing {} (run scripts/setup.sh as root)",
        missing.join(", ")
    );
}

/// A snapshotter served by another process over gRPC, registered with containerd as a proxy
/// plugin (`[proxy_plugins.<name>] type = "snapshot"`): `ctr run --snapshotter <name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySnapshotter {
    /// The plugin's name (`dfagent`).
    pub name: String,
    /// The snapshotter's gRPC socket (nothing needs to listen yet: containerd connects lazily).
    pub socket: PathBuf,
}

/// A containerd-shim process that belongs to a [`Containerd`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shim {
    /// Its process id.
    pub pid: u32,
    /// Its `-namespace` argument.
    pub namespace: String,
    /// Its `-id` argument (the container's id).
    pub id: String,
    /// Its `-address` argument (containerd's gRPC socket).
    pub address: String,
}

/// A running (or stopped, or killed) private containerd; see the module documentation.
pub struct Containerd {
    dir: PathBuf,
    config: PathBuf,
    address: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Namespaces named in `ctr` commands: their tasks are killed and cgroups removed on drop.
    namespaces: Mutex<BTreeSet<String>>,
    /// Whether `/run/containerd` existed before this instance started.
    run_containerd_existed: bool,
}

impl Containerd {
    /// Write a config under `dir` (absolute or relative; it must exist) and start containerd
    /// with it, its output appended to `dir/containerd.log`; returns once `ctr version`
    /// answers (within [`READY_TIMEOUT`]), or an error naming the log's tail.
    pub fn start(dir: &Path, snapshotter: Option<ProxySnapshotter>) -> io::Result<Containerd> {
        let dir = dir.canonicalize()?;
        let address = dir.join("containerd.sock");
        if address.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: too long for a unix socket", address.display()),
            ));
        }
        for sub in ["root", "state", "opt", "runc", "runc-v1", "fifo"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let config = dir.join("config.toml");
        std::fs::write(&config, config_text(&dir, &address, snapshotter.as_ref()))?;
        let mut c = Containerd {
            log: dir.join("containerd.log"),
            dir,
            config,
            address,
            child: None,
            namespaces: Mutex::new(BTreeSet::new()),
            run_containerd_existed: Path::new("/run/containerd").exists(),
        };
        c.spawn()?;
        Ok(c)
    }

    /// containerd's gRPC socket (`ctr --address`).
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The directory everything lives under.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config file containerd runs with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// containerd's `root` (content store, metadata, snapshots).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// runc's root for the containers `ctr run` starts ([`Containerd::run_args`]).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// Where `ctr run` makes its I/O FIFOs ([`Containerd::run_args`]).
    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.join("fifo")
    }

    /// The arguments that keep a hand-made `ctr run` inside the directory (runc root, FIFOs);
    /// they go right after `run`.
    pub fn run_args(&self) -> Vec<OsString> {
        vec![
            "--runc-root".into(),
            self.runc_root().into(),
            "--fifo-dir".into(),
            self.fifo_dir().into(),
        ]
    }

    /// What containerd wrote to its stdout and stderr so far (every start appends).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// containerd's process id while it runs.
    pub fn pid(&mut self) -> Option<u32> {
        self.is_running()
            .then(|| self.child.as_ref().map(Child::id))
            .flatten()
    }

    /// Whether the containerd process started last is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `ctr --address SOCK --namespace NS ARGS...` to completion within [`CTR_TIMEOUT`]
    /// (killed and `TimedOut` after it), whatever its exit status.
    pub fn ctr<I, S>(&self, ns: &str, args: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ctr_within(ns, args, CTR_TIMEOUT)
    }

    /// [`Containerd::ctr`] with a bound of the caller's.
    pub fn ctr_within<I, S>(&self, ns: &str, args: I, timeout: Duration) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        if let Ok(mut set) = self.namespaces.lock() {
            set.insert(ns.to_owned());
        }
        let mut cmd = self.ctr_command(ns);
        cmd.args(args);
        match output_within(&mut cmd, timeout)? {
            Some(out) => Ok(out),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{cmd:?} did not finish within {timeout:?}"),
            )),
        }
    }

    /// [`Containerd::ctr`] that must succeed: its stdout, or an error with the command, its
    /// status and its stderr.
    pub fn ctr_ok<I, S>(&self, ns: &str, args: I) -> io::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.ctr(ns, &args)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(io::Error::other(format!(
                "ctr -n {ns} {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// `ctr run --rm` with runc's root and the FIFOs inside the directory:
    /// `ctr run --rm <run_args> OPTS... IMAGE ID CMD...` (e.g. OPTS `--snapshotter overlayfs`),
    /// whatever its exit status.
    pub fn run(
        &self,
        ns: &str,
        opts: &[&str],
        image: &str,
        id: &str,
        cmd: &[&str],
    ) -> io::Result<Output> {
        let mut args: Vec<OsString> = vec!["run".into(), "--rm".into()];
        args.extend(self.run_args());
        args.extend(opts.iter().map(OsString::from));
        args.push(image.into());
        args.push(id.into());
        args.extend(cmd.iter().map(OsString::from));
        self.ctr(ns, &args)
    }

    /// Kill containerd with SIGKILL and reap it (its shims and containers keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::process::kill(&mut c);
        }
    }

    /// Stop containerd with SIGTERM (SIGKILL after 10 s); its shims keep running.
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        if matches!(c.try_wait(), Ok(None)) {
            let pid = libc::pid_t::try_from(c.id()).map_err(io::Error::other)?;
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if wait_exit(&mut c, STOP_TIMEOUT).is_none() {
                tracing::warn!(pid, "containerd ignored SIGTERM; killing it");
                crate::process::kill(&mut c);
            }
        }
        Ok(())
    }

    /// Start containerd again with the same config and root (stopping it first if it runs);
    /// returns once it answers.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// The shim processes of this instance: `containerd-shim*` whose `-address` is this
    /// instance's socket or whose working directory is under the directory.
    pub fn shims(&self) -> Vec<Shim> {
        shims_of(&self.address, &self.dir)
    }

    /// The mounts at or below the directory (containers' root file systems).
    pub fn mounts(&self) -> Vec<MountEntry> {
        mounts_under(&self.dir)
    }

    fn ctr_command(&self, ns: &str) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(ns)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .env_remove("CONTAINERD_SNAPSHOTTER");
        cmd
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let started = Instant::now();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        tracing::debug!(pid = child.id(), config = %self.config.display(), "containerd started");
        self.child = Some(child);
        let deadline = started + READY_TIMEOUT;
        loop {
            if !self.is_running() {
                return Err(io::Error::other(format!(
                    "containerd exited at start; log:\n{}",
                    tail(&self.log(), 30)
                )));
            }
            let mut probe = self.ctr_command("default");
            probe.args(["--connect-timeout", "2s", "version"]);
            if let Ok(Some(out)) = output_within(&mut probe, Duration::from_secs(5)) {
                if out.status.success() {
                    tracing::debug!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "containerd ready"
                    );
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "containerd did not answer within {READY_TIMEOUT:?}; log:\n{}",
                        tail(&self.log(), 30)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kill and delete every task and container through containerd (bounded overall).
    fn cleanup_through_containerd(&mut self) {
        let deadline = Instant::now() + CLEANUP_TIMEOUT;
        let mut namespaces: BTreeSet<String> = self
            .namespaces
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        if let Some(listed) = self.quiet_ctr("default", &["namespaces", "ls", "-q"]) {
            namespaces.extend(listed.lines().map(str::to_owned).filter(|l| !l.is_empty()));
        }
        for ns in namespaces.iter().take(64) {
            let tasks = self
                .quiet_ctr(ns, &["tasks", "ls", "-q"])
                .unwrap_or_default();
            for id in tasks.lines().filter(|l| !l.is_empty()).take(256) {
                if Instant::now() >= deadline {
                    return;
                }
                let _ = self.quiet_ctr(ns, &["tasks", "kill", "-a", "-s", "SIGKILL", id]);
                let _ = self.quiet_ctr(ns, &["tasks", "delete", "--force", id]);
            }
            let containers = self
                .quiet_ctr(ns, &["containers", "ls", "-q"])
                .unwrap_or_default();
            for id in containers.lines().filter(|l| !l.is_empty()).take(256) {
                if Instant::now() >= deadline {
                    return;
                }
                let _ = self.quiet_ctr(ns, &["containers", "delete", id]);
            }
        }
    }

    /// A `ctr` run for cleanup: its stdout when it succeeded within a short bound.
    fn quiet_ctr(&self, ns: &str, args: &[&str]) -> Option<String> {
        let mut cmd = self.ctr_command(ns);
        cmd.args(args);
        match output_within(&mut cmd, CLEANUP_CTR_TIMEOUT) {
            Ok(Some(out)) if out.status.success() => {
                Some(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            _ => None,
        }
    }

    /// Kill this instance's shims and their children (the containers' init processes) by
    /// force, and remove their sockets under `/run/containerd/s`.
    fn kill_shims(&self) {
        for _ in 0..10 {
            let shims = self.shims();
            if shims.is_empty() {
                break;
            }
            let mut pids: Vec<u32> = Vec::new();
            for s in &shims {
                for child in children_of(s.pid) {
                    signal(child, libc::SIGKILL);
                    pids.push(child);
                }
                pids.push(s.pid);
                signal(s.pid, libc::SIGKILL);
                let _ = std::fs::remove_file(shim_socket(&s.address, &s.namespace, &s.id));
                tracing::debug!(pid = s.pid, ns = %s.namespace, id = %s.id, "shim killed");
            }
            let gone =
                crate::wait::wait_until(Duration::from_secs(2), || pids.iter().all(|p| !alive(*p)));
            if gone {
                break;
            }
        }
    }

    /// Remove the empty cgroups runc left for the namespaces used (`<ns>/<id>`, then `<ns>`).
    fn remove_cgroups(&self) {
        let namespaces: BTreeSet<String> = self
            .namespaces
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let root = Path::new("/sys/fs/cgroup");
        let mut bases = vec![root.to_path_buf()];
        if let Ok(rd) = std::fs::read_dir(root) {
            bases.extend(
                rd.flatten()
                    .take(64)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir()),
            );
        }
        for ns in namespaces.iter().filter(|n| is_plain_name(n)) {
            for base in &bases {
                let dir = base.join(ns);
                if !dir.is_dir() {
                    continue;
                }
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    for e in rd.flatten().take(1024) {
                        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            let _ = std::fs::remove_dir(e.path());
                        }
                    }
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }

    /// Remove `/run/containerd/s` and `/run/containerd` when this instance's shims made them:
    /// they did not exist at start, are empty, and no shim runs on the machine.
    fn remove_run_dirs(&self) {
        if self.run_containerd_existed || any_shim_running() {
            return;
        }
        let _ = std::fs::remove_dir(SHIM_SOCKET_DIR);
        let _ = std::fs::remove_dir("/run/containerd");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.is_running() {
            self.cleanup_through_containerd();
        }
        let _ = self.stop();
        self.kill_shims();
        unmount_under(&self.dir);
        self.remove_cgroups();
        self.remove_run_dirs();
    }
}

/// The config text: everything under `dir`, `address` as the gRPC socket.
fn config_text(dir: &Path, address: &Path, snapshotter: Option<&ProxySnapshotter>) -> String {
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    let mut t = format!(
        "# Written by dfagent-test-support (a test's private containerd).\n\
         version = 2\n\
         root = {root}\n\
         state = {state}\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         \n\
         [grpc]\n  address = {grpc}\n\
         \n\
         [ttrpc]\n  address = {ttrpc}\n\
         \n\
         [debug]\n  level = \"debug\"\n\
         \n\
         [metrics]\n  address = \"\"\n\
         \n\
         [plugins]\n\
         \x20 [plugins.\"io.containerd.internal.v1.opt\"]\n    path = {opt}\n\
         \x20 [plugins.\"io.containerd.runtime.v1.linux\"]\n    runtime_root = {runc_v1}\n",
        root = q(&dir.join("root")),
        state = q(&dir.join("state")),
        grpc = q(address),
        ttrpc = q(&dir.join("containerd.sock.ttrpc")),
        opt = q(&dir.join("opt")),
        runc_v1 = q(&dir.join("runc-v1")),
    );
    if let Some(s) = snapshotter {
        t.push_str(&format!(
            "\n[proxy_plugins]\n  [proxy_plugins.{}]\n    type = \"snapshot\"\n    address = {}\n",
            toml_string(&s.name),
            q(&s.socket)
        ));
    }
    t
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A namespace name that is a single path component (safe to join under `/sys/fs/cgroup`).
fn is_plain_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains('/')
}

/// Process `pid` as a shim, if it is one: `containerd-shim*` with `-namespace`, `-id` and
/// `-address` arguments.
fn read_shim(pid: u32) -> Option<Shim> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let name = Path::new(args.first()?).file_name()?.to_str()?.to_owned();
    if !name.starts_with("containerd-shim") {
        return None;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    Some(Shim {
        pid,
        namespace: value("-namespace").unwrap_or_default(),
        id: value("-id").unwrap_or_default(),
        address: value("-address").unwrap_or_default(),
    })
}

/// The shim processes of a containerd whose gRPC socket is `address` or whose state is under
/// `dir` (`-address` names it, or the shim's working directory is under `dir`): for checks
/// after a [`Containerd`] is gone.
pub fn shims_of(address: &Path, dir: &Path) -> Vec<Shim> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in procs.flatten().take(1 << 16) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Some(shim) = read_shim(pid) else { continue };
        let ours = Path::new(&shim.address) == address
            || std::fs::read_link(format!("/proc/{pid}/cwd"))
                .map(|cwd| cwd.starts_with(dir))
                .unwrap_or(false);
        if ours {
            out.push(shim);
        }
    }
    out
}

/// The socket containerd 1.6's runc v2 shim listens on for container `id` in namespace `ns` of
/// the containerd at `address`: `/run/containerd/s/<sha256(address/ns/id)>`.
pub fn shim_socket(address: &str, ns: &str, id: &str) -> PathBuf {
    Path::new(SHIM_SOCKET_DIR).join(sha256_hex(format!("{address}/{ns}/{id}").as_bytes()))
}

/// Whether any containerd shim runs on the machine (any containerd's).
fn any_shim_running() -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    procs.flatten().take(1 << 16).any(|e| {
        e.file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .and_then(read_shim)
            .is_some()
    })
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .take(1 << 16)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|p| parent_of(*p) == Some(pid))
        .collect()
}

/// The parent of process `pid` (field 4 of `/proc/PID/stat`, after the command in parens).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: sending a signal to a process id; no memory is involved.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The mounts at or below `dir` (mountinfo read without panicking: used on drop).
pub fn mounts_under(dir: &Path) -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse(&text)
        .into_iter()
        .filter(|e| e.mount_point.starts_with(dir))
        .collect()
}

/// Detach every mount at or below `dir`, deepest first, lazily (a bounded number of passes).
pub fn unmount_under(dir: &Path) {
    for _ in 0..16 {
        let mut points: Vec<PathBuf> = mounts_under(dir)
            .into_iter()
            .map(|e| e.mount_point)
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in &points {
            let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: a valid C string; detaching a mount under a directory this fixture owns.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            tracing::debug!(mount_point = %p.display(), rc, "detached");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_everything_under_the_directory() {
        let dir = Path::new("/tmp/ctd-x");
        let t = config_text(
            dir,
            &dir.join("containerd.sock"),
            Some(&ProxySnapshotter {
                name: "dfagent".into(),
                socket: "/run/dfagent/snapshotter.sock".into(),
            }),
        );
        for line in t.lines().filter(|l| l.contains('/')) {
            let line = line.trim();
            assert!(
                line.contains("\"/tmp/ctd-x/") || line.contains("snapshotter.sock"),
                "{line}"
            );
        }
        assert!(t.contains("root = \"/tmp/ctd-x/root\""));
        assert!(t.contains("[proxy_plugins.\"dfagent\"]"));
        assert!(t.contains("address = \"/run/dfagent/snapshotter.sock\""));
        assert!(t.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"));
        assert!(!config_text(dir, &dir.join("s"), None).contains("proxy_plugins"));
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_string("x\ny"), "\"x\\u000Ay\"");
    }

    #[test]
    fn parent_of_this_process_is_known() {
        let me = std::process::id();
        let parent = parent_of(me).expect("our own stat");
        assert_eq!(parent, std::os::unix::process::parent_id());
        assert!(children_of(parent).contains(&me));
    }
}
