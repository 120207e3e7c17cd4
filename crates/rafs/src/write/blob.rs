//! Native RAFS v6 data blobs, as upstream nydus-image writes them for `dir-rafs` builds:
//!
//! ```text
//! chunk data (stored chunks back to back)
//! chunk-info array (16-byte v1 records; compressed with the blob's compressor when that pays)
//! 4 KiB blob meta header (magic, features, array location, magic)
//! ```
//!
//! Each chunk's uncompressed offset is aligned to 4 KiB (the ALIGNED feature), so the blob's
//! uncompressed address space maps onto EROFS blocks. The blob id is the sha256 of the file.

use std::io::Write;

use dfagent_core::{encode_chunk, BlobId, ChunkDigest, Compression, DigestAlgo, MAX_CHUNK_SIZE};
use sha2::Digest as _;

use super::{BlobSpec, ChunkPlacement};
use crate::blob_meta::ChunkInfo;
use crate::layout::blob_meta_header as header;
use crate::layout::chunk_addr::MAX_CHUNKS_PER_BLOB;
use crate::layout::chunk_info::{
    self, MAX_V1_COMPRESSED_OFFSET as MAX_C_OFFSET, MAX_V1_UNCOMPRESSED_OFFSET as MAX_U_OFFSET,
};
use crate::layout::{blob_features as features, BLOCK_SIZE};

/// Features of a native blob, as upstream sets them in the header and the blob table.
const NATIVE_FEATURES: u32 = features::ALIGNED | features::CAP_TAR_TOC;

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// One v1 chunk-info record.
fn chunk_info(c: &ChunkPlacement) -> [u8; 16] {
    chunk_info::encode_v1(&ChunkInfo {
        compressed_offset: c.compressed_offset,
        compressed_size: c.compressed_size,
        uncompressed_offset: c.uncompressed_offset,
        uncompressed_size: c.uncompressed_size,
        compressed: c.compressed,
    })
}

/// Appends chunks to one data blob and writes the blob's chunk-info array and 4 KiB meta header
/// at its tail as upstream nydus-image does; hashes the whole file with sha256 as it goes.
pub struct BlobWriter<W: Write> {
    out: W,
    hash: sha2::Sha256,
    chunk_size: u32,
    compression: Compression,
    digest_algo: DigestAlgo,
    chunks: Vec<ChunkPlacement>,
    written: u64,
    uncompressed_end: u64,
}

impl<W: Write> BlobWriter<W> {
    /// A writer of a blob of chunks of (at most) `chunk_size` bytes, compressed ones compressed
    /// with `compression`, digested with `digest_algo`.
    pub fn new(out: W, chunk_size: u32, compression: Compression, digest_algo: DigestAlgo) -> Self {
        BlobWriter {
            out,
            hash: sha2::Sha256::new(),
            chunk_size,
            compression,
            digest_algo,
            chunks: Vec::new(),
            written: 0,
            uncompressed_end: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.hash.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Append one chunk. `stored` is the compressed bytes when `compressed`, else the raw bytes.
    /// Returns its placement with `blob_index` = 0 (the caller sets it). Refuses (InvalidInput)
    /// what the v1 chunk-info record cannot express: empty or oversized chunks, a raw chunk
    /// whose stored size differs from its size, a compressed one whose stored size equals it
    /// (store that one raw), a digest of another algorithm.
    pub fn add_chunk(
        &mut self,
        digest: ChunkDigest,
        uncompressed_size: u32,
        stored: &[u8],
        compressed: bool,
    ) -> std::io::Result<ChunkPlacement> {
        if uncompressed_size == 0 || uncompressed_size > self.chunk_size.min(MAX_CHUNK_SIZE) {
            return Err(invalid(format!(
                "chunk {digest}: size {uncompressed_size} is not within 1..={}",
                self.chunk_size
            )));
        }
        if digest.algo() != self.digest_algo {
            return Err(invalid(format!(
                "chunk {digest}: not a {} digest",
                self.digest_algo
            )));
        }
        let n = stored.len();
        if n == 0 || n > MAX_CHUNK_SIZE as usize {
            return Err(invalid(format!("chunk {digest}: stored size {n}")));
        }
        if compressed == (n == uncompressed_size as usize)
            || (compressed && self.compression == Compression::None)
        {
            return Err(invalid(format!(
                "chunk {digest}: {} with stored size {n} and size {uncompressed_size}; \
                 compressed chunks must be stored with the blob's compressor and differ in size",
                if compressed { "compressed" } else { "raw" }
            )));
        }
        if self.chunks.len() >= MAX_CHUNKS_PER_BLOB as usize {
            return Err(invalid(format!(
                "blob already holds {MAX_CHUNKS_PER_BLOB} chunks"
            )));
        }
        let uncompressed_offset = self.uncompressed_end.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let placement = ChunkPlacement {
            digest,
            blob_index: 0,
            index_in_blob: self.chunks.len() as u32,
            compressed_offset: self.written,
            compressed_size: n as u32,
            uncompressed_offset,
            uncompressed_size,
            compressed,
        };
        if self.written + n as u64 > MAX_C_OFFSET || uncompressed_offset > MAX_U_OFFSET {
            return Err(invalid(
                "blob is too large for v1 chunk-info records".into(),
            ));
        }
        self.write(stored)?;
        self.uncompressed_end = uncompressed_offset + u64::from(uncompressed_size);
        self.chunks.push(placement);
        Ok(placement)
    }

    /// Number of chunks added so far.
    pub fn chunk_count(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// Write the chunk-info array and header; return the writer and the blob's table entry.
    /// `compressed_size` of the entry is the size of the whole blob file, as upstream records it.
    pub fn finish(mut self) -> std::io::Result<(W, BlobSpec)> {
        let mut raw = Vec::with_capacity(self.chunks.len() * chunk_info::V1_SIZE as usize);
        for c in &self.chunks {
            raw.extend_from_slice(&chunk_info(c));
        }
        // The array is compressed like a chunk: with the blob's compressor when that pays.
        let (ci, ci_compression) =
            encode_chunk(self.compression, &raw).map_err(std::io::Error::other)?;
        let ci = ci.into_owned();
        let ci_offset = self.written;
        self.write(&ci)?;
        let mut h = vec![0u8; header::SIZE as usize];
        let mut put = |at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
        put(header::MAGIC, &header::META_MAGIC.to_le_bytes());
        put(header::FEATURES, &NATIVE_FEATURES.to_le_bytes());
        put(
            header::CI_COMPRESSOR,
            &ci_compression.rafs_id().to_le_bytes(),
        );
        put(
            header::CI_ENTRIES,
            &(self.chunks.len() as u32).to_le_bytes(),
        );
        put(header::CI_OFFSET, &ci_offset.to_le_bytes());
        put(header::CI_COMPRESSED_SIZE, &(ci.len() as u64).to_le_bytes());
        put(
            header::CI_UNCOMPRESSED_SIZE,
            &(raw.len() as u64).to_le_bytes(),
        );
        put(header::MAGIC_END, &header::META_MAGIC.to_le_bytes());
        self.write(&h)?;
        self.out.flush()?;
        let id = BlobId::from_bytes(self.hash.finalize().into());
        let spec = BlobSpec {
            id,
            chunk_size: self.chunk_size,
            chunk_count: self.chunks.len() as u32,
            compression: self.compression,
            digest_algo: self.digest_algo,
            compressed_size: self.written,
            uncompressed_size: self.uncompressed_end.div_ceil(BLOCK_SIZE) * BLOCK_SIZE,
            features: NATIVE_FEATURES,
            ci_offset,
            ci_compressed_size: ci.len() as u64,
            ci_uncompressed_size: raw.len() as u64,
            ci_compression,
        };
        Ok((self.out, spec))
    }
}
