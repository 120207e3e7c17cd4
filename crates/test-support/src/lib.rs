//! Test scaffolding shared by dfagent's crates. A dev-dependency only: nothing here ships, and
//! production code never depends on it.
//!
//! - [`fixtures`]: the shared folder (`$DFAGENT_SHARED`, else `../shared` beside the clone):
//!   fixture images, expected listings, `list-tree.py` and `make-texture.py`.
//! - [`registry`]: a real `docker-registry` on a free 127.0.0.1 port or a given address.
//! - [`proxy`]: an HTTP proxy in front of it that records each request (and the client's
//!   address) and injects faults: corrupt range answers, statuses of its own (with
//!   `Retry-After`), redirects, bodies cut short or trickled, flipped bytes, dropped
//!   connections.
//! - [`token`]: a token server for the registry's Bearer authentication, with tokens of a chosen
//!   lifetime, counting how often it is asked.
//! - [`tiers`]: fake tiers and stores for the resolver's contract (in memory, counting, gated,
//!   corrupting, failing).
//! - [`mountinfo`]: `/proc/self/mountinfo`, parsed and unescaped.
//! - [`mount`]: mount guards that kill the serving processes and detach the mount on drop.
//! - [`cli`]: the `dfagent` binary, kept away from the machine's daemon and environment.
//! - [`crash`]: the kill -9 campaign (pulls killed at random moments, then checked).
//! - [`campaign`]: the fault campaign's counting (reads compared with the listings, one line
//!   per row) and storm policies; [`daemon`]: a `dfagent daemon` with its own socket and store;
//!   [`tmpfs`]: a small tmpfs (a full disk under the store).
//! - [`process`], [`wait`], [`net`]: bounded process runs and waits, free loopback ports.
//! - [`containerd`]: a private containerd (own config, root, state, sockets) for real
//!   containers (`ctr run`, runc), optionally with a proxy snapshotter.
//! - [`netns`]: network namespaces on a bridge for multi-node tests (own addresses, nodes that
//!   can be cut off), torn down on drop (root only).
//!
//! What it must not do: send traffic anywhere but 127.0.0.0/8 or the network namespaces a test
//! makes itself; leave anything behind (processes, mounts, directories are cleaned up on drop);
//! wait without a bound (every wait has a timeout that fails the test). Helpers panic, which is
//! how a test fails. It depends on no dfagent crate but `dfagent-core`, and on no RocksDB, so
//! every crate's tests can use it cheaply.

pub mod campaign;
pub mod cli;
pub mod cluster;
pub mod containerd;
pub mod crash;
pub mod daemon;
pub mod dragonfly;
pub mod fixtures;
pub mod mount;
pub mod mountinfo;
pub mod net;
pub mod netns;
pub mod oci;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod tiers;
pub mod tmpfs;
pub mod token;
pub mod wait;

/// A temporary directory under /tmp (not `$TMPDIR`: FUSE mount points and trees with device
/// files want a local file system), removed on drop.
pub fn tmp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("creating a temporary directory under /tmp")
}
