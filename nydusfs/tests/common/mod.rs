//! Shared helpers of the nydusfs integration tests: where the fixtures are, an in-process mount
//! that always unmounts (even when a test panics), bounded waits, and the expected listings.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfagent_core::{ChunkDigest, ChunkReader, ChunkRef, ChunkTier};
use dfagent_nydusfs::{FsConfig, FsMetrics, Mounted, NydusFs};
use dfagent_rafs::{FileChunk, Image, Inode};
use dfagent_resolver::{BlobDirTier, Resolver, ResolverConfig};
use sha2::Digest as _;

/// The three images built from texture tree 1.
pub const TEXTURE_IMAGES: [&str; 3] = ["v6-zstd-blake3", "v6-lz4-sha256", "v6-none-64k"];

/// Every fixture image.
pub const ALL_IMAGES: [&str; 5] = [
    "v6-zstd-blake3",
    "v6-lz4-sha256",
    "v6-none-64k",
    "v6-chunkdict",
    "v6-nydusify-2layer",
];

/// The shared folder: `$DFAGENT_SHARED`, else `<repo>/../shared`.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("DFAGENT_SHARED") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// Folder of fixture image `name` (holding `bootstrap` and `blobs/`).
pub fn fixture(name: &str) -> PathBuf {
    let d = shared_dir().join("fixtures/rafs").join(name);
    assert!(
        d.join("bootstrap").is_file(),
        "fixture {} not found (set DFAGENT_SHARED to the shared folder)",
        d.display()
    );
    d
}

/// The expected listing of fixture image `name`.
pub fn expected_listing_path(name: &str) -> PathBuf {
    let file = match name {
        "v6-chunkdict" => "texture2.expected.jsonl",
        "v6-nydusify-2layer" => "v6-nydusify-2layer.expected.jsonl",
        _ => "texture.expected.jsonl",
    };
    shared_dir().join("fixtures/rafs").join(file)
}

/// Lines of the expected listing of image `name`.
pub fn expected_lines(name: &str) -> Vec<String> {
    let p = expected_listing_path(name);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A regular file of an expected listing.
#[derive(Clone, Debug)]
pub struct ExpectedFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Regular files of the expected listing of image `name`, in listing order.
pub fn expected_files(name: &str) -> Vec<ExpectedFile> {
    expected_lines(name)
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("listing line is JSON"))
        .filter(|v| v["type"] == "file")
        .map(|v| ExpectedFile {
            path: v["path"].as_str().unwrap().to_owned(),
            size: v["size"].as_u64().unwrap(),
            sha256: v["sha256"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// The expected regular file at `path` of image `name`.
pub fn expected_file(name: &str, path: &str) -> ExpectedFile {
    expected_files(name)
        .into_iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} is not a file of {name}'s listing"))
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

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

/// Every chunk of the regular file at `path`, per [`Image::chunks`].
pub fn file_chunks(image: &Image, path: &str) -> Vec<FileChunk> {
    let inode = inode_at(image, path);
    image.chunks(&inode, 0, inode.size).unwrap()
}

/// The chunk references of the file at `path`.
pub fn file_chunk_refs(image: &Image, path: &str) -> Vec<ChunkRef> {
    file_chunks(image, path)
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

/// A temporary directory under /tmp.
pub fn tmp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("creating a temporary directory under /tmp")
}

/// Run `f` on its own thread and wait at most `timeout` for it: a FUSE bug hangs a test's
/// thread in the kernel, and this turns that into a failure instead of a stuck test run.
pub fn bounded<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("bounded: {what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    match rx.recv_timeout(timeout) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer within {timeout:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the worker thread panicked"),
    }
}

/// Poll `cond` every 10 ms until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `cmd` to completion with its output captured; kill it and fail after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Undo the octal escapes of /proc/self/mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether /proc/self/mountinfo lists a mount at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let target = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape(mp) == target)
}

/// The fields of the /proc/self/mountinfo line of the mount at `path`.
pub fn mountinfo_line(path: &Path) -> Option<String> {
    let target = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4).is_some_and(|mp| unescape(mp) == target))
        .map(str::to_owned)
}

/// An in-process mount of a fixture image in a temporary directory under /tmp. Dropping it
/// unmounts (bounded) and shuts its runtime down, whether or not the test passed.
pub struct TestMount {
    // Field order is drop order: unmount first, then the runtime, then the directory.
    mounted: Option<Mounted>,
    rt: Option<tokio::runtime::Runtime>,
    pub image: Arc<Image>,
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

/// Digests of the chunks of `refs`, as a set.
pub fn digests(refs: &[ChunkRef]) -> HashSet<ChunkDigest> {
    refs.iter().map(|c| c.digest).collect()
}
