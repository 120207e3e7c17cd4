//! Counters of the filesystem: requests, bytes served, errors, and a read latency histogram.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (µs) of the read latency histogram buckets; the last bucket is unbounded.
pub const LATENCY_BUCKETS_US: [u64; 7] = [50, 200, 1_000, 5_000, 20_000, 100_000, 1_000_000];

/// Live counters, updated without locks.
#[derive(Debug, Default)]
pub struct FsMetrics {
    requests: AtomicU64,
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
}

impl FsMetrics {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
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
        let us = took.as_micros() as u64;
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
        }
    }
}
