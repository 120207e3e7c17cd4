//! nydusfs: a read-only FUSE filesystem over a RAFS v6 [`Image`](dfagent_rafs::Image). Metadata
//! comes straight from the bootstrap; file data is read lazily, chunk by chunk, through the
//! [`ChunkReader`](dfagent_core::ChunkReader) it is handed (the resolver), so only chunks that
//! are read are ever fetched, and only verified bytes reach a reader.
//!
//! Requests that may wait on a chunk run as tasks on a tokio runtime and reply from there, so a
//! slow fetch never stalls the FUSE session loop.

mod attr;
mod fs;
mod metrics;
mod mount;
mod readahead;

pub use fs::{FsConfig, NydusFs};
pub use metrics::{FsMetrics, FsStats, LATENCY_BUCKETS_US};
pub use mount::{mount, mount_state, unmount, MountState, Mounted};
