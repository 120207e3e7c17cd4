//! Shared vocabulary of dfagent: what identifies data ([`ChunkDigest`], [`BlobId`]), where a chunk
//! lives ([`ChunkRef`]), how stored chunk bytes become verified file data ([`decode_chunk`]), and
//! the traits through which subsystems hand chunks to each other ([`ChunkTier`], [`ChunkStore`],
//! [`ChunkReader`], [`BlobOrigin`]), and how a batch becomes byte ranges ([`ranges`]). Every other crate depends on this one and on nothing sideways.

mod blob;
mod chunk;
mod digest;
mod origin;
pub mod priority;
pub mod ranges;
mod reader;
mod sha256;
mod tier;

pub use blob::{BlobId, BlobIdError};
pub use chunk::{
    decode_chunk, decode_chunk_into, decompress, decompress_into, encode_chunk, ChunkEncoder,
    ChunkRef, Compression, CompressionIdError, CompressionParseError, DecodeError, EncodeError,
    MAX_CHUNK_SIZE,
};
pub use digest::{ChunkDigest, DigestAlgo, DigestParseError};
pub use origin::{BlobOrigin, OriginRequest};
pub use reader::{ChunkReader, ReadError};
pub use sha256::sha256_digest;
pub use tier::{
    answer_all, fail_all, slots_for, Answer, BoxFuture, ChunkStore, ChunkTier, Retry, Slot,
    StoredChunk, TierError, TierErrorKind,
};
