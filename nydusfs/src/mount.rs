//! Mounting and unmounting: a FUSE session for a [`NydusFs`] with the access it is given
//! ([`MountAccess`]: by default only the mounting user, no set-user-id, no device files), what
//! `/proc/self/mountinfo` says is mounted at a path ([`MountEntry`], [`mount_state`]: stale
//! mounts left by a killed process included), and unmounting by path.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL, SessionUnmounter};

use crate::fuse::NydusFs;

/// One mount as `/proc/self/mountinfo` lists it, its octal escapes (`\040` for a space) undone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`ro,nosuid,nodev,...`).
    pub options: String,
    /// File system type: `fuse` (mounted directly by root), `fuse.nydus` (through
    /// fusermount3, which passes the subtype), `tmpfs`, `ext4`, ...
    pub fs_type: String,
    /// The source: a FUSE mount's `fsname`, a device, ...
    pub source: String,
    /// Per-superblock options (FUSE: `user_id=0,group_id=0,default_permissions,allow_other`).
    pub super_options: String,
}

impl MountEntry {
    /// One mountinfo line (`ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE
    /// SUPER-OPTIONS`); `None` if it does not have the fields of one.
    pub fn parse(line: &str) -> Option<MountEntry> {
        let (head, tail) = line.split_once(" - ")?;
        let mut head = head.split(' ');
        let mount_point = head.nth(4)?;
        let options = head.next()?;
        let mut tail = tail.split(' ');
        Some(MountEntry {
            mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
            options: options.to_string(),
            fs_type: unescape_mountinfo(tail.next()?),
            source: unescape_mountinfo(tail.next()?),
            super_options: tail.next().unwrap_or_default().to_string(),
        })
    }

    /// Whether `opt` is one of the per-mount options (`nosuid`) or, for keys of the
    /// superblock's (`allow_other`), one of those.
    pub fn has_option(&self, opt: &str) -> bool {
        self.options
            .split(',')
            .chain(self.super_options.split(','))
            .any(|o| o == opt)
    }

    /// Whether it is a FUSE mount whose subtype, if the kernel knows one, is `nydus`: what
    /// [`mount`] makes, directly (`fuse`) or through fusermount3 (`fuse.nydus`).
    pub fn is_nydusfs(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type == "fuse.nydus"
    }
}

/// Every mount this process sees, in mountinfo's order (a mount stacked on another comes after
/// it).
pub fn mounts() -> io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(MountEntry::parse).collect())
}

/// Errors of a FUSE mount point that is mounted but does not answer this process: its server is
/// gone (`ENOTCONN`), or it is another user's without `allow_other` (`EACCES`, even for root).
fn unreachable_mount(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTCONN) | Some(libc::EACCES))
}

/// The absolute, symlink-free form of `path`, also for a FUSE mount point that does not answer
/// (which cannot be resolved itself: its parent is, and its name joined).
pub fn canonical_path(path: &Path) -> io::Result<PathBuf> {
    match path.canonicalize() {
        Err(e) if unreachable_mount(&e) => {
            let abs = std::path::absolute(path)?;
            match (abs.parent(), abs.file_name()) {
                (Some(parent), Some(name)) => Ok(parent.canonicalize()?.join(name)),
                _ => Err(e),
            }
        }
        r => r,
    }
}

/// The topmost mount at `path` (the one an unmount of `path` would remove), if any.
pub fn mount_at(path: &Path) -> io::Result<Option<MountEntry>> {
    let target = canonical_path(path)?;
    Ok(mounts()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == target))
}

/// What is at a mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountState {
    /// Nothing is mounted there.
    NotMounted,
    /// A filesystem is mounted and answering: the topmost mount.
    Live(MountEntry),
    /// A FUSE mount whose server is gone ("transport endpoint is not connected").
    Stale(MountEntry),
}

/// Whether something is mounted at `path`, what, and whether it still answers. Another user's
/// FUSE mount that refuses this process is `Live`: it is there, and its server answers.
pub fn mount_state(path: &Path) -> io::Result<MountState> {
    let refused = match std::fs::metadata(path) {
        Err(e) if unreachable_mount(&e) => Some(e),
        Err(e) => return Err(e),
        Ok(_) => None,
    };
    Ok(match (mount_at(path)?, refused) {
        (None, Some(e)) => return Err(e),
        (None, None) => MountState::NotMounted,
        (Some(m), Some(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => MountState::Stale(m),
        (Some(m), _) => MountState::Live(m),
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
            // Computed wide: `\777` is not an escape the kernel writes, but must not overflow.
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
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

/// Let the kernel read ahead `max_read` bytes at a time on this mount. A FUSE mount's
/// read-ahead starts at the kernel's 128 KiB default whatever the filesystem offers, so a
/// sequential reader costs eight requests per 1 MiB chunk; at `max_read` it costs one. The
/// knob is the mount's own backing device's `read_ahead_kb` in sysfs (root only; anyone else
/// keeps the default). The device is found in mountinfo, not by `stat`, which would ask the
/// session before it serves.
fn widen_readahead(mountpoint: &Path, fsname: &str, max_read: u32) -> io::Result<()> {
    let target = canonical_path(mountpoint)?;
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let device = text
        .lines()
        .rev()
        .filter_map(|l| Some((MountEntry::parse(l)?, l.split(' ').nth(2)?)))
        .find(|(m, _)| m.mount_point == target && m.is_nydusfs() && m.source == fsname)
        .map(|(_, dev)| dev.to_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the mount is not in mountinfo"))?;
    // MAJ:MIN, digits only: nothing else may reach the sysfs path.
    let valid = device.split_once(':').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    });
    if !valid {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("device {device:?} in mountinfo"),
        ));
    }
    let kib = (max_read / 1024).max(128);
    std::fs::write(
        format!("/sys/class/bdi/{device}/read_ahead_kb"),
        kib.to_string(),
    )
}

/// A live mount. Dropping it unmounts.
pub struct Mounted {
    path: PathBuf,
    unmounter: SessionUnmounter,
    ended: mpsc::Receiver<io::Result<()>>,
    done: bool,
}

/// Who may use a mount, and which of the image's special files the kernel honours. The default
/// is what an untrusted image needs: only the user who mounted it may use it (root, for the
/// daemon), set-user-id bits and device files are ignored (`nosuid`, `nodev`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountAccess {
    /// Every user may use the mount (FUSE `allow_other`), each as the files' modes allow
    /// (`default_permissions`). Without it, only the user who mounted it.
    pub allow_other: bool,
    /// Honour set-user-id and set-group-id bits (`suid`; otherwise `nosuid`).
    pub suid: bool,
    /// Honour character and block device files (`dev`; otherwise `nodev`).
    pub dev: bool,
}

impl MountAccess {
    /// The FUSE mount options: read-only, the kernel checking permissions, these choices.
    fn options(&self, fsname: &str) -> Vec<MountOption> {
        vec![
            MountOption::FSName(fsname.to_string()),
            MountOption::Subtype("nydus".into()),
            MountOption::RO,
            MountOption::DefaultPermissions,
            if self.suid {
                MountOption::Suid
            } else {
                MountOption::NoSuid
            },
            if self.dev {
                MountOption::Dev
            } else {
                MountOption::NoDev
            },
            MountOption::Exec,
            MountOption::NoAtime,
        ]
    }

    /// Who the session serves.
    fn acl(&self) -> SessionACL {
        if self.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        }
    }
}

/// Mount `fs` at `mountpoint` as `fsname` (the mount's source in mountinfo) for its owner only,
/// `nosuid` and `nodev`, and serve it on background threads.
pub fn mount(fs: NydusFs, mountpoint: &Path, fsname: &str) -> io::Result<Mounted> {
    mount_with(fs, mountpoint, fsname, MountAccess::default())
}

/// [`mount`] with the access given.
pub fn mount_with(
    fs: NydusFs,
    mountpoint: &Path,
    fsname: &str,
    access: MountAccess,
) -> io::Result<Mounted> {
    // The name travels in a comma-separated option list (fusermount3's `-o`): a comma,
    // backslash, space or control character in it could add options of its own.
    if fsname.is_empty()
        || fsname
            .chars()
            .any(|c| c == ',' || c == '\\' || c.is_whitespace() || c.is_control())
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unusable file system name {fsname:?}"),
        ));
    }
    let max_read = fs.ops().config().max_read;
    let mut config = Config::default();
    config.mount_options = access.options(fsname);
    config.acl = access.acl();
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
    if let Err(e) = widen_readahead(mountpoint, fsname, max_read) {
        tracing::debug!(mountpoint = %mountpoint.display(), error = %e, "kernel read-ahead left at its default");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes_and_optional_fields() {
        let e = MountEntry::parse(
            "36 35 98:0 /mnt1 /mnt/my\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!(e.mount_point, Path::new("/mnt/my dir"));
        assert_eq!(
            (e.fs_type.as_str(), e.source.as_str()),
            ("ext3", "/dev/root")
        );
        assert!(e.has_option("noatime") && e.has_option("errors=continue"));
        assert!(!e.is_nydusfs());

        let e = MountEntry::parse(
            "40 36 0:50 / /tmp/x/mnt ro,nosuid,nodev,noatime - fuse dfagent:sha256:ab rw,user_id=0,group_id=0,default_permissions,allow_other",
        )
        .unwrap();
        assert!(e.is_nydusfs());
        assert_eq!(e.source, "dfagent:sha256:ab");
        assert!(e.has_option("nosuid") && e.has_option("nodev") && e.has_option("allow_other"));
        assert!(!e.has_option("suid"));

        assert!(MountEntry::parse("garbage").is_none());
        assert!(MountEntry::parse("1 2 3 - fuse").is_none());
        // An escape the kernel never writes (above \377) does not panic.
        assert_eq!(unescape_mountinfo(r"a\777b\08"), "a\u{fffd}b\\08");
    }

    #[test]
    fn this_process_sees_its_root_mount() {
        let root = mount_at(Path::new("/")).unwrap().expect("/ is a mount");
        assert_eq!(root.mount_point, Path::new("/"));
        assert!(matches!(
            mount_state(Path::new("/")).unwrap(),
            MountState::Live(_)
        ));
    }

    #[test]
    fn access_defaults_are_owner_only_nosuid_nodev() {
        let a = MountAccess::default();
        let o = a.options("x:y");
        assert!(o.contains(&MountOption::NoSuid) && o.contains(&MountOption::NoDev));
        assert!(!o.contains(&MountOption::Suid) && !o.contains(&MountOption::Dev));
        assert_eq!(a.acl(), SessionACL::Owner);
        let a = MountAccess {
            allow_other: true,
            suid: true,
            dev: true,
        };
        let o = a.options("x:y");
        assert!(o.contains(&MountOption::Suid) && o.contains(&MountOption::Dev));
        assert_eq!(a.acl(), SessionACL::All);
    }
}
