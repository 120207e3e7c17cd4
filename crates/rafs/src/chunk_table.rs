//! The bootstrap's chunk table: one 80-byte record per chunk the image uses (digest, blob,
//! stored and uncompressed location and size, flags), and the index from an inode's chunk
//! address (blob, chunk number in that blob) to its record.

use dfagent_core::{ChunkDigest, Compression, DigestAlgo};

use crate::bytes::{slice, Le};
use crate::error::{RafsError, Result};
use crate::layout::chunk_record as rec;
use crate::superblock::SuperBlock;

/// One record of the chunk table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRecord {
    /// Position in the chunk table.
    pub table_index: u32,
    /// Digest of the uncompressed chunk.
    pub digest: ChunkDigest,
    /// Index of the blob in the blob table.
    pub blob_index: u32,
    /// Flag bits, see [`crate::chunk_flags`].
    pub flags: u32,
    /// Stored size in the blob.
    pub compressed_size: u32,
    /// Uncompressed size.
    pub uncompressed_size: u32,
    /// Offset of the stored chunk in the blob.
    pub compressed_offset: u64,
    /// Offset in the blob's uncompressed address space.
    pub uncompressed_offset: u64,
    /// Offset in the first file the builder cut it from.
    pub file_offset: u64,
    /// Chunk number within its blob (index into the blob's chunk-info array).
    pub blob_chunk_index: u32,
    /// crc32 of the chunk when [`crate::chunk_flags::HAS_CRC32`] is set.
    pub crc32: u32,
}

/// The largest stored size `compression` can give a chunk of `uncompressed` bytes: the
/// compressor's worst case (incompressible input), per its own bound formula. `None` stores the
/// bytes as they are. A chunk record claiming more is corrupt, and a tier must never be asked
/// for (or allocate) more.
///
/// - lz4 block: `LZ4_COMPRESSBOUND(n) = n + n / 255 + 16` (lz4.h).
/// - zstd frame: `ZSTD_COMPRESSBOUND(n) = n + n / 256 + (128 KiB - n) / 2048` for `n` below
///   128 KiB, else without the last term (zstd.h).
pub fn max_stored_size(compression: Compression, uncompressed: u32) -> u64 {
    let n = u64::from(uncompressed);
    match compression {
        Compression::None => n,
        Compression::Lz4Block => n + n / 255 + 16,
        Compression::Zstd => {
            const SMALL: u64 = 128 << 10;
            n + (n >> 8) + SMALL.saturating_sub(n) / 2048
        }
    }
}

/// Number of records in the chunk table.
pub(crate) fn record_count(sb: &SuperBlock) -> u64 {
    sb.chunk_table_size / rec::SIZE
}

/// Parse record `i` of the chunk table.
pub(crate) fn parse_record(
    data: &[u8],
    sb: &SuperBlock,
    algo: DigestAlgo,
    i: u64,
) -> Result<ChunkRecord> {
    if i >= record_count(sb) {
        return Err(RafsError::corrupt(format!(
            "chunk record {i} is beyond the {}-entry chunk table",
            record_count(sb)
        )));
    }
    let r = Le(slice(
        data,
        sb.chunk_table_offset + i * rec::SIZE,
        rec::SIZE,
        "chunk record",
    )?);
    Ok(ChunkRecord {
        table_index: i as u32,
        digest: ChunkDigest::new(algo, r.bytes::<32>(rec::DIGEST)),
        blob_index: r.u32(rec::BLOB_INDEX),
        flags: r.u32(rec::FLAGS),
        compressed_size: r.u32(rec::COMPRESSED_SIZE),
        uncompressed_size: r.u32(rec::UNCOMPRESSED_SIZE),
        compressed_offset: r.u64(rec::COMPRESSED_OFFSET),
        uncompressed_offset: r.u64(rec::UNCOMPRESSED_OFFSET),
        file_offset: r.u64(rec::FILE_OFFSET),
        blob_chunk_index: r.u32(rec::INDEX),
        crc32: r.u32(rec::CRC32),
    })
}

/// Key of a chunk address: blob index and chunk number within the blob.
pub(crate) fn key(blob_index: u32, blob_chunk_index: u32) -> u64 {
    (u64::from(blob_index) << 32) | u64::from(blob_chunk_index)
}

/// Sorted (key, record index) pairs for binary search, built on first use.
pub(crate) fn build_index(data: &[u8], sb: &SuperBlock) -> Result<Vec<(u64, u32)>> {
    let n = record_count(sb);
    let mut index = Vec::with_capacity(n as usize);
    for i in 0..n {
        let r = Le(slice(
            data,
            sb.chunk_table_offset + i * rec::SIZE,
            rec::SIZE,
            "chunk record",
        )?);
        index.push((key(r.u32(rec::BLOB_INDEX), r.u32(rec::INDEX)), i as u32));
    }
    index.sort_unstable();
    // The same chunk address twice keeps the first record: both describe the same bytes.
    index.dedup_by_key(|e| e.0);
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes around the formulas' edges and the chunk sizes images use.
    const SIZES: [u32; 12] = [
        1,
        255,
        256,
        4096,
        65535,
        (128 << 10) - 1,
        128 << 10,
        (128 << 10) + 1,
        1 << 20,
        (1 << 20) + 7,
        16 << 20,
        u32::MAX,
    ];

    #[test]
    fn the_zstd_bound_is_zstds_own() {
        for n in SIZES {
            assert_eq!(
                max_stored_size(Compression::Zstd, n),
                zstd::zstd_safe::compress_bound(n as usize) as u64,
                "zstd bound of {n}"
            );
        }
    }

    #[test]
    fn the_lz4_bound_follows_lz4_h() {
        assert_eq!(max_stored_size(Compression::Lz4Block, 1), 17);
        assert_eq!(max_stored_size(Compression::Lz4Block, 255), 272);
        assert_eq!(
            max_stored_size(Compression::Lz4Block, 1 << 20),
            (1 << 20) + 4112 + 16
        );
        assert_eq!(
            max_stored_size(Compression::Lz4Block, u32::MAX),
            u64::from(u32::MAX) + u64::from(u32::MAX) / 255 + 16
        );
        for n in SIZES {
            assert_eq!(max_stored_size(Compression::None, n), u64::from(n));
        }
    }

    /// Incompressible input (the worst case) compresses within the bound with both
    /// compressors the writers use.
    #[test]
    fn incompressible_chunks_fit_the_bound() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..(1 << 20) + 7)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for n in [1usize, 100, 4096, 70_000, (128 << 10) + 1, noise.len()] {
            let data = &noise[..n];
            let lz4 = lz4_flex::block::compress(data).len() as u64;
            assert!(
                lz4 <= max_stored_size(Compression::Lz4Block, n as u32),
                "lz4 {n}"
            );
            let z = zstd::bulk::compress(data, 3).unwrap().len() as u64;
            assert!(
                z <= max_stored_size(Compression::Zstd, n as u32),
                "zstd {n}"
            );
        }
    }
}
