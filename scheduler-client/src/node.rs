//! [`Dragonfly`]: the node-wide client. Keeps the seed peers (from the scheduler's `ListHosts`,
//! refreshed, health-checked), their avoidance, the ring, the counters; hands out tiers; runs
//! preheats.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dfagent_core::{BlobId, BlobOrigin, ChunkTier};
use dragonfly_api::scheduler::v2::scheduler_client::SchedulerClient;
use dragonfly_api::scheduler::v2::{
    ListHostsRequest, ListHostsResponse, PreheatImageRequest, StatImageRequest,
};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::config::scheduler_uri;
use crate::counters::{CountersSnapshot, DragonflyCounters};
use crate::messages::{printable, seeds_from_hosts, ImageStatus, RejectReason, Seed};
use crate::ring::SeedRing;
use crate::tier::DragonflyTier;
use crate::{DragonflyConfig, DragonflyError};

/// Largest scheduler message decoded (a `ListHosts` answer of [`crate::messages::MAX_HOSTS`]
/// hosts with all their statistics fits well below).
const MAX_MESSAGE: usize = 16 << 20;
/// Longest wait between two attempts to reach a scheduler after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Seed health checks at once.
const HEALTH_CONCURRENCY: usize = 16;
/// Chunks whose answering seed is remembered (for `bad_answer`).
const ANSWERED_CAP: usize = 65_536;
/// Rejected hosts logged one by one per refresh (the rest are summed up).
const REJECTS_LOGGED: usize = 8;

/// The node-wide Dragonfly client. See the crate doc.
pub struct Dragonfly {
    pub(crate) inner: Arc<Inner>,
    task: Mutex<Option<JoinHandle<()>>>,
}

pub(crate) struct Inner {
    pub config: DragonflyConfig,
    pub counters: DragonflyCounters,
    schedulers: Vec<Scheduler>,
    state: Mutex<State>,
    /// For registry-mirror requests (straight to a seed's proxy port, never through a proxy).
    pub direct: reqwest::Client,
    shutdown: watch::Sender<bool>,
}

struct Scheduler {
    addr: String,
    channel: Channel,
}

pub(crate) struct SeedEntry {
    pub seed: Seed,
    pub healthy: bool,
    pub last_error: Option<String>,
    /// Requests through this seed as an HTTP forward proxy.
    pub proxy_client: reqwest::Client,
    health: Channel,
}

#[derive(Default)]
pub(crate) struct State {
    /// By seed id.
    pub(crate) seeds: HashMap<String, SeedEntry>,
    /// Ring key -> seed id.
    by_key: HashMap<Arc<str>, String>,
    ring: Option<Arc<SeedRing>>,
    /// Seed id -> (until, why).
    avoided: HashMap<String, (Instant, String)>,
    answered_by: HashMap<(BlobId, u64), String>,
    answered_order: VecDeque<(BlobId, u64)>,
    schedulers: Vec<SchedulerStatus>,
}

/// One configured scheduler and what the last attempt said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerStatus {
    /// The address as configured.
    pub addr: String,
    /// `None` before the first attempt.
    pub reachable: Option<bool>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// One seed peer as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedStatus {
    /// Host id.
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// Ip.
    pub ip: std::net::IpAddr,
    /// Upload gRPC port (health).
    pub port: u16,
    /// Proxy port (ranges).
    pub proxy_port: u16,
    /// Whether its last health check passed.
    pub healthy: bool,
    /// Time left on its avoidance, and why it is avoided.
    pub avoided: Option<(Duration, String)>,
    /// Why its last health check failed.
    pub last_error: Option<String>,
}

/// What [`Dragonfly::status`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DragonflyStatus {
    /// The configured schedulers.
    pub schedulers: Vec<SchedulerStatus>,
    /// The seed peers known, by id.
    pub seeds: Vec<SeedStatus>,
    /// The counters.
    pub counters: CountersSnapshot,
}

/// Which peers a preheat reaches (`PreheatImageRequest.scope`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PreheatScope {
    /// One seed peer per layer (`single_seed_peer`).
    SingleSeedPeer,
    /// Every seed peer (`all_seed_peers`).
    #[default]
    AllSeedPeers,
    /// Every peer (`all_peers`).
    AllPeers,
}

impl PreheatScope {
    /// The scheduler's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            PreheatScope::SingleSeedPeer => "single_seed_peer",
            PreheatScope::AllSeedPeers => "all_seed_peers",
            PreheatScope::AllPeers => "all_peers",
        }
    }
}

/// A preheat (and the matching stat) of one image. `Debug` leaves out header values and the
/// password.
#[derive(Clone, Default)]
pub struct PreheatImage {
    /// The manifest URL: `http(s)://REGISTRY/v2/REPOSITORY/manifests/TAG_OR_DIGEST`.
    pub url: String,
    /// Headers the scheduler and seeds send to the registry (e.g. `Authorization`). Secret.
    pub headers: Vec<(String, String)>,
    /// Registry user, if basic auth.
    pub username: Option<String>,
    /// Registry password. Secret.
    pub password: Option<String>,
    /// `os/arch[/variant]` of a multi-platform image, e.g. `linux/amd64`.
    pub platform: Option<String>,
    /// Which peers.
    pub scope: PreheatScope,
    /// How long the scheduler may take (also bounds the call); zero: the scheduler's default
    /// (30 minutes for a preheat), the call bounded by `request_timeout`.
    pub timeout: Duration,
    /// `common.v2.Priority` number; `None`: the configured prefetch priority.
    pub priority: Option<i32>,
}

impl std::fmt::Debug for PreheatImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("PreheatImage")
            .field("url", &self.url)
            .field("headers", &names)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<secret>"))
            .field("platform", &self.platform)
            .field("scope", &self.scope)
            .field("timeout", &self.timeout)
            .field("priority", &self.priority)
            .finish()
    }
}

impl Dragonfly {
    /// Check `config`, and start the seed refresh and health loop on the current tokio
    /// runtime. A scheduler that is down does not fail this: the loop logs, counts and keeps
    /// trying with bounded backoff. Fails only on an invalid config (or outside a runtime).
    pub fn start(config: DragonflyConfig) -> Result<Arc<Self>, DragonflyError> {
        config.validate()?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| DragonflyError::Config("not inside a tokio runtime".into()))?;
        let mut schedulers = Vec::new();
        for addr in &config.schedulers {
            let uri = scheduler_uri(addr)?;
            let channel = endpoint(&uri, &config)?.connect_lazy();
            schedulers.push(Scheduler {
                addr: addr.clone(),
                channel,
            });
        }
        install_crypto();
        let direct = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| DragonflyError::Config(format!("http client: {e}")))?;
        let (shutdown, rx) = watch::channel(false);
        let state = State {
            schedulers: config
                .schedulers
                .iter()
                .map(|a| SchedulerStatus {
                    addr: a.clone(),
                    reachable: None,
                    last_error: None,
                })
                .collect(),
            ..Default::default()
        };
        let inner = Arc::new(Inner {
            config,
            counters: DragonflyCounters::default(),
            schedulers,
            state: Mutex::new(state),
            direct,
            shutdown,
        });
        let task = handle.spawn(run(inner.clone(), rx));
        Ok(Arc::new(Self {
            inner,
            task: Mutex::new(Some(task)),
        }))
    }

    /// A chunk tier (named `dragonfly`) reading `origin`'s blobs through the seeds: one per
    /// mounted image.
    pub fn tier(&self, origin: Arc<dyn BlobOrigin>) -> Arc<dyn ChunkTier> {
        Arc::new(DragonflyTier::new(self.inner.clone(), origin))
    }

    /// Schedulers, seeds and counters now.
    pub fn status(&self) -> DragonflyStatus {
        let now = Instant::now();
        let st = self.inner.state();
        let mut seeds: Vec<SeedStatus> = st
            .seeds
            .values()
            .map(|e| SeedStatus {
                id: e.seed.id.clone(),
                hostname: e.seed.hostname.clone(),
                ip: e.seed.ip,
                port: e.seed.port,
                proxy_port: e.seed.proxy_port,
                healthy: e.healthy,
                avoided: st
                    .avoided
                    .get(&e.seed.id)
                    .filter(|(until, _)| *until > now)
                    .map(|(until, why)| (*until - now, why.clone())),
                last_error: e.last_error.clone(),
            })
            .collect();
        seeds.sort_by(|a, b| a.id.cmp(&b.id));
        DragonflyStatus {
            schedulers: st.schedulers.clone(),
            seeds,
            counters: self.inner.counters.snapshot(),
        }
    }

    /// The counters, for metrics.
    pub fn counters(&self) -> CountersSnapshot {
        self.inner.counters.snapshot()
    }

    /// Ask the scheduler again for its seeds and check their health now (also done
    /// periodically). For tests and `dfagent seed`, which want seeds before the first period.
    pub async fn refresh_now(&self) -> Result<usize, DragonflyError> {
        self.inner.refresh().await?;
        self.inner.check_health().await;
        Ok(self.inner.usable_count())
    }

    /// Stop the background loop (tiers handed out keep working with the seeds known).
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        if let Ok(mut t) = self.task.lock() {
            if let Some(t) = t.take() {
                t.abort();
            }
        }
    }

    /// Ask the scheduler to preheat an image (`PreheatImage`): it resolves the manifest and has
    /// the seed peers download every layer, with task ids from the blob digests. Returns once the
    /// scheduler has accepted the job; poll [`Dragonfly::stat_image`] for progress.
    pub async fn preheat_image(&self, image: &PreheatImage) -> Result<(), DragonflyError> {
        let cfg = &self.inner.config;
        let req = PreheatImageRequest {
            url: image.url.clone(),
            tag: cfg.tag.clone(),
            application: cfg.application.clone(),
            header: header_map(&image.headers)?,
            username: image.username.clone(),
            password: image.password.clone(),
            platform: image.platform.clone(),
            scope: image.scope.as_str().to_string(),
            timeout: (!image.timeout.is_zero()).then(|| wkt_duration(image.timeout)),
            priority: image.priority.unwrap_or(cfg.prefetch_priority),
            enable_task_id_based_blob_digest: true,
            ..Default::default()
        };
        let timeout = image.timeout.max(cfg.request_timeout);
        self.inner
            .with_scheduler("PreheatImage", timeout, |mut c| {
                let req = req.clone();
                async move { c.preheat_image(req).await.map(|_| ()) }
            })
            .await
    }

    /// Which seed peers hold which layers of an image (`StatImage`, scope of `image`; the
    /// scheduler asks every seed). `image.timeout` bounds the call.
    pub async fn stat_image(&self, image: &PreheatImage) -> Result<ImageStatus, DragonflyError> {
        let cfg = &self.inner.config;
        let req = StatImageRequest {
            url: image.url.clone(),
            tag: cfg.tag.clone(),
            application: cfg.application.clone(),
            header: header_map(&image.headers)?,
            username: image.username.clone(),
            password: image.password.clone(),
            platform: image.platform.clone(),
            timeout: (!image.timeout.is_zero()).then(|| wkt_duration(image.timeout)),
            scope: match image.scope {
                PreheatScope::AllPeers => "all_peers",
                _ => "all_seed_peers",
            }
            .to_string(),
            enable_task_id_based_blob_digest: true,
            ..Default::default()
        };
        let timeout = image.timeout.max(cfg.request_timeout);
        let resp = self
            .inner
            .with_scheduler("StatImage", timeout, |mut c| {
                let req = req.clone();
                async move { c.stat_image(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        let addr = self
            .inner
            .state()
            .schedulers
            .iter()
            .find(|s| s.reachable == Some(true))
            .map(|s| s.addr.clone())
            .unwrap_or_default();
        ImageStatus::from_response(&resp).map_err(|e| DragonflyError::BadAnswer {
            addr,
            detail: e.to_string(),
        })
    }
}

impl Drop for Dragonfly {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The ring crypto provider for reqwest's rustls (as crates/registry installs it); harmless if
/// one is installed already. Only plain HTTP is spoken here.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn endpoint(uri: &str, config: &DragonflyConfig) -> Result<Endpoint, DragonflyError> {
    Ok(Endpoint::from_shared(uri.to_string())
        .map_err(|_| DragonflyError::Config(format!("address {uri:?} does not parse")))?
        // No channel-wide timeout: every call is bounded on its own (a StatImage may take
        // longer than a ListHosts).
        .connect_timeout(config.connect_timeout))
}

fn wkt_duration(d: Duration) -> prost_wkt_types::Duration {
    prost_wkt_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

fn header_map(
    headers: &[(String, String)],
) -> Result<std::collections::HashMap<String, String>, DragonflyError> {
    let mut out = std::collections::HashMap::new();
    for (n, v) in headers {
        if http::header::HeaderName::from_bytes(n.as_bytes()).is_err()
            || http::header::HeaderValue::from_str(v).is_err()
        {
            return Err(DragonflyError::InvalidHeader { name: printable(n) });
        }
        out.insert(n.clone(), v.clone());
    }
    Ok(out)
}

fn status_error(addr: &str, call: &'static str, s: &tonic::Status) -> DragonflyError {
    let msg = s.message();
    DragonflyError::Scheduler {
        addr: addr.to_string(),
        call,
        code: format!("{:?}", s.code()),
        message: printable(&msg[..floor_boundary(msg, 256)]),
    }
}

fn floor_boundary(s: &str, max: usize) -> usize {
    let mut i = s.len().min(max);
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Whether a gRPC status means "this scheduler is not there" (try the next one).
fn unreachable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    )
}

async fn run(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_secs(1);
    let mut next_refresh = tokio::time::Instant::now();
    let mut next_health = tokio::time::Instant::now() + inner.config.health_interval;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let work = async {
            if tokio::time::Instant::now() >= next_refresh {
                match inner.refresh().await {
                    Ok(added) => {
                        backoff = Duration::from_secs(1);
                        next_refresh = tokio::time::Instant::now() + inner.config.refresh_interval;
                        if added {
                            next_health = tokio::time::Instant::now();
                        }
                    }
                    Err(e) => {
                        DragonflyCounters::inc(&inner.counters.refresh_failures);
                        let wait = backoff.min(inner.config.refresh_interval);
                        tracing::warn!(error = %e, retry_secs = wait.as_secs_f32(), "cannot list seed peers");
                        next_refresh = tokio::time::Instant::now() + wait;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            if tokio::time::Instant::now() >= next_health {
                inner.check_health().await;
                next_health = tokio::time::Instant::now() + inner.config.health_interval;
            }
        };
        tokio::select! {
            _ = work => {}
            _ = shutdown.changed() => break,
        }
        let wake = next_refresh.min(next_health);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.changed() => break,
        }
    }
    tracing::debug!("dragonfly seed loop stopped");
}

impl Inner {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Call `f` on the first scheduler that answers; schedulers that are not there are skipped.
    async fn with_scheduler<T, F, Fut>(
        &self,
        call: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, DragonflyError>
    where
        F: Fn(SchedulerClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut why = Vec::new();
        for (i, s) in self.schedulers.iter().enumerate() {
            if let Err(e) = self.scheduler_serving(s).await {
                why.push(format!("{}: {e}", s.addr));
                self.mark_scheduler(i, Some(e));
                continue;
            }
            let client = SchedulerClient::new(s.channel.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            match tokio::time::timeout(timeout, f(client)).await {
                Ok(Ok(v)) => {
                    self.mark_scheduler(i, None);
                    return Ok(v);
                }
                Ok(Err(status)) if unreachable(&status) => {
                    let e = status_error(&s.addr, call, &status).to_string();
                    why.push(e.clone());
                    self.mark_scheduler(i, Some(e));
                }
                Ok(Err(status)) => {
                    self.mark_scheduler(i, None);
                    return Err(status_error(&s.addr, call, &status));
                }
                Err(_) => {
                    let e = format!("{}: {call}: no answer in {}s", s.addr, timeout.as_secs());
                    why.push(e.clone());
                    self.mark_scheduler(i, Some(e));
                }
            }
        }
        Err(DragonflyError::NoScheduler(why.join("; ")))
    }

    fn mark_scheduler(&self, i: usize, error: Option<String>) {
        let mut st = self.state();
        if let Some(s) = st.schedulers.get_mut(i) {
            s.reachable = Some(error.is_none());
            s.last_error = error;
        }
    }

    /// gRPC health of a scheduler: SERVING, or why not.
    async fn scheduler_serving(&self, s: &Scheduler) -> Result<(), String> {
        let bound = self.config.connect_timeout + self.config.request_timeout;
        health_check(s.channel.clone(), bound).await
    }

    /// `ListHosts` on the first reachable scheduler, and take its seeds. Returns whether seeds
    /// were added (their health is then checked at once).
    pub(crate) async fn refresh(&self) -> Result<bool, DragonflyError> {
        let resp: ListHostsResponse = self
            .with_scheduler(
                "ListHosts",
                self.config.request_timeout,
                |mut c| async move {
                    c.list_hosts(ListHostsRequest {
                        r#type: Some(crate::messages::HOST_TYPE_SUPER_SEED),
                    })
                    .await
                    .map(|r| r.into_inner())
                },
            )
            .await?;
        DragonflyCounters::inc(&self.counters.refreshes);
        Ok(self.apply_hosts(&resp))
    }

    /// Take the seeds of a `ListHosts` answer. Returns whether seeds were added or changed.
    pub(crate) fn apply_hosts(&self, resp: &ListHostsResponse) -> bool {
        let (seeds, rejected) = seeds_from_hosts(resp);
        if !rejected.is_empty() {
            DragonflyCounters::add(&self.counters.hosts_rejected, rejected.len() as u64);
            let mut logged = 0;
            for r in &rejected {
                if matches!(r.reason, RejectReason::NotSeed(_)) {
                    continue;
                }
                if logged < REJECTS_LOGGED {
                    tracing::warn!(host = %r.id, reason = %r.reason, "scheduler listed a host we cannot use");
                }
                logged += 1;
            }
            if logged > REJECTS_LOGGED {
                tracing::warn!(more = logged - REJECTS_LOGGED, "more hosts rejected");
            }
        }
        let mut changed = false;
        let mut st = self.state();
        let ids: HashSet<&str> = seeds.iter().map(|s| s.id.as_str()).collect();
        let before = st.seeds.len();
        st.seeds.retain(|id, _| ids.contains(id.as_str()));
        if st.seeds.len() != before {
            changed = true;
        }
        for seed in seeds {
            let same = st.seeds.get(&seed.id).is_some_and(|e| e.seed == seed);
            if same {
                continue;
            }
            match self.entry(seed) {
                Ok(e) => {
                    tracing::info!(seed = %e.seed.id, ip = %e.seed.ip, proxy_port = e.seed.proxy_port, "seed peer known");
                    st.seeds.insert(e.seed.id.clone(), e);
                    changed = true;
                }
                Err(e) => tracing::warn!(error = %e, "cannot set up a seed peer"),
            }
        }
        if changed || st.ring.is_none() {
            let keys: Vec<(Arc<str>, String)> = st
                .seeds
                .values()
                .map(|e| (Arc::from(e.seed.ring_key.as_str()), e.seed.id.clone()))
                .collect();
            st.ring = Some(Arc::new(SeedRing::new(keys.iter().map(|(k, _)| &**k))));
            st.by_key = keys.into_iter().collect();
        }
        let known: HashSet<String> = st.seeds.keys().cloned().collect();
        st.avoided.retain(|id, _| known.contains(id));
        self.gauges(&st);
        changed
    }

    fn entry(&self, seed: Seed) -> Result<SeedEntry, DragonflyError> {
        let proxy = SocketAddr::new(seed.ip, seed.proxy_port);
        let proxy_client = reqwest::Client::builder()
            .proxy(
                reqwest::Proxy::http(format!("http://{proxy}"))
                    .map_err(|e| DragonflyError::Config(format!("seed proxy {proxy}: {e}")))?,
            )
            .connect_timeout(self.config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| DragonflyError::Config(format!("http client: {e}")))?;
        let grpc = SocketAddr::new(seed.ip, seed.port);
        let health = endpoint(&format!("http://{grpc}"), &self.config)?.connect_lazy();
        Ok(SeedEntry {
            seed,
            healthy: false,
            last_error: None,
            proxy_client,
            health,
        })
    }

    fn gauges(&self, st: &State) {
        DragonflyCounters::set(&self.counters.seeds_known, st.seeds.len() as u64);
        DragonflyCounters::set(
            &self.counters.seeds_healthy,
            st.seeds.values().filter(|e| e.healthy).count() as u64,
        );
    }

    /// gRPC health of every seed (its upload port), a few at a time, each bounded.
    pub(crate) async fn check_health(&self) {
        let targets: Vec<(String, Channel)> = {
            let st = self.state();
            st.seeds
                .values()
                .map(|e| (e.seed.id.clone(), e.health.clone()))
                .collect()
        };
        let bound = self.config.connect_timeout + self.config.request_timeout;
        let results: Vec<(String, Result<(), String>)> = futures::stream::iter(targets)
            .map(|(id, ch)| async move { (id, health_check(ch, bound).await) })
            .buffer_unordered(HEALTH_CONCURRENCY)
            .collect()
            .await;
        let mut st = self.state();
        for (id, res) in results {
            let Some(e) = st.seeds.get_mut(&id) else {
                continue;
            };
            match res {
                Ok(()) => {
                    if !e.healthy {
                        tracing::info!(seed = %id, "seed peer healthy");
                    }
                    e.healthy = true;
                    e.last_error = None;
                }
                Err(why) => {
                    DragonflyCounters::inc(&self.counters.health_failures);
                    if e.healthy {
                        tracing::warn!(seed = %id, error = %why, "seed peer unhealthy");
                    }
                    e.healthy = false;
                    e.last_error = Some(why);
                }
            }
        }
        self.gauges(&st);
    }

    /// Seeds healthy and not avoided.
    pub(crate) fn usable_count(&self) -> usize {
        let now = Instant::now();
        let st = self.state();
        st.seeds
            .values()
            .filter(|e| e.healthy && st.avoided.get(&e.seed.id).is_none_or(|(u, _)| *u <= now))
            .count()
    }

    /// Up to `n` usable seeds for `task_id`, in ring order: (id, proxy address, client).
    pub(crate) fn select(
        &self,
        task_id: &str,
        n: usize,
    ) -> Vec<(String, SocketAddr, reqwest::Client)> {
        let now = Instant::now();
        let st = self.state();
        let Some(ring) = st.ring.clone() else {
            return Vec::new();
        };
        let usable = |key: &str| {
            st.by_key
                .get(key)
                .and_then(|id| st.seeds.get(id))
                .is_some_and(|e| {
                    e.healthy && st.avoided.get(&e.seed.id).is_none_or(|(u, _)| *u <= now)
                })
        };
        ring.select(task_id, n, usable)
            .into_iter()
            .filter_map(|k| st.by_key.get(&k).and_then(|id| st.seeds.get(id)))
            .map(|e| {
                (
                    e.seed.id.clone(),
                    SocketAddr::new(e.seed.ip, e.seed.proxy_port),
                    e.proxy_client.clone(),
                )
            })
            .collect()
    }

    /// Do not ask seed `id` for `for_`.
    pub(crate) fn avoid(&self, id: &str, for_: Duration, why: &str) {
        let now = Instant::now();
        let mut st = self.state();
        if !st.seeds.contains_key(id) {
            return;
        }
        let until = now + for_;
        let prev = st.avoided.insert(id.to_string(), (until, why.to_string()));
        if let Some((t, _)) = prev {
            if t > now {
                // Already avoided: keep the later end, count once.
                if t > until {
                    st.avoided.insert(id.to_string(), (t, why.to_string()));
                }
                return;
            }
        }
        DragonflyCounters::inc(&self.counters.avoidances);
        tracing::warn!(seed = %id, reason = why, avoid_secs = for_.as_secs(), "seed peer avoided");
    }

    /// Remember that seed `id` answered the chunk at `offset` of `blob`.
    pub(crate) fn record_answer(&self, blob: BlobId, offset: u64, id: &str) {
        let mut st = self.state();
        if st
            .answered_by
            .insert((blob, offset), id.to_string())
            .is_none()
        {
            st.answered_order.push_back((blob, offset));
        }
        while st.answered_order.len() > ANSWERED_CAP {
            if let Some(old) = st.answered_order.pop_front() {
                st.answered_by.remove(&old);
            }
        }
    }

    /// Which seed answered the chunk at `offset` of `blob` (forgotten once asked).
    pub(crate) fn take_answer(&self, blob: BlobId, offset: u64) -> Option<String> {
        self.state().answered_by.remove(&(blob, offset))
    }
}

/// One gRPC health check (service `""`, as upstream's selector asks), bounded by `bound`.
async fn health_check(channel: Channel, bound: Duration) -> Result<(), String> {
    let mut client = HealthClient::new(channel);
    let call = client.check(HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(bound, call).await {
        Err(_) => Err("health check timed out".into()),
        Ok(Err(s)) => Err(format!(
            "health check: {:?}: {}",
            s.code(),
            printable(&s.message()[..floor_boundary(s.message(), 128)])
        )),
        Ok(Ok(r)) => {
            let status = r.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                Ok(())
            } else {
                Err(format!("health status {status}, not SERVING"))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dragonfly_api::common::v2::Host;

    pub(crate) fn seed_host(id: &str, ip: &str, proxy_port: u16) -> Host {
        Host {
            id: id.to_string(),
            name: format!("name-{id}"),
            hostname: "h".into(),
            ip: ip.to_string(),
            port: 1,
            proxy_port: i32::from(proxy_port),
            r#type: 1,
            ..Default::default()
        }
    }

    /// A client with the given seeds, all marked healthy, and no loop running against them
    /// (its scheduler address points nowhere and the refresh interval is long).
    pub(crate) fn client_with(seeds: &[(&str, u16)], cfg: DragonflyConfig) -> Arc<Dragonfly> {
        let cfg = DragonflyConfig {
            schedulers: vec!["127.0.0.1:9".into()],
            refresh_interval: Duration::from_secs(3600),
            health_interval: Duration::from_secs(3600),
            ..cfg
        };
        let df = Dragonfly::start(cfg).unwrap();
        df.shutdown();
        let resp = ListHostsResponse {
            hosts: seeds
                .iter()
                .map(|(id, port)| seed_host(id, "127.0.0.1", *port))
                .collect(),
        };
        df.inner.apply_hosts(&resp);
        for e in df.inner.state().seeds.values_mut() {
            e.healthy = true;
        }
        df
    }

    #[tokio::test]
    async fn start_without_scheduler_does_not_fail_and_reports() {
        let df = Dragonfly::start(DragonflyConfig {
            schedulers: vec!["127.0.0.1:9".into()],
            connect_timeout: Duration::from_millis(200),
            request_timeout: Duration::from_millis(500),
            ..Default::default()
        })
        .unwrap();
        let err = df.refresh_now().await.unwrap_err();
        assert!(matches!(err, DragonflyError::NoScheduler(_)), "{err}");
        let st = df.status();
        assert_eq!(st.schedulers[0].reachable, Some(false));
        assert!(st.seeds.is_empty());
        let e = df
            .stat_image(&PreheatImage {
                url: "http://r/v2/a/manifests/latest".into(),
                password: Some("pw".into()),
                timeout: Duration::from_secs(1),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(e, DragonflyError::NoScheduler(_)));
        df.shutdown();
        assert!(Dragonfly::start(DragonflyConfig::default()).is_err());
    }

    #[tokio::test]
    async fn hosts_are_applied_and_counted() {
        let df = client_with(&[("a", 4001), ("b", 4002)], DragonflyConfig::default());
        let mut resp = ListHostsResponse {
            hosts: vec![seed_host("a", "127.0.0.1", 4001), seed_host("c", "bad", 1)],
        };
        resp.hosts.push(Host {
            r#type: 0,
            ..seed_host("n", "127.0.0.1", 1)
        });
        assert!(df.inner.apply_hosts(&resp));
        let st = df.status();
        assert_eq!(st.seeds.len(), 1);
        assert_eq!(st.counters.hosts_rejected, 2);
        assert_eq!(st.counters.seeds_known, 1);
        assert_eq!(st.counters.seeds_healthy, 1);
        let d = format!(
            "{:?}",
            PreheatImage {
                headers: vec![("Authorization".into(), "Basic c2VjcmV0".into())],
                password: Some("hunter2".into()),
                ..Default::default()
            }
        );
        assert!(!d.contains("c2VjcmV0") && !d.contains("hunter2"), "{d}");
    }

    /// A real gRPC health service (tonic-health, the one dfdaemon serves), nothing else.
    async fn health_server() -> (SocketAddr, tonic_health::server::HealthReporter) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l)),
        );
        (addr, reporter)
    }

    fn dead_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn seed_health_over_grpc() {
        let (addr, reporter) = health_server().await;
        let df = client_with(
            &[],
            DragonflyConfig {
                connect_timeout: Duration::from_millis(500),
                request_timeout: Duration::from_secs(2),
                ..Default::default()
            },
        );
        let resp = ListHostsResponse {
            hosts: vec![
                Host {
                    port: i32::from(addr.port()),
                    ..seed_host("up", "127.0.0.1", 4001)
                },
                Host {
                    port: i32::from(dead_port()),
                    ..seed_host("down", "127.0.0.1", 4001)
                },
            ],
        };
        df.inner.apply_hosts(&resp);
        assert_eq!(
            df.inner.usable_count(),
            0,
            "new seeds are unhealthy until checked"
        );
        df.inner.check_health().await;
        let st = df.status();
        let up = st.seeds.iter().find(|s| s.id == "up").unwrap();
        let down = st.seeds.iter().find(|s| s.id == "down").unwrap();
        assert!(up.healthy && !down.healthy);
        assert!(down.last_error.is_some());
        assert_eq!((st.counters.seeds_known, st.counters.seeds_healthy), (2, 1));
        assert_eq!(st.counters.health_failures, 1);
        assert_eq!(df.inner.select("00", 2).len(), 1);
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        df.inner.check_health().await;
        assert_eq!(df.inner.usable_count(), 0);
    }

    #[tokio::test]
    async fn first_reachable_scheduler_is_used() {
        // The second scheduler serves health but not the scheduler API: ListHosts answers
        // Unimplemented, a typed error from a reachable scheduler; the dead first one is skipped.
        let (addr, _reporter) = health_server().await;
        let df = Dragonfly::start(DragonflyConfig {
            schedulers: vec![
                format!("127.0.0.1:{}", dead_port()),
                format!("http://{addr}"),
            ],
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(2),
            refresh_interval: Duration::from_secs(3600),
            ..Default::default()
        })
        .unwrap();
        let err = df.refresh_now().await.unwrap_err();
        assert!(
            matches!(&err, DragonflyError::Scheduler { code, call: "ListHosts", .. } if code == "Unimplemented"),
            "{err}"
        );
        let st = df.status();
        assert_eq!(st.schedulers[0].reachable, Some(false));
        assert_eq!(st.schedulers[1].reachable, Some(true));
        df.shutdown();
    }

    #[tokio::test]
    async fn a_scheduler_answering_garbage_is_a_counted_error() {
        // A "scheduler" that answers every connection with bytes that are not HTTP/2, and one
        // that closes at once: typed errors, counted, within the timeouts, no panic.
        use tokio::io::AsyncWriteExt;
        let mut addrs = Vec::new();
        for garbage in [&b"HTTP/1.1 200 OK\r\n\r\n\x00\xff garbage"[..], &b""[..]] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(l.local_addr().unwrap());
            tokio::spawn(async move {
                for _ in 0..64 {
                    let Ok((mut c, _)) = l.accept().await else {
                        return;
                    };
                    let _ = c.write_all(garbage).await;
                    let _ = c.shutdown().await;
                }
            });
        }
        for addr in addrs {
            let df = Dragonfly::start(DragonflyConfig {
                schedulers: vec![addr.to_string()],
                connect_timeout: Duration::from_millis(500),
                request_timeout: Duration::from_secs(2),
                refresh_interval: Duration::from_secs(3600),
                ..Default::default()
            })
            .unwrap();
            let err = tokio::time::timeout(Duration::from_secs(20), df.refresh_now())
                .await
                .expect("bounded")
                .unwrap_err();
            assert!(matches!(err, DragonflyError::NoScheduler(_)), "{err}");
            assert!(df.counters().refresh_failures >= 1);
            assert!(df.status().seeds.is_empty());
            df.shutdown();
        }
    }
}
