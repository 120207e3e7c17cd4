//! The runtime image of `docker/`: `docker/build-image.sh` builds it with buildah from the cached
//! Debian root file system and this build's `dfagent`, podman runs it as the Kubernetes
//! DaemonSet does (privileged, `/dev/fuse`, host network, the mount root shared back to the
//! host), and the daemon inside serves a fixture image that the host reads through the
//! propagated mount, and `/metrics`, `/healthz`, `/readyz` on a loopback port.
//!
//! buildah and podman keep their storage, run state and temporary files in the test's temporary
//! directory (`--root`, `--runroot`, `--tmpdir`): the machine's images and containers are never
//! touched, and everything (container, image, storage, mounts) is removed at the end, on
//! failure too. Needs root, podman, buildah and the rootfs that `scripts/setup.sh` caches; the
//! test fails (it does not skip) without them, so a run that checks nothing never passes.

use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dfagent_test_support::fixtures::{
    expected_files, fixture, list_tree_without_root, listing_without_root,
};
use dfagent_test_support::mount::detach;
use dfagent_test_support::mountinfo::{entries, entry_at, mounts_at};
use dfagent_test_support::net::free_addr;
use dfagent_test_support::process::{output_within, run_bounded};
use dfagent_test_support::tmp_dir;
use dfagent_test_support::wait::{bounded, wait_until};
use sha2::Digest as _;

/// The root file system `scripts/setup.sh` caches (never modified): under `$DFAGENT_CACHE`,
/// else `/var/cache/dfagent`.
fn rootfs() -> PathBuf {
    std::env::var_os("DFAGENT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/dfagent"))
        .join("rootfs/bookworm-minbase-python3")
}
/// The fixture image served from inside the container.
const IMAGE: &str = "v6-zstd-blake3";
/// Bound of the image build (a root file system copy and a commit).
const BUILD: Duration = Duration::from_secs(600);
/// Bound of one podman command.
const PODMAN: Duration = Duration::from_secs(120);
/// How long the daemon in the container may take to answer `/readyz`.
const READY: Duration = Duration::from_secs(60);
/// Bound of reading the image through the mount.
const READ: Duration = Duration::from_secs(120);

/// The repository's `docker/` directory.
fn docker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker")
}

fn require(ok: bool, what: &str) {
    assert!(
        ok,
        "{what} (scripts/setup.sh installs and caches what this test needs)"
    );
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// podman (and buildah) confined to one temporary directory, and the container and the shared
/// mount root of the test. Drop stops the container (SIGTERM: the daemon unmounts), removes it
/// and the image with the whole storage (`podman system reset`), then detaches whatever is
/// still mounted below the directory.
struct Podman {
    dir: tempfile::TempDir,
    container: Option<String>,
    shared_mount: Option<PathBuf>,
}

impl Podman {
    fn new() -> Podman {
        Podman {
            dir: tmp_dir("dfagent-image-"),
            container: None,
            shared_mount: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The containers-storage options shared by buildah and podman.
    fn storage_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--root".into(),
            self.path("storage").into_os_string(),
            "--runroot".into(),
            self.path("runroot").into_os_string(),
            "--storage-driver".into(),
            "overlay".into(),
        ]
    }

    /// `podman` with the test's storage, no systemd (cgroupfs, events in a file).
    fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.args(self.storage_args())
            .arg("--tmpdir")
            .arg(self.path("podman-tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        c
    }

    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        run_bounded(self.command().args(args), PODMAN)
    }

    /// `podman ARGS`, which must succeed; its stdout.
    fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {:?} failed ({}): {}{}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            out.status,
            text(&out.stderr),
            self.logs()
        );
        text(&out.stdout)
    }

    /// `podman exec CONTAINER ARGS`, which must succeed; its stdout.
    fn exec(&self, args: &[&str]) -> String {
        let name = self.container.clone().expect("a running container");
        let mut a = vec!["exec", name.as_str()];
        a.extend_from_slice(args);
        self.ok(&a)
    }

    /// What the container logged (for failure messages).
    fn logs(&self) -> String {
        let Some(name) = &self.container else {
            return String::new();
        };
        match output_within(self.command().args(["logs", name]), PODMAN) {
            Ok(Some(o)) => format!("\ncontainer log:\n{}{}", text(&o.stdout), text(&o.stderr)),
            _ => String::new(),
        }
    }

    /// Bind `dir` onto itself and make it a shared mount, so mounts made below it inside the
    /// container (`rshared`, Kubernetes' `Bidirectional`) appear on the host.
    fn share(&mut self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("creating the mount root");
        let c = CString::new(dir.as_os_str().as_encoded_bytes()).expect("a path without NUL");
        // SAFETY: valid C strings; binding and sharing a directory of this test's own.
        let bound = unsafe {
            libc::mount(
                c.as_ptr(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(
            bound,
            0,
            "bind-mounting {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        self.shared_mount = Some(dir.to_path_buf());
        // SAFETY: as above; only the propagation of that mount changes.
        let shared = unsafe {
            libc::mount(
                std::ptr::null(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED,
                std::ptr::null(),
            )
        };
        assert_eq!(
            shared,
            0,
            "making {} shared: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }

    /// Stop the container with SIGTERM (the daemon unmounts and exits); whether it stopped.
    fn stop(&self) -> bool {
        let Some(name) = &self.container else {
            return true;
        };
        matches!(
            output_within(self.command().args(["stop", "--time", "30", name]), PODMAN),
            Ok(Some(o)) if o.status.success()
        )
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if let Some(name) = self.container.clone() {
            let _ = self.stop();
            let _ = output_within(
                self.command().args(["rm", "--force", "--time", "5", &name]),
                PODMAN,
            );
            self.container = None;
        }
        // Every image, container and layer of this storage, and its overlay mounts.
        let _ = output_within(self.command().args(["system", "reset", "--force"]), PODMAN);
        if let Some(mp) = self.shared_mount.take() {
            let below: Vec<PathBuf> = entries()
                .into_iter()
                .map(|e| e.mount_point)
                .filter(|p| p.starts_with(&mp) && *p != mp)
                .collect();
            for p in below.iter().rev() {
                detach(p);
            }
            detach(&mp);
        }
        let dir = self.dir.path().to_path_buf();
        let left: Vec<PathBuf> = entries()
            .into_iter()
            .map(|e| e.mount_point)
            .filter(|p| p.starts_with(&dir))
            .collect();
        for p in left.iter().rev() {
            detach(p);
        }
    }
}

/// `GET path` from `addr`: the status code and the body, or `None` when nothing answers yet.
fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The value of the metric sample whose name and labels are exactly `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// The current soft limit of `resource` (`RLIM_INFINITY` as `u64::MAX`).
fn soft_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit to fill in.
    let rc = unsafe { libc::getrlimit(resource, &mut r) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    r.rlim_cur
}

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    hex::encode(sha2::Sha256::digest(&bytes))
}

#[test]
fn runtime_image_runs_the_daemon_and_serves_a_mount_and_metrics() {
    // SAFETY: geteuid has no preconditions.
    require(unsafe { libc::geteuid() } == 0, "this test runs as root");
    require(on_path("podman"), "podman is not installed");
    require(on_path("buildah"), "buildah is not installed");
    let rootfs = rootfs();
    require(rootfs.join("usr").is_dir(), "no cached rootfs");
    require(Path::new("/dev/fuse").exists(), "no /dev/fuse");
    let image_dir = fixture(IMAGE);
    let mut pm = Podman::new();

    // The image, built as users without Docker build it.
    let tag = format!("localhost/dfagent-test:{}", std::process::id());
    let started = Instant::now();
    let built = run_bounded(
        Command::new("bash")
            .arg(docker_dir().join("build-image.sh"))
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_dfagent"))
            .arg("--rootfs")
            .arg(&rootfs)
            .arg("--tag")
            .arg(&tag)
            .args(pm.storage_args()),
        BUILD,
    );
    assert!(
        built.status.success(),
        "docker/build-image.sh failed ({}): {}",
        built.status,
        text(&built.stderr)
    );
    eprintln!("image built in {:?}", started.elapsed());
    let listed = pm.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(listed.lines().any(|l| l == tag), "{tag} not in {listed}");
    let config = pm.ok(&["image", "inspect", "--format", "{{json .Config}}", &tag]);
    let config: serde_json::Value = serde_json::from_str(&config).expect("image config JSON");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!([
            "/usr/local/bin/dfagent",
            "daemon",
            "--config",
            "/etc/dfagent/config.toml"
        ]),
        "image config: {config}"
    );

    // The container, as the DaemonSet runs it: its own entrypoint and default configuration,
    // the store and the mount root from the host, metrics on a loopback port of the host.
    let store = pm.path("store");
    let mnt = pm.path("mnt");
    std::fs::create_dir_all(&store).expect("creating the store directory");
    pm.share(&mnt);
    let metrics = free_addr();
    // Root here may lack CAP_SYS_RESOURCE (this project's machines do): podman's default rlimits
    // (raised above the current hard limits) cannot be set then, so the container gets limits
    // within the current soft ones.
    let nofile = soft_limit(libc::RLIMIT_NOFILE).min(65536);
    let nproc = soft_limit(libc::RLIMIT_NPROC).min(4096);
    let name = format!("dfagent-test-{}", std::process::id());
    pm.container = Some(name.clone());
    pm.ok(&[
        "run".to_string(),
        "--detach".into(),
        "--name".into(),
        name.clone(),
        "--privileged".into(),
        "--device".into(),
        "/dev/fuse".into(),
        "--network".into(),
        "host".into(),
        "--ulimit".into(),
        format!("nofile={nofile}:{nofile}"),
        "--ulimit".into(),
        format!("nproc={nproc}:{nproc}"),
        "--env".into(),
        format!("DFAGENT_DAEMON__METRICS_ADDR={metrics}"),
        "--volume".into(),
        format!("{}:/var/lib/dfagent/store", store.display()),
        "--volume".into(),
        format!("{}:/var/lib/dfagent/mnt:rshared", mnt.display()),
        "--volume".into(),
        format!("{}:/images/fixture:ro", image_dir.display()),
        tag.clone(),
    ]);
    let ready = wait_until(READY, || {
        matches!(try_get(metrics, "/readyz"), Some((200, _)))
    });
    assert!(ready, "/readyz not 200 within {READY:?}{}", pm.logs());
    assert!(
        matches!(try_get(metrics, "/healthz"), Some((200, _))),
        "/healthz{}",
        pm.logs()
    );
    // What the runtime carries besides dfagent: fusermount3 and the CA bundle.
    pm.exec(&["fusermount3", "--version"]);
    pm.exec(&["test", "-s", "/etc/ssl/certs/ca-certificates.crt"]);

    // A mount served by the daemon in the container, seen and read on the host.
    let inside = "/var/lib/dfagent/mnt/fixture";
    pm.exec(&["mkdir", "-p", inside]);
    pm.exec(&[
        "dfagent",
        "mount",
        "--bootstrap",
        "/images/fixture/bootstrap",
        "--blob-dir",
        "/images/fixture/blobs",
        inside,
    ]);
    let ps = pm.exec(&["dfagent", "ps"]);
    assert!(ps.contains(inside), "dfagent ps: {ps}");
    let host_mp = mnt.join("fixture");
    let entry = entry_at(&host_mp).unwrap_or_else(|| {
        panic!(
            "the mount did not propagate to {}{}",
            host_mp.display(),
            pm.logs()
        )
    });
    assert!(
        entry.source.starts_with("dfagent:sha256:") && entry.fs_type.starts_with("fuse"),
        "{}",
        entry.line
    );
    let file = expected_files(IMAGE)
        .into_iter()
        .max_by_key(|f| f.size)
        .expect("the listing has files");
    let path = host_mp.join(&file.path);
    let digest = bounded("reading through the mount", READ, move || sha256_hex(&path));
    assert_eq!(digest, file.sha256, "{} through the mount", file.path);
    let tree = {
        let mp = host_mp.clone();
        bounded("listing the mount", READ, move || {
            list_tree_without_root(&mp)
        })
    };
    assert_eq!(
        tree,
        listing_without_root("texture.expected.jsonl"),
        "the tree through the mount"
    );

    // /metrics with dfagent's names, counting what was read.
    let (code, body) = try_get(metrics, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\ndfagent_build_info{"), "{body}");
    assert_eq!(
        sample(&body, "dfagent_mounts{state=\"serving\"}"),
        Some(1.0),
        "{body}"
    );
    let from_blobs = sample(&body, "dfagent_tier_bytes_total{tier=\"blobdir\"}").unwrap_or(0.0);
    assert!(
        from_blobs >= file.size as f64,
        "blobdir bytes {from_blobs} < {}: {body}",
        file.size
    );

    // SIGTERM: the daemon unmounts (the host sees it go) and exits cleanly.
    assert!(pm.stop(), "podman stop{}", pm.logs());
    assert_eq!(
        mounts_at(&host_mp),
        0,
        "mount left at {}",
        host_mp.display()
    );
    let log = pm.logs();
    assert!(log.contains("daemon stopped"), "{log}");
    let state = pm.ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(state.trim(), "0", "exit code{log}");

    // Nothing of the test outside its directory: drop removes container, image and storage.
    let dir = pm.dir.path().to_path_buf();
    drop(pm);
    let left: Vec<_> = entries()
        .into_iter()
        .filter(|e| e.mount_point.starts_with(&dir))
        .map(|e| e.line)
        .collect();
    assert!(left.is_empty(), "mounts left behind: {left:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}
