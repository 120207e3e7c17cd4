//! Counters of the filesystem: requests, bytes served, errors, and a read latency histogram.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (µs) of the read latency histogram buckets; the last bucket is unbounded.
pub const LATENCY_BUCKETS_US: [u64; 7] = [50, 200, 1_000, 5_000, 20_000, 100_000, 1_000_000];

/// The FUSE operations counted one by one (`dfagent_fuse_requests_total{op}`).
pub const OPS: [&str; 14] = [
    "lookup",
    "getattr",
    "readlink",
    "open",
    "read",
    "release",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "statfs",
    "getxattr",
    "listxattr",
    "access",
];

/// Live counters, updated without locks.
#[derive(Debug, Default)]
pub struct FsMetrics {
    requests: AtomicU64,
    ops: [AtomicU64; OPS.len()],
    read_latency_sum_us: AtomicU64,
    reads: AtomicU64,
    bytes_served: AtomicU64,
    read_errors: AtomicU64,
    readahead_chunks: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

/// A snapshot of [`FsMetrics`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    /// All FUSE requests answered.
    pub requests: u64,
    /// Read requests.
    pub reads: u64,
    /// Bytes returned by reads.
    pub bytes_served: u64,
    /// Reads answered with an error (EIO).
    pub read_errors: u64,
    /// Chunks asked for ahead of sequential readers.
    pub readahead_chunks: u64,
    /// Read latency counts per bucket of [`LATENCY_BUCKETS_US`] (plus one overflow bucket).
    pub read_latency: Vec<u64>,
    /// Sum of read latencies, µs.
    pub read_latency_sum_us: u64,
    /// Requests per operation of [`OPS`] (operations never asked for left out).
    pub ops: Vec<(&'static str, u64)>,
}

impl FsMetrics {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    /// Count one request of operation `op` (a name of [`OPS`]; others count only in the
    /// total).
    pub(crate) fn op(&self, op: &str) {
        self.requests.fetch_add(1, Relaxed);
        if let Some(i) = OPS.iter().position(|o| *o == op) {
            self.ops[i].fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn readahead(&self, chunks: usize) {
        self.readahead_chunks.fetch_add(chunks as u64, Relaxed);
    }

    pub(crate) fn read_done(&self, bytes: Option<usize>, took: Duration) {
        self.reads.fetch_add(1, Relaxed);
        match bytes {
            Some(n) => {
                self.bytes_served.fetch_add(n as u64, Relaxed);
            }
            None => {
                self.read_errors.fetch_add(1, Relaxed);
            }
        }
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        self.read_latency_sum_us.fetch_add(us, Relaxed);
        let b = LATENCY_BUCKETS_US
            .iter()
            .position(|&limit| us <= limit)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.latency[b].fetch_add(1, Relaxed);
    }

    /// Current values.
    pub fn snapshot(&self) -> FsStats {
        FsStats {
            requests: self.requests.load(Relaxed),
            reads: self.reads.load(Relaxed),
            bytes_served: self.bytes_served.load(Relaxed),
            read_errors: self.read_errors.load(Relaxed),
            readahead_chunks: self.readahead_chunks.load(Relaxed),
            read_latency: self.latency.iter().map(|c| c.load(Relaxed)).collect(),
            read_latency_sum_us: self.read_latency_sum_us.load(Relaxed),
            ops: OPS
                .iter()
                .zip(&self.ops)
                .map(|(op, n)| (*op, n.load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}
