//! The dfagent peer network: nodes that hold a blob's chunks announce the blob in a Kademlia
//! DHT (provider records keyed by **blob**, not by chunk, so record counts stay small) and serve
//! its chunks by digest over `/dfagent/chunks/1`, a protocol of our own
//! (`proto/dfagent/peer/v1/chunks.proto`, framing and checks in [`wire`]). The crate serves from
//! and fetches into what it is handed: a [`dfagent_core::ChunkStore`] to serve from, and a
//! [`dfagent_core::ChunkTier`] ([`Peer::tier`]) the resolver fetches through. It knows nothing of
//! the registry, the store crate, FUSE or the node.
//!
//! # Transport and privacy
//! TCP with noise (ed25519 identities, kept in [`PeerConfig::identity_file`] so the peer id
//! survives restarts) and yamux; DNS multiaddrs resolve. With a cluster secret
//! ([`PeerConfig::secret`]) every connection first passes a libp2p private-network handshake
//! (pnet, the secret hashed with sha256 into the 32-byte pre-shared key), so nodes without the
//! secret cannot even complete a connection. QUIC cannot carry pnet; and libp2p-quic 0.14 (the
//! version of libp2p 0.57) requires aws-lc-rs, which this project keeps out. So this build has
//! no QUIC at all: QUIC listen addresses are skipped with a warning. Without a secret the node
//! warns at start that anyone who reaches its addresses can fetch chunks.
//!
//! # Addresses
//! The node listens on [`PeerConfig::listen`] and announces [`PeerConfig::advertise`]; when that
//! is empty it announces every address it actually listens on except loopback, unspecified,
//! link-local and container-bridge ones (docker0's 172.17.0.0/16, podman's and the CNI bridge's
//! 10.88.0.0/16): see [`config::advertisable`]. Peers are found through static bootstrap
//! addresses, `name:port` entries re-resolved every [`PeerConfig::dns_refresh`] (a Kubernetes
//! headless Service), and optionally mDNS.
//!
//! # Serving
//! Serving runs below the node's own reads. Every request gets a task of its own on the
//! runtime (network I/O only), at most [`PeerConfig::max_uploads`] at once (more get a BUSY
//! refusal). The work that competes with the node's FUSE reads — reading the chunks from the
//! store and verifying (decompressing and hashing) each one before a byte is sent — runs on
//! [`PeerConfig::serve_threads`] threads of the peer node's own, fed by a queue of
//! [`PeerConfig::serve_queue`] requests (full: BUSY, and the requester asks another provider).
//! A local copy that fails verification is rejected from the store and answered MISSING.
//!
//! "Below" means, per serve thread (Linux sets both per thread, so the node's other threads
//! keep theirs):
//! - **CPU**: nice raised by 10 (capped at 19). Under CFS/EEVDF a nice-10 thread gets about a
//!   tenth of the CPU share of a nice-0 one *when the CPU is contended*; on an idle CPU it runs
//!   at full speed. Nice is relative within an autogroup or cgroup: it orders the daemon's own
//!   threads, not the daemon against other containers (that is the cgroup's `cpu.weight`).
//! - **I/O**: best-effort level 7, the lowest best-effort level ([`PeerConfig::serve_io_idle`]:
//!   the idle class instead). Only some I/O schedulers look at it: BFQ honours class and level;
//!   mq-deadline (Linux 5.14 on) honours the class only (idle below best-effort, with an aging
//!   bound), so level 7 is the same as the node's own level there; `none` (the usual choice for
//!   NVMe) and kyber ignore I/O priorities. Reads served from the page cache (a chunk the node
//!   itself just read) do no disk I/O at all.
//!
//! The store's `fetch` is polled on the serve threads, so only a store that reads inline
//! there gets the lowered priority (the node hands one that does). Network writes of the
//! answer, libp2p and the DHT run on the runtime at normal priority. Failing to lower a
//! priority (a kernel or seccomp refusal) is logged once and serving goes on.
//!
//! # Fetching
//! See [`PeerTier`]. A peer whose chunk fails the resolver's verification
//! ([`dfagent_core::ChunkTier::bad_answer`]) or that breaks the protocol is banned for
//! [`PeerConfig::ban`].
//!
//! Without the default `net` feature only [`wire`] and [`proto`] build (no libp2p): for the fuzz
//! target.

#[cfg(feature = "net")]
mod client;
#[cfg(feature = "net")]
pub mod config;
#[cfg(feature = "net")]
mod counters;
#[cfg(feature = "net")]
mod io;
#[cfg(feature = "net")]
mod node;
#[cfg(feature = "net")]
mod pool;
#[cfg(feature = "net")]
mod server;
pub mod wire;

/// Generated messages of the chunk protocol (`proto/dfagent/peer/v1/chunks.proto`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/dfagent.peer.v1.rs"));
}

#[cfg(feature = "net")]
pub use client::PeerTier;
#[cfg(feature = "net")]
pub use config::PeerConfig;
#[cfg(feature = "net")]
pub use counters::PeerCounters;
#[cfg(feature = "net")]
pub use libp2p::Multiaddr;
#[cfg(feature = "net")]
pub use node::{Peer, PeerError, PeerInfo, PeerStatus};
