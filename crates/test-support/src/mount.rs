//! Mount guards: a mount point whose FUSE server processes are killed and whose mount is
//! detached (lazily) when the guard goes, so a failed test leaves nothing mounted.

use std::path::{Path, PathBuf};
use std::process::Child;

use crate::mountinfo::mounts_at;

/// Detach every mount stacked at `mp` (`umount2(MNT_DETACH)`, a bounded number of times).
pub fn detach(mp: &Path) {
    let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()) else {
        return;
    };
    for _ in 0..8 {
        if mounts_at(mp) == 0 {
            break;
        }
        // SAFETY: a valid C string; detaching a mount point this test made.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A mount point and the processes serving it. On drop, the processes still running are
/// killed and reaped, then whatever is still mounted at the point is detached.
pub struct MountGuard {
    mp: PathBuf,
    children: Vec<Child>,
}

impl MountGuard {
    /// Guard the mount point `mp` (which need not be mounted yet).
    pub fn new(mp: impl Into<PathBuf>) -> MountGuard {
        MountGuard {
            mp: mp.into(),
            children: Vec::new(),
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mp
    }

    /// Take over a process serving (or trying to serve) the mount; its index.
    pub fn adopt(&mut self, child: Child) -> usize {
        self.children.push(child);
        self.children.len() - 1
    }

    /// Process `n`.
    pub fn child(&mut self, n: usize) -> &mut Child {
        &mut self.children[n]
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        for c in &mut self.children {
            crate::process::kill(c);
        }
        detach(&self.mp);
    }
}
