//! The blob table (one 256-byte entry per data blob the image references) and the EROFS device
//! table that mirrors it.

use dfagent_core::{BlobId, Compression, CompressionIdError, DigestAlgo};

use crate::bytes::{slice, Le};
use crate::error::{RafsError, Result};
use crate::layout::{
    blob_entry as entry, blob_features as features, device_slot, is_valid_chunk_size, BLOB_ID_LEN,
};
use crate::superblock::SuperBlock;

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
    /// Feature bits, see [`crate::blob_features`].
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

/// The compression a numeric id of the blob table or a blob meta header names.
pub(crate) fn compression_from_id(id: u32, what: &str) -> Result<Compression> {
    Compression::from_rafs_id(id).map_err(|e| match e {
        CompressionIdError::Gzip => RafsError::Unsupported(format!("gzip compression of {what}")),
        CompressionIdError::Unknown(other) => {
            RafsError::corrupt(format!("unknown compression id {other} for {what}"))
        }
    })
}

/// Parse every entry of the blob table.
pub(crate) fn parse_blob_table(data: &[u8], sb: &SuperBlock) -> Result<Vec<BlobInfo>> {
    let count = sb.blob_table_size / entry::SIZE;
    let mut blobs = Vec::with_capacity(count as usize);
    for i in 0..count {
        let off = sb.blob_table_offset + i * entry::SIZE;
        let e = Le(slice(data, off, entry::SIZE, "blob table entry")?);
        let what = format!("blob table entry {i}");
        let id = parse_blob_id(&e.0[entry::BLOB_ID..entry::BLOB_ID + BLOB_ID_LEN], &what)?;
        let index = e.u32(entry::BLOB_INDEX);
        if u64::from(index) != i {
            return Err(RafsError::corrupt(format!(
                "{what} says it is entry {index}"
            )));
        }
        let chunk_size = e.u32(entry::CHUNK_SIZE);
        if !is_valid_chunk_size(chunk_size) {
            return Err(RafsError::corrupt(format!(
                "{what}: chunk size {chunk_size} is not a power of two between 4 KiB and 16 MiB"
            )));
        }
        let features = e.u32(entry::FEATURES);
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
        let cipher = e.u32(entry::CIPHER);
        if cipher != 0 {
            return Err(RafsError::Unsupported(format!(
                "{what} {id}: encrypted blob (cipher {cipher})"
            )));
        }
        let digester = e.u32(entry::DIGESTER);
        let digest_algo: DigestAlgo = entry::digest_from_id(digester).ok_or_else(|| {
            RafsError::corrupt(format!("{what}: unknown digest algorithm id {digester}"))
        })?;
        let compressed_size = e.u64(entry::COMPRESSED_SIZE);
        let ci_offset = e.u64(entry::CI_OFFSET);
        let ci_compressed_size = e.u64(entry::CI_COMPRESSED_SIZE);
        if ci_offset.checked_add(ci_compressed_size).is_none() {
            return Err(RafsError::corrupt(format!(
                "{what}: chunk-info array offset {ci_offset} + size {ci_compressed_size} overflows"
            )));
        }
        blobs.push(BlobInfo {
            index,
            id,
            chunk_size,
            chunk_count: e.u32(entry::CHUNK_COUNT),
            compression: compression_from_id(e.u32(entry::COMPRESSOR), &what)?,
            digest_algo,
            features,
            compressed_size,
            uncompressed_size: e.u64(entry::UNCOMPRESSED_SIZE),
            toc_size: e.u32(entry::TOC_SIZE),
            ci_compression: compression_from_id(
                e.u32(entry::CI_COMPRESSOR),
                &format!("{what} chunk-info array"),
            )?,
            ci_offset,
            ci_compressed_size,
            ci_uncompressed_size: e.u64(entry::CI_UNCOMPRESSED_SIZE),
            toc_digest: e.bytes::<32>(entry::TOC_DIGEST),
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
        let off = sb.devtable_offset + i as u64 * device_slot::SIZE;
        let slot = slice(data, off, device_slot::SIZE, "device table slot")?;
        let id = parse_blob_id(
            &slot[device_slot::BLOB_ID..device_slot::BLOB_ID + BLOB_ID_LEN],
            &format!("device slot {i}"),
        )?;
        if id != blob.id {
            return Err(RafsError::corrupt(format!(
                "device slot {i} names blob {id} but blob table entry {i} is {}",
                blob.id
            )));
        }
    }
    Ok(())
}
