//! Errors of the chunk store.

use std::path::PathBuf;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store.
    #[error("chunk store {path} is in use by {owner}; stop it first (one process owns a store)")]
    Locked {
        /// The store directory.
        path: PathBuf,
        /// Who holds it, as it recorded itself (pid and command line).
        owner: String,
    },
    /// File system trouble around the store (lock file, directory).
    #[error("chunk store {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// RocksDB reported an error.
    #[error("chunk store database: {0}")]
    Db(#[from] rocksdb::Error),
    /// A record on disk does not parse (the chunk is dropped and fetched again).
    #[error("chunk store record {key}: {detail}")]
    BadRecord {
        /// Which record.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The chunk cannot fit even in an empty store, or only pinned chunks are left to evict
    /// and pinned chunks may not be evicted.
    #[error("chunk store full: {0}")]
    Full(String),
}

impl StoreError {
    /// The database's own files are damaged (a checksum or format check failed): the store
    /// cannot be trusted as a whole, though every chunk in it is still checked by digest.
    pub fn is_corruption(&self) -> bool {
        matches!(self, StoreError::Db(e) if e.kind() == rocksdb::ErrorKind::Corruption)
    }
}
