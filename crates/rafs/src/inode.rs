//! On-disk inodes: the 32-byte compact and 64-byte extended EROFS forms, and where an inode's
//! xattrs, inline data and chunk indexes sit after it.

use crate::bytes::{slice, Le};
use crate::error::{RafsError, Result};
use crate::layout::inode::{self as disk, compact, extended};
use crate::layout::xattr;
use crate::superblock::SuperBlock;

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

    /// The file type an EROFS dirent code names (the inverse of [`FileType::dirent_code`]).
    pub fn from_dirent_code(code: u8) -> Option<Self> {
        [
            FileType::File,
            FileType::Dir,
            FileType::CharDev,
            FileType::BlockDev,
            FileType::Fifo,
            FileType::Socket,
            FileType::Symlink,
        ]
        .into_iter()
        .find(|t| t.dirent_code() == code)
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
        disk::decode_rdev(self.rdev).0
    }

    /// Device minor number (for char and block devices).
    pub fn rdev_minor(&self) -> u32 {
        disk::decode_rdev(self.rdev).1
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
        .checked_mul(disk::SLOT_SIZE)
        .and_then(|o| o.checked_add(sb.meta_offset))
        .filter(|o| o.saturating_add(disk::SLOT_SIZE) <= data.len() as u64);
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
    let head = Le(slice(data, offset, disk::COMPACT_SIZE, "inode")?);
    let format = head.u16(disk::I_FORMAT);
    let is_extended = format & disk::FORMAT_EXTENDED != 0;
    let layout_bits = disk::format_layout(format);
    if format & !disk::FORMAT_KNOWN_BITS != 0 {
        return Err(RafsError::corrupt(format!(
            "nid {nid}: unknown inode format bits {format:#x}"
        )));
    }
    match layout_bits {
        disk::FLAT_PLAIN | disk::FLAT_INLINE | disk::CHUNK_BASED => {}
        disk::COMPRESSED_FULL | disk::COMPRESSED_COMPACT => {
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
    let xattr_size = xattr::ibody_size(head.u16(disk::I_XATTR_ICOUNT));
    let mode = u32::from(head.u16(disk::I_MODE));
    let file_type = FileType::from_mode(mode).ok_or_else(|| {
        RafsError::corrupt(format!("nid {nid}: mode {mode:#o} has no valid file type"))
    })?;
    let mut inode = if is_extended {
        let e = Le(slice(data, offset, disk::EXTENDED_SIZE, "extended inode")?);
        Inode {
            nid,
            ino: e.u32(disk::I_INO),
            file_type,
            mode,
            uid: e.u32(extended::I_UID),
            gid: e.u32(extended::I_GID),
            size: e.u64(extended::I_SIZE),
            nlink: e.u32(extended::I_NLINK),
            mtime: e.u64(extended::I_MTIME),
            mtime_nsec: e.u32(extended::I_MTIME_NSEC),
            rdev: 0,
            offset,
            layout: layout_bits,
            union: e.u32(disk::I_U),
            inode_size: disk::EXTENDED_SIZE,
            xattr_size,
        }
    } else {
        Inode {
            nid,
            ino: head.u32(disk::I_INO),
            file_type,
            mode,
            uid: u32::from(head.u16(compact::I_UID)),
            gid: u32::from(head.u16(compact::I_GID)),
            size: u64::from(head.u32(compact::I_SIZE)),
            nlink: u32::from(head.u16(compact::I_NLINK)),
            mtime: sb.build_time,
            mtime_nsec: sb.build_time_nsec,
            rdev: 0,
            offset,
            layout: layout_bits,
            union: head.u32(disk::I_U),
            inode_size: disk::COMPACT_SIZE,
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
    if inode.file_type == FileType::File && inode.size > 0 && layout_bits != disk::CHUNK_BASED {
        return Err(RafsError::Unsupported(format!(
            "nid {nid}: regular file with data layout {layout_bits}; RAFS files are chunk-based"
        )));
    }
    Ok(inode)
}
