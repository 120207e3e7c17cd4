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

    /// Its process id (for its CPU time in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// CPU time (user + system, all threads) process `pid` has used so far, in seconds, from
/// `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks = stat_cpu_ticks(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(ticks as f64 / hz as f64)
}

/// utime + stime (clock ticks) of a `/proc/PID/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After the name: state (field 3) ... utime is field 14, stime field 15.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A warning on stderr (the harness prints its own progress there).
pub fn warn(msg: &str) {
    eprintln!("dfagent-bench: warning: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_fields_14_and_15() {
        let line =
            "4242 (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 3 0 1234 0 0";
        assert_eq!(stat_cpu_ticks(line), Some(42));
        assert_eq!(stat_cpu_ticks("1 (x) S 1 2"), None);
        let me = cpu_seconds(std::process::id()).unwrap();
        assert!(me >= 0.0);
    }
}
