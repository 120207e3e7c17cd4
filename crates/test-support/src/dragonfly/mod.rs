//! Dragonfly fixtures: a [`TestScheduler`] (a Rust stand-in for Dragonfly's Go scheduler, on
//! `dragonfly-api`'s `scheduler_server`) and [`DfdaemonSeed`] (a real `dfdaemon` 1.5.10 in seed
//! mode, attached to it), for the Dragonfly tier's tests.
//!
//! The binary is `$DFAGENT_DFDAEMON`, else [`DEFAULT_DFDAEMON`] (installed by
//! `scripts/setup.sh`); when it is missing, starting a seed fails the test.
//!
//! What works with dfdaemon 1.5.10 as a seed (read in `dragonfly-client-1.5.10/src/proxy/`,
//! checked by `tests/dragonfly.rs`):
//! - A blob range goes through the seed's proxy port as a plain HTTP forward-proxy request:
//!   absolute-form request line `GET http://REGISTRY/v2/REPO/blobs/sha256:HEX HTTP/1.1` (reqwest
//!   with `Proxy::http(seed)`), with `Range: bytes=A-B`, `X-Dragonfly-Use-P2P: true` (without it,
//!   and with no `proxy.rules`, the proxy forwards the request to the registry itself),
//!   `X-Dragonfly-Enable-Task-ID-Based-Blob-Digest: true` (task id = the digest's hex) and
//!   optionally `X-Dragonfly-Prefetch: true` (fetch the whole blob in the background). The
//!   answer is 206 with `Content-Range`, plus `X-Dragonfly-Task-ID`.
//! - `X-Dragonfly-Registry` is not needed with an absolute URL: it only names the upstream for
//!   origin-form ("registry mirror") requests, which have no host.
//! - Seen here (2026-11-29): a seed is up in about 3.7 s, most of it (about 3.5 s) spent
//!   collecting host information before its first AnnounceHost. Before it downloads, it probes
//!   the registry with `Range: bytes=0-0` (1 byte) for the length, then fetches 4 MiB pieces
//!   as ranges. A range of at most 4 MiB skips the scheduler (no AnnouncePeer); the prefetch
//!   (whole task, no range) registers with the scheduler and goes back to source. A 9 MiB blob
//!   read as three ranges with prefetch cost the registry 9,449,530 bytes for 9,449,529; after
//!   a preheat, a range cost none.

pub mod scheduler;
pub mod seed;

use std::path::PathBuf;

pub use scheduler::{
    HostInfo, JobState, PeerInfo, PeerState, PieceInfo, PreheatJob, TaskInfo, TestScheduler,
};
pub use seed::{DfdaemonSeed, SeedOptions};

/// The dfdaemon version the fixtures are written against (the same `dragonfly-api` 2.3.8).
pub const DFDAEMON_VERSION: &str = "1.5.10";

/// Where `scripts/setup.sh` installs dfdaemon.
pub const DEFAULT_DFDAEMON: &str = "/var/cache/dfagent/dfdaemon/1.5.10/bin/dfdaemon";

/// The dfdaemon binary: `$DFAGENT_DFDAEMON`, else [`DEFAULT_DFDAEMON`].
pub fn dfdaemon_path() -> PathBuf {
    std::env::var_os("DFAGENT_DFDAEMON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DFDAEMON))
}
