//! The node's chunk store: chunks kept in RocksDB under their digest, as they arrived (still
//! compressed), with what is needed to decode and verify them; per-image pins so a mounted
//! image's chunks are evicted last; a capacity with least-recently-used eviction; small metadata
//! records (manifests, bootstraps) for offline mounts. One process owns a store at a time.
//!
//! [`StoreTier`] makes it a resolver tier (`ChunkSource`) and sink (`ChunkSink`).

mod error;
mod layout;
mod lock;
mod lru;
mod store;
mod tier;

pub use error::StoreError;
pub use store::{Store, StoreConfig, StoreStats, StoredValue, VerifyReport};
pub use tier::StoreTier;
