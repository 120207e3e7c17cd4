//! Counters of the resolver, overall and per tier, readable at any time as snapshots.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

impl TierMetrics {
    pub(crate) fn request(&self, took: Duration) {
        self.requests.fetch_add(1, Relaxed);
        self.latency_us.fetch_add(took.as_micros() as u64, Relaxed);
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
    /// Stored bytes it delivered.
    pub bytes: u64,
    /// Requests that failed outright.
    pub errors: u64,
    /// Chunks it sent that failed verification.
    pub verify_failures: u64,
    /// Total time spent in its requests, µs.
    pub latency_us: u64,
}

/// Live counters, updated without locks.
#[derive(Default, Debug)]
pub struct ResolverMetrics {
    pub(crate) cache_hits: AtomicU64,
    pub(crate) fetches: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) bytes_fetched: AtomicU64,
    pub(crate) bytes_decoded: AtomicU64,
    pub(crate) verify_failures: AtomicU64,
    pub(crate) tier_errors: AtomicU64,
    pub(crate) unavailable: AtomicU64,
    tiers: Mutex<Vec<Arc<TierMetrics>>>,
}

/// A snapshot of the resolver's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Reads answered from the decoded-chunk cache.
    pub cache_hits: u64,
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
    /// Tier requests that failed outright.
    pub tier_errors: u64,
    /// Chunks no tier could supply.
    pub unavailable: u64,
    /// Per tier, in resolution order.
    pub tiers: Vec<TierStats>,
}

impl ResolverMetrics {
    pub(crate) fn tier(&self, name: &str) -> Arc<TierMetrics> {
        let t = Arc::new(TierMetrics {
            name: name.to_string(),
            ..Default::default()
        });
        self.tiers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(t.clone());
        t
    }

    /// Current values.
    pub fn snapshot(&self) -> ResolverStats {
        let tiers = self
            .tiers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|t| TierStats {
                name: t.name.clone(),
                requests: t.requests.load(Relaxed),
                chunks: t.chunks.load(Relaxed),
                bytes: t.bytes.load(Relaxed),
                errors: t.errors.load(Relaxed),
                verify_failures: t.verify_failures.load(Relaxed),
                latency_us: t.latency_us.load(Relaxed),
            })
            .collect();
        ResolverStats {
            cache_hits: self.cache_hits.load(Relaxed),
            fetches: self.fetches.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            bytes_fetched: self.bytes_fetched.load(Relaxed),
            bytes_decoded: self.bytes_decoded.load(Relaxed),
            verify_failures: self.verify_failures.load(Relaxed),
            tier_errors: self.tier_errors.load(Relaxed),
            unavailable: self.unavailable.load(Relaxed),
            tiers,
        }
    }
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}
