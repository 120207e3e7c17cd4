//! What only the nydusfs tests need on top of `dfagent-test-support` (which cannot depend on
//! nydusfs, rafs or the resolver): an in-process mount of a fixture image that always unmounts
//! (even when a test panics), and lookups in a fixture image.
//!
//! Each test declares it `pub mod common;`: these helpers are then public items of the test
//! crate, so a test that uses only some of them does not make the others dead code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dfagent_core::{ChunkReader, ChunkRef, ChunkTier};
use dfagent_nydusfs::{FsConfig, FsMetrics, Mounted, NydusFs};
use dfagent_rafs::{Image, Inode};
use dfagent_resolver::{BlobDirTier, Resolver, ResolverConfig};
use dfagent_test_support::fixtures::fixture;
use dfagent_test_support::mountinfo::is_mounted;
use dfagent_test_support::tmp_dir;

/// Fixture image `name`'s bootstrap, opened.
pub fn open_image(name: &str) -> Arc<Image> {
    let p = fixture(name).join("bootstrap");
    Arc::new(Image::open(&p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display())))
}

/// The inode at `path` (relative, `/`-separated) of `image`, by lookups from the root.
pub fn inode_at(image: &Image, path: &str) -> Inode {
    let mut nid = image.root();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        nid = image
            .lookup(nid, part.as_bytes())
            .unwrap_or_else(|e| panic!("lookup {part} of {path}: {e}"))
            .unwrap_or_else(|| panic!("{path}: no entry {part}"))
            .nid;
    }
    image.inode(nid).unwrap()
}

/// The chunk references of the regular file at `path`, per [`Image::chunks`].
pub fn file_chunk_refs(image: &Image, path: &str) -> Vec<ChunkRef> {
    let inode = inode_at(image, path);
    image
        .chunks(&inode, 0, inode.size)
        .unwrap()
        .into_iter()
        .map(|c| c.chunk)
        .collect()
}

/// A resolver of its own (default configuration, no store) reading through `tier` alone.
pub fn reader_over(tier: Arc<dyn ChunkTier>) -> Arc<dyn ChunkReader> {
    Arc::new(Resolver::standalone(vec![tier], ResolverConfig::default()))
}

/// A resolver reading fixture image `name`'s chunks from its blob directory.
pub fn fixture_reader(name: &str) -> Arc<dyn ChunkReader> {
    reader_over(Arc::new(BlobDirTier::new(fixture(name).join("blobs"))))
}

/// An in-process mount of a fixture image in a temporary directory under /tmp. Dropping it
/// unmounts (bounded) and shuts its runtime down, whether or not the test passed.
pub struct TestMount {
    // Field order is drop order: unmount first, then the runtime, then the directory.
    mounted: Option<Mounted>,
    rt: Option<tokio::runtime::Runtime>,
    /// The mounted image.
    pub image: Arc<Image>,
    /// The file system's counters.
    pub metrics: Arc<FsMetrics>,
    mountpoint: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestMount {
    /// Mount fixture `name` over its own blob directory.
    pub fn fixture(name: &str) -> Self {
        let blobs = fixture(name).join("blobs");
        Self::with_tier(name, Arc::new(BlobDirTier::new(blobs)))
    }

    /// Mount fixture `name`'s bootstrap, reading chunks from `tier` alone.
    pub fn with_tier(name: &str, tier: Arc<dyn ChunkTier>) -> Self {
        let image = open_image(name);
        let dir = tmp_dir(&format!("nydusfs-{name}-"));
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let resolver = reader_over(tier);
        let fs = NydusFs::new(
            image.clone(),
            resolver,
            rt.handle().clone(),
            FsConfig::default(),
        );
        let metrics = fs.metrics();
        let mounted = dfagent_nydusfs::mount(fs, &mountpoint, &format!("nydusfs-test:{name}"))
            .unwrap_or_else(|e| panic!("mounting {name} at {}: {e}", mountpoint.display()));
        let m = TestMount {
            mounted: Some(mounted),
            rt: Some(rt),
            image,
            metrics,
            mountpoint,
            _dir: dir,
        };
        assert!(
            is_mounted(&m.mountpoint),
            "{} is not in /proc/self/mountinfo after mount",
            m.mountpoint.display()
        );
        m
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// `path` (relative) under the mount point.
    pub fn join(&self, path: &str) -> PathBuf {
        self.mountpoint.join(path)
    }

    /// Unmount now, and check that the session ended and the mount is gone.
    pub fn unmount(mut self) {
        let m = self.mounted.take().unwrap();
        m.unmount().expect("unmount");
        assert!(
            !is_mounted(&self.mountpoint),
            "{} still mounted after unmount",
            self.mountpoint.display()
        );
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if let Some(m) = self.mounted.take() {
            drop(m);
        }
        if is_mounted(&self.mountpoint) {
            // The session did not go away (a reader stuck in the kernel): detach it so the
            // temporary directory can be removed and nothing is left behind.
            let _ = dfagent_nydusfs::unmount(&self.mountpoint, true);
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}
