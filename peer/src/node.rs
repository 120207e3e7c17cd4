//! The running peer node: identity, transport, the swarm task (Kademlia, identify, ping, mDNS,
//! streams), and the state the tier and the server share.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dfagent_core::{BlobId, ChunkDigest, ChunkStore, ChunkTier};
use futures::StreamExt;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    identify, kad, mdns, noise, ping, pnet, tcp, yamux, Multiaddr, PeerId, Swarm, Transport,
};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::client::PeerTier;
use crate::config::{advertisable, is_quic, PeerConfig};
use crate::counters::PeerCounters;
use crate::pool::ServePool;
use crate::wire::Limits;

/// Kademlia protocol of dfagent's DHT (kept apart from the public IPFS DHT).
const KAD_PROTOCOL: &str = "/dfagent/kad/1.0.0";
/// identify protocol version.
const ID_PROTOCOL: &str = "/dfagent/id/1.0.0";
/// Bound on one provider lookup.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Chunk digest -> peer entries kept for `bad_answer`.
const ANSWERED_BY_CAP: usize = 8192;
/// Disconnected peers remembered for status.
const PEERS_CAP: usize = 1024;
/// Refusals sent at once when every upload slot is taken (beyond: streams dropped).
const BUSY_RESPONDERS: usize = 32;
/// Shortest provider record TTL (re-published at half of it).
const MIN_RECORD_TTL: Duration = Duration::from_secs(2);

/// Why the peer node could not start.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The identity file could not be read or written.
    #[error("peer identity {path}: {source}")]
    Identity {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The identity file holds no valid key.
    #[error("peer identity {path}: not a valid key: {detail}")]
    BadIdentity {
        /// The file.
        path: String,
        /// What the decoder said.
        detail: String,
    },
    /// The transport or swarm could not be built.
    #[error("peer transport: {0}")]
    Transport(String),
    /// Listening on an address failed.
    #[error("peer listen on {addr}: {detail}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        detail: String,
    },
    /// Nothing to listen on.
    #[error("peer: no listen address usable (QUIC addresses are not supported by this build)")]
    NoListenAddress,
    /// Serving streams of the chunk protocol could not be registered.
    #[error("peer: chunk protocol already registered")]
    Protocol,
    /// The serve threads could not be started.
    #[error("peer: starting the serve threads: {0}")]
    ServePool(std::io::Error),
}

/// One peer as [`Peer::status`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Peer id.
    pub id: String,
    /// Addresses known for it.
    pub addrs: Vec<String>,
    /// Connected now.
    pub connected: bool,
    /// Stored bytes received from it.
    pub bytes_in: u64,
    /// Stored bytes sent to it.
    pub bytes_out: u64,
    /// Chunks received from it.
    pub chunks_in: u64,
    /// Chunks sent to it.
    pub chunks_out: u64,
    /// Remaining ban, if banned.
    pub banned_for: Option<Duration>,
}

/// The node's view of the peer network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Own peer id.
    pub peer_id: String,
    /// Addresses listened on.
    pub listen: Vec<String>,
    /// Addresses announced.
    pub advertised: Vec<String>,
    /// Known peers.
    pub peers: Vec<PeerInfo>,
    /// Whether a cluster secret guards the network (TCP with a pre-shared key).
    pub private: bool,
}

#[derive(Debug, Default)]
pub(crate) struct PeerEntry {
    pub addrs: Vec<Multiaddr>,
    pub connected: bool,
    /// Reached over an address that is not advertisable (loopback, a bridge): its own such
    /// addresses are then worth dialling too.
    pub local_link: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub chunks_in: u64,
    pub chunks_out: u64,
}

#[derive(Default)]
pub(crate) struct State {
    pub peers: HashMap<PeerId, PeerEntry>,
    pub banned: HashMap<PeerId, Instant>,
    pub listen: Vec<Multiaddr>,
    pub advertised: Vec<Multiaddr>,
    pub providers: HashMap<BlobId, (Instant, Vec<PeerId>)>,
    pub answered_by: HashMap<ChunkDigest, PeerId>,
    pub answered_order: VecDeque<ChunkDigest>,
    pub inflight: HashMap<PeerId, Arc<Semaphore>>,
}

pub(crate) enum Command {
    Provide(BlobId),
    Withdraw(BlobId),
    GetProviders(BlobId, oneshot::Sender<Vec<PeerId>>),
    Dial(Multiaddr),
    Shutdown,
}

/// What the tier, the server and the handle share.
pub(crate) struct Inner {
    pub local: PeerId,
    pub config: PeerConfig,
    pub limits: Limits,
    pub counters: Arc<PeerCounters>,
    pub state: Mutex<State>,
    pub cmd: mpsc::Sender<Command>,
    pub control: libp2p_stream::Control,
    pub serve: Arc<dyn ChunkStore>,
    /// Where serving reads and verifies, below the node's own reads.
    pub pool: ServePool,
    /// The runtime the node runs on, for the serve threads to poll the store on.
    pub runtime: tokio::runtime::Handle,
    pub uploads: Arc<Semaphore>,
    pub busy: Arc<Semaphore>,
}

impl Inner {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_banned(&self, peer: &PeerId) -> bool {
        let mut st = self.state();
        match st.banned.get(peer) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                st.banned.remove(peer);
                false
            }
            None => false,
        }
    }

    /// Ban `peer` for the configured cool-down (counted and logged once while it lasts).
    pub fn ban(&self, peer: PeerId, why: &str) {
        let now = Instant::now();
        let until = now + self.config.ban;
        let was = self.state().banned.insert(peer, until);
        if was.is_some_and(|t| t > now) {
            // Already banned (another chunk of the same answer): extend, count once.
            return;
        }
        PeerCounters::inc(&self.counters.bans);
        tracing::warn!(%peer, reason = why, ban_secs = self.config.ban.as_secs(), "peer banned");
    }

    pub fn connected_count(&self) -> u64 {
        PeerCounters::get(&self.counters.peers_connected)
    }

    pub fn record_answer(&self, digest: ChunkDigest, peer: PeerId) {
        let mut st = self.state();
        if st.answered_by.insert(digest, peer).is_none() {
            st.answered_order.push_back(digest);
        }
        while st.answered_order.len() > ANSWERED_BY_CAP {
            if let Some(old) = st.answered_order.pop_front() {
                st.answered_by.remove(&old);
            }
        }
    }

    pub fn inflight(&self, peer: PeerId) -> Arc<Semaphore> {
        let n = self
            .config
            .max_inflight_per_peer
            .clamp(1, Semaphore::MAX_PERMITS);
        self.state()
            .inflight
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(n)))
            .clone()
    }

    pub fn count_in(&self, peer: PeerId, bytes: u64) {
        PeerCounters::inc(&self.counters.chunks_fetched);
        PeerCounters::add(&self.counters.bytes_fetched, bytes);
        let mut st = self.state();
        let e = st.peers.entry(peer).or_default();
        e.chunks_in += 1;
        e.bytes_in += bytes;
    }

    pub fn count_out(&self, peer: PeerId, bytes: u64) {
        PeerCounters::inc(&self.counters.chunks_served);
        PeerCounters::add(&self.counters.bytes_served, bytes);
        let mut st = self.state();
        let e = st.peers.entry(peer).or_default();
        e.chunks_out += 1;
        e.bytes_out += bytes;
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

/// A running peer node. Cheap to clone: every clone is a handle on the same node.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
    tier: Arc<PeerTier>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.inner.local)
            .finish()
    }
}

/// Load the ed25519 key at `path`, or make one and keep it there (mode 0600).
fn load_identity(path: &Path) -> Result<Keypair, PeerError> {
    let io = |source| PeerError::Identity {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| PeerError::BadIdentity {
            path: path.display().to_string(),
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| PeerError::BadIdentity {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?;
            if let Some(dir) = path.parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
            }
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
            tracing::info!(path = %path.display(), "created peer identity");
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// The 32-byte pre-shared key of a cluster secret (sha256 with a domain prefix).
fn psk(secret: &[u8]) -> pnet::PreSharedKey {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"dfagent peer network psk v1\0");
    h.update(secret);
    let out: [u8; 32] = h.finalize().into();
    pnet::PreSharedKey::new(out)
}

fn build_swarm(key: Keypair, config: &PeerConfig) -> Result<Swarm<Behaviour>, PeerError> {
    let terr = |e: &dyn std::fmt::Display| PeerError::Transport(e.to_string());
    let psk = config.secret.as_deref().map(psk);
    let local = key.public().to_peer_id();
    // Re-published at half the TTL, so a record never lapses while the node runs.
    let record_ttl = config.record_ttl.max(MIN_RECORD_TTL);
    let mut kad_cfg = kad::Config::new(libp2p::StreamProtocol::new(KAD_PROTOCOL));
    kad_cfg
        .set_query_timeout(Duration::from_secs(30))
        .set_provider_record_ttl(Some(record_ttl))
        .set_provider_publication_interval(Some(record_ttl / 2));
    let mdns_on = config.mdns;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(
            move |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                let noise = noise::Config::new(key)?;
                let base = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
                let t = match psk {
                    Some(psk) => base
                        .and_then(move |socket, _| pnet::PnetConfig::new(psk).handshake(socket))
                        .upgrade(Version::V1)
                        .authenticate(noise)
                        .multiplex(yamux::Config::default())
                        .boxed(),
                    None => base
                        .upgrade(Version::V1)
                        .authenticate(noise)
                        .multiplex(yamux::Config::default())
                        .boxed(),
                };
                Ok(t)
            },
        )
        .map_err(|e| terr(&e))?
        .with_dns()
        .map_err(|e| terr(&e))?
        .with_behaviour(
            move |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                let mut kad = kad::Behaviour::with_config(
                    local,
                    kad::store::MemoryStore::new(local),
                    kad_cfg,
                );
                // Serve the DHT even with only private addresses (a cluster network).
                kad.set_mode(Some(kad::Mode::Server));
                let mdns = if mdns_on {
                    Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local)?)
                } else {
                    None
                };
                Ok(Behaviour {
                    kad,
                    identify: identify::Behaviour::new(identify::Config::new(
                        ID_PROTOCOL.to_string(),
                        key.public(),
                    )),
                    ping: ping::Behaviour::default(),
                    mdns: Toggle::from(mdns),
                    stream: libp2p_stream::Behaviour::new(),
                })
            },
        )
        .map_err(|e| terr(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}

/// The peer id a multiaddr ends with, if any.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) => Some(id),
        _ => None,
    }
}

impl Peer {
    /// Start the swarm on the current tokio runtime, serving chunks from `serve`. Returns once
    /// every listener has its address (or after 5 s).
    ///
    /// `serve`'s `fetch` is polled on the node's serve threads (at lowered CPU and I/O
    /// priority, inside the runtime's context), never on the runtime's workers: a store that
    /// reads inline in its future, blocking, has its reads run below the node's own; one that
    /// hands them to another thread (`spawn_blocking`) has them run at that thread's priority.
    pub async fn start(config: PeerConfig, serve: Arc<dyn ChunkStore>) -> Result<Peer, PeerError> {
        let key = load_identity(&config.identity_file)?;
        let counters = Arc::new(PeerCounters::default());
        let pool = ServePool::start(
            config.serve_threads,
            config.serve_queue,
            config.serve_io_idle,
            counters.clone(),
        )
        .map_err(PeerError::ServePool)?;
        let local = key.public().to_peer_id();
        let mut swarm = build_swarm(key, &config)?;
        let mut control = swarm.behaviour().stream.new_control();
        let incoming = control
            .accept(libp2p::StreamProtocol::new(crate::wire::PROTOCOL))
            .map_err(|_| PeerError::Protocol)?;
        let mut listeners = 0usize;
        for addr in &config.listen {
            if is_quic(addr) {
                tracing::warn!(%addr, "QUIC is not built in (libp2p-quic needs aws-lc-rs): not listening there");
                continue;
            }
            swarm
                .listen_on(addr.clone())
                .map_err(|e| PeerError::Listen {
                    addr: addr.to_string(),
                    detail: e.to_string(),
                })?;
            listeners += 1;
        }
        if listeners == 0 {
            return Err(PeerError::NoListenAddress);
        }
        for addr in &config.advertise {
            swarm.add_external_address(addr.clone());
        }
        let (cmd, rx) = mpsc::channel(1024);
        let inner = Arc::new(Inner {
            local,
            limits: Limits {
                max_chunks: config.limits.max_chunks.max(1),
                max_bytes: config.limits.max_bytes.max(1),
                max_frame: config.limits.max_frame.max(crate::wire::PIECE_SIZE + 64),
            },
            counters,
            state: Mutex::new(State {
                advertised: config.advertise.clone(),
                ..State::default()
            }),
            cmd,
            control,
            serve,
            pool,
            runtime: tokio::runtime::Handle::current(),
            uploads: Arc::new(Semaphore::new(
                config.max_uploads.min(Semaphore::MAX_PERMITS),
            )),
            busy: Arc::new(Semaphore::new(BUSY_RESPONDERS)),
            config,
        });
        // Wait for the listeners' addresses, so status() names them at once.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut driver = Driver {
            inner: inner.clone(),
            swarm,
            lookups: HashMap::new(),
            provided: HashSet::new(),
            last_bootstrap: None,
        };
        while inner.state().listen.len() < listeners {
            match tokio::time::timeout_at(deadline, driver.swarm.select_next_some()).await {
                Ok(ev) => driver.on_event(ev),
                Err(_) => break,
            }
        }
        let boot = inner.config.bootstrap.clone();
        for addr in boot {
            driver.dial(addr);
        }
        if inner.config.secret.is_none() {
            let addrs: Vec<String> = inner.state().listen.iter().map(|a| a.to_string()).collect();
            tracing::warn!(
                "peer network has no cluster secret: anyone who reaches {} can fetch chunks",
                addrs.join(", ")
            );
        }
        tracing::info!(peer_id = %local, "peer node started");
        let swarm_task = tokio::spawn(driver.run(rx));
        let serve_task = tokio::spawn(crate::server::serve_loop(inner.clone(), incoming));
        let mut tasks = vec![swarm_task, serve_task];
        if !inner.config.bootstrap_dns.is_empty() {
            tasks.push(tokio::spawn(dns_loop(inner.clone())));
        }
        Ok(Peer {
            tier: Arc::new(PeerTier::new(inner.clone())),
            inner,
            tasks: Arc::new(Mutex::new(tasks)),
        })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> String {
        self.inner.local.to_string()
    }

    /// Announce that this node holds `blob` (idempotent; re-published before the record
    /// expires).
    pub fn provide(&self, blob: BlobId) {
        if self.inner.cmd.try_send(Command::Provide(blob)).is_err() {
            tracing::warn!(%blob, "peer node busy or stopped: provide dropped");
        }
    }

    /// Stop announcing `blob`.
    pub fn withdraw(&self, blob: BlobId) {
        if self.inner.cmd.try_send(Command::Withdraw(blob)).is_err() {
            tracing::warn!(%blob, "peer node busy or stopped: withdraw dropped");
        }
    }

    /// The peer tier (`name() == "peer"`) for the resolver.
    pub fn tier(&self) -> Arc<dyn ChunkTier> {
        self.tier.clone()
    }

    /// The node's view of the network.
    pub fn status(&self) -> PeerStatus {
        let now = Instant::now();
        let st = self.inner.state();
        let mut peers: Vec<PeerInfo> = st
            .peers
            .iter()
            .map(|(id, e)| PeerInfo {
                id: id.to_string(),
                addrs: e.addrs.iter().map(|a| a.to_string()).collect(),
                connected: e.connected,
                bytes_in: e.bytes_in,
                bytes_out: e.bytes_out,
                chunks_in: e.chunks_in,
                chunks_out: e.chunks_out,
                banned_for: st
                    .banned
                    .get(id)
                    .and_then(|until| until.checked_duration_since(now))
                    .filter(|d| !d.is_zero()),
            })
            .collect();
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        PeerStatus {
            peer_id: self.inner.local.to_string(),
            listen: st.listen.iter().map(|a| a.to_string()).collect(),
            advertised: st.advertised.iter().map(|a| a.to_string()).collect(),
            peers,
            private: self.inner.config.secret.is_some(),
        }
    }

    /// The node's counters.
    pub fn counters(&self) -> Arc<PeerCounters> {
        self.inner.counters.clone()
    }

    /// Stop the node: the swarm (closing every connection), the server, the serve threads
    /// (once their queue is drained) and the DNS refresher.
    pub async fn shutdown(&self) {
        self.inner.pool.close();
        let _ = self.inner.cmd.send(Command::Shutdown).await;
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    /// Test only: send `bytes` raw on a new chunk-protocol stream to `peer` and read everything
    /// it answers (at most `max` bytes, within `timeout`).
    #[doc(hidden)]
    pub async fn raw_exchange(
        &self,
        peer: &str,
        bytes: &[u8],
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        use futures::{AsyncReadExt, AsyncWriteExt};
        let peer: PeerId = peer.parse().map_err(|e| format!("{e}"))?;
        let mut control = self.inner.control.clone();
        let work = async {
            let mut s = control
                .open_stream(peer, libp2p::StreamProtocol::new(crate::wire::PROTOCOL))
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(bytes).await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 || out.len() + n > max {
                    out.extend_from_slice(&buf[..n.min(max.saturating_sub(out.len()))]);
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            Ok(out)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| "timeout".to_string())?
    }
}

struct Driver {
    inner: Arc<Inner>,
    swarm: Swarm<Behaviour>,
    lookups: HashMap<kad::QueryId, (oneshot::Sender<Vec<PeerId>>, Vec<PeerId>)>,
    provided: HashSet<BlobId>,
    last_bootstrap: Option<Instant>,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(c) => self.on_command(c),
                },
                ev = self.swarm.select_next_some() => self.on_event(ev),
            }
        }
        tracing::info!(peer_id = %self.inner.local, "peer node stopped");
    }

    /// Dial `addr` (bootstrap, DNS). Every dial of ours — these, mDNS finds and providers —
    /// comes from a new port (`allocate_new_port`), not from the listen port (libp2p's
    /// default, for NAT traversal a cluster does not need): two nodes that dial each other at
    /// the same moment (both found by mDNS, or each in the other's bootstrap list) would
    /// otherwise meet in one TCP simultaneous open, where both act as dialer and the handshake
    /// fails on both sides — and mDNS does not report a peer again for minutes.
    fn dial(&mut self, addr: Multiaddr) {
        if let Some(peer) = peer_of(&addr) {
            if peer == self.inner.local {
                return;
            }
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        let opts = DialOpts::unknown_peer_id()
            .address(addr.clone())
            .allocate_new_port()
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%addr, error = %e, "dial failed");
        }
    }

    fn provide_all(&mut self) {
        let blobs: Vec<BlobId> = self.provided.iter().copied().collect();
        for blob in blobs {
            let key = kad::RecordKey::new(blob.bytes());
            if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                tracing::warn!(%blob, error = %e, "provide failed");
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Provide(blob) => {
                self.provided.insert(blob);
                let key = kad::RecordKey::new(blob.bytes());
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                    tracing::warn!(%blob, error = %e, "provide failed");
                }
            }
            Command::Withdraw(blob) => {
                self.provided.remove(&blob);
                let key = kad::RecordKey::new(blob.bytes());
                self.swarm.behaviour_mut().kad.stop_providing(&key);
            }
            Command::GetProviders(blob, reply) => {
                let key = kad::RecordKey::new(blob.bytes());
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.lookups.insert(id, (reply, Vec::new()));
            }
            Command::Dial(addr) => self.dial(addr),
            Command::Shutdown => {}
        }
    }

    fn maybe_bootstrap(&mut self) {
        let now = Instant::now();
        if self
            .last_bootstrap
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(5))
        {
            return;
        }
        self.last_bootstrap = Some(now);
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "peer listening");
                let mut st = self.inner.state();
                st.listen.push(address.clone());
                if self.inner.config.advertise.is_empty() && advertisable(&address) {
                    st.advertised.push(address.clone());
                    drop(st);
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let mut st = self.inner.state();
                st.listen.retain(|a| a != &address);
                if self.inner.config.advertise.is_empty() {
                    st.advertised.retain(|a| a != &address);
                    drop(st);
                    self.swarm.remove_external_address(&address);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } if num_established.get() == 1 => {
                {
                    let first = PeerCounters::get(&self.inner.counters.peers_connected) == 0;
                    PeerCounters::inc(&self.inner.counters.peers_connected);
                    let mut st = self.inner.state();
                    let e = st.peers.entry(peer_id).or_default();
                    e.connected = true;
                    let addr = endpoint.get_remote_address().clone();
                    e.local_link = !advertisable(&addr);
                    if endpoint.is_dialer() && !e.addrs.contains(&addr) {
                        e.addrs.push(addr);
                    }
                    drop(st);
                    tracing::debug!(peer = %peer_id, "peer connected");
                    if first {
                        // Records made while alone reached nobody: publish them now.
                        self.provide_all();
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.inner
                    .counters
                    .peers_connected
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let mut st = self.inner.state();
                if let Some(e) = st.peers.get_mut(&peer_id) {
                    e.connected = false;
                }
                if st.peers.len() > PEERS_CAP {
                    st.peers.retain(|_, e| e.connected);
                }
                tracing::debug!(peer = %peer_id, "peer disconnected");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let local_link = self
                    .inner
                    .state()
                    .peers
                    .get(&peer_id)
                    .is_some_and(|e| e.local_link);
                // Another node's loopback or bridge addresses only mean something when we
                // reach it that way too (tests, several nodes on one host).
                let addrs: Vec<Multiaddr> = info
                    .listen_addrs
                    .into_iter()
                    .filter(|a| local_link || advertisable(a))
                    .take(16)
                    .collect();
                for a in &addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, a.clone());
                }
                let mut st = self.inner.state();
                let e = st.peers.entry(peer_id).or_default();
                e.addrs = addrs;
                drop(st);
                self.maybe_bootstrap();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found.into_iter().take(64) {
                    if peer == self.inner.local {
                        continue;
                    }
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    let _ = self.swarm.dial(
                        DialOpts::peer_id(peer)
                            .addresses(vec![addr])
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .allocate_new_port()
                            .build(),
                    );
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(res),
                step,
                ..
            })) => {
                let mut finished = step.last;
                match res {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                        for p in providers {
                            if p == self.inner.local {
                                continue;
                            }
                            // Dial while the query still knows the provider's addresses.
                            let _ = self.swarm.dial(
                                DialOpts::peer_id(p)
                                    .condition(PeerCondition::DisconnectedAndNotDialing)
                                    .allocate_new_port()
                                    .build(),
                            );
                            if let Some((_, found)) = self.lookups.get_mut(&id) {
                                if !found.contains(&p) {
                                    found.push(p);
                                }
                            }
                        }
                    }
                    Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {
                        finished = true;
                    }
                    Err(_) => finished = true,
                }
                if finished {
                    if let Some((reply, found)) = self.lookups.remove(&id) {
                        let _ = reply.send(found);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Resolve `bootstrap_dns` every `dns_refresh` and dial what it names.
async fn dns_loop(inner: Arc<Inner>) {
    let every = inner.config.dns_refresh.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        for name in inner.config.bootstrap_dns.iter().take(64) {
            let resolved = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host(name.as_str()),
            )
            .await;
            let addrs: Vec<std::net::SocketAddr> = match resolved {
                Ok(Ok(it)) => it.take(256).collect(),
                Ok(Err(e)) => {
                    tracing::warn!(name = %name, error = %e, "bootstrap DNS lookup failed");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(name = %name, "bootstrap DNS lookup timed out");
                    continue;
                }
            };
            let known: HashSet<Multiaddr> = {
                let st = inner.state();
                st.peers
                    .values()
                    .filter(|e| e.connected)
                    .flat_map(|e| e.addrs.iter().cloned())
                    .collect()
            };
            for sa in addrs {
                let addr = Multiaddr::from(sa.ip()).with(Protocol::Tcp(sa.port()));
                if known.contains(&addr) || inner.state().listen.contains(&addr) {
                    continue;
                }
                if inner.cmd.send(Command::Dial(addr)).await.is_err() {
                    return;
                }
            }
        }
    }
}
