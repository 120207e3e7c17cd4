//! Child processes with bounded waits: run-to-completion commands ([`run`]) and long-lived
//! services ([`Service`]), both registered for teardown.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cleanup::{self, Action};

/// What a finished command printed.
pub struct Output {
    /// Standard output.
    pub stdout: String,
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// Run `cmd` to completion within `timeout` (killed after it), capturing its output. Fails
/// when it exits non-zero, naming the command and quoting its stderr.
pub fn run(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let what = describe(cmd);
    cleanup::check_not_stopping()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let pid = child.id() as i32;
    let reg = cleanup::register(Action::Kill(pid));
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = child.wait();
        let _ = tx.send(r);
    });
    let result = rx.recv_timeout(timeout);
    let status = match result {
        Ok(r) => {
            cleanup::deregister(reg);
            r.with_context(|| format!("waiting for {what}"))?
        }
        Err(_) => {
            cleanup::stop_pid(pid, Duration::from_secs(2));
            cleanup::deregister(reg);
            bail!("{what} did not finish within {timeout:?}; killed");
        }
    };
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    if !status.success() {
        bail!(
            "{what} failed ({}): {}",
            status,
            stderr
                .trim()
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    Ok(Output { stdout })
}

/// A long-lived child (registry, mount) with its output in a log file; stopped on drop.
pub struct Service {
    child: Child,
    reg: u64,
    name: String,
}

impl Service {
    /// Start `cmd` with stdout and stderr appended to `log`.
    pub fn start(cmd: &mut Command, name: &str, log: &Path) -> anyhow::Result<Service> {
        cleanup::check_not_stopping()?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {}", describe(cmd)))?;
        let reg = cleanup::register(Action::Kill(child.id() as i32));
        Ok(Service {
            child,
            reg,
            name: name.to_owned(),
        })
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("checking on {}", self.name))
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns how it ended if it ended by itself.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        cleanup::deregister(self.reg);
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        warn(&format!(
            "{} ignored SIGTERM for {grace:?}; killing it",
            self.name
        ));
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// A warning on stderr (the harness prints its own progress there).
pub fn warn(msg: &str) {
    eprintln!("dfagent-bench: warning: {msg}");
}
