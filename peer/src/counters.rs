//! Counters of the peer node, for metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the peer node did, as atomics the node's metrics read.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Peers connected now (a gauge).
    pub peers_connected: AtomicU64,
    /// Provider lookups in the DHT.
    pub provider_lookups: AtomicU64,
    /// Sum of the lookups' durations, in microseconds.
    pub lookup_seconds_sum_micros: AtomicU64,
    /// Lookups timed (the count for `lookup_seconds_sum_micros`).
    pub lookup_count: AtomicU64,
    /// Chunks fetched from peers.
    pub chunks_fetched: AtomicU64,
    /// Stored bytes fetched from peers.
    pub bytes_fetched: AtomicU64,
    /// Chunks served to peers.
    pub chunks_served: AtomicU64,
    /// Stored bytes served to peers.
    pub bytes_served: AtomicU64,
    /// Peers banned (bad chunk or protocol error).
    pub bans: AtomicU64,
    /// BUSY answers (whole requests or chunks) sent.
    pub busy_answers_sent: AtomicU64,
    /// BUSY answers (whole requests or chunks) received.
    pub busy_answers_received: AtomicU64,
    /// Local chunks that failed verification before serving (dropped from the store).
    pub tampered_local: AtomicU64,
    /// Protocol errors, ours to see (malformed requests or answers, stalls).
    pub protocol_errors: AtomicU64,
    /// Requests refused for being over a limit.
    pub refused_requests: AtomicU64,
    /// Requests to peers that failed on the network (connection, timeout).
    pub network_errors: AtomicU64,
    /// Requests waiting for a serve thread or being read and verified on one now (a gauge).
    pub serve_pending: AtomicU64,
}

impl PeerCounters {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(c: &AtomicU64, n: u64) {
        c.fetch_sub(n, Ordering::Relaxed);
    }

    /// Read one counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
