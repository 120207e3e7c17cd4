//! The store as a resolver tier and sink.

use std::sync::Arc;

use bytes::Bytes;
use dfagent_core::{
    BoxFuture, ChunkDigest, ChunkRef, ChunkSink, ChunkSource, Compression, SourceError, StoredChunk,
};

use crate::store::Store;

/// Adapts a [`Store`] to the resolver: reads go to blocking threads, so RocksDB never stalls
/// the async runtime.
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

impl ChunkSource for StoreTier {
    fn name(&self) -> &str {
        "store"
    }

    fn fetch<'a>(
        &'a self,
        chunks: &'a [ChunkRef],
    ) -> BoxFuture<'a, Result<Vec<StoredChunk>, SourceError>> {
        let store = self.store.clone();
        let digests: Vec<ChunkDigest> = chunks.iter().map(|c| c.digest).collect();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                for (index, d) in digests.iter().enumerate() {
                    match store.get(d) {
                        Ok(Some(v)) => out.push(StoredChunk {
                            index,
                            data: v.data,
                            compression: v.compression,
                        }),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(chunk = %d, error = %e, "store read failed"),
                    }
                }
                out
            })
            .await
            .map_err(|e| SourceError::new("store", format!("reader task failed: {e}")))
        })
    }
}

impl ChunkSink for StoreTier {
    fn put<'a>(
        &'a self,
        chunk: &'a ChunkRef,
        stored: Bytes,
        compression: Compression,
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        let store = self.store.clone();
        let (digest, size) = (chunk.digest, chunk.uncompressed_size);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.put(&digest, compression, size, &stored))
                .await
                .map_err(|e| SourceError::new("store", format!("writer task failed: {e}")))?
                .map_err(|e| SourceError::new("store", e.to_string()))
        })
    }

    fn reject<'a>(&'a self, digest: &'a ChunkDigest) -> BoxFuture<'a, ()> {
        let store = self.store.clone();
        let d = *digest;
        Box::pin(async move {
            let r = tokio::task::spawn_blocking(move || store.reject(&d)).await;
            if let Ok(Err(e)) = r {
                tracing::warn!(chunk = %d, error = %e, "could not drop a bad chunk from the store");
            }
        })
    }
}
