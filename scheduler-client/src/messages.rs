//! Checks of what the scheduler sends: the seed peers of a `ListHosts` answer
//! ([`seeds_from_hosts`]) and the per-seed layer state of a `StatImage` answer
//! ([`ImageStatus::from_response`]). Pure functions over decoded messages, with no network, so
//! the fuzz target can feed them arbitrary bytes.
//!
//! Every field taken from a message is validated before it is used: an address that does not
//! parse, a port of 0 or above 65535, an empty or oversized id, a host that is not a seed peer, a
//! list longer than [`MAX_HOSTS`]: each is rejected with a [`Rejected`] saying why.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use dragonfly_api::common::v2::Host;
use dragonfly_api::scheduler::v2::{ListHostsResponse, StatImageResponse};

/// Most hosts taken from one `ListHosts` answer; the rest are rejected as one entry.
pub const MAX_HOSTS: usize = 1024;
/// Longest host id, name or hostname kept (bytes).
pub const MAX_ID_LEN: usize = 256;
/// Most layers of one image, and most peers, taken from a `StatImage` answer.
pub const MAX_IMAGE_LAYERS: usize = 4096;
/// Most peers taken from a `StatImage` answer.
pub const MAX_IMAGE_PEERS: usize = 4096;
/// Longest layer URL kept (bytes).
pub const MAX_URL_LEN: usize = 8192;

/// `common.v2.Host.type` of a super seed peer: dfdaemon announces `seedPeer.type: super` as 1
/// (`HostType` of dragonfly-client-config: normal 0, super 1), and upstream's request proxy asks
/// `ListHosts` for type 1.
pub const HOST_TYPE_SUPER_SEED: u32 = 1;
/// Host types taken as seed peers: super (1), and the strong (2) and weak (3) seed peers of the
/// Go scheduler's host types. Normal peers (0) are not.
pub const SEED_HOST_TYPES: [u32; 3] = [1, 2, 3];

/// A seed peer taken from the scheduler's host list, every field checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    /// The host id (dfdaemon: `IP-HOSTNAME-seed`).
    pub id: String,
    /// The key of this seed on the hash ring: the host's `name` (dfdaemon: `NAMESPACE-POD`, else
    /// the hostname), as upstream's request proxy keys it, or the id when the name is empty or
    /// shared with another seed of the same list (several seeds on one machine).
    pub ring_key: String,
    /// The host's hostname (for status output).
    pub hostname: String,
    /// Address of the host.
    pub ip: IpAddr,
    /// dfdaemon's upload gRPC port (`Host.port`): serves gRPC health.
    pub port: u16,
    /// dfdaemon's HTTP proxy port (`Host.proxy_port`): where blob ranges are asked for.
    pub proxy_port: u16,
    /// `Host.type` (one of [`SEED_HOST_TYPES`]).
    pub host_type: u32,
}

/// Why a host of a `ListHosts` answer was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// Not a seed peer (the type is given).
    NotSeed(u32),
    /// The id is empty or longer than [`MAX_ID_LEN`].
    BadId,
    /// The name or hostname is longer than [`MAX_ID_LEN`].
    BadName,
    /// The ip does not parse (or is unspecified).
    BadIp,
    /// The gRPC port is not in 1..=65535.
    BadPort(i32),
    /// The proxy port is not in 1..=65535.
    BadProxyPort(i32),
    /// Another host of the list has the same id.
    DuplicateId,
    /// Beyond [`MAX_HOSTS`]: this many hosts were dropped.
    TooMany(usize),
}

impl RejectReason {
    /// Short label, for counters and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::NotSeed(_) => "not_seed",
            RejectReason::BadId => "bad_id",
            RejectReason::BadName => "bad_name",
            RejectReason::BadIp => "bad_ip",
            RejectReason::BadPort(_) => "bad_port",
            RejectReason::BadProxyPort(_) => "bad_proxy_port",
            RejectReason::DuplicateId => "duplicate_id",
            RejectReason::TooMany(_) => "too_many",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::NotSeed(t) => write!(f, "host type {t} is not a seed peer"),
            RejectReason::BadId => write!(f, "empty or oversized host id"),
            RejectReason::BadName => write!(f, "oversized name or hostname"),
            RejectReason::BadIp => write!(f, "ip does not parse"),
            RejectReason::BadPort(p) => write!(f, "gRPC port {p} out of range"),
            RejectReason::BadProxyPort(p) => write!(f, "proxy port {p} out of range"),
            RejectReason::DuplicateId => write!(f, "duplicate host id"),
            RejectReason::TooMany(n) => write!(f, "{n} hosts beyond the limit of {MAX_HOSTS}"),
        }
    }
}

/// A host that was not taken, and why. `id` is the host's id cut to [`MAX_ID_LEN`] bytes, with
/// anything but printable ASCII replaced (it goes to logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The host's id as far as it is printable.
    pub id: String,
    /// Why.
    pub reason: RejectReason,
}

/// The seed peers of a `ListHosts` answer, and the hosts rejected. Seeds keep the answer's
/// order; each has a unique id and a unique [`Seed::ring_key`].
pub fn seeds_from_hosts(resp: &ListHostsResponse) -> (Vec<Seed>, Vec<Rejected>) {
    let mut seeds = Vec::new();
    let mut rejected = Vec::new();
    let mut ids: HashSet<&str> = HashSet::new();
    for host in resp.hosts.iter().take(MAX_HOSTS) {
        match check_host(host) {
            Ok(seed) => {
                if ids.insert(host.id.as_str()) {
                    seeds.push(seed);
                } else {
                    rejected.push(Rejected {
                        id: printable(&host.id),
                        reason: RejectReason::DuplicateId,
                    });
                }
            }
            Err(reason) => rejected.push(Rejected {
                id: printable(&host.id),
                reason,
            }),
        }
    }
    if resp.hosts.len() > MAX_HOSTS {
        rejected.push(Rejected {
            id: String::new(),
            reason: RejectReason::TooMany(resp.hosts.len() - MAX_HOSTS),
        });
    }
    // Ring keys: the name when it is set and unique in this list, else the (unique) id.
    let mut names: HashMap<String, usize> = HashMap::new();
    for s in &seeds {
        *names.entry(s.ring_key.clone()).or_default() += 1;
    }
    for s in &mut seeds {
        if s.ring_key.is_empty() || names.get(&s.ring_key).copied().unwrap_or(0) > 1 {
            s.ring_key = s.id.clone();
        }
    }
    // An id equal to another seed's name would still collide: fall back to "id|ID" for those.
    let mut keys: HashSet<String> = HashSet::new();
    for s in &mut seeds {
        if !keys.insert(s.ring_key.clone()) {
            s.ring_key = format!("id|{}", s.id);
            keys.insert(s.ring_key.clone());
        }
    }
    (seeds, rejected)
}

fn check_host(host: &Host) -> Result<Seed, RejectReason> {
    if !SEED_HOST_TYPES.contains(&host.r#type) {
        return Err(RejectReason::NotSeed(host.r#type));
    }
    if host.id.is_empty() || host.id.len() > MAX_ID_LEN {
        return Err(RejectReason::BadId);
    }
    if host.name.len() > MAX_ID_LEN || host.hostname.len() > MAX_ID_LEN {
        return Err(RejectReason::BadName);
    }
    let ip: IpAddr = host.ip.trim().parse().map_err(|_| RejectReason::BadIp)?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(RejectReason::BadIp);
    }
    let port = port_of(host.port).ok_or(RejectReason::BadPort(host.port))?;
    let proxy_port = port_of(host.proxy_port).ok_or(RejectReason::BadProxyPort(host.proxy_port))?;
    Ok(Seed {
        id: host.id.clone(),
        ring_key: host.name.clone(),
        hostname: host.hostname.clone(),
        ip,
        port,
        proxy_port,
        host_type: host.r#type,
    })
}

fn port_of(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|&p| p != 0)
}

/// `s` cut to [`MAX_ID_LEN`] bytes, anything but printable ASCII replaced by `?`.
pub(crate) fn printable(s: &str) -> String {
    s.bytes()
        .take(MAX_ID_LEN)
        .map(|b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// Why a `StatImage` answer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// More layers or peers than the limits, or an oversized URL.
    #[error("stat image answer over the limits: {0}")]
    OverLimit(&'static str),
}

/// The state of an image's layers on the peers, from a `StatImage` answer: which layers the
/// image has, and which of them each peer holds in full.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageStatus {
    /// The image's layers (their keys: the blob digest `sha256:HEX` when the URL is a blob URL,
    /// else the URL), in the answer's order, without duplicates.
    pub layers: Vec<String>,
    /// Per peer: which layers it holds.
    pub peers: Vec<PeerImageStatus>,
}

/// One peer's share of an image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerImageStatus {
    /// The peer's ip, as the scheduler gave it (printable ASCII only).
    pub ip: String,
    /// The peer's hostname (printable ASCII only).
    pub hostname: String,
    /// Keys of the layers it has finished downloading.
    pub finished: Vec<String>,
    /// Keys of the layers it holds only in part.
    pub in_progress: Vec<String>,
}

impl ImageStatus {
    /// Check and convert a `StatImage` answer.
    pub fn from_response(resp: &StatImageResponse) -> Result<Self, StatusError> {
        let layers_in = resp.image.as_ref().map(|i| &i.layers[..]).unwrap_or(&[]);
        if layers_in.len() > MAX_IMAGE_LAYERS {
            return Err(StatusError::OverLimit("layers"));
        }
        if resp.peers.len() > MAX_IMAGE_PEERS {
            return Err(StatusError::OverLimit("peers"));
        }
        let mut layers = Vec::with_capacity(layers_in.len());
        let mut seen = HashSet::new();
        for l in layers_in {
            let key = layer_key(&l.url)?;
            if seen.insert(key.clone()) {
                layers.push(key);
            }
        }
        let mut peers = Vec::with_capacity(resp.peers.len());
        for p in &resp.peers {
            if p.cached_layers.len() > MAX_IMAGE_LAYERS {
                return Err(StatusError::OverLimit("cached layers"));
            }
            let mut finished = Vec::new();
            let mut in_progress = Vec::new();
            let mut seen = HashSet::new();
            for l in &p.cached_layers {
                let key = layer_key(&l.url)?;
                if !seen.insert(key.clone()) {
                    continue;
                }
                if l.is_finished.unwrap_or(false) {
                    finished.push(key);
                } else {
                    in_progress.push(key);
                }
            }
            peers.push(PeerImageStatus {
                ip: printable(&p.ip),
                hostname: printable(&p.hostname),
                finished,
                in_progress,
            });
        }
        Ok(Self { layers, peers })
    }

    /// How many of the image's layers some peer has finished.
    pub fn layers_done(&self) -> usize {
        let held: HashSet<&str> = self
            .peers
            .iter()
            .flat_map(|p| p.finished.iter().map(String::as_str))
            .collect();
        self.layers
            .iter()
            .filter(|l| held.contains(l.as_str()))
            .count()
    }

    /// Whether every layer of the image is held in full by at least one peer (and the image has
    /// layers at all: an answer without layers is not a finished preheat).
    pub fn complete(&self) -> bool {
        !self.layers.is_empty() && self.layers_done() == self.layers.len()
    }
}

/// The key of a layer URL: `sha256:HEX` for `.../blobs/sha256:HEX`, else the URL itself (so a
/// blob preheated through one repository counts for another that shares it).
fn layer_key(url: &str) -> Result<String, StatusError> {
    if url.len() > MAX_URL_LEN {
        return Err(StatusError::OverLimit("layer url"));
    }
    let path = url.split(['?', '#']).next().unwrap_or(url);
    if let Some((_, digest)) = path.rsplit_once("/blobs/") {
        if let Some(hex) = digest.strip_prefix("sha256:") {
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(format!("sha256:{}", hex.to_ascii_lowercase()));
            }
        }
    }
    Ok(printable(url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dragonfly_api::scheduler::v2::{Image, Layer, PeerImage};

    pub(crate) fn host(id: &str, name: &str, ip: &str, port: i32, proxy: i32, ty: u32) -> Host {
        Host {
            id: id.to_string(),
            name: name.to_string(),
            hostname: format!("h-{id}"),
            ip: ip.to_string(),
            port,
            proxy_port: proxy,
            r#type: ty,
            ..Default::default()
        }
    }

    #[test]
    fn validation_rejects_bad_hosts() {
        let resp = ListHostsResponse {
            hosts: vec![
                host("a", "ns-a", "10.0.0.1", 4000, 4001, 1),
                host("b", "ns-b", "10.0.0.2", 4000, 4001, 0),
                host("c", "ns-c", "not-an-ip", 4000, 4001, 1),
                host("d", "ns-d", "10.0.0.4", 0, 4001, 1),
                host("e", "ns-e", "10.0.0.5", 4000, 70000, 1),
                host("", "ns-f", "10.0.0.6", 4000, 4001, 1),
                host("a", "ns-a2", "10.0.0.7", 4000, 4001, 1),
                host("g", "ns-g", "0.0.0.0", 4000, 4001, 1),
                host("h", "ns-h", "::1", 4000, 4001, 3),
                host("i", "ns-i", "10.0.0.9", -1, 4001, 2),
                host("j", &"x".repeat(MAX_ID_LEN + 1), "10.0.0.9", 4000, 4001, 2),
            ],
        };
        let (seeds, rejected) = seeds_from_hosts(&resp);
        let ids: Vec<&str> = seeds.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["a", "h"]);
        assert_eq!(seeds[0].proxy_port, 4001);
        assert_eq!(seeds[0].ring_key, "ns-a");
        let reasons: Vec<&str> = rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(
            reasons,
            vec![
                "not_seed",
                "bad_ip",
                "bad_port",
                "bad_proxy_port",
                "bad_id",
                "duplicate_id",
                "bad_ip",
                "bad_port",
                "bad_name"
            ]
        );
    }

    #[test]
    fn oversized_list_is_cut() {
        let hosts = (0..MAX_HOSTS + 5)
            .map(|i| host(&format!("s{i}"), "", "10.1.0.1", 4000, 4001, 1))
            .collect();
        let (seeds, rejected) = seeds_from_hosts(&ListHostsResponse { hosts });
        assert_eq!(seeds.len(), MAX_HOSTS);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].reason, RejectReason::TooMany(5));
    }

    #[test]
    fn ring_keys_are_unique() {
        let resp = ListHostsResponse {
            hosts: vec![
                host("a", "same", "10.0.0.1", 4000, 4001, 1),
                host("b", "same", "10.0.0.2", 4000, 4001, 1),
                host("c", "", "10.0.0.3", 4000, 4001, 1),
                host("d", "c", "10.0.0.4", 4000, 4001, 1),
                host("e", "uniq", "10.0.0.5", 4000, 4001, 1),
            ],
        };
        let (seeds, _) = seeds_from_hosts(&resp);
        let keys: Vec<&str> = seeds.iter().map(|s| s.ring_key.as_str()).collect();
        assert_eq!(keys, vec!["a", "b", "c", "id|d", "uniq"]);
    }

    #[test]
    fn image_status() {
        let blob = |c: char| {
            format!(
                "http://r:5000/v2/app/blobs/sha256:{}",
                c.to_string().repeat(64)
            )
        };
        let layer = |url: String, fin: Option<bool>| Layer {
            url,
            is_finished: fin,
        };
        let resp = StatImageResponse {
            image: Some(Image {
                layers: vec![layer(blob('a'), None), layer(blob('b'), None)],
            }),
            peers: vec![
                PeerImage {
                    ip: "10.0.0.1".into(),
                    hostname: "s1".into(),
                    cached_layers: vec![
                        layer(blob('a'), Some(true)),
                        layer(blob('b'), Some(false)),
                    ],
                },
                PeerImage {
                    ip: "10.0.0.2".into(),
                    hostname: "s2\u{7}".into(),
                    cached_layers: vec![layer(
                        "http://other/v2/x/blobs/sha256:".to_string() + &"b".repeat(64),
                        Some(true),
                    )],
                },
            ],
        };
        let st = ImageStatus::from_response(&resp).unwrap();
        assert_eq!(st.layers.len(), 2);
        assert!(st.complete());
        assert_eq!(st.peers[1].hostname, "s2?");
        let mut partial = resp.clone();
        partial.peers.truncate(1);
        let st = ImageStatus::from_response(&partial).unwrap();
        assert_eq!(st.layers_done(), 1);
        assert!(!st.complete());
        assert!(!ImageStatus::default().complete());
        let mut big = resp;
        big.image = Some(Image {
            layers: vec![layer("x".repeat(MAX_URL_LEN + 1), None)],
        });
        assert!(ImageStatus::from_response(&big).is_err());
    }
}
