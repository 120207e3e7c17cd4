//! Mounts: an opened image served by nydusfs at a mount point, its background prefetch, and
//! the clean-up of all of it (unmount, unpin) however the mount ends.
//!
//! Images are untrusted: a mount is `nosuid`, `nodev` and for its owner only unless asked
//! otherwise ([`MountOptions`]), and a container's root file system (which needs all three) is
//! mounted only under directories no one but root can change. Every mount's source is
//! `dfagent:<image digest>` ([`SOURCE_PREFIX`]); unmounting by path and replacing with `force`
//! touch only mounts that say so.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dfagent_nydusfs::{
    canonical_path, mount_state, unmount, FsConfig, FsMetrics, MountAccess, MountEntry, MountState,
    Mounted, NydusFs,
};
use dfagent_resolver::prefetch::{self, PrefetchPolicy, PrefetchProgress};
use dfagent_resolver::ResolverStats;

use crate::error::{NodeError, Result};
use crate::image::{ImageSource, OpenedImage};
use crate::node::Node;

/// Stored bytes per prefetch batch (one range request per blob region).
pub const PREFETCH_BATCH: u64 = 4 << 20;

/// Start of the source (FUSE `fsname`) of every dfagent mount, `dfagent:<image digest>`: how
/// `umount` and `force` tell dfagent's mounts from anything else mounted at a path.
pub const SOURCE_PREFIX: &str = "dfagent:";

/// Per-mount choices. `Default` is the one definition of every mount's defaults (the
/// configuration's `[mount]` section starts from it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// What is fetched in the background (registry images).
    pub prefetch: PrefetchPolicy,
    /// File data fetched ahead of a sequential reader, in bytes (0: none).
    pub readahead: u64,
    /// Replace a dfagent mount at the mount point (a stale one left by a killed dfagent, or a
    /// live one). Anything else mounted there is never replaced.
    pub force: bool,
    /// Let every user use the mount (FUSE `allow_other`), as the files' modes allow. Off: only
    /// the user who mounted it (root, for the daemon) may. Containers that run as a non-root
    /// user need it.
    pub allow_other: bool,
    /// Honour the image's set-user-id and set-group-id bits (off: `nosuid`).
    pub suid: bool,
    /// Honour the image's device files (off: `nodev`).
    pub dev: bool,
    /// The mount is a container's root file system: `suid`, `dev` and `allow_other`, allowed
    /// only where every directory above the mount point is owned by root and writable by no one
    /// else (so no other user can plant or swap the path).
    pub container_rootfs: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            prefetch: PrefetchPolicy::All,
            readahead: 16 << 20,
            force: false,
            allow_other: false,
            suid: false,
            dev: false,
            container_rootfs: false,
        }
    }
}

impl MountOptions {
    /// The access the mount gets: what was asked, and all of it for a container's root file
    /// system.
    pub fn access(&self) -> MountAccess {
        MountAccess {
            allow_other: self.allow_other || self.container_rootfs,
            suid: self.suid || self.container_rootfs,
            dev: self.dev || self.container_rootfs,
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
    /// The mount's source, `dfagent:<image digest>`.
    source: String,
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

/// Whether `m` is a mount dfagent made: a nydusfs FUSE mount whose source starts with
/// [`SOURCE_PREFIX`].
pub fn is_dfagent_mount(m: &MountEntry) -> bool {
    m.is_nydusfs() && m.source.starts_with(SOURCE_PREFIX)
}

/// A mount as a message names it: `a tmpfs mount of "tmpfs"`.
fn describe(m: &MountEntry) -> String {
    format!("a {} mount of {:?}", m.fs_type, m.source)
}

/// What is mounted at `mp` (topmost), or why that cannot be told.
fn state_of(mp: &Path) -> Result<MountState> {
    mount_state(mp).map_err(|e| NodeError::Mountpoint {
        path: mp.to_path_buf(),
        detail: e.to_string(),
    })
}

fn check_mountpoint(mp: &Path, options: &MountOptions) -> Result<()> {
    let bad = |detail: String| NodeError::Mountpoint {
        path: mp.to_path_buf(),
        detail,
    };
    let force = options.force;
    match state_of(mp)? {
        MountState::NotMounted => {}
        MountState::Live(m) | MountState::Stale(m) if !is_dfagent_mount(&m) => {
            return Err(bad(format!(
                "{} is mounted there, not a dfagent mount; dfagent neither mounts over it nor \
                 replaces it, even when forced",
                describe(&m)
            )))
        }
        MountState::Stale(m) if force => {
            tracing::info!(mountpoint = %mp.display(), source = %m.source, "detaching stale mount");
            unmount(mp, true).map_err(|e| bad(format!("detaching a stale mount: {e}")))?;
        }
        MountState::Stale(_) => {
            return Err(bad(format!(
                "a stale FUSE mount (transport endpoint is not connected), probably left by a \
                 killed dfagent; mount again with --force to replace it, or `dfagent umount {}`",
                mp.display()
            )))
        }
        MountState::Live(m) if force => {
            tracing::info!(mountpoint = %mp.display(), source = %m.source, "replacing a dfagent mount");
            unmount(mp, true).map_err(|e| bad(format!("unmounting what is there: {e}")))?;
        }
        MountState::Live(m) => {
            return Err(bad(format!(
                "a dfagent mount ({}) is already there; unmount it first or pass --force",
                m.source
            )))
        }
    }
    if !mp.is_dir() {
        return Err(bad("not a directory".into()));
    }
    if options.container_rootfs {
        check_root_only_parents(mp)?;
    }
    Ok(())
}

/// A container's root file system is mounted `suid`, `dev` and `allow_other`: only below
/// directories no one but root can change, so no other user can plant the mount point or swap
/// a directory on its path, and behind a directory only root may enter, so no other user can
/// reach its setuid binaries or device nodes by name. Every directory from `/` to the mount
/// point's parent must be owned by root and writable by neither its group nor others, and at
/// least one of them must be closed to its group and others (no `x` bit for them, like
/// containerd's snapshot directories).
fn check_root_only_parents(mp: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let bad = |detail: String| NodeError::Mountpoint {
        path: mp.to_path_buf(),
        detail: format!(
            "a container root file system (suid, dev, allow_other) is mounted only under \
             directories owned by root and writable by no one else: {detail}"
        ),
    };
    let canonical = canonical_path(mp).map_err(|e| bad(e.to_string()))?;
    let mut closed = false;
    // `ancestors` of an absolute path ends at `/`: bounded by the path's depth.
    for dir in canonical.ancestors().skip(1) {
        let meta =
            std::fs::symlink_metadata(dir).map_err(|e| bad(format!("{}: {e}", dir.display())))?;
        if meta.uid() != 0 {
            return Err(bad(format!(
                "{} is owned by uid {}",
                dir.display(),
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(bad(format!(
                "{} is writable by {} (mode {:o})",
                dir.display(),
                if meta.mode() & 0o002 != 0 {
                    "every user"
                } else {
                    "its group"
                },
                meta.mode() & 0o7777
            )));
        }
        closed |= meta.mode() & 0o011 == 0;
    }
    if !closed {
        return Err(bad(format!(
            "no directory above {} is closed to other users (a mode without group and other \
             execute, such as 0700)",
            canonical.display()
        )));
    }
    Ok(())
}

impl Node {
    /// Open `spec.image` and serve it at `spec.mountpoint`; returns once the mount answers.
    /// Registry images start their background prefetch.
    pub async fn mount(self: &Arc<Self>, spec: MountSpec) -> Result<Mount> {
        check_mountpoint(&spec.mountpoint, &spec.options)?;
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
        let source = format!("{SOURCE_PREFIX}{}", opened.content_digest);
        let access = spec.options.access();
        // On failure `opened` drops here, releasing its pin.
        let mounted = dfagent_nydusfs::mount_with(fs, &spec.mountpoint, &source, access)
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
            source = %source,
            offline = opened.offline,
            allow_other = access.allow_other,
            suid = access.suid,
            dev = access.dev,
            "mounted"
        );
        Ok(Mount {
            spec,
            mounted,
            opened,
            source,
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

    /// The mount's source in mountinfo, `dfagent:<image digest>`.
    pub fn source(&self) -> &str {
        &self.source
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

/// Unmount the dfagent mount at `mp` (a stale one always lazily). Anything else mounted there
/// (not a nydusfs mount with a `dfagent:` source) is left alone, and the error names it.
pub fn unmount_path(mp: &Path, lazy: bool) -> Result<()> {
    match state_of(mp)? {
        MountState::NotMounted => Err(NodeError::Mountpoint {
            path: mp.to_path_buf(),
            detail: "nothing is mounted there".into(),
        }),
        MountState::Live(m) | MountState::Stale(m) if !is_dfagent_mount(&m) => {
            Err(NodeError::Mountpoint {
                path: mp.to_path_buf(),
                detail: format!(
                    "{} is mounted there, not a dfagent mount; dfagent does not unmount it",
                    describe(&m)
                ),
            })
        }
        MountState::Stale(_) => unmount(mp, true)
            .map_err(|e| NodeError::io(format!("detaching the stale mount {}", mp.display()), e)),
        MountState::Live(_) => unmount(mp, lazy).map_err(|e| {
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

/// Before the daemon unmounts its mount at `mp` by path: refused when something else is mounted
/// over it (the unmount would remove that instead). Nothing mounted there any more (the mount
/// ended outside) is fine.
pub(crate) fn check_not_covered(mp: &Path, source: &str) -> Result<()> {
    match state_of(mp)? {
        MountState::NotMounted => Ok(()),
        MountState::Live(m) | MountState::Stale(m)
            if is_dfagent_mount(&m) && m.source == source =>
        {
            Ok(())
        }
        MountState::Live(m) | MountState::Stale(m) => Err(NodeError::Mountpoint {
            path: mp.to_path_buf(),
            detail: format!(
                "{} is mounted over this daemon's mount; dfagent does not unmount it",
                describe(&m)
            ),
        }),
    }
}
