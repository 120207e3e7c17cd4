//! The node's one configuration: a TOML file (default [`DEFAULT_PATH`]), environment variables
//! and command-line flags layered over built-in defaults that work on one machine.
//!
//! Precedence, lowest first: [built-in defaults](Config::default) < the file < environment
//! variables (`DFAGENT_<SECTION>__<KEY>`, known keys only) < flags ([`Overrides`]). Every
//! section denies unknown keys; an unknown key or a bad value is a [`ConfigError`] naming the
//! key and where it came from (the file's path, the environment variable, the flag).
//!
//! Secrets (registry passwords) are [`Secret`]s: they print as `<redacted>` in `Debug`, in
//! [`Config::to_toml_redacted`] and in errors. `docs/configuration.md` documents every key;
//! [`Config::default_commented`] is the same as a commented file.
//!
//! This module only reads and checks settings; the binary and the daemon decide what to do
//! with them ([`Config::to_node_config`], [`Config::mount_options`], the `daemon` and `log`
//! sections).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dfagent_registry::{HostConfig, HostCredentials, RegistryConfig, Secret};
use dfagent_resolver::prefetch::PrefetchPolicy;
use dfagent_resolver::ResolverConfig;
use dfagent_store::StoreConfig;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::mount::MountOptions;
use crate::node::{NodeConfig, StoreSettings};

/// Where the configuration file is looked for when no path is given. A missing file there
/// means the built-in defaults.
pub const DEFAULT_PATH: &str = "/etc/dfagent/config.toml";

/// Prefix of the environment variables that set configuration keys: `DFAGENT_` + the key
/// path in upper case with `__` between levels (`DFAGENT_STORE__CAPACITY`).
pub const ENV_PREFIX: &str = "DFAGENT_";

/// The peer key's file name in the store's directory (when `peer.identity_file` is unset).
pub const PEER_IDENTITY_FILE: &str = "peer-identity.key";

/// Separator of key levels in environment variable names.
const ENV_SEPARATOR: &str = "__";

/// Key names whose values are secrets: their values never appear in errors.
const SECRET_KEYS: &[&str] = &["password", "secret"];

// ---------------------------------------------------------------------------------------------
// The schema

/// The whole configuration of a node. `Default` is what works on one machine: the store under
/// `/var/lib/dfagent`, the socket under `/run/dfagent`, metrics on loopback, registries
/// reached with the docker config's credentials.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[store]`: the chunk store on disk.
    pub store: StoreSection,
    /// `[cache]`: memory the resolver uses.
    pub cache: CacheSection,
    /// `[mount]`: defaults of every mount.
    pub mount: MountSection,
    /// `[log]`: log output.
    pub log: LogSection,
    /// `[daemon]`: the daemon's control socket and metrics endpoint.
    pub daemon: DaemonSection,
    /// `[peer]`: the peer network (off by default).
    pub peer: PeerSection,
    /// `[dragonfly]`: the Dragonfly tier (off by default).
    pub dragonfly: DragonflySection,
    /// `[snapshotter]`: containerd's snapshotter API, served by the daemon.
    pub snapshotter: SnapshotterSection,
    /// `[registry]`: the registry client, and per-host settings under `[registry.hosts]`.
    pub registry: RegistrySection,
}

/// `[store]`: where chunks are kept on disk and how much.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Directory of the chunk store (RocksDB). Default `/var/lib/dfagent/store`.
    pub path: PathBuf,
    /// Most bytes of chunk data the store keeps: an integer of bytes or a size string (`10G`,
    /// `500M`; powers of 1024). Default 10G.
    #[serde(with = "size")]
    pub capacity: u64,
    /// Whether chunks of pinned (mounted or pulled) images may be evicted, last, when nothing
    /// else is left; `false` fails new writes instead. Default true.
    pub evict_pinned: bool,
}

impl Default for StoreSection {
    fn default() -> Self {
        let s = StoreSettings::default();
        Self {
            path: s.path,
            capacity: s.config.capacity,
            evict_pinned: s.config.evict_pinned,
        }
    }
}

/// `[cache]`: memory of the resolver core every mount shares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Size of the in-memory cache of decoded, verified chunks, in MiB. Default 256.
    pub decoded_mib: u64,
    /// Verified chunks that may wait for the store writer; beyond that, writes are dropped
    /// (and counted) rather than slowing reads. Default 64.
    pub write_queue: usize,
}

impl Default for CacheSection {
    fn default() -> Self {
        let r = ResolverConfig::default();
        Self {
            decoded_mib: r.cache_bytes >> 20,
            write_queue: r.write_queue,
        }
    }
}

/// What a mount fetches in the background.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefetch {
    /// Nothing: every chunk is fetched when read.
    None,
    /// The files and directories of the image's prefetch table.
    Table,
    /// The prefetch table, then every other chunk of the image.
    #[default]
    All,
}

impl From<Prefetch> for PrefetchPolicy {
    fn from(p: Prefetch) -> Self {
        match p {
            Prefetch::None => PrefetchPolicy::None,
            Prefetch::Table => PrefetchPolicy::Table,
            Prefetch::All => PrefetchPolicy::All,
        }
    }
}

/// `[mount]`: defaults of every mount (a mount request may override them). The values come
/// from [`MountOptions::default`], the one definition of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MountSection {
    /// Background fetch of registry images: `none`, `table` or `all` (default).
    pub prefetch: Prefetch,
    /// File data fetched ahead of a sequential reader, in MiB (0: none). Default 16.
    pub readahead_mib: u64,
    /// Let every user use a mount (FUSE `allow_other`), as the files' modes allow; else only
    /// the user who mounted it (root, for the daemon). Default false.
    pub allow_other: bool,
    /// Honour images' set-user-id bits (else `nosuid`). Default false: images are untrusted.
    pub suid: bool,
    /// Honour images' device files (else `nodev`). Default false.
    pub dev: bool,
}

impl Default for MountSection {
    fn default() -> Self {
        let m = MountOptions::default();
        Self {
            prefetch: match m.prefetch {
                PrefetchPolicy::None => Prefetch::None,
                PrefetchPolicy::Table => Prefetch::Table,
                PrefetchPolicy::All => Prefetch::All,
            },
            readahead_mib: m.readahead >> 20,
            allow_other: m.allow_other,
            suid: m.suid,
            dev: m.dev,
        }
    }
}

/// `[registry]`: how registries are reached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// Docker `config.json` whose `auths` give credentials. Unset:
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; a missing file means none.
    pub docker_config: Option<PathBuf>,
    /// PEM file of extra CA certificates trusted for HTTPS registries (besides the system's).
    pub ca_file: Option<PathBuf>,
    /// Retries of a request that failed transiently (connection error, 429, 5xx). Default 4.
    pub retries: u32,
    /// First backoff before a retry, doubled each time (capped at 5 s). Default `100ms`.
    #[serde(with = "duration")]
    pub retry_delay: Duration,
    /// Time allowed to establish a connection. Default `3s`.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Longest silence allowed while waiting for response bytes. Default `30s`.
    #[serde(with = "duration")]
    pub read_timeout: Duration,
    /// How long a mirror that failed with a connection error or 5xx is skipped. Default `30s`.
    #[serde(with = "duration")]
    pub mirror_holdoff: Duration,
    /// Platform picked from image indexes, `OS/ARCH` in OCI spelling. Default `linux/amd64`.
    #[serde(deserialize_with = "platform")]
    pub platform: String,
    /// Per-host settings by `host[:port]` (`[registry.hosts."HOST[:PORT]"]`; a key without a
    /// port applies to every port of the host).
    #[serde(deserialize_with = "hosts")]
    pub hosts: BTreeMap<String, RegistryHost>,
}

impl Default for RegistrySection {
    fn default() -> Self {
        let r = RegistryConfig::default();
        Self {
            docker_config: r.docker_config,
            ca_file: r.extra_ca,
            retries: r.retries,
            retry_delay: r.retry_base_delay,
            connect_timeout: r.connect_timeout,
            read_timeout: r.read_timeout,
            mirror_holdoff: r.mirror_holdoff,
            platform: format!("{}/{}", r.platform.0, r.platform.1),
            hosts: BTreeMap::new(),
        }
    }
}

/// `[registry.hosts."HOST[:PORT]"]`: settings of one registry host. Credentials are either
/// `username` and `password`, or `credential_file`, or neither (then the docker config's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HostFields", into = "HostFields")]
pub struct RegistryHost {
    /// Speak plain HTTP to this host (loopback hosts always are). Default false.
    pub plain_http: bool,
    /// Mirrors (`host[:port]`) tried in order before the host itself for reads.
    pub mirrors: Vec<String>,
    /// User name, with `password`.
    pub username: Option<String>,
    /// Password, with `username`.
    pub password: Option<Secret>,
    /// A file holding `user:password` on one line, or a docker `config.json` whose `auths`
    /// entry for this host is used. Read when the registry client starts.
    pub credential_file: Option<PathBuf>,
}

/// The keys of a host entry as written, before the rules that tie them together are checked.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HostFields {
    plain_http: bool,
    #[serde(deserialize_with = "mirrors")]
    mirrors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential_file: Option<PathBuf>,
}

impl TryFrom<HostFields> for RegistryHost {
    type Error = String;
    fn try_from(f: HostFields) -> Result<Self, String> {
        if f.credential_file.is_some() && (f.username.is_some() || f.password.is_some()) {
            return Err("give either username and password, or credential_file, not both".into());
        }
        if f.username.is_some() != f.password.is_some() {
            return Err("username and password go together".into());
        }
        Ok(Self {
            plain_http: f.plain_http,
            mirrors: f.mirrors,
            username: f.username,
            password: f.password,
            credential_file: f.credential_file,
        })
    }
}

impl From<RegistryHost> for HostFields {
    fn from(h: RegistryHost) -> Self {
        Self {
            plain_http: h.plain_http,
            mirrors: h.mirrors,
            username: h.username,
            password: h.password,
            credential_file: h.credential_file,
        }
    }
}

impl RegistryHost {
    /// The registry client's settings of this host.
    pub fn to_host_config(&self) -> HostConfig {
        let credentials = match (&self.username, &self.password, &self.credential_file) {
            (Some(username), Some(password), _) => Some(HostCredentials::Basic {
                username: username.clone(),
                password: password.clone(),
            }),
            (_, _, Some(path)) => Some(HostCredentials::File(path.clone())),
            _ => None,
        };
        HostConfig {
            plain_http: self.plain_http,
            mirrors: self.mirrors.clone(),
            credentials,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: log output (on stderr).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A tracing env-filter directive (`info`, `warn,dfagent_registry=debug`). Default `info`.
    #[serde(deserialize_with = "non_empty")]
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// The group given access to the daemon's socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketGroup {
    /// A group name, resolved by the daemon.
    Name(String),
    /// A numeric group id.
    Id(u32),
}

/// `[daemon]`: where the daemon listens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    /// Path of the control socket. Default `/run/dfagent/dfagent.sock`.
    pub socket: PathBuf,
    /// Group allowed to use the socket: a name or a numeric gid; empty (default) = root only.
    #[serde(deserialize_with = "socket_group")]
    pub socket_group: String,
    /// Address of the Prometheus metrics endpoint (`IP:PORT`); empty = no endpoint. Default
    /// `127.0.0.1:9464`.
    #[serde(with = "optional_addr")]
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for DaemonSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/dfagent/dfagent.sock"),
            socket_group: String::new(),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        }
    }
}

impl DaemonSection {
    /// The socket's group: `None` for root only, else a name or a gid (a value of digits only).
    pub fn group(&self) -> Option<SocketGroup> {
        let g = self.socket_group.trim();
        if g.is_empty() {
            None
        } else if let Ok(id) = g.parse::<u32>() {
            Some(SocketGroup::Id(id))
        } else {
            Some(SocketGroup::Name(g.to_string()))
        }
    }
}

/// `[snapshotter]`: the daemon serves containerd's snapshotter API (a `proxy_plugins` entry of
/// type `snapshot`): Nydus images become one lazy mount per image under each container's
/// overlay, other images are unpacked by containerd as with its overlayfs snapshotter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotterSection {
    /// Serve it. Default true (containerd uses it only when configured to).
    pub enable: bool,
    /// Its socket (root only); empty (default) = `snapshotter.sock` beside `daemon.socket`.
    pub socket: PathBuf,
    /// Its directory (snapshots, container upper dirs, image mounts; root only); empty
    /// (default) = `snapshotter` beside `store.path`.
    pub root: PathBuf,
}

impl Default for SnapshotterSection {
    fn default() -> Self {
        Self {
            enable: true,
            socket: PathBuf::new(),
            root: PathBuf::new(),
        }
    }
}

/// `[peer]`: the peer network — this node fetches chunks from other nodes and serves its own to
/// them, by digest, verified on arrival. Off by default: an open port that serves chunks of
/// private images must be a decision. Every value below is checked when the file is read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerSection {
    /// Start the peer network (the daemon only). Default false.
    pub enable: bool,
    /// Addresses listened on (multiaddrs, TCP). Default TCP port 7010 of every address.
    #[serde(deserialize_with = "multiaddrs")]
    pub listen: Vec<String>,
    /// Addresses other nodes are told to dial (multiaddrs). Empty (default): the listen
    /// addresses, unspecified ones expanded to the node's interfaces, skipping loopback and
    /// container bridges.
    #[serde(deserialize_with = "multiaddrs")]
    pub advertise: Vec<String>,
    /// Peers dialled at start (multiaddrs, `/p2p/<peer id>` optional).
    #[serde(deserialize_with = "multiaddrs")]
    pub bootstrap: Vec<String>,
    /// DNS names (`name:port`) that resolve to peers (a Kubernetes headless Service), resolved
    /// again every `dns_refresh`; every address found is dialled.
    #[serde(deserialize_with = "dns_names")]
    pub bootstrap_dns: Vec<String>,
    /// How often `bootstrap_dns` names are resolved again. Default `1m`.
    #[serde(with = "duration")]
    pub dns_refresh: Duration,
    /// Find peers on the local link with mDNS. Default false.
    pub mdns: bool,
    /// The cluster secret: a node without it can neither fetch from nor serve to the cluster.
    /// Unset (default): anyone who reaches the port can fetch chunks (a warning is logged).
    pub secret: Option<Secret>,
    /// A file holding the cluster secret (instead of `secret`), read at start.
    pub secret_file: Option<PathBuf>,
    /// The node's key (its peer id). Unset (default): `peer-identity.key` in the store's
    /// directory, so a node keeps its peer id across restarts.
    pub identity_file: Option<PathBuf>,
    /// Requests served at once; beyond that, requesters are told "busy" and ask another node.
    /// Default 16.
    pub max_uploads: usize,
    /// Threads that read and verify chunks for peers, at lowered CPU and I/O priority (below
    /// the node's own reads). Default 2.
    pub serve_threads: usize,
    /// Serve jobs that may wait for those threads; beyond that, requesters are told "busy".
    /// Default 8.
    pub serve_queue: usize,
    /// Serve threads in the idle I/O class instead of best-effort level 7 (they may then wait
    /// as long as the node reads). Default false.
    pub serve_io_idle: bool,
    /// Requests open to one peer at once. Default 4.
    pub max_inflight_per_peer: usize,
    /// Providers one batch of chunks is split across. Default 3.
    pub providers_asked: usize,
    /// How long the providers found for a blob are remembered (looked up again earlier when
    /// they all miss). Default `1m`.
    #[serde(with = "duration")]
    pub provider_ttl: Duration,
    /// How long a peer that sent a chunk failing verification is not asked. Default `10m`.
    #[serde(with = "duration")]
    pub ban: Duration,
    /// Longest wait for a batch from peers (plus a second per MiB asked for; each read of an
    /// answer also times out on its own). Default `10s`.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Lifetime of this node's provider records in the DHT; they are published again before
    /// they expire. Default `1h`.
    #[serde(with = "duration")]
    pub record_ttl: Duration,
}

impl Default for PeerSection {
    fn default() -> Self {
        let p = dfagent_peer::PeerConfig::default();
        Self {
            enable: false,
            listen: p.listen.iter().map(|a| a.to_string()).collect(),
            advertise: Vec::new(),
            bootstrap: Vec::new(),
            bootstrap_dns: Vec::new(),
            dns_refresh: p.dns_refresh,
            mdns: p.mdns,
            secret: None,
            secret_file: None,
            identity_file: None,
            max_uploads: p.max_uploads,
            serve_threads: p.serve_threads,
            serve_queue: p.serve_queue,
            serve_io_idle: p.serve_io_idle,
            max_inflight_per_peer: p.max_inflight_per_peer,
            providers_asked: p.providers_asked,
            provider_ttl: p.provider_ttl,
            ban: p.ban,
            request_timeout: p.request_timeout,
            record_ttl: p.record_ttl,
        }
    }
}

/// `[dragonfly]`: the Dragonfly tier — chunks no peer holds are fetched through the cluster's
/// Dragonfly seed peers ("supernodes", found through the scheduler) before the registry, so the
/// registry serves each blob about once per cluster. Off by default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DragonflySection {
    /// Use Dragonfly (the daemon, and `dfagent seed`). Default false.
    pub enable: bool,
    /// Scheduler addresses (`host:port`); the first that answers is used.
    #[serde(deserialize_with = "scheduler_addrs")]
    pub schedulers: Vec<String>,
    /// How often the scheduler is asked for its seed peers again. Default `30s`.
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
    /// How often each seed peer's health is checked. Default `10s`.
    #[serde(with = "duration")]
    pub health_interval: Duration,
    /// Bound on opening a connection to the scheduler or a seed. Default `2s`.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Bound on one request to a seed (plus a second per MiB asked for). Default `10s`.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// How long a seed that sent bytes failing verification is not asked. Default `10m`.
    #[serde(with = "duration")]
    pub avoid_bad_bytes: Duration,
    /// How long a seed that failed a request is not asked. Default `30s`.
    #[serde(with = "duration")]
    pub avoid_errors: Duration,
    /// Seeds tried for one range (in ring order) before the registry. Default 2.
    pub seeds_per_request: usize,
    /// `X-Dragonfly-Application` of requests and preheats. Default unset.
    pub application: Option<String>,
    /// `X-Dragonfly-Tag` of requests and preheats. Default unset.
    pub tag: Option<String>,
    /// Dragonfly priority (`common.v2.Priority`, 0 or 2–6) of on-demand reads. Default 6.
    pub priority: i32,
    /// Dragonfly priority of prefetch traffic and preheats. Default 5 (below reads).
    pub prefetch_priority: i32,
    /// Largest merged range request to a seed: bytes or a size string. Default `4M`.
    #[serde(with = "size")]
    pub max_range: u64,
}

impl Default for DragonflySection {
    fn default() -> Self {
        let d = dfagent_scheduler_client::DragonflyConfig::default();
        Self {
            enable: false,
            schedulers: Vec::new(),
            refresh_interval: d.refresh_interval,
            health_interval: d.health_interval,
            connect_timeout: d.connect_timeout,
            request_timeout: d.request_timeout,
            avoid_bad_bytes: d.avoid_for_bad_bytes,
            avoid_errors: d.avoid_for_errors,
            seeds_per_request: d.seeds_per_request,
            application: d.application,
            tag: d.tag,
            priority: d.priority,
            prefetch_priority: d.prefetch_priority,
            max_range: d.max_range,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Value formats

/// Sizes: an integer of bytes, or a string `N[K|M|G|T][i][B]` (powers of 1024).
mod size {
    use super::*;

    /// Parse a size string.
    pub(super) fn parse(s: &str) -> Result<u64, String> {
        let bad = || format!("invalid size {s:?}: expected bytes, or a number with K, M, G or T");
        let t = s.trim();
        let t = t
            .strip_suffix("iB")
            .or_else(|| t.strip_suffix('B'))
            .unwrap_or(t);
        let (num, shift) = match t.chars().last() {
            Some('K' | 'k') => (&t[..t.len() - 1], 10),
            Some('M' | 'm') => (&t[..t.len() - 1], 20),
            Some('G' | 'g') => (&t[..t.len() - 1], 30),
            Some('T' | 't') => (&t[..t.len() - 1], 40),
            _ => (t, 0),
        };
        let n: u64 = num.trim().parse().map_err(|_| bad())?;
        n.checked_mul(1u64 << shift)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }

    /// The shortest exact spelling: `10G`, `1536K`, `123`.
    pub(super) fn format(n: u64) -> String {
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if n != 0 && n.trailing_zeros() >= shift {
                return format!("{}{unit}", n >> shift);
            }
        }
        n.to_string()
    }

    pub(super) fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*n))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a size: bytes, or a string like \"10G\"")
        })? {
            Raw::Int(n) => Ok(n),
            Raw::Str(s) => parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// Parse a duration as the configuration spells it (`250ms`, `3s`, `30m`, `1h`), for flags.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

/// Durations: a string of a whole number and a unit, `ms`, `s`, `m` or `h` (`250ms`, `3s`).
mod duration {
    use super::*;

    /// Parse a duration string.
    pub(super) fn parse(s: &str) -> Result<Duration, String> {
        let bad =
            || format!("invalid duration {s:?}: expected a number and ms, s, m or h (\"3s\")");
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let secs = |mult: u64| {
            n.checked_mul(mult)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("duration {s:?} is too long"))
        };
        match unit.trim() {
            "ms" => Ok(Duration::from_millis(n)),
            "s" => secs(1),
            "m" => secs(60),
            "h" => secs(3600),
            _ => Err(bad()),
        }
    }

    /// The shortest exact spelling: `30s`, `100ms`, `2m`.
    pub(super) fn format(d: Duration) -> String {
        let ms = d.as_millis();
        if !ms.is_multiple_of(1000) || ms == 0 {
            return format!("{ms}ms");
        }
        let s = ms / 1000;
        if s.is_multiple_of(3600) {
            format!("{}h", s / 3600)
        } else if s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{s}s")
        }
    }

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration string like \"3s\" or \"250ms\"")
        })?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An optional socket address: `""` is none.
mod optional_addr {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        a: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match a {
            Some(a) => s.serialize_str(&a.to_string()),
            None => s.serialize_str(""),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim();
        if t.is_empty() {
            return Ok(None);
        }
        t.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid address {s:?}: expected IP:PORT (e.g. \"127.0.0.1:9464\"), or \"\" for none"
            ))
        })
    }
}

/// A non-empty string.
fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(serde::de::Error::custom("must not be empty"));
    }
    Ok(s)
}

/// `OS/ARCH`.
fn platform<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.split_once('/') {
        Some((os, arch)) if !os.is_empty() && !arch.is_empty() && !arch.contains('/') => Ok(s),
        _ => Err(serde::de::Error::custom(format!(
            "invalid platform {s:?}: expected OS/ARCH (e.g. \"linux/amd64\")"
        ))),
    }
}

/// Whether `s` is a bare `host[:port]`: no scheme, no path, no spaces.
fn is_host_port(s: &str) -> bool {
    !s.is_empty()
        && !s.contains("://")
        && !s.contains('/')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A list of `host[:port]`.
fn mirrors<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if let Some(bad) = v.iter().find(|m| !is_host_port(m)) {
        return Err(serde::de::Error::custom(format!(
            "invalid mirror {bad:?}: expected host[:port] (no scheme, no path)"
        )));
    }
    Ok(v)
}

/// The host table: keys must be `host[:port]`.
fn hosts<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, RegistryHost>, D::Error> {
    let m = BTreeMap::<String, RegistryHost>::deserialize(d)?;
    if let Some(bad) = m.keys().find(|k| !is_host_port(k)) {
        return Err(serde::de::Error::custom(format!(
            "invalid registry host {bad:?}: expected host[:port] (no scheme, no path)"
        )));
    }
    Ok(m)
}

/// A group name or a numeric gid (an integer is taken as a gid).
fn socket_group<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Id(u32),
        Name(String),
    }
    match Raw::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected a group name or a numeric gid"))?
    {
        Raw::Id(id) => Ok(id.to_string()),
        Raw::Name(n) => Ok(n),
    }
}

/// A list of multiaddrs (`/ip4/10.0.0.1/tcp/7010`).
fn multiaddrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for a in &v {
        if let Err(e) = a.parse::<dfagent_peer::Multiaddr>() {
            return Err(serde::de::Error::custom(format!(
                "invalid multiaddr {a:?}: {e} (expected e.g. \"/ip4/10.0.0.1/tcp/7010\")"
            )));
        }
    }
    Ok(v)
}

/// Scheduler addresses: `host:port`, optionally after `http://`.
fn scheduler_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for a in &v {
        let hp = a.strip_prefix("http://").unwrap_or(a);
        let ok = is_host_port(hp)
            && hp
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "invalid scheduler address {a:?}: expected host:port (e.g. \"scheduler.dragonfly-system.svc:8002\")"
            )));
        }
    }
    Ok(v)
}

/// A list of `name:port`.
fn dns_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for n in &v {
        let ok = is_host_port(n)
            && n.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "invalid DNS name {n:?}: expected name:port (e.g. \"dfagent-peers.kube-system.svc:7010\")"
            )));
        }
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A configuration that cannot be used. The message names where the setting came from (the
/// file's path, the environment variable, the flag) and the key; it never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read (an explicitly given file must exist).
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key or value is wrong.
    #[error("{origin}: {}{detail}", key_prefix(.key))]
    Invalid {
        /// Where it came from: the file's path, `DFAGENT_…`, a flag, or `built-in defaults`.
        origin: String,
        /// The key path (`store.capacity`, `registry.hosts."reg:5000".mirrors`); empty for a
        /// file that does not parse.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

/// `key: `, or nothing for no key.
fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// `store.capacity`, with segments that hold dots, colons or spaces quoted.
fn key_path<S: AsRef<str>>(path: &[S]) -> String {
    path.iter()
        .map(|s| {
            let s = s.as_ref();
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                s.to_string()
            } else {
                format!("{s:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A TOML parser message without its quoted source lines (which may show a secret).
fn without_source_lines(msg: &str) -> String {
    msg.lines()
        .filter(|l| {
            let t = l
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit());
            !t.trim_start().starts_with('|') && !l.trim().is_empty()
        })
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(": ")
}

/// Turn figment's error into ours: origin from the layer's name, key path, and a message that
/// does not show secret values.
fn from_figment(e: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let Some(e) = e.into_iter().next() else {
        return ConfigError::Invalid {
            origin: "configuration".into(),
            key: String::new(),
            detail: "invalid".into(),
        };
    };
    let origin = e
        .metadata
        .as_ref()
        .map(|m| m.name.to_string())
        .unwrap_or_else(|| "configuration".into());
    // Values of secret keys, and anything under a host entry (where a misplaced password may
    // sit), are never quoted.
    let secret = e
        .path
        .last()
        .is_some_and(|k| SECRET_KEYS.contains(&k.as_str()))
        || e.path
            .starts_with(&["registry".to_string(), "hosts".to_string()]);
    // serde names Rust types ("struct StoreSection", "enum Prefetch"); say what the file holds.
    let expected_text = |expected: &str| {
        if expected.starts_with("struct ") || expected.starts_with("map") {
            "a table".to_string()
        } else if expected.starts_with("enum ") {
            "a string (see the documented values)".to_string()
        } else {
            expected.to_string()
        }
    };
    let detail = match &e.kind {
        Kind::UnknownField(_, expected) => {
            format!("unknown key (known here: {})", expected.join(", "))
        }
        Kind::MissingField(f) => format!("missing key {f}"),
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) if secret => {
            format!(
                "invalid value (not shown): expected {}",
                expected_text(expected)
            )
        }
        Kind::InvalidType(actual, expected) => {
            format!(
                "invalid type: found {actual}, expected {}",
                expected_text(expected)
            )
        }
        Kind::InvalidValue(actual, expected) => {
            format!(
                "invalid value: found {actual}, expected {}",
                expected_text(expected)
            )
        }
        Kind::UnknownVariant(v, expected) => {
            format!(
                "unknown value {v:?}, expected one of: {}",
                expected.join(", ")
            )
        }
        Kind::Message(m) => without_source_lines(m),
        other => other.to_string(),
    };
    ConfigError::Invalid {
        origin,
        key: key_path(&e.path),
        detail,
    }
}

// ---------------------------------------------------------------------------------------------
// Layers

/// One source of settings (a file, an environment variable, a flag, the defaults), named so
/// errors can say where a bad value came from.
#[derive(Clone)]
struct Layer {
    name: String,
    data: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

/// `value` at `path` as a nested dictionary.
fn nest<S: AsRef<str>>(path: &[S], value: Value) -> Dict {
    let mut value = value;
    for seg in path.iter().skip(1).rev() {
        let mut d = Dict::new();
        d.insert(seg.as_ref().to_string(), value);
        value = Value::from(d);
    }
    let mut d = Dict::new();
    if let Some(first) = path.first() {
        d.insert(first.as_ref().to_string(), value);
    }
    d
}

/// The settings given on the command line: the highest layer. Each carries the flag's name,
/// which errors show (`--cache-capacity: store.capacity: invalid size "lots" …`). Set only
/// what the user gave; everything else comes from the lower layers.
#[derive(Clone, Default)]
pub struct Overrides {
    layers: Vec<Layer>,
    /// A value that could not be turned into a setting (reported by [`Config::load`]).
    error: Option<(String, String, String)>,
}

impl std::fmt::Debug for Overrides {
    /// Names the flags and keys, never the values (one may be a password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.layers.iter().map(|l| &l.name))
            .finish()
    }
}

impl Overrides {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the key `key` (dotted: `store.capacity`) to `value`, given by the flag `flag`.
    /// Values take the file's forms: `"10G"` or `10737418240` for a size, `"3s"` for a
    /// duration, and so on.
    pub fn set(self, flag: &str, key: &str, value: impl Serialize) -> Self {
        let path: Vec<&str> = key.split('.').collect();
        self.set_path(flag, &path, value)
    }

    /// [`Overrides::set`] with the key as segments, for keys whose segments hold dots
    /// (`["registry", "hosts", "10.0.0.1:5000", "plain_http"]`).
    pub fn set_path(mut self, flag: &str, path: &[&str], value: impl Serialize) -> Self {
        match Value::serialize(value) {
            Ok(v) => self.layers.push(Layer {
                name: flag.to_string(),
                data: nest(path, v),
            }),
            Err(e) => {
                self.error.get_or_insert((
                    flag.to_string(),
                    key_path(path),
                    format!("cannot be a setting: {}", e.kind),
                ));
            }
        }
        self
    }
}

/// Every leaf key of `value` with its value (dictionaries are walked, everything else is a
/// leaf; an empty dictionary has none).
fn leaves(prefix: &[String], value: &Value, out: &mut Vec<(Vec<String>, Value)>) {
    match value {
        Value::Dict(_, d) => {
            for (k, v) in d {
                let mut p = prefix.to_vec();
                p.push(k.clone());
                leaves(&p, v, out);
            }
        }
        v => out.push((prefix.to_vec(), v.clone())),
    }
}

/// The leaf keys of the schema with their defaults. Keys whose default is unset are included
/// (they serialize as empty). Host entries appear once, under the placeholder `HOST`.
fn schema() -> Vec<(Vec<String>, Value)> {
    let mut out = Vec::new();
    if let Ok(v) = Value::serialize(Config::default()) {
        leaves(&[], &v, &mut out);
    }
    let host = RegistryHost::default();
    let fields = HostFields {
        username: Some(String::new()),
        password: Some(Secret::default()),
        credential_file: Some(PathBuf::new()),
        ..HostFields::from(host)
    };
    if let Ok(v) = Value::serialize(fields) {
        let prefix = ["registry", "hosts", "HOST"].map(String::from);
        leaves(&prefix, &v, &mut out);
    }
    out
}

/// The environment variable of a key path (`DFAGENT_STORE__CAPACITY`).
fn env_name<S: AsRef<str>>(path: &[S]) -> String {
    let keys: Vec<String> = path.iter().map(|s| s.as_ref().to_uppercase()).collect();
    format!("{ENV_PREFIX}{}", keys.join(ENV_SEPARATOR))
}

/// One layer per environment variable that names a known key. Values of string keys are taken
/// as they are; others are parsed as figment parses environment values (`true`, `16`, `[a, b]`).
fn env_layers(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<Layer>, ConfigError> {
    let known: BTreeMap<String, (Vec<String>, bool)> = schema()
        .into_iter()
        .filter(|(p, _)| !(p.len() > 2 && p[0] == "registry" && p[1] == "hosts"))
        .map(|(p, v)| {
            let stringy = matches!(v, Value::String(..) | Value::Empty(..));
            (env_name(&p), (p, stringy))
        })
        .collect();
    let mut layers = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        let upper = name.to_uppercase();
        let Some((path, stringy)) = known.get(&upper) else {
            if name.contains(ENV_SEPARATOR) {
                tracing::warn!(
                    variable = name,
                    "environment variable looks like a configuration key but names none; ignored"
                );
            }
            continue;
        };
        if !seen.insert(upper) {
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError::Invalid {
            origin: name.to_string(),
            key: key_path(path),
            detail: "not UTF-8".into(),
        })?;
        let value = if *stringy {
            Value::from(value)
        } else {
            value.parse::<Value>().unwrap_or_else(|e| match e {})
        };
        layers.push(Layer {
            name: name.to_string(),
            data: nest(path, value),
        });
    }
    Ok(layers)
}

/// The file layer: `Ok(None)` for a missing file at the default path.
fn file_layer(path: Option<&Path>) -> Result<Option<Layer>, ConfigError> {
    let (path, explicit) = match path {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_PATH), false),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(path = %path.display(), "no configuration file; using the defaults");
            return Ok(None);
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let name = path.display().to_string();
    use figment::providers::Format as _;
    let data = figment::providers::Toml::string(&text)
        .data()
        .map_err(|e| {
            let mut err = from_figment(e);
            if let ConfigError::Invalid { origin, .. } = &mut err {
                origin.clone_from(&name);
            }
            err
        })?
        .remove(&Profile::Default)
        .unwrap_or_default();
    tracing::debug!(path = %name, "configuration file read");
    Ok(Some(Layer { name, data }))
}

// ---------------------------------------------------------------------------------------------
// Loading and output

impl Config {
    /// Load the configuration: defaults < the file at `path` (or [`DEFAULT_PATH`], which may be
    /// missing; a given path must exist) < the process's `DFAGENT_<SECTION>__<KEY>` environment
    /// variables < `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars_os(), overrides)
    }

    /// [`Config::load`] with the environment given (tests, or a caller that filters it).
    /// Variables that do not name a known key are ignored: the project's other `DFAGENT_*`
    /// variables (`DFAGENT_STORE`, `DFAGENT_SHARED`, …) are not configuration.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        if let Some((origin, key, detail)) = &overrides.error {
            return Err(ConfigError::Invalid {
                origin: origin.clone(),
                key: key.clone(),
                detail: detail.clone(),
            });
        }
        let defaults = Value::serialize(Config::default()).map_err(from_figment)?;
        let defaults = Layer {
            name: "built-in defaults".into(),
            data: defaults.into_dict().unwrap_or_default(),
        };
        let mut figment = Figment::from(defaults);
        if let Some(file) = file_layer(path)? {
            figment = figment.merge(file);
        }
        for layer in env_layers(env)? {
            figment = figment.merge(layer);
        }
        for layer in &overrides.layers {
            figment = figment.merge(layer.clone());
        }
        figment.extract::<Config>().map_err(from_figment)
    }

    /// Every key of the schema, dotted (`store.capacity`); host keys appear once as
    /// `registry.hosts.HOST.<key>`.
    pub fn keys() -> Vec<String> {
        schema().iter().map(|(p, _)| p.join(".")).collect()
    }

    /// The environment variable that sets `key` (dotted), if it has one: host keys have none.
    pub fn env_var(key: &str) -> Option<String> {
        let path: Vec<&str> = key.split('.').collect();
        let known = schema().iter().any(|(p, _)| *p == path);
        (known && !key.starts_with("registry.hosts.")).then(|| env_name(&path))
    }

    /// The node's settings: the store (always configured), the registry client, the resolver.
    pub fn to_node_config(&self) -> NodeConfig {
        NodeConfig {
            store: Some(StoreSettings {
                path: self.store.path.clone(),
                config: StoreConfig {
                    capacity: self.store.capacity,
                    evict_pinned: self.store.evict_pinned,
                    ..StoreConfig::default()
                },
            }),
            registry: self.registry_config(),
            resolver: ResolverConfig {
                cache_bytes: self.cache.decoded_mib.saturating_mul(1 << 20),
                write_queue: self.cache.write_queue,
                ..ResolverConfig::default()
            },
        }
    }

    /// The registry client's settings (part of [`Config::to_node_config`]).
    pub fn registry_config(&self) -> RegistryConfig {
        let r = &self.registry;
        let (os, arch) = r
            .platform
            .split_once('/')
            .map(|(o, a)| (o.to_string(), a.to_string()))
            .unwrap_or_else(|| RegistryConfig::default().platform);
        RegistryConfig {
            insecure: Vec::new(),
            hosts: r
                .hosts
                .iter()
                .map(|(k, h)| (k.clone(), h.to_host_config()))
                .collect(),
            mirror_holdoff: r.mirror_holdoff,
            extra_ca: r.ca_file.clone(),
            docker_config: r.docker_config.clone(),
            connect_timeout: r.connect_timeout,
            read_timeout: r.read_timeout,
            retries: r.retries,
            retry_base_delay: r.retry_delay,
            platform: (os, arch),
        }
    }

    /// The Dragonfly client's settings, `None` when `[dragonfly] enable` is false; checked here
    /// (no scheduler, a zero interval, a priority out of range are errors naming the key).
    pub fn dragonfly_config(
        &self,
    ) -> Result<Option<dfagent_scheduler_client::DragonflyConfig>, ConfigError> {
        let d = &self.dragonfly;
        if !d.enable {
            return Ok(None);
        }
        let c = dfagent_scheduler_client::DragonflyConfig {
            schedulers: d.schedulers.clone(),
            refresh_interval: d.refresh_interval,
            health_interval: d.health_interval,
            connect_timeout: d.connect_timeout,
            request_timeout: d.request_timeout,
            avoid_for_bad_bytes: d.avoid_bad_bytes,
            avoid_for_errors: d.avoid_errors,
            seeds_per_request: d.seeds_per_request,
            application: d.application.clone(),
            tag: d.tag.clone(),
            priority: d.priority,
            prefetch_priority: d.prefetch_priority,
            max_range: d.max_range,
        };
        c.validate().map_err(|e| ConfigError::Invalid {
            origin: "configuration".into(),
            key: "dragonfly".into(),
            detail: e.to_string(),
        })?;
        Ok(Some(c))
    }

    /// The peer network's settings, `None` when `[peer] enable` is false. Reads `secret_file`;
    /// `secret` and `secret_file` together, or an empty secret, are errors (naming the key,
    /// never the value).
    pub fn peer_config(&self) -> Result<Option<dfagent_peer::PeerConfig>, ConfigError> {
        let p = &self.peer;
        if !p.enable {
            return Ok(None);
        }
        let invalid = |key: &str, detail: String| ConfigError::Invalid {
            origin: "configuration".into(),
            key: format!("peer.{key}"),
            detail,
        };
        let secret = match (&p.secret, &p.secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "secret",
                    "give either secret or secret_file, not both".into(),
                ))
            }
            (Some(s), None) => Some(s.expose().as_bytes().to_vec()),
            (None, Some(path)) => {
                let text = std::fs::read(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Some(text.trim_ascii().to_vec())
            }
            (None, None) => None,
        };
        if secret.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(invalid("secret", "the cluster secret is empty".into()));
        }
        let addrs = |key: &str, v: &[String]| {
            v.iter()
                .map(|a| {
                    a.parse::<dfagent_peer::Multiaddr>()
                        .map_err(|e| invalid(key, format!("invalid multiaddr {a:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Some(dfagent_peer::PeerConfig {
            listen: addrs("listen", &p.listen)?,
            advertise: addrs("advertise", &p.advertise)?,
            bootstrap: addrs("bootstrap", &p.bootstrap)?,
            bootstrap_dns: p.bootstrap_dns.clone(),
            dns_refresh: p.dns_refresh,
            mdns: p.mdns,
            secret,
            identity_file: p
                .identity_file
                .clone()
                .unwrap_or_else(|| self.store.path.join(PEER_IDENTITY_FILE)),
            max_uploads: p.max_uploads,
            serve_threads: p.serve_threads,
            serve_queue: p.serve_queue,
            serve_io_idle: p.serve_io_idle,
            max_inflight_per_peer: p.max_inflight_per_peer,
            providers_asked: p.providers_asked,
            provider_ttl: p.provider_ttl,
            ban: p.ban,
            request_timeout: p.request_timeout,
            record_ttl: p.record_ttl,
            ..dfagent_peer::PeerConfig::default()
        }))
    }

    /// The snapshotter's `(socket, root)`, `None` when `[snapshotter] enable` is false; empty
    /// paths resolved beside the control socket and the store.
    pub fn snapshotter_paths(&self) -> Option<(PathBuf, PathBuf)> {
        let s = &self.snapshotter;
        if !s.enable {
            return None;
        }
        let beside = |p: &Path, name: &str| {
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("/"))
                .join(name)
        };
        let socket = if s.socket.as_os_str().is_empty() {
            beside(&self.daemon.socket, "snapshotter.sock")
        } else {
            s.socket.clone()
        };
        let root = if s.root.as_os_str().is_empty() {
            beside(&self.store.path, "snapshotter")
        } else {
            s.root.clone()
        };
        Some((socket, root))
    }

    /// The default options of a mount (`force` and `container_rootfs` off: they are per mount).
    pub fn mount_options(&self) -> MountOptions {
        MountOptions {
            prefetch: self.mount.prefetch.into(),
            readahead: self.mount.readahead_mib.saturating_mul(1 << 20),
            allow_other: self.mount.allow_other,
            suid: self.mount.suid,
            dev: self.mount.dev,
            ..MountOptions::default()
        }
    }

    /// The effective configuration as TOML, secrets shown as `<redacted>` (what `dfagent
    /// config` prints). Unset optional keys are left out.
    pub fn to_toml_redacted(&self) -> String {
        toml::to_string(self)
            .unwrap_or_else(|e| format!("# the configuration cannot be shown as TOML: {e}\n"))
    }

    /// A configuration file that documents every key, with the defaults set (what `dfagent
    /// config --default` prints). It parses back to `Config::default()`.
    pub fn default_commented() -> String {
        DEFAULT_FILE.to_string()
    }
}

/// The commented default file (kept in step with the schema by the tests).
const DEFAULT_FILE: &str = r#"# dfagent configuration (/etc/dfagent/config.toml).
#
# Every key is optional; a missing file means these defaults, which work on one machine.
# Precedence: command-line flags > environment > this file > defaults. Environment variables
# are DFAGENT_ + the key path in upper case with "__" between levels, e.g.
# DFAGENT_STORE__CAPACITY=20G (registry host entries have none). Unknown keys are errors.
# Sizes: bytes, or a number with K, M, G or T (powers of 1024). Durations: a number with
# ms, s, m or h. See docs/configuration.md.

[store]
# Directory of the chunk store (RocksDB).
path = "/var/lib/dfagent/store"
# Most chunk data the store keeps; least recently used chunks are evicted first.
capacity = "10G"
# Evict chunks of pinned (mounted or pulled) images, last, when nothing else is left;
# false: fail new writes instead.
evict_pinned = true

[cache]
# In-memory cache of decoded, verified chunks, in MiB.
decoded_mib = 256
# Verified chunks that may wait for the store writer (beyond: dropped and counted).
write_queue = 64

[mount]
# Background fetch of registry images: "none", "table" (the image's prefetch table) or "all".
prefetch = "all"
# File data fetched ahead of a sequential reader, in MiB (0: none).
readahead_mib = 16
# Let every user use a mount (FUSE allow_other), as the files' modes allow; false: only the
# user who mounted it (root, for the daemon). Containers running as non-root need it.
allow_other = false
# Honour images' set-user-id bits and device files (false: nosuid, nodev). Images are
# untrusted: a setuid-root binary in one runs as root. The daemon applies these to root's
# mounts only.
suid = false
dev = false

[log]
# "text" or "json".
format = "text"
# A tracing env-filter directive, e.g. "info" or "warn,dfagent_registry=debug".
level = "info"

[daemon]
# The control socket.
socket = "/run/dfagent/dfagent.sock"
# Group allowed to use the socket (a name or a numeric gid); "" = root only.
socket_group = ""
# Prometheus metrics endpoint, IP:PORT; "" = none.
metrics_addr = "127.0.0.1:9464"

[peer]
# The peer network: fetch chunks from other nodes, serve ours to them (the daemon only).
# Off by default: an open port that serves chunks of private images must be a decision.
enable = false
# Multiaddrs listened on (TCP).
listen = ["/ip4/0.0.0.0/tcp/7010"]
# Multiaddrs other nodes dial; [] = the listen addresses on this node's interfaces, skipping
# loopback and container bridges.
advertise = []
# Peers dialled at start (multiaddrs, /p2p/<peer id> optional).
bootstrap = []
# name:port DNS names of peers (a Kubernetes headless Service), resolved every dns_refresh.
bootstrap_dns = []
dns_refresh = "1m"
# Find peers on the local link with mDNS.
mdns = false
# The cluster secret (or secret_file); unset = anyone who reaches the port can fetch chunks.
# secret = "..."
# secret_file = "/etc/dfagent/peer-secret"
# The node's key (its peer id); unset = peer-identity.key in the store's directory.
# identity_file = "/var/lib/dfagent/store/peer-identity.key"
# Requests served at once (beyond: "busy"); requests open to one peer at once.
max_uploads = 16
max_inflight_per_peer = 4
# Threads reading and verifying chunks for peers at lowered CPU and I/O priority, the jobs that
# may wait for them (beyond: "busy"), and the idle I/O class instead of best-effort level 7.
serve_threads = 2
serve_queue = 8
serve_io_idle = false
# Providers one batch is split across; how long providers found for a blob are remembered.
providers_asked = 3
provider_ttl = "1m"
# How long a peer that sent a chunk failing verification is not asked.
ban = "10m"
# Longest wait for one request to a peer.
request_timeout = "10s"
# Lifetime of our provider records in the DHT (published again before they expire).
record_ttl = "1h"

[dragonfly]
# Fetch chunks no peer holds through the cluster's Dragonfly seed peers before the registry.
enable = false
# Scheduler addresses (host:port); the first that answers is used.
schedulers = []
# How often the scheduler is asked for its seed peers again.
refresh_interval = "30s"
# How often each seed peer's health is checked.
health_interval = "10s"
# Bound on opening a connection to the scheduler or a seed.
connect_timeout = "2s"
# Bound on one request to a seed (plus a second per MiB asked for).
request_timeout = "10s"
# How long a seed that sent bytes failing verification is not asked.
avoid_bad_bytes = "10m"
# How long a seed that failed a request is not asked.
avoid_errors = "30s"
# Seeds tried for one range before the registry.
seeds_per_request = 2
# X-Dragonfly-Application and X-Dragonfly-Tag of requests and preheats (unset by default).
# application = "dfagent"
# tag = "prod"
# Dragonfly priorities (common.v2.Priority): on-demand reads, and prefetch and preheats.
priority = 6
prefetch_priority = 5
# Largest merged range request to a seed.
max_range = "4M"

[snapshotter]
# Serve containerd's snapshotter API (register it in containerd's config as
# [proxy_plugins.dfagent] type = "snapshot", address = this socket).
enable = true
# Its socket (root only); "" = snapshotter.sock beside daemon.socket.
socket = ""
# Snapshots, container upper dirs and image mounts (root only); "" = "snapshotter" beside
# store.path.
root = ""

[registry]
# Docker config.json whose "auths" give credentials. Unset: $DOCKER_CONFIG/config.json,
# else ~/.docker/config.json; a missing file means anonymous access.
# docker_config = "/root/.docker/config.json"
# PEM file of extra CA certificates for HTTPS registries (besides the system's).
# ca_file = "/etc/dfagent/registry-ca.pem"
# Retries of a request that failed transiently (connection error, 429, 5xx).
retries = 4
# First backoff before a retry, doubled each time (at most 5s).
retry_delay = "100ms"
# Time allowed to establish a connection.
connect_timeout = "3s"
# Longest silence allowed while waiting for response bytes.
read_timeout = "30s"
# How long a mirror that failed with a connection error or 5xx is skipped.
mirror_holdoff = "30s"
# Platform picked from image indexes, OS/ARCH.
platform = "linux/amd64"

# One table per registry host, keyed "HOST[:PORT]" (a key without a port applies to every
# port). localhost and 127.0.0.0/8 are always plain HTTP.
#
# [registry.hosts."registry.example.com"]
# # Speak plain HTTP to this host.
# plain_http = false
# # Mirrors tried in order before the host for reads (manifests, blobs); a mirror that fails
# # (connection error, 5xx, 404, ...) falls back to the next, and to the host last.
# mirrors = ["mirror-a.example.com:5000", "mirror-b.example.com"]
# # Credentials: username and password, or credential_file (a file of one line
# # "user:password", or a docker config.json whose "auths" entry for this host is used).
# # Without them the docker config's credentials are used.
# username = "robot"
# password = "secret"
# # credential_file = "/etc/dfagent/registry.example.com.cred"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config.toml");
        std::fs::write(&p, text).expect("write config");
        p
    }

    fn load(
        path: Option<&Path>,
        vars: &[(&str, &str)],
        o: &Overrides,
    ) -> Result<Config, ConfigError> {
        Config::load_with_env(path, env(vars), o)
    }

    /// Load with an empty file (never the machine's /etc/dfagent/config.toml).
    fn load_env(vars: &[(&str, &str)], o: &Overrides) -> Result<Config, ConfigError> {
        let tmp = tempfile::tempdir().unwrap();
        let empty = write(tmp.path(), "");
        load(Some(&empty), vars, o)
    }

    #[test]
    fn defaults_work_on_one_machine() {
        let c = Config::default();
        assert_eq!(c.store.path, Path::new("/var/lib/dfagent/store"));
        assert_eq!(c.store.capacity, 10 << 30);
        assert!(c.store.evict_pinned);
        assert_eq!(c.cache.decoded_mib, 256);
        assert_eq!(c.cache.write_queue, 64);
        assert_eq!(c.mount.prefetch, Prefetch::All);
        assert_eq!(c.mount.readahead_mib, 16);
        assert_eq!(c.registry.platform, "linux/amd64");
        assert_eq!(c.registry.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.daemon.socket, Path::new("/run/dfagent/dfagent.sock"));
        assert_eq!(c.daemon.group(), None);
        assert_eq!(
            c.daemon.metrics_addr,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(c.log.level, "info");
        assert!(!c.peer.enable && !c.dragonfly.enable);

        let n = c.to_node_config();
        let s = n.store.expect("store");
        assert_eq!(s.config.capacity, 10 << 30);
        assert_eq!(n.resolver.cache_bytes, 256 << 20);
        assert_eq!(n.registry.platform, ("linux".into(), "amd64".into()));
        assert_eq!(n.registry.retries, RegistryConfig::default().retries);
        let m = c.mount_options();
        assert_eq!(m, MountOptions::default());
        assert_eq!(m.readahead, 16 << 20);
        assert_eq!(m.prefetch, PrefetchPolicy::All);
        // Untrusted images: owner only, nosuid, nodev.
        assert!(!c.mount.allow_other && !c.mount.suid && !c.mount.dev);
        let a = m.access();
        assert!(!a.allow_other && !a.suid && !a.dev);
        assert!(!m.force && !m.container_rootfs);
    }

    #[test]
    fn mount_access_flows_from_file_env_and_flags() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), "[mount]\nallow_other = true\n");
        let vars = [("DFAGENT_MOUNT__SUID", "true")];
        let flags = Overrides::new().set("--dev", "mount.dev", true);
        let c = load(Some(&path), &vars, &flags).unwrap();
        let m = c.mount_options();
        assert!(m.allow_other && m.suid && m.dev);
        assert!(!m.container_rootfs, "not a configuration key");
        let e = load_env(&[("DFAGENT_MOUNT__SUID", "maybe")], &Overrides::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("DFAGENT_MOUNT__SUID") && e.contains("mount.suid"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_default_file_means_defaults_and_an_explicit_one_must_exist() {
        // The default path is only read if present; this test must not depend on /etc, so it
        // checks the explicit-path rule and loads with an empty file instead.
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope.toml");
        let e = load(Some(&missing), &[], &Overrides::new()).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("nope.toml"), "{e}");
        let empty = write(tmp.path(), "");
        assert_eq!(
            load(Some(&empty), &[], &Overrides::new()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn file_env_and_flags_layer_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(
            tmp.path(),
            r#"
[store]
path = "/srv/store"
capacity = "20G"
evict_pinned = false
[cache]
decoded_mib = 512
[mount]
prefetch = "table"
readahead_mib = 4
[registry]
connect_timeout = "500ms"
read_timeout = "2m"
platform = "linux/arm64"
[daemon]
socket_group = "docker"
metrics_addr = ""
[log]
format = "json"
level = "warn,dfagent_registry=debug"
"#,
        );
        let c = load(Some(&path), &[], &Overrides::new()).unwrap();
        assert_eq!(c.store.path, Path::new("/srv/store"));
        assert_eq!(c.store.capacity, 20 << 30);
        assert!(!c.store.evict_pinned);
        assert_eq!(c.cache.decoded_mib, 512);
        assert_eq!(
            c.cache.write_queue, 64,
            "untouched keys keep their defaults"
        );
        assert_eq!(c.mount.prefetch, Prefetch::Table);
        assert_eq!(c.registry.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.registry.read_timeout, Duration::from_secs(120));
        assert_eq!(
            c.registry_config().platform,
            ("linux".into(), "arm64".into())
        );
        assert_eq!(c.daemon.group(), Some(SocketGroup::Name("docker".into())));
        assert_eq!(c.daemon.metrics_addr, None);
        assert_eq!(c.log.format, LogFormat::Json);

        // The environment beats the file; flags beat the environment.
        let vars = [
            ("DFAGENT_STORE__CAPACITY", "30G"),
            ("DFAGENT_STORE__PATH", "/env/store"),
            ("DFAGENT_CACHE__DECODED_MIB", "64"),
            ("DFAGENT_STORE__EVICT_PINNED", "true"),
            ("DFAGENT_DAEMON__SOCKET_GROUP", "1000"),
            ("DFAGENT_LOG__LEVEL", "debug"),
            ("DFAGENT_REGISTRY__DOCKER_CONFIG", "/env/docker.json"),
        ];
        let c = load(Some(&path), &vars, &Overrides::new()).unwrap();
        assert_eq!(c.store.capacity, 30 << 30);
        assert_eq!(c.store.path, Path::new("/env/store"));
        assert_eq!(c.cache.decoded_mib, 64);
        assert!(c.store.evict_pinned);
        assert_eq!(c.daemon.group(), Some(SocketGroup::Id(1000)));
        assert_eq!(c.log.level, "debug");
        assert_eq!(
            c.registry.docker_config.as_deref(),
            Some(Path::new("/env/docker.json"))
        );
        let flags = Overrides::new()
            .set("--store", "store.path", "/flag/store")
            .set("--cache-capacity", "store.capacity", 1234u64)
            .set("--readahead-mib", "mount.readahead_mib", 0u64);
        let c = load(Some(&path), &vars, &flags).unwrap();
        assert_eq!(c.store.path, Path::new("/flag/store"));
        assert_eq!(c.store.capacity, 1234);
        assert_eq!(
            c.store.capacity,
            c.to_node_config().store.unwrap().config.capacity
        );
        assert_eq!(c.mount.readahead_mib, 0);
        assert_eq!(c.cache.decoded_mib, 64, "flags set only what they name");
    }

    #[test]
    fn other_dfagent_variables_are_not_configuration() {
        let vars = [
            ("DFAGENT_SHARED", "/x"),
            ("DFAGENT_STORE", "/tmp/store"),
            ("DFAGENT_READAHEAD_MIB", "1"),
            ("DFAGENT_SOCKET", "/tmp/s"),
            ("DFAGENT_CACHE", "lots"),
            ("DFAGENT_BIN", "/bin/false"),
            ("DFAGENT_RELEASE", "1"),
            ("DFAGENT_SKIP_BUILD", "1"),
            ("DFAGENT_STORE__CAPCITY", "1"),
            ("DFAGENT_REGISTRY__HOSTS", "x"),
            ("STORE__CAPACITY", "1"),
        ];
        assert_eq!(
            load_env(&vars, &Overrides::new()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_keys_name_the_file_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), "[store]\ncapcity = \"1G\"\n");
        let e = load(Some(&path), &[], &Overrides::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{}: store.capcity: unknown key", path.display())),
            "{e}"
        );
        let path = write(tmp.path(), "[stor]\npath = \"/x\"\n");
        let e = load(Some(&path), &[], &Overrides::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.toml: stor: unknown key"), "{e}");
        let path = write(
            tmp.path(),
            "[registry.hosts.\"reg.lan:5000\"]\nmirror = [\"m\"]\n",
        );
        let e = load(Some(&path), &[], &Overrides::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(r#"config.toml: registry.hosts."reg.lan:5000".mirror: unknown key"#),
            "{e}"
        );
        let path = write(tmp.path(), "[peer]\nenable = false\naddr = \"x\"\n");
        let e = load(Some(&path), &[], &Overrides::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("peer.addr: unknown key"), "{e}");
    }

    #[test]
    fn peer_settings_become_the_peer_networks_config() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(
            Config::default().peer_config().unwrap().is_none(),
            "off by default"
        );
        let secret_file = tmp.path().join("secret");
        std::fs::write(&secret_file, "s3cret-value\n").unwrap();
        let text = format!(
            "[store]\npath = \"/srv/store\"\n[peer]\nenable = true\n\
             bootstrap = [\"/ip4/10.0.0.2/tcp/7010\"]\nsecret_file = \"{}\"\nban = \"30s\"\n",
            secret_file.display()
        );
        let c = load(Some(&write(tmp.path(), &text)), &[], &Overrides::new()).unwrap();
        let p = c.peer_config().unwrap().expect("enabled");
        assert_eq!(
            p.secret.as_deref(),
            Some(&b"s3cret-value"[..]),
            "trailing newline trimmed"
        );
        assert_eq!(
            p.identity_file,
            PathBuf::from("/srv/store").join(PEER_IDENTITY_FILE)
        );
        assert_eq!(p.bootstrap.len(), 1);
        assert_eq!(p.ban, Duration::from_secs(30));

        // Both forms of the secret: an error naming the key, never the value.
        let both = format!("{text}secret = \"inline-value\"\n");
        let c = load(Some(&write(tmp.path(), &both)), &[], &Overrides::new()).unwrap();
        let e = c.peer_config().unwrap_err().to_string();
        assert!(e.contains("peer.secret: give either"), "{e}");
        assert!(!e.contains("inline-value") && !e.contains("s3cret"), "{e}");
        // The secret never shows in the printed configuration.
        assert!(!c.to_toml_redacted().contains("inline-value"));
    }

    #[test]
    fn dragonfly_settings_become_the_clients_config() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(Config::default().dragonfly_config().unwrap().is_none());
        let text = "[dragonfly]\nenable = true\nschedulers = [\"sched.svc:8002\"]\n\
                    avoid_bad_bytes = \"1m\"\nmax_range = \"2M\"\napplication = \"dfagent\"\n";
        let c = load(Some(&write(tmp.path(), text)), &[], &Overrides::new()).unwrap();
        let d = c.dragonfly_config().unwrap().expect("enabled");
        assert_eq!(d.schedulers, vec!["sched.svc:8002".to_string()]);
        assert_eq!(d.avoid_for_bad_bytes, Duration::from_secs(60));
        assert_eq!(d.max_range, 2 << 20);
        assert_eq!(d.application.as_deref(), Some("dfagent"));
        // Enabled without a scheduler, or with a priority that forbids downloads: errors.
        for bad in [
            "[dragonfly]\nenable = true\n",
            "[dragonfly]\nenable = true\nschedulers = [\"s:1\"]\npriority = 1\n",
        ] {
            let c = load(Some(&write(tmp.path(), bad)), &[], &Overrides::new()).unwrap();
            let e = c.dragonfly_config().unwrap_err().to_string();
            assert!(e.contains("dragonfly"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn bad_values_name_their_source() {
        let e = load_env(&[("DFAGENT_STORE__CAPACITY", "lots")], &Overrides::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("DFAGENT_STORE__CAPACITY: store.capacity: invalid size \"lots\""),
            "{e}"
        );
        let e = load_env(&[("DFAGENT_CACHE__DECODED_MIB", "many")], &Overrides::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("DFAGENT_CACHE__DECODED_MIB: cache.decoded_mib: invalid type"),
            "{e}"
        );
        let flags = Overrides::new().set("--prefetch", "mount.prefetch", "some");
        let e = load_env(&[], &flags).unwrap_err().to_string();
        assert!(
            e.starts_with("--prefetch: mount.prefetch: unknown value \"some\""),
            "{e}"
        );

        let tmp = tempfile::tempdir().unwrap();
        for (text, want) in [
            ("[registry]\nconnect_timeout = 3\n", "registry.connect_timeout: expected a duration"),
            ("[registry]\nread_timeout = \"3 weeks\"\n", "registry.read_timeout: invalid duration"),
            ("[registry]\nplatform = \"linux\"\n", "registry.platform: invalid platform"),
            ("[daemon]\nmetrics_addr = \"localhost\"\n", "daemon.metrics_addr: invalid address"),
            ("[log]\nformat = \"xml\"\n", "log.format: unknown value \"xml\""),
            ("[log]\nlevel = \"\"\n", "log.level: must not be empty"),
            ("[peer]\nlisten = [\"tcp/7010\"]\n", "peer.listen: invalid multiaddr \"tcp/7010\""),
            ("[peer]\nbootstrap_dns = [\"svc\"]\n", "peer.bootstrap_dns: invalid DNS name \"svc\""),
            ("[dragonfly]\nsatellites = 1\n", "dragonfly.satellites: unknown key"),
            ("[dragonfly]\nschedulers = [\"sched\"]\n", "dragonfly.schedulers: invalid scheduler address \"sched\""),
            ("[store]\ncapacity = -1\n", "store.capacity: expected a size"),
            (
                "[registry.hosts.\"r\"]\nmirrors = [\"https://m\"]\n",
                "registry.hosts.r.mirrors: invalid mirror \"https://m\"",
            ),
            (
                "[registry.hosts.\"https://r\"]\nplain_http = true\n",
                "registry.hosts: invalid registry host \"https://r\"",
            ),
            (
                "[registry.hosts.\"r:1\"]\nusername = \"u\"\n",
                "registry.hosts.\"r:1\": username and password go together",
            ),
            (
                "[registry.hosts.r]\nusername = \"u\"\npassword = \"p\"\ncredential_file = \"/f\"\n",
                "registry.hosts.r: give either username and password, or credential_file",
            ),
            ("[store\npath = 1\n", "TOML parse error at line 1"),
        ] {
            let path = write(tmp.path(), text);
            let e = load(Some(&path), &[], &Overrides::new()).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{}: ", path.display())) && e.contains(want),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn secrets_stay_out_of_errors_output_and_debug() {
        let tmp = tempfile::tempdir().unwrap();
        // A wrong type for a password: the value is not shown.
        let path = write(
            tmp.path(),
            "[registry.hosts.r]\nusername = \"u\"\npassword = 12345678\n",
        );
        let e = load(Some(&path), &[], &Overrides::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("registry.hosts.r.password: invalid value (not shown)"),
            "{e}"
        );
        assert!(!e.contains("12345678"), "{e}");
        // A password where a host table belongs.
        let path = write(tmp.path(), "[registry.hosts]\nr = \"robot:hunter2\"\n");
        let e = load(Some(&path), &[], &Overrides::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("registry.hosts.r: invalid value (not shown): expected a table"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        // A syntax error on the password's line: the line is not quoted.
        let path = write(
            tmp.path(),
            "[registry.hosts.r]\nusername = \"u\"\npassword = hunter2\n",
        );
        let e = load(Some(&path), &[], &Overrides::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && !e.contains("hunter2"), "{e}");

        let path = write(
            tmp.path(),
            "[registry.hosts.\"reg.lan:5000\"]\nusername = \"robot\"\npassword = \"hunter2\"\n\
             mirrors = [\"m1:5000\", \"m2\"]\nplain_http = true\n",
        );
        let c = load(Some(&path), &[], &Overrides::new()).unwrap();
        let host = &c.registry.hosts["reg.lan:5000"];
        assert_eq!(host.password.as_ref().map(Secret::expose), Some("hunter2"));
        let out = c.to_toml_redacted();
        assert!(
            !out.contains("hunter2") && out.contains("<redacted>"),
            "{out}"
        );
        assert!(out.contains("robot"), "{out}");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", c.to_node_config()).contains("hunter2"));
        let flags = Overrides::new().set("--password", "registry.hosts.x.password", "hunter2");
        assert!(!format!("{flags:?}").contains("hunter2"));

        // The printed configuration parses back (secrets aside).
        let reparsed = write(tmp.path(), &out);
        let back = load(Some(&reparsed), &[], &Overrides::new()).unwrap();
        assert_eq!(
            back.registry.hosts["reg.lan:5000"]
                .password
                .as_ref()
                .map(Secret::expose),
            Some("<redacted>")
        );
        let mut c2 = c.clone();
        c2.registry.hosts.get_mut("reg.lan:5000").unwrap().password =
            Some(Secret::new("<redacted>"));
        assert_eq!(back, c2);

        let r = c.registry_config();
        let h = &r.hosts["reg.lan:5000"];
        assert!(h.plain_http);
        assert_eq!(h.mirrors, ["m1:5000", "m2"]);
        assert!(r.is_plain_http("reg.lan:5000"));
        match &h.credentials {
            Some(HostCredentials::Basic { username, password }) => {
                assert_eq!((username.as_str(), password.expose()), ("robot", "hunter2"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credential_files_map_to_the_registry() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(
            tmp.path(),
            "[registry.hosts.\"ghcr.io\"]\ncredential_file = \"/etc/dfagent/ghcr.cred\"\n",
        );
        let c = load(Some(&path), &[], &Overrides::new()).unwrap();
        assert_eq!(
            c.registry_config().hosts["ghcr.io"].credentials,
            Some(HostCredentials::File("/etc/dfagent/ghcr.cred".into()))
        );
        // Flags may reach host keys holding dots through set_path.
        let flags = Overrides::new().set_path(
            "--insecure-registry",
            &["registry", "hosts", "10.0.0.1:5000", "plain_http"],
            true,
        );
        let c = load(Some(&path), &[], &flags).unwrap();
        assert!(c.registry_config().is_plain_http("10.0.0.1:5000"));
        assert!(c.registry.hosts.contains_key("ghcr.io"), "file hosts kept");
    }

    #[test]
    fn default_file_parses_to_the_defaults_and_documents_every_key() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), &Config::default_commented());
        assert_eq!(
            load(Some(&path), &[], &Overrides::new()).unwrap(),
            Config::default()
        );
        // With the host example uncommented it still parses.
        let text = Config::default_commented()
            .lines()
            .map(|l| {
                if l.starts_with("# [registry.hosts")
                    || l.starts_with("# mirrors")
                    || l.starts_with("# plain_http")
                    || l.starts_with("# username")
                    || l.starts_with("# password")
                {
                    &l[2..]
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = write(tmp.path(), &text);
        let c = load(Some(&path), &[], &Overrides::new()).unwrap();
        assert_eq!(c.registry.hosts["registry.example.com"].mirrors.len(), 2);

        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
        )
        .expect("docs/configuration.md");
        for key in Config::keys() {
            let (section, leaf) = key.rsplit_once('.').unwrap();
            let section = section.replace("hosts.HOST", "hosts.\"registry.example.com\"");
            let header = format!("[{section}]");
            assert!(
                Config::default_commented().contains(&header),
                "default file lacks {header}"
            );
            let line = format!("{leaf} = ");
            assert!(
                Config::default_commented()
                    .lines()
                    .any(|l| l.trim_start_matches(['#', ' ']).starts_with(&line)),
                "default file lacks {key}"
            );
            assert!(
                doc.contains(&format!("`{key}`")),
                "docs/configuration.md lacks `{key}`"
            );
            if let Some(var) = Config::env_var(&key) {
                assert!(doc.contains(&var), "docs/configuration.md lacks {var}");
            }
        }
    }

    #[test]
    fn known_keys_and_env_names() {
        let keys = Config::keys();
        for k in [
            "store.capacity",
            "registry.docker_config",
            "registry.ca_file",
            "registry.hosts.HOST.password",
            "registry.hosts.HOST.credential_file",
            "daemon.metrics_addr",
            "peer.enable",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        assert_eq!(
            Config::env_var("store.capacity").as_deref(),
            Some("DFAGENT_STORE__CAPACITY")
        );
        assert_eq!(
            Config::env_var("registry.ca_file").as_deref(),
            Some("DFAGENT_REGISTRY__CA_FILE")
        );
        assert_eq!(Config::env_var("registry.hosts.HOST.password"), None);
        assert_eq!(Config::env_var("store"), None);
        // Unset optional keys are settable from the environment.
        let c = load_env(
            &[("DFAGENT_REGISTRY__CA_FILE", "/ca.pem")],
            &Overrides::new(),
        )
        .unwrap();
        assert_eq!(c.registry.ca_file.as_deref(), Some(Path::new("/ca.pem")));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(size::parse("123").unwrap(), 123);
        assert_eq!(size::parse("64K").unwrap(), 64 << 10);
        assert_eq!(size::parse("500MiB").unwrap(), 500 << 20);
        assert_eq!(size::parse("20g").unwrap(), 20 << 30);
        assert!(size::parse("lots").is_err());
        assert!(size::parse("99999999999T").is_err());
        for n in [0, 1, 1023, 1024, 1536 << 10, 10 << 30, 3 << 40] {
            assert_eq!(size::parse(&size::format(n)).unwrap(), n);
        }
        assert_eq!(size::format(10 << 30), "10G");
        assert_eq!(
            duration::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(duration::parse("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(duration::parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration::parse("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "3", "s", "1.5s", "-1s", "3 weeks", "3d"] {
            assert!(duration::parse(bad).is_err(), "{bad}");
        }
        for d in [0, 1, 999, 1000, 30_000, 120_000, 7_200_000] {
            let d = Duration::from_millis(d);
            assert_eq!(duration::parse(&duration::format(d)).unwrap(), d);
        }
    }

    #[test]
    fn the_snapshotter_sits_beside_the_control_socket_and_the_store() {
        let c = Config::default();
        assert_eq!(
            c.snapshotter_paths(),
            Some((
                PathBuf::from("/run/dfagent/snapshotter.sock"),
                PathBuf::from("/var/lib/dfagent/snapshotter")
            ))
        );
        let text = "[daemon]\nsocket = \"/tmp/x/run/d.sock\"\n[store]\npath = \"/srv/s/store\"\n";
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, text).unwrap();
        let c = Config::load_with_env(Some(&f), Vec::new(), &Overrides::new()).unwrap();
        assert_eq!(
            c.snapshotter_paths().unwrap(),
            (
                PathBuf::from("/tmp/x/run/snapshotter.sock"),
                PathBuf::from("/srv/s/snapshotter")
            )
        );
        std::fs::write(
            &f,
            format!("{text}[snapshotter]\nroot = \"/r\"\nsocket = \"/s.sock\"\n"),
        )
        .unwrap();
        let c = Config::load_with_env(Some(&f), Vec::new(), &Overrides::new()).unwrap();
        assert_eq!(
            c.snapshotter_paths().unwrap(),
            (PathBuf::from("/s.sock"), PathBuf::from("/r"))
        );
        std::fs::write(&f, "[snapshotter]\nenable = false\n").unwrap();
        let c = Config::load_with_env(Some(&f), Vec::new(), &Overrides::new()).unwrap();
        assert_eq!(c.snapshotter_paths(), None);
    }
}
