//! Chunk resolution: a [`Resolver`] asks the node's store and then its tiers ([`ChunkTier`]s
//! such as [`BlobDirTier`]) for chunks by reference, decodes and verifies every answer, keeps
//! verified chunks in one bounded cache shared node-wide ([`ResolverCore`]), queues them for the
//! store off the reader's path, and hands them out as a [`ChunkReader`]. [`check`] verifies a
//! whole image against a blob directory; [`prefetch`] fills a mounted image in the background.
//!
//! This crate must not know which tiers exist (registry, peers, Dragonfly: it sees only
//! [`ChunkTier`] and [`ChunkStore`]), nor FUSE, nor how metrics are exported.
//!
//! [`ChunkTier`]: dfagent_core::ChunkTier
//! [`ChunkStore`]: dfagent_core::ChunkStore
//! [`ChunkReader`]: dfagent_core::ChunkReader

mod blobdir;
pub mod check;
mod decode;
mod metrics;
pub mod prefetch;
mod resolver;
mod shared;
mod writeback;

pub use blobdir::BlobDirTier;
pub use metrics::{ResolverMetrics, ResolverStats, TierStats, TIER_LATENCY_BUCKETS_US};
pub use resolver::Resolver;
pub use shared::{ResolverConfig, ResolverCore};
