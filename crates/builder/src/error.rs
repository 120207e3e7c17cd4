//! Errors of the builder: what went wrong and where (layer, tar entry, file).

/// Result of builder operations.
pub type Result<T, E = BuildError> = std::result::Result<T, E>;

/// Everything that can stop a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file (or stream) concerned.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A layer's tar stream is malformed (bad header, checksum, number, truncation).
    #[error("malformed tar at byte {offset}: {detail}")]
    Tar {
        /// Offset in the uncompressed tar stream.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A tar entry is well-formed but cannot be applied (`..` in its path, a hard link to a
    /// missing file, a parent that is not a directory, an absurd size).
    #[error("tar entry {path:?}: {detail}")]
    Entry {
        /// The entry's path as written in the tar.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// A tar entry's POSIX ACL text (`SCHILY.acl.access` / `SCHILY.acl.default`, written by
    /// `tar --acls`) is not a valid ACL. (Named entries without a numeric id are not an error:
    /// they are dropped with a warning.)
    #[error("tar entry {path:?}: malformed {which} ACL text")]
    Acl {
        /// The entry's path as written in the tar.
        path: String,
        /// `access` or `default`.
        which: &'static str,
        /// What is wrong with the text.
        #[source]
        source: crate::acl::AclError,
    },
    /// A layer, a chunk or a digest does not match what describes it.
    #[error("{what}: expected {expected}, found {actual}")]
    Digest {
        /// What was checked.
        what: String,
        /// The expected digest.
        expected: String,
        /// The digest of the bytes.
        actual: String,
    },
    /// The source image (OCI layout, docker archive, manifest) is unusable.
    #[error("source image: {0}")]
    Source(String),
    /// An option is out of range or options contradict each other.
    #[error("invalid option: {0}")]
    Option(String),
    /// Something is not supported (sparse tar entries, bzip2 layers, ...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The RAFS writer refused the tree or a chunk dictionary is unreadable.
    #[error("rafs: {0}")]
    Rafs(#[from] dfagent_rafs::RafsError),
    /// The registry failed.
    #[cfg(feature = "registry")]
    #[error("registry: {0}")]
    Registry(#[from] dfagent_registry::RegistryError),
    /// A worker thread died.
    #[error("internal: {0}")]
    Internal(String),
}

impl BuildError {
    /// A [`BuildError::Io`] for `path`.
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        BuildError::Io {
            path: path.to_string(),
            source,
        }
    }

    /// An [`BuildError::Entry`] for the tar path `path`.
    pub fn entry(path: &[u8], detail: impl Into<String>) -> Self {
        BuildError::Entry {
            path: String::from_utf8_lossy(path).into_owned(),
            detail: detail.into(),
        }
    }
}
