//! Chunk resolution: a [`Resolver`] asks its tiers ([`ChunkSource`]s such as [`BlobDirSource`])
//! for a chunk by reference, decodes and verifies what they send, keeps verified chunks in one
//! bounded cache, and hands them out as a [`ChunkReader`]. [`check`] verifies a whole image
//! against a blob directory.
//!
//! [`ChunkSource`]: dfagent_core::ChunkSource
//! [`ChunkReader`]: dfagent_core::ChunkReader

mod blobdir;
pub mod check;
mod metrics;
pub mod prefetch;
mod resolver;

pub use blobdir::BlobDirSource;
pub use metrics::{ResolverMetrics, ResolverStats, TierStats};
pub use resolver::{Resolver, ResolverConfig, StoreTier};
