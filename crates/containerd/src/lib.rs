//! dfagent for containerd: the remote snapshotter `dfagent daemon` serves on a unix socket, and
//! the pull (`dfagent containerd pull`) that labels an image's layers for it.
//!
//! - [`Snapshotter`] keeps containerd's snapshots: ordinary layers as directories (containerd's
//!   overlayfs snapshotter's semantics), Nydus layers as one lazy image mount per image that
//!   every container of the image overlays. [`SnapshotService`] is its gRPC face.
//! - [`pull()`] stores an image's manifest and config in containerd and prepares each layer
//!   through containerd with the labels a remote snapshotter needs, as containerd's CRI plugin
//!   does during a kubelet pull.
//! - [`filter`] is containerd's filter syntax (Walk requests).
//!
//! Must not know: how an image is mounted or read (FUSE, RAFS, the chunk store, peers, Dragonfly):
//! the node hands the snapshotter an [`ImageMounts`]. Nothing here starts containerd.
#![deny(missing_docs)]

pub mod filter;

#[cfg(feature = "server")]
mod error;
#[cfg(feature = "server")]
pub mod labels;
#[cfg(feature = "server")]
pub mod meta;
#[cfg(feature = "server")]
mod pull;
#[cfg(feature = "server")]
mod service;
#[cfg(feature = "server")]
mod snapshotter;

#[cfg(feature = "server")]
pub use error::{Result, SnapshotterError};
#[cfg(feature = "server")]
pub use pull::{pull, PullOptions, PullReport, DEFAULT_NAMESPACE, DEFAULT_SNAPSHOTTER};
#[cfg(feature = "server")]
pub use service::{SnapshotService, SnapshotsServer};
#[cfg(feature = "server")]
pub use snapshotter::{ImageMounts, Info, MountSpec, Snapshotter, MAX_KEY_LEN, MAX_LABELS};
