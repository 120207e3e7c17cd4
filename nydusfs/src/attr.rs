//! Mapping between image inodes and what the kernel sees: inode numbers and `stat` attributes.

use std::time::{Duration, SystemTime};

use dfagent_rafs::{FileType, Inode};
use fuser::{FileAttr, INodeNo};

/// FUSE inode number of node `nid`: the root is always 1, every other node `nid + 2`.
pub(crate) fn ino_of(nid: u64, root: u64) -> INodeNo {
    if nid == root {
        INodeNo::ROOT
    } else {
        INodeNo(nid + 2)
    }
}

/// Node id behind FUSE inode number `ino`.
pub(crate) fn nid_of(ino: INodeNo, root: u64) -> Option<u64> {
    match ino.0 {
        1 => Some(root),
        0 => None,
        n => n.checked_sub(2).filter(|&nid| nid != root),
    }
}

pub(crate) fn kind(t: FileType) -> fuser::FileType {
    match t {
        FileType::Dir => fuser::FileType::Directory,
        FileType::File => fuser::FileType::RegularFile,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::CharDev => fuser::FileType::CharDevice,
        FileType::BlockDev => fuser::FileType::BlockDevice,
        FileType::Socket => fuser::FileType::Socket,
    }
}

/// `stat` attributes of `inode`.
pub(crate) fn file_attr(inode: &Inode, root: u64) -> FileAttr {
    let mtime =
        SystemTime::UNIX_EPOCH + Duration::new(inode.mtime, inode.mtime_nsec.min(999_999_999));
    FileAttr {
        ino: ino_of(inode.nid, root),
        size: inode.size,
        blocks: inode.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: kind(inode.file_type),
        perm: (inode.mode & 0o7777) as u16,
        nlink: inode.nlink.max(1),
        uid: inode.uid,
        gid: inode.gid,
        rdev: inode.rdev,
        blksize: 4096,
        flags: 0,
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
                    assert_ne!(ino_of(nid, root), INodeNo::ROOT);
                }
            }
            assert_eq!(nid_of(INodeNo(0), root), None);
            assert_eq!(nid_of(INodeNo(root + 2), root), None);
        }
    }
}
