//! The dfagent node library: one node's subsystems wired together, and the operations every
//! front end runs — the CLI in-process, the daemon for every mount of the node, and later the
//! containerd snapshotter.
//!
//! - [`Node`]: the chunk store, the registry client and the resolver core that every mount of
//!   the node shares (one decoded-chunk cache, one single flight, one store writer).
//! - [`Node::open_image`]: a registry reference (resolved online or from the store's record,
//!   bootstrap kept, chunks pinned) or a local bootstrap, with its chain of tiers.
//! - [`Node::mount`] → [`Mount`]: an opened image served by nydusfs, with its background
//!   prefetch; unmount and unpin happen however it ends.
//! - [`Node::pull`], [`Node::push`].
//! - [`daemon::Daemon`]: the node serving every mount of the machine; [`control`]: its gRPC
//!   API on a unix socket (server, client, access checks).
//! - [`Node::start_peer`]: the peer network (the daemon's), serving from the store, providing
//!   the store's blobs, and a peer tier in every registry image's chain.
//! - [`Node::start_dragonfly`]: the Dragonfly client (seed peers from the scheduler) and a
//!   Dragonfly tier in every registry image's chain, after the peers, before the registry.
//!
//! This crate wires subsystems; it holds no format, protocol or storage logic of its own, and
//! knows nothing of command lines or terminals (the binary parses and prints).

pub mod config;
pub mod control;
pub mod daemon;
mod dragonfly;
mod error;
mod image;
pub mod metrics;
mod mount;
mod node;
mod peer;
mod pins;
mod pull;
pub mod snapshotter;

pub use dragonfly::PreheatOptions;
pub use error::{NodeError, Result};
pub use image::{ImageSource, OpenedImage};
pub use mount::{
    is_dfagent_mount, unmount_path, Mount, MountOptions, MountSpec, MountStats, PrefetchStats,
    PREFETCH_BATCH, SOURCE_PREFIX,
};
pub use node::{runtime, Node, NodeConfig, StoreSettings};
pub use pins::{PinGuard, Pins};
pub use pull::{PullProgress, PullReport};
