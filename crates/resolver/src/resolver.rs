//! The resolver: batches of chunk references resolved through the store and the tiers, one
//! fetch per digest in flight however many readers wait, every answer decoded and verified
//! before it is cached, stored or returned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use dfagent_core::{
    decode_chunk, BoxFuture, ChunkDigest, ChunkReader, ChunkRef, ChunkSink, ChunkSource, ReadError,
};
use tokio::sync::{watch, Semaphore};

use crate::metrics::{add, ResolverMetrics, TierMetrics};

/// Settings of a [`Resolver`].
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// Capacity of the decoded-chunk cache in bytes.
    pub cache_bytes: u64,
    /// Most requests in flight to one tier at a time.
    pub tier_concurrency: usize,
    /// How many more times a tier (other than the store) is asked for a chunk whose bytes
    /// failed verification, before the next tier is tried: a flipped bit on the wire should
    /// not cost a read, a tier that keeps sending bad bytes should not cost it forever.
    pub verify_retries: u32,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            cache_bytes: 256 << 20,
            tier_concurrency: 8,
            verify_retries: 2,
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

type Outcome = Option<Result<Bytes, ReadError>>;

/// The node's chunk store seen as both a tier (asked first) and a sink (fed with what the other
/// tiers delivered, purged of copies that fail verification).
pub struct StoreTier {
    /// Reads from the store.
    pub source: Arc<dyn ChunkSource>,
    /// Writes to the store.
    pub sink: Arc<dyn ChunkSink>,
}

struct Tier {
    source: Arc<dyn ChunkSource>,
    permits: Semaphore,
    metrics: Arc<TierMetrics>,
}

/// Resolves chunks through its tiers and hands out verified data.
pub struct Resolver {
    sink: Option<Arc<dyn ChunkSink>>,
    /// The store (when there is one) first, then the other tiers in order.
    tiers: Vec<Tier>,
    cache: quick_cache::sync::Cache<ChunkDigest, Bytes, ByteWeight>,
    inflight: Mutex<HashMap<ChunkDigest, watch::Receiver<Outcome>>>,
    metrics: Arc<ResolverMetrics>,
    verify_retries: u32,
    /// Reads (not background work) fetching from the tiers right now.
    foreground: watch::Sender<usize>,
}

/// Counts a foreground fetch for as long as it lives.
struct Foreground<'a>(&'a watch::Sender<usize>);

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Longest a background batch waits for foreground reads to finish before it goes anyway, so
/// that a steady stream of reads slows background fill down without starving it.
const BACKGROUND_YIELD: std::time::Duration = std::time::Duration::from_secs(1);

/// What became of each chunk of a batch while the tiers were asked.
struct BatchState {
    done: Vec<Option<Result<Bytes, ReadError>>>,
    /// The last verification failure of each chunk not yet done.
    corrupt: Vec<Option<String>>,
    /// Whole-request failures of tiers.
    errors: Vec<String>,
}

/// Removes a leader's in-flight entries however its future ends (done, failed or cancelled);
/// followers of a cancelled leader see its channel close and try again.
struct Leading<'a> {
    resolver: &'a Resolver,
    senders: Vec<(ChunkDigest, watch::Sender<Outcome>)>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut map = self.resolver.inflight();
        for (d, tx) in &self.senders {
            if map
                .get(d)
                .is_some_and(|rx| rx.same_channel(&tx.subscribe()))
            {
                map.remove(d);
            }
        }
    }
}

impl Resolver {
    /// A resolver asking `tiers` in order.
    pub fn new(tiers: Vec<Arc<dyn ChunkSource>>, config: ResolverConfig) -> Self {
        Self::with_store(None, tiers, config)
    }

    /// A resolver asking `store` first, then `tiers` in order, and keeping every chunk a tier
    /// delivered in `store`.
    pub fn with_store(
        store: Option<StoreTier>,
        tiers: Vec<Arc<dyn ChunkSource>>,
        config: ResolverConfig,
    ) -> Self {
        let items = (config.cache_bytes / (256 << 10)).max(16) as usize;
        let metrics = Arc::new(ResolverMetrics::default());
        let sink = store.as_ref().map(|s| s.sink.clone());
        let tiers: Vec<Tier> = store
            .map(|s| s.source)
            .into_iter()
            .chain(tiers)
            .map(|source| {
                let m = metrics.tier(source.name());
                Tier {
                    source,
                    permits: Semaphore::new(config.tier_concurrency.max(1)),
                    metrics: m,
                }
            })
            .collect();
        Self {
            sink,
            tiers,
            cache: quick_cache::sync::Cache::with_weighter(items, config.cache_bytes, ByteWeight),
            inflight: Mutex::new(HashMap::new()),
            metrics,
            verify_retries: config.verify_retries,
            foreground: watch::channel(0).0,
        }
    }

    /// Live counters.
    pub fn metrics(&self) -> &Arc<ResolverMetrics> {
        &self.metrics
    }

    fn inflight(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ChunkDigest, watch::Receiver<Outcome>>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Verified bytes of `chunk`.
    pub async fn read(&self, chunk: &ChunkRef) -> Result<Bytes, ReadError> {
        self.read_batch(std::slice::from_ref(chunk))
            .await
            .pop()
            .unwrap_or_else(|| {
                Err(ReadError::Unavailable {
                    digest: chunk.digest,
                    detail: "empty answer".into(),
                })
            })
    }

    /// Verified bytes of every chunk of `chunks`, in order. Chunks nobody is fetching are
    /// fetched together (so a tier can merge neighbours into one request); chunks another
    /// caller is already fetching are awaited, not fetched again.
    pub async fn read_batch(&self, chunks: &[ChunkRef]) -> Vec<Result<Bytes, ReadError>> {
        self.foreground.send_modify(|n| *n += 1);
        let _fg = Foreground(&self.foreground);
        self.read_batch_inner(chunks).await
    }

    /// [`Resolver::read_batch`] for background work (prefetch, fill): it first lets reads that
    /// are fetching finish (waiting at most a second), so a read that misses jumps ahead.
    pub async fn read_batch_background(
        &self,
        chunks: &[ChunkRef],
    ) -> Vec<Result<Bytes, ReadError>> {
        let mut rx = self.foreground.subscribe();
        let _ = tokio::time::timeout(BACKGROUND_YIELD, rx.wait_for(|n| *n == 0)).await;
        self.read_batch_inner(chunks).await
    }

    async fn read_batch_inner(&self, chunks: &[ChunkRef]) -> Vec<Result<Bytes, ReadError>> {
        let mut results: Vec<Outcome> = vec![None; chunks.len()];
        let mut waits = Vec::new();
        let mut lead = Leading {
            resolver: self,
            senders: Vec::new(),
        };
        let mut lead_idx: Vec<usize> = Vec::new();
        {
            let mut map = self.inflight();
            for (i, c) in chunks.iter().enumerate() {
                if let Some(data) = self.cache.get(&c.digest) {
                    add(&self.metrics.cache_hits, 1);
                    results[i] = Some(Ok(data));
                } else if let Some(rx) = map.get(&c.digest) {
                    add(&self.metrics.coalesced, 1);
                    waits.push((i, rx.clone()));
                } else {
                    let (tx, rx) = watch::channel(None);
                    map.insert(c.digest, rx);
                    lead.senders.push((c.digest, tx));
                    lead_idx.push(i);
                }
            }
        }
        if !lead_idx.is_empty() {
            let batch: Vec<ChunkRef> = lead_idx.iter().map(|&i| chunks[i]).collect();
            let fetched = self.resolve(&batch).await;
            for ((&i, (_, tx)), r) in lead_idx.iter().zip(&lead.senders).zip(fetched) {
                tx.send_replace(Some(r.clone()));
                results[i] = Some(r);
            }
        }
        drop(lead);
        for (i, mut rx) in waits {
            let r = match rx.wait_for(|v| v.is_some()).await {
                Ok(v) => v.clone(),
                Err(_) => None,
            };
            results[i] = Some(match r {
                Some(r) => r,
                // The leader was cancelled before it finished: fetch it ourselves.
                None => Box::pin(self.read(&chunks[i])).await,
            });
        }
        results
            .into_iter()
            .zip(chunks)
            .map(|(r, c)| {
                r.unwrap_or_else(|| {
                    Err(ReadError::Unavailable {
                        digest: c.digest,
                        detail: "not resolved".into(),
                    })
                })
            })
            .collect()
    }

    /// Fetch `batch` through the tiers in order; each tier is asked for what is still missing,
    /// and asked again (up to `verify_retries` times) for chunks it sent bad bytes for.
    async fn resolve(&self, batch: &[ChunkRef]) -> Vec<Result<Bytes, ReadError>> {
        let mut st = BatchState {
            done: vec![None; batch.len()],
            corrupt: vec![None; batch.len()],
            errors: Vec::new(),
        };
        let from_store_tier = self.sink.is_some();
        for (ti, tier) in self.tiers.iter().enumerate() {
            let is_store = from_store_tier && ti == 0;
            let retries = if is_store { 0 } else { self.verify_retries };
            let mut pending: Vec<usize> =
                (0..batch.len()).filter(|&i| st.done[i].is_none()).collect();
            for attempt in 0..=retries {
                if pending.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tracing::info!(
                        tier = tier.source.name(),
                        chunks = pending.len(),
                        attempt,
                        "asking the tier again for chunks that failed verification"
                    );
                }
                let bad = self
                    .ask_tier(tier, is_store, batch, &pending, &mut st)
                    .await;
                pending = bad;
            }
        }
        let BatchState {
            done,
            corrupt,
            errors,
        } = st;
        done.into_iter()
            .zip(corrupt)
            .zip(batch)
            .map(|((d, bad), chunk)| {
                d.unwrap_or_else(|| {
                    add(&self.metrics.unavailable, 1);
                    Err(match bad {
                        Some(detail) => ReadError::Corrupt {
                            digest: chunk.digest,
                            detail,
                        },
                        None => ReadError::Unavailable {
                            digest: chunk.digest,
                            detail: if errors.is_empty() {
                                format!(
                                    "no tier has it (blob {} offset {})",
                                    chunk.blob, chunk.compressed_offset
                                )
                            } else {
                                errors.join("; ")
                            },
                        },
                    })
                })
            })
            .collect()
    }

    /// Ask one tier for the chunks `pending` (indices into `batch`) once; record what it
    /// delivered in `st`. Returns the indices whose bytes failed verification.
    async fn ask_tier(
        &self,
        tier: &Tier,
        is_store: bool,
        batch: &[ChunkRef],
        pending: &[usize],
        st: &mut BatchState,
    ) -> Vec<usize> {
        let mut bad = Vec::new();
        let ask: Vec<ChunkRef> = pending.iter().map(|&i| batch[i]).collect();
        add(&self.metrics.fetches, ask.len() as u64);
        let started = Instant::now();
        let answered = {
            let _permit = tier.permits.acquire().await;
            tier.source.fetch(&ask).await
        };
        tier.metrics.request(started.elapsed());
        let answered = match answered {
            Ok(v) => v,
            Err(e) => {
                add(&self.metrics.tier_errors, 1);
                add(&tier.metrics.errors, 1);
                tracing::warn!(tier = tier.source.name(), chunks = ask.len(), error = %e, "tier failed");
                st.errors.push(e.to_string());
                return bad;
            }
        };
        // Decode every answer in parallel on blocking threads.
        let mut decodes = Vec::new();
        for sc in answered {
            let Some(&i) = pending.get(sc.index) else {
                continue;
            };
            if st.done[i].is_some() {
                continue;
            }
            add(&self.metrics.bytes_fetched, sc.data.len() as u64);
            add(&tier.metrics.bytes, sc.data.len() as u64);
            let encoded = batch[i].with_encoding(sc.compression, sc.data.len() as u32);
            let data = sc.data.clone();
            let task = tokio::task::spawn_blocking(move || decode_chunk(&encoded, &data));
            decodes.push((i, sc, task));
        }
        for (i, sc, task) in decodes {
            let chunk = &batch[i];
            let decoded = match task.await {
                Ok(d) => d.map_err(|e| e.to_string()),
                Err(e) => Err(format!("decoder task failed: {e}")),
            };
            match decoded {
                Ok(data) => {
                    let data = Bytes::from(data);
                    add(&self.metrics.bytes_decoded, data.len() as u64);
                    add(&tier.metrics.chunks, 1);
                    if let (Some(sink), false) = (&self.sink, is_store) {
                        if let Err(e) = sink.put(chunk, sc.data, sc.compression).await {
                            tracing::warn!(chunk = %chunk.digest, error = %e, "could not keep chunk in the store");
                        }
                    }
                    self.cache.insert(chunk.digest, data.clone());
                    st.corrupt[i] = None;
                    st.done[i] = Some(Ok(data));
                }
                Err(e) => {
                    add(&self.metrics.verify_failures, 1);
                    add(&tier.metrics.verify_failures, 1);
                    tracing::error!(
                        tier = tier.source.name(),
                        chunk = %chunk.digest,
                        blob = %chunk.blob,
                        blob_offset = chunk.compressed_offset,
                        error = %e,
                        "chunk failed verification; its bytes are dropped"
                    );
                    if let (Some(sink), true) = (&self.sink, is_store) {
                        sink.reject(&chunk.digest).await;
                    }
                    st.corrupt[i] = Some(format!("{} sent bad bytes: {e}", tier.source.name()));
                    bad.push(i);
                }
            }
        }
        bad
    }
}

impl ChunkReader for Resolver {
    fn read_chunk<'a>(&'a self, chunk: &'a ChunkRef) -> BoxFuture<'a, Result<Bytes, ReadError>> {
        Box::pin(self.read(chunk))
    }

    fn read_chunks<'a>(
        &'a self,
        chunks: &'a [ChunkRef],
    ) -> BoxFuture<'a, Vec<Result<Bytes, ReadError>>> {
        Box::pin(self.read_batch(chunks))
    }
}
