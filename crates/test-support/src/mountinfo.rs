//! `/proc/self/mountinfo`, parsed: each mount's point, options, file system type and source,
//! with the kernel's octal escapes (`\040` for a space) undone.
//!
//! nydusfs has its own small parser for production use (`nydusfs/src/mount.rs`): production
//! code cannot depend on this crate.

use std::path::{Path, PathBuf};

/// One line of mountinfo: `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE
/// SUPER-OPTIONS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The root of the mount within its file system.
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`ro,nosuid,...`).
    pub options: String,
    /// File system type (`fuse`, `fuse.nydus`, `ext4`).
    pub fs_type: String,
    /// Source (the FUSE `fsname`, a device).
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
    /// The line as the kernel wrote it.
    pub line: String,
}

impl MountEntry {
    /// Whether `opt` is one of the per-mount options.
    pub fn has_option(&self, opt: &str) -> bool {
        self.options.split(',').any(|o| o == opt)
    }
}

/// A mountinfo field with its octal escapes (`\040` for a space) decoded.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
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

/// One mountinfo line parsed; `None` if it does not have the fields of one.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let (head, tail) = line.split_once(" - ")?;
    let head: Vec<&str> = head.split(' ').collect();
    let mut tail = tail.split(' ');
    if head.len() < 6 {
        return None;
    }
    Some(MountEntry {
        root: PathBuf::from(unescape(head[3])),
        mount_point: PathBuf::from(unescape(head[4])),
        options: head[5].to_owned(),
        fs_type: unescape(tail.next()?),
        source: unescape(tail.next()?),
        super_options: tail.next().unwrap_or_default().to_owned(),
        line: line.to_owned(),
    })
}

/// Every mount of mountinfo text `text`, in its order.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// Every mount this process sees now.
pub fn entries() -> Vec<MountEntry> {
    parse(&std::fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo"))
}

/// How many mounts are stacked at `path`.
pub fn mounts_at(path: &Path) -> usize {
    entries().iter().filter(|e| e.mount_point == path).count()
}

/// Whether anything is mounted at `path`.
pub fn is_mounted(path: &Path) -> bool {
    mounts_at(path) > 0
}

/// The topmost mount at `path`, if any.
pub fn entry_at(path: &Path) -> Option<MountEntry> {
    entries().into_iter().rev().find(|e| e.mount_point == path)
}

/// How many mounts are at or below `dir`.
pub fn mounts_under(dir: &Path) -> usize {
    entries()
        .iter()
        .filter(|e| e.mount_point.starts_with(dir))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_are_undone() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"tab\011nl\012bs\134"), "tab\tnl\nbs\\");
        // Not an escape: kept as is.
        assert_eq!(unescape(r"a\08"), r"a\08");
        assert_eq!(unescape(r"end\04"), r"end\04");
    }

    #[test]
    fn lines_are_parsed_with_and_without_optional_fields() {
        let text = "36 35 98:0 /mnt1 /mnt/my\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 36 0:50 / /tmp/x/mnt ro,nosuid,nodev,relatime - fuse nydusfs-test:img rw,user_id=0\n\
                    garbage\n";
        let e = parse(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].root, Path::new("/mnt1"));
        assert_eq!(e[0].mount_point, Path::new("/mnt/my dir"));
        assert_eq!(e[0].fs_type, "ext3");
        assert_eq!(e[0].source, "/dev/root");
        assert_eq!(e[0].super_options, "rw,errors=continue");
        assert!(!e[0].has_option("ro"));
        assert_eq!(e[1].mount_point, Path::new("/tmp/x/mnt"));
        assert!(e[1].has_option("ro") && e[1].has_option("nodev"));
        assert_eq!(e[1].fs_type, "fuse");
        assert_eq!(e[1].source, "nydusfs-test:img");
    }

    #[test]
    fn this_process_sees_its_root() {
        assert!(is_mounted(Path::new("/")));
        assert!(mounts_under(Path::new("/")) >= 1);
        assert!(entry_at(Path::new("/")).is_some());
    }
}
