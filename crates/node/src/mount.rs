//! Mounts: an opened image served by nydusfs at a mount point, its background prefetch, and
//! the clean-up of all of it (unmount, unpin) however the mount ends.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dfagent_nydusfs::{mount_state, unmount, FsConfig, FsMetrics, MountState, Mounted, NydusFs};
use dfagent_resolver::prefetch::{self, PrefetchPolicy, PrefetchProgress};
use dfagent_resolver::ResolverStats;

use crate::error::{NodeError, Result};
use crate::image::{ImageSource, OpenedImage};
use crate::node::Node;

/// Stored bytes per prefetch batch (one range request per blob region).
pub const PREFETCH_BATCH: u64 = 4 << 20;

/// Per-mount choices.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// What is fetched in the background (registry images).
    pub prefetch: PrefetchPolicy,
    /// File data fetched ahead of a sequential reader, in bytes (0: none).
    pub readahead: u64,
    /// Replace whatever is mounted at the mount point (a stale mount left by a killed dfagent).
    pub force: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            prefetch: PrefetchPolicy::All,
            readahead: 16 << 20,
            force: false,
        }
    }
}

/// What to mount where.
#[derive(Clone, Debug)]
pub struct MountSpec {
    /// The image.
    pub image: ImageSource,
    /// Where.
    pub mountpoint: PathBuf,
    /// How.
    pub options: MountOptions,
}

/// A live mount. Dropping it unmounts and releases the image's pin.
pub struct Mount {
    spec: MountSpec,
    // Field order is drop order: the FUSE session ends before the image (and its pin) goes.
    mounted: Mounted,
    opened: OpenedImage,
    fs_metrics: Arc<FsMetrics>,
    prefetch: Option<Arc<PrefetchProgress>>,
    _prefetch_task: Option<AbortOnDrop>,
    mounted_at: SystemTime,
}

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where a mount's background prefetch stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// Chunks verified so far, and planned.
    pub done_chunks: u64,
    /// Chunks planned.
    pub total_chunks: u64,
    /// Chunks no tier could supply.
    pub failed_chunks: u64,
    /// Stored bytes verified so far.
    pub done_bytes: u64,
    /// Stored bytes planned.
    pub total_bytes: u64,
    /// Whether it ended (done, or stopped).
    pub finished: bool,
}

/// Counters of one mount.
#[derive(Clone, Debug)]
pub struct MountStats {
    /// The resolver chain's counters (per tier: what this mount fetched).
    pub resolver: ResolverStats,
    /// The filesystem's counters.
    pub fs: dfagent_nydusfs::FsStats,
    /// Chunks of the image, and how many the store holds now.
    pub chunks_total: u64,
    /// Chunks of the image held in the store now (0 without a store).
    pub chunks_cached: u64,
    /// Background prefetch, when one runs.
    pub prefetch: Option<PrefetchStats>,
}

fn check_mountpoint(mp: &Path, force: bool) -> Result<()> {
    let bad = |detail: String| NodeError::Mountpoint {
        path: mp.to_path_buf(),
        detail,
    };
    match mount_state(mp) {
        Ok(MountState::NotMounted) => {}
        Ok(MountState::Stale) if force => {
            tracing::info!(mountpoint = %mp.display(), "detaching stale mount");
            unmount(mp, true).map_err(|e| bad(format!("detaching a stale mount: {e}")))?;
        }
        Ok(MountState::Stale) => {
            return Err(bad(format!(
                "a stale FUSE mount (transport endpoint is not connected), probably left by a \
                 killed dfagent; mount again with --force to replace it, or `dfagent umount {}`",
                mp.display()
            )))
        }
        Ok(MountState::Live) if force => {
            unmount(mp, true).map_err(|e| bad(format!("unmounting what is there: {e}")))?;
        }
        Ok(MountState::Live) => {
            return Err(bad(
                "something is already mounted there; unmount it first or pass --force".into(),
            ))
        }
        Err(e) => return Err(bad(e.to_string())),
    }
    if !mp.is_dir() {
        return Err(bad("not a directory".into()));
    }
    Ok(())
}

impl Node {
    /// Open `spec.image` and serve it at `spec.mountpoint`; returns once the mount answers.
    /// Registry images start their background prefetch.
    pub async fn mount(self: &Arc<Self>, spec: MountSpec) -> Result<Mount> {
        check_mountpoint(&spec.mountpoint, spec.options.force)?;
        let opened = self.open_image(&spec.image).await?;
        let fs = NydusFs::new(
            opened.image.clone(),
            opened.resolver.clone(),
            self.runtime().clone(),
            FsConfig {
                readahead: spec.options.readahead,
                ..FsConfig::default()
            },
        );
        let fs_metrics = fs.metrics();
        let fsname = format!("dfagent:{}", spec.image.name());
        // On failure `opened` drops here, releasing its pin.
        let mounted = dfagent_nydusfs::mount(fs, &spec.mountpoint, &fsname)
            .map_err(|e| NodeError::io(format!("mounting at {}", spec.mountpoint.display()), e))?;
        let (prefetch, prefetch_task) = match (&spec.image, spec.options.prefetch) {
            (ImageSource::Registry(_), policy) if policy != PrefetchPolicy::None => {
                let (p, t) = self.start_prefetch(&opened, policy);
                (Some(p), Some(t))
            }
            _ => (None, None),
        };
        tracing::info!(
            image = %spec.image.name(),
            mountpoint = %spec.mountpoint.display(),
            offline = opened.offline,
            "mounted"
        );
        Ok(Mount {
            spec,
            mounted,
            opened,
            fs_metrics,
            prefetch,
            _prefetch_task: prefetch_task.map(AbortOnDrop),
            mounted_at: SystemTime::now(),
        })
    }

    /// Start the background prefetch of `policy` for an opened image. It stops (saying so
    /// once) when going on would evict the image's own chunks.
    fn start_prefetch(
        self: &Arc<Self>,
        opened: &OpenedImage,
        policy: PrefetchPolicy,
    ) -> (Arc<PrefetchProgress>, tokio::task::JoinHandle<()>) {
        let progress = Arc::new(PrefetchProgress::default());
        let chunks = prefetch::plan(&opened.image, policy);
        let (resolver, store, p) = (
            opened.resolver.clone(),
            self.store().cloned(),
            progress.clone(),
        );
        let held = store.clone();
        let task = self.runtime().spawn(async move {
            let present = move |c: &dfagent_core::ChunkRef| {
                held.as_ref().is_some_and(|s| s.contains(&c.digest))
            };
            prefetch::run(resolver, chunks, PREFETCH_BATCH, p, present, move |bytes| {
                let Some(store) = &store else { return Ok(()) };
                let st = store.stats();
                if st.pinned_bytes + bytes > st.capacity {
                    Err(format!(
                        "the store's capacity ({} bytes) would force evicting chunks of the image being filled",
                        st.capacity
                    ))
                } else {
                    Ok(())
                }
            })
            .await;
        });
        (progress, task)
    }
}

impl Mount {
    /// What was mounted where, and how.
    pub fn spec(&self) -> &MountSpec {
        &self.spec
    }

    /// The opened image.
    pub fn image(&self) -> &OpenedImage {
        &self.opened
    }

    /// When the mount was made.
    pub fn mounted_at(&self) -> SystemTime {
        self.mounted_at
    }

    /// Wait up to `timeout` for the FUSE session to end (someone unmounted it, or it failed).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::io::Result<()>> {
        self.mounted.wait_timeout(timeout)
    }

    /// Counters of this mount (`store`: count the image's chunks held there too).
    pub fn stats(&self, store: Option<&dfagent_store::Store>) -> MountStats {
        let digests = &self.opened.digests;
        let cached = store
            .map(|s| digests.iter().filter(|d| s.contains(d)).count() as u64)
            .unwrap_or(0);
        MountStats {
            resolver: self.opened.resolver.metrics().snapshot(),
            fs: self.fs_metrics.snapshot(),
            chunks_total: digests.len() as u64,
            chunks_cached: cached,
            prefetch: self.prefetch.as_ref().map(|p| PrefetchStats {
                done_chunks: p.done.load(Ordering::Relaxed),
                total_chunks: p.total.load(Ordering::Relaxed),
                failed_chunks: p.failed.load(Ordering::Relaxed),
                done_bytes: p.done_bytes.load(Ordering::Relaxed),
                total_bytes: p.total_bytes.load(Ordering::Relaxed),
                finished: p.finished.load(Ordering::Relaxed),
            }),
        }
    }

    /// Unmount (and wait, bounded, for the session to end); the image's pin is released.
    pub fn unmount(self) -> Result<()> {
        let path = self.spec.mountpoint.clone();
        let mounted = self.mounted;
        mounted
            .unmount()
            .map_err(|e| NodeError::io(format!("unmounting {}", path.display()), e))
    }
}

/// Unmount whatever dfagent mount is at `mp` (a stale one always lazily).
pub fn unmount_path(mp: &Path, lazy: bool) -> Result<()> {
    let state = mount_state(mp).map_err(|e| NodeError::Mountpoint {
        path: mp.to_path_buf(),
        detail: e.to_string(),
    })?;
    match state {
        MountState::NotMounted => Err(NodeError::Mountpoint {
            path: mp.to_path_buf(),
            detail: "nothing is mounted there".into(),
        }),
        MountState::Stale => unmount(mp, true)
            .map_err(|e| NodeError::io(format!("detaching the stale mount {}", mp.display()), e)),
        MountState::Live => unmount(mp, lazy).map_err(|e| {
            NodeError::io(
                format!(
                    "unmounting {} (if it is busy, retry with --lazy)",
                    mp.display()
                ),
                e,
            )
        }),
    }
}
