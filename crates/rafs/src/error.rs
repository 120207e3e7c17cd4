//! Errors of the RAFS reader. Every message names what was wrong and where, so a user holding a
//! broken image can tell a truncated download from an unsupported feature.

/// Result of RAFS parsing.
pub type Result<T, E = RafsError> = std::result::Result<T, E>;

/// Why an image (or a part of it) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RafsError {
    /// Opening or mapping the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A structure extends beyond the end of the data.
    #[error(
        "truncated image: {what} at offset {offset} needs {len} bytes, but the data ends at {end}"
    )]
    Truncated {
        /// The structure being read.
        what: String,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// Size of the data.
        end: u64,
    },
    /// The data is not a RAFS v6 bootstrap.
    #[error("not a RAFS v6 bootstrap: {0}")]
    NotRafs(String),
    /// A valid image that uses something this reader does not implement.
    #[error("unsupported image feature: {0}")]
    Unsupported(String),
    /// A field holds an impossible value.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// The operation needs a directory.
    #[error("nid {0} is not a directory")]
    NotDir(u64),
    /// The operation needs a symlink.
    #[error("nid {0} is not a symlink")]
    NotSymlink(u64),
    /// The operation needs a regular file.
    #[error("nid {0} is not a regular file")]
    NotFile(u64),
    /// A chunk's stored size is 0 or beyond what its compressor can produce from its
    /// uncompressed size ([`crate::max_stored_size`]): fetching it would read or allocate
    /// without a sane bound.
    #[error(
        "corrupt image: chunk {chunk} has stored size {stored}, but {compression} stores          {uncompressed} bytes in 1..={limit}"
    )]
    StoredSize {
        /// The chunk.
        chunk: dfagent_core::ChunkDigest,
        /// Its stored size, as the chunk record says.
        stored: u32,
        /// Its uncompressed size.
        uncompressed: u32,
        /// How it is stored.
        compression: dfagent_core::Compression,
        /// The largest stored size `compression` can give for `uncompressed` bytes.
        limit: u64,
    },
    /// The writer was given a tree, blob list or options it cannot write as a valid image.
    #[error("cannot write RAFS image: {0}")]
    InvalidTree(String),
}

impl RafsError {
    /// Shorthand for [`RafsError::Corrupt`].
    pub(crate) fn corrupt(msg: impl Into<String>) -> Self {
        RafsError::Corrupt(msg.into())
    }
}
