//! A `dfagent daemon` for tests and the fault campaign: its own socket and store under a
//! directory the caller owns, stderr copied to `daemon.log` there, started with a bounded wait
//! for its "daemon ready" line, and stopped with SIGTERM (then SIGKILL after a bound) on drop.
//! [`DfagentDaemon::run`] runs the CLI as its client (mount, pull, umount, cache go through it).
//! [`DfagentDaemon::start_in`] runs it in a test's network namespace ([`crate::netns`]).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cli::{Dfagent, CLI_TIMEOUT};
use crate::netns::NetNode;
use crate::process::run_bounded;

/// How long the daemon may take to say "daemon ready".
const READY: Duration = Duration::from_secs(30);
/// How long it may take to exit after SIGTERM (its own shutdown bound is 20 s).
const STOP: Duration = Duration::from_secs(40);

/// A running `dfagent daemon`.
pub struct DfagentDaemon {
    cli: Dfagent,
    child: Child,
    socket: PathBuf,
    store: PathBuf,
    log: PathBuf,
}

impl DfagentDaemon {
    /// `dfagent daemon --socket DIR/run/dfagent.sock --store STORE --metrics-addr none EXTRA...`
    /// (without `--metrics-addr none` when `EXTRA` has a `--metrics-addr`) with its log at
    /// `DIR/daemon.log`; waits (bounded) until it is ready.
    pub fn start(cli: &Dfagent, dir: &Path, store: &Path, extra: &[&str]) -> DfagentDaemon {
        Self::start_with(cli, dir, store, extra, None)
    }

    /// [`DfagentDaemon::start`] with the daemon in network namespace `node` (its registry
    /// traffic leaves from the node's address; cut the node and the registry is unreachable).
    /// Its control socket and mounts are in the test's own namespaces, so the client and the
    /// test's reads stay where they are.
    pub fn start_in(
        node: &NetNode,
        cli: &Dfagent,
        dir: &Path,
        store: &Path,
        extra: &[&str],
    ) -> DfagentDaemon {
        Self::start_with(cli, dir, store, extra, Some(node))
    }

    fn start_with(
        cli: &Dfagent,
        dir: &Path,
        store: &Path,
        extra: &[&str],
        node: Option<&NetNode>,
    ) -> DfagentDaemon {
        let socket = dir.join("run/dfagent.sock");
        let log = dir.join("daemon.log");
        let mut cmd = cli.command();
        cmd.args(["daemon", "--socket"])
            .arg(&socket)
            .arg("--store")
            .arg(store);
        if !extra.contains(&"--metrics-addr") {
            cmd.args(["--metrics-addr", "none"]);
        }
        cmd.args(extra);
        if let Some(n) = node {
            cmd = n.wrap(&cmd);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting dfagent daemon");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let Ok(mut f) = std::fs::File::create(&log_path) else {
                return;
            };
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(f, "{line}");
                if line.contains("daemon ready") {
                    let _ = tx.send(());
                }
            }
        });
        let mut d = DfagentDaemon {
            cli: cli.clone(),
            child,
            socket,
            store: store.to_path_buf(),
            log,
        };
        if rx.recv_timeout(READY).is_err() {
            crate::process::kill(&mut d.child);
            panic!("dfagent daemon not ready within {READY:?}: {}", d.log());
        }
        d
    }

    /// Its pid (for `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its store directory.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `dfagent ARGS...` as its client (bounded by [`CLI_TIMEOUT`]).
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        run_bounded(
            self.cli
                .command()
                .env("DFAGENT_SOCKET", &self.socket)
                .args(args),
            CLI_TIMEOUT,
        )
    }

    /// [`DfagentDaemon::run`], which must succeed (else fail with its stderr and the daemon's
    /// log).
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "dfagent {:?} through the daemon failed ({}): {}\ndaemon log:\n{}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out
    }

    /// `dfagent mount REFERENCE MP ARGS...` through the daemon (the client returns once the
    /// daemon serves it); the guard detaches the mount point on drop.
    pub fn mount(&self, reference: &str, mp: &Path, args: &[&str]) -> crate::mount::MountGuard {
        let guard = crate::mount::MountGuard::new(mp);
        let mut all: Vec<&OsStr> = vec![OsStr::new("mount"), OsStr::new(reference), mp.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        self.ok(&all);
        guard
    }

    /// SIGTERM, then wait (bounded) for it to exit; its status.
    pub fn terminate(&mut self) -> ExitStatus {
        if let Ok(Some(st)) = self.child.try_wait() {
            return st;
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                crate::process::kill(&mut self.child);
                panic!(
                    "dfagent daemon did not stop within {STOP:?}: {}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; it must exit 0.
    pub fn stop(mut self) {
        let st = self.terminate();
        assert!(
            st.success(),
            "dfagent daemon exited with {st}: {}",
            self.log()
        );
    }
}

impl Drop for DfagentDaemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if crate::process::wait_exit(&mut self.child, STOP).is_none() {
            crate::process::kill(&mut self.child);
        }
    }
}
