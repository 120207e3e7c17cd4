//! Errors of the snapshotter and of the pull, and the gRPC status containerd sees for each.

use std::path::PathBuf;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotterError {
    /// No snapshot by that name.
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    /// A snapshot by that name exists already.
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// The request conflicts with the snapshot's state (e.g. removing one with children).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// The image of a Nydus layer could not be mounted or unmounted.
    #[error("image {image}: {detail}")]
    ImageMount {
        /// The image.
        image: String,
        /// Why.
        detail: String,
    },
    /// The metadata table on disk is damaged.
    #[error("snapshot table {path}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A file system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// containerd answered a request of the pull with an error.
    #[error("containerd {call}: {status}")]
    Containerd {
        /// The call.
        call: &'static str,
        /// containerd's answer (its message only).
        status: String,
        /// Its code.
        code: tonic::Code,
    },
    /// containerd could not be reached.
    #[error("connecting to containerd at {address}: {detail}")]
    Connect {
        /// The socket.
        address: String,
        /// Why.
        detail: String,
    },
    /// The registry refused or failed a read of the pull.
    #[error(transparent)]
    Registry(#[from] dfagent_registry::RegistryError),
    /// The image's manifest or config is not what a pull can use.
    #[error("image {reference}: {detail}")]
    Image {
        /// The reference.
        reference: String,
        /// What is wrong.
        detail: String,
    },
}

/// Shorthand.
pub type Result<T, E = SnapshotterError> = std::result::Result<T, E>;

impl SnapshotterError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// The code containerd maps to its own error kinds (`errdefs.FromGRPC`).
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Self::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Self::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Self::ImageMount { .. } => tonic::Code::Unavailable,
            Self::Containerd { code, .. } => *code,
            Self::Connect { .. } => tonic::Code::Unavailable,
            Self::Corrupt { .. } | Self::Io { .. } => tonic::Code::Internal,
            Self::Registry(_) | Self::Image { .. } => tonic::Code::FailedPrecondition,
        }
    }
}

impl From<SnapshotterError> for tonic::Status {
    fn from(e: SnapshotterError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

impl From<crate::filter::FilterError> for SnapshotterError {
    fn from(e: crate::filter::FilterError) -> Self {
        Self::InvalidArgument(e.to_string())
    }
}
