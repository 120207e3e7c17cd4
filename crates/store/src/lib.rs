//! The node's chunk store: chunks kept under their digest, as they arrived (still compressed),
//! with what is needed to decode and verify them — small chunks in RocksDB, chunks of at least
//! [`StoreConfig::file_min_size`] bytes in files of their own beside it (RocksDB keeps their
//! header; the file is written before its record, so a record never names a partial file);
//! per-image pins so a mounted
//! image's chunks are evicted last; a capacity with least-recently-used eviction; small metadata
//! records (image records, bootstraps, pulled marks) for offline mounts. One process owns a
//! store at a time.
//!
//! Blob inventory: every chunk is recorded with the blob it first arrived from, and the store
//! keeps a count of chunks held per blob ([`Store::blobs`]), rebuilt at open from the same
//! records the eviction index is. A listener ([`Store::set_blob_listener`]) hears when a blob
//! becomes held (its first chunk) and gone (its last chunk evicted or removed): the peer network
//! announces and withdraws blobs from that.
//!
//! [`StoreTier`] puts it in the resolver's store role (`dfagent_core::ChunkStore`). This crate
//! must not know the registry, the resolver or FUSE: it stores bytes under digests and opaque
//! records under typed keys.

mod bufs;
mod error;
mod layout;
mod lock;
mod lru;
mod store;
mod tier;

pub use error::StoreError;
#[doc(hidden)]
pub use store::PutHook;
pub use store::{
    BlobEvent, BlobListener, GcReport, Store, StoreConfig, StoreStats, StoredValue, VerifyReport,
    BLOCK_CACHE_BUDGET, FILE_MIN_SIZE, MEMORY_BUDGET, MEMTABLE_BUDGET,
};
pub use tier::StoreTier;
