//! The peer node's configuration and the rule that picks the addresses it advertises.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

use crate::wire::Limits;

/// Configuration of a peer node. The node crate maps its own settings onto this.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Addresses to listen on. QUIC addresses (`/udp/../quic-v1`) are skipped with a warning:
    /// this build has no QUIC (see the crate doc).
    pub listen: Vec<Multiaddr>,
    /// Addresses announced to other peers. Empty: every address actually listened on that is
    /// [`advertisable`] (not loopback, unspecified or link-local, not a container bridge).
    pub advertise: Vec<Multiaddr>,
    /// Static bootstrap peers; a `/p2p/<id>` suffix is optional.
    pub bootstrap: Vec<Multiaddr>,
    /// `name:port` entries (e.g. a Kubernetes headless Service), resolved every `dns_refresh` to
    /// all their A/AAAA addresses, each dialled over TCP.
    pub bootstrap_dns: Vec<String>,
    /// How often `bootstrap_dns` is resolved again.
    pub dns_refresh: Duration,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// Cluster secret: hashed to the 32-byte pre-shared key of a libp2p private network. `None`:
    /// anyone who reaches the node can fetch chunks (a warning is logged at start).
    pub secret: Option<Vec<u8>>,
    /// Where the node's ed25519 key lives (created with mode 0600 if missing), so the peer id
    /// survives restarts.
    pub identity_file: PathBuf,
    /// Requests served at once; more get a BUSY refusal.
    pub max_uploads: usize,
    /// Threads that read and verify chunks for peers, at lowered CPU and I/O priority (see
    /// the crate doc, "Serving"). At least one.
    pub serve_threads: usize,
    /// Requests waiting for a serve thread; when every slot is taken a request is answered
    /// BUSY (like `max_uploads`). At least one.
    pub serve_queue: usize,
    /// Put the serve threads in the idle I/O class instead of best-effort level 7: their disk
    /// reads then wait while the node reads (mq-deadline lets them through after its aging
    /// time; BFQ may hold them back as long as the node keeps reading).
    pub serve_io_idle: bool,
    /// Requests this node has open to one peer at once.
    pub max_inflight_per_peer: usize,
    /// How many providers one batch is split across.
    pub providers_asked: usize,
    /// How long the providers found for a blob are reused before asking the DHT again.
    pub provider_ttl: Duration,
    /// How long a peer that sent a bad chunk (or broke the protocol) is not asked.
    pub ban: Duration,
    /// Bound on one tier fetch (all its requests) and on serving one request.
    pub request_timeout: Duration,
    /// Kademlia provider record TTL (at least 2 s); records are re-published at half of it. A
    /// withdrawn blob's records on other nodes lapse only after this long (Kademlia has no
    /// removal message): until then requesters may still ask this node, which answers MISSING.
    pub record_ttl: Duration,
    /// Limits on requests served and sent (chunks and bytes per request, frame size); the
    /// defaults are [`crate::wire`]'s constants. A frame limit below one piece is raised to it.
    pub limits: Limits,
    /// Test only: serve chunks without verifying them first (to make a lying peer).
    #[doc(hidden)]
    pub unsafe_serve_unverified_for_tests: bool,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            listen: vec![default_addr("/ip4/0.0.0.0/tcp/7010")],
            advertise: Vec::new(),
            bootstrap: Vec::new(),
            bootstrap_dns: Vec::new(),
            dns_refresh: Duration::from_secs(60),
            mdns: false,
            secret: None,
            identity_file: PathBuf::from("/var/lib/dfagent/peer-identity.key"),
            max_uploads: 16,
            serve_threads: 2,
            serve_queue: 8,
            serve_io_idle: false,
            max_inflight_per_peer: 4,
            providers_asked: 3,
            provider_ttl: Duration::from_secs(60),
            ban: Duration::from_secs(600),
            request_timeout: Duration::from_secs(10),
            record_ttl: Duration::from_secs(3600),
            limits: Limits::default(),
            unsafe_serve_unverified_for_tests: false,
        }
    }
}

fn default_addr(s: &str) -> Multiaddr {
    s.parse().unwrap_or_else(|_| Multiaddr::empty())
}

/// Whether a listen address is worth announcing to other nodes: not loopback, unspecified or
/// link-local, and not on a container bridge (docker0's 172.17.0.0/16, podman's and the CNI
/// bridge plugin's 10.88.0.0/16): addresses other nodes cannot reach.
pub fn advertisable(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ipv4_advertisable(ip),
        Some(Protocol::Ip6(ip)) => ipv6_advertisable(ip),
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    }
}

fn ipv4_advertisable(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_link_local()
        || (o[0] == 172 && o[1] == 17)
        || (o[0] == 10 && o[1] == 88))
}

fn ipv6_advertisable(ip: Ipv6Addr) -> bool {
    let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
    !(ip.is_loopback() || ip.is_unspecified() || link_local)
}

/// Whether `addr` is a QUIC address (not served by this build).
pub(crate) fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic | Protocol::Udp(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_rule() {
        let yes = [
            "/ip4/192.168.1.5/tcp/7010",
            "/ip4/10.0.0.3/tcp/1",
            "/ip6/2001:db8::1/tcp/1",
        ];
        let no = [
            "/ip4/127.0.0.1/tcp/7010",
            "/ip4/0.0.0.0/tcp/7010",
            "/ip4/172.17.0.1/tcp/7010",
            "/ip4/10.88.0.1/tcp/7010",
            "/ip4/169.254.1.1/tcp/7010",
            "/ip6/::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
        ];
        for a in yes {
            assert!(advertisable(&a.parse().unwrap()), "{a}");
        }
        for a in no {
            assert!(!advertisable(&a.parse().unwrap()), "{a}");
        }
        assert!(is_quic(&"/ip4/0.0.0.0/udp/7010/quic-v1".parse().unwrap()));
        assert!(!is_quic(&"/ip4/0.0.0.0/tcp/7010".parse().unwrap()));
    }
}
