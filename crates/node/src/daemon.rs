//! [`Daemon`]: one node serving every mount on the machine. It owns the node (store, registry
//! client, shared resolver core), keeps the table of live mounts, notices mounts that went away
//! under it, and unmounts everything (lazily if busy) when told to stop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{NodeError, Result};
use crate::mount::{Mount, MountOptions, MountSpec, MountStats};
use crate::node::Node;

/// How often the daemon looks for mounts that ended without it (unmounted from outside).
const REAP_EVERY: Duration = Duration::from_secs(1);

/// A mount as the daemon lists it.
#[derive(Clone, Debug)]
pub struct MountInfo {
    /// What was mounted (reference or bootstrap path).
    pub image: String,
    /// Manifest digest (registry images), else empty.
    pub image_digest: String,
    /// Where.
    pub mountpoint: PathBuf,
    /// "serving" or "unmounting".
    pub state: &'static str,
    /// When.
    pub mounted_at: SystemTime,
    /// Whether the registry was unreachable and the store's record was used.
    pub offline: bool,
    /// Counters.
    pub stats: MountStats,
}

struct Entry {
    mount: Mount,
    unmounting: bool,
    /// Who asked for the mount (uid): besides root, only they may unmount it.
    owner: u32,
}

/// Filesystem counters of every mount the daemon has served, live and gone (so the node-wide
/// totals only grow).
#[derive(Clone, Debug, Default)]
pub struct FsTotals {
    /// Requests per FUSE operation.
    pub ops: Vec<(&'static str, u64)>,
    /// Reads per latency bucket ([`dfagent_nydusfs::LATENCY_BUCKETS_US`], then the open one).
    pub read_latency: Vec<u64>,
    /// Sum of read latencies, µs.
    pub read_latency_sum_us: u64,
    /// Stored bytes background prefetch verified.
    pub prefetch_bytes: u64,
}

impl FsTotals {
    fn add(&mut self, s: &MountStats) {
        for (op, n) in &s.fs.ops {
            match self.ops.iter_mut().find(|(o, _)| *o == *op) {
                Some((_, total)) => *total += n,
                None => self.ops.push((op, *n)),
            }
        }
        if self.read_latency.len() < s.fs.read_latency.len() {
            self.read_latency.resize(s.fs.read_latency.len(), 0);
        }
        for (t, n) in self.read_latency.iter_mut().zip(&s.fs.read_latency) {
            *t += n;
        }
        self.read_latency_sum_us += s.fs.read_latency_sum_us;
        self.prefetch_bytes += s.prefetch.map(|p| p.done_bytes).unwrap_or(0);
    }
}

/// The node's mounts, served by one process.
pub struct Daemon {
    node: Arc<Node>,
    mounts: Mutex<BTreeMap<PathBuf, Entry>>,
    /// Mount points whose mount is being set up (so two requests cannot race for one).
    pending: Mutex<Vec<PathBuf>>,
    started: Instant,
    defaults: MountOptions,
    /// Counters of mounts that are gone.
    retired: Mutex<FsTotals>,
}

/// Releases a pending mount point however a mount attempt ends.
struct Pending<'a>(&'a Daemon, PathBuf);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        lock(&self.0.pending).retain(|p| p != &self.1);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The absolute, symlink-free form of a mount point (as the kernel and the table name it), also
/// of a stale one.
pub fn canonical_mountpoint(mp: &Path) -> Result<PathBuf> {
    if !mp.is_absolute() {
        return Err(NodeError::Mountpoint {
            path: mp.to_path_buf(),
            detail: "not an absolute path".into(),
        });
    }
    dfagent_nydusfs::canonical_path(mp).map_err(|e| NodeError::Mountpoint {
        path: mp.to_path_buf(),
        detail: e.to_string(),
    })
}

impl Daemon {
    /// A daemon over `node`, mounting with `defaults` where a request leaves options unset.
    pub fn new(node: Arc<Node>, defaults: MountOptions) -> Arc<Self> {
        Arc::new(Self {
            node,
            mounts: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(Vec::new()),
            started: Instant::now(),
            defaults,
            retired: Mutex::new(FsTotals::default()),
        })
    }

    /// The node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Mount options used where a request leaves them unset.
    pub fn defaults(&self) -> &MountOptions {
        &self.defaults
    }

    /// How long the daemon has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Mount `spec` and keep serving it. Fails if the mount point is already served by this
    /// daemon or being mounted.
    pub async fn mount(&self, spec: MountSpec) -> Result<MountInfo> {
        self.mount_as(spec, 0).await
    }

    /// [`Daemon::mount`] on behalf of user `owner`, who may unmount it later.
    pub async fn mount_as(&self, mut spec: MountSpec, owner: u32) -> Result<MountInfo> {
        let mp = canonical_mountpoint(&spec.mountpoint)?;
        spec.mountpoint = mp.clone();
        {
            let mounts = lock(&self.mounts);
            let mut pending = lock(&self.pending);
            if mounts.contains_key(&mp) || pending.contains(&mp) {
                return Err(NodeError::Mountpoint {
                    path: mp,
                    detail: "already served by this daemon".into(),
                });
            }
            pending.push(mp.clone());
        }
        let _pending = Pending(self, mp.clone());
        let mount = self.node.mount(spec).await?;
        // The reply does not count the image's chunks in the store (a lookup per chunk): a
        // mount must not wait for that; `list` does it.
        let info = self.info(&mount, false, false);
        lock(&self.mounts).insert(
            mp,
            Entry {
                mount,
                unmounting: false,
                owner,
            },
        );
        Ok(info)
    }

    /// Unmount the mount at `mp` if this daemon serves it; `Ok(false)` if it does not.
    pub async fn umount(&self, mp: &Path, lazy: bool) -> Result<bool> {
        self.umount_as(mp, lazy, 0).await
    }

    /// [`Daemon::umount`] on behalf of user `uid`: root, or the user who mounted it. Refused
    /// when something else is mounted over the daemon's mount (an unmount by path would remove
    /// that instead).
    pub async fn umount_as(&self, mp: &Path, lazy: bool, uid: u32) -> Result<bool> {
        let mp = canonical_mountpoint(mp).unwrap_or_else(|_| mp.to_path_buf());
        let source = match lock(&self.mounts).get(&mp) {
            None => return Ok(false),
            Some(e) if uid != 0 && e.owner != uid => {
                return Err(NodeError::Mountpoint {
                    path: mp,
                    detail: format!("mounted by uid {}, not by uid {uid}", e.owner),
                })
            }
            Some(e) => e.mount.source().to_string(),
        };
        // Looked at outside the table's lock (it stats the mount point). Nothing mounted there
        // any more (it ended outside) is fine: the entry is released below.
        crate::mount::check_not_covered(&mp, &source)?;
        let entry = {
            let mut mounts = lock(&self.mounts);
            match mounts.remove(&mp) {
                Some(e) => e,
                None => return Ok(false),
            }
        };
        self.retire(&entry.mount);
        let image = entry.mount.spec().image.name();
        let r = tokio::task::spawn_blocking(move || unmount_entry(entry, lazy))
            .await
            .map_err(|e| NodeError::io("unmount task", std::io::Error::other(e.to_string())))?;
        tracing::info!(mountpoint = %mp.display(), image = %image, lazy, "unmounted");
        r.map(|()| true)
    }

    /// The live mounts.
    pub fn list(&self) -> Vec<MountInfo> {
        lock(&self.mounts)
            .values()
            .map(|e| self.info(&e.mount, e.unmounting, true))
            .collect()
    }

    /// How many mounts are live.
    pub fn mount_count(&self) -> usize {
        lock(&self.mounts).len()
    }

    fn info(&self, m: &Mount, unmounting: bool, count_cached: bool) -> MountInfo {
        let image = m.image();
        MountInfo {
            image: m.spec().image.name(),
            image_digest: image.digest().to_string(),
            mountpoint: m.spec().mountpoint.clone(),
            state: if unmounting { "unmounting" } else { "serving" },
            mounted_at: m.mounted_at(),
            offline: image.offline,
            stats: m.stats(self.node.store().filter(|_| count_cached).map(|s| &**s)),
        }
    }

    fn retire(&self, m: &Mount) {
        let stats = m.stats(None);
        lock(&self.retired).add(&stats);
    }

    /// Filesystem counters summed over every mount served, live and gone.
    pub fn fs_totals(&self) -> FsTotals {
        let mut t = lock(&self.retired).clone();
        for e in lock(&self.mounts).values() {
            t.add(&e.mount.stats(None));
        }
        t
    }

    /// Stored bytes background prefetch verified, over every mount served.
    pub fn prefetch_bytes_total(&self) -> u64 {
        self.fs_totals().prefetch_bytes
    }

    /// Mounts serving and unmounting.
    pub fn mount_states(&self) -> (usize, usize) {
        let mounts = lock(&self.mounts);
        let unmounting = mounts.values().filter(|e| e.unmounting).count();
        (mounts.len() - unmounting, unmounting)
    }

    /// Drop mounts whose FUSE session ended without us (unmounted from outside, or failed).
    pub fn reap(&self) {
        let mut mounts = lock(&self.mounts);
        let ended: Vec<PathBuf> = mounts
            .iter_mut()
            .filter_map(|(mp, e)| e.mount.wait_timeout(Duration::ZERO).map(|_| mp.clone()))
            .collect();
        for mp in ended {
            if let Some(e) = mounts.remove(&mp) {
                self.retire(&e.mount);
                tracing::warn!(mountpoint = %mp.display(), image = %e.mount.spec().image.name(), "mount ended outside the daemon; released");
            }
        }
    }

    /// Look for mounts that ended outside the daemon until the daemon goes away.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.node.runtime().spawn(async move {
            let mut tick = tokio::time::interval(REAP_EVERY);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(d) => d.reap(),
                    None => break,
                }
            }
        });
    }

    /// Unmount everything (lazily when an unmount fails, e.g. busy), bounded by `limit`, and
    /// flush the store writer.
    pub async fn shutdown(&self, limit: Duration) {
        let entries: Vec<(PathBuf, Entry)> = std::mem::take(&mut *lock(&self.mounts))
            .into_iter()
            .collect();
        let n = entries.len();
        for (_, e) in &entries {
            self.retire(&e.mount);
        }
        let work = tokio::task::spawn_blocking(move || {
            let mut busy = Vec::new();
            for (mp, entry) in entries {
                // A plain unmount first; a busy mount (a process holds a file open) is detached
                // lazily and not waited for: it goes when its last user lets go.
                match dfagent_nydusfs::unmount(&mp, false) {
                    Ok(()) => tracing::info!(mountpoint = %mp.display(), "unmounted at shutdown"),
                    Err(e) => {
                        tracing::warn!(mountpoint = %mp.display(), error = %e, "mount busy at shutdown; detaching it lazily");
                        if let Err(e) = dfagent_nydusfs::unmount(&mp, true) {
                            tracing::warn!(mountpoint = %mp.display(), error = %e, "could not detach");
                        }
                        busy.push(entry);
                        continue;
                    }
                }
                // The session has ended (or is ending): releasing the mount is quick.
                drop(entry);
            }
            // Sessions of detached busy mounts end only when their users let go: release them
            // on a thread of their own so shutdown does not wait for that.
            if !busy.is_empty() {
                let _ = std::thread::Builder::new()
                    .name("dfagent-detached".into())
                    .spawn(move || drop(busy));
            }
        });
        if tokio::time::timeout(limit, work).await.is_err() {
            tracing::warn!(
                mounts = n,
                "unmounting took longer than {limit:?}; going on"
            );
        }
        if tokio::time::timeout(limit, self.node.flush())
            .await
            .is_err()
        {
            tracing::warn!("the store writer did not finish within {limit:?}");
        }
    }
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("mounts", &self.mount_count())
            .finish_non_exhaustive()
    }
}

fn unmount_entry(entry: Entry, lazy: bool) -> Result<()> {
    let mp = entry.mount.spec().mountpoint.clone();
    if lazy {
        // Detach now; the session ends when the last user lets go, and the mount (its pin,
        // its session thread) is released then, off this caller's path.
        dfagent_nydusfs::unmount(&mp, true)
            .map_err(|e| NodeError::io(format!("detaching {}", mp.display()), e))?;
        std::thread::Builder::new()
            .name("dfagent-lazy-unmount".into())
            .spawn(move || drop(entry))
            .map_err(|e| NodeError::io("starting the lazy unmount thread", e))?;
        return Ok(());
    }
    entry.mount.unmount()
}

/// Keep a long-running daemon's memory close to what it uses:
/// - Large allocations (fetched ranges, chunks of 256 KiB and more, FUSE request buffers) come
///   from their own mappings and go back to the system when freed. glibc would otherwise raise
///   its mmap threshold after the first large free, serve later large buffers from the heap,
///   and keep them resident once freed.
/// - Two malloc arenas instead of glibc's default of 8 per core: with dozens of threads (FUSE
///   sessions, the runtime, RocksDB) each arena holds freed memory of its own. Measured with
///   64 readers (`docs/reliability.md`, finding 3).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; called before the daemon's threads
    // allocate much, and safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Where and to whom a daemon serves.
#[derive(Clone, Debug)]
pub struct DaemonSettings {
    /// The control socket.
    pub socket: PathBuf,
    /// The group (gid) that may use the control socket besides root.
    pub socket_group: Option<u32>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`None`: not at all).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How long shutdown may spend unmounting and flushing.
    pub shutdown_limit: Duration,
    /// containerd's snapshotter, when served.
    pub snapshotter: Option<crate::snapshotter::SnapshotterSettings>,
}

/// Serve `daemon` (control socket, metrics) until `shutdown` completes, then unmount
/// everything and flush. `ready` is called once both listeners are bound, with the metrics
/// address actually bound.
pub async fn serve(
    daemon: Arc<Daemon>,
    settings: DaemonSettings,
    ready: impl FnOnce(Option<std::net::SocketAddr>) + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use crate::control::server::{self, ControlService};
    use crate::metrics::{self, Readiness};

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let readiness = Arc::new(Readiness::default());
    let mut metrics_bound = None;
    let metrics_task = match settings.metrics_addr {
        Some(addr) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(metrics::serve(
                daemon.clone(),
                readiness.clone(),
                addr,
                move |a| {
                    let _ = tx.send(a);
                },
                stopped(stop_rx.clone()),
            ));
            match rx.await {
                Ok(a) => metrics_bound = Some(a),
                Err(_) => {
                    // The server failed before binding: report its error.
                    return match task.await {
                        Ok(Err(e)) => Err(e),
                        _ => Err(NodeError::Unsupported(
                            "the metrics server did not start".into(),
                        )),
                    };
                }
            }
            Some(task)
        }
        None => None,
    };
    daemon.spawn_reaper();
    let snapshotter_task = match &settings.snapshotter {
        Some(s) => {
            let snapshotter = crate::snapshotter::open(&daemon, s)?;
            let listener = crate::snapshotter::bind(&s.socket)?;
            let socket = s.socket.clone();
            let stop = stopped(stop_rx.clone());
            Some(tokio::spawn(async move {
                let r = crate::snapshotter::serve(snapshotter, listener, socket, stop).await;
                if let Err(e) = &r {
                    tracing::error!(error = %e, "the containerd snapshotter stopped");
                }
                r
            }))
        }
        None => None,
    };
    let service = ControlService::new(
        daemon.clone(),
        settings.socket_group,
        settings.socket.clone(),
        metrics_bound.map(|a| a.to_string()).unwrap_or_default(),
    );
    let r2 = readiness.clone();
    let control = server::serve(
        service,
        &settings.socket,
        settings.socket_group,
        move || {
            r2.control_ready();
            ready(metrics_bound);
        },
        stopped(stop_rx.clone()),
    );
    let mut control = std::pin::pin!(control);
    let mut shutdown = std::pin::pin!(shutdown);
    let result = tokio::select! {
        r = &mut control => r,
        () = &mut shutdown => {
            tracing::info!("shutting down: unmounting everything");
            let _ = stop_tx.send(true);
            control.await
        }
    };
    let _ = stop_tx.send(true);
    if let Some(t) = snapshotter_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    daemon.shutdown(settings.shutdown_limit).await;
    daemon.node().stop_peer().await;
    daemon.node().stop_dragonfly();
    if let Some(t) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    tracing::info!("daemon stopped");
    result
}
