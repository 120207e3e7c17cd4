//! What the kernel sees of an image inode: its inode number and its `stat` attributes, in types
//! of our own (the FUSE adapter converts them to its crate's types).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dfagent_rafs::{FileType, Inode};

/// Inode number of the root directory, whatever the root's nid in the image.
pub const ROOT_INO: u64 = 1;

/// Inode number of node `nid`: the root is always [`ROOT_INO`], every other node `nid + 2`
/// (so no node collides with the root or with 0, which FUSE never uses). `None` for a nid so
/// large that it has no inode number (a crafted directory entry): the caller fails the request.
pub(crate) fn ino_of(nid: u64, root: u64) -> Option<u64> {
    if nid == root {
        Some(ROOT_INO)
    } else {
        nid.checked_add(2)
    }
}

/// Node id behind inode number `ino` (`None` for numbers no node has).
pub(crate) fn nid_of(ino: u64, root: u64) -> Option<u64> {
    match ino {
        ROOT_INO => Some(root),
        0 => None,
        n => n.checked_sub(2).filter(|&nid| nid != root),
    }
}

/// Largest file size reported: the kernel keeps sizes in a signed 64-bit `loff_t`, so a larger
/// size from an image is reported as this (a saturated value, never a negative size).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// Modification time of an inode stored as `secs` and `nsec`. The 64-bit seconds are read as
/// signed (two's complement), as the kernel's EROFS driver and nydusd read them: values of 2^63
/// and above are before 1970 (a builder that casts a negative `st_mtime` writes those).
/// Nanoseconds beyond a second are read as 999 999 999. Never panics: a time the platform's
/// `SystemTime` cannot hold saturates to the nearest one it can.
pub(crate) fn mtime_of(secs: u64, nsec: u32) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(nsec.min(999_999_999)));
    let secs = secs as i64;
    let at_second = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    match at_second.and_then(|t| t.checked_add(nsec)) {
        Some(t) => t,
        None => extreme(secs >= 0),
    }
}

/// The latest (`forward`) or earliest time a `SystemTime` holds, to the second: i64::MAX
/// seconds after or 2^63 before the epoch on Linux. Bounded: one try per bit.
fn extreme(forward: bool) -> SystemTime {
    let mut t = UNIX_EPOCH;
    for bit in (0..64).rev() {
        let step = Duration::from_secs(1 << bit);
        let next = if forward {
            t.checked_add(step)
        } else {
            t.checked_sub(step)
        };
        if let Some(n) = next {
            t = n;
        }
    }
    t
}

/// `stat` attributes of an inode, as the filesystem reports them. An image has one timestamp
/// per inode, so `atime`, `ctime` and `crtime` are all [`Attr::mtime`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number (see [`ROOT_INO`]).
    pub ino: u64,
    /// Size in bytes (at most [`MAX_FILE_SIZE`]).
    pub size: u64,
    /// 512-byte blocks: the size rounded up (the image stores no allocation).
    pub blocks: u64,
    /// Modification time (also reported as access, change and creation time).
    pub mtime: SystemTime,
    /// Kind of object.
    pub kind: FileType,
    /// Permission bits (mode without the type bits).
    pub perm: u16,
    /// Hard links (at least 1).
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number of a device inode, else 0.
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

impl Attr {
    /// Attributes of `inode` of an image whose root is node `root`. Every number from the
    /// image is checked or saturated: the size at [`MAX_FILE_SIZE`], the link count at least 1, the
    /// time per [`mtime_of`]. `None` when the node has no inode number ([`ino_of`]).
    pub(crate) fn of(inode: &Inode, root: u64) -> Option<Self> {
        let size = inode.size.min(MAX_FILE_SIZE);
        Some(Attr {
            ino: ino_of(inode.nid, root)?,
            size,
            blocks: size.div_ceil(512),
            mtime: mtime_of(inode.mtime, inode.mtime_nsec),
            kind: inode.file_type,
            perm: (inode.mode & 0o7777) as u16,
            nlink: inode.nlink.max(1),
            uid: inode.uid,
            gid: inode.gid,
            rdev: inode.rdev,
            blksize: 4096,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_round_trip() {
        for root in [0u64, 5, 128] {
            assert_eq!(nid_of(ino_of(root, root).unwrap(), root), Some(root));
            for nid in [0u64, 1, 7, 129, 1 << 40, u64::MAX - 2] {
                if nid != root {
                    let ino = ino_of(nid, root).unwrap();
                    assert_eq!(nid_of(ino, root), Some(nid));
                    assert_ne!(ino, ROOT_INO);
                }
            }
            assert_eq!(nid_of(0, root), None);
            assert_eq!(nid_of(root + 2, root), None);
        }
    }

    #[test]
    fn nids_without_an_inode_number() {
        assert_eq!(ino_of(u64::MAX, 0), None);
        assert_eq!(ino_of(u64::MAX - 1, 0), None);
        assert_eq!(ino_of(u64::MAX - 2, 0), Some(u64::MAX));
        // The root keeps its number, whatever its nid.
        assert_eq!(ino_of(u64::MAX, u64::MAX), Some(ROOT_INO));
    }

    #[test]
    fn times_are_signed_seconds_and_never_panic() {
        assert_eq!(mtime_of(0, 0), UNIX_EPOCH);
        assert_eq!(
            mtime_of(1_700_000_000, 5),
            UNIX_EPOCH + Duration::new(1_700_000_000, 5)
        );
        // Nanoseconds beyond a second are read as the last nanosecond.
        assert_eq!(
            mtime_of(7, u32::MAX),
            UNIX_EPOCH + Duration::new(7, 999_999_999)
        );
        // 2^64 - 1 is one second before the epoch (a negative st_mtime cast to u64).
        assert_eq!(mtime_of(u64::MAX, 0), UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(
            mtime_of(u64::MAX, 250),
            UNIX_EPOCH - Duration::from_secs(1) + Duration::from_nanos(250)
        );
        // The largest and smallest signed seconds (on Linux, SystemTime holds both).
        assert_eq!(
            mtime_of(i64::MAX as u64, 999_999_999),
            UNIX_EPOCH + Duration::new(i64::MAX as u64, 999_999_999)
        );
        assert_eq!(
            mtime_of(1 << 63, 0),
            UNIX_EPOCH - Duration::from_secs(1 << 63)
        );
        for secs in [1u64 << 63, (1 << 63) + 1, u64::MAX - 1, i64::MAX as u64] {
            for nsec in [0, 1, 999_999_999, 1_000_000_000, u32::MAX] {
                let _ = mtime_of(secs, nsec);
            }
        }
        assert_eq!(
            extreme(true),
            UNIX_EPOCH + Duration::from_secs(i64::MAX as u64)
        );
        assert_eq!(extreme(false), UNIX_EPOCH - Duration::from_secs(1 << 63));
    }
}
