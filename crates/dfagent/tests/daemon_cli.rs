//! The node agent: one `dfagent daemon` serving many mounts through its control socket, the CLI
//! as its client, access control on the socket, and its metrics scraped by a real Prometheus.
//! Each test starts its own daemon on a temporary socket and store and its own registry.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dfagent_core::{Compression, DigestAlgo};
use dfagent_rafs::write::{tree_from_dir, write_bootstrap, BlobWriter, BootstrapOptions};
use dfagent_test_support::dfagent_cli;
use dfagent_test_support::fixtures::{
    fixture, list_tree_without_root, listing_without_root, shared_dir,
};
use dfagent_test_support::mount::MountGuard;
use dfagent_test_support::mountinfo::{entry_at, mounts_at};
use dfagent_test_support::process::succeeded;
use dfagent_test_support::proxy::{Corrupt, Proxy};
use dfagent_test_support::registry::Registry;
use dfagent_test_support::tmp_dir;
use dfagent_test_support::wait::wait_until;

/// A `dfagent daemon` on its own socket and store, stopped (SIGTERM) on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    store: PathBuf,
    metrics: Option<String>,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, extra: &[&str]) -> Daemon {
        let socket = dir.join("run/dfagent.sock");
        let store = dir.join("store");
        let log = dir.join("daemon.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_dfagent"))
            .args(["daemon", "--socket"])
            .arg(&socket)
            .arg("--store")
            .arg(&store)
            .args(extra)
            .env_remove("DFAGENT_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting dfagent daemon");
        // Copy stderr to the log file, and hand over the "ready" line.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(&log_path).unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
                if line.contains("daemon ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "daemon did not become ready: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let metrics = ready
            .split("metrics http://")
            .nth(1)
            .map(|s| s.trim_end_matches("/metrics").to_string());
        Daemon {
            child,
            socket,
            store,
            metrics,
            log,
        }
    }

    /// The CLI as a client of this daemon.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_dfagent"))
            .args(args)
            .env("DFAGENT_SOCKET", &self.socket)
            .env("DFAGENT_STORE", self.store.with_extension("not-used"))
            .output()
            .unwrap()
    }

    fn ps(&self) -> Vec<serde_json::Value> {
        let out = succeeded(self.cli(&["ps", "--json"]));
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    fn stop(mut self) -> std::process::ExitStatus {
        let st = self.terminate();
        assert!(st.success(), "daemon exited with {st}: {}", self.log());
        st
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon did not stop within 40 s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.terminate();
        }
    }
}

/// A registry holding the fixture v6-zstd-blake3, and its reference.
fn registry_with_fixture(work: &Path) -> (Registry, String) {
    let reg = Registry::start();
    let reference = format!("{}/fixtures/v6-zstd-blake3:v1", reg.host());
    dfagent_cli!()
        .with_store(&work.join("push-store"))
        .push(&fixture("v6-zstd-blake3"), &reference);
    (reg, reference)
}

/// Build `src` into `out/bootstrap` + `out/blobs/<id>` with the RAFS writer.
fn build_dir(src: &Path, out: &Path, compression: Compression, digest_algo: DigestAlgo) {
    std::fs::create_dir_all(out.join("blobs")).unwrap();
    let opts = BootstrapOptions {
        chunk_size: 1 << 20,
        digest_algo,
        compression,
        prefetch: vec![],
    };
    let mut blob = BlobWriter::new(Vec::new(), opts.chunk_size, compression, digest_algo);
    let tree = tree_from_dir(src, &mut blob, &opts).unwrap();
    let (bytes, spec) = blob.finish().unwrap();
    std::fs::write(out.join("blobs").join(spec.id.hex()), bytes).unwrap();
    std::fs::write(
        out.join("bootstrap"),
        write_bootstrap(&tree, &[spec], &opts).unwrap(),
    )
    .unwrap();
}

/// The texture tree of `seed` in `dir`.
fn texture(dir: &Path, seed: u32) {
    let out = Command::new("python3")
        .arg(shared_dir().join("tools/make-texture.py"))
        .arg(dir)
        .arg(seed.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Listing lines without the root line.
fn tree(dir: &Path) -> Vec<String> {
    list_tree_without_root(dir)
}

const FIXTURES: [(&str, &str); 5] = [
    ("v6-zstd-blake3", "texture.expected.jsonl"),
    ("v6-lz4-sha256", "texture.expected.jsonl"),
    ("v6-none-64k", "texture.expected.jsonl"),
    ("v6-chunkdict", "texture2.expected.jsonl"),
    ("v6-nydusify-2layer", "v6-nydusify-2layer.expected.jsonl"),
];

#[test]
fn sixteen_images_are_served_by_one_daemon() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let proxy = Proxy::start(reg.addr(), Corrupt::Never);
    let host = proxy.host();
    let push_store = work.path().join("push-store");

    // Five upstream-built fixtures, and eleven images built here from texture trees.
    let mut images: Vec<(String, Vec<String>)> = Vec::new();
    for (name, listing_file) in FIXTURES {
        let reference = format!("{host}/fixtures/{name}:v1");
        dfagent_cli!()
            .with_store(&push_store)
            .push(&fixture(name), &reference);
        images.push((reference, listing_without_root(listing_file)));
    }
    for seed in 2..13u32 {
        let src = work.path().join(format!("src-{seed}"));
        texture(&src, seed);
        let img = work.path().join(format!("img-{seed}"));
        let compression =
            [Compression::Zstd, Compression::Lz4Block, Compression::None][seed as usize % 3];
        let algo = if seed % 2 == 0 {
            DigestAlgo::Blake3
        } else {
            DigestAlgo::Sha256
        };
        build_dir(&src, &img, compression, algo);
        let reference = format!("{host}/built/texture-{seed}:v1");
        dfagent_cli!()
            .with_store(&push_store)
            .push(&img, &reference);
        images.push((reference, tree(&src)));
    }
    assert_eq!(images.len(), 16);
    proxy.take_log();

    let daemon = Daemon::start(work.path(), &["--metrics-addr", "none"]);
    let mut mps = Vec::new();
    for (i, (reference, _)) in images.iter().enumerate() {
        let mp = work.path().join(format!("mnt-{i}"));
        std::fs::create_dir(&mp).unwrap();
        let out = daemon.cli(&[
            "mount",
            reference,
            mp.to_str().unwrap(),
            "--prefetch",
            "none",
        ]);
        assert!(
            out.status.success(),
            "mount {reference}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon.log()
        );
        // The CLI returned; the daemon serves the mount.
        assert!(String::from_utf8_lossy(&out.stderr).contains("served by the daemon"));
        mps.push(mp);
    }
    let ps = daemon.ps();
    assert_eq!(ps.len(), 16, "{ps:?}");
    for m in &ps {
        assert_eq!(m["state"], "serving");
    }

    // Every listing (with every file's sha256) is right. The chunk-dict image's dictionary is
    // mounted before it, so the chunks they share are read through the first mount.
    for ((reference, want), mp) in images.iter().zip(&mps) {
        assert_eq!(&tree(mp), want, "listing of {reference}");
    }

    // Every chunk was fetched from the registry at most once across all sixteen mounts: in
    // particular those v6-chunkdict shares with its dictionary v6-zstd-blake3.
    let mut ranges: BTreeMap<(String, (u64, u64)), usize> = BTreeMap::new();
    for r in proxy.take_log().iter().filter(|r| r.is_blob_get()) {
        if let Some(range) = r.range {
            let blob = r.path.rsplit('/').next().unwrap().to_string();
            *ranges.entry((blob, range)).or_default() += 1;
        }
    }
    let dict = dfagent_rafs::Image::open(fixture("v6-zstd-blake3").join("bootstrap")).unwrap();
    let user = dfagent_rafs::Image::open(fixture("v6-chunkdict").join("bootstrap")).unwrap();
    let dict_chunks: std::collections::HashSet<_> = dict
        .all_chunks()
        .unwrap()
        .iter()
        .map(|c| c.digest)
        .collect();
    let shared_chunks: Vec<_> = user
        .all_chunks()
        .unwrap()
        .into_iter()
        .filter(|c| dict_chunks.contains(&c.digest))
        .collect();
    assert!(!shared_chunks.is_empty());
    for c in &shared_chunks {
        let blob = format!("sha256:{}", c.blob.hex());
        let covering: usize = ranges
            .iter()
            .filter(|((b, (first, last)), _)| {
                *b == blob && *first <= c.compressed_offset && c.blob_range().end - 1 <= *last
            })
            .map(|(_, n)| *n)
            .sum();
        assert_eq!(
            covering, 1,
            "chunk {} was fetched {covering} times",
            c.digest
        );
    }

    // Unmounting one leaves the others serving.
    succeeded(daemon.cli(&["umount", mps[0].to_str().unwrap()]));
    assert!(wait_until(Duration::from_secs(10), || !mps[0]
        .join("hello.txt")
        .exists()));
    assert_eq!(daemon.ps().len(), 15);
    for mp in &mps[1..] {
        assert!(
            std::fs::metadata(mp.join("hello.txt")).is_ok(),
            "{} stopped serving",
            mp.display()
        );
    }
    let data = std::fs::read(mps[5].join("multi-chunk.bin")).unwrap();
    assert!(!data.is_empty());

    // SIGTERM unmounts everything and exits 0.
    daemon.stop();
    for mp in &mps {
        assert_eq!(mounts_at(mp), 0, "{} still mounted", mp.display());
    }
}

#[test]
fn a_second_daemon_on_one_store_names_the_first() {
    let work = tempfile::tempdir().unwrap();
    let first = Daemon::start(work.path(), &["--metrics-addr", "none"]);
    let out = Command::new(env!("CARGO_BIN_EXE_dfagent"))
        .args(["daemon", "--metrics-addr", "none", "--socket"])
        .arg(work.path().join("other.sock"))
        .arg("--store")
        .arg(&first.store)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by") && err.contains(&format!("pid {}", first.child.id())),
        "{err}"
    );
    first.stop();
}

#[test]
fn bad_requests_get_typed_errors_and_the_daemon_keeps_serving() {
    let work = tempfile::tempdir().unwrap();
    let (reg, reference) = registry_with_fixture(work.path());
    let daemon = Daemon::start(work.path(), &["--metrics-addr", "none"]);
    let mp = work.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    succeeded(daemon.cli(&["mount", &reference, mp.to_str().unwrap()]));

    let fail = |args: &[&str], needle: &str| {
        let out = daemon.cli(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    // An unknown image, a registry that is down, a mount point in use, a missing mount point.
    let other = work.path().join("mnt2");
    std::fs::create_dir(&other).unwrap();
    fail(
        &[
            "mount",
            &format!("127.0.0.1:{}/no/such:v1", reg.port()),
            other.to_str().unwrap(),
        ],
        "NotFound",
    );
    fail(
        &["mount", "127.0.0.1:9/down/img:v1", other.to_str().unwrap()],
        "Unavailable",
    );
    fail(
        &["mount", &reference, mp.to_str().unwrap()],
        "already served",
    );
    fail(&["mount", &reference, "/nonexistent/dir"], "mount point");
    // The first mount still serves.
    assert_eq!(
        std::fs::read(mp.join("hello.txt")).unwrap(),
        b"hello, nydus\n"
    );
    assert_eq!(daemon.ps().len(), 1);
    daemon.stop();
}

/// Start a real Prometheus on 127.0.0.1 scraping `target` every second; returns it and its
/// address. Killed when the returned child is dropped by the caller.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        let port = free_port();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: dfagent\n    static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (scripts/setup.sh installs it)");
        let addr = format!("127.0.0.1:{port}");
        let p = Prometheus { child, addr };
        assert!(
            wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(
                &p.addr
            )
            .is_ok()),
            "prometheus did not come up"
        );
        p
    }

    /// The value of `query` now (a single series), if any.
    fn value(&self, query: &str) -> Option<f64> {
        let q: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let resp = http_get(&self.addr, &format!("/api/v1/query?query={q}"));
        let v: serde_json::Value = serde_json::from_str(body(&resp)).ok()?;
        let r = v["data"]["result"].as_array()?.first()?.clone();
        r["value"][1].as_str()?.parse().ok()
    }
}

#[test]
fn prometheus_scrapes_what_a_read_fetched() {
    let work = tempfile::tempdir().unwrap();
    let (_reg, reference) = registry_with_fixture(work.path());
    let port = free_port();
    let daemon = Daemon::start(
        work.path(),
        &["--metrics-addr", &format!("127.0.0.1:{port}")],
    );
    let metrics = daemon
        .metrics
        .clone()
        .expect("the daemon printed its metrics address");
    assert_eq!(metrics, format!("127.0.0.1:{port}"));
    let health = http_get(&metrics, "/healthz");
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    let ready = http_get(&metrics, "/readyz");
    assert!(ready.contains(" 200 "), "{ready}");

    let prom = Prometheus::start(work.path(), &metrics);
    let query = "dfagent_tier_bytes_total{tier=\"registry\"}";
    let mp = work.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    succeeded(daemon.cli(&[
        "mount",
        &reference,
        mp.to_str().unwrap(),
        "--prefetch",
        "none",
        "--readahead-mib",
        "0",
    ]));
    // The series exists (0) before the read, once Prometheus has scraped.
    let mut before = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            before = prom.value(query);
            before.is_some()
        }),
        "Prometheus never recorded {query}"
    );
    let before = before.unwrap();

    // Read one multi-chunk file: the registry tier's bytes grow by its stored size.
    let data = std::fs::read(mp.join("multi-chunk.bin")).unwrap();
    assert_eq!(data.len(), 2 * (1 << 20) + 12345);
    let img = dfagent_rafs::Image::open(fixture("v6-zstd-blake3").join("bootstrap")).unwrap();
    let nid = img
        .lookup(img.root(), b"multi-chunk.bin")
        .unwrap()
        .unwrap()
        .nid;
    let inode = img.inode(nid).unwrap();
    let stored: u64 = img
        .chunks(&inode, 0, inode.size)
        .unwrap()
        .iter()
        .map(|c| u64::from(c.chunk.compressed_size))
        .sum();
    let max_chunk = img
        .chunks(&inode, 0, inode.size)
        .unwrap()
        .iter()
        .map(|c| u64::from(c.chunk.compressed_size))
        .max()
        .unwrap();
    let mut after = before;
    wait_until(Duration::from_secs(30), || {
        after = prom.value(query).unwrap_or(before);
        after - before >= stored as f64
    });
    let grew = after - before;
    assert!(
        (grew - stored as f64).abs() <= max_chunk as f64,
        "registry bytes grew by {grew}, the file's stored size is {stored}"
    );

    // promtool finds nothing wrong with the exposition.
    let text = body(&http_get(&metrics, "/metrics")).to_string();
    for name in [
        "dfagent_tier_requests_total",
        "dfagent_tier_chunks_total",
        "dfagent_tier_errors_total",
        "dfagent_tier_request_duration_seconds_bucket",
        "dfagent_verify_failures_total",
        "dfagent_cache_hits_total",
        "dfagent_cache_misses_total",
        "dfagent_store_bytes",
        "dfagent_store_chunks",
        "dfagent_store_capacity_bytes",
        "dfagent_store_evictions_total",
        "dfagent_fuse_requests_total{op=\"read\"}",
        "dfagent_fuse_read_duration_seconds_bucket",
        "dfagent_mounts{state=\"serving\"} 1",
        "dfagent_prefetch_bytes_total",
        "dfagent_build_info{version=",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(prom);
    daemon.stop();
}

/// The CLI run as `uid` (with `groups` as its supplementary groups), talking to `daemon`.
fn cli_as(daemon: &Daemon, uid: u32, groups: &[u32], args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.arg(format!(
            "--groups={}",
            groups
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    cmd.arg(env!("CARGO_BIN_EXE_dfagent"))
        .args(args)
        .env("DFAGENT_SOCKET", &daemon.socket)
        .output()
        .unwrap()
}

#[test]
fn the_control_socket_admits_root_and_its_group_only() {
    const GROUP: u32 = 47_110;
    const MEMBER: u32 = 47_111;
    const STRANGER: u32 = 47_112;
    let work = tempfile::tempdir().unwrap();
    // Other users must reach the socket's directory and the mount points.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_reg, reference) = registry_with_fixture(work.path());
    let daemon = Daemon::start(
        work.path(),
        &[
            "--metrics-addr",
            "none",
            "--socket-group",
            &GROUP.to_string(),
        ],
    );
    std::fs::set_permissions(
        work.path().join("run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert_eq!((meta.uid(), meta.gid()), (0, GROUP));
    }

    // A stranger cannot open the socket: the CLI names the socket, its mode and group.
    let out = cli_as(&daemon, STRANGER, &[], &["ps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("permission denied")
            && err.contains(daemon.socket.to_str().unwrap())
            && err.contains("660")
            && err.contains(&GROUP.to_string()),
        "{err}"
    );

    // A careless admin makes the socket world-writable: the server still refuses, by uid.
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = cli_as(&daemon, STRANGER, &[], &["ps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("PermissionDenied") && err.contains(&format!("uid {STRANGER}")),
        "{err}"
    );
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o660)).unwrap();

    // A member of the group mounts a registry image on a directory of its own, and reads it:
    // the mount is the daemon's (root's), so the member asks for --allow-other.
    let mp = work.path().join("member-mnt");
    std::fs::create_dir(&mp).unwrap();
    std::os::unix::fs::chown(&mp, Some(MEMBER), Some(MEMBER)).unwrap();
    let _guard = MountGuard::new(&mp);
    // Set-user-id bits and device files of an image are for root's mounts only.
    for flag in ["--suid", "--dev", "--container-rootfs"] {
        let out = cli_as(
            &daemon,
            MEMBER,
            &[GROUP],
            &["mount", flag, &reference, mp.to_str().unwrap()],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a member mounted with {flag}");
        assert!(
            err.contains("PermissionDenied") && err.contains("root only"),
            "{flag}: {err}"
        );
    }
    assert_eq!(mounts_at(&mp), 0);
    let out = cli_as(
        &daemon,
        MEMBER,
        &[GROUP],
        &["mount", "--allow-other", &reference, mp.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("setpriv")
        .arg(format!("--reuid={MEMBER}"))
        .arg(format!("--regid={MEMBER}"))
        .arg("--clear-groups")
        .arg("cat")
        .arg(mp.join("hello.txt"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello, nydus\n");

    // ... but not a local bootstrap (the daemon would read it with root's rights).
    let mp2 = work.path().join("member-mnt2");
    std::fs::create_dir(&mp2).unwrap();
    std::os::unix::fs::chown(&mp2, Some(MEMBER), Some(MEMBER)).unwrap();
    let img = fixture("v6-zstd-blake3");
    let out = cli_as(
        &daemon,
        MEMBER,
        &[GROUP],
        &[
            "mount",
            "--bootstrap",
            img.join("bootstrap").to_str().unwrap(),
            "--blob-dir",
            img.join("blobs").to_str().unwrap(),
            mp2.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("PermissionDenied") && err.contains("root only"),
        "{err}"
    );
    // Nor on a directory it does not own.
    let rootdir = work.path().join("root-mnt");
    std::fs::create_dir(&rootdir).unwrap();
    let out = cli_as(
        &daemon,
        MEMBER,
        &[GROUP],
        &["mount", &reference, rootdir.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not owned by"));

    succeeded(cli_as(
        &daemon,
        MEMBER,
        &[GROUP],
        &["umount", mp.to_str().unwrap()],
    ));
    daemon.stop();
}

#[test]
fn daemon_mounts_take_their_access_from_the_request_and_the_configuration() {
    let work = tempfile::tempdir().unwrap();
    let (_reg, reference) = registry_with_fixture(work.path());
    // The configuration lets other users into every mount of this daemon.
    let config = work.path().join("config.toml");
    std::fs::write(&config, "[mount]\nallow_other = true\n").unwrap();
    let daemon = Daemon::start(
        work.path(),
        &[
            "--metrics-addr",
            "none",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let plain = work.path().join("plain");
    let special = work.path().join("special");
    let rootfs_dir = tmp_dir("dfagent-daemon-rootfs-");
    let rootfs = rootfs_dir.path().join("mnt");
    for mp in [&plain, &special, &rootfs] {
        std::fs::create_dir(mp).unwrap();
    }
    let _guards = [&plain, &special, &rootfs].map(MountGuard::new);
    let has_all = |mp: &Path, opts: &[&str]| {
        let e = entry_at(mp).expect("mounted");
        for o in opts {
            assert!(
                e.options
                    .split(',')
                    .chain(e.super_options.split(','))
                    .any(|x| x == *o),
                "{o} missing: {}",
                e.line
            );
        }
        e
    };

    // No flags: the configured allow_other, and nosuid, nodev; the source names the digest.
    succeeded(daemon.cli(&["mount", &reference, plain.to_str().unwrap()]));
    let e = has_all(&plain, &["nosuid", "nodev", "allow_other"]);
    let ps = daemon.ps();
    let digest = ps[0]["image_digest"].as_str().unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(e.source, format!("dfagent:{digest}"));

    // --suid --dev from root: honoured.
    succeeded(daemon.cli(&[
        "mount",
        "--suid",
        "--dev",
        &reference,
        special.to_str().unwrap(),
    ]));
    let e = has_all(&special, &["allow_other"]);
    assert!(
        !e.has_option("nosuid") && !e.has_option("nodev"),
        "{}",
        e.line
    );

    // A container rootfs under /tmp: refused by the daemon, naming the directory.
    let out = daemon.cli(&[
        "mount",
        "--container-rootfs",
        &reference,
        rootfs.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a container rootfs was mounted under /tmp"
    );
    assert!(
        err.contains("FailedPrecondition") && err.contains("/tmp is writable by every user"),
        "{err}"
    );
    assert_eq!(mounts_at(&rootfs), 0);

    for mp in [&plain, &special] {
        succeeded(daemon.cli(&["umount", mp.to_str().unwrap()]));
        assert_eq!(mounts_at(mp), 0);
    }
    daemon.stop();
}

#[test]
fn shutdown_detaches_a_busy_mount_and_exits_promptly() {
    let work = tempfile::tempdir().unwrap();
    let (_reg, reference) = registry_with_fixture(work.path());
    let daemon = Daemon::start(work.path(), &["--metrics-addr", "none"]);
    let mp = work.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    succeeded(daemon.cli(&["mount", &reference, mp.to_str().unwrap()]));
    // A reader holds a file open: the mount is busy.
    let held = std::fs::File::open(mp.join("hello.txt")).unwrap();
    let started = Instant::now();
    let st = daemon.stop();
    assert!(st.success());
    eprintln!("stopped in {:?} with a busy mount", started.elapsed());
    // The mount is gone from the namespace (detached) even though the file is still open.
    assert_eq!(mounts_at(&mp), 0);
    drop(held);
}
