//! The resolver: one fetch per chunk digest in flight, tiers asked in order, every answer decoded
//! and verified before it is cached or returned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dfagent_core::{
    decode_chunk, BoxFuture, ChunkDigest, ChunkReader, ChunkRef, ChunkSource, ReadError,
};
use tokio::sync::OnceCell;

use crate::metrics::{add, ResolverMetrics};

/// Settings of a [`Resolver`].
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// Capacity of the decoded-chunk cache in bytes.
    pub cache_bytes: u64,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            cache_bytes: 256 << 20,
        }
    }
}

#[derive(Clone)]
struct ByteWeight;

impl quick_cache::Weighter<ChunkDigest, Bytes> for ByteWeight {
    fn weight(&self, _key: &ChunkDigest, val: &Bytes) -> u64 {
        val.len().max(1) as u64
    }
}

type Flight = Arc<OnceCell<Result<Bytes, ReadError>>>;

/// Resolves chunks through its tiers and hands out verified data.
pub struct Resolver {
    tiers: Vec<Arc<dyn ChunkSource>>,
    cache: quick_cache::sync::Cache<ChunkDigest, Bytes, ByteWeight>,
    inflight: Mutex<HashMap<ChunkDigest, Flight>>,
    metrics: Arc<ResolverMetrics>,
}

impl Resolver {
    /// A resolver asking `tiers` in order.
    pub fn new(tiers: Vec<Arc<dyn ChunkSource>>, config: ResolverConfig) -> Self {
        let items = (config.cache_bytes / (256 << 10)).max(16) as usize;
        Self {
            tiers,
            cache: quick_cache::sync::Cache::with_weighter(items, config.cache_bytes, ByteWeight),
            inflight: Mutex::new(HashMap::new()),
            metrics: Arc::new(ResolverMetrics::default()),
        }
    }

    /// Live counters.
    pub fn metrics(&self) -> &Arc<ResolverMetrics> {
        &self.metrics
    }

    /// Verified bytes of `chunk`, from the cache or the first tier that sends good bytes.
    pub async fn read(&self, chunk: &ChunkRef) -> Result<Bytes, ReadError> {
        if let Some(data) = self.cache.get(&chunk.digest) {
            add(&self.metrics.cache_hits, 1);
            return Ok(data);
        }
        let (flight, leader) = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&chunk.digest) {
                Some(f) => (f.clone(), false),
                None => {
                    let f: Flight = Arc::new(OnceCell::new());
                    map.insert(chunk.digest, f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            add(&self.metrics.coalesced, 1);
        }
        let result = flight.get_or_init(|| self.resolve(chunk)).await.clone();
        // Whoever sees the flight finish retires it (the leader may have been cancelled), so a
        // failure is never remembered: the next read tries again.
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&chunk.digest)
            .is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            map.remove(&chunk.digest);
        }
        result
    }

    async fn resolve(&self, chunk: &ChunkRef) -> Result<Bytes, ReadError> {
        let mut last_corrupt = None;
        let mut errors = Vec::new();
        for tier in &self.tiers {
            add(&self.metrics.fetches, 1);
            let answered = match tier.fetch(std::slice::from_ref(chunk)).await {
                Ok(v) => v.into_iter().find(|s| s.index == 0),
                Err(e) => {
                    add(&self.metrics.tier_errors, 1);
                    tracing::warn!(tier = tier.name(), chunk = %chunk.digest, error = %e, "tier failed");
                    errors.push(e.to_string());
                    continue;
                }
            };
            let Some(stored) = answered else { continue };
            add(&self.metrics.bytes_fetched, stored.data.len() as u64);
            let c = *chunk;
            let decoded = tokio::task::spawn_blocking(move || decode_chunk(&c, &stored.data))
                .await
                .map_err(|e| ReadError::Unavailable {
                    digest: chunk.digest,
                    detail: format!("decoder task failed: {e}"),
                })?;
            match decoded {
                Ok(data) => {
                    let data = Bytes::from(data);
                    add(&self.metrics.bytes_decoded, data.len() as u64);
                    self.cache.insert(chunk.digest, data.clone());
                    return Ok(data);
                }
                Err(e) => {
                    add(&self.metrics.verify_failures, 1);
                    tracing::error!(
                        tier = tier.name(),
                        chunk = %chunk.digest,
                        blob = %chunk.blob,
                        blob_offset = chunk.compressed_offset,
                        error = %e,
                        "chunk failed verification; trying the next tier"
                    );
                    last_corrupt = Some(e.to_string());
                }
            }
        }
        add(&self.metrics.unavailable, 1);
        match last_corrupt {
            Some(detail) => Err(ReadError::Corrupt {
                digest: chunk.digest,
                detail,
            }),
            None => Err(ReadError::Unavailable {
                digest: chunk.digest,
                detail: if errors.is_empty() {
                    format!(
                        "no tier has it (blob {} offset {})",
                        chunk.blob, chunk.compressed_offset
                    )
                } else {
                    errors.join("; ")
                },
            }),
        }
    }
}

impl ChunkReader for Resolver {
    fn read_chunk<'a>(&'a self, chunk: &'a ChunkRef) -> BoxFuture<'a, Result<Bytes, ReadError>> {
        Box::pin(self.read(chunk))
    }
}
