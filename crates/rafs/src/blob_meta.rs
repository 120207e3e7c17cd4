//! What a data blob carries after its chunks: the chunk-info array (where each chunk sits,
//! compressed and not), its 4 KiB header, and, in blobs built the nydusify way, a table of
//! contents in "reverse tar" form (each section followed by a 512-byte tar header, the TOC last).
//!
//! These functions parse bytes the caller read from the blob; they do no I/O.

use dfagent_core::{decompress, Compression};

use crate::blob_table::{compression_from_id, BlobInfo};
use crate::bytes::Le;
use crate::error::{RafsError, Result};
use crate::layout::blob_meta_header as hdr_at;
use crate::layout::chunk_info;

/// Magic at both ends of the blob meta header.
pub use crate::layout::blob_meta_header::META_MAGIC;
/// Size of the blob meta header.
pub use crate::layout::blob_meta_header::SIZE as META_HEADER_SIZE;
/// Size of a tar header.
pub const TAR_HEADER_SIZE: u64 = 512;
/// Size of one TOC entry.
pub const TOC_ENTRY_SIZE: u64 = 128;
/// Largest TOC accepted.
pub const MAX_TOC_SIZE: u64 = 0x10000;
/// Largest chunk-info array accepted after decompression (64 MiB: millions of chunks).
pub const MAX_CHUNK_INFO_SIZE: u64 = 64 << 20;

/// The 4 KiB header describing a blob's chunk-info array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMetaHeader {
    /// Blob feature bits as the blob itself records them.
    pub features: u32,
    /// Compression of the chunk-info array.
    pub ci_compression: Compression,
    /// Number of entries.
    pub ci_entries: u32,
    /// Offset of the stored array in the blob.
    pub ci_offset: u64,
    /// Stored size of the array.
    pub ci_compressed_size: u64,
    /// Size after decompression.
    pub ci_uncompressed_size: u64,
}

/// Where a blob's chunk-info array and header sit: `(offset, length)` per the blob table.
pub fn meta_range(blob: &BlobInfo) -> Option<(u64, u64)> {
    let len = blob.ci_compressed_size.checked_add(META_HEADER_SIZE)?;
    blob.ci_offset.checked_add(len)?;
    Some((blob.ci_offset, len))
}

impl BlobMetaHeader {
    /// Parse a header and check it agrees with the blob table entry.
    pub fn parse(bytes: &[u8], blob: &BlobInfo) -> Result<Self> {
        let what = format!("blob {} meta header", blob.id);
        if bytes.len() as u64 != META_HEADER_SIZE {
            return Err(RafsError::corrupt(format!(
                "{what}: {} bytes, expected {META_HEADER_SIZE}",
                bytes.len()
            )));
        }
        let h = Le(bytes);
        if h.u32(hdr_at::MAGIC) != META_MAGIC || h.u32(hdr_at::MAGIC_END) != META_MAGIC {
            return Err(RafsError::corrupt(format!("{what}: bad magic")));
        }
        let hdr = BlobMetaHeader {
            features: h.u32(hdr_at::FEATURES),
            ci_compression: compression_from_id(h.u32(hdr_at::CI_COMPRESSOR), &what)?,
            ci_entries: h.u32(hdr_at::CI_ENTRIES),
            ci_offset: h.u64(hdr_at::CI_OFFSET),
            ci_compressed_size: h.u64(hdr_at::CI_COMPRESSED_SIZE),
            ci_uncompressed_size: h.u64(hdr_at::CI_UNCOMPRESSED_SIZE),
        };
        if hdr.ci_offset != blob.ci_offset
            || hdr.ci_compressed_size != blob.ci_compressed_size
            || hdr.ci_uncompressed_size != blob.ci_uncompressed_size
            || hdr.ci_compression != blob.ci_compression
        {
            return Err(RafsError::corrupt(format!(
                "{what} disagrees with the bootstrap's blob table about the chunk-info array"
            )));
        }
        if hdr.ci_entries != blob.chunk_count {
            return Err(RafsError::corrupt(format!(
                "{what}: {} chunk-info entries, the blob table says {} chunks",
                hdr.ci_entries, blob.chunk_count
            )));
        }
        Ok(hdr)
    }
}

/// Location and size of one chunk as the blob's chunk-info array records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Offset of the stored chunk.
    pub compressed_offset: u64,
    /// Stored size.
    pub compressed_size: u32,
    /// Offset in the uncompressed address space.
    pub uncompressed_offset: u64,
    /// Uncompressed size.
    pub uncompressed_size: u32,
    /// Whether the chunk is stored compressed.
    pub compressed: bool,
}

/// Decompress and decode a chunk-info array (`stored` is the array as it sits in the blob).
pub fn parse_chunk_infos(hdr: &BlobMetaHeader, stored: &[u8]) -> Result<Vec<ChunkInfo>> {
    let entry = chunk_info::entry_size(hdr.features);
    let want = u64::from(hdr.ci_entries) * entry;
    if hdr.ci_uncompressed_size != want || want > MAX_CHUNK_INFO_SIZE {
        return Err(RafsError::corrupt(format!(
            "chunk-info array of {} entries cannot be {} bytes (limit {MAX_CHUNK_INFO_SIZE})",
            hdr.ci_entries, hdr.ci_uncompressed_size
        )));
    }
    let raw = decompress(hdr.ci_compression, stored, want as usize)
        .map_err(|e| RafsError::corrupt(format!("chunk-info array: {e}")))?;
    let decode = if entry == chunk_info::V2_SIZE {
        chunk_info::decode_v2
    } else {
        chunk_info::decode_v1
    };
    Ok(raw.chunks_exact(entry as usize).map(decode).collect())
}

/// One entry of a blob's table of contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocEntry {
    /// Section name (`image.blob`, `blob.meta`, `blob.meta.header`, `blob.digest`, `image.boot`).
    pub name: String,
    /// sha256 of the section's uncompressed bytes.
    pub sha256: [u8; 32],
    /// Offset of the section in the blob.
    pub compressed_offset: u64,
    /// Stored size.
    pub compressed_size: u64,
    /// Size after decompression.
    pub uncompressed_size: u64,
    /// Compression of the section.
    pub compression: Compression,
}

fn octal(field: &[u8]) -> Option<u64> {
    let s: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0 && b != b' ')
        .skip_while(|&b| b == b' ')
        .collect();
    let s = std::str::from_utf8(&s).ok()?;
    u64::from_str_radix(s, 8).ok()
}

/// Parse a 512-byte tar header into (name, size), checking its checksum.
pub fn parse_tar_header(h: &[u8]) -> Result<(String, u64)> {
    if h.len() as u64 != TAR_HEADER_SIZE {
        return Err(RafsError::corrupt("tar header is not 512 bytes"));
    }
    let want = octal(&h[148..156])
        .ok_or_else(|| RafsError::corrupt("tar header checksum is not octal"))?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    if sum != want {
        return Err(RafsError::corrupt(format!(
            "tar header checksum {want} does not match its bytes ({sum})"
        )));
    }
    let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
    let name = String::from_utf8_lossy(&h[..name_end]).into_owned();
    let size =
        octal(&h[124..136]).ok_or_else(|| RafsError::corrupt("tar header size is not octal"))?;
    Ok((name, size))
}

/// Where the TOC entries sit, given the blob's last 512 bytes and its size: `(offset, length)`,
/// or `None` when the blob does not end with a TOC.
pub fn toc_location(last_tar_header: &[u8], blob_size: u64) -> Result<Option<(u64, u64)>> {
    let (name, size) = parse_tar_header(last_tar_header)?;
    if name != "rafs.blob.toc" {
        return Ok(None);
    }
    if !size.is_multiple_of(TOC_ENTRY_SIZE) || size == 0 || size > MAX_TOC_SIZE {
        return Err(RafsError::corrupt(format!("TOC size {size} is invalid")));
    }
    let start = blob_size
        .checked_sub(TAR_HEADER_SIZE + size)
        .ok_or_else(|| RafsError::corrupt("TOC is larger than its blob"))?;
    Ok(Some((start, size)))
}

/// Parse TOC entries, checking each section lies inside a blob of `blob_size` bytes.
pub fn parse_toc(bytes: &[u8], blob_size: u64) -> Result<Vec<TocEntry>> {
    if !(bytes.len() as u64).is_multiple_of(TOC_ENTRY_SIZE) || bytes.len() as u64 > MAX_TOC_SIZE {
        return Err(RafsError::corrupt(format!("TOC of {} bytes", bytes.len())));
    }
    bytes
        .chunks_exact(TOC_ENTRY_SIZE as usize)
        .enumerate()
        .map(|(i, e)| {
            let e = Le(e);
            let raw_name = &e.0[8..24];
            let end = raw_name.iter().position(|&b| b == 0).unwrap_or(16);
            let name = String::from_utf8_lossy(&raw_name[..end]).into_owned();
            let compression = match e.u32(0) & 0xf {
                0x1 => Compression::None,
                0x2 => Compression::Zstd,
                0x4 => Compression::Lz4Block,
                f => {
                    return Err(RafsError::corrupt(format!(
                        "TOC entry {i} ({name}) has compression flags {f:#x}"
                    )))
                }
            };
            let entry = TocEntry {
                name,
                sha256: e.bytes::<32>(24),
                compressed_offset: e.u64(56),
                compressed_size: e.u64(64),
                uncompressed_size: e.u64(72),
                compression,
            };
            match entry.compressed_offset.checked_add(entry.compressed_size) {
                Some(end) if end <= blob_size => Ok(entry),
                _ => Err(RafsError::corrupt(format!(
                    "TOC entry {i} ({}) lies beyond the {blob_size}-byte blob",
                    entry.name
                ))),
            }
        })
        .collect()
}
