//! [`ResolverCore`]: what every chain of tiers on a node shares — the store in its role (asked
//! first, fed, purged), the one bounded cache of decoded chunks, the single flight per digest,
//! the write-back queue, node-wide counters, and the count of foreground reads that background
//! work yields to. A daemon serving many mounts has one core and one [`crate::Resolver`] per
//! mount, so a chunk shared by two mounted images is fetched once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dfagent_core::{ChunkDigest, ChunkRef, ChunkStore, ReadError, StoredChunk};
use tokio::sync::{watch, Semaphore};

use crate::decode::DecodePool;
use crate::metrics::{add, ResolverMetrics, ResolverStats, TierMetrics};
use crate::writeback::WriteBack;

/// Settings of a [`ResolverCore`] and of the chains built on it.
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// Capacity of the decoded-chunk cache in bytes.
    pub cache_bytes: u64,
    /// Most requests in flight to one tier of a chain (and to the store) at a time.
    pub tier_concurrency: usize,
    /// Most times a tier is asked again for a chunk whose bytes failed verification, when the
    /// tier asks for it ([`dfagent_core::Retry::AskAgain`]): a flipped bit on the wire should
    /// not cost a read, a tier that keeps sending bad bytes should not cost it forever.
    pub verify_retries: u32,
    /// Verified chunks that may wait for the store writer. A read whose chunk does not fit is
    /// not delayed: the write is dropped and counted.
    pub write_queue: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            cache_bytes: 256 << 20,
            tier_concurrency: 8,
            verify_retries: 2,
            write_queue: 64,
        }
    }
}

#[derive(Clone)]
pub(crate) struct ByteWeight;

impl quick_cache::Weighter<ChunkDigest, Bytes> for ByteWeight {
    fn weight(&self, _key: &ChunkDigest, val: &Bytes) -> u64 {
        val.len().max(1) as u64
    }
}

/// The outcome of a fetch, as its followers see it (None while it runs).
pub(crate) type Outcome = Option<Result<Bytes, ReadError>>;

/// A fetch in flight: its outcome channel and the chain that leads it.
#[derive(Clone)]
pub(crate) struct Inflight {
    pub(crate) rx: watch::Receiver<Outcome>,
    pub(crate) chain: u64,
}

/// The store as the core holds it: the tier, its permits and its node-wide counters.
pub(crate) struct StoreRole {
    pub(crate) store: Arc<dyn ChunkStore>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) writeback: WriteBack,
}

/// What the chains of a node share. Build one with [`ResolverCore::new`], then a
/// [`crate::Resolver`] per set of tiers.
pub struct ResolverCore {
    pub(crate) store: Option<StoreRole>,
    pub(crate) cache: quick_cache::sync::Cache<ChunkDigest, Bytes, ByteWeight>,
    /// The threads that decode and verify what the tiers and the store return.
    pub(crate) decoder: DecodePool,
    inflight: Mutex<HashMap<ChunkDigest, Inflight>>,
    pub(crate) metrics: Arc<ResolverMetrics>,
    pub(crate) config: ResolverConfig,
    /// Reads (not background work) fetching from the tiers right now.
    pub(crate) foreground: watch::Sender<usize>,
    next_chain: AtomicU64,
}

impl ResolverCore {
    /// A core with `store` in the store's role: asked first, fed by a write-back thread of
    /// its own (which is why this can fail), purged of copies that fail verification.
    pub fn with_store(
        store: Arc<dyn ChunkStore>,
        config: ResolverConfig,
    ) -> std::io::Result<Arc<Self>> {
        let metrics = Arc::new(ResolverMetrics::default());
        let role = StoreRole {
            writeback: WriteBack::start(store.clone(), config.write_queue, vec![metrics.clone()])?,
            store,
            permits: Arc::new(Semaphore::new(config.tier_concurrency.max(1))),
        };
        Ok(Self::build(Some(role), metrics, config))
    }

    /// A core without a store: verified chunks live only in the decoded-chunk cache.
    pub fn without_store(config: ResolverConfig) -> Arc<Self> {
        Self::build(None, Arc::new(ResolverMetrics::default()), config)
    }

    fn build(
        store: Option<StoreRole>,
        metrics: Arc<ResolverMetrics>,
        config: ResolverConfig,
    ) -> Arc<Self> {
        let items = (config.cache_bytes / (256 << 10)).max(16) as usize;
        Arc::new(Self {
            store,
            cache: quick_cache::sync::Cache::with_weighter(items, config.cache_bytes, ByteWeight),
            decoder: DecodePool::start(),
            inflight: Mutex::new(HashMap::new()),
            metrics,
            config,
            foreground: watch::channel(0).0,
            next_chain: AtomicU64::new(1),
        })
    }

    /// Node-wide counters: every chain's traffic, tiers summed by name.
    pub fn metrics(&self) -> &Arc<ResolverMetrics> {
        &self.metrics
    }

    /// A snapshot of the node-wide counters.
    pub fn stats(&self) -> ResolverStats {
        self.metrics.snapshot()
    }

    /// The settings.
    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// Wait until every verified chunk queued for the store so far is written.
    pub async fn flush(&self) {
        if let Some(s) = &self.store {
            s.writeback.flush().await;
        }
    }

    /// Chunks being fetched right now, node-wide (one per digest however many readers wait for
    /// it). An entry lives exactly as long as the read leading its fetch, however that read ends
    /// (done, failed or cancelled), so this is zero when no read is in progress.
    pub fn in_flight(&self) -> usize {
        self.inflight().len()
    }

    /// Drop `digest` from the decoded-chunk cache (tests, and a store that was cleared).
    pub fn forget(&self, digest: &ChunkDigest) {
        self.cache.remove(digest);
    }

    /// Empty the decoded-chunk cache.
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    pub(crate) fn next_chain_id(&self) -> u64 {
        self.next_chain.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn node_tier(&self, name: &str) -> Arc<TierMetrics> {
        self.metrics.shared_tier(name)
    }

    pub(crate) fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkDigest, Inflight>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a verified chunk for the store: without waiting for a read (dropped and counted
    /// when the queue is full), waiting for room for background work.
    pub(crate) async fn write_back(
        &self,
        chunk: &ChunkRef,
        stored: StoredChunk,
        background: bool,
        chain: &ResolverMetrics,
    ) {
        let Some(s) = &self.store else { return };
        let queued = if background {
            s.writeback.put(*chunk, stored).await
        } else {
            s.writeback.try_put(*chunk, stored)
        };
        for m in [&*self.metrics, chain] {
            if queued {
                add(&m.writes_queued, 1);
            } else {
                add(&m.writes_dropped, 1);
            }
        }
        if !queued {
            tracing::debug!(chunk = %chunk.digest, "store write-back queue full; chunk not kept");
        }
    }
}
