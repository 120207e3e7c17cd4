//! Where a chunk lives in its blob, the one decode step (decompress, then verify) that turns
//! stored chunk bytes into file data, and its inverse for writers ([`encode_chunk`]): how a
//! chunk is compressed before it is stored.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::{BlobId, ChunkDigest};

/// Largest uncompressed chunk a Nydus image may hold (16 MiB). Decoding refuses anything larger,
/// so a hostile size field cannot make us allocate without bound.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;

/// zstd level of stored chunks (and chunk-info arrays): nydus-image's choice, speed over ratio.
const ZSTD_LEVEL: i32 = 3;

/// Nydus' numeric id of gzip, an algorithm Nydus knows but dfagent does not decode.
const GZIP_RAFS_ID: u32 = 2;

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
    /// Every compression, in the order of their numeric ids.
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Lz4Block, Compression::Zstd];

    /// Name as Nydus spells it (`nydus-image --compressor`, the `--compressor` of `dfagent build`).
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4Block => "lz4_block",
            Compression::Zstd => "zstd",
        }
    }

    /// Numeric id in RAFS blob table entries and blob meta headers (Nydus' `compress::Algorithm`;
    /// 2 is gzip).
    pub fn rafs_id(self) -> u32 {
        match self {
            Compression::None => 0,
            Compression::Lz4Block => 1,
            Compression::Zstd => 3,
        }
    }

    /// The compression a RAFS numeric id names (the inverse of [`Compression::rafs_id`]).
    pub fn from_rafs_id(id: u32) -> Result<Self, CompressionIdError> {
        if id == GZIP_RAFS_ID {
            return Err(CompressionIdError::Gzip);
        }
        Self::ALL
            .into_iter()
            .find(|c| c.rafs_id() == id)
            .ok_or(CompressionIdError::Unknown(id))
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses the Nydus names (`none`, `lz4_block`, `zstd`) and `lz4`, which `dfagent build` has
/// always accepted for `lz4_block`.
impl FromStr for Compression {
    type Err = CompressionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "lz4" {
            return Ok(Compression::Lz4Block);
        }
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| CompressionParseError(s.to_string()))
    }
}

/// A compression name that is not `none`, `lz4_block` (or `lz4`) or `zstd`.
#[derive(Debug, thiserror::Error)]
#[error("unknown compression {0:?}: expected none, lz4_block or zstd")]
pub struct CompressionParseError(pub String);

/// A RAFS numeric compression id that names no [`Compression`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompressionIdError {
    /// Nydus' gzip: a valid image, but chunks dfagent does not decode.
    #[error("gzip compression")]
    Gzip,
    /// No algorithm has this id.
    #[error("unknown compression id {0}")]
    Unknown(u32),
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
    check_sizes(chunk, stored)?;
    let data = decompress(chunk.compression, stored, chunk.uncompressed_size as usize)
        .map_err(|detail| decompress_error(chunk, detail))?;
    verify(chunk, &data)?;
    Ok(data)
}

/// [`decode_chunk`] into `out`, which must be exactly the chunk's uncompressed size: for a
/// caller that owns the memory the chunk will live in (a mapping of its own), so the decoded
/// bytes are written once instead of decoded into a buffer and copied. On an error `out` holds
/// unverified bytes and must not be read.
pub fn decode_chunk_into(
    chunk: &ChunkRef,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), DecodeError> {
    check_sizes(chunk, stored)?;
    if out.len() != chunk.uncompressed_size as usize {
        return Err(decompress_error(
            chunk,
            format!(
                "output buffer is {} bytes, the chunk {}",
                out.len(),
                chunk.uncompressed_size
            ),
        ));
    }
    decompress_into(chunk.compression, stored, out)
        .map_err(|detail| decompress_error(chunk, detail))?;
    verify(chunk, out)
}

/// The size checks before any decode: the stored length is the reference's, and the
/// uncompressed size is within [`MAX_CHUNK_SIZE`].
fn check_sizes(chunk: &ChunkRef, stored: &[u8]) -> Result<(), DecodeError> {
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
    Ok(())
}

fn decompress_error(chunk: &ChunkRef, detail: String) -> DecodeError {
    DecodeError::Decompress {
        digest: chunk.digest,
        compression: chunk.compression,
        detail,
    }
}

/// The decoded bytes hash to the chunk's digest.
fn verify(chunk: &ChunkRef, data: &[u8]) -> Result<(), DecodeError> {
    let actual = chunk.digest.algo().digest(data);
    if actual != chunk.digest {
        return Err(DecodeError::DigestMismatch {
            expected: chunk.digest,
            actual,
        });
    }
    Ok(())
}

/// Compression of a chunk failed (the compressor could not even start).
#[derive(Debug, thiserror::Error)]
#[error("{compression} compression failed: {detail}")]
pub struct EncodeError {
    /// Compression that failed.
    pub compression: Compression,
    /// What the compressor said.
    pub detail: String,
}

/// Compresses chunks for storing, keeping one zstd context across calls (a worker thread holds
/// one: a fresh context per chunk costs an allocation of several MiB). The output is the same
/// bytes [`encode_chunk`] makes.
#[derive(Default)]
pub struct ChunkEncoder {
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl fmt::Debug for ChunkEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkEncoder")
            .field("zstd", &self.zstd.is_some())
            .finish()
    }
}

impl ChunkEncoder {
    /// An encoder without a zstd context yet (made on the first zstd chunk).
    pub fn new() -> Self {
        Self::default()
    }

    /// [`encode_chunk`] with this encoder's zstd context.
    pub fn encode<'a>(
        &mut self,
        compression: Compression,
        data: &'a [u8],
    ) -> Result<(Cow<'a, [u8]>, Compression), EncodeError> {
        let failed = |e: std::io::Error| EncodeError {
            compression,
            detail: e.to_string(),
        };
        let out = match compression {
            Compression::None => return Ok((Cow::Borrowed(data), Compression::None)),
            Compression::Lz4Block => lz4_flex::block::compress(data),
            Compression::Zstd => {
                let z = match &mut self.zstd {
                    Some(z) => z,
                    None => self
                        .zstd
                        .insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(failed)?),
                };
                z.compress(data).map_err(failed)?
            }
        };
        // Store raw when compression does not pay, as nydus-image does.
        if out.len() < data.len() {
            Ok((Cow::Owned(out), compression))
        } else {
            Ok((Cow::Borrowed(data), Compression::None))
        }
    }
}

/// Compress `data` (a chunk's raw bytes, or a chunk-info array) with `compression` for storing
/// in a blob; the inverse of [`decompress`]. Returns the bytes to store and the compression they
/// are stored with: [`Compression::None`] (the bytes are `data` itself) when compression does
/// not make them smaller, as nydus-image stores such chunks raw with the chunk's compressed
/// flag clear. zstd uses level 3; [`ChunkEncoder`] does the same with a reused context.
pub fn encode_chunk(
    compression: Compression,
    data: &[u8],
) -> Result<(Cow<'_, [u8]>, Compression), EncodeError> {
    ChunkEncoder::new().encode(compression, data)
}

/// Decompress `stored` into exactly `size` bytes. For metadata (chunk-info arrays, TOC entries)
/// whose integrity is checked elsewhere; chunk data goes through [`decode_chunk`]. Callers bound
/// `size` before calling.
pub fn decompress(compression: Compression, stored: &[u8], size: usize) -> Result<Vec<u8>, String> {
    match compression {
        Compression::None | Compression::Lz4Block => {
            let mut out = vec![0u8; size];
            decompress_into(compression, stored, &mut out)?;
            Ok(out)
        }
        Compression::Zstd => {
            // Into the Vec's spare capacity: no zeroing of memory zstd overwrites anyway.
            let mut out = Vec::with_capacity(size);
            let n = with_zstd(|d| d.decompress_to_buffer(stored, &mut out))?;
            if n != size {
                return Err(format!("produced {n} bytes, expected {size}"));
            }
            Ok(out)
        }
    }
}

/// Decompress `stored` into `out`, which must come out exactly full.
pub fn decompress_into(
    compression: Compression,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    let size = out.len();
    let n = match compression {
        Compression::None => {
            if stored.len() != size {
                return Err(format!(
                    "raw data is {} bytes, expected {size}",
                    stored.len()
                ));
            }
            out.copy_from_slice(stored);
            size
        }
        Compression::Lz4Block => {
            lz4_flex::block::decompress_into(stored, out).map_err(|e| e.to_string())?
        }
        Compression::Zstd => with_zstd(|d| d.decompress_to_buffer(stored, out))?,
    };
    if n != size {
        return Err(format!("produced {n} bytes, expected {size}"));
    }
    Ok(())
}

thread_local! {
    /// This thread's zstd decompression context: made once, not per chunk (a context is an
    /// allocation of its own, and decoder threads decode thousands of chunks).
    static ZSTD_DCTX: std::cell::Cell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::Cell::new(None) };
}

/// Run `f` with this thread's zstd decompressor, taken out for the call and put back after.
fn with_zstd(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<usize>,
) -> Result<usize, String> {
    let mut d = match ZSTD_DCTX.try_with(|c| c.take()) {
        Ok(Some(d)) => d,
        _ => zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?,
    };
    let r = f(&mut d).map_err(|e| e.to_string());
    let _ = ZSTD_DCTX.try_with(|c| c.set(Some(d)));
    r
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
            // Into a buffer of the caller's: the same bytes, the same refusals.
            let mut out = vec![0u8; data.len()];
            decode_chunk_into(&r, &stored, &mut out).unwrap();
            assert_eq!(out, data);
            assert!(decode_chunk_into(&r, &bad, &mut out).is_err());
            let mut short = vec![0u8; data.len() - 1];
            assert!(matches!(
                decode_chunk_into(&r, &stored, &mut short),
                Err(DecodeError::Decompress { .. })
            ));
            // The thread's reused zstd context still decodes after a failure.
            assert_eq!(decode_chunk(&r, &stored).unwrap(), data);
        }
    }

    #[test]
    fn encodes_and_falls_back_to_raw() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut enc = ChunkEncoder::new();
        for c in Compression::ALL {
            let (stored, used) = encode_chunk(c, &data).unwrap();
            assert_eq!(used, c);
            assert_eq!(decompress(used, &stored, data.len()).unwrap(), data);
            // A reused context makes the same bytes.
            assert_eq!(enc.encode(c, &data).unwrap(), (stored.clone(), used));
            assert_eq!(enc.encode(c, &data).unwrap().0, stored);
        }
        assert_eq!(
            encode_chunk(Compression::Zstd, &data).unwrap().0,
            zstd::bulk::compress(&data, 3).unwrap()
        );
        // Incompressible bytes are stored raw, borrowed.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        for c in Compression::ALL {
            let (stored, used) = encode_chunk(c, &noise).unwrap();
            assert_eq!(used, Compression::None);
            assert!(matches!(stored, Cow::Borrowed(b) if b == noise.as_slice()));
        }
    }

    #[test]
    fn ids_and_names_round_trip() {
        for c in Compression::ALL {
            assert_eq!(Compression::from_rafs_id(c.rafs_id()).unwrap(), c);
            assert_eq!(c.as_str().parse::<Compression>().unwrap(), c);
        }
        assert_eq!(Compression::from_rafs_id(2), Err(CompressionIdError::Gzip));
        assert_eq!(
            Compression::from_rafs_id(4),
            Err(CompressionIdError::Unknown(4))
        );
        assert_eq!("lz4".parse::<Compression>().unwrap(), Compression::Lz4Block);
        assert!("gzip".parse::<Compression>().is_err());
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
