//! `dfagent mount REF DIR` as a child process: started, waited for until the kernel lists the
//! mount, and stopped (SIGTERM, bounded wait, then a forced detach) on unmount or drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cleanup::{self, Action};
use crate::procs::Service;

/// How long a mount may take to appear.
const MOUNT_READY: Duration = Duration::from_secs(120);

/// A running `dfagent mount`.
pub struct Mount {
    service: Option<Service>,
    mp: PathBuf,
    unmount_reg: u64,
    log: PathBuf,
}

/// Whether the kernel lists a FUSE mount at `mp` (read from /proc/self/mountinfo, so the
/// daemon is not asked anything).
pub fn is_fuse_mounted(mp: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mp.to_string_lossy();
    info.lines().any(|l| {
        let mut f = l.split(' ');
        let point = f.nth(4);
        let fstype = l.split(" - ").nth(1).and_then(|r| r.split(' ').next());
        point == Some(want.as_ref()) && fstype.is_some_and(|t| t.starts_with("fuse"))
    })
}

/// Options of one mount.
pub struct MountSpec<'a> {
    /// The dfagent binary.
    pub dfagent: &'a Path,
    /// Image reference.
    pub reference: &'a str,
    /// Store directory.
    pub store: &'a Path,
    /// `--prefetch` policy.
    pub prefetch: &'a str,
    /// Mount point (created if missing).
    pub mp: &'a Path,
    /// Log file of the process.
    pub log: &'a Path,
}

/// Whether mounts run with `-v` and their exit counters are echoed (`DFAGENT_BENCH_VERBOSE=1`):
/// for finding where time goes, not for measured runs.
fn verbose() -> bool {
    std::env::var_os("DFAGENT_BENCH_VERBOSE").is_some_and(|v| v == "1")
}

impl Mount {
    /// Start `dfagent mount` and wait until the mount is there.
    pub fn start(spec: &MountSpec<'_>) -> anyhow::Result<Mount> {
        std::fs::create_dir_all(spec.mp)?;
        let mp = spec.mp.canonicalize()?;
        let unmount_reg = cleanup::register(Action::Unmount(mp.clone()));
        let mut cmd = Command::new(spec.dfagent);
        if verbose() {
            cmd.arg("-v");
        }
        // In this process even if a daemon answers on the default socket: the bench measures
        // the mount process it started (its CPU time, its cache).
        let mut service = Service::start(
            cmd.arg("--no-daemon")
                .arg("mount")
                .arg("--store")
                .arg(spec.store)
                .arg("--prefetch")
                .arg(spec.prefetch)
                .arg(spec.reference)
                .arg(&mp),
            "dfagent mount",
            spec.log,
        )?;
        let deadline = Instant::now() + MOUNT_READY;
        loop {
            if is_fuse_mounted(&mp) {
                break;
            }
            if let Some(s) = service.exited()? {
                cleanup::deregister(unmount_reg);
                bail!(
                    "dfagent mount {} exited ({s}) before mounting: {}",
                    spec.reference,
                    log_tail(spec.log)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "dfagent mount {} not ready within {MOUNT_READY:?}",
                    spec.reference
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Mount {
            service: Some(service),
            mp,
            unmount_reg,
            log: spec.log.to_path_buf(),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mp
    }

    /// The `dfagent mount` process id (for its CPU time); 0 once stopped.
    pub fn pid(&self) -> u32 {
        self.service.as_ref().map_or(0, Service::pid)
    }

    /// Stop the process (it unmounts on SIGTERM); fails if it had to be killed or the mount
    /// stayed.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut s) = self.service.take() else {
            return Ok(());
        };
        let ended = s.stop(Duration::from_secs(15));
        let still = is_fuse_mounted(&self.mp);
        if still {
            cleanup::detach(&self.mp);
        }
        cleanup::deregister(self.unmount_reg);
        if verbose() {
            for l in std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .lines()
            {
                if l.starts_with("dfagent: ") {
                    eprintln!("  [mount] {l}");
                }
            }
        }
        match ended {
            Some(st) if !still && st.success() => Ok(()),
            Some(st) => bail!(
                "dfagent mount at {} ended with {st}{}",
                self.mp.display(),
                if still { " and left the mount" } else { "" }
            ),
            None => Err(anyhow::anyhow!("had to kill dfagent mount"))
                .with_context(|| format!("unmounting {}", self.mp.display())),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The last five lines of the log at `path`, newest first, joined by ` | ` (for an error that
/// says why a mount process exited); empty when it cannot be read.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.trim()
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .join(" | ")
}
