//! Native RAFS v6 data blobs: chunk data, then the chunk-info array, then the 4 KiB header.

use std::io::Write;

use dfagent_core::{ChunkDigest, Compression, DigestAlgo};

use super::{BlobSpec, ChunkPlacement};

/// Appends chunks to one data blob and writes the blob's chunk-info array and 4 KiB meta header
/// at its tail as upstream nydus-image does; hashes the whole file with sha256 as it goes.
pub struct BlobWriter<W: Write> {
    out: W,
    chunk_size: u32,
    compression: Compression,
    digest_algo: DigestAlgo,
    chunks: Vec<ChunkPlacement>,
}

impl<W: Write> BlobWriter<W> {
    /// A writer for a blob of `chunk_size` chunks compressed with `compression`.
    pub fn new(out: W, chunk_size: u32, compression: Compression, digest_algo: DigestAlgo) -> Self {
        BlobWriter {
            out,
            chunk_size,
            compression,
            digest_algo,
            chunks: Vec::new(),
        }
    }

    /// Append one chunk. `stored` is the compressed bytes when `compressed`, else the raw bytes.
    /// Returns its placement with `blob_index` = 0 (the caller sets it).
    pub fn add_chunk(
        &mut self,
        digest: ChunkDigest,
        uncompressed_size: u32,
        stored: &[u8],
        compressed: bool,
    ) -> std::io::Result<ChunkPlacement> {
        let _ = (digest, uncompressed_size, stored, compressed, &mut self.out);
        Err(std::io::Error::other("BlobWriter: not implemented yet"))
    }

    /// Number of chunks added so far.
    pub fn chunk_count(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// Write the chunk-info array and header; return the writer and the blob's table entry.
    pub fn finish(self) -> std::io::Result<(W, BlobSpec)> {
        let _ = (self.chunk_size, self.compression, self.digest_algo);
        Err(std::io::Error::other("BlobWriter: not implemented yet"))
    }
}
