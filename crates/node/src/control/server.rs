//! The control API server: gRPC (tonic) over the daemon's unix socket. Every call checks the
//! caller first; requests are bounded in size; every failure is a typed status with a message
//! that names what went wrong (and never a secret).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use dfagent_resolver::prefetch::PrefetchPolicy;
use futures::Stream;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use super::access::{admitted, Caller};
use super::proto;
use super::proto::control_server::{Control, ControlServer};
use super::replies;
use crate::daemon::{Daemon, MountInfo};
use crate::error::{NodeError, Result};
use crate::image::ImageSource;
use crate::mount::{MountOptions, MountSpec};
use dfagent_control::requests;

pub use dfagent_control::MAX_REQUEST_BYTES;

/// The control service over a daemon.
pub struct ControlService {
    daemon: Arc<Daemon>,
    group: Option<u32>,
    socket: PathBuf,
    metrics_addr: String,
}

impl ControlService {
    /// Serving `daemon`; `group` may use it besides root.
    pub fn new(
        daemon: Arc<Daemon>,
        group: Option<u32>,
        socket: PathBuf,
        metrics_addr: String,
    ) -> Self {
        Self {
            daemon,
            group,
            socket,
            metrics_addr,
        }
    }

    /// The caller, if admitted.
    fn caller<T>(&self, req: &Request<T>) -> std::result::Result<Caller, Status> {
        let cred = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .ok_or_else(|| Status::permission_denied("the caller's credentials are unknown"))?;
        let caller = Caller {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        };
        if admitted(&caller, self.group) {
            Ok(caller)
        } else {
            tracing::warn!(uid = caller.uid, gid = caller.gid, pid = ?caller.pid, "control call refused");
            Err(Status::permission_denied(format!(
                "uid {} is not root{}",
                caller.uid,
                match self.group {
                    Some(g) => format!(" and not in group {g}"),
                    None => " (the control socket admits root only)".into(),
                }
            )))
        }
    }
}

/// The gRPC status a node error becomes.
pub fn status_of(e: &NodeError) -> Status {
    use dfagent_registry::RegistryError as R;
    let msg = e.to_string();
    match e {
        NodeError::Mountpoint { .. } => Status::failed_precondition(msg),
        NodeError::Resolve { .. } => Status::unavailable(msg),
        NodeError::Registry(r) => match r {
            R::NotFound { .. } | R::NotNydus { .. } => Status::not_found(msg),
            R::Auth { .. } => Status::permission_denied(msg),
            R::Reference { .. } | R::InvalidRequest(_) => Status::invalid_argument(msg),
            _ => Status::unavailable(msg),
        },
        NodeError::BadImage { .. } | NodeError::Rafs(_) => Status::invalid_argument(msg),
        NodeError::Unsupported(_) | NodeError::Peer(_) => Status::failed_precondition(msg),
        NodeError::Store(_) | NodeError::Io { .. } => Status::internal(msg),
        NodeError::Dragonfly(d) if d.is_permanent() => Status::failed_precondition(msg),
        NodeError::Dragonfly(_) => Status::unavailable(msg),
        NodeError::Timeout { .. } => Status::deadline_exceeded(msg),
        NodeError::Snapshotter(s) => Status::new(s.code(), msg),
    }
}

fn invalid(e: requests::Invalid) -> Status {
    Status::invalid_argument(e.0)
}

/// A group member may only mount on a directory it owns (root may mount anywhere).
fn check_mountpoint_owner(caller: &Caller, mp: &Path) -> std::result::Result<(), Status> {
    use std::os::unix::fs::MetadataExt;
    if caller.is_root() {
        return Ok(());
    }
    let meta = std::fs::metadata(mp)
        .map_err(|e| Status::failed_precondition(format!("mount point {}: {e}", mp.display())))?;
    if meta.uid() != caller.uid {
        return Err(Status::permission_denied(format!(
            "mount point {} is not owned by uid {}",
            mp.display(),
            caller.uid
        )));
    }
    Ok(())
}

/// The request's choices over the daemon's defaults, as `caller` may have them. Only root may
/// ask for set-user-id bits, device files or a container's root file system (an image's
/// setuid-root binary would make a socket-group member root); the configured `suid` and `dev`
/// defaults apply to root's mounts only. `allow_other` is anyone's to ask: the mount stays
/// `nosuid` and `nodev`, and a member's mount is the daemon's (root's), which the member could
/// not read otherwise.
fn options(
    c: requests::MountChoices,
    defaults: &MountOptions,
    caller: &Caller,
) -> std::result::Result<MountOptions, Status> {
    let root = caller.is_root();
    if !root {
        let asked: Vec<&str> = [
            (c.suid, "suid"),
            (c.dev, "dev"),
            (c.container_rootfs, "container_rootfs"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        if !asked.is_empty() {
            return Err(Status::permission_denied(format!(
                "uid {}: {} is for root only (an image's set-user-id binaries and device files \
                 would give its users root's power)",
                caller.uid,
                asked.join(", ")
            )));
        }
    }
    Ok(MountOptions {
        prefetch: match c.prefetch {
            None => defaults.prefetch,
            Some(requests::Prefetch::None) => PrefetchPolicy::None,
            Some(requests::Prefetch::Table) => PrefetchPolicy::Table,
            Some(requests::Prefetch::All) => PrefetchPolicy::All,
        },
        readahead: c
            .readahead_mib
            .map(|m| u64::from(m) << 20)
            .unwrap_or(defaults.readahead),
        force: c.force,
        allow_other: c.allow_other || defaults.allow_other,
        suid: c.suid || (root && defaults.suid),
        dev: c.dev || (root && defaults.dev),
        container_rootfs: c.container_rootfs,
    })
}

fn mount_info(m: &MountInfo) -> proto::MountInfo {
    let s = &m.stats;
    let p = s.prefetch.unwrap_or_default();
    proto::MountInfo {
        image: m.image.clone(),
        image_digest: m.image_digest.clone(),
        mountpoint: m.mountpoint.display().to_string(),
        state: m.state.to_string(),
        fetched: s
            .resolver
            .tiers
            .iter()
            .map(|t| proto::TierBytes {
                tier: t.name.clone(),
                bytes: t.bytes,
                chunks: t.chunks,
            })
            .collect(),
        chunks_cached: s.chunks_cached,
        chunks_total: s.chunks_total,
        prefetch_done_bytes: p.done_bytes,
        prefetch_total_bytes: p.total_bytes,
        prefetch_state: match s.prefetch {
            None => "off".into(),
            Some(p) if p.finished && p.failed_chunks > 0 => {
                format!("done ({} chunks failed)", p.failed_chunks)
            }
            Some(p) if p.finished => "done".into(),
            Some(_) => "running".into(),
        },
        mounted_at: m
            .mounted_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        offline: m.offline,
    }
}

type PullStream =
    Pin<Box<dyn Stream<Item = std::result::Result<proto::PullProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Control for ControlService {
    async fn mount(
        &self,
        req: Request<proto::MountRequest>,
    ) -> std::result::Result<Response<proto::MountReply>, Status> {
        let caller = self.caller(&req)?;
        let m = requests::mount(req.get_ref()).map_err(invalid)?;
        let image = match m.image {
            requests::Image::Registry(r) => ImageSource::Registry(r),
            requests::Image::Local {
                bootstrap,
                blob_dir,
            } => {
                if !caller.is_root() {
                    return Err(Status::permission_denied(format!(
                        "uid {}: mounting a local bootstrap and blob directory is for root only \
                         (the daemon would read paths with its own rights)",
                        caller.uid
                    )));
                }
                ImageSource::Local {
                    bootstrap,
                    blob_dir,
                }
            }
        };
        let mp = m.mountpoint;
        check_mountpoint_owner(&caller, &mp)?;
        let spec = MountSpec {
            image,
            mountpoint: mp.clone(),
            options: options(m.choices, self.daemon.defaults(), &caller)?,
        };
        let name = spec.image.name();
        match self.daemon.mount_as(spec, caller.uid).await {
            Ok(info) => {
                tracing::info!(uid = caller.uid, image = %name, mountpoint = %mp.display(), "mount served");
                Ok(Response::new(proto::MountReply {
                    mount: Some(mount_info(&info)),
                }))
            }
            Err(e) => {
                tracing::warn!(uid = caller.uid, image = %name, mountpoint = %mp.display(), error = %e, "mount refused");
                Err(status_of(&e))
            }
        }
    }

    async fn umount(
        &self,
        req: Request<proto::UmountRequest>,
    ) -> std::result::Result<Response<proto::UmountReply>, Status> {
        let caller = self.caller(&req)?;
        let (mp, lazy) = requests::umount(req.get_ref()).map_err(invalid)?;
        match self.daemon.umount_as(&mp, lazy, caller.uid).await {
            Ok(true) => Ok(Response::new(proto::UmountReply {})),
            Ok(false) => Err(Status::not_found(format!(
                "{} is not a mount of this daemon",
                mp.display()
            ))),
            Err(e @ NodeError::Mountpoint { .. }) if !caller.is_root() => {
                Err(Status::permission_denied(e.to_string()))
            }
            Err(e) => Err(status_of(&e)),
        }
    }

    async fn list_mounts(
        &self,
        req: Request<proto::ListMountsRequest>,
    ) -> std::result::Result<Response<proto::ListMountsReply>, Status> {
        self.caller(&req)?;
        let daemon = self.daemon.clone();
        let mounts = tokio::task::spawn_blocking(move || daemon.list())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::ListMountsReply {
            mounts: mounts.iter().map(mount_info).collect(),
        }))
    }

    type PullStream = PullStream;

    async fn pull(
        &self,
        req: Request<proto::PullRequest>,
    ) -> std::result::Result<Response<Self::PullStream>, Status> {
        let caller = self.caller(&req)?;
        let reference = requests::pull(req.get_ref()).map_err(invalid)?.to_string();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let node = self.daemon.node().clone();
        tracing::info!(uid = caller.uid, reference = %reference, "pull started");
        self.daemon.node().runtime().spawn(async move {
            let progress_tx = tx.clone();
            let result = node
                .pull(&reference, |p| {
                    // A client that went away does not stop the pull.
                    let _ = progress_tx.try_send(Ok(progress(p, false, "")));
                })
                .await;
            let last = match result {
                Ok(report) => {
                    tracing::info!(reference = %reference, chunks = report.progress.done_chunks, failed = report.progress.failed_chunks, "pull finished");
                    Ok(progress(&report.progress, true, &report.digest))
                }
                Err(e) => {
                    tracing::warn!(reference = %reference, error = %e, "pull failed");
                    Err(status_of(&e))
                }
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cache_stat(
        &self,
        req: Request<proto::CacheStatRequest>,
    ) -> std::result::Result<Response<proto::CacheStatReply>, Status> {
        self.caller(&req)?;
        let store = self.store()?;
        let reply = replies::cache_stat(store).map_err(|e| status_of(&NodeError::Store(e)))?;
        Ok(Response::new(reply))
    }

    async fn cache_gc(
        &self,
        req: Request<proto::CacheGcRequest>,
    ) -> std::result::Result<Response<proto::CacheGcReply>, Status> {
        let caller = self.caller(&req)?;
        let store = self.store()?.clone();
        let r = tokio::task::spawn_blocking(move || store.gc())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| status_of(&NodeError::Store(e)))?;
        tracing::info!(
            uid = caller.uid,
            chunks = r.chunks,
            bytes = r.bytes,
            "cache gc"
        );
        Ok(Response::new(proto::CacheGcReply {
            removed_chunks: r.chunks,
            removed_bytes: r.bytes,
        }))
    }

    async fn cache_verify(
        &self,
        req: Request<proto::CacheVerifyRequest>,
    ) -> std::result::Result<Response<proto::CacheVerifyReply>, Status> {
        self.caller(&req)?;
        let store = self.store()?.clone();
        let r = tokio::task::spawn_blocking(move || store.verify())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| status_of(&NodeError::Store(e)))?;
        for (d, _) in &r.removed {
            self.daemon.node().resolver_core().forget(d);
        }
        Ok(Response::new(replies::cache_verify(&r)))
    }

    async fn cache_clear(
        &self,
        req: Request<proto::CacheClearRequest>,
    ) -> std::result::Result<Response<proto::CacheClearReply>, Status> {
        let caller = self.caller(&req)?;
        if self.daemon.mount_count() > 0 {
            return Err(Status::failed_precondition(format!(
                "{} images are mounted; unmount them before clearing the store",
                self.daemon.mount_count()
            )));
        }
        let store = self.store()?.clone();
        let chunks = store.stats().chunks;
        tokio::task::spawn_blocking(move || store.clear())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| status_of(&NodeError::Store(e)))?;
        self.daemon.node().resolver_core().clear_cache();
        tracing::info!(uid = caller.uid, chunks, "cache cleared");
        Ok(Response::new(proto::CacheClearReply {
            removed_chunks: chunks,
        }))
    }

    async fn status(
        &self,
        req: Request<proto::StatusRequest>,
    ) -> std::result::Result<Response<proto::StatusReply>, Status> {
        self.caller(&req)?;
        Ok(Response::new(proto::StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.daemon.uptime().as_secs(),
            pid: std::process::id(),
            store_path: self
                .daemon
                .node()
                .store()
                .map(|s| s.path().display().to_string())
                .unwrap_or_default(),
            mounts: self.daemon.mount_count() as u32,
            metrics_addr: self.metrics_addr.clone(),
            socket: self.socket.display().to_string(),
        }))
    }

    async fn peers(
        &self,
        req: Request<proto::PeersRequest>,
    ) -> std::result::Result<Response<proto::PeersReply>, Status> {
        self.caller(&req)?;
        let reply = match self.daemon.node().peer() {
            Some(peer) => replies::peers(&peer.status()),
            None => proto::PeersReply::default(),
        };
        Ok(Response::new(reply))
    }
}

impl ControlService {
    fn store(&self) -> std::result::Result<&Arc<dfagent_store::Store>, Status> {
        self.daemon
            .node()
            .require_store()
            .map_err(|e| status_of(&e))
    }
}

fn progress(p: &crate::pull::PullProgress, finished: bool, digest: &str) -> proto::PullProgress {
    proto::PullProgress {
        done_bytes: p.done_bytes,
        total_bytes: p.total_bytes,
        done_chunks: p.done_chunks,
        total_chunks: p.total_chunks,
        finished,
        image_digest: digest.to_string(),
        failed_chunks: p.failed_chunks,
    }
}

/// Bind the control socket at `path` (replacing a stale socket file, refusing if another
/// daemon answers there), secure it, and serve until `shutdown` completes.
pub async fn serve(
    service: ControlService,
    path: &Path,
    group: Option<u32>,
    ready: impl FnOnce(),
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let listener = super::access::bind_socket(path, group, "daemon")?;
    tracing::info!(socket = %path.display(), group = ?group, "control API listening");
    ready();
    let server = ControlServer::new(service)
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(16 << 20);
    let r = tonic::transport::Server::builder()
        .add_service(server)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(path);
    r.map_err(|e| NodeError::io("control API server", std::io::Error::other(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32) -> Caller {
        Caller {
            uid,
            gid: uid,
            pid: None,
        }
    }

    #[test]
    fn setuid_bits_device_files_and_rootfs_are_roots_only() {
        let member = caller(1000);
        for (c, name) in [
            (
                requests::MountChoices {
                    suid: true,
                    ..Default::default()
                },
                "suid",
            ),
            (
                requests::MountChoices {
                    dev: true,
                    ..Default::default()
                },
                "dev",
            ),
            (
                requests::MountChoices {
                    container_rootfs: true,
                    ..Default::default()
                },
                "container_rootfs",
            ),
        ] {
            let e = options(c.clone(), &MountOptions::default(), &member).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
            assert!(e.message().contains(name) && e.message().contains("root only"));
            let o = options(c, &MountOptions::default(), &caller(0)).unwrap();
            assert!(o.access().suid || o.access().dev);
        }
        // Configured defaults: allow_other for everyone, suid and dev for root only.
        let defaults = MountOptions {
            allow_other: true,
            suid: true,
            dev: true,
            ..MountOptions::default()
        };
        let m = options(requests::MountChoices::default(), &defaults, &member).unwrap();
        assert!(m.allow_other && !m.suid && !m.dev);
        let r = options(requests::MountChoices::default(), &defaults, &caller(0)).unwrap();
        assert!(r.allow_other && r.suid && r.dev);
        // Nothing asked, nothing configured: owner only, nosuid, nodev.
        let o = options(
            requests::MountChoices::default(),
            &MountOptions::default(),
            &caller(0),
        )
        .unwrap();
        assert_eq!(o.access(), dfagent_nydusfs::MountAccess::default());
        let a = options(
            requests::MountChoices {
                allow_other: true,
                ..Default::default()
            },
            &MountOptions::default(),
            &member,
        )
        .unwrap();
        assert!(a.allow_other && !a.suid && !a.dev);
    }
}
