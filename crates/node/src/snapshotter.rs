//! The daemon's containerd snapshotter: [`dfagent_containerd::Snapshotter`] with this node's
//! mounts as its image mounts, served on its own root-only unix socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use dfagent_containerd::{
    pull, PullOptions, PullReport, DEFAULT_NAMESPACE, DEFAULT_SNAPSHOTTER,
};
use dfagent_containerd::{ImageMounts, SnapshotService, Snapshotter};
use futures::future::BoxFuture;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::daemon::Daemon;
use crate::error::{NodeError, Result};
use crate::image::ImageSource;
use crate::mount::{MountOptions, MountSpec};

/// Where the snapshotter listens and keeps its snapshots.
#[derive(Clone, Debug)]
pub struct SnapshotterSettings {
    /// The socket (root only) containerd's `proxy_plugins` entry names.
    pub socket: PathBuf,
    /// Snapshots, container upper dirs and image mounts.
    pub root: PathBuf,
}

/// Image mounts made by the daemon: container root file systems (suid, dev, every user), a
/// stale mount of ours at the path (a killed daemon's) replaced.
struct DaemonMounts(Arc<Daemon>);

impl ImageMounts for DaemonMounts {
    fn mount<'a>(
        &'a self,
        image: &'a str,
        dir: &'a Path,
    ) -> BoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(async move {
            let spec = MountSpec {
                image: ImageSource::Registry(image.to_string()),
                mountpoint: dir.to_path_buf(),
                options: MountOptions {
                    force: true,
                    container_rootfs: true,
                    ..self.0.defaults().clone()
                },
            };
            self.0
                .mount(spec)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn unmount<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(async move {
            match self.0.umount(dir, true).await {
                Ok(true) => Ok(()),
                // Not ours (any more): a stale mount a killed daemon left is removed; anything
                // else mounted there is left alone.
                Ok(false) => match crate::mount::unmount_path(dir, true) {
                    Ok(()) => Ok(()),
                    Err(NodeError::Mountpoint { detail, .. })
                        if detail.contains("nothing is mounted") =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// Open the snapshotter of `daemon` at `settings.root`.
pub fn open(daemon: &Arc<Daemon>, settings: &SnapshotterSettings) -> Result<Arc<Snapshotter>> {
    Ok(Snapshotter::open(
        &settings.root,
        Arc::new(DaemonMounts(Arc::clone(daemon))),
    )?)
}

/// Bind the snapshotter's socket (root only), replacing a stale one.
pub fn bind(socket: &Path) -> Result<UnixListener> {
    crate::control::access::bind_socket(socket, None, "snapshotter")
}

/// Serve `snapshotter` on `listener` (bound at `socket`) until `stopped` completes. Images
/// that containers stand on are mounted again in the background (after a restart).
pub async fn serve(
    snapshotter: Arc<Snapshotter>,
    listener: UnixListener,
    socket: PathBuf,
    stopped: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    tracing::info!(socket = %socket.display(), root = %snapshotter.root().display(),
        "containerd snapshotter listening");
    let again = Arc::clone(&snapshotter);
    tokio::spawn(async move { again.remount().await });
    let r = tonic::transport::Server::builder()
        .add_service(SnapshotService::new(snapshotter).server())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped)
        .await;
    let _ = std::fs::remove_file(&socket);
    r.map_err(|e| NodeError::io("snapshotter server", std::io::Error::other(e.to_string())))
}
