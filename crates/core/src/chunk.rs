//! Where a chunk lives in its blob, and the one decode step (decompress, then verify) that turns
//! stored chunk bytes into file data.

use std::fmt;

use crate::{BlobId, ChunkDigest};

/// Largest uncompressed chunk a Nydus image may hold (16 MiB). Decoding refuses anything larger,
/// so a hostile size field cannot make us allocate without bound.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;

/// How a chunk's bytes are stored in its blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Stored raw (also used for chunks that did not compress, whatever the image's compressor).
    None,
    /// LZ4 block format without a frame, as Nydus' `lz4_block`.
    Lz4Block,
    /// A zstd frame.
    Zstd,
}

impl Compression {
    /// Name as Nydus spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4Block => "lz4_block",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything needed to fetch one chunk from its blob and to decode and verify it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// Identity of the uncompressed bytes.
    pub digest: ChunkDigest,
    /// The data blob holding the chunk.
    pub blob: BlobId,
    /// Byte offset of the stored chunk in the blob.
    pub compressed_offset: u64,
    /// Stored size in the blob.
    pub compressed_size: u32,
    /// Size after decompression.
    pub uncompressed_size: u32,
    /// How the stored bytes are encoded (per chunk: incompressible chunks are stored raw).
    pub compression: Compression,
}

impl ChunkRef {
    /// The same chunk as encoded differently (how another tier or the store holds it).
    pub fn with_encoding(&self, compression: Compression, compressed_size: u32) -> ChunkRef {
        ChunkRef {
            compression,
            compressed_size,
            ..*self
        }
    }

    /// The byte range of the stored chunk in its blob.
    pub fn blob_range(&self) -> std::ops::Range<u64> {
        self.compressed_offset..self.compressed_offset + u64::from(self.compressed_size)
    }
}

/// Why stored chunk bytes could not become verified data.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The stored bytes are not the size the chunk reference says.
    #[error("chunk {digest}: got {got} stored bytes, expected {expected}")]
    StoredSize {
        /// Chunk identity.
        digest: ChunkDigest,
        /// Bytes received.
        got: usize,
        /// Bytes the reference names.
        expected: u32,
    },
    /// The reference claims an uncompressed size beyond [`MAX_CHUNK_SIZE`].
    #[error("chunk {digest}: uncompressed size {size} exceeds the 16 MiB limit")]
    TooLarge {
        /// Chunk identity.
        digest: ChunkDigest,
        /// Claimed size.
        size: u32,
    },
    /// The decompressor rejected the bytes, or produced the wrong amount.
    #[error("chunk {digest}: {compression} decompression failed: {detail}")]
    Decompress {
        /// Chunk identity.
        digest: ChunkDigest,
        /// Compression that failed.
        compression: Compression,
        /// What the decompressor said.
        detail: String,
    },
    /// The decoded bytes do not have the chunk's digest.
    #[error("chunk {expected}: digest mismatch, data hashes to {actual}")]
    DigestMismatch {
        /// The digest the chunk should have.
        expected: ChunkDigest,
        /// The digest of what was decoded.
        actual: ChunkDigest,
    },
}

/// Decompress `stored` (a chunk's bytes as stored in its blob) and verify the result against the
/// chunk's digest. The only way stored bytes become file data: nothing unverified gets out.
pub fn decode_chunk(chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let digest = chunk.digest;
    if stored.len() != chunk.compressed_size as usize {
        return Err(DecodeError::StoredSize {
            digest,
            got: stored.len(),
            expected: chunk.compressed_size,
        });
    }
    if chunk.uncompressed_size > MAX_CHUNK_SIZE {
        return Err(DecodeError::TooLarge {
            digest,
            size: chunk.uncompressed_size,
        });
    }
    let data = decompress(chunk.compression, stored, chunk.uncompressed_size as usize).map_err(
        |detail| DecodeError::Decompress {
            digest,
            compression: chunk.compression,
            detail,
        },
    )?;
    let actual = digest.algo().digest(&data);
    if actual != digest {
        return Err(DecodeError::DigestMismatch {
            expected: digest,
            actual,
        });
    }
    Ok(data)
}

/// Decompress `stored` into exactly `size` bytes. For metadata (chunk-info arrays, TOC entries)
/// whose integrity is checked elsewhere; chunk data goes through [`decode_chunk`]. Callers bound
/// `size` before calling.
pub fn decompress(compression: Compression, stored: &[u8], size: usize) -> Result<Vec<u8>, String> {
    match compression {
        Compression::None => {
            if stored.len() != size {
                return Err(format!(
                    "raw data is {} bytes, expected {size}",
                    stored.len()
                ));
            }
            Ok(stored.to_vec())
        }
        Compression::Lz4Block => {
            let mut out = vec![0u8; size];
            let n =
                lz4_flex::block::decompress_into(stored, &mut out).map_err(|e| e.to_string())?;
            if n != size {
                return Err(format!("produced {n} bytes, expected {size}"));
            }
            Ok(out)
        }
        Compression::Zstd => {
            let mut out = Vec::with_capacity(size);
            let mut d = zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?;
            let n = d
                .decompress_to_buffer(stored, &mut out)
                .map_err(|e| e.to_string())?;
            if n != size {
                return Err(format!("produced {n} bytes, expected {size}"));
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DigestAlgo;

    fn chunk_for(data: &[u8], stored: &[u8], compression: Compression) -> ChunkRef {
        ChunkRef {
            digest: DigestAlgo::Blake3.digest(data),
            blob: BlobId::from_bytes([7; 32]),
            compressed_offset: 0,
            compressed_size: stored.len() as u32,
            uncompressed_size: data.len() as u32,
            compression,
        }
    }

    #[test]
    fn decodes_every_compression_and_verifies() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let z = zstd::bulk::compress(&data, 3).unwrap();
        let l = lz4_flex::block::compress(&data);
        for (stored, c) in [
            (data.clone(), Compression::None),
            (z, Compression::Zstd),
            (l, Compression::Lz4Block),
        ] {
            let r = chunk_for(&data, &stored, c);
            assert_eq!(decode_chunk(&r, &stored).unwrap(), data);
            let mut bad = stored.clone();
            let i = bad.len() / 2;
            bad[i] ^= 1;
            assert!(
                decode_chunk(&r, &bad).is_err(),
                "{c} accepted a flipped byte"
            );
        }
    }

    #[test]
    fn refuses_wrong_sizes_without_allocating() {
        let data = b"hello";
        let mut r = chunk_for(data, data, Compression::None);
        assert!(matches!(
            decode_chunk(&r, b"hell"),
            Err(DecodeError::StoredSize { .. })
        ));
        r.uncompressed_size = u32::MAX;
        assert!(matches!(
            decode_chunk(&r, data),
            Err(DecodeError::TooLarge { .. })
        ));
        let z = zstd::bulk::compress(&[0u8; 4096], 3).unwrap();
        let r = ChunkRef {
            uncompressed_size: 100,
            ..chunk_for(&[0u8; 4096], &z, Compression::Zstd)
        };
        assert!(matches!(
            decode_chunk(&r, &z),
            Err(DecodeError::Decompress { .. })
        ));
    }
}
