//! Counters of the resolver, overall and per tier, readable at any time as snapshots. They are
//! plain atomics: whoever exports them (the node's Prometheus endpoint, `-v` output) reads
//! snapshots; this crate knows no exporter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dfagent_core::TierErrorKind;

/// Upper bounds (µs) of the tier request latency histogram's buckets; the last bucket is open.
pub const TIER_LATENCY_BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Live counters of one tier.
#[derive(Debug, Default)]
pub struct TierMetrics {
    name: String,
    pub(crate) requests: AtomicU64,
    pub(crate) chunks: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) verify_failures: AtomicU64,
    pub(crate) latency_us: AtomicU64,
    errors_by_kind: [AtomicU64; TierErrorKind::ALL.len()],
    /// Requests per latency bucket; one more than the bounds (the open bucket).
    latency_buckets: [AtomicU64; TIER_LATENCY_BUCKETS_US.len() + 1],
}

impl TierMetrics {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Default::default()
        }
    }

    pub(crate) fn request(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        self.requests.fetch_add(1, Relaxed);
        self.latency_us.fetch_add(us, Relaxed);
        let b = TIER_LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(TIER_LATENCY_BUCKETS_US.len());
        self.latency_buckets[b].fetch_add(1, Relaxed);
    }

    pub(crate) fn error(&self, kind: TierErrorKind) {
        self.errors.fetch_add(1, Relaxed);
        self.errors_by_kind[kind.index()].fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> TierStats {
        TierStats {
            name: self.name.clone(),
            requests: self.requests.load(Relaxed),
            chunks: self.chunks.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            errors: self.errors.load(Relaxed),
            verify_failures: self.verify_failures.load(Relaxed),
            latency_us: self.latency_us.load(Relaxed),
            errors_by_kind: TierErrorKind::ALL
                .iter()
                .map(|k| (*k, self.errors_by_kind[k.index()].load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            latency_buckets: self
                .latency_buckets
                .iter()
                .map(|b| b.load(Relaxed))
                .collect(),
        }
    }
}

/// A snapshot of one tier's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Tier name.
    pub name: String,
    /// Requests (batches) sent.
    pub requests: u64,
    /// Verified chunks it delivered.
    pub chunks: u64,
    /// Stored bytes of the verified chunks it delivered.
    pub bytes: u64,
    /// Chunks it failed to get (answers of [`dfagent_core::Answer::Failed`]).
    pub errors: u64,
    /// Chunks it sent that failed verification.
    pub verify_failures: u64,
    /// Total time spent in its requests, µs.
    pub latency_us: u64,
    /// Failures by kind (kinds with none left out).
    pub errors_by_kind: Vec<(TierErrorKind, u64)>,
    /// Requests per latency bucket ([`TIER_LATENCY_BUCKETS_US`], then the open bucket); not
    /// cumulative.
    pub latency_buckets: Vec<u64>,
}

/// Live counters, updated without locks (the tier list's lock is taken only when a tier is added
/// and when a snapshot is taken).
#[derive(Default, Debug)]
pub struct ResolverMetrics {
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
    pub(crate) fetches: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) bytes_fetched: AtomicU64,
    pub(crate) bytes_decoded: AtomicU64,
    pub(crate) verify_failures: AtomicU64,
    pub(crate) tier_errors: AtomicU64,
    pub(crate) unavailable: AtomicU64,
    pub(crate) writes_queued: AtomicU64,
    pub(crate) writes_dropped: AtomicU64,
    pub(crate) writes_failed: AtomicU64,
    tiers: Mutex<Vec<Arc<TierMetrics>>>,
}

/// A snapshot of the resolver's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Chunks answered from the decoded-chunk cache.
    pub cache_hits: u64,
    /// Chunks not in the decoded-chunk cache (fetched, or waited for).
    pub cache_misses: u64,
    /// Chunk requests sent to tiers.
    pub fetches: u64,
    /// Reads that waited on a fetch already in flight instead of starting one.
    pub coalesced: u64,
    /// Stored bytes received from tiers.
    pub bytes_fetched: u64,
    /// Bytes of verified chunks produced.
    pub bytes_decoded: u64,
    /// Chunks a tier sent that failed decoding or verification.
    pub verify_failures: u64,
    /// Chunks a tier failed to get.
    pub tier_errors: u64,
    /// Chunks no tier could supply.
    pub unavailable: u64,
    /// Verified chunks queued for the store.
    pub writes_queued: u64,
    /// Verified chunks not written to the store because the write-back queue was full.
    pub writes_dropped: u64,
    /// Store writes that failed.
    pub writes_failed: u64,
    /// Per tier, in the order they were first used.
    pub tiers: Vec<TierStats>,
}

impl ResolverStats {
    /// The counters of tier `name`, if it exists.
    pub fn tier(&self, name: &str) -> Option<&TierStats> {
        self.tiers.iter().find(|t| t.name == name)
    }
}

impl ResolverMetrics {
    /// The counters of tier `name`: a new set per call (one per tier of a chain).
    pub(crate) fn new_tier(&self, name: &str) -> Arc<TierMetrics> {
        let t = Arc::new(TierMetrics::new(name));
        self.lock_tiers().push(t.clone());
        t
    }

    /// The counters of tier `name`, shared by every caller asking for that name (node-wide
    /// totals across chains).
    pub(crate) fn shared_tier(&self, name: &str) -> Arc<TierMetrics> {
        let mut tiers = self.lock_tiers();
        if let Some(t) = tiers.iter().find(|t| t.name == name) {
            return t.clone();
        }
        let t = Arc::new(TierMetrics::new(name));
        tiers.push(t.clone());
        t
    }

    fn lock_tiers(&self) -> std::sync::MutexGuard<'_, Vec<Arc<TierMetrics>>> {
        self.tiers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current values.
    pub fn snapshot(&self) -> ResolverStats {
        let tiers = self.lock_tiers().iter().map(|t| t.snapshot()).collect();
        ResolverStats {
            cache_hits: self.cache_hits.load(Relaxed),
            cache_misses: self.cache_misses.load(Relaxed),
            fetches: self.fetches.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            bytes_fetched: self.bytes_fetched.load(Relaxed),
            bytes_decoded: self.bytes_decoded.load(Relaxed),
            verify_failures: self.verify_failures.load(Relaxed),
            tier_errors: self.tier_errors.load(Relaxed),
            unavailable: self.unavailable.load(Relaxed),
            writes_queued: self.writes_queued.load(Relaxed),
            writes_dropped: self.writes_dropped.load(Relaxed),
            writes_failed: self.writes_failed.load(Relaxed),
            tiers,
        }
    }
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}
