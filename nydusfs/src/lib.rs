//! nydusfs: a read-only filesystem over a RAFS v6 [`Image`](dfagent_rafs::Image), mounted with
//! FUSE. Metadata comes straight from the bootstrap; file data is read lazily, chunk by chunk,
//! through the [`ChunkReader`](dfagent_core::ChunkReader) it is handed (the resolver), so only
//! chunks that are read are ever fetched, and only verified bytes reach a reader.
//!
//! Two layers:
//! - [`NydusOps`] (`ops.rs`): every filesystem operation (lookup, getattr, readdir(plus),
//!   readlink, xattrs, statfs, open, access, read) as a plain function over the image and the
//!   reader, with types of our own ([`Attr`], [`Entry`], [`DirEntry`], [`StatFs`], [`Errno`]).
//!   It knows no FUSE crate, so it can be tested and fuzzed without a kernel; `read` is a future
//!   that runs on any tokio runtime.
//! - [`NydusFs`] (`fuse.rs`): the thin `fuser` adapter, which converts requests and replies and
//!   runs reads as tasks on a tokio runtime that reply from there, so a slow fetch never
//!   stalls the FUSE session loop. [`mount`] serves it at a mount point.
//!
//! The crate must not know where chunks come from: not the resolver, the store or the registry.
//! It reads only through `ChunkReader`, which yields decoded, verified bytes.

mod attr;
mod fuse;
mod metrics;
mod mount;
mod ops;
mod readahead;

pub use attr::{Attr, MAX_FILE_SIZE, ROOT_INO};
pub use fuse::NydusFs;
pub use metrics::{FsMetrics, FsStats, LATENCY_BUCKETS_US, OPS};
pub use mount::{
    canonical_path, mount, mount_at, mount_state, mount_with, mounts, unmount, MountAccess,
    MountEntry, MountState, Mounted,
};
pub use ops::{
    DirEntry, DirEntryPlus, Entry, Errno, FsConfig, NydusOps, Opened, PendingRead, StatFs,
    XattrReply,
};
