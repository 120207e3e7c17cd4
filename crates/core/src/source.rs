//! The traits through which chunks move between subsystems.
//!
//! Tiers (a local blob directory, the chunk store, peers, Dragonfly, the registry) implement
//! [`ChunkSource`] and hand out chunks *as stored in their blob*. The resolver chains tiers, decodes
//! and verifies, and implements [`ChunkReader`], which is all the filesystem sees.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::{ChunkDigest, ChunkRef, Compression};

/// A boxed, sendable future: what the object-safe traits below return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One chunk a tier answered: the position in the request, the stored bytes and their encoding.
#[derive(Clone, Debug)]
pub struct StoredChunk {
    /// Index into the request slice.
    pub index: usize,
    /// The chunk's bytes, encoded as `compression` says (not yet verified).
    pub data: Bytes,
    /// Encoding of `data`. Tiers that read blobs answer in the reference's encoding; the chunk
    /// store answers in whatever encoding the chunk arrived with (a chunk shared by two images
    /// may be compressed differently in each).
    pub compression: Compression,
}

/// A tier could not answer at all (as opposed to answering a subset).
#[derive(Debug, thiserror::Error)]
#[error("{tier}: {message}")]
pub struct SourceError {
    /// Name of the tier.
    pub tier: String,
    /// What went wrong, for logs and users.
    pub message: String,
}

impl SourceError {
    /// An error of tier `tier`.
    pub fn new(tier: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            tier: tier.into(),
            message: message.into(),
        }
    }
}

/// A place chunks can be fetched from, by reference, as stored in their blob.
pub trait ChunkSource: Send + Sync {
    /// Short name for logs and metrics (`blobdir`, `store`, `registry`, …).
    fn name(&self) -> &str;

    /// Fetch any subset of `chunks`. Chunks this tier does not have are simply left out; the
    /// caller asks the next tier for them. Bytes are not verified here.
    fn fetch<'a>(
        &'a self,
        chunks: &'a [ChunkRef],
    ) -> BoxFuture<'a, Result<Vec<StoredChunk>, SourceError>>;
}

/// Where verified chunks are kept for later (the node's chunk store).
pub trait ChunkSink: Send + Sync {
    /// Keep `stored` (already verified, encoded as `compression`) under the chunk's digest.
    fn put<'a>(
        &'a self,
        chunk: &'a ChunkRef,
        stored: Bytes,
        compression: Compression,
    ) -> BoxFuture<'a, Result<(), SourceError>>;

    /// A copy this sink handed out failed verification: drop it.
    fn reject<'a>(&'a self, digest: &'a ChunkDigest) -> BoxFuture<'a, ()>;
}

/// Why a verified chunk could not be produced.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// Every tier that had the chunk sent bytes that failed verification.
    #[error("chunk {digest} failed verification: {detail}")]
    Corrupt {
        /// Chunk identity.
        digest: ChunkDigest,
        /// The last decode error.
        detail: String,
    },
    /// No tier could supply the chunk.
    #[error("chunk {digest} is unavailable: {detail}")]
    Unavailable {
        /// Chunk identity.
        digest: ChunkDigest,
        /// What the tiers said.
        detail: String,
    },
}

/// Source of decoded, verified chunk data: what a filesystem reads through.
pub trait ChunkReader: Send + Sync {
    /// The uncompressed, digest-verified bytes of `chunk`.
    fn read_chunk<'a>(&'a self, chunk: &'a ChunkRef) -> BoxFuture<'a, Result<Bytes, ReadError>>;

    /// The verified bytes of several chunks, in order. Readers that know they need several
    /// chunks (a large read, prefetch) ask for them together so tiers can merge requests.
    fn read_chunks<'a>(
        &'a self,
        chunks: &'a [ChunkRef],
    ) -> BoxFuture<'a, Vec<Result<Bytes, ReadError>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(chunks.len());
            for c in chunks {
                out.push(self.read_chunk(c).await);
            }
            out
        })
    }
}
