//! The bench environment: a scratch directory, a `docker-registry` on 127.0.0.1, the shaping
//! proxy in front of it, and the workload images (made once per invocation, on first use).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use dfagent_bench::proxy::{CounterSnapshot, Proxy, ShapeConfig};

use crate::cleanup::{self, Action};
use crate::nydusd::{Nydusd, Settings};
use crate::procs::{self, Service};
use crate::Opts;

/// Repository names in the bench registry.
pub const OCI_REPO: &str = "bench/oci";
/// The Nydus image of the workload.
pub const NYDUS_REPO: &str = "bench/nydus";
/// Tag of every workload image.
pub const TAG: &str = "v1";

const REGISTRY_READY: Duration = Duration::from_secs(30);
/// Bound of every image-building or pushing command.
pub const LONG: Duration = Duration::from_secs(1800);

/// What is measured: a directory tree and how a container "starts" on it.
pub struct Workload {
    /// Human description (for the tables).
    pub label: String,
    /// The tree (read-only: never modified).
    pub tree: PathBuf,
    /// The start command run with `chroot ROOT ...`; `None` for trees without a userland
    /// (the fixtures), where the start reads `check_files` instead.
    pub start: Option<Vec<String>>,
    /// Files hashed on both sides after a start, so a wrong byte fails the run.
    pub check_files: Vec<String>,
}

/// The OCI image of the workload in a local layout and in the registry.
pub struct OciImage {
    /// The layout directory (`oci:DIR:v1`).
    pub layout: PathBuf,
    /// Its (only) layer blob, gzip.
    pub layer: PathBuf,
    /// Compressed layer size.
    pub layer_bytes: u64,
    /// Uncompressed layer (tar) size.
    pub tar_bytes: u64,
}

/// The harness environment.
pub struct Env {
    /// Command-line options.
    pub opts: Opts,
    /// Scratch directory (removed at the end).
    pub work: PathBuf,
    /// The dfagent binary.
    pub dfagent: PathBuf,
    /// Upstream nydusd, the third side (`--nydusd`).
    pub nydusd: Option<Nydusd>,
    /// Runs the proxy.
    pub rt: tokio::runtime::Runtime,
    /// The registry process (stopped before the scratch directory is removed).
    registry_process: Option<Service>,
    /// Where the registry listens (direct, unshaped: used to set images up).
    pub registry: SocketAddr,
    /// The shaping proxy in front of it (every measured transfer goes through it).
    pub proxy: Proxy,
    /// The workload.
    pub workload: Workload,
    oci: Option<OciImage>,
    nydus: Option<String>,
    warm_store: Option<PathBuf>,
    unpacked: Option<PathBuf>,
    work_reg: u64,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn registry_answers(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut b = [0u8; 12];
    s.read_exact(&mut b).is_ok() && &b[9..12] == b"200"
}

/// The fixtures folder (`$DFAGENT_SHARED` or `../shared` beside the clone).
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("DFAGENT_SHARED") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// Drop the kernel's page, dentry and inode caches (root only).
pub fn drop_caches() -> anyhow::Result<()> {
    // SAFETY: sync(2) has no arguments.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("writing /proc/sys/vm/drop_caches")
}

impl Env {
    /// Start the registry and the proxy, and pick the workload.
    pub fn new(opts: Opts) -> anyhow::Result<Env> {
        // SAFETY: geteuid has no preconditions.
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "dfagent-bench needs root (FUSE mounts, chroot, drop_caches)"
        );
        let dfagent = match &opts.dfagent {
            Some(p) => p.clone(),
            None => default_dfagent(opts.quick)?,
        };
        ensure!(
            dfagent.is_file(),
            "no dfagent binary at {}",
            dfagent.display()
        );
        let nydusd = match &opts.nydusd {
            Some(bin) => Some(Nydusd::new(
                bin.clone(),
                Settings {
                    fuse_threads: opts.nydusd_fuse_threads.max(1),
                    cache_type: opts.nydusd_cache.clone(),
                    prefetch_threads: opts.nydusd_prefetch_threads,
                    amplify_io: opts.nydusd_amplify_io,
                },
            )?),
            None => None,
        };
        std::fs::create_dir_all(&opts.work_dir)?;
        let work = tempfile::Builder::new()
            .prefix("dfagent-bench-")
            .tempdir_in(&opts.work_dir)?
            .keep();
        let work_reg = cleanup::register(Action::RemoveDir(work.clone()));
        let workload = if opts.quick {
            quick_workload(&work)?
        } else {
            full_workload()?
        };

        let port = free_port()?;
        let registry: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let config = work.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {registry}\n",
                work.join("registry-data").display()
            ),
        )?;
        let mut reg = Service::start(
            Command::new("docker-registry").arg("serve").arg(&config),
            "docker-registry",
            &work.join("registry.log"),
        )?;
        let deadline = Instant::now() + REGISTRY_READY;
        while !registry_answers(registry) {
            if let Some(s) = reg.exited()? {
                bail!(
                    "docker-registry exited ({s}); see {}",
                    work.join("registry.log").display()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "docker-registry did not answer within {REGISTRY_READY:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-proxy")
            .enable_all()
            .build()?;
        let shape = ShapeConfig {
            bytes_per_sec: opts.bandwidth_mbps * 1e6,
            rtt: Duration::from_secs_f64(opts.rtt_ms / 1e3),
            per_connection: opts.per_connection,
        };
        let proxy = rt.block_on(Proxy::start(registry, shape))?;
        eprintln!(
            "dfagent-bench: registry {registry}, shaping proxy {} ({} MB/s, {} ms RTT{}), work dir {}",
            proxy.addr(),
            opts.bandwidth_mbps,
            opts.rtt_ms,
            if opts.per_connection {
                ", per connection"
            } else {
                ", shared link"
            },
            work.display()
        );
        Ok(Env {
            opts,
            work,
            dfagent,
            nydusd,
            rt,
            registry_process: Some(reg),
            registry,
            proxy,
            workload,
            oci: None,
            nydus: None,
            warm_store: None,
            unpacked: None,
            work_reg,
        })
    }

    /// The proxy's byte counters now.
    pub fn counters(&self) -> CounterSnapshot {
        self.proxy.counters()
    }

    /// `REPO:TAG` through the proxy.
    pub fn via_proxy(&self, repo: &str) -> String {
        format!("{}/{repo}:{TAG}", self.proxy.addr())
    }

    /// `REPO:TAG` straight at the registry.
    pub fn direct(&self, repo: &str) -> String {
        format!("{}/{repo}:{TAG}", self.registry)
    }

    /// A fresh scratch path (not created).
    pub fn scratch(&self, name: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.work.join(format!("{name}-{n}"))
    }

    /// The workload as an OCI image (one gzip layer, made with umoci), in a local layout and
    /// pushed to the registry as `bench/oci:v1`.
    pub fn oci(&mut self) -> anyhow::Result<&OciImage> {
        if self.oci.is_none() {
            let t = Instant::now();
            let layout = self.work.join("oci-layout");
            let image = format!("{}:{TAG}", layout.display());
            let umoci =
                |args: &[&str]| procs::run(Command::new("umoci").args(args), LONG).map(|_| ());
            umoci(&["init", "--layout", &layout.to_string_lossy()])?;
            umoci(&["new", "--image", &image])?;
            umoci(&[
                "insert",
                "--image",
                &image,
                &self.workload.tree.to_string_lossy(),
                "/",
            ])?;
            procs::run(
                Command::new("skopeo").args([
                    "copy",
                    "--quiet",
                    "--dest-tls-verify=false",
                    &format!("oci:{image}"),
                    &format!("docker://{}", self.direct(OCI_REPO)),
                ]),
                LONG,
            )?;
            let (layer, layer_bytes) = only_layer(&layout)?;
            let tar_bytes = gunzip_size(&layer)?;
            eprintln!(
                "dfagent-bench: OCI image of {}: layer {layer_bytes} bytes gzip, {tar_bytes} bytes tar ({:.1} s)",
                self.workload.label,
                t.elapsed().as_secs_f64()
            );
            self.oci = Some(OciImage {
                layout,
                layer,
                layer_bytes,
                tar_bytes,
            });
        }
        self.oci.as_ref().context("OCI image")
    }

    /// The workload as a Nydus image in the registry (`bench/nydus:v1`), built with
    /// `dfagent build` from the OCI image. Returns how it was made.
    pub fn nydus(&mut self) -> anyhow::Result<String> {
        if let Some(n) = &self.nydus {
            return Ok(n.clone());
        }
        let t = Instant::now();
        let layout = self.oci()?.layout.clone();
        let out = self.work.join("nydus-build");
        procs::run(
            Command::new(&self.dfagent)
                .arg("build")
                .arg(format!("oci:{}:{TAG}", layout.display()))
                .arg("--push")
                .arg(self.direct(NYDUS_REPO))
                .arg("--output-dir")
                .arg(&out),
            LONG,
        )?;
        let how = "built by `dfagent build` from the OCI image".to_owned();
        eprintln!(
            "dfagent-bench: Nydus image: {how} ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
        self.nydus = Some(how.clone());
        Ok(how)
    }

    /// A store holding the whole Nydus image (`dfagent pull` once, through the proxy).
    pub fn warm_store(&mut self) -> anyhow::Result<PathBuf> {
        if let Some(s) = &self.warm_store {
            return Ok(s.clone());
        }
        self.nydus()?;
        let store = self.work.join("warm-store");
        procs::run(
            Command::new(&self.dfagent)
                .arg("pull")
                .arg("--store")
                .arg(&store)
                .arg(self.via_proxy(NYDUS_REPO)),
            LONG,
        )?;
        self.warm_store = Some(store.clone());
        Ok(store)
    }

    /// The OCI image unpacked once with umoci (the local-disk baseline of the read scenarios).
    pub fn unpacked(&mut self) -> anyhow::Result<PathBuf> {
        if let Some(u) = &self.unpacked {
            return Ok(u.clone());
        }
        let layout = self.oci()?.layout.clone();
        let bundle = self.work.join("unpacked");
        umoci_unpack(&layout, &bundle)?;
        let root = bundle.join("rootfs");
        self.unpacked = Some(root.clone());
        Ok(root)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // The registry first (the proxy stops with its field); the scratch directory last.
        if let Some(mut r) = self.registry_process.take() {
            r.stop(Duration::from_secs(10));
        }
        cleanup::deregister(self.work_reg);
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// `umoci unpack --image LAYOUT:v1 BUNDLE`.
pub fn umoci_unpack(layout: &Path, bundle: &Path) -> anyhow::Result<()> {
    procs::run(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{TAG}", layout.display()))
            .arg(bundle),
        LONG,
    )?;
    Ok(())
}

/// The release `dfagent` of the target dir this binary lives in (`T/debug/dfagent-bench` or
/// `T/release/...`), of `$CARGO_TARGET_DIR`, or of the workspace's usual target dir.
fn release_dfagent(me: &Path) -> Option<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(profile_dir) = me.parent() {
        if let Some(target) = profile_dir.parent() {
            dirs.push(target.to_path_buf());
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(t));
    }
    dirs.push(PathBuf::from("/var/cache/dfagent/target"));
    dirs.into_iter()
        .map(|d| d.join("release/dfagent"))
        .find(|p| p.is_file())
}

fn default_dfagent(quick: bool) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    // Full runs measure release builds when there is one (`DFAGENT_RELEASE=1 scripts/setup.sh`).
    if !quick {
        if let Some(p) = release_dfagent(&me) {
            return Ok(p);
        }
    }
    // Beside this binary in the target dir (`cargo build --workspace` builds both).
    if let Some(dir) = me.parent() {
        let p = dir.join("dfagent");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no dfagent binary beside {} (run `cargo build --workspace` first, or pass --dfagent PATH)",
        me.display()
    )
}

fn full_workload() -> anyhow::Result<Workload> {
    let tree = PathBuf::from("/var/cache/dfagent/rootfs/bookworm-minbase-python3");
    ensure!(
        tree.join("usr/bin/python3").exists(),
        "{} is missing: run scripts/setup.sh",
        tree.display()
    );
    Ok(Workload {
        label: "Debian bookworm minbase + python3 root filesystem".into(),
        tree,
        start: Some(vec!["python3".into(), "-c".into(), "print(42)".into()]),
        check_files: vec!["usr/bin/python3.11".into(), "etc/os-release".into()],
    })
}

fn quick_workload(work: &Path) -> anyhow::Result<Workload> {
    let shared = shared_dir();
    let tree = work.join("texture");
    procs::run(
        Command::new("python3")
            .arg(shared.join("tools/make-texture.py"))
            .arg(&tree)
            .arg("1"),
        Duration::from_secs(120),
    )?;
    Ok(Workload {
        label: "texture tree 1 (the fixtures' tree, make-texture.py)".into(),
        tree,
        start: None,
        check_files: vec![
            "multi-chunk.bin".into(),
            "exactly-1MiB.bin".into(),
            "text/big.txt".into(),
            "hello.txt".into(),
        ],
    })
}

/// The layers of the (first) image in an OCI layout: each blob's path and size.
pub(crate) fn layout_layers(layout: &Path) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    let blob = |d: &str| -> anyhow::Result<PathBuf> {
        let hex = d
            .strip_prefix("sha256:")
            .with_context(|| format!("digest {d} is not sha256"))?;
        Ok(layout.join("blobs/sha256").join(hex))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let m = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json has no manifest")?;
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(m)?)?)?;
    let layers = manifest["layers"]
        .as_array()
        .context("manifest has no layers")?;
    layers
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().context("layer has no digest")?;
            let size = l["size"].as_u64().context("layer has no size")?;
            Ok((blob(d)?, size))
        })
        .collect()
}

/// The single layer of the layout's image, and its size.
fn only_layer(layout: &Path) -> anyhow::Result<(PathBuf, u64)> {
    let mut layers = layout_layers(layout)?;
    ensure!(
        layers.len() == 1,
        "expected one layer, found {}",
        layers.len()
    );
    Ok(layers.remove(0))
}

fn gunzip_size(path: &Path) -> anyhow::Result<u64> {
    let out = procs::run(
        Command::new("sh")
            .arg("-c")
            .arg("gzip -dc \"$1\" | wc -c")
            .arg("sh")
            .arg(path),
        LONG,
    )?;
    out.stdout
        .trim()
        .parse()
        .context("reading the uncompressed layer size")
}
