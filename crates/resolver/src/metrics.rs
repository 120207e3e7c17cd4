//! Counters of the resolver, readable at any time as a [`ResolverStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
}

/// A snapshot of the resolver's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Reads answered from the decoded-chunk cache.
    pub cache_hits: u64,
    /// Chunk fetches sent to tiers.
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
}

impl ResolverMetrics {
    /// Current values.
    pub fn snapshot(&self) -> ResolverStats {
        ResolverStats {
            cache_hits: self.cache_hits.load(Relaxed),
            fetches: self.fetches.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            bytes_fetched: self.bytes_fetched.load(Relaxed),
            bytes_decoded: self.bytes_decoded.load(Relaxed),
            verify_failures: self.verify_failures.load(Relaxed),
            tier_errors: self.tier_errors.load(Relaxed),
            unavailable: self.unavailable.load(Relaxed),
        }
    }
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}
