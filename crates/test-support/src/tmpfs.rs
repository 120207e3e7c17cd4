//! A small tmpfs mounted for one test (a full disk under the store), unmounted on drop.

use std::path::{Path, PathBuf};

/// A tmpfs of a fixed size at a directory the caller made; detached (and the mount point left
/// empty) on drop.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `bytes` (rounded up to pages by the kernel) at `dir` (created if
    /// missing). Needs root.
    pub fn mount(dir: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("creating the tmpfs mount point");
        let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
        let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .expect("a mount point without NUL");
        let (src, fstype, opts) = (
            c("tmpfs"),
            c("tmpfs"),
            c(&format!("size={bytes},mode=0700")),
        );
        // SAFETY: valid C strings; mounting on a directory this test made.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mounting a {bytes}-byte tmpfs at {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        Tmpfs {
            path: dir.to_path_buf(),
        }
    }

    /// Grow (or shrink) it to `bytes` in place (`mount -o remount,size=`): a full disk that an
    /// operator made room on.
    pub fn resize(&self, bytes: u64) {
        let target = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes())
            .expect("a mount point without NUL");
        let opts = std::ffi::CString::new(format!("size={bytes}")).expect("no NUL");
        // SAFETY: valid C strings; remounting the tmpfs this guard mounted.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "resizing the tmpfs at {} to {bytes} bytes: {}",
            self.path.display(),
            std::io::Error::last_os_error()
        );
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `(total, free)` bytes, from statvfs.
    pub fn space(&self) -> (u64, u64) {
        let p = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes())
            .expect("a path without NUL");
        // SAFETY: statvfs fills the struct; zeroed is a valid initial value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid C string and a valid out pointer.
        let rc = unsafe { libc::statvfs(p.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs {}", self.path.display());
        (
            st.f_blocks as u64 * st.f_frsize as u64,
            st.f_bavail as u64 * st.f_frsize as u64,
        )
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        crate::mount::detach(&self.path);
    }
}
