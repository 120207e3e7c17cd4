//! The snapshotter: containerd's snapshot semantics over directories on local disk, with Nydus
//! layers served from one lazy image mount per image.
//!
//! - An ordinary layer is a directory `snapshots/<id>/fs` that containerd unpacks into, exactly as
//!   containerd's overlayfs snapshotter: an active snapshot is an overlay (upper and work dirs of
//!   its own, its parents' directories as lower dirs), a view is a read-only bind or overlay.
//! - A Nydus layer (labelled `containerd.io/snapshot/nydus-blob` or `nydus-bootstrap` by the
//!   image's manifest, with the image reference and manifest digest that containerd's CRI plugin
//!   and `dfagent containerd pull` add) is committed at once, with no directory, and the prepare
//!   answers `AlreadyExists`, so containerd downloads nothing. A snapshot whose parent chain
//!   reaches a Nydus bootstrap layer gets the image's mount (`mounts/<hash>`, made through
//!   [`ImageMounts`]) as its lower dir; the mount is shared by every container of the image and
//!   goes when the image's bootstrap layer is removed.
//!
//! The table of snapshots is persisted on every change ([`crate::meta`]); directories are made
//! before a snapshot is recorded and removed after it is forgotten, so a crash leaves at worst an
//! orphan directory, which [`Snapshotter::cleanup`] removes. It must not know how an image is
//! mounted (FUSE, the store, the registry): that is the [`ImageMounts`] the node hands it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::error::{Result, SnapshotterError};
use crate::filter::{Fields, Filters};
use crate::labels;
use crate::meta::{now, Kind, Remote, Snapshot, Table};

/// Longest snapshot key or name accepted.
pub const MAX_KEY_LEN: usize = 4096;
/// Most labels on one snapshot, and the longest label key plus value (containerd's own limit is
/// 4096 bytes per label).
pub const MAX_LABELS: usize = 256;
const MAX_LABEL_LEN: usize = 4096;
/// Most files counted by one usage walk.
const MAX_USAGE_ENTRIES: u64 = 50_000_000;

/// How the node mounts an image for the snapshotter.
pub trait ImageMounts: Send + Sync + 'static {
    /// Mount `image` (`host/repository@manifest-digest`) at the existing directory `dir` as a
    /// container's lower dir (suid, dev, every user), replacing a stale mount of ours left
    /// there by a killed daemon; return once it serves.
    fn mount<'a>(
        &'a self,
        image: &'a str,
        dir: &'a Path,
    ) -> BoxFuture<'a, std::result::Result<(), String>>;
    /// Unmount what [`ImageMounts::mount`] put at `dir` (lazily if busy); fine if nothing is.
    fn unmount<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, std::result::Result<(), String>>;
}

/// A snapshot as containerd sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// Name (committed) or key (active, view).
    pub name: String,
    /// Parent's name, or empty.
    pub parent: String,
    /// Kind.
    pub kind: Kind,
    /// Created, nanoseconds since the epoch.
    pub created: i64,
    /// Updated, nanoseconds since the epoch.
    pub updated: i64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl Fields for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match (path.first().map(String::as_str), path.len()) {
            (Some("name"), 1) => Some(self.name.clone()),
            (Some("parent"), 1) => Some(self.parent.clone()),
            (Some("kind"), 1) => Some(self.kind.as_str().to_string()),
            (Some("labels"), n) if n > 1 => self.labels.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}

/// A mount as containerd's `Mount` message has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    /// `bind` or `overlay`.
    pub kind: String,
    /// Source.
    pub source: String,
    /// Options.
    pub options: Vec<String>,
}

/// The lower dirs a snapshot needs, before image mounts are made.
#[derive(Debug)]
struct Plan {
    kind: Kind,
    fs: PathBuf,
    work: PathBuf,
    lowers: Vec<Lower>,
}

#[derive(Debug)]
enum Lower {
    Dir(PathBuf),
    Image { image: String, dir: PathBuf },
}

/// The snapshotter of one node.
pub struct Snapshotter {
    root: PathBuf,
    table: Mutex<Table>,
    images: Arc<dyn ImageMounts>,
    /// Images this process has mounted (by image), and the locks that make one mount per image.
    mounted: Mutex<HashSet<String>>,
    mounting: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| SnapshotterError::io(format!("creating {}", path.display()), e))
}

fn check_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(SnapshotterError::InvalidArgument(format!(
            "{what} must have 1 to {MAX_KEY_LEN} bytes, not {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_labels(l: &BTreeMap<String, String>) -> Result<()> {
    if l.len() > MAX_LABELS {
        return Err(SnapshotterError::InvalidArgument(format!(
            "{} labels (at most {MAX_LABELS})",
            l.len()
        )));
    }
    if let Some((k, _)) = l.iter().find(|(k, v)| k.len() + v.len() > MAX_LABEL_LEN) {
        return Err(SnapshotterError::InvalidArgument(format!(
            "label {:?}: key and value are over {MAX_LABEL_LEN} bytes",
            k.chars().take(100).collect::<String>()
        )));
    }
    Ok(())
}

impl Snapshotter {
    /// Open (or create) the snapshotter at `root`: a directory only root may enter.
    pub fn open(root: &Path, images: Arc<dyn ImageMounts>) -> Result<Arc<Self>> {
        mkdir(root, 0o700)?;
        // Closed to other users however it was made: container root file systems live below.
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| SnapshotterError::io(format!("chmod {}", root.display()), e))?;
        mkdir(&root.join("snapshots"), 0o700)?;
        mkdir(&root.join("mounts"), 0o700)?;
        let table = Table::load(root)?;
        info!(root = %root.display(), snapshots = table.snapshots.len(), "snapshotter opened");
        Ok(Arc::new(Self {
            root: root.to_path_buf(),
            table: Mutex::new(table),
            images,
            mounted: Mutex::new(HashSet::new()),
            mounting: tokio::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// Where `image` is mounted.
    pub fn image_dir(&self, image: &str) -> PathBuf {
        let h = Sha256::digest(image.as_bytes());
        self.root.join("mounts").join(hex::encode(&h[..16]))
    }

    fn info(name: &str, s: &Snapshot) -> Info {
        Info {
            name: name.to_string(),
            parent: s.parent.clone().unwrap_or_default(),
            kind: s.kind,
            created: s.created,
            updated: s.updated,
            labels: s.labels.clone(),
        }
    }

    /// Create an active (`readonly` false) or view snapshot `key` on `parent`, and return its
    /// mounts. A Nydus layer with a target name is committed under that name instead, and the
    /// answer is [`SnapshotterError::AlreadyExists`] (the remote-snapshotter protocol).
    pub async fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        readonly: bool,
    ) -> Result<Vec<MountSpec>> {
        check_key("a snapshot key", key)?;
        check_labels(&labels)?;
        if let Some(target) = labels.get(labels::TARGET_REF).cloned() {
            if let Some(remote) = labels::nydus_layer(&labels)? {
                return Err(self.commit_remote(&target, parent, labels, remote));
            }
        }
        let plan = {
            let mut t = lock(&self.table);
            if t.snapshots.contains_key(key) {
                return Err(SnapshotterError::AlreadyExists(key.to_string()));
            }
            let parent = if parent.is_empty() {
                None
            } else {
                match t.snapshots.get(parent) {
                    None => return Err(SnapshotterError::NotFound(parent.to_string())),
                    Some(p) if p.kind != Kind::Committed => {
                        return Err(SnapshotterError::FailedPrecondition(format!(
                            "parent {parent:?} is not committed"
                        )))
                    }
                    Some(_) => Some(parent.to_string()),
                }
            };
            let id = t.next_id;
            let dir = self.dir(id);
            mkdir(&dir, 0o700)?;
            mkdir(&dir.join("fs"), 0o755)?;
            if !readonly {
                mkdir(&dir.join("work"), 0o700)?;
            }
            let ts = now();
            t.next_id += 1;
            t.snapshots.insert(
                key.to_string(),
                Snapshot {
                    id,
                    parent,
                    kind: if readonly { Kind::View } else { Kind::Active },
                    created: ts,
                    updated: ts,
                    labels,
                    remote: None,
                    usage: None,
                },
            );
            if let Err(e) = t.save(&self.root) {
                t.snapshots.remove(key);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            debug!(key, id, readonly, "snapshot prepared");
            self.plan(&t, key)
        };
        // containerd records nothing of a prepare that failed: neither may we.
        let result = match plan {
            Ok(plan) => self.realize(plan).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.forget(key);
        }
        result
    }

    /// Undo a prepare that failed after it was recorded.
    fn forget(&self, key: &str) {
        let mut t = lock(&self.table);
        if let Some(s) = t.snapshots.remove(key) {
            if let Err(e) = t.save(&self.root) {
                warn!(key, error = %e, "forgetting a failed prepare");
            }
            let _ = std::fs::remove_dir_all(self.dir(s.id));
        }
    }

    /// Record the Nydus layer `target` as committed (no directory: its data is the image mount)
    /// and answer AlreadyExists, as containerd expects of a remote snapshotter.
    fn commit_remote(
        &self,
        target: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        remote: Remote,
    ) -> SnapshotterError {
        if let Err(e) = check_key("a snapshot name", target) {
            return e;
        }
        let mut t = lock(&self.table);
        if t.snapshots.contains_key(target) {
            return SnapshotterError::AlreadyExists(target.to_string());
        }
        let parent = (!parent.is_empty()).then(|| parent.to_string());
        if let Some(p) = &parent {
            match t.snapshots.get(p) {
                Some(s) if s.kind == Kind::Committed => {}
                Some(_) => {
                    return SnapshotterError::FailedPrecondition(format!(
                        "parent {p:?} is not committed"
                    ))
                }
                None => return SnapshotterError::NotFound(p.clone()),
            }
        }
        let ts = now();
        let id = t.next_id;
        t.next_id += 1;
        info!(target, image = %remote.image, bootstrap = remote.bootstrap, "Nydus layer committed (served by the image mount)");
        t.snapshots.insert(
            target.to_string(),
            Snapshot {
                id,
                parent,
                kind: Kind::Committed,
                created: ts,
                updated: ts,
                labels,
                remote: Some(remote),
                usage: Some((0, 0)),
            },
        );
        if let Err(e) = t.save(&self.root) {
            t.snapshots.remove(target);
            return e;
        }
        SnapshotterError::AlreadyExists(target.to_string())
    }

    /// The lower dirs of snapshot `key` (active or view).
    fn plan(&self, t: &Table, key: &str) -> Result<Plan> {
        let s = t
            .snapshots
            .get(key)
            .ok_or_else(|| SnapshotterError::NotFound(key.to_string()))?;
        if s.kind == Kind::Committed {
            return Err(SnapshotterError::FailedPrecondition(format!(
                "snapshot {key:?} is committed: only active snapshots and views have mounts"
            )));
        }
        let chain = t.chain(key).ok_or_else(|| {
            SnapshotterError::FailedPrecondition(format!("snapshot {key:?}: its parents loop"))
        })?;
        let mut lowers = Vec::new();
        for (name, p) in chain.into_iter().skip(1) {
            match &p.remote {
                None => lowers.push(Lower::Dir(self.dir(p.id).join("fs"))),
                Some(r) if r.bootstrap => {
                    // The image mount holds every layer of the image: the rest of the chain
                    // is its data layers.
                    lowers.push(Lower::Image {
                        image: r.image.clone(),
                        dir: self.image_dir(&r.image),
                    });
                    break;
                }
                Some(_) => {
                    return Err(SnapshotterError::FailedPrecondition(format!(
                        "snapshot {key:?} stands on the Nydus data layer {name:?} without its \
                         image's bootstrap layer: nothing can be mounted"
                    )))
                }
            }
        }
        let dir = self.dir(s.id);
        Ok(Plan {
            kind: s.kind,
            fs: dir.join("fs"),
            work: dir.join("work"),
            lowers,
        })
    }

    /// Make the image mounts a plan needs and turn it into containerd's mounts.
    async fn realize(&self, plan: Plan) -> Result<Vec<MountSpec>> {
        let mut lowers = Vec::with_capacity(plan.lowers.len());
        for l in plan.lowers {
            match l {
                Lower::Dir(d) => lowers.push(d),
                Lower::Image { image, dir } => {
                    self.ensure_mounted(&image, &dir).await?;
                    lowers.push(dir);
                }
            }
        }
        let s = |p: &Path| p.display().to_string();
        let lowerdir = || {
            format!(
                "lowerdir={}",
                lowers.iter().map(|p| s(p)).collect::<Vec<_>>().join(":")
            )
        };
        Ok(vec![match (plan.kind, lowers.len()) {
            (Kind::Active, 0) => MountSpec {
                kind: "bind".into(),
                source: s(&plan.fs),
                options: vec!["rbind".into(), "rw".into()],
            },
            (Kind::Active, _) => MountSpec {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    "index=off".into(),
                    format!("workdir={}", s(&plan.work)),
                    format!("upperdir={}", s(&plan.fs)),
                    lowerdir(),
                ],
            },
            (_, 0) => MountSpec {
                kind: "bind".into(),
                source: s(&plan.fs),
                options: vec!["rbind".into(), "ro".into()],
            },
            (_, 1) => MountSpec {
                kind: "bind".into(),
                source: s(&lowers[0]),
                options: vec!["rbind".into(), "ro".into()],
            },
            _ => MountSpec {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec!["index=off".into(), lowerdir()],
            },
        }])
    }

    /// Mount `image` at `dir` unless this process already has; one attempt at a time per image.
    async fn ensure_mounted(&self, image: &str, dir: &Path) -> Result<()> {
        if lock(&self.mounted).contains(image) {
            return Ok(());
        }
        let gate = {
            let mut m = self.mounting.lock().await;
            Arc::clone(m.entry(image.to_string()).or_default())
        };
        let _g = gate.lock().await;
        if lock(&self.mounted).contains(image) {
            return Ok(());
        }
        // A killed daemon's mount there is stale (stat fails): the mount replaces it.
        if let Err(e) = std::fs::symlink_metadata(dir) {
            if e.kind() == std::io::ErrorKind::NotFound {
                mkdir(dir, 0o755)?;
            }
        }
        self.images
            .mount(image, dir)
            .await
            .map_err(|detail| SnapshotterError::ImageMount {
                image: image.to_string(),
                detail,
            })?;
        info!(image, dir = %dir.display(), "image mounted for containers");
        lock(&self.mounted).insert(image.to_string());
        Ok(())
    }

    /// The mounts of active or view snapshot `key`.
    pub async fn mounts(&self, key: &str) -> Result<Vec<MountSpec>> {
        let plan = self.plan(&lock(&self.table), key)?;
        self.realize(plan).await
    }

    /// Commit active snapshot `key` as `name`, with `labels`.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        check_key("a snapshot name", name)?;
        check_labels(&labels)?;
        let mut t = lock(&self.table);
        if t.snapshots.contains_key(name) {
            return Err(SnapshotterError::AlreadyExists(name.to_string()));
        }
        let s = t
            .snapshots
            .get(key)
            .ok_or_else(|| SnapshotterError::NotFound(key.to_string()))?;
        if s.kind != Kind::Active {
            return Err(SnapshotterError::FailedPrecondition(format!(
                "snapshot {key:?} is a {}: only active snapshots can be committed",
                s.kind.as_str()
            )));
        }
        let usage = disk_usage(&self.dir(s.id).join("fs"))?;
        let mut c = s.clone();
        c.kind = Kind::Committed;
        c.labels = labels;
        c.usage = Some(usage);
        c.updated = now();
        let old = t.snapshots.remove(key);
        t.snapshots.insert(name.to_string(), c);
        if let Err(e) = t.save(&self.root) {
            t.snapshots.remove(name);
            if let Some(o) = old {
                t.snapshots.insert(key.to_string(), o);
            }
            return Err(e);
        }
        debug!(name, key, bytes = usage.0, "snapshot committed");
        Ok(())
    }

    /// Remove snapshot `key`: refused while another snapshot stands on it. Removing a Nydus
    /// image's bootstrap layer unmounts the image.
    pub async fn remove(&self, key: &str) -> Result<()> {
        let (s, unmount) = {
            let mut t = lock(&self.table);
            let Some(s) = t.snapshots.get(key).cloned() else {
                return Err(SnapshotterError::NotFound(key.to_string()));
            };
            if let Some(child) = t
                .snapshots
                .iter()
                .find(|(_, c)| c.parent.as_deref() == Some(key))
            {
                return Err(SnapshotterError::FailedPrecondition(format!(
                    "snapshot {key:?} has children (e.g. {:?}): remove them first",
                    child.0
                )));
            }
            t.snapshots.remove(key);
            if let Err(e) = t.save(&self.root) {
                t.snapshots.insert(key.to_string(), s);
                return Err(e);
            }
            // The image stays mounted while another bootstrap layer of it is recorded.
            let unmount = s.remote.as_ref().filter(|r| r.bootstrap).and_then(|r| {
                let used = t.snapshots.values().any(|o| {
                    o.remote
                        .as_ref()
                        .is_some_and(|x| x.bootstrap && x.image == r.image)
                });
                (!used).then(|| r.image.clone())
            });
            (s, unmount)
        };
        if s.remote.is_none() {
            let dir = self.dir(s.id);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                // Forgotten already: `cleanup` removes it later.
                warn!(dir = %dir.display(), error = %e, "removing a snapshot's directory");
            }
        }
        if let Some(image) = unmount {
            self.release_image(&image).await;
        }
        debug!(key, "snapshot removed");
        Ok(())
    }

    async fn release_image(&self, image: &str) {
        let dir = self.image_dir(image);
        lock(&self.mounted).remove(image);
        match self.images.unmount(&dir).await {
            Ok(()) => info!(image, "image unmounted: its last snapshot is gone"),
            Err(e) => warn!(image, error = %e, "unmounting an image"),
        }
        let _ = std::fs::remove_dir(&dir);
    }

    /// Snapshot `key`'s information.
    pub fn stat(&self, key: &str) -> Result<Info> {
        let t = lock(&self.table);
        t.snapshots
            .get(key)
            .map(|s| Self::info(key, s))
            .ok_or_else(|| SnapshotterError::NotFound(key.to_string()))
    }

    /// Change snapshot `info.name`'s labels: `paths` empty or `labels` replaces them all,
    /// `labels.KEY` sets (or, absent from `info`, removes) one. Other fields cannot change.
    pub fn update(&self, info: Info, paths: &[String]) -> Result<Info> {
        check_labels(&info.labels)?;
        let mut t = lock(&self.table);
        let Some(s) = t.snapshots.get(&info.name) else {
            return Err(SnapshotterError::NotFound(info.name));
        };
        let mut s = s.clone();
        let all = ["labels".to_string()];
        let paths = if paths.is_empty() { &all[..] } else { paths };
        for p in paths {
            if p == "labels" {
                s.labels = info.labels.clone();
            } else if let Some(k) = p.strip_prefix("labels.") {
                match info.labels.get(k) {
                    Some(v) => s.labels.insert(k.to_string(), v.clone()),
                    None => s.labels.remove(k),
                };
            } else {
                return Err(SnapshotterError::InvalidArgument(format!(
                    "cannot update the field {p:?} of a snapshot (only labels)"
                )));
            }
        }
        check_labels(&s.labels)?;
        s.updated = now();
        let old = t.snapshots.insert(info.name.clone(), s.clone());
        if let Err(e) = t.save(&self.root) {
            if let Some(o) = old {
                t.snapshots.insert(info.name.clone(), o);
            }
            return Err(e);
        }
        Ok(Self::info(&info.name, &s))
    }

    /// Every snapshot passing `filters`.
    pub fn list(&self, filters: &Filters) -> Vec<Info> {
        lock(&self.table)
            .snapshots
            .iter()
            .map(|(n, s)| Self::info(n, s))
            .filter(|i| filters.matches(i))
            .collect()
    }

    /// Disk usage of snapshot `key`, `(bytes, inodes)`: measured now for an active snapshot,
    /// recorded at commit for a committed one (a Nydus layer uses none).
    pub fn usage(&self, key: &str) -> Result<(i64, i64)> {
        let (id, kind, usage) = {
            let t = lock(&self.table);
            let s = t
                .snapshots
                .get(key)
                .ok_or_else(|| SnapshotterError::NotFound(key.to_string()))?;
            (s.id, s.kind, s.usage)
        };
        match (kind, usage) {
            (Kind::Committed, Some(u)) => Ok(u),
            _ => disk_usage(&self.dir(id).join("fs")),
        }
    }

    /// Remove directories no snapshot owns (left by a crash or a failed removal) and image
    /// mounts no bootstrap layer names. Returns how many were removed.
    pub async fn cleanup(&self) -> Result<usize> {
        let (ids, images): (HashSet<u64>, HashSet<PathBuf>) = {
            let t = lock(&self.table);
            (
                t.snapshots.values().map(|s| s.id).collect(),
                t.snapshots
                    .values()
                    .filter_map(|s| s.remote.as_ref().filter(|r| r.bootstrap))
                    .map(|r| self.image_dir(&r.image))
                    .collect(),
            )
        };
        let mut removed = 0;
        for entry in read_dir(&self.root.join("snapshots"))? {
            let path = entry.path();
            let ours = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|id| ids.contains(&id));
            if ours {
                continue;
            }
            match std::fs::remove_dir_all(&path) {
                Ok(()) => removed += 1,
                Err(e) => warn!(dir = %path.display(), error = %e, "cleanup"),
            }
        }
        for entry in read_dir(&self.root.join("mounts"))? {
            let path = entry.path();
            if images.contains(&path) {
                continue;
            }
            if let Err(e) = self.images.unmount(&path).await {
                warn!(dir = %path.display(), error = %e, "cleanup: unmounting");
            }
            match std::fs::remove_dir(&path) {
                Ok(()) => removed += 1,
                Err(e) => warn!(dir = %path.display(), error = %e, "cleanup"),
            }
        }
        info!(removed, "snapshotter cleanup");
        Ok(removed)
    }

    /// Mount again every image that containers stand on (after a restart: the old mounts died
    /// with the old process). Failures are logged; the next Mounts or Prepare tries again.
    pub async fn remount(&self) {
        let images: Vec<String> = {
            let t = lock(&self.table);
            let parents: HashSet<&str> = t
                .snapshots
                .values()
                .filter_map(|s| s.parent.as_deref())
                .collect();
            t.snapshots
                .iter()
                .filter(|(n, _)| parents.contains(n.as_str()))
                .filter_map(|(_, s)| s.remote.as_ref().filter(|r| r.bootstrap))
                .map(|r| r.image.clone())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        };
        for image in images {
            let dir = self.image_dir(&image);
            if let Err(e) = self.ensure_mounted(&image, &dir).await {
                warn!(image, error = %e, "mounting an image again after a restart");
            }
        }
    }

    /// Unmount every image this process mounted (daemon shutdown; the table stays, and the
    /// next daemon mounts them again).
    pub async fn unmount_all(&self) {
        let images: Vec<String> = lock(&self.mounted).drain().collect();
        for image in images {
            let dir = self.image_dir(&image);
            if let Err(e) = self.images.unmount(&dir).await {
                warn!(image, error = %e, "unmounting an image at shutdown");
            }
        }
    }
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    std::fs::read_dir(dir)
        .and_then(|r| r.collect::<std::io::Result<Vec<_>>>())
        .map_err(|e| SnapshotterError::io(format!("listing {}", dir.display()), e))
}

/// Bytes (allocated blocks) and inodes under `dir`, hard links counted once, not following
/// symbolic links or crossing into other file systems.
fn disk_usage(dir: &Path) -> Result<(i64, i64)> {
    let top = std::fs::symlink_metadata(dir)
        .map_err(|e| SnapshotterError::io(format!("usage of {}", dir.display()), e))?;
    let mut seen = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    let (mut bytes, mut inodes) = (0i64, 0i64);
    let mut visited = 0u64;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            visited += 1;
            if visited > MAX_USAGE_ENTRIES {
                return Err(SnapshotterError::FailedPrecondition(format!(
                    "{} has over {MAX_USAGE_ENTRIES} files",
                    dir.display()
                )));
            }
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != top.dev() || !seen.insert(m.ino()) {
                continue;
            }
            inodes += 1;
            bytes = bytes.saturating_add(i64::try_from(m.blocks() * 512).unwrap_or(i64::MAX));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok((bytes, inodes))
}
