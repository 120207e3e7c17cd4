//! What a filesystem reads through: decoded, verified chunks ([`ChunkReader`]), and why one
//! could not be produced ([`ReadError`]).

use bytes::Bytes;

use crate::{BoxFuture, ChunkDigest, ChunkRef};

/// Why a verified chunk could not be produced.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// Every tier that had the chunk sent bytes that failed verification.
    #[error("chunk {digest} failed verification: {detail}")]
    Corrupt {
        /// Chunk identity.
        digest: ChunkDigest,
        /// The last decode error, with the tier that sent the bytes.
        detail: String,
    },
    /// A tier failed to get the chunk (and no tier had it): the tiers' own errors.
    #[error("chunk {digest}: {detail}")]
    TierFailed {
        /// Chunk identity.
        digest: ChunkDigest,
        /// The tiers' errors, as they said them ("registry: HTTP 503 after 3 tries").
        detail: String,
    },
    /// No tier has the chunk.
    #[error("chunk {digest} is not in any tier (blob {blob}, offset {offset})")]
    NotFound {
        /// Chunk identity.
        digest: ChunkDigest,
        /// The blob it was looked for in.
        blob: crate::BlobId,
        /// Its offset there.
        offset: u64,
    },
}

impl ReadError {
    /// The chunk this error is about.
    pub fn digest(&self) -> &ChunkDigest {
        match self {
            ReadError::Corrupt { digest, .. }
            | ReadError::TierFailed { digest, .. }
            | ReadError::NotFound { digest, .. } => digest,
        }
    }
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

    /// [`read_chunks`](Self::read_chunks) for chunks fetched ahead of a sequential reader: a
    /// reader that can tell them apart serves the chunks someone waits for now first.
    fn read_ahead<'a>(
        &'a self,
        chunks: &'a [ChunkRef],
    ) -> BoxFuture<'a, Vec<Result<Bytes, ReadError>>> {
        self.read_chunks(chunks)
    }
}
