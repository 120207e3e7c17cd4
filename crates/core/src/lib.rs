//! Shared vocabulary of dfagent: what identifies data ([`ChunkDigest`], [`BlobId`]), where a chunk
//! lives ([`ChunkRef`]), how stored chunk bytes become verified file data ([`decode_chunk`]), and
//! the traits through which subsystems hand chunks to each other ([`ChunkSource`],
//! [`ChunkReader`]). Every other crate depends on this one and on nothing sideways.

mod blob;
mod chunk;
mod digest;
mod source;

pub use blob::{BlobId, BlobIdError};
pub use chunk::{decode_chunk, decompress, ChunkRef, Compression, DecodeError, MAX_CHUNK_SIZE};
pub use digest::{ChunkDigest, DigestAlgo, DigestParseError};
pub use source::{
    BoxFuture, ChunkReader, ChunkSink, ChunkSource, ReadError, SourceError, StoredChunk,
};
