//! The RAFS v6 on-disk format, written down once: where each structure of a bootstrap and of a
//! data blob's tail sits, how large it is, where each of its fields sits, and what its flag bits
//! and codes mean. The reader (`superblock.rs`, `inode.rs`, `dir.rs`, ...) and the writer
//! (`write/`) both take every offset, size and bit from here, as upstream nydus-image's builder
//! and nydusd share its `layout` module, so the two cannot drift apart. (Where the writer
//! *places* inodes and directory blocks is its own business: `write/placement.rs`.)
//!
//! Field offsets are byte positions within their record (`usize`, for indexing a record's
//! bytes); record sizes and positions in the file are `u64`, like every file offset. All
//! integers are little-endian. Compression ids are [`dfagent_core::Compression::rafs_id`].

use dfagent_core::{DigestAlgo, MAX_CHUNK_SIZE};

use crate::blob_meta::ChunkInfo;
use crate::bytes::Le;

/// log2 of the block size: RAFS v6 images use 4 KiB blocks only.
pub const BLOCK_BITS: u8 = 12;
/// Block size: unit of metadata addresses, and the alignment of chunks in a blob's uncompressed
/// address space (the blob feature [`blob_features::ALIGNED`]).
pub const BLOCK_SIZE: u64 = 1 << BLOCK_BITS;
/// Smallest chunk size: one block.
pub const MIN_CHUNK_SIZE: u32 = 1 << BLOCK_BITS;
/// Length of a blob id in the blob and device tables: the sha256 in hex, NUL-padded if shorter.
pub const BLOB_ID_LEN: usize = 64;
/// Size of one prefetch table entry (a `u32` nid).
pub const PREFETCH_ENTRY_SIZE: u64 = 4;

/// Every chunk digest algorithm, for parsing the codes below.
const DIGESTS: [DigestAlgo; 2] = [DigestAlgo::Blake3, DigestAlgo::Sha256];

/// Whether `size` can be an image's or a blob's chunk size: a power of two from one block to
/// [`MAX_CHUNK_SIZE`].
pub fn is_valid_chunk_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size)
}

/// The EROFS superblock (`struct erofs_super_block`) and its field offsets.
pub mod sb {
    /// Offset of the superblock in a bootstrap.
    pub const OFFSET: u64 = 1024;
    /// Size of the superblock.
    pub const SIZE: u64 = 128;
    /// EROFS magic number.
    pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
    /// Magic of the older RAFS v5 format, at byte 0 of its bootstraps (`RAFS` little-endian).
    pub const RAFS_V5_MAGIC: u32 = 0x5241_4653;

    /// Compatible feature: the RAFS v6 extended superblock follows.
    pub const COMPAT_RAFS_V6: u32 = 0x4000_0000;
    /// Compatible feature: superblock checksum (ignored, as upstream does).
    pub const COMPAT_SB_CHKSUM: u32 = 0x0000_0001;
    /// Incompatible feature: chunk-based files.
    pub const INCOMPAT_CHUNKED_FILE: u32 = 0x0000_0004;
    /// Incompatible feature: device table (one device per data blob).
    pub const INCOMPAT_DEVICE_TABLE: u32 = 0x0000_0008;

    /// `magic` (u32).
    pub const MAGIC: usize = 0;
    /// `feature_compat` (u32).
    pub const FEATURE_COMPAT: usize = 8;
    /// `blkszbits` (u8): log2 of the block size.
    pub const BLKSZBITS: usize = 12;
    /// `sb_extslots` (u8).
    pub const SB_EXTSLOTS: usize = 13;
    /// `root_nid` (u16).
    pub const ROOT_NID: usize = 14;
    /// `inos` (u64): number of inodes.
    pub const INOS: usize = 16;
    /// `build_time` (u64, seconds).
    pub const BUILD_TIME: usize = 24;
    /// `build_time_nsec` (u32).
    pub const BUILD_TIME_NSEC: usize = 32;
    /// `blocks` (u32): total blocks.
    pub const BLOCKS: usize = 36;
    /// `meta_blkaddr` (u32): block of the metadata (inode) area.
    pub const META_BLKADDR: usize = 40;
    /// `xattr_blkaddr` (u32): block of the shared xattr area.
    pub const XATTR_BLKADDR: usize = 44;
    /// `feature_incompat` (u32).
    pub const FEATURE_INCOMPAT: usize = 80;
    /// `extra_devices` (u16): number of device table slots.
    pub const EXTRA_DEVICES: usize = 86;
    /// `devt_slotoff` (u16): device table offset in slots.
    pub const DEVT_SLOTOFF: usize = 88;
}

/// The RAFS v6 extended superblock right after the EROFS one, and its field offsets.
pub mod ext_sb {
    /// Offset of the extended superblock.
    pub const OFFSET: u64 = super::sb::OFFSET + super::sb::SIZE;
    /// Size of the extended superblock.
    pub const SIZE: u64 = 256;
    /// End of both superblocks: nothing else may start before it.
    pub const END: u64 = OFFSET + SIZE;

    /// `s_flags` (u64), see [`super::super_flags`].
    pub const FLAGS: usize = 0;
    /// `s_blob_table_offset` (u64).
    pub const BLOB_TABLE_OFFSET: usize = 8;
    /// `s_blob_table_size` (u32).
    pub const BLOB_TABLE_SIZE: usize = 16;
    /// `s_chunk_size` (u32).
    pub const CHUNK_SIZE: usize = 20;
    /// `s_chunk_table_offset` (u64).
    pub const CHUNK_TABLE_OFFSET: usize = 24;
    /// `s_chunk_table_size` (u64).
    pub const CHUNK_TABLE_SIZE: usize = 32;
    /// `s_prefetch_table_offset` (u64).
    pub const PREFETCH_TABLE_OFFSET: usize = 40;
    /// `s_prefetch_table_size` (u32).
    pub const PREFETCH_TABLE_SIZE: usize = 48;
}

/// RAFS superblock flag bits (extended superblock `s_flags`).
pub mod super_flags {
    use dfagent_core::{Compression, DigestAlgo};

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

    /// Every compression bit; a valid image sets exactly one.
    pub const COMPRESSION_MASK: u64 =
        COMPRESSION_NONE | COMPRESSION_LZ4 | COMPRESSION_GZIP | COMPRESSION_ZSTD;
    /// Every digest bit; a valid image sets exactly one.
    pub const HASH_MASK: u64 = HASH_BLAKE3 | HASH_SHA256;

    /// The flag bit naming the image-wide compression `c`.
    pub fn compression(c: Compression) -> u64 {
        match c {
            Compression::None => COMPRESSION_NONE,
            Compression::Lz4Block => COMPRESSION_LZ4,
            Compression::Zstd => COMPRESSION_ZSTD,
        }
    }

    /// The flag bit naming the digest algorithm `d`.
    pub fn hash(d: DigestAlgo) -> u64 {
        match d {
            DigestAlgo::Blake3 => HASH_BLAKE3,
            DigestAlgo::Sha256 => HASH_SHA256,
        }
    }

    /// The image-wide compression `flags` name, if exactly one of those dfagent reads (gzip,
    /// none or several give `None`).
    pub fn parse_compression(flags: u64) -> Option<Compression> {
        Compression::ALL
            .into_iter()
            .find(|c| compression(*c) == flags & COMPRESSION_MASK)
    }

    /// The digest algorithm `flags` name, if exactly one.
    pub fn parse_hash(flags: u64) -> Option<DigestAlgo> {
        super::DIGESTS
            .into_iter()
            .find(|d| hash(*d) == flags & HASH_MASK)
    }
}

/// One slot of the EROFS device table (one per data blob, mirroring the blob table).
pub mod device_slot {
    /// Size of one slot; `devt_slotoff` counts in these.
    pub const SIZE: u64 = 128;
    /// `tag`: the blob id, [`super::BLOB_ID_LEN`] bytes.
    pub const BLOB_ID: usize = 0;
    /// `blocks` (u32): the blob's uncompressed size in blocks.
    pub const BLOCKS: usize = 64;
    /// `mapped_blkaddr` (u32): where the device is mapped in the flat block space.
    pub const MAPPED_BLKADDR: usize = 68;
}

/// One blob table entry (`RafsV6Blob`), 256 bytes per data blob.
pub mod blob_entry {
    use dfagent_core::DigestAlgo;

    /// Size of one entry.
    pub const SIZE: u64 = 256;
    /// `blob_id`: [`super::BLOB_ID_LEN`] bytes.
    pub const BLOB_ID: usize = 0;
    /// `blob_index` (u32): the entry's own position.
    pub const BLOB_INDEX: usize = 64;
    /// `chunk_size` (u32).
    pub const CHUNK_SIZE: usize = 68;
    /// `chunk_count` (u32).
    pub const CHUNK_COUNT: usize = 72;
    /// `compression_algo` (u32), a [`dfagent_core::Compression::rafs_id`].
    pub const COMPRESSOR: usize = 76;
    /// `digest_algo` (u32), see [`digest_id`].
    pub const DIGESTER: usize = 80;
    /// `features` (u32), see [`super::blob_features`].
    pub const FEATURES: usize = 84;
    /// `compressed_size` (u64).
    pub const COMPRESSED_SIZE: usize = 88;
    /// `uncompressed_size` (u64).
    pub const UNCOMPRESSED_SIZE: usize = 96;
    /// `blob_toc_size` (u32).
    pub const TOC_SIZE: usize = 104;
    /// `ci_compressor` (u32): compression id of the chunk-info array.
    pub const CI_COMPRESSOR: usize = 108;
    /// `ci_offset` (u64).
    pub const CI_OFFSET: usize = 112;
    /// `ci_compressed_size` (u64).
    pub const CI_COMPRESSED_SIZE: usize = 120;
    /// `ci_uncompressed_size` (u64).
    pub const CI_UNCOMPRESSED_SIZE: usize = 128;
    /// `blob_toc_digest` (32 bytes).
    pub const TOC_DIGEST: usize = 136;
    /// `cipher_algo` (u32): 0 is no encryption.
    pub const CIPHER: usize = 216;

    /// Numeric id of a digest algorithm in the entry's `digest_algo`.
    pub fn digest_id(d: DigestAlgo) -> u32 {
        match d {
            DigestAlgo::Blake3 => 0,
            DigestAlgo::Sha256 => 1,
        }
    }

    /// The digest algorithm numeric id `id` names, if any.
    pub fn digest_from_id(id: u32) -> Option<DigestAlgo> {
        super::DIGESTS.into_iter().find(|d| digest_id(*d) == id)
    }
}

/// Blob feature bits (blob table `features`, and the blob meta header's copy).
pub mod blob_features {
    /// Chunks are aligned in the uncompressed blob (always set for native RAFS v6 blobs).
    pub const ALIGNED: u32 = 0x0000_0001;
    /// The blob carries the bootstrap too.
    pub const INLINED_FS_META: u32 = 0x0000_0002;
    /// The chunk-info array uses the 24-byte v2 records.
    pub const CHUNK_INFO_V2: u32 = 0x0000_0004;
    /// The blob is a gzip stream indexed with zran (targz-ref).
    pub const ZRAN: u32 = 0x0000_0008;
    /// The blob meta lives in a separate file.
    pub const SEPARATE: u32 = 0x0000_0010;
    /// Chunk digests are inlined in the blob.
    pub const INLINED_CHUNK_DIGEST: u32 = 0x0000_0020;
    /// The blob is a plain tar stream (tarfs).
    pub const TARFS: u32 = 0x0000_0040;
    /// Small chunks are packed into batches.
    pub const BATCH: u32 = 0x0000_0080;
    /// Chunks are encrypted.
    pub const ENCRYPTED: u32 = 0x0000_0100;
    /// The blob was generated as a chunk dictionary.
    pub const IS_CHUNKDICT_GENERATED: u32 = 0x0000_0200;
    /// Chunk data lives in an external store.
    pub const EXTERNAL: u32 = 0x0000_0800;
    /// Each blob section is followed by a 512-byte tar header.
    pub const HAS_TAR_HEADER: u32 = 0x1000_0000;
    /// The blob ends with a table of contents.
    pub const HAS_TOC: u32 = 0x2000_0000;
    /// Written by builders that know the tar TOC layout (always set by current nydus-image).
    pub const CAP_TAR_TOC: u32 = 0x4000_0000;
}

/// One record of the bootstrap's chunk table (`RafsV5ChunkInfo`, shared by v6), 80 bytes.
pub mod chunk_record {
    /// Size of one record.
    pub const SIZE: u64 = 80;
    /// `block_id`: the chunk digest (32 bytes).
    pub const DIGEST: usize = 0;
    /// `blob_index` (u32).
    pub const BLOB_INDEX: usize = 32;
    /// `flags` (u32), see [`super::chunk_flags`].
    pub const FLAGS: usize = 36;
    /// `compressed_size` (u32).
    pub const COMPRESSED_SIZE: usize = 40;
    /// `uncompressed_size` (u32).
    pub const UNCOMPRESSED_SIZE: usize = 44;
    /// `compressed_offset` (u64).
    pub const COMPRESSED_OFFSET: usize = 48;
    /// `uncompressed_offset` (u64).
    pub const UNCOMPRESSED_OFFSET: usize = 56;
    /// `file_offset` (u64).
    pub const FILE_OFFSET: usize = 64;
    /// `index` (u32): chunk number within its blob.
    pub const INDEX: usize = 72;
    /// `crc32` (u32).
    pub const CRC32: usize = 76;
}

/// Chunk flag bits of a chunk record.
pub mod chunk_flags {
    /// Stored compressed with the blob's compressor (else stored raw).
    pub const COMPRESSED: u32 = 0x0000_0001;
    /// Legacy hole chunk.
    pub const HOLE: u32 = 0x0000_0002;
    /// Encrypted.
    pub const ENCRYPTED: u32 = 0x0000_0004;
    /// Packed into a batch with other small chunks.
    pub const BATCH: u32 = 0x0000_0008;
    /// The record carries a CRC32C of the uncompressed chunk.
    pub const HAS_CRC32: u32 = 0x0000_0010;
}

/// On-disk inodes: the 32-byte compact and 64-byte extended EROFS forms, their format word, data
/// layouts and field offsets.
pub mod inode {
    /// Size of an inode slot; nids count slots from the start of the metadata area, and inodes
    /// start at slot boundaries.
    pub const SLOT_SIZE: u64 = 32;
    /// Size of a compact inode.
    pub const COMPACT_SIZE: u64 = 32;
    /// Size of an extended inode.
    pub const EXTENDED_SIZE: u64 = 64;

    /// `i_format` bit 0: the inode is extended.
    pub const FORMAT_EXTENDED: u16 = 1;
    /// `i_format` bits 1..4 hold the data layout.
    const LAYOUT_SHIFT: u16 = 1;
    const LAYOUT_MASK: u16 = 0x7;
    /// `i_format` bits defined by EROFS (version and data layout); any other bit is corrupt.
    pub const FORMAT_KNOWN_BITS: u16 = 0xf;

    /// Data layout: full blocks at `i_u` (raw_blkaddr).
    pub const FLAT_PLAIN: u16 = 0;
    /// Data layout: EROFS compression, full clusters (not used by RAFS).
    pub const COMPRESSED_FULL: u16 = 1;
    /// Data layout: full blocks at `i_u`, the last partial block inline after the inode.
    pub const FLAT_INLINE: u16 = 2;
    /// Data layout: EROFS compression, compact indexes (not used by RAFS).
    pub const COMPRESSED_COMPACT: u16 = 3;
    /// Data layout: chunk-based file, chunk addresses after the inode.
    pub const CHUNK_BASED: u16 = 4;

    /// The data layout recorded in a format word.
    pub fn format_layout(format: u16) -> u16 {
        (format >> LAYOUT_SHIFT) & LAYOUT_MASK
    }

    /// Format word of an extended inode with data layout `layout`.
    pub fn extended_format(layout: u16) -> u16 {
        FORMAT_EXTENDED | (layout << LAYOUT_SHIFT)
    }

    /// Chunk format (`i_u` of a chunk-based file): the file has 8-byte chunk indexes.
    pub const CHUNK_FORMAT_INDEXES: u32 = 0x20;

    /// Chunk format of a file cut into chunks of `1 << chunk_bits` bytes: the chunk size is
    /// recorded relative to the block size. `chunk_bits` is at least [`super::BLOCK_BITS`].
    pub fn chunk_format(chunk_bits: u32) -> u32 {
        CHUNK_FORMAT_INDEXES | (chunk_bits - u32::from(super::BLOCK_BITS))
    }

    /// Largest device major number [`encode_rdev`] can hold (12 bits).
    pub const MAX_RDEV_MAJOR: u32 = 0xfff;
    /// Largest device minor number [`encode_rdev`] can hold (20 bits).
    pub const MAX_RDEV_MINOR: u32 = 0xf_ffff;

    /// Device number as the inode's `i_u` holds it (Linux' `new_encode_dev`).
    pub fn encode_rdev(major: u32, minor: u32) -> u32 {
        (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
    }

    /// Major and minor number of an encoded device number.
    pub fn decode_rdev(rdev: u32) -> (u32, u32) {
        (
            (rdev >> 8) & MAX_RDEV_MAJOR,
            (rdev & 0xff) | ((rdev >> 12) & (MAX_RDEV_MINOR & !0xff)),
        )
    }

    /// `i_format` (u16).
    pub const I_FORMAT: usize = 0;
    /// `i_xattr_icount` (u16), see [`super::xattr::ibody_size`].
    pub const I_XATTR_ICOUNT: usize = 2;
    /// `i_mode` (u16).
    pub const I_MODE: usize = 4;
    /// `i_u` (u32): raw block address, chunk format or device number.
    pub const I_U: usize = 16;
    /// `i_ino` (u32).
    pub const I_INO: usize = 20;

    /// Fields only a compact inode has where it has them.
    pub mod compact {
        /// `i_nlink` (u16).
        pub const I_NLINK: usize = 6;
        /// `i_size` (u32).
        pub const I_SIZE: usize = 8;
        /// `i_uid` (u16).
        pub const I_UID: usize = 24;
        /// `i_gid` (u16).
        pub const I_GID: usize = 26;
    }

    /// Fields only an extended inode has where it has them.
    pub mod extended {
        /// `i_size` (u64).
        pub const I_SIZE: usize = 8;
        /// `i_uid` (u32).
        pub const I_UID: usize = 24;
        /// `i_gid` (u32).
        pub const I_GID: usize = 28;
        /// `i_mtime` (u64).
        pub const I_MTIME: usize = 32;
        /// `i_mtime_nsec` (u32).
        pub const I_MTIME_NSEC: usize = 40;
        /// `i_nlink` (u32).
        pub const I_NLINK: usize = 44;
    }
}

/// Directory entries: 12-byte dirents at the start of each directory block, names after them.
pub mod dirent {
    /// Size of one dirent.
    pub const SIZE: usize = 12;
    /// Longest name an entry may have.
    pub const MAX_NAME_LEN: usize = 255;
    /// `nid` (u64).
    pub const NID: usize = 0;
    /// `nameoff` (u16): where the name starts in the block.
    pub const NAMEOFF: usize = 8;
    /// `file_type` (u8), see `FileType::dirent_code`.
    pub const FILE_TYPE: usize = 10;
}

/// Chunk addresses: the 8-byte entries after a chunk-based inode, one per chunk of the file.
pub mod chunk_addr {
    use crate::bytes::Le;

    /// Size of one chunk address.
    pub const SIZE: u64 = 8;
    /// The array starts at this alignment after the inode and its xattrs.
    pub const ALIGN: u64 = 8;
    /// Most chunks a blob can hold: an address keeps 24 bits of chunk number.
    pub const MAX_CHUNKS_PER_BLOB: u32 = 1 << 24;
    /// Most blobs addresses can name: the device byte holds blob index + 1.
    pub const MAX_BLOBS: u64 = u8::MAX as u64;

    /// One decoded chunk address.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ChunkAddr {
        /// Blob table index plus one (0 names no blob).
        pub device: u8,
        /// Chunk number within the blob (24 bits).
        pub index: u32,
        /// Block of the chunk in the blob's uncompressed address space.
        pub block_addr: u32,
    }

    impl ChunkAddr {
        /// The address of chunk `index` of blob `blob_index`, at uncompressed `block_addr`.
        /// `blob_index` must be below [`MAX_BLOBS`] and `index` below [`MAX_CHUNKS_PER_BLOB`].
        pub fn new(blob_index: u32, index: u32, block_addr: u32) -> Self {
            ChunkAddr {
                device: (blob_index + 1) as u8,
                index,
                block_addr,
            }
        }

        /// The 8 bytes on disk (EROFS `erofs_inode_chunk_index`): `u16` low 16 bits of the
        /// chunk number, `u16` device byte | high 8 bits of the chunk number << 8, `u32` block
        /// address.
        pub fn encode(&self) -> [u8; 8] {
            let lo = (self.index & 0xffff) as u16;
            let hi = u16::from(self.device) | ((((self.index >> 16) & 0xff) as u16) << 8);
            let mut b = [0u8; 8];
            b[0..2].copy_from_slice(&lo.to_le_bytes());
            b[2..4].copy_from_slice(&hi.to_le_bytes());
            b[4..8].copy_from_slice(&self.block_addr.to_le_bytes());
            b
        }

        /// Decode the first 8 bytes of `b` (the caller checked there are 8).
        pub fn decode(b: &[u8]) -> Self {
            let a = Le(b);
            let lo = a.u16(0);
            let hi = a.u16(2);
            ChunkAddr {
                device: (hi & 0xff) as u8,
                index: (u32::from(hi >> 8) << 16) | u32::from(lo),
                block_addr: a.u32(4),
            }
        }
    }
}

/// Xattr bodies: the 12-byte inline header after an inode, shared xattr ids, and entries
/// (name stored after its namespace index, value after it, padded to 4 bytes).
pub mod xattr {
    /// Size of the inline body header (`erofs_xattr_ibody_header`).
    pub const IBODY_HEADER_SIZE: usize = 12;
    /// `h_shared_count` (u8) in the header.
    pub const H_SHARED_COUNT: usize = 4;
    /// Size of one shared xattr id after the header, and the unit ids count the xattr area in.
    pub const SHARED_ID_SIZE: usize = 4;
    /// Size of an entry's header (`erofs_xattr_entry`).
    pub const ENTRY_HEADER_SIZE: usize = 4;
    /// `e_name_len` (u8).
    pub const E_NAME_LEN: usize = 0;
    /// `e_name_index` (u8).
    pub const E_NAME_INDEX: usize = 1;
    /// `e_value_size` (u16).
    pub const E_VALUE_SIZE: usize = 2;
    /// Entries (and the body) are padded to this.
    pub const ALIGN: usize = 4;
    /// A name index with this bit set refers to a long name prefix (not supported).
    pub const LONG_PREFIX_FLAG: u8 = 0x80;

    /// Name index of `user.`.
    pub const INDEX_USER: u8 = 1;
    /// Name index of the whole name `system.posix_acl_access`.
    pub const INDEX_POSIX_ACL_ACCESS: u8 = 2;
    /// Name index of the whole name `system.posix_acl_default`.
    pub const INDEX_POSIX_ACL_DEFAULT: u8 = 3;
    /// Name index of `trusted.`.
    pub const INDEX_TRUSTED: u8 = 4;
    /// Name index of `lustre.`.
    pub const INDEX_LUSTRE: u8 = 5;
    /// Name index of `security.`.
    pub const INDEX_SECURITY: u8 = 6;

    /// Every name index with a prefix and the prefix it stands for, by index (index 0 has none).
    pub const PREFIXES: [(u8, &[u8]); 6] = [
        (INDEX_USER, b"user."),
        (INDEX_POSIX_ACL_ACCESS, b"system.posix_acl_access"),
        (INDEX_POSIX_ACL_DEFAULT, b"system.posix_acl_default"),
        (INDEX_TRUSTED, b"trusted."),
        (INDEX_LUSTRE, b"lustre."),
        (INDEX_SECURITY, b"security."),
    ];

    /// The prefix name index `index` stands for (`Some(b"")` for index 0, no prefix).
    pub fn prefix(index: u8) -> Option<&'static [u8]> {
        if index == 0 {
            return Some(b"");
        }
        PREFIXES.iter().find(|(i, _)| *i == index).map(|(_, p)| *p)
    }

    /// Size of the inline xattr body of an inode whose `i_xattr_icount` is `icount`.
    pub fn ibody_size(icount: u16) -> u64 {
        match icount {
            0 => 0,
            n => (IBODY_HEADER_SIZE + (usize::from(n) - 1) * ALIGN) as u64,
        }
    }

    /// `i_xattr_icount` of an inline body of `size` bytes (0 or header plus 4-aligned entries);
    /// `None` when it does not fit 16 bits.
    pub fn icount(size: usize) -> Option<u16> {
        if size == 0 {
            return Some(0);
        }
        u16::try_from((size - IBODY_HEADER_SIZE) / ALIGN + 1).ok()
    }

    /// Bytes an entry with a stored name of `name_len` and a value of `value_len` bytes takes.
    pub fn entry_size(name_len: usize, value_len: usize) -> usize {
        (ENTRY_HEADER_SIZE + name_len + value_len).div_ceil(ALIGN) * ALIGN
    }
}

/// The 4 KiB blob meta header at the end of a native data blob, describing its chunk-info array.
pub mod blob_meta_header {
    /// Size of the header.
    pub const SIZE: u64 = 4096;
    /// Magic at both ends of the header.
    pub const META_MAGIC: u32 = 0xB10B_B10B;
    /// First magic (u32).
    pub const MAGIC: usize = 0;
    /// `s_features` (u32): the blob's features.
    pub const FEATURES: usize = 4;
    /// `s_ci_compressor` (u32): compression id of the array.
    pub const CI_COMPRESSOR: usize = 8;
    /// `s_ci_entries` (u32).
    pub const CI_ENTRIES: usize = 12;
    /// `s_ci_offset` (u64).
    pub const CI_OFFSET: usize = 16;
    /// `s_ci_compressed_size` (u64).
    pub const CI_COMPRESSED_SIZE: usize = 24;
    /// `s_ci_uncompressed_size` (u64).
    pub const CI_UNCOMPRESSED_SIZE: usize = 32;
    /// Second magic (u32), the header's last bytes.
    pub const MAGIC_END: usize = SIZE as usize - 4;
}

/// Records of a blob's chunk-info array: where each chunk sits, compressed and not.
pub mod chunk_info {
    use super::{blob_features, ChunkInfo, Le, BLOCK_SIZE};

    /// Size of a v1 record.
    pub const V1_SIZE: u64 = 16;
    /// Size of a v2 record (blob feature [`blob_features::CHUNK_INFO_V2`]).
    pub const V2_SIZE: u64 = 24;
    /// Largest compressed offset a v1 record holds (40 bits).
    pub const MAX_V1_COMPRESSED_OFFSET: u64 = (1 << 40) - 1;
    /// Largest uncompressed offset a v1 record holds (44 bits).
    pub const MAX_V1_UNCOMPRESSED_OFFSET: u64 = (1 << 44) - 1;
    /// Bits of a v1 record's first word holding the (block-aligned) uncompressed offset.
    const V1_UNCOMPRESSED_OFFSET_MASK: u64 = MAX_V1_UNCOMPRESSED_OFFSET & !(BLOCK_SIZE - 1);

    /// Record size of a blob with `features`.
    pub fn entry_size(features: u32) -> u64 {
        if features & blob_features::CHUNK_INFO_V2 != 0 {
            V2_SIZE
        } else {
            V1_SIZE
        }
    }

    /// A v1 record. Sizes are 1..=16 MiB, offsets within the limits above (the caller checked);
    /// `compressed` is not stored: v1 tells it from the sizes.
    pub fn encode_v1(c: &ChunkInfo) -> [u8; 16] {
        let d = u64::from(c.uncompressed_size - 1);
        let s = u64::from(c.compressed_size - 1);
        let u = (c.uncompressed_offset & V1_UNCOMPRESSED_OFFSET_MASK)
            | ((d & 0xf_ffff) << 44)
            | ((d >> 20) << 8);
        let k = (c.compressed_offset & MAX_V1_COMPRESSED_OFFSET)
            | ((s & 0xf_ffff) << 44)
            | ((s >> 20) << 40);
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&u.to_le_bytes());
        r[8..].copy_from_slice(&k.to_le_bytes());
        r
    }

    /// Decode a v1 record (`e` holds at least 16 bytes).
    pub fn decode_v1(e: &[u8]) -> ChunkInfo {
        let e = Le(e);
        let u = e.u64(0);
        let c = e.u64(8);
        let d_size = (((u >> 44) & 0xf_ffff) | (((u >> 8) & 0xf) << 20)) as u32 + 1;
        let c_size = (((c >> 44) & 0xf_ffff) | (((c >> 40) & 0xf) << 20)) as u32 + 1;
        ChunkInfo {
            uncompressed_offset: u & V1_UNCOMPRESSED_OFFSET_MASK,
            uncompressed_size: d_size,
            compressed_offset: c & MAX_V1_COMPRESSED_OFFSET,
            compressed_size: c_size,
            compressed: c_size != d_size,
        }
    }

    /// Decode a v2 record (`e` holds at least 24 bytes).
    pub fn decode_v2(e: &[u8]) -> ChunkInfo {
        let e = Le(e);
        let u = e.u64(0);
        let c = e.u64(8);
        ChunkInfo {
            uncompressed_offset: (u & 0xffff_ffff) << 12,
            uncompressed_size: ((u >> 32) & 0xff_ffff) as u32 + 1,
            compressed_offset: c & 0xff_ffff_ffff,
            compressed_size: (c >> 40) as u32,
            compressed: (u >> 56) & 1 != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use dfagent_core::{Compression, DigestAlgo};

    use super::*;

    #[test]
    fn chunk_addresses_round_trip() {
        let a = chunk_addr::ChunkAddr::new(253, 0xab_cdef, 0x1234_5678);
        let b = a.encode();
        assert_eq!(b, [0xef, 0xcd, 254, 0xab, 0x78, 0x56, 0x34, 0x12]);
        assert_eq!(chunk_addr::ChunkAddr::decode(&b), a);
    }

    #[test]
    fn v1_chunk_infos_round_trip() {
        for (cs, ds) in [(1, 1), (4096, 1 << 20), (MAX_CHUNK_SIZE, MAX_CHUNK_SIZE)] {
            let c = ChunkInfo {
                compressed_offset: chunk_info::MAX_V1_COMPRESSED_OFFSET,
                compressed_size: cs,
                uncompressed_offset: chunk_info::MAX_V1_UNCOMPRESSED_OFFSET & !(BLOCK_SIZE - 1),
                uncompressed_size: ds,
                compressed: cs != ds,
            };
            assert_eq!(chunk_info::decode_v1(&chunk_info::encode_v1(&c)), c);
        }
    }

    #[test]
    fn codes_round_trip() {
        for c in Compression::ALL {
            assert_eq!(
                super_flags::parse_compression(super_flags::compression(c)),
                Some(c)
            );
        }
        assert_eq!(
            super_flags::parse_compression(super_flags::COMPRESSION_GZIP),
            None
        );
        let both = super_flags::COMPRESSION_NONE | super_flags::COMPRESSION_ZSTD;
        assert_eq!(super_flags::parse_compression(both), None);
        for d in [DigestAlgo::Blake3, DigestAlgo::Sha256] {
            assert_eq!(super_flags::parse_hash(super_flags::hash(d)), Some(d));
            assert_eq!(
                blob_entry::digest_from_id(blob_entry::digest_id(d)),
                Some(d)
            );
        }
        assert_eq!(super_flags::parse_hash(super_flags::HASH_MASK), None);
        let (major, minor) = (inode::MAX_RDEV_MAJOR, inode::MAX_RDEV_MINOR);
        assert_eq!(
            inode::decode_rdev(inode::encode_rdev(major, minor)),
            (major, minor)
        );
        assert_eq!(inode::decode_rdev(inode::encode_rdev(8, 0x123)), (8, 0x123));
        for size in [0usize, 12, 16, 12 + 4 * 1000] {
            let icount = xattr::icount(size).unwrap();
            assert_eq!(xattr::ibody_size(icount), size as u64);
        }
        assert_eq!(xattr::prefix(0), Some(&b""[..]));
        assert_eq!(
            xattr::prefix(xattr::INDEX_SECURITY),
            Some(&b"security."[..])
        );
        assert_eq!(xattr::prefix(7), None);
        assert_eq!(inode::chunk_format(20), inode::CHUNK_FORMAT_INDEXES | 8);
        assert_eq!(
            inode::format_layout(inode::extended_format(inode::CHUNK_BASED)),
            inode::CHUNK_BASED
        );
    }
}
