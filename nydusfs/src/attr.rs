//! What the kernel sees of an image inode: its inode number and its `stat` attributes, in types
//! of our own (the FUSE adapter converts them to its crate's types).

use std::time::{Duration, SystemTime};

use dfagent_rafs::{FileType, Inode};

/// Inode number of the root directory, whatever the root's nid in the image.
pub const ROOT_INO: u64 = 1;

/// Inode number of node `nid`: the root is always [`ROOT_INO`], every other node `nid + 2`
/// (so no node collides with the root or with 0, which FUSE never uses).
pub(crate) fn ino_of(nid: u64, root: u64) -> u64 {
    if nid == root {
        ROOT_INO
    } else {
        nid + 2
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

/// `stat` attributes of an inode, as the filesystem reports them. An image has one timestamp
/// per inode, so `atime`, `ctime` and `crtime` are all [`Attr::mtime`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number (see [`ROOT_INO`]).
    pub ino: u64,
    /// Size in bytes.
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
    /// Attributes of `inode` of an image whose root is node `root`.
    pub(crate) fn of(inode: &Inode, root: u64) -> Self {
        let mtime =
            SystemTime::UNIX_EPOCH + Duration::new(inode.mtime, inode.mtime_nsec.min(999_999_999));
        Attr {
            ino: ino_of(inode.nid, root),
            size: inode.size,
            blocks: inode.size.div_ceil(512),
            mtime,
            kind: inode.file_type,
            perm: (inode.mode & 0o7777) as u16,
            nlink: inode.nlink.max(1),
            uid: inode.uid,
            gid: inode.gid,
            rdev: inode.rdev,
            blksize: 4096,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_round_trip() {
        for root in [0u64, 5, 128] {
            assert_eq!(nid_of(ino_of(root, root), root), Some(root));
            for nid in [0u64, 1, 7, 129, 1 << 40] {
                if nid != root {
                    assert_eq!(nid_of(ino_of(nid, root), root), Some(nid));
                    assert_ne!(ino_of(nid, root), ROOT_INO);
                }
            }
            assert_eq!(nid_of(0, root), None);
            assert_eq!(nid_of(root + 2, root), None);
        }
    }
}
