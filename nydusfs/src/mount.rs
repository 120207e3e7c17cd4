//! Mounting and unmounting: a FUSE session for a [`NydusFs`], detection of stale mounts left
//! by a killed process, and unmounting by path (what `dfagent umount` does).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL, SessionUnmounter};

use crate::fuse::NydusFs;

/// What is at a mount point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountState {
    /// Nothing is mounted there.
    NotMounted,
    /// A filesystem is mounted and answering.
    Live,
    /// A FUSE mount whose server is gone ("transport endpoint is not connected").
    Stale,
}

/// Whether something is mounted at `path`, and whether it still answers.
pub fn mount_state(path: &Path) -> io::Result<MountState> {
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Ok(MountState::Stale),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let canonical = path.canonicalize()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let target = canonical.to_string_lossy();
    let mounted = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == target);
    Ok(if mounted {
        MountState::Live
    } else {
        MountState::NotMounted
    })
}

/// Undo the octal escapes (`\040` for a space) of /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount whatever is at `path`; `lazy` detaches a busy or stale mount.
pub fn unmount(path: &Path, lazy: bool) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    // Not root: the setuid helper may unmount our own FUSE mounts.
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let status = cmd.arg(path).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("fusermount3 -u failed: {status}")))
    }
}

/// A live mount. Dropping it unmounts.
pub struct Mounted {
    path: PathBuf,
    unmounter: SessionUnmounter,
    ended: mpsc::Receiver<io::Result<()>>,
    done: bool,
}

/// Mount `fs` at `mountpoint` and serve it on background threads.
pub fn mount(fs: NydusFs, mountpoint: &Path, fsname: &str) -> io::Result<Mounted> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(fsname.to_string()),
        MountOption::Subtype("nydus".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::Suid,
        MountOption::Dev,
        MountOption::Exec,
        MountOption::NoAtime,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(2);
    config.clone_fd = true;
    let mut session = fuser::Session::new(fs, mountpoint, &config)?;
    let unmounter = session.unmount_callable();
    // Run the session on our own thread rather than with `Session::spawn`: `spawn` moves the
    // mount out of the session, which turns the `SessionUnmounter` above into a no-op.
    let (tx, ended) = mpsc::channel();
    std::thread::Builder::new()
        .name("nydusfs-session".into())
        .spawn(move || {
            let _ = tx.send(session.run());
        })?;
    Ok(Mounted {
        path: mountpoint.to_path_buf(),
        unmounter,
        ended,
        done: false,
    })
}

impl Mounted {
    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wait up to `timeout` for the session to end (after an unmount from anywhere).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<io::Result<()>> {
        if self.done {
            return Some(Ok(()));
        }
        match self.ended.recv_timeout(timeout) {
            Ok(r) => {
                self.done = true;
                Some(r)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.done = true;
                Some(Ok(()))
            }
        }
    }

    /// Unmount and wait (bounded) for the session to end.
    pub fn unmount(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        if self.done {
            return Ok(());
        }
        if let Err(e) = self.unmounter.unmount() {
            tracing::warn!(path = %self.path.display(), error = %e, "unmount failed; detaching");
            unmount(&self.path, true)?;
        }
        match self.wait_timeout(Duration::from_secs(10)) {
            Some(r) => r,
            None => Err(io::Error::other(
                "FUSE session did not end within 10 s of unmount",
            )),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(path = %self.path.display(), error = %e, "unmount on drop failed");
        }
    }
}
