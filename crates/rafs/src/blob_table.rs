//! The blob table (one 256-byte entry per data blob the image references) and the EROFS device
//! table that mirrors it.

use dfagent_core::{BlobId, Compression, DigestAlgo, MAX_CHUNK_SIZE};

use crate::bytes::{slice, Le};
use crate::error::{RafsError, Result};
use crate::superblock::{SuperBlock, BLOB_ENTRY_SIZE, DEVICE_SLOT_SIZE};

/// Blob feature bits (blob table `features`).
pub mod features {
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

/// One data blob the image references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// Position in the blob table (chunk records refer to blobs by it).
    pub index: u32,
    /// sha256 of the blob file.
    pub id: BlobId,
    /// Chunk size the blob was cut with.
    pub chunk_size: u32,
    /// Number of chunks in the blob.
    pub chunk_count: u32,
    /// Compression of compressed chunks in this blob.
    pub compression: Compression,
    /// Digest algorithm of its chunks.
    pub digest_algo: DigestAlgo,
    /// Feature bits, see [`features`].
    pub features: u32,
    /// Size the builder recorded for the blob: upstream nydus-image writes the whole blob file
    /// (chunk data, chunk-info array and header), although its field comment says data only.
    pub compressed_size: u64,
    /// Sum of the uncompressed (aligned) chunk sizes.
    pub uncompressed_size: u64,
    /// Offset of the chunk-info array in the blob.
    pub ci_offset: u64,
    /// Stored size of the chunk-info array.
    pub ci_compressed_size: u64,
    /// Size of the chunk-info array after decompression.
    pub ci_uncompressed_size: u64,
    /// Compression of the chunk-info array.
    pub ci_compression: Compression,
    /// Size of the blob's TOC section (0 when the TOC is found from the blob's tail).
    pub toc_size: u32,
    /// sha256 of the blob's TOC, all zero when unknown.
    pub toc_digest: [u8; 32],
}

/// Numeric compression ids of the blob table and blob meta header.
pub(crate) fn compression_from_id(id: u32, what: &str) -> Result<Compression> {
    match id {
        0 => Ok(Compression::None),
        1 => Ok(Compression::Lz4Block),
        3 => Ok(Compression::Zstd),
        2 => Err(RafsError::Unsupported(format!(
            "gzip compression of {what}"
        ))),
        other => Err(RafsError::corrupt(format!(
            "unknown compression id {other} for {what}"
        ))),
    }
}

/// Parse every entry of the blob table.
pub(crate) fn parse_blob_table(data: &[u8], sb: &SuperBlock) -> Result<Vec<BlobInfo>> {
    let count = sb.blob_table_size / BLOB_ENTRY_SIZE;
    let mut blobs = Vec::with_capacity(count as usize);
    for i in 0..count {
        let off = sb.blob_table_offset + i * BLOB_ENTRY_SIZE;
        let e = Le(slice(data, off, BLOB_ENTRY_SIZE, "blob table entry")?);
        let what = format!("blob table entry {i}");
        let id = parse_blob_id(&e.0[..64], &what)?;
        let index = e.u32(64);
        if u64::from(index) != i {
            return Err(RafsError::corrupt(format!(
                "{what} says it is entry {index}"
            )));
        }
        let chunk_size = e.u32(68);
        if !chunk_size.is_power_of_two() || !(4096..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(RafsError::corrupt(format!(
                "{what}: chunk size {chunk_size} is not a power of two between 4 KiB and 16 MiB"
            )));
        }
        let features = e.u32(84);
        for (bit, name) in [
            (features::ZRAN, "zran (targz-ref) blobs"),
            (features::BATCH, "batch chunks"),
            (features::ENCRYPTED, "encrypted blobs"),
            (features::EXTERNAL, "external blobs"),
            (features::TARFS, "tarfs blobs"),
        ] {
            if features & bit != 0 {
                return Err(RafsError::Unsupported(format!("{what} {}: {name}", id)));
            }
        }
        let cipher = e.u32(216);
        if cipher != 0 {
            return Err(RafsError::Unsupported(format!(
                "{what} {id}: encrypted blob (cipher {cipher})"
            )));
        }
        let digest_algo = match e.u32(80) {
            0 => DigestAlgo::Blake3,
            1 => DigestAlgo::Sha256,
            other => {
                return Err(RafsError::corrupt(format!(
                    "{what}: unknown digest algorithm id {other}"
                )))
            }
        };
        let compressed_size = e.u64(88);
        let ci_offset = e.u64(112);
        let ci_compressed_size = e.u64(120);
        if ci_offset.checked_add(ci_compressed_size).is_none() {
            return Err(RafsError::corrupt(format!(
                "{what}: chunk-info array offset {ci_offset} + size {ci_compressed_size} overflows"
            )));
        }
        blobs.push(BlobInfo {
            index,
            id,
            chunk_size,
            chunk_count: e.u32(72),
            compression: compression_from_id(e.u32(76), &what)?,
            digest_algo,
            features,
            compressed_size,
            uncompressed_size: e.u64(96),
            toc_size: e.u32(104),
            ci_compression: compression_from_id(e.u32(108), &format!("{what} chunk-info array"))?,
            ci_offset,
            ci_compressed_size,
            ci_uncompressed_size: e.u64(128),
            toc_digest: e.bytes::<32>(136),
        });
    }
    check_device_table(data, sb, &blobs)?;
    Ok(blobs)
}

fn parse_blob_id(raw: &[u8], what: &str) -> Result<BlobId> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = std::str::from_utf8(&raw[..end])
        .map_err(|_| RafsError::corrupt(format!("{what}: blob id is not text")))?;
    text.parse()
        .map_err(|e| RafsError::corrupt(format!("{what}: {e}")))
}

/// The device table must name the same blobs, in the same order, as the blob table.
fn check_device_table(data: &[u8], sb: &SuperBlock, blobs: &[BlobInfo]) -> Result<()> {
    if sb.extra_devices == 0 {
        return Ok(());
    }
    if usize::from(sb.extra_devices) != blobs.len() {
        return Err(RafsError::corrupt(format!(
            "device table has {} slots but the blob table {} entries",
            sb.extra_devices,
            blobs.len()
        )));
    }
    for (i, blob) in blobs.iter().enumerate() {
        let off = sb.devtable_offset + i as u64 * DEVICE_SLOT_SIZE;
        let slot = slice(data, off, DEVICE_SLOT_SIZE, "device table slot")?;
        let id = parse_blob_id(&slot[..64], &format!("device slot {i}"))?;
        if id != blob.id {
            return Err(RafsError::corrupt(format!(
                "device slot {i} names blob {id} but blob table entry {i} is {}",
                blob.id
            )));
        }
    }
    Ok(())
}
