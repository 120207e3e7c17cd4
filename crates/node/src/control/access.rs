//! Who may use the control socket: the socket file is mode 0660, owned by root and the
//! configured group (root only by default), and every call checks the caller's credentials
//! (`SO_PEERCRED`) again, so a socket made world-writable by mistake still admits only root and
//! the group.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{NodeError, Result};

/// Who is calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Process id, when the kernel told us.
    pub pid: Option<i32>,
}

impl Caller {
    /// Whether the caller is root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// The group whose members may use the socket besides root: a name or a numeric gid.
pub fn resolve_group(group: &str) -> Result<Option<u32>> {
    let g = group.trim();
    if g.is_empty() {
        return Ok(None);
    }
    if let Ok(gid) = g.parse::<u32>() {
        return Ok(Some(gid));
    }
    let name =
        CString::new(g).map_err(|_| NodeError::Unsupported(format!("bad group name {g:?}")))?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 << 10];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives its use through `grp`.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return Err(NodeError::Unsupported(format!(
            "socket group {g:?} does not exist"
        )));
    }
    Ok(Some(grp.gr_gid))
}

/// Give the socket file its owner (root), group and mode (0660, or 0600 without a group).
pub fn secure_socket(path: &Path, group: Option<u32>) -> Result<()> {
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::os::unix::fs::chown(path, Some(0), group)
        .map_err(|e| NodeError::io(format!("chown {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| NodeError::io(format!("chmod {}", path.display()), e))
}

/// Bind a unix socket at `path` for root (and `group`): its directory made, a stale socket (no
/// one answers) replaced, a live one refused — another `what` runs there.
pub fn bind_socket(
    path: &Path,
    group: Option<u32>,
    what: &str,
) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| NodeError::io(format!("creating {}", dir.display()), e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(NodeError::Unsupported(format!(
                "another {what} answers on {}; stop it first",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| {
            NodeError::io(format!("removing the stale socket {}", path.display()), e)
        })?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| NodeError::io(format!("binding {}", path.display()), e))?;
    secure_socket(path, group)?;
    Ok(listener)
}

/// Supplementary groups of process `pid`, from /proc.
fn groups_of(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `caller` may use the control API: root, or a member of `group`.
pub fn admitted(caller: &Caller, group: Option<u32>) -> bool {
    if caller.is_root() {
        return true;
    }
    let Some(g) = group else { return false };
    caller.gid == g || caller.pid.is_some_and(|pid| groups_of(pid).contains(&g))
}
