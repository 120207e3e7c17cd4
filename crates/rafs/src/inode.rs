//! On-disk inodes: the 32-byte compact and 64-byte extended EROFS forms, and where an inode's
//! xattrs, inline data and chunk indexes sit after it.

use crate::bytes::{slice, Le};
use crate::error::{RafsError, Result};
use crate::superblock::SuperBlock;

/// Size of an inode slot; nids count slots from the start of the metadata area.
pub const SLOT_SIZE: u64 = 32;

/// Data layouts of an EROFS inode (bits 1..4 of `i_format`).
pub(crate) mod layout {
    pub const FLAT_PLAIN: u16 = 0;
    pub const FLAT_INLINE: u16 = 2;
    pub const CHUNK_BASED: u16 = 4;
}

/// Kind of a filesystem object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Unix socket.
    Socket,
}

impl FileType {
    /// From the `S_IFMT` bits of a mode.
    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & 0o170000 {
            0o040000 => FileType::Dir,
            0o100000 => FileType::File,
            0o120000 => FileType::Symlink,
            0o010000 => FileType::Fifo,
            0o020000 => FileType::CharDev,
            0o060000 => FileType::BlockDev,
            0o140000 => FileType::Socket,
            _ => return None,
        })
    }

    /// The EROFS dirent file type code.
    pub fn dirent_code(self) -> u8 {
        match self {
            FileType::File => 1,
            FileType::Dir => 2,
            FileType::CharDev => 3,
            FileType::BlockDev => 4,
            FileType::Fifo => 5,
            FileType::Socket => 6,
            FileType::Symlink => 7,
        }
    }
}

/// Attributes of one inode, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Node id: the inode's slot number in the metadata area.
    pub nid: u64,
    /// Inode number recorded by the builder (unique per inode, shared by hard links).
    pub ino: u32,
    /// Kind of object.
    pub file_type: FileType,
    /// Full mode, type bits included.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (file data, directory blocks or symlink target).
    pub size: u64,
    /// Number of hard links.
    pub nlink: u32,
    /// Modification time, seconds.
    pub mtime: u64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Raw device number (new Linux encoding) for device inodes, else 0.
    pub rdev: u32,
    pub(crate) offset: u64,
    pub(crate) layout: u16,
    pub(crate) union: u32,
    pub(crate) inode_size: u64,
    pub(crate) xattr_size: u64,
}

impl Inode {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type == FileType::Dir
    }

    /// Device major number (for char and block devices).
    pub fn rdev_major(&self) -> u32 {
        (self.rdev >> 8) & 0xfff
    }

    /// Device minor number (for char and block devices).
    pub fn rdev_minor(&self) -> u32 {
        (self.rdev & 0xff) | ((self.rdev >> 12) & 0xfff00)
    }

    /// Byte offset just after the inode and its xattrs: where inline data begins.
    pub(crate) fn inline_offset(&self) -> u64 {
        self.offset + self.inode_size + self.xattr_size
    }

    /// Byte offset of the xattr area.
    pub(crate) fn xattr_offset(&self) -> u64 {
        self.offset + self.inode_size
    }
}

/// Byte offset of inode `nid`, checked against the data size.
pub(crate) fn inode_offset(data: &[u8], sb: &SuperBlock, nid: u64) -> Result<u64> {
    let off = nid
        .checked_mul(SLOT_SIZE)
        .and_then(|o| o.checked_add(sb.meta_offset))
        .filter(|o| o.saturating_add(SLOT_SIZE) <= data.len() as u64);
    off.ok_or_else(|| {
        RafsError::corrupt(format!(
            "nid {nid} is out of range: the {}-byte bootstrap holds no inode there",
            data.len()
        ))
    })
}

/// Parse inode `nid`.
pub(crate) fn parse_inode(data: &[u8], sb: &SuperBlock, nid: u64) -> Result<Inode> {
    let offset = inode_offset(data, sb, nid)?;
    let head = Le(slice(data, offset, 32, "inode")?);
    let format = head.u16(0);
    let extended = format & 1 == 1;
    let layout_bits = (format >> 1) & 0x7;
    if format >> 4 != 0 {
        return Err(RafsError::corrupt(format!(
            "nid {nid}: unknown inode format bits {format:#x}"
        )));
    }
    match layout_bits {
        layout::FLAT_PLAIN | layout::FLAT_INLINE | layout::CHUNK_BASED => {}
        1 | 3 => {
            return Err(RafsError::Unsupported(format!(
                "nid {nid}: EROFS compressed inode layout {layout_bits}"
            )))
        }
        other => {
            return Err(RafsError::corrupt(format!(
                "nid {nid}: unknown inode data layout {other}"
            )))
        }
    }
    let xattr_icount = u64::from(head.u16(2));
    let xattr_size = if xattr_icount == 0 {
        0
    } else {
        12 + (xattr_icount - 1) * 4
    };
    let mode = u32::from(head.u16(4));
    let file_type = FileType::from_mode(mode).ok_or_else(|| {
        RafsError::corrupt(format!("nid {nid}: mode {mode:#o} has no valid file type"))
    })?;
    let mut inode = if extended {
        let e = Le(slice(data, offset, 64, "extended inode")?);
        Inode {
            nid,
            ino: e.u32(20),
            file_type,
            mode,
            uid: e.u32(24),
            gid: e.u32(28),
            size: e.u64(8),
            nlink: e.u32(44),
            mtime: e.u64(32),
            mtime_nsec: e.u32(40),
            rdev: 0,
            offset,
            layout: layout_bits,
            union: e.u32(16),
            inode_size: 64,
            xattr_size,
        }
    } else {
        Inode {
            nid,
            ino: head.u32(20),
            file_type,
            mode,
            uid: u32::from(head.u16(24)),
            gid: u32::from(head.u16(26)),
            size: u64::from(head.u32(8)),
            nlink: u32::from(head.u16(6)),
            mtime: sb.build_time,
            mtime_nsec: sb.build_time_nsec,
            rdev: 0,
            offset,
            layout: layout_bits,
            union: head.u32(16),
            inode_size: 32,
            xattr_size,
        }
    };
    if matches!(file_type, FileType::CharDev | FileType::BlockDev) {
        inode.rdev = inode.union;
    }
    // The inode and its xattrs must be inside the data.
    slice(
        data,
        offset,
        inode.inode_size + inode.xattr_size,
        "inode with xattrs",
    )?;
    if inode.file_type == FileType::File && inode.size > 0 && layout_bits != layout::CHUNK_BASED {
        return Err(RafsError::Unsupported(format!(
            "nid {nid}: regular file with data layout {layout_bits}; RAFS files are chunk-based"
        )));
    }
    Ok(inode)
}
