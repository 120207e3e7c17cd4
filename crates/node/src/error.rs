//! Errors of the node library: what went wrong, with the subsystem's own error inside.

use std::path::PathBuf;

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The containerd snapshotter failed (its table, its directories, an image mount).
    #[error("snapshotter: {0}")]
    Snapshotter(#[from] dfagent_containerd::SnapshotterError),
    /// The chunk store refused (another owner, a full disk, a broken database).
    #[error("chunk store: {0}")]
    Store(#[from] dfagent_store::StoreError),
    /// The registry refused or could not be reached.
    #[error(transparent)]
    Registry(#[from] dfagent_registry::RegistryError),
    /// The peer network could not start.
    #[error("peer network: {0}")]
    Peer(#[from] dfagent_peer::PeerError),
    /// The Dragonfly client could not start or a scheduler call failed.
    #[error("Dragonfly: {0}")]
    Dragonfly(#[from] dfagent_scheduler_client::DragonflyError),
    /// A bootstrap that does not parse.
    #[error("image metadata: {0}")]
    Rafs(#[from] dfagent_rafs::RafsError),
    /// The reference did not resolve, and the store has no copy of it.
    #[error("resolving {reference}: {detail}")]
    Resolve {
        /// The reference.
        reference: String,
        /// What went wrong.
        detail: String,
    },
    /// The image is inconsistent (a bootstrap naming blobs the manifest lacks, …).
    #[error("{reference}: {detail}")]
    BadImage {
        /// The image.
        reference: String,
        /// What is wrong.
        detail: String,
    },
    /// The mount point cannot be used as it is.
    #[error("mount point {path}: {detail}")]
    Mountpoint {
        /// The mount point.
        path: PathBuf,
        /// Why not.
        detail: String,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A job did not finish in the time it was given.
    #[error("{what}: not done within {limit:?}: {detail}")]
    Timeout {
        /// The job.
        what: String,
        /// Its time limit.
        limit: std::time::Duration,
        /// How far it got.
        detail: String,
    },
    /// The node was asked for something it is not set up for (e.g. a registry image on a node
    /// opened without a store).
    #[error("{0}")]
    Unsupported(String),
}

impl NodeError {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        NodeError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result of node operations.
pub type Result<T, E = NodeError> = std::result::Result<T, E>;
