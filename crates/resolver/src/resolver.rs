//! [`Resolver`]: one chain of tiers over a [`ResolverCore`]. A batch of chunk references is
//! resolved through the store and then the tiers in order, one fetch per digest in flight
//! node-wide however many readers wait, every answer decoded and verified before it is cached,
//! stored or returned.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dfagent_core::{
    Answer, BoxFuture, ChunkReader, ChunkRef, ChunkTier, ReadError, Retry, Slot, StoredChunk,
    TierError,
};
use tokio::sync::{watch, Semaphore};

use crate::decode::Class;
use crate::metrics::{add, ResolverMetrics, TierMetrics};
use crate::shared::{Inflight, Outcome, ResolverConfig, ResolverCore};

/// Longest a background batch waits for foreground reads to finish before it goes anyway, so
/// that a steady stream of reads slows background fill down without starving it.
const BACKGROUND_YIELD: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest a chain's read-ahead that missed the store waits for the chain's reads in flight
/// before it asks the tiers. A read and its read-ahead leave together, so without this a
/// reader's first chunk shared the link (and the origin's disk) with the window fetched after
/// it: through a 100 MB/s link the first byte of a cold file came 1.6–1.9 times later than a
/// plain range GET's. Bounded, so a slow tier delays read-ahead without stopping it.
const AHEAD_YIELD: std::time::Duration = std::time::Duration::from_millis(200);

/// A tier of this chain: the tier, its permits, and its counters (this chain's and the node's).
struct Tier {
    tier: Arc<dyn ChunkTier>,
    permits: Arc<Semaphore>,
    chain: Arc<TierMetrics>,
    node: Arc<TierMetrics>,
}

impl Tier {
    fn each(&self, f: impl Fn(&TierMetrics)) {
        f(&self.chain);
        f(&self.node);
    }
}

/// Whether a batch is a reader's (never waits for the store writer) or background work.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Foreground,
    /// A reader's read-ahead: foreground in every way but the decoder queue, where it goes
    /// after reads (see [`Class`]).
    Ahead,
    Background,
}

/// Counts a fetch for as long as it lives: a foreground one (background work yields to them),
/// or a read (the chain's read-ahead yields to them).
struct Foreground<'a>(&'a watch::Sender<usize>);

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What became of each chunk of a batch while the tiers were asked.
struct BatchState<'a> {
    done: Vec<Option<Bytes>>,
    /// Per chunk of the batch, whoever waits on it: told as soon as that chunk is verified,
    /// not when the whole batch is (a reader waiting on the first chunk of a read-ahead batch
    /// gets it while the rest are still decoding).
    waiting: &'a [(dfagent_core::ChunkDigest, watch::Sender<Outcome>)],
    /// The last verification failure of each chunk not yet done.
    corrupt: Vec<Option<String>>,
    /// What tiers that failed to get each chunk said.
    errors: Vec<Vec<TierError>>,
}

/// Removes a leader's in-flight entries however its future ends (done, failed or cancelled);
/// followers of a cancelled leader see its channel close and try again.
struct Leading<'a> {
    core: &'a ResolverCore,
    senders: Vec<(dfagent_core::ChunkDigest, watch::Sender<Outcome>)>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut map = self.core.inflight();
        for (d, tx) in &self.senders {
            if map
                .get(d)
                .is_some_and(|f| f.rx.same_channel(&tx.subscribe()))
            {
                map.remove(d);
            }
        }
    }
}

/// Resolves chunks through the store and a chain of tiers and hands out verified data.
pub struct Resolver {
    core: Arc<ResolverCore>,
    id: u64,
    store: Option<Tier>,
    tiers: Vec<Tier>,
    metrics: Arc<ResolverMetrics>,
    /// This chain's reads that a reader waits for (not read-ahead) fetching right now (led
    /// by them, not waiting on another's fetch): the chain's read-ahead that missed the store
    /// lets them go first (see [`AHEAD_YIELD`]).
    demand: watch::Sender<usize>,
}

impl Resolver {
    /// A chain of `tiers` (asked in order, after the core's store) over `core`.
    pub fn new(core: Arc<ResolverCore>, tiers: Vec<Arc<dyn ChunkTier>>) -> Self {
        let metrics = Arc::new(ResolverMetrics::default());
        let store = core.store.as_ref().map(|s| Tier {
            tier: s.store.clone(),
            permits: s.permits.clone(),
            chain: metrics.new_tier(s.store.name()),
            node: core.node_tier(s.store.name()),
        });
        let concurrency = core.config.tier_concurrency.max(1);
        let tiers = tiers
            .into_iter()
            .map(|tier| Tier {
                chain: metrics.new_tier(tier.name()),
                node: core.node_tier(tier.name()),
                permits: Arc::new(Semaphore::new(concurrency)),
                tier,
            })
            .collect();
        Self {
            id: core.next_chain_id(),
            core,
            store,
            tiers,
            metrics,
            demand: watch::channel(0).0,
        }
    }

    /// A resolver of its own (no store, a core of its own) asking `tiers` in order: for tools
    /// that read one image once (`inspect`, tests).
    pub fn standalone(tiers: Vec<Arc<dyn ChunkTier>>, config: ResolverConfig) -> Self {
        Self::new(ResolverCore::without_store(config), tiers)
    }

    /// This chain's counters (the node's are [`ResolverCore::metrics`]).
    pub fn metrics(&self) -> &Arc<ResolverMetrics> {
        &self.metrics
    }

    /// The core this chain shares with the node's other chains.
    pub fn core(&self) -> &Arc<ResolverCore> {
        &self.core
    }

    fn bump(&self, f: impl Fn(&ResolverMetrics) -> &std::sync::atomic::AtomicU64, n: u64) {
        add(f(&self.metrics), n);
        add(f(&self.core.metrics), n);
    }

    /// Verified bytes of `chunk`.
    pub async fn read(&self, chunk: &ChunkRef) -> Result<Bytes, ReadError> {
        self.read_batch(std::slice::from_ref(chunk))
            .await
            .pop()
            .unwrap_or_else(|| Err(not_found(chunk)))
    }

    /// Verified bytes of every chunk of `chunks`, in order. Chunks nobody is fetching are
    /// fetched together (so a tier can merge neighbours into one request); chunks another
    /// reader (of any chain on the node) is already fetching are awaited, not fetched again.
    pub async fn read_batch(&self, chunks: &[ChunkRef]) -> Vec<Result<Bytes, ReadError>> {
        self.core.foreground.send_modify(|n| *n += 1);
        let _fg = Foreground(&self.core.foreground);
        self.read_batch_inner(chunks, Mode::Foreground).await
    }

    /// [`Resolver::read_batch`] for chunks fetched ahead of a sequential reader: decoded after
    /// the chunks readers wait for now.
    pub async fn read_batch_ahead(&self, chunks: &[ChunkRef]) -> Vec<Result<Bytes, ReadError>> {
        self.core.foreground.send_modify(|n| *n += 1);
        let _fg = Foreground(&self.core.foreground);
        self.read_batch_inner(chunks, Mode::Ahead).await
    }

    /// [`Resolver::read_batch`] for background work (prefetch, pull): it first lets reads that
    /// are fetching finish (waiting at most a second), so a read that misses jumps ahead, and
    /// it waits for room in the store's write-back queue rather than dropping a write.
    pub async fn read_batch_background(
        &self,
        chunks: &[ChunkRef],
    ) -> Vec<Result<Bytes, ReadError>> {
        let mut rx = self.core.foreground.subscribe();
        let _ = tokio::time::timeout(BACKGROUND_YIELD, rx.wait_for(|n| *n == 0)).await;
        self.read_batch_inner(chunks, Mode::Background).await
    }

    /// Wait until every verified chunk queued for the store so far is written.
    pub async fn flush(&self) {
        self.core.flush().await;
    }

    async fn read_batch_inner(
        &self,
        chunks: &[ChunkRef],
        mode: Mode,
    ) -> Vec<Result<Bytes, ReadError>> {
        let mut results: Vec<Outcome> = vec![None; chunks.len()];
        let mut waits = Vec::new();
        let mut lead = Leading {
            core: &self.core,
            senders: Vec::new(),
        };
        // The chunks this call fetches (one per digest) and, per result, which of them it is.
        let mut batch: Vec<ChunkRef> = Vec::new();
        let mut led: Vec<(usize, usize)> = Vec::new();
        {
            let mut map = self.core.inflight();
            for (i, c) in chunks.iter().enumerate() {
                if let Some(data) = self.core.cache.get(&c.digest) {
                    self.bump(|m| &m.cache_hits, 1);
                    results[i] = Some(Ok(data));
                    continue;
                }
                self.bump(|m| &m.cache_misses, 1);
                if let Some(pos) = batch.iter().position(|b| b.digest == c.digest) {
                    // The same chunk twice in one batch: fetched once, answered twice.
                    led.push((i, pos));
                } else if let Some(f) = map.get(&c.digest) {
                    self.bump(|m| &m.coalesced, 1);
                    waits.push((i, f.clone()));
                } else {
                    let (tx, rx) = watch::channel(None);
                    map.insert(c.digest, Inflight { rx, chain: self.id });
                    lead.senders.push((c.digest, tx));
                    batch.push(*c);
                    led.push((i, batch.len() - 1));
                }
            }
        }
        if !batch.is_empty() {
            let fetched = self.resolve(&batch, &lead.senders, mode).await;
            for ((_, tx), r) in lead.senders.iter().zip(&fetched) {
                tx.send_replace(Some(r.clone()));
            }
            for (i, pos) in led {
                results[i] = fetched.get(pos).cloned();
            }
        }
        drop(lead);
        for (i, mut f) in waits {
            let r = match f.rx.wait_for(|v| v.is_some()).await {
                Ok(v) => v.clone(),
                Err(_) => None,
            };
            results[i] = Some(match r {
                Some(Ok(data)) => Ok(data),
                // A leader of another chain could not get it through its tiers; ours may.
                Some(Err(_)) if f.chain != self.id => Box::pin(self.read(&chunks[i])).await,
                Some(Err(e)) => Err(e),
                // The leader was cancelled before it finished: fetch it ourselves.
                None => Box::pin(self.read(&chunks[i])).await,
            });
        }
        results
            .into_iter()
            .zip(chunks)
            .map(|(r, c)| r.unwrap_or_else(|| Err(not_found(c))))
            .collect()
    }

    /// Fetch `batch` through the store and then the tiers in order; each is asked for what is
    /// still missing, and a tier is asked again (up to `verify_retries` times) for chunks it
    /// sent bad bytes for when it says so.
    async fn resolve(
        &self,
        batch: &[ChunkRef],
        waiting: &[(dfagent_core::ChunkDigest, watch::Sender<Outcome>)],
        mode: Mode,
    ) -> Vec<Result<Bytes, ReadError>> {
        let mut st = BatchState {
            done: vec![None; batch.len()],
            waiting,
            corrupt: vec![None; batch.len()],
            errors: vec![Vec::new(); batch.len()],
        };
        // A read counts from here, before its first await, so read-ahead started with it sees
        // it (a store hit ends it within a store lookup).
        let _demand = (mode == Mode::Foreground).then(|| {
            self.demand.send_modify(|n| *n += 1);
            Foreground(&self.demand)
        });
        if let Some(store) = &self.store {
            let pending: Vec<usize> = (0..batch.len()).collect();
            self.ask_tier(store, true, batch, &pending, &mut st, mode)
                .await;
        }
        if mode == Mode::Ahead && st.done.iter().any(Option::is_none) && !self.tiers.is_empty() {
            let mut rx = self.demand.subscribe();
            let _ = tokio::time::timeout(AHEAD_YIELD, rx.wait_for(|n| *n == 0)).await;
        }
        for tier in &self.tiers {
            let mut pending: Vec<usize> =
                (0..batch.len()).filter(|&i| st.done[i].is_none()).collect();
            for attempt in 0..=self.core.config.verify_retries {
                if pending.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tracing::info!(
                        tier = tier.tier.name(),
                        chunks = pending.len(),
                        attempt,
                        "asking the tier again for chunks that failed verification"
                    );
                }
                pending = self
                    .ask_tier(tier, false, batch, &pending, &mut st, mode)
                    .await;
            }
        }
        let BatchState {
            done,
            corrupt,
            errors,
            ..
        } = st;
        done.into_iter()
            .zip(corrupt)
            .zip(errors)
            .zip(batch)
            .map(|(((d, bad), errs), chunk)| match d {
                Some(data) => Ok(data),
                None => {
                    self.bump(|m| &m.unavailable, 1);
                    Err(match (bad, errs.is_empty()) {
                        (Some(detail), _) => ReadError::Corrupt {
                            digest: chunk.digest,
                            detail,
                        },
                        (None, false) => ReadError::TierFailed {
                            digest: chunk.digest,
                            detail: errs
                                .iter()
                                .map(|e| e.to_string())
                                .collect::<Vec<_>>()
                                .join("; "),
                        },
                        (None, true) => not_found(chunk),
                    })
                }
            })
            .collect()
    }

    /// Ask one tier for the chunks `pending` (indices into `batch`) once and record what it
    /// delivered in `st`. Returns the indices the tier asked to be asked again for (bad bytes).
    async fn ask_tier(
        &self,
        tier: &Tier,
        is_store: bool,
        batch: &[ChunkRef],
        pending: &[usize],
        st: &mut BatchState<'_>,
        mode: Mode,
    ) -> Vec<usize> {
        let mut slots: Vec<Slot> = pending
            .iter()
            .map(|&i| {
                let mut slot = Slot::new(batch[i]);
                slot.set_background(mode == Mode::Background);
                slot
            })
            .collect();
        self.bump(|m| &m.fetches, slots.len() as u64);
        let started = Instant::now();
        {
            let _permit = tier.permits.acquire().await;
            tier.tier.fetch(&mut slots).await;
        }
        tier.each(|m| m.request(started.elapsed()));
        let name = tier.tier.name();
        // Queue every answer for the decoder threads (they work in parallel), then collect.
        let mut decodes = Vec::new();
        let mut failures: Vec<(String, usize)> = Vec::new();
        for (&i, slot) in pending.iter().zip(slots.iter_mut()) {
            match slot.take_answer() {
                Answer::Missing => {}
                Answer::Failed(e) => {
                    self.bump(|m| &m.tier_errors, 1);
                    tier.each(|m| m.error(e.kind));
                    match failures.iter_mut().find(|(msg, _)| *msg == e.to_string()) {
                        Some((_, n)) => *n += 1,
                        None => failures.push((e.to_string(), 1)),
                    }
                    st.errors[i].push(e);
                }
                Answer::Found(stored) => {
                    let len = stored.data.len() as u64;
                    self.bump(|m| &m.bytes_fetched, len);
                    let encoded = batch[i].with_encoding(stored.compression, len as u32);
                    let task = self.core.decoder.decode(
                        encoded,
                        stored.data.clone(),
                        match mode {
                            Mode::Foreground => Class::Read,
                            Mode::Ahead => Class::Ahead,
                            Mode::Background => Class::Background,
                        },
                    );
                    decodes.push((i, stored, task));
                }
            }
        }
        for (message, chunks) in failures {
            tracing::warn!(tier = name, chunks, error = %message, "tier failed to get chunks");
        }
        let mut again = Vec::new();
        for (i, stored, task) in decodes {
            let chunk = &batch[i];
            match task.await {
                Ok(data) => {
                    self.bump(|m| &m.bytes_decoded, data.len() as u64);
                    let len = stored.data.len() as u64;
                    tier.each(|m| {
                        add(&m.chunks, 1);
                        add(&m.bytes, len);
                    });
                    self.core.cache.insert(chunk.digest, data.clone());
                    if let Some((_, tx)) = st.waiting.get(i) {
                        tx.send_replace(Some(Ok(data.clone())));
                    }
                    if !is_store {
                        self.keep(chunk, stored, mode).await;
                    }
                    st.corrupt[i] = None;
                    st.done[i] = Some(data);
                }
                Err(e) => {
                    self.bump(|m| &m.verify_failures, 1);
                    tier.each(|m| add(&m.verify_failures, 1));
                    tracing::error!(
                        tier = name,
                        chunk = %chunk.digest,
                        blob = %chunk.blob,
                        blob_offset = chunk.compressed_offset,
                        error = %e,
                        "chunk failed verification; its bytes are dropped"
                    );
                    st.corrupt[i] = Some(format!("{name} sent bad bytes: {e}"));
                    if is_store {
                        self.reject_from_store(chunk, &e).await;
                    } else if tier.tier.bad_answer(chunk, &e) == Retry::AskAgain {
                        again.push(i);
                    }
                }
            }
        }
        again
    }

    /// Queue a verified chunk for the store (off the reader's path).
    async fn keep(&self, chunk: &ChunkRef, stored: StoredChunk, mode: Mode) {
        self.core
            .write_back(chunk, stored, mode == Mode::Background, &self.metrics)
            .await;
    }

    async fn reject_from_store(&self, chunk: &ChunkRef, detail: &str) {
        let Some(s) = &self.core.store else { return };
        let (store, chunk, detail) = (s.store.clone(), *chunk, detail.to_string());
        let _ = tokio::task::spawn_blocking(move || store.reject(&chunk, &detail)).await;
    }
}

fn not_found(chunk: &ChunkRef) -> ReadError {
    ReadError::NotFound {
        digest: chunk.digest,
        blob: chunk.blob,
        offset: chunk.compressed_offset,
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

    fn read_ahead<'a>(
        &'a self,
        chunks: &'a [ChunkRef],
    ) -> BoxFuture<'a, Vec<Result<Bytes, ReadError>>> {
        Box::pin(self.read_batch_ahead(chunks))
    }
}
