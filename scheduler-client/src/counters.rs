//! Counters of the Dragonfly client, for metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use dfagent_core::TierErrorKind;

/// What the Dragonfly client did, as atomics the node's metrics read (through
/// [`DragonflyCounters::snapshot`]).
#[derive(Debug, Default)]
pub struct DragonflyCounters {
    /// Range requests sent to seeds.
    pub requests: AtomicU64,
    /// Range requests answered right (206, the range asked, every byte).
    pub requests_ok: AtomicU64,
    /// Stored bytes received from seeds (answered to the resolver).
    pub bytes: AtomicU64,
    /// Chunks answered.
    pub chunks: AtomicU64,
    /// Failed range requests by [`TierErrorKind`] (indexed by [`TierErrorKind::index`]).
    pub errors: [AtomicU64; 8],
    /// Chunks from a seed that failed the resolver's verification.
    pub verification_failures: AtomicU64,
    /// Times a seed was put on avoidance (bad bytes or errors).
    pub avoidances: AtomicU64,
    /// 401s relayed from the registry (the origin was told to authenticate again).
    pub credentials_refused: AtomicU64,
    /// `ListHosts` calls that succeeded.
    pub refreshes: AtomicU64,
    /// `ListHosts` rounds where no scheduler answered.
    pub refresh_failures: AtomicU64,
    /// Hosts of `ListHosts` answers rejected by validation (normal peers included).
    pub hosts_rejected: AtomicU64,
    /// Seed health checks that failed.
    pub health_failures: AtomicU64,
    /// Seeds known now (a gauge).
    pub seeds_known: AtomicU64,
    /// Seeds healthy now (a gauge).
    pub seeds_healthy: AtomicU64,
}

/// A copy of [`DragonflyCounters`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Range requests sent to seeds.
    pub requests: u64,
    /// Range requests answered right.
    pub requests_ok: u64,
    /// Stored bytes received from seeds.
    pub bytes: u64,
    /// Chunks answered.
    pub chunks: u64,
    /// Failed range requests per kind, in [`TierErrorKind::ALL`] order.
    pub errors: Vec<(TierErrorKind, u64)>,
    /// Chunks that failed verification.
    pub verification_failures: u64,
    /// Avoidances started.
    pub avoidances: u64,
    /// 401s relayed from the registry.
    pub credentials_refused: u64,
    /// Successful `ListHosts` calls.
    pub refreshes: u64,
    /// Rounds where no scheduler answered.
    pub refresh_failures: u64,
    /// Hosts rejected by validation.
    pub hosts_rejected: u64,
    /// Failed seed health checks.
    pub health_failures: u64,
    /// Seeds known.
    pub seeds_known: u64,
    /// Seeds healthy.
    pub seeds_healthy: u64,
}

impl DragonflyCounters {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(c: &AtomicU64, n: u64) {
        c.store(n, Ordering::Relaxed);
    }

    pub(crate) fn error(&self, kind: TierErrorKind) {
        Self::inc(&self.errors[kind.index()]);
    }

    /// Read one counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Every counter, read now.
    pub fn snapshot(&self) -> CountersSnapshot {
        let g = Self::get;
        CountersSnapshot {
            requests: g(&self.requests),
            requests_ok: g(&self.requests_ok),
            bytes: g(&self.bytes),
            chunks: g(&self.chunks),
            errors: TierErrorKind::ALL
                .iter()
                .map(|k| (*k, g(&self.errors[k.index()])))
                .collect(),
            verification_failures: g(&self.verification_failures),
            avoidances: g(&self.avoidances),
            credentials_refused: g(&self.credentials_refused),
            refreshes: g(&self.refreshes),
            refresh_failures: g(&self.refresh_failures),
            hosts_rejected: g(&self.hosts_rejected),
            health_failures: g(&self.health_failures),
            seeds_known: g(&self.seeds_known),
            seeds_healthy: g(&self.seeds_healthy),
        }
    }
}
