//! [`TestScheduler`]: a Dragonfly scheduler (`scheduler.v2.Scheduler` of `dragonfly-api` 2.3.8)
//! for tests, standing in for the Go scheduler, which cannot be built here (its sources are not
//! on this machine either). It reproduces what the *clients* of a scheduler need for the calls
//! dfdaemon seed peers and dfagent make; what each call must answer was read from the
//! dragonfly-client 1.5.10 sources (the consumer side), not from the Go server:
//!
//! - **gRPC health**: `""` and `scheduler.v2.Scheduler` are SERVING. dfdaemon checks `""` before
//!   it uses a scheduler from its dynconfig file and exits when none is healthy
//!   (`src/dynconfig/local.rs`, `check_health`; `src/grpc/health.rs`).
//! - **AnnounceHost / DeleteHost / ListHosts**: the announcer sends the whole `common.v2.Host`
//!   at start-up and then every `scheduler.announceInterval`, and DeleteHost on shutdown
//!   (`src/announcer/mod.rs`: `port` is the upload gRPC port, `download_port` the same,
//!   `proxy_port` the proxy, `type` 1 for a super seed). The host is recorded as announced (the
//!   last announcement wins) and forgotten on DeleteHost; ListHosts answers the recorded hosts,
//!   filtered by `type` when the request gives one, with a test's proxy-port override applied
//!   (the request proxy of `dragonfly-client-request` 1.7.4 reads `ip` and `proxy_port` from
//!   ListHosts, `src/selector.rs`).
//! - **AnnouncePeer** (bidirectional stream, `src/resource/task.rs`,
//!   `download_partial_with_scheduler`): the peer opens it with a RegisterPeerRequest carrying its
//!   `Download` (with `actual_content_length`/`actual_piece_length`, set by
//!   `src/grpc/dfdaemon_upload.rs` before the task starts) and reads the first answer under
//!   `scheduler.scheduleTimeout`. The answers it handles are EmptyTask (it then reports
//!   started/finished), NormalTask (candidate parents), NeedBackToSource (it reports
//!   back-to-source started, downloads the pieces from the origin reporting each piece, then
//!   back-to-source finished or failed) and MetadataOnly (only for a `metadata_only` register,
//!   when the task is complete locally). This scheduler answers: MetadataOnly to a
//!   `metadata_only` register, EmptyTask when the content length is known to be 0, and
//!   NeedBackToSource to everything else — the Go scheduler sends seed peers back to source,
//!   and dfagent runs no normal peers, so parents are never offered. A ReschedulePeerRequest
//!   gets NeedBackToSource too. Piece reports (from parent or source), started, finished and
//!   failed requests update the per-task state (content length, piece length, pieces, peers
//!   and their hosts and states). After a finished or failed request the scheduler ends the
//!   response stream: the client waits for exactly that (`in_stream_tx.closed()`) before it
//!   returns.
//! - **StatTask** answers the recorded task (`state` Succeeded when a peer finished, Running
//!   while one runs, Failed when every peer failed, Pending otherwise; pieces without content)
//!   or NotFound, which dfdaemon's upload service passes on as NotFound
//!   (`src/grpc/dfdaemon_upload.rs`, `stat_task`). DeleteTask forgets the host's peers of the
//!   task (and the task when none is left), DeletePeer the peer; StatPeer answers the peer with
//!   its task and host. Every other method is `unimplemented`.
//! - **PreheatImage** resolves the image manifest at the request URL over plain HTTP (tag or
//!   digest; an index is followed to the requested platform, `linux/amd64` by default), with the
//!   request's headers and basic credentials, and returns once the layers are known. Then, in
//!   the background, every chosen peer downloads every layer blob through its own
//!   **DfdaemonUpload.DownloadTask** (gRPC on the host's `port`) with the blob URL, the request
//!   headers (plus `Authorization: Basic` from username/password), piece length, tag,
//!   application, filtered query params, priority and `enable_task_id_based_blob_digest` as
//!   given; each stream is driven to its end (bounded by the request's timeout, 30 min by
//!   default), at most `concurrent_task_count` (default 8) at a time. Scope: `single_seed_peer`
//!   (the default; the first seed peer by host id), `all_seed_peers`, `all_peers`; `ips`,
//!   `count`, `percentage` narrow the `all_*` scopes in that order of precedence.
//! - **StatImage** resolves the manifest again and asks every peer in scope (`all_seed_peers`,
//!   else all peers) for each layer's task with **DfdaemonUpload.StatLocalTask** (the upload
//!   service's StatTask asks the scheduler back, so it cannot tell what the peer holds): the
//!   layer is cached when the peer's local task has `finished_at`. The task id is the one the
//!   peer reported to the preheat's DownloadTask, else (with `enable_task_id_based_blob_digest`)
//!   the blob digest's hex.
//!
//! Test knobs: [`TestScheduler::set_proxy_port_override`] (ListHosts advertises another proxy
//! port for a host, so a test can put a corrupting proxy in front of a seed),
//! [`TestScheduler::hosts`], [`TestScheduler::tasks`], [`TestScheduler::preheat_jobs`].
//!
//! The server runs in its own tokio runtime on its own thread (the fixtures are used from
//! synchronous tests) and stops on drop.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use dragonfly_api::common::v2::{
    Download, Host, Peer as ApiPeer, Piece as ApiPiece, Task as ApiTask, TaskType,
};
use dragonfly_api::dfdaemon::v2::dfdaemon_upload_client::DfdaemonUploadClient;
use dragonfly_api::dfdaemon::v2::{DownloadTaskRequest, StatLocalTaskRequest};
use dragonfly_api::scheduler::v2::scheduler_server::{Scheduler, SchedulerServer};
use dragonfly_api::scheduler::v2::*;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

/// How long the scheduler waits for the next message of an AnnouncePeer stream before it
/// closes it (a peer that went away without a word).
const ANNOUNCE_IDLE: Duration = Duration::from_secs(600);
/// The bound of one manifest fetch and of one StatLocalTask call.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// A preheat's default time limit, as documented for `PreheatImageRequest.timeout`.
const PREHEAT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default number of layers preheated at once (`concurrent_task_count`).
const PREHEAT_CONCURRENCY: usize = 8;
/// How long the server may take to close its connections on drop.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Largest manifest accepted.
const MAX_MANIFEST: usize = 4 << 20;
/// Media types asked for when resolving an image (index first).
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A host as announced to the scheduler (AnnounceHost).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    /// Host id (`IP-HOSTNAME-seed` for a dfdaemon seed peer).
    pub id: String,
    /// Host type: 0 normal, 1 super seed, 2 strong seed, 3 weak seed.
    pub host_type: u32,
    /// Advertised IP.
    pub ip: String,
    /// Hostname.
    pub hostname: String,
    /// Upload gRPC port (DfdaemonUpload).
    pub port: u16,
    /// Download port as announced (dfdaemon 1.5.10 announces the upload port again).
    pub download_port: u16,
    /// Proxy port as announced (without the test's override).
    pub proxy_port: u16,
}

impl HostInfo {
    fn from_api(h: &Host) -> HostInfo {
        let port = |p: i32| u16::try_from(p).unwrap_or(0);
        HostInfo {
            id: h.id.clone(),
            host_type: h.r#type,
            ip: h.ip.clone(),
            hostname: h.hostname.clone(),
            port: port(h.port),
            download_port: port(h.download_port),
            proxy_port: port(h.proxy_port),
        }
    }

    /// Whether it is a seed peer (any type but normal).
    pub fn is_seed(&self) -> bool {
        self.host_type != 0
    }
}

/// A peer's state, as the scheduler learned it from the AnnouncePeer stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Registered, not started yet.
    Registered,
    /// Downloading (from parents).
    Running,
    /// Downloading from the origin.
    BackToSource,
    /// Finished: the host holds the whole requested content.
    Succeeded,
    /// Failed.
    Failed,
    /// The stream ended without a finished or failed report.
    Left,
}

impl PeerState {
    fn as_api(self) -> &'static str {
        match self {
            PeerState::Registered => "Pending",
            PeerState::Running => "Running",
            PeerState::BackToSource => "BackToSource",
            PeerState::Succeeded => "Succeeded",
            PeerState::Failed => "Failed",
            PeerState::Left => "Leave",
        }
    }
}

/// One peer of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Peer id.
    pub id: String,
    /// The host it runs on.
    pub host_id: String,
    /// Its state.
    pub state: PeerState,
    /// Whether its pieces came from the origin.
    pub back_to_source: bool,
    /// Its `Download.range` (offset, length), when it asked for part of the task.
    pub range: Option<(u64, u64)>,
}

/// One piece of a task as a peer reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceInfo {
    /// Offset in the content.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// Digest as reported (`crc32:...`).
    pub digest: String,
}

/// A task as the scheduler knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskInfo {
    /// Task id (the blob digest's hex for blob-digest task ids).
    pub id: String,
    /// The URL of the first registration.
    pub url: String,
    /// Content length, when a peer told it.
    pub content_length: Option<u64>,
    /// Piece length, when a peer told it.
    pub piece_length: Option<u64>,
    /// Pieces reported, by number.
    pub pieces: BTreeMap<u32, PieceInfo>,
    /// Peers, by peer id.
    pub peers: BTreeMap<String, PeerInfo>,
}

impl TaskInfo {
    /// Host ids of the peers that finished it (the hosts that hold it).
    pub fn holders(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .peers
            .values()
            .filter(|p| p.state == PeerState::Succeeded)
            .map(|p| p.host_id.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether some peer finished it.
    pub fn is_finished(&self) -> bool {
        self.peers.values().any(|p| p.state == PeerState::Succeeded)
    }

    /// Whether it has peers and all of them failed.
    pub fn is_failed(&self) -> bool {
        !self.peers.is_empty() && self.peers.values().all(|p| p.state == PeerState::Failed)
    }

    /// The state StatTask reports.
    pub fn state(&self) -> &'static str {
        if self.is_finished() {
            "Succeeded"
        } else if self.peers.values().any(|p| {
            matches!(
                p.state,
                PeerState::Running | PeerState::BackToSource | PeerState::Registered
            )
        }) {
            "Running"
        } else if self.is_failed() {
            "Failed"
        } else {
            "Pending"
        }
    }
}

/// The state of one layer download a preheat started on one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for a slot or downloading.
    Running,
    /// The DownloadTask stream ended without an error.
    Finished,
    /// The DownloadTask call or stream failed (the status or error).
    Failed(String),
}

/// One layer download of a preheat on one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreheatJob {
    /// The host asked to download.
    pub host_id: String,
    /// The blob URL.
    pub url: String,
    /// The task id the host reported (empty until its first answer).
    pub task_id: String,
    /// Where it stands.
    pub state: JobState,
}

#[derive(Default)]
struct State {
    hosts: Mutex<BTreeMap<String, Host>>,
    proxy_overrides: Mutex<HashMap<String, u16>>,
    tasks: Mutex<BTreeMap<String, TaskInfo>>,
    /// Preheat jobs by (host id, blob URL).
    jobs: Mutex<BTreeMap<(String, String), PreheatJob>>,
}

impl State {
    /// The proxy port ListHosts advertises for `h`.
    fn advertised_proxy_port(&self, h: &Host) -> i32 {
        let o = lock(&self.proxy_overrides);
        let keys = [
            h.id.clone(),
            format!("{}:{}", h.ip, h.proxy_port),
            format!("{}:{}", h.ip, h.port),
        ];
        keys.iter()
            .find_map(|k| o.get(k))
            .map(|p| i32::from(*p))
            .unwrap_or(h.proxy_port)
    }

    fn api_task(&self, t: &TaskInfo) -> ApiTask {
        ApiTask {
            id: t.id.clone(),
            r#type: TaskType::Standard as i32,
            url: t.url.clone(),
            content_length: t.content_length.unwrap_or(0),
            piece_count: u32::try_from(t.pieces.len()).unwrap_or(u32::MAX),
            pieces: t
                .pieces
                .iter()
                .map(|(n, p)| ApiPiece {
                    number: *n,
                    offset: p.offset,
                    length: p.length,
                    digest: p.digest.clone(),
                    ..Default::default()
                })
                .collect(),
            state: t.state().to_string(),
            peer_count: u32::try_from(t.peers.len()).unwrap_or(u32::MAX),
            has_available_peer: t.is_finished(),
            ..Default::default()
        }
    }

    fn with_task<R>(&self, task_id: &str, f: impl FnOnce(&mut TaskInfo) -> R) -> R {
        let mut tasks = lock(&self.tasks);
        let t = tasks
            .entry(task_id.to_string())
            .or_insert_with(|| TaskInfo {
                id: task_id.to_string(),
                ..Default::default()
            });
        f(t)
    }

    fn set_peer_state(&self, task_id: &str, peer_id: &str, host_id: &str, state: PeerState) {
        self.with_task(task_id, |t| {
            let p = t
                .peers
                .entry(peer_id.to_string())
                .or_insert_with(|| PeerInfo {
                    id: peer_id.to_string(),
                    host_id: host_id.to_string(),
                    state,
                    back_to_source: false,
                    range: None,
                });
            p.state = state;
            if state == PeerState::BackToSource {
                p.back_to_source = true;
            }
        });
    }

    fn add_piece(&self, task_id: &str, piece: &ApiPiece) {
        self.with_task(task_id, |t| {
            t.pieces.insert(
                piece.number,
                PieceInfo {
                    offset: piece.offset,
                    length: piece.length,
                    digest: piece.digest.clone(),
                },
            );
        });
    }
}

/// What one AnnouncePeer request asks of the stream.
enum Next {
    /// Answer this and keep reading.
    Answer(AnnouncePeerResponse),
    /// Keep reading.
    Continue,
    /// The peer is done (finished or failed): end the stream.
    Done,
}

fn respond(r: announce_peer_response::Response) -> Next {
    Next::Answer(AnnouncePeerResponse { response: Some(r) })
}

fn back_to_source(why: &str) -> Next {
    respond(announce_peer_response::Response::NeedBackToSourceResponse(
        NeedBackToSourceResponse {
            description: Some(why.to_string()),
        },
    ))
}

#[derive(Clone)]
struct Service {
    state: Arc<State>,
}

impl Service {
    fn handle_announce(&self, req: AnnouncePeerRequest) -> Next {
        use announce_peer_request::Request as R;
        let (host_id, task_id, peer_id) = (&req.host_id, &req.task_id, &req.peer_id);
        let Some(r) = req.request.as_ref() else {
            warn!(%task_id, %peer_id, "AnnouncePeer request without a body");
            return Next::Continue;
        };
        let st = &self.state;
        match r {
            R::RegisterPeerRequest(reg) => {
                let d = reg.download.clone().unwrap_or_default();
                let is_seed = lock(&st.hosts).get(host_id).is_some_and(|h| h.r#type != 0);
                info!(%host_id, %task_id, %peer_id, url = %d.url, is_seed,
                      content_length = ?d.actual_content_length, "peer registered");
                st.with_task(task_id, |t| {
                    if t.url.is_empty() {
                        t.url = d.url.clone();
                    }
                    if d.actual_content_length.is_some() {
                        t.content_length = d.actual_content_length;
                    }
                    if d.actual_piece_length.is_some() {
                        t.piece_length = d.actual_piece_length;
                    }
                    t.peers.insert(
                        peer_id.clone(),
                        PeerInfo {
                            id: peer_id.clone(),
                            host_id: host_id.clone(),
                            state: PeerState::Registered,
                            back_to_source: false,
                            range: d.range.map(|r| (r.start, r.length)),
                        },
                    );
                });
                if d.metadata_only {
                    respond(announce_peer_response::Response::MetadataOnlyResponse(
                        MetadataOnlyResponse {},
                    ))
                } else if d.actual_content_length == Some(0) {
                    respond(announce_peer_response::Response::EmptyTaskResponse(
                        EmptyTaskResponse {},
                    ))
                } else if is_seed {
                    back_to_source("seed peer downloads from the source")
                } else {
                    back_to_source("no parents are scheduled by the test scheduler")
                }
            }
            R::DownloadPeerStartedRequest(_) => {
                st.set_peer_state(task_id, peer_id, host_id, PeerState::Running);
                Next::Continue
            }
            R::DownloadPeerBackToSourceStartedRequest(_) => {
                st.set_peer_state(task_id, peer_id, host_id, PeerState::BackToSource);
                Next::Continue
            }
            R::ReschedulePeerRequest(r) => {
                debug!(%task_id, %peer_id, description = ?r.description, "reschedule");
                back_to_source("rescheduled: no parents")
            }
            R::DownloadPeerFinishedRequest(_) | R::DownloadPeerBackToSourceFinishedRequest(_) => {
                info!(%host_id, %task_id, %peer_id, "peer finished");
                st.set_peer_state(task_id, peer_id, host_id, PeerState::Succeeded);
                Next::Done
            }
            R::DownloadPeerFailedRequest(DownloadPeerFailedRequest { description })
            | R::DownloadPeerBackToSourceFailedRequest(DownloadPeerBackToSourceFailedRequest {
                description,
            }) => {
                warn!(%host_id, %task_id, %peer_id, ?description, "peer failed");
                st.set_peer_state(task_id, peer_id, host_id, PeerState::Failed);
                Next::Done
            }
            R::DownloadPieceFinishedRequest(DownloadPieceFinishedRequest { piece })
            | R::DownloadPieceBackToSourceFinishedRequest(
                DownloadPieceBackToSourceFinishedRequest { piece },
            ) => {
                if let Some(p) = piece {
                    st.add_piece(task_id, p);
                }
                Next::Continue
            }
            R::DownloadPieceFailedRequest(f) => {
                debug!(%task_id, %peer_id, piece = ?f.piece_number, "piece failed");
                Next::Continue
            }
            R::DownloadPieceBackToSourceFailedRequest(f) => {
                debug!(%task_id, %peer_id, piece = ?f.piece_number, "piece failed from the source");
                Next::Continue
            }
        }
    }
}

/// Methods the fixtures do not serve, answering `unimplemented`. Written out as `async_trait`
/// expands an `async fn` (the attribute does not look into macro calls).
macro_rules! unimplemented_calls {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                _request: Request<$req>,
            ) -> std::pin::Pin<
                Box<
                    dyn std::future::Future<Output = Result<Response<$resp>, Status>>
                        + Send
                        + 'async_trait,
                >,
            >
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move {
                    Err(Status::unimplemented(concat!(
                        stringify!($name),
                        " is not implemented by the test scheduler"
                    )))
                })
            }
        )*
    };
}

type Stream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Scheduler for Service {
    type AnnouncePeerStream = ReceiverStream<Result<AnnouncePeerResponse, Status>>;
    type AnnounceCachePeerStream = Stream<AnnounceCachePeerResponse>;
    type AnnouncePersistentPeerStream = Stream<AnnouncePersistentPeerResponse>;
    type AnnouncePersistentCachePeerStream = Stream<AnnouncePersistentCachePeerResponse>;

    async fn announce_peer(
        &self,
        request: Request<Streaming<AnnouncePeerRequest>>,
    ) -> Result<Response<Self::AnnouncePeerStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let svc = self.clone();
        tokio::spawn(async move {
            let mut last: Option<(String, String, String)> = None;
            loop {
                let msg = match tokio::time::timeout(ANNOUNCE_IDLE, inbound.message()).await {
                    Ok(Ok(Some(m))) => m,
                    Ok(Ok(None)) => break,
                    Ok(Err(status)) => {
                        debug!(%status, "AnnouncePeer stream ended with an error");
                        break;
                    }
                    Err(_) => {
                        warn!("AnnouncePeer stream idle too long, closing it");
                        break;
                    }
                };
                last = Some((
                    msg.task_id.clone(),
                    msg.peer_id.clone(),
                    msg.host_id.clone(),
                ));
                match svc.handle_announce(msg) {
                    Next::Answer(a) => {
                        if tx.send(Ok(a)).await.is_err() {
                            break;
                        }
                    }
                    Next::Continue => {}
                    Next::Done => {
                        last = None;
                        break;
                    }
                }
            }
            // A peer that went away mid-download: mark it left.
            if let Some((task_id, peer_id, host_id)) = last {
                let still_active = lock(&svc.state.tasks)
                    .get(&task_id)
                    .and_then(|t| t.peers.get(&peer_id))
                    .is_some_and(|p| !matches!(p.state, PeerState::Succeeded | PeerState::Failed));
                if still_active {
                    svc.state
                        .set_peer_state(&task_id, &peer_id, &host_id, PeerState::Left);
                }
            }
            // Dropping `tx` ends the response stream, which ends the call for the peer.
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stat_peer(
        &self,
        request: Request<StatPeerRequest>,
    ) -> Result<Response<ApiPeer>, Status> {
        let r = request.into_inner();
        let tasks = lock(&self.state.tasks);
        let t = tasks
            .get(&r.task_id)
            .ok_or_else(|| Status::not_found(format!("task {} not found", r.task_id)))?;
        let p = t
            .peers
            .get(&r.peer_id)
            .ok_or_else(|| Status::not_found(format!("peer {} not found", r.peer_id)))?;
        let host = lock(&self.state.hosts).get(&p.host_id).cloned();
        Ok(Response::new(ApiPeer {
            id: p.id.clone(),
            state: p.state.as_api().to_string(),
            need_back_to_source: p.back_to_source,
            task: Some(self.state.api_task(t)),
            host,
            ..Default::default()
        }))
    }

    async fn delete_peer(
        &self,
        request: Request<DeletePeerRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let mut tasks = lock(&self.state.tasks);
        if let Some(t) = tasks.get_mut(&r.task_id) {
            t.peers.remove(&r.peer_id);
        }
        Ok(Response::new(()))
    }

    async fn stat_task(
        &self,
        request: Request<StatTaskRequest>,
    ) -> Result<Response<ApiTask>, Status> {
        let r = request.into_inner();
        let tasks = lock(&self.state.tasks);
        match tasks.get(&r.task_id) {
            Some(t) => Ok(Response::new(self.state.api_task(t))),
            None => Err(Status::not_found(format!("task {} not found", r.task_id))),
        }
    }

    async fn delete_task(
        &self,
        request: Request<DeleteTaskRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let mut tasks = lock(&self.state.tasks);
        let empty = tasks.get_mut(&r.task_id).map(|t| {
            t.peers.retain(|_, p| p.host_id != r.host_id);
            t.peers.is_empty()
        });
        if empty == Some(true) {
            tasks.remove(&r.task_id);
        }
        Ok(Response::new(()))
    }

    async fn announce_host(
        &self,
        request: Request<AnnounceHostRequest>,
    ) -> Result<Response<()>, Status> {
        let host = request
            .into_inner()
            .host
            .ok_or_else(|| Status::invalid_argument("AnnounceHost without a host"))?;
        if host.id.is_empty() {
            return Err(Status::invalid_argument(
                "AnnounceHost with an empty host id",
            ));
        }
        let new = lock(&self.state.hosts)
            .insert(host.id.clone(), host.clone())
            .is_none();
        if new {
            info!(host_id = %host.id, ip = %host.ip, port = host.port,
                  proxy_port = host.proxy_port, host_type = host.r#type, "host announced");
        }
        Ok(Response::new(()))
    }

    async fn list_hosts(
        &self,
        request: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        let want = request.into_inner().r#type;
        let hosts = lock(&self.state.hosts)
            .values()
            .filter(|h| want.is_none_or(|t| t == h.r#type))
            .cloned()
            .collect::<Vec<_>>();
        let hosts = hosts
            .into_iter()
            .map(|mut h| {
                h.proxy_port = self.state.advertised_proxy_port(&h);
                h
            })
            .collect();
        Ok(Response::new(ListHostsResponse { hosts }))
    }

    async fn delete_host(
        &self,
        request: Request<DeleteHostRequest>,
    ) -> Result<Response<()>, Status> {
        let id = request.into_inner().host_id;
        if lock(&self.state.hosts).remove(&id).is_some() {
            info!(host_id = %id, "host deleted");
        }
        Ok(Response::new(()))
    }

    async fn announce_cache_peer(
        &self,
        _request: Request<Streaming<AnnounceCachePeerRequest>>,
    ) -> Result<Response<Self::AnnounceCachePeerStream>, Status> {
        Err(Status::unimplemented(
            "announce_cache_peer is not implemented by the test scheduler",
        ))
    }

    async fn announce_persistent_peer(
        &self,
        _request: Request<Streaming<AnnouncePersistentPeerRequest>>,
    ) -> Result<Response<Self::AnnouncePersistentPeerStream>, Status> {
        Err(Status::unimplemented(
            "announce_persistent_peer is not implemented by the test scheduler",
        ))
    }

    async fn announce_persistent_cache_peer(
        &self,
        _request: Request<Streaming<AnnouncePersistentCachePeerRequest>>,
    ) -> Result<Response<Self::AnnouncePersistentCachePeerStream>, Status> {
        Err(Status::unimplemented(
            "announce_persistent_cache_peer is not implemented by the test scheduler",
        ))
    }

    unimplemented_calls! {
        stat_cache_peer(StatCachePeerRequest) -> dragonfly_api::common::v2::CachePeer;
        delete_cache_peer(DeleteCachePeerRequest) -> ();
        stat_cache_task(StatCacheTaskRequest) -> dragonfly_api::common::v2::CacheTask;
        delete_cache_task(DeleteCacheTaskRequest) -> ();
        stat_persistent_peer(StatPersistentPeerRequest) -> dragonfly_api::common::v2::PersistentPeer;
        delete_persistent_peer(DeletePersistentPeerRequest) -> ();
        upload_persistent_task_started(UploadPersistentTaskStartedRequest) -> ();
        upload_persistent_task_finished(UploadPersistentTaskFinishedRequest) -> dragonfly_api::common::v2::PersistentTask;
        upload_persistent_task_failed(UploadPersistentTaskFailedRequest) -> ();
        stat_persistent_task(StatPersistentTaskRequest) -> dragonfly_api::common::v2::PersistentTask;
        delete_persistent_task(DeletePersistentTaskRequest) -> ();
        stat_persistent_cache_peer(StatPersistentCachePeerRequest) -> dragonfly_api::common::v2::PersistentCachePeer;
        delete_persistent_cache_peer(DeletePersistentCachePeerRequest) -> ();
        upload_persistent_cache_task_started(UploadPersistentCacheTaskStartedRequest) -> ();
        upload_persistent_cache_task_finished(UploadPersistentCacheTaskFinishedRequest) -> dragonfly_api::common::v2::PersistentCacheTask;
        upload_persistent_cache_task_failed(UploadPersistentCacheTaskFailedRequest) -> ();
        stat_persistent_cache_task(StatPersistentCacheTaskRequest) -> dragonfly_api::common::v2::PersistentCacheTask;
        delete_persistent_cache_task(DeletePersistentCacheTaskRequest) -> ();
        preheat_file(PreheatFileRequest) -> ();
        stat_file(StatFileRequest) -> StatFileResponse;
    }

    async fn preheat_image(
        &self,
        request: Request<PreheatImageRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let access = Access {
            header: r.header.clone(),
            username: r.username.clone(),
            password: r.password.clone(),
        };
        let layers = resolve_layers(&r.url, r.platform.as_deref(), &access).await?;
        let hosts = select_hosts(
            &lock(&self.state.hosts)
                .values()
                .cloned()
                .collect::<Vec<_>>(),
            &r.scope,
            &r.ips,
            r.count,
            r.percentage,
        )?;
        info!(url = %r.url, layers = layers.len(), hosts = hosts.len(), scope = %r.scope,
              "preheating image");
        let limit = r
            .concurrent_task_count
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(PREHEAT_CONCURRENCY);
        let timeout = r
            .timeout
            .map(|d| {
                Duration::new(
                    u64::try_from(d.seconds).unwrap_or(0),
                    u32::try_from(d.nanos).unwrap_or(0),
                )
            })
            .filter(|d| !d.is_zero())
            .unwrap_or(PREHEAT_TIMEOUT);
        let slots = Arc::new(Semaphore::new(limit));
        let mut request_header = r.header.clone();
        if let Some(auth) = access.basic() {
            request_header.insert("Authorization".to_string(), auth);
        }
        for host in &hosts {
            for layer in &layers {
                let download = Download {
                    url: layer.url.clone(),
                    r#type: TaskType::Standard as i32,
                    tag: r.tag.clone(),
                    application: r.application.clone(),
                    priority: r.priority,
                    filtered_query_params: r.filtered_query_params.clone(),
                    request_header: request_header.clone(),
                    piece_length: r.piece_length,
                    certificate_chain: r.certificate_chain.clone(),
                    enable_task_id_based_blob_digest: r.enable_task_id_based_blob_digest,
                    ..Default::default()
                };
                let key = (host.id.clone(), layer.url.clone());
                lock(&self.state.jobs).insert(
                    key.clone(),
                    PreheatJob {
                        host_id: host.id.clone(),
                        url: layer.url.clone(),
                        task_id: String::new(),
                        state: JobState::Running,
                    },
                );
                let state = self.state.clone();
                let slots = slots.clone();
                let host = host.clone();
                tokio::spawn(async move {
                    let Ok(_slot) = slots.acquire_owned().await else {
                        return;
                    };
                    let result =
                        tokio::time::timeout(timeout, download_on(&state, &key, &host, download))
                            .await
                            .unwrap_or_else(|_| {
                                Err(format!("preheat timed out after {timeout:?}"))
                            });
                    let js = match result {
                        Ok(()) => JobState::Finished,
                        Err(e) => {
                            warn!(host_id = %host.id, url = %key.1, error = %e, "preheat of a layer failed");
                            JobState::Failed(e)
                        }
                    };
                    if let Some(j) = lock(&state.jobs).get_mut(&key) {
                        j.state = js;
                    }
                });
            }
        }
        Ok(Response::new(()))
    }

    async fn stat_image(
        &self,
        request: Request<StatImageRequest>,
    ) -> Result<Response<StatImageResponse>, Status> {
        let r = request.into_inner();
        let access = Access {
            header: r.header.clone(),
            username: r.username.clone(),
            password: r.password.clone(),
        };
        let layers = resolve_layers(&r.url, r.platform.as_deref(), &access).await?;
        let hosts: Vec<Host> = lock(&self.state.hosts)
            .values()
            .filter(|h| r.scope != "all_seed_peers" || h.r#type != 0)
            .cloned()
            .collect();
        let mut peers = Vec::new();
        for host in &hosts {
            let mut cached = Vec::new();
            let client = upload_client(host).await.ok();
            for layer in &layers {
                let recorded = lock(&self.state.jobs)
                    .get(&(host.id.clone(), layer.url.clone()))
                    .map(|j| j.task_id.clone())
                    .filter(|id| !id.is_empty());
                let task_id = recorded.or_else(|| {
                    r.enable_task_id_based_blob_digest
                        .then(|| layer.digest_hex().to_string())
                });
                let (Some(task_id), Some(mut c)) = (task_id, client.clone()) else {
                    continue;
                };
                let stat = tokio::time::timeout(
                    HTTP_TIMEOUT,
                    c.stat_local_task(StatLocalTaskRequest {
                        task_id,
                        remote_ip: None,
                    }),
                )
                .await;
                if let Ok(Ok(resp)) = stat {
                    if resp.into_inner().finished_at.is_some() {
                        cached.push(Layer {
                            url: layer.url.clone(),
                            is_finished: Some(true),
                        });
                    }
                }
            }
            peers.push(PeerImage {
                ip: host.ip.clone(),
                hostname: host.hostname.clone(),
                cached_layers: cached,
            });
        }
        Ok(Response::new(StatImageResponse {
            image: Some(Image {
                layers: layers
                    .iter()
                    .map(|l| Layer {
                        url: l.url.clone(),
                        is_finished: None,
                    })
                    .collect(),
            }),
            peers,
        }))
    }
}

async fn upload_client(
    host: &Host,
) -> Result<DfdaemonUploadClient<tonic::transport::Channel>, String> {
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{}:{}", host.ip, host.port))
            .map_err(|e| e.to_string())?
            .connect_timeout(HTTP_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    Ok(DfdaemonUploadClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// Run one layer's DownloadTask on `host` to the end of its stream.
async fn download_on(
    state: &State,
    key: &(String, String),
    host: &Host,
    download: Download,
) -> Result<(), String> {
    let mut client = upload_client(host).await?;
    let mut stream = client
        .download_task(DownloadTaskRequest {
            download: Some(download),
        })
        .await
        .map_err(|s| format!("DownloadTask: {s}"))?
        .into_inner();
    let mut pieces = 0u64;
    // Bounded by the caller's timeout; each message is one piece or the start.
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                if !m.task_id.is_empty() {
                    if let Some(j) = lock(&state.jobs).get_mut(key) {
                        if j.task_id.is_empty() {
                            j.task_id = m.task_id.clone();
                        }
                    }
                }
                pieces += 1;
            }
            Ok(None) => {
                debug!(host_id = %host.id, url = %key.1, messages = pieces, "preheat of a layer done");
                return Ok(());
            }
            Err(s) => return Err(format!("DownloadTask stream: {s}")),
        }
    }
}

/// Headers and credentials for the registry.
struct Access {
    header: HashMap<String, String>,
    username: Option<String>,
    password: Option<String>,
}

impl Access {
    fn basic(&self) -> Option<String> {
        use base64::Engine as _;
        let user = self.username.as_deref().filter(|u| !u.is_empty())?;
        let pass = self.password.as_deref().unwrap_or("");
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        ))
    }
}

/// One layer of a resolved image.
#[derive(Clone, Debug)]
struct LayerRef {
    url: String,
    digest: String,
}

impl LayerRef {
    fn digest_hex(&self) -> &str {
        self.digest
            .split_once(':')
            .map(|(_, h)| h)
            .unwrap_or(&self.digest)
    }
}

/// Fetch `url` (a manifest), returning its JSON.
async fn fetch_manifest(
    client: &reqwest::Client,
    url: &str,
    access: &Access,
) -> Result<serde_json::Value, Status> {
    let mut req = client
        .get(url)
        .header(reqwest::header::ACCEPT, MANIFEST_ACCEPT);
    for (k, v) in &access.header {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(auth) = access.basic() {
        req = req.header(reqwest::header::AUTHORIZATION, auth);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Status::unavailable(format!("GET {url}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(Status::failed_precondition(format!(
            "GET {url}: HTTP {status}"
        )));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| Status::unavailable(format!("GET {url}: {e}")))?;
    if body.len() > MAX_MANIFEST {
        return Err(Status::failed_precondition(format!(
            "GET {url}: manifest too large"
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| Status::failed_precondition(format!("GET {url}: not JSON: {e}")))
}

/// The layer blobs of the image whose manifest is at `url` (`.../v2/NAME/manifests/REF`),
/// following an index to `platform` (`os/arch[/variant]`, default linux/amd64).
async fn resolve_layers(
    url: &str,
    platform: Option<&str>,
    access: &Access,
) -> Result<Vec<LayerRef>, Status> {
    let (base, _reference) = url
        .rsplit_once("/manifests/")
        .ok_or_else(|| Status::invalid_argument(format!("{url} is not a manifest URL")))?;
    let client = crate::net::http_client_builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(|e| Status::internal(format!("HTTP client: {e}")))?;
    let mut manifest = fetch_manifest(&client, url, access).await?;
    if let Some(entries) = manifest.get("manifests").and_then(|m| m.as_array()) {
        let want = platform.filter(|p| !p.is_empty()).unwrap_or("linux/amd64");
        let mut parts = want.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        let chosen = entries
            .iter()
            .find(|e| {
                let p = &e["platform"];
                p["os"].as_str() == os
                    && p["architecture"].as_str() == arch
                    && (variant.is_none() || p["variant"].as_str() == variant)
            })
            .and_then(|e| e["digest"].as_str())
            .ok_or_else(|| {
                Status::failed_precondition(format!("{url}: no manifest for platform {want}"))
            })?
            .to_string();
        manifest = fetch_manifest(&client, &format!("{base}/manifests/{chosen}"), access).await?;
    }
    let layers = manifest
        .get("layers")
        .and_then(|l| l.as_array())
        .ok_or_else(|| Status::failed_precondition(format!("{url}: manifest without layers")))?;
    layers
        .iter()
        .map(|l| {
            let digest = l["digest"].as_str().ok_or_else(|| {
                Status::failed_precondition(format!("{url}: layer without digest"))
            })?;
            Ok(LayerRef {
                url: format!("{base}/blobs/{digest}"),
                digest: digest.to_string(),
            })
        })
        .collect()
}

/// The hosts a preheat with `scope` runs on.
fn select_hosts(
    all: &[Host],
    scope: &str,
    ips: &[String],
    count: Option<u32>,
    percentage: Option<u32>,
) -> Result<Vec<Host>, Status> {
    let seeds: Vec<Host> = all.iter().filter(|h| h.r#type != 0).cloned().collect();
    let pool = match scope {
        "" | "single_seed_peer" => {
            return seeds
                .into_iter()
                .next()
                .map(|h| vec![h])
                .ok_or_else(|| Status::failed_precondition("no seed peer announced"));
        }
        "all_seed_peers" => seeds,
        "all_peers" => all.to_vec(),
        other => return Err(Status::invalid_argument(format!("unknown scope {other}"))),
    };
    let chosen: Vec<Host> = if !ips.is_empty() {
        pool.into_iter().filter(|h| ips.contains(&h.ip)).collect()
    } else if let Some(n) = count {
        pool.into_iter().take(n as usize).collect()
    } else if let Some(p) = percentage {
        let n = (pool.len() * p.min(100) as usize).div_ceil(100);
        pool.into_iter().take(n).collect()
    } else {
        pool
    };
    if chosen.is_empty() {
        return Err(Status::failed_precondition(format!(
            "no peer in scope {scope}"
        )));
    }
    Ok(chosen)
}

/// A running test scheduler; stops on drop.
pub struct TestScheduler {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestScheduler {
    /// A scheduler on a free 127.0.0.1 port.
    pub fn start() -> TestScheduler {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// A scheduler listening on `addr` (port 0: a free one).
    pub fn start_on(addr: SocketAddr) -> TestScheduler {
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("binding the test scheduler to {addr}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("scheduler address");
        let state = Arc::new(State::default());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let svc = Service {
            state: state.clone(),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name(format!("test scheduler {addr}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("test-scheduler")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("tokio runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("listener: {e}")));
                            return;
                        }
                    };
                    let (reporter, health) = tonic_health::server::health_reporter();
                    reporter.set_serving::<SchedulerServer<Service>>().await;
                    let (graceful_tx, graceful_rx) = oneshot::channel::<()>();
                    let server = tonic::transport::Server::builder()
                        .add_service(health)
                        .add_service(
                            SchedulerServer::new(svc)
                                .max_decoding_message_size(usize::MAX)
                                .max_encoding_message_size(usize::MAX),
                        )
                        .serve_with_incoming_shutdown(
                            TcpListenerStream::new(listener),
                            async move {
                                let _ = graceful_rx.await;
                            },
                        );
                    let server = tokio::spawn(server);
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.await;
                    let _ = graceful_tx.send(());
                    // Peers may hold streams open: give them a moment, then drop the runtime.
                    let _ = tokio::time::timeout(STOP_GRACE, server).await;
                });
                rt.shutdown_timeout(STOP_GRACE);
            })
            .expect("spawning the test scheduler's thread");
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("starting the test scheduler: {e}"),
            Err(e) => panic!("starting the test scheduler: {e}"),
        }
        info!(%addr, "test scheduler started");
        TestScheduler {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the endpoint for a gRPC client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The announced hosts (as announced, without proxy-port overrides), by host id.
    pub fn hosts(&self) -> Vec<HostInfo> {
        lock(&self.state.hosts)
            .values()
            .map(HostInfo::from_api)
            .collect()
    }

    /// The host with id `id`, if announced.
    pub fn host(&self, id: &str) -> Option<HostInfo> {
        lock(&self.state.hosts).get(id).map(HostInfo::from_api)
    }

    /// Make ListHosts advertise `port` as the proxy port of the host whose id, `ip:proxy_port`
    /// or `ip:port` (upload port) is `key` (a test puts a faulty proxy in front of a seed).
    pub fn set_proxy_port_override(&self, key: &str, port: u16) {
        lock(&self.state.proxy_overrides).insert(key.to_string(), port);
    }

    /// Undo [`Self::set_proxy_port_override`] for `key`.
    pub fn clear_proxy_port_override(&self, key: &str) {
        lock(&self.state.proxy_overrides).remove(key);
    }

    /// A snapshot of every task the scheduler knows, by task id.
    pub fn tasks(&self) -> Vec<TaskInfo> {
        lock(&self.state.tasks).values().cloned().collect()
    }

    /// A snapshot of the task `id`.
    pub fn task(&self, id: &str) -> Option<TaskInfo> {
        lock(&self.state.tasks).get(id).cloned()
    }

    /// The layer downloads preheats started, with their states.
    pub fn preheat_jobs(&self) -> Vec<PreheatJob> {
        lock(&self.state.jobs).values().cloned().collect()
    }
}

impl Drop for TestScheduler {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, ty: u32, ip: &str) -> Host {
        Host {
            id: id.to_string(),
            r#type: ty,
            ip: ip.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn scopes_pick_seed_peers() {
        let all = vec![
            host("a", 1, "10.0.0.1"),
            host("b", 0, "10.0.0.2"),
            host("c", 1, "10.0.0.3"),
        ];
        let ids = |v: Vec<Host>| v.into_iter().map(|h| h.id).collect::<Vec<_>>();
        assert_eq!(ids(select_hosts(&all, "", &[], None, None).unwrap()), ["a"]);
        assert_eq!(
            ids(select_hosts(&all, "all_seed_peers", &[], None, None).unwrap()),
            ["a", "c"]
        );
        assert_eq!(
            ids(select_hosts(&all, "all_peers", &["10.0.0.2".into()], None, None).unwrap()),
            ["b"]
        );
        assert_eq!(
            ids(select_hosts(&all, "all_peers", &[], Some(2), None).unwrap()),
            ["a", "b"]
        );
        assert_eq!(
            ids(select_hosts(&all, "all_seed_peers", &[], None, Some(50)).unwrap()),
            ["a"]
        );
        assert!(select_hosts(&all[1..2], "single_seed_peer", &[], None, None).is_err());
        assert!(select_hosts(&all, "nope", &[], None, None).is_err());
    }

    #[test]
    fn task_state_follows_peers() {
        let mut t = TaskInfo::default();
        assert_eq!(t.state(), "Pending");
        let peer = |host: &str, state| PeerInfo {
            id: format!("p-{host}"),
            host_id: host.to_string(),
            state,
            back_to_source: false,
            range: None,
        };
        t.peers.insert("1".into(), peer("h1", PeerState::Failed));
        assert_eq!(t.state(), "Failed");
        t.peers
            .insert("2".into(), peer("h2", PeerState::BackToSource));
        assert_eq!(t.state(), "Running");
        t.peers.insert("3".into(), peer("h3", PeerState::Succeeded));
        assert_eq!(t.state(), "Succeeded");
        assert_eq!(t.holders(), ["h3"]);
    }
}
