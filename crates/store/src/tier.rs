//! [`StoreTier`]: the store in the resolver's store role — asked first for chunks, fed with the
//! verified chunks other tiers delivered, told to drop copies that failed verification.

use std::sync::Arc;

use dfagent_core::{
    answer_all, fail_all, Answer, BoxFuture, ChunkDigest, ChunkRef, ChunkStore, ChunkTier, Slot,
    StoredChunk, TierError, TierErrorKind,
};

use crate::store::Store;

/// Adapts a [`Store`] to the resolver: reads go to blocking threads, so RocksDB never stalls
/// the async runtime; writes come from the resolver's write-back thread.
#[derive(Clone)]
pub struct StoreTier {
    store: Arc<Store>,
}

impl StoreTier {
    /// A tier over `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

impl ChunkTier for StoreTier {
    fn name(&self) -> &str {
        "store"
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        let store = self.store.clone();
        let digests: Vec<ChunkDigest> = slots.iter().map(|s| s.chunk().digest).collect();
        Box::pin(async move {
            let read = tokio::task::spawn_blocking(move || {
                digests
                    .iter()
                    .map(|d| match store.get(d) {
                        Ok(Some(v)) => Answer::Found(StoredChunk {
                            data: v.data,
                            compression: v.compression,
                        }),
                        Ok(None) => Answer::Missing,
                        Err(e) => Answer::Failed(TierError::new(
                            "store",
                            TierErrorKind::Io,
                            e.to_string(),
                        )),
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            match read {
                Ok(answers) => answer_all(slots, answers),
                Err(e) => fail_all(
                    slots,
                    &TierError::new(
                        "store",
                        TierErrorKind::Other,
                        format!("reader task failed: {e}"),
                    ),
                ),
            }
        })
    }
}

impl ChunkStore for StoreTier {
    fn put(&self, chunk: &ChunkRef, stored: &StoredChunk) -> Result<(), TierError> {
        self.store
            .put(
                &chunk.digest,
                &chunk.blob,
                stored.compression,
                chunk.uncompressed_size,
                &stored.data,
            )
            .map_err(|e| TierError::new("store", TierErrorKind::Io, e.to_string()))
    }

    fn reject(&self, chunk: &ChunkRef, detail: &str) {
        tracing::warn!(chunk = %chunk.digest, error = detail, "dropping a stored chunk that failed verification");
        if let Err(e) = self.store.reject(&chunk.digest) {
            tracing::warn!(chunk = %chunk.digest, error = %e, "could not drop a bad chunk from the store");
        }
    }
}
