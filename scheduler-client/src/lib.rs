//! Dragonfly integration for dfagent: the seed peers ("supernodes") of a Dragonfly cluster as a
//! chunk tier between the peer network and the registry, and image preheating.
//!
//! # Seeds
//! [`Dragonfly::start`] spawns a loop that asks the first reachable scheduler (gRPC health
//! SERVING first) for its hosts (`ListHosts` with type 1, as upstream's request proxy asks),
//! every [`DragonflyConfig::refresh_interval`], retrying with backoff up to 30 s while no
//! scheduler answers. Every host is checked by [`messages::seeds_from_hosts`] (seed type, id,
//! ip, ports, count); the rest are counted and logged. Every
//! [`DragonflyConfig::health_interval`] each seed's dfdaemon is asked for gRPC health on its
//! upload port (`Host.port`, where dfdaemon serves `grpc.health.v1`; its HTTP health port is not
//! in the host message), a few at a time, each bounded.
//!
//! # Which seed
//! The task id of a blob is its digest's hex ([`dfagent_core::BlobId::hex`]): what dfdaemon
//! computes for a `/v2/.../blobs/sha256:HEX` URL with `X-Dragonfly-Enable-Task-ID-Based-Blob-Digest`,
//! so every node, image and repository that shares a blob shares one Dragonfly task. Seeds are
//! picked on a consistent hash ring ([`ring`]) built exactly as upstream's request proxy
//! (`dragonfly-client-request` 1.7.4) builds its own: `hashring` 0.3.6, 512 virtual nodes per seed
//! hashed as `(index: usize, key: str)`, the task id hashed as a string, and the first distinct
//! seeds clockwise. The one difference is the seed's key: upstream keys by `Host.name` and so
//! merges seeds that share a name; here the name is used when it is unique in the list and the
//! host id otherwise (see [`Seed::ring_key`]). With distinct names (the Kubernetes case,
//! `NAMESPACE-POD`) dfagent and upstream clients ask the same seed for the same blob.
//! Unhealthy and avoided seeds are skipped in the walk, which is what a ring without them gives.
//!
//! # Fetching
//! See [`tier`] and [`http`]: merged ranges of a batch, GET through the chosen seed's proxy port
//! (forward proxy for `http://` registries, registry-mirror form for `https://` ones), answers
//! checked (206, exact `Content-Range`, exact length), next seed on error, then the registry tier.
//! Bytes are not verified here: the resolver verifies them and calls
//! [`dfagent_core::ChunkTier::bad_answer`], which avoids the seed that sent them for
//! [`DragonflyConfig::avoid_for_bad_bytes`].
//!
//! # Priority
//! A range a reader waits for is sent with [`DragonflyConfig::priority`]; a range only background
//! work wants (every slot [`dfagent_core::Slot::is_background`]: prefetch, pull) and preheats with
//! [`DragonflyConfig::prefetch_priority`], as upstream Nydus marks prefetch traffic lower.
//! Numbers are `common.v2.Priority` ([`config::priority`]).
//!
//! # Preheat
//! [`Dragonfly::preheat_image`] (`PreheatImage`) and [`Dragonfly::stat_image`] (`StatImage`,
//! checked into an [`ImageStatus`]).
//!
//! Without the default `net` feature only [`messages`] builds (for the fuzz target).

#[cfg(feature = "net")]
pub mod config;
#[cfg(feature = "net")]
mod counters;
#[cfg(feature = "net")]
mod error;
#[cfg(feature = "net")]
pub mod http;
pub mod messages;
#[cfg(feature = "net")]
mod node;
#[cfg(feature = "net")]
pub mod ring;
#[cfg(feature = "net")]
pub mod tier;

/// The Dragonfly API messages and clients (dragonfly-api 2.3.8), for callers that build or read
/// scheduler messages.
pub use dragonfly_api;

#[cfg(feature = "net")]
pub use config::DragonflyConfig;
#[cfg(feature = "net")]
pub use counters::{CountersSnapshot, DragonflyCounters};
#[cfg(feature = "net")]
pub use error::DragonflyError;
pub use messages::{seeds_from_hosts, ImageStatus, PeerImageStatus, RejectReason, Rejected, Seed};
#[cfg(feature = "net")]
pub use node::{
    Dragonfly, DragonflyStatus, PreheatImage, PreheatScope, SchedulerStatus, SeedStatus,
};
#[cfg(feature = "net")]
pub use tier::DragonflyTier;
