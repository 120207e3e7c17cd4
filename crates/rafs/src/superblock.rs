//! The EROFS superblock at byte 1024 and the RAFS v6 extended superblock after it: block size,
//! root, metadata area, and where the blob, chunk and prefetch tables live.

use dfagent_core::{Compression, DigestAlgo};

use crate::bytes::{slice, Le};
use crate::error::{RafsError, Result};
use crate::layout::{
    blob_entry, chunk_addr, chunk_record, device_slot, ext_sb, is_valid_chunk_size, sb,
    super_flags as flags, BLOCK_BITS, PREFETCH_ENTRY_SIZE,
};

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
        if len >= 4 && Le(data).u32(0) == sb::RAFS_V5_MAGIC {
            return Err(RafsError::Unsupported(
                "RAFS v5 bootstrap; only RAFS v6 is supported (rebuild with nydus-image --fs-version 6)"
                    .into(),
            ));
        }
        let s = Le(
            slice(data, sb::OFFSET, sb::SIZE, "EROFS superblock").map_err(|_| {
                RafsError::NotRafs(format!(
                    "{len} bytes is too short to hold a superblock at offset {}",
                    sb::OFFSET
                ))
            })?,
        );
        let magic = s.u32(sb::MAGIC);
        if magic != sb::EROFS_MAGIC {
            return Err(RafsError::NotRafs(format!(
                "bad magic {magic:#010x} at offset {}, expected {:#010x}",
                sb::OFFSET,
                sb::EROFS_MAGIC
            )));
        }
        let compat = s.u32(sb::FEATURE_COMPAT);
        if compat & sb::COMPAT_RAFS_V6 == 0 {
            return Err(RafsError::NotRafs(
                "plain EROFS image without the RAFS v6 extension".into(),
            ));
        }
        let unknown_compat = compat & !(sb::COMPAT_RAFS_V6 | sb::COMPAT_SB_CHKSUM);
        let _ = unknown_compat; // compatible features may be ignored by definition
        let block_bits = s.u8(sb::BLKSZBITS);
        if block_bits != BLOCK_BITS {
            return Err(RafsError::Unsupported(format!(
                "block size 2^{block_bits}; only {}-byte blocks are supported",
                1u64 << BLOCK_BITS
            )));
        }
        let ext_slots = s.u8(sb::SB_EXTSLOTS);
        if ext_slots != 0 {
            return Err(RafsError::Unsupported(format!(
                "{ext_slots} extended superblock slots"
            )));
        }
        let incompat = s.u32(sb::FEATURE_INCOMPAT);
        let unknown = incompat & !(sb::INCOMPAT_CHUNKED_FILE | sb::INCOMPAT_DEVICE_TABLE);
        if unknown != 0 {
            return Err(RafsError::Unsupported(format!(
                "EROFS incompatible feature bits {unknown:#x} (compressed or otherwise non-RAFS EROFS layouts)"
            )));
        }
        let block_size = 1u64 << block_bits;
        let meta_offset = u64::from(s.u32(sb::META_BLKADDR)) * block_size;
        if meta_offset >= len {
            return Err(RafsError::corrupt(format!(
                "metadata area at {meta_offset} starts beyond the {len}-byte bootstrap"
            )));
        }
        // The field before the device count is a union (unused by RAFS).
        let extra_devices = s.u16(sb::EXTRA_DEVICES);
        let devtable_offset = u64::from(s.u16(sb::DEVT_SLOTOFF)) * device_slot::SIZE;

        let ext = Le(slice(
            data,
            ext_sb::OFFSET,
            ext_sb::SIZE,
            "RAFS v6 extended superblock",
        )?);
        let flags = ext.u64(ext_sb::FLAGS);
        let compression_bits = flags & flags::COMPRESSION_MASK;
        if compression_bits == flags::COMPRESSION_GZIP {
            return Err(RafsError::Unsupported("gzip-compressed chunks".into()));
        }
        let compression = flags::parse_compression(flags).ok_or_else(|| {
            RafsError::corrupt(format!(
                "superblock flags {flags:#x} name {} compression algorithms",
                if compression_bits == 0 {
                    "no"
                } else {
                    "several"
                }
            ))
        })?;
        let digest_algo = flags::parse_hash(flags).ok_or_else(|| {
            RafsError::corrupt(format!(
                "superblock flags {flags:#x} do not name exactly one digest algorithm"
            ))
        })?;
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
        let chunk_size = ext.u32(ext_sb::CHUNK_SIZE);
        if !is_valid_chunk_size(chunk_size) {
            return Err(RafsError::corrupt(format!(
                "chunk size {chunk_size} is not a power of two between 4 KiB and 16 MiB"
            )));
        }
        let parsed = SuperBlock {
            block_bits,
            root_nid: u64::from(s.u16(sb::ROOT_NID)),
            inodes: s.u64(sb::INOS),
            build_time: s.u64(sb::BUILD_TIME),
            build_time_nsec: s.u32(sb::BUILD_TIME_NSEC),
            blocks: s.u32(sb::BLOCKS),
            meta_offset,
            xattr_offset: u64::from(s.u32(sb::XATTR_BLKADDR)) * block_size,
            extra_devices,
            devtable_offset,
            flags,
            compression,
            digest_algo,
            chunk_size,
            blob_table_offset: ext.u64(ext_sb::BLOB_TABLE_OFFSET),
            blob_table_size: u64::from(ext.u32(ext_sb::BLOB_TABLE_SIZE)),
            chunk_table_offset: ext.u64(ext_sb::CHUNK_TABLE_OFFSET),
            chunk_table_size: ext.u64(ext_sb::CHUNK_TABLE_SIZE),
            prefetch_table_offset: ext.u64(ext_sb::PREFETCH_TABLE_OFFSET),
            prefetch_table_size: u64::from(ext.u32(ext_sb::PREFETCH_TABLE_SIZE)),
        };
        parsed.check_tables(len)?;
        Ok(parsed)
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
            blob_entry::SIZE,
        )?;
        let blobs = self.blob_table_size / blob_entry::SIZE;
        if blobs > chunk_addr::MAX_BLOBS {
            return Err(RafsError::corrupt(format!(
                "blob table holds {blobs} entries; at most {} are addressable",
                chunk_addr::MAX_BLOBS
            )));
        }
        table(
            "chunk table",
            self.chunk_table_offset,
            self.chunk_table_size,
            chunk_record::SIZE,
        )?;
        table(
            "prefetch table",
            self.prefetch_table_offset,
            self.prefetch_table_size,
            PREFETCH_ENTRY_SIZE,
        )?;
        table(
            "device table",
            self.devtable_offset,
            u64::from(self.extra_devices) * device_slot::SIZE,
            device_slot::SIZE,
        )?;
        if self.extra_devices > 0 && self.devtable_offset < ext_sb::END {
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
