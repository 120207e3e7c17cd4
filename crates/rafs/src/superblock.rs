//! The EROFS superblock at byte 1024 and the RAFS v6 extended superblock after it: block size,
//! root, metadata area, and where the blob, chunk and prefetch tables live.

use dfagent_core::{Compression, DigestAlgo, MAX_CHUNK_SIZE};

use crate::bytes::{slice, Le};
use crate::error::{RafsError, Result};

/// Offset of the EROFS superblock in a bootstrap.
pub const SUPER_OFFSET: u64 = 1024;
/// Size of the EROFS superblock.
pub const SUPER_SIZE: u64 = 128;
/// Size of the RAFS v6 extended superblock that follows it.
pub const EXT_SUPER_SIZE: u64 = 256;
/// EROFS magic number.
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// Magic of the older RAFS v5 format, at byte 0 (`RAFS` little-endian).
const RAFS_V5_MAGIC: u32 = 0x5241_4653;

/// Compatible feature: the extended RAFS v6 superblock is present.
pub const COMPAT_RAFS_V6: u32 = 0x4000_0000;
/// Compatible feature: superblock checksum (ignored, as upstream does).
const COMPAT_SB_CHKSUM: u32 = 0x0000_0001;
/// Incompatible feature: chunk-based files.
pub const INCOMPAT_CHUNKED_FILE: u32 = 0x0000_0004;
/// Incompatible feature: device table (one device per data blob).
pub const INCOMPAT_DEVICE_TABLE: u32 = 0x0000_0008;

/// RAFS superblock flag bits (extended superblock `s_flags`).
pub mod flags {
    /// Chunks are stored uncompressed.
    pub const COMPRESSION_NONE: u64 = 0x0000_0001;
    /// Chunks are compressed with lz4_block.
    pub const COMPRESSION_LZ4: u64 = 0x0000_0002;
    /// Chunk digests are BLAKE3.
    pub const HASH_BLAKE3: u64 = 0x0000_0004;
    /// Chunk digests are SHA-256.
    pub const HASH_SHA256: u64 = 0x0000_0008;
    /// Inodes carry explicit uid/gid.
    pub const EXPLICIT_UID_GID: u64 = 0x0000_0010;
    /// Some inodes have xattrs.
    pub const HAS_XATTR: u64 = 0x0000_0020;
    /// Chunks are compressed with gzip.
    pub const COMPRESSION_GZIP: u64 = 0x0000_0040;
    /// Chunks are compressed with zstd.
    pub const COMPRESSION_ZSTD: u64 = 0x0000_0080;
    /// Chunk digests are also inlined in the data blobs.
    pub const INLINED_CHUNK_DIGEST: u64 = 0x0000_0100;
    /// The data blobs are plain tar streams (tarfs mode).
    pub const TARFS_MODE: u64 = 0x0000_0200;
    /// No encryption.
    pub const ENCRYPTION_NONE: u64 = 0x0100_0000;
    /// Chunks are encrypted with AES-128-XTS.
    pub const ENCRYPTION_AES_128_XTS: u64 = 0x0200_0000;
}

/// Size of one blob table entry.
pub const BLOB_ENTRY_SIZE: u64 = 256;
/// Size of one chunk table record.
pub const CHUNK_RECORD_SIZE: u64 = 80;
/// Size of one device table slot.
pub const DEVICE_SLOT_SIZE: u64 = 128;

/// The parsed and validated superblocks.
#[derive(Clone, Debug)]
pub struct SuperBlock {
    /// log2 of the block size (12).
    pub block_bits: u8,
    /// Nid of the root directory.
    pub root_nid: u64,
    /// Number of inodes, as the builder counted them.
    pub inodes: u64,
    /// Build time recorded by the builder (seconds); compact inodes have no mtime of their own.
    pub build_time: u64,
    /// Nanoseconds of [`Self::build_time`].
    pub build_time_nsec: u32,
    /// Total blocks of the filesystem (for statfs).
    pub blocks: u32,
    /// Byte offset of the metadata (inode) area.
    pub meta_offset: u64,
    /// Byte offset of the shared xattr area.
    pub xattr_offset: u64,
    /// Number of extra devices (data blobs) in the device table.
    pub extra_devices: u16,
    /// Byte offset of the device table.
    pub devtable_offset: u64,
    /// RAFS flags.
    pub flags: u64,
    /// Image-wide compression of compressed chunks.
    pub compression: Compression,
    /// Image-wide chunk digest algorithm.
    pub digest_algo: DigestAlgo,
    /// Default chunk size.
    pub chunk_size: u32,
    /// Blob table location.
    pub blob_table_offset: u64,
    /// Blob table size in bytes.
    pub blob_table_size: u64,
    /// Chunk table location.
    pub chunk_table_offset: u64,
    /// Chunk table size in bytes.
    pub chunk_table_size: u64,
    /// Prefetch table location.
    pub prefetch_table_offset: u64,
    /// Prefetch table size in bytes.
    pub prefetch_table_size: u64,
}

impl SuperBlock {
    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        1 << self.block_bits
    }

    /// Parse and validate both superblocks of `data`.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let len = data.len() as u64;
        if len >= 4 && Le(data).u32(0) == RAFS_V5_MAGIC {
            return Err(RafsError::Unsupported(
                "RAFS v5 bootstrap; only RAFS v6 is supported (rebuild with nydus-image --fs-version 6)"
                    .into(),
            ));
        }
        let sb = Le(
            slice(data, SUPER_OFFSET, SUPER_SIZE, "EROFS superblock").map_err(|_| {
                RafsError::NotRafs(format!(
                    "{len} bytes is too short to hold a superblock at offset {SUPER_OFFSET}"
                ))
            })?,
        );
        let magic = sb.u32(0);
        if magic != EROFS_MAGIC {
            return Err(RafsError::NotRafs(format!(
                "bad magic {magic:#010x} at offset {SUPER_OFFSET}, expected {EROFS_MAGIC:#010x}"
            )));
        }
        let compat = sb.u32(8);
        if compat & COMPAT_RAFS_V6 == 0 {
            return Err(RafsError::NotRafs(
                "plain EROFS image without the RAFS v6 extension".into(),
            ));
        }
        let unknown_compat = compat & !(COMPAT_RAFS_V6 | COMPAT_SB_CHKSUM);
        let _ = unknown_compat; // compatible features may be ignored by definition
        let block_bits = sb.u8(12);
        if block_bits != 12 {
            return Err(RafsError::Unsupported(format!(
                "block size 2^{block_bits}; only 4096-byte blocks are supported"
            )));
        }
        let ext_slots = sb.u8(13);
        if ext_slots != 0 {
            return Err(RafsError::Unsupported(format!(
                "{ext_slots} extended superblock slots"
            )));
        }
        let incompat = sb.u32(80);
        let unknown = incompat & !(INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE);
        if unknown != 0 {
            return Err(RafsError::Unsupported(format!(
                "EROFS incompatible feature bits {unknown:#x} (compressed or otherwise non-RAFS EROFS layouts)"
            )));
        }
        let block_size = 1u64 << block_bits;
        let meta_offset = u64::from(sb.u32(40)) * block_size;
        if meta_offset >= len {
            return Err(RafsError::corrupt(format!(
                "metadata area at {meta_offset} starts beyond the {len}-byte bootstrap"
            )));
        }
        // +84 is a union field (unused by RAFS), +86 the device count, +88 the table's slot.
        let extra_devices = sb.u16(86);
        let devtable_offset = u64::from(sb.u16(88)) * DEVICE_SLOT_SIZE;

        let ext = Le(slice(
            data,
            SUPER_OFFSET + SUPER_SIZE,
            EXT_SUPER_SIZE,
            "RAFS v6 extended superblock",
        )?);
        let flags = ext.u64(0);
        let compression = match flags
            & (flags::COMPRESSION_NONE
                | flags::COMPRESSION_LZ4
                | flags::COMPRESSION_GZIP
                | flags::COMPRESSION_ZSTD)
        {
            flags::COMPRESSION_NONE => Compression::None,
            flags::COMPRESSION_LZ4 => Compression::Lz4Block,
            flags::COMPRESSION_ZSTD => Compression::Zstd,
            flags::COMPRESSION_GZIP => {
                return Err(RafsError::Unsupported("gzip-compressed chunks".into()))
            }
            other => {
                return Err(RafsError::corrupt(format!(
                    "superblock flags {flags:#x} name {} compression algorithms",
                    if other == 0 { "no" } else { "several" }
                )))
            }
        };
        let digest_algo = match flags & (flags::HASH_BLAKE3 | flags::HASH_SHA256) {
            flags::HASH_BLAKE3 => DigestAlgo::Blake3,
            flags::HASH_SHA256 => DigestAlgo::Sha256,
            _ => {
                return Err(RafsError::corrupt(format!(
                    "superblock flags {flags:#x} do not name exactly one digest algorithm"
                )))
            }
        };
        if flags & flags::ENCRYPTION_AES_128_XTS != 0 {
            return Err(RafsError::Unsupported(
                "encrypted image (AES-128-XTS)".into(),
            ));
        }
        if flags & flags::TARFS_MODE != 0 {
            return Err(RafsError::Unsupported(
                "tarfs mode (data blobs are plain tar streams)".into(),
            ));
        }
        let chunk_size = ext.u32(20);
        if !chunk_size.is_power_of_two() || !(4096..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(RafsError::corrupt(format!(
                "chunk size {chunk_size} is not a power of two between 4 KiB and 16 MiB"
            )));
        }
        let s = SuperBlock {
            block_bits,
            root_nid: u64::from(sb.u16(14)),
            inodes: sb.u64(16),
            build_time: sb.u64(24),
            build_time_nsec: sb.u32(32),
            blocks: sb.u32(36),
            meta_offset,
            xattr_offset: u64::from(sb.u32(44)) * block_size,
            extra_devices,
            devtable_offset,
            flags,
            compression,
            digest_algo,
            chunk_size,
            blob_table_offset: ext.u64(8),
            blob_table_size: u64::from(ext.u32(16)),
            chunk_table_offset: ext.u64(24),
            chunk_table_size: ext.u64(32),
            prefetch_table_offset: ext.u64(40),
            prefetch_table_size: u64::from(ext.u32(48)),
        };
        s.check_tables(len)?;
        Ok(s)
    }

    fn check_tables(&self, len: u64) -> Result<()> {
        let table = |name: &str, off: u64, size: u64, unit: u64| -> Result<()> {
            if !size.is_multiple_of(unit) {
                return Err(RafsError::corrupt(format!(
                    "{name} size {size} is not a multiple of its {unit}-byte entries"
                )));
            }
            slice_check(name, off, size, len)
        };
        table(
            "blob table",
            self.blob_table_offset,
            self.blob_table_size,
            BLOB_ENTRY_SIZE,
        )?;
        let blobs = self.blob_table_size / BLOB_ENTRY_SIZE;
        if blobs > 255 {
            return Err(RafsError::corrupt(format!(
                "blob table holds {blobs} entries; at most 255 are addressable"
            )));
        }
        table(
            "chunk table",
            self.chunk_table_offset,
            self.chunk_table_size,
            CHUNK_RECORD_SIZE,
        )?;
        table(
            "prefetch table",
            self.prefetch_table_offset,
            self.prefetch_table_size,
            4,
        )?;
        table(
            "device table",
            self.devtable_offset,
            u64::from(self.extra_devices) * DEVICE_SLOT_SIZE,
            DEVICE_SLOT_SIZE,
        )?;
        if self.extra_devices > 0
            && self.devtable_offset < SUPER_OFFSET + SUPER_SIZE + EXT_SUPER_SIZE
        {
            return Err(RafsError::corrupt(format!(
                "device table at {} overlaps the superblocks",
                self.devtable_offset
            )));
        }
        Ok(())
    }
}

fn slice_check(name: &str, off: u64, size: u64, len: u64) -> Result<()> {
    if size == 0 {
        return Ok(());
    }
    match off.checked_add(size) {
        Some(end) if end <= len => Ok(()),
        _ => Err(RafsError::Truncated {
            what: name.to_string(),
            offset: off,
            len: size,
            end: len,
        }),
    }
}
