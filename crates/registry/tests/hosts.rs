//! Per-host settings of the registry client against real `docker-registry` processes on
//! 127.0.0.1: mirrors tried in order before the host (a mirror holding the image serves every
//! read and the host sees nothing; dead, failing and empty mirrors fall back, the failing ones
//! held off), and credentials from the configuration winning over the docker config's, without
//! ever showing up in an error. Every wait is bounded.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use dfagent_registry::{
    HostConfig, HostCredentials, NydusImage, Registry, RegistryConfig, RegistryError, Secret,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FIXTURE: &str = "v6-zstd-blake3";
const OP_TIMEOUT: Duration = Duration::from_secs(60);

fn fixture() -> (PathBuf, PathBuf) {
    let shared = std::env::var_os("DFAGENT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let dir = shared.join("fixtures/rafs").join(FIXTURE);
    (dir.join("bootstrap"), dir.join("blobs"))
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(OP_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {OP_TIMEOUT:?}"))
}

/// A docker-registry process on 127.0.0.1, killed on drop.
struct RegistryProc {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl RegistryProc {
    /// Start a registry whose config gets `auth_yaml` (an `auth:` section, or empty).
    fn start(auth_yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n\
             http:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
            root = dir.path().join("data").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry (Debian package docker-registry)");
        let mut me = Self { child, port, dir };
        me.wait_ready();
        me
    }

    /// Poll `GET /v2/` until the registry answers anything HTTP, for up to 15 s.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "docker-registry exited with {status}: {}",
                    std::fs::read_to_string(self.dir.path().join("registry.log"))
                        .unwrap_or_default()
                );
            }
            if let Ok(mut s) = StdStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry on port {} not ready after 15 s", self.port);
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for RegistryProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy on 127.0.0.1 that records the request line of every request and either forwards
/// it (one request per connection) to `upstream` or answers `status` with an empty body.
struct Proxy {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: Option<u16>, status: Option<u16>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let log = log2.clone();
                tokio::spawn(async move {
                    let _ = proxy_one(conn, upstream, status, log).await;
                });
            }
        });
        Self { port, log, task }
    }

    /// Forward everything to `upstream`.
    async fn forward(upstream: u16) -> Self {
        Self::start(Some(upstream), None).await
    }

    /// Answer every request with `status`.
    async fn failing(status: u16) -> Self {
        Self::start(None, Some(status)).await
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().expect("log"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy_one(
    mut conn: TcpStream,
    upstream: Option<u16>,
    status: Option<u16>,
    log: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    // The request head; the body (pushes) follows in the copy below.
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut tmp = [0u8; 8192];
        let n = conn.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let line = head.lines().next().unwrap_or_default().to_string();
    log.lock().expect("log").push(line);
    let (Some(up), None) = (upstream, status) else {
        let code = status.unwrap_or(502);
        let resp =
            format!("HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        conn.write_all(resp.as_bytes()).await?;
        return conn.shutdown().await;
    };
    let mut out = String::new();
    for l in head.split("\r\n").filter(|l| !l.is_empty()) {
        if !l.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut upstream = TcpStream::connect(("127.0.0.1", up)).await?;
    upstream.write_all(out.as_bytes()).await?;
    upstream.write_all(&buf[head_end..]).await?;
    // The rest of a request body one way, the response the other, until both close.
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    Ok(())
}

/// A client that never reads the machine's docker config, with `hosts`.
fn client(dir: &Path, hosts: BTreeMap<String, HostConfig>, holdoff: Duration) -> Registry {
    Registry::new(RegistryConfig {
        docker_config: Some(dir.join("no-docker-config.json")),
        hosts,
        mirror_holdoff: holdoff,
        retries: 1,
        retry_base_delay: Duration::from_millis(10),
        ..RegistryConfig::default()
    })
    .expect("Registry::new")
}

fn mirrored(host: &str, mirrors: &[String]) -> BTreeMap<String, HostConfig> {
    BTreeMap::from([(
        host.to_string(),
        HostConfig {
            mirrors: mirrors.to_vec(),
            ..HostConfig::default()
        },
    )])
}

/// Push the fixture to `registry` (host:port) as `mirrors/app:v1`.
async fn push_fixture(reg: &Registry, registry: &str) -> String {
    let (bootstrap, blobs) = fixture();
    let reference = format!("{registry}/mirrors/app:v1");
    within("push", reg.push_nydus(&reference, &bootstrap, &blobs))
        .await
        .expect("push_nydus");
    reference
}

/// Every read of the image `reference`: resolve, bootstrap, a range of each blob, one whole
/// blob downloaded; all bytes checked against the fixture.
async fn read_everything(reg: &Registry, reference: &str, tmp: &Path) -> NydusImage {
    let (bootstrap, blobs) = fixture();
    let img = within("resolve", reg.resolve(reference))
        .await
        .expect("resolve");
    let boot = within("fetch_bootstrap", reg.fetch_bootstrap(&img))
        .await
        .expect("fetch_bootstrap");
    assert_eq!(boot, std::fs::read(&bootstrap).expect("bootstrap"));
    for (id, size) in &img.blobs {
        let data = std::fs::read(blobs.join(id.hex())).expect("fixture blob");
        let range = size / 3..(size / 3 + 1000).min(*size);
        let got = within("read_range", reg.read_range(&img, id, range.clone()))
            .await
            .expect("read_range");
        assert_eq!(&got[..], &data[range.start as usize..range.end as usize]);
    }
    let (id, size) = img.blobs[0];
    let dest = tmp.join("downloaded");
    within(
        "download_blob",
        reg.download_blob(reference, &id.oci_digest(), size, &dest),
    )
    .await
    .expect("download_blob");
    assert_eq!(
        std::fs::read(&dest).expect("downloaded"),
        std::fs::read(blobs.join(id.hex())).expect("fixture blob")
    );
    img
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_holding_the_image_serves_every_read() {
    let host_proc = RegistryProc::start("");
    let mirror_proc = RegistryProc::start("");
    let host = Proxy::forward(host_proc.port).await;
    let mirror = Proxy::forward(mirror_proc.port).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let plain = client(tmp.path(), BTreeMap::new(), Duration::from_secs(30));
    let reference = push_fixture(&plain, &host.addr()).await;
    push_fixture(&plain, &mirror.addr()).await;
    host.take_log();
    mirror.take_log();

    let reg = client(
        tmp.path(),
        mirrored(&host.addr(), &[mirror.addr()]),
        Duration::from_secs(30),
    );
    let img = read_everything(&reg, &reference, tmp.path()).await;
    assert_eq!(
        img.registry,
        host.addr(),
        "the image still names its own registry"
    );
    assert_eq!(
        host.take_log(),
        Vec::<String>::new(),
        "no request reached the host"
    );
    let seen = mirror.take_log();
    assert!(
        seen.iter()
            .any(|l| l.contains("/v2/mirrors/app/manifests/v1"))
            && seen.iter().filter(|l| l.contains("/blobs/sha256:")).count() >= 3,
        "{seen:#?}"
    );

    // Pushes go to the host, never to a mirror.
    let (bootstrap, blobs) = fixture();
    let pushed = format!("{}/mirrors/app:v2", host.addr());
    within("push", reg.push_nydus(&pushed, &bootstrap, &blobs))
        .await
        .expect("push through a mirrored client");
    assert!(mirror.take_log().is_empty());
    assert!(!host.take_log().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_failing_and_empty_mirrors_fall_back_in_order() {
    let host_proc = RegistryProc::start("");
    let good_proc = RegistryProc::start("");
    let empty_proc = RegistryProc::start("");
    let host = Proxy::forward(host_proc.port).await;
    let good = Proxy::forward(good_proc.port).await;
    let empty = Proxy::forward(empty_proc.port).await;
    let failing = Proxy::failing(503).await;
    let dead = format!("127.0.0.1:{}", free_port());
    let tmp = tempfile::tempdir().expect("tempdir");
    let plain = client(tmp.path(), BTreeMap::new(), Duration::from_secs(30));
    let reference = push_fixture(&plain, &host.addr()).await;
    push_fixture(&plain, &good.addr()).await;
    for p in [&host, &good, &empty] {
        p.take_log();
    }

    // dead (connection refused) → failing (503) → empty (404) → good: served by good.
    let order = [dead.clone(), failing.addr(), empty.addr(), good.addr()];
    let reg = client(
        tmp.path(),
        mirrored(&host.addr(), &order),
        Duration::from_secs(60),
    );
    read_everything(&reg, &reference, tmp.path()).await;
    assert!(host.take_log().is_empty(), "the host is not asked");
    // (Besides the `GET /v2/` probes of authentication.)
    let failing_log = failing.take_log();
    assert_eq!(
        failing_log
            .iter()
            .filter(|l| !l.starts_with("GET /v2/ "))
            .count(),
        1,
        "a 5xx mirror is asked once, then held off: {failing_log:#?}"
    );
    let empty_log = empty.take_log();
    assert!(
        empty_log.iter().any(|l| l.contains("/manifests/v1")),
        "{empty_log:#?}"
    );
    assert!(!good.take_log().is_empty());

    // Without a good mirror, reads end at the host.
    let order = [dead.clone(), empty.addr()];
    let reg = client(
        tmp.path(),
        mirrored(&host.addr(), &order),
        Duration::from_secs(60),
    );
    read_everything(&reg, &reference, tmp.path()).await;
    assert!(!host.take_log().is_empty());
    assert!(good.take_log().is_empty());

    // With no hold-off, the failing mirror is asked before every read; the answers are still
    // right.
    let reg = client(
        tmp.path(),
        mirrored(&host.addr(), &[failing.addr()]),
        Duration::ZERO,
    );
    read_everything(&reg, &reference, tmp.path()).await;
    let failing_log = failing.take_log();
    assert!(
        failing_log
            .iter()
            .filter(|l| !l.starts_with("GET /v2/ "))
            .count()
            >= 4,
        "{failing_log:#?}"
    );

    // The host's error is the one returned when nothing has the image.
    let missing = format!("{}/mirrors/none:v1", host.addr());
    let e = within("resolve", reg.resolve(&missing)).await.unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("mirrors/none"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_credentials_win_over_the_docker_config_and_never_show() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let htpasswd = tmp.path().join("htpasswd");
    let hash = bcrypt::hash_with_result("s3cret-pw", 4)
        .expect("bcrypt")
        .format_for_version(bcrypt::Version::TwoY);
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).expect("htpasswd");
    let reg_proc = RegistryProc::start(&format!(
        "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
        htpasswd.display()
    ));
    let addr = reg_proc.addr();
    // The docker config holds a wrong password for the registry.
    let docker_config = tmp.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:wrong-pw");
    std::fs::write(
        &docker_config,
        serde_json::json!({"auths": {&addr: {"auth": auth}}}).to_string(),
    )
    .expect("docker config");
    let with = |credentials: Option<HostCredentials>| {
        Registry::new(RegistryConfig {
            docker_config: Some(docker_config.clone()),
            hosts: BTreeMap::from([(
                addr.clone(),
                HostConfig {
                    credentials,
                    ..HostConfig::default()
                },
            )]),
            retries: 0,
            ..RegistryConfig::default()
        })
        .expect("Registry::new")
    };

    // The docker config's wrong password is refused.
    let (bootstrap, blobs) = fixture();
    let reference = format!("{addr}/creds/app:v1");
    let e = within(
        "push",
        with(None).push_nydus(&reference, &bootstrap, &blobs),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, RegistryError::Auth { .. }), "{e}");
    assert!(!e.to_string().contains("wrong-pw"), "{e}");

    // The configuration's credentials win.
    let basic = with(Some(HostCredentials::Basic {
        username: "alice".into(),
        password: Secret::new("s3cret-pw"),
    }));
    assert!(!format!("{basic:?}").contains("s3cret-pw"));
    within("push", basic.push_nydus(&reference, &bootstrap, &blobs))
        .await
        .expect("push with configured credentials");
    read_everything(&basic, &reference, tmp.path()).await;

    // From a credential file, `user:password` or docker-config JSON.
    let file = tmp.path().join("cred");
    std::fs::write(&file, "alice:s3cret-pw\n").expect("cred file");
    read_everything(
        &with(Some(HostCredentials::File(file.clone()))),
        &reference,
        tmp.path(),
    )
    .await;
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pw");
    std::fs::write(
        &file,
        serde_json::json!({"auths": {&addr: {"auth": auth}}}).to_string(),
    )
    .expect("cred file");
    read_everything(
        &with(Some(HostCredentials::File(file.clone()))),
        &reference,
        tmp.path(),
    )
    .await;

    // Wrong configured credentials: refused, and the password is in no error.
    let wrong = with(Some(HostCredentials::Basic {
        username: "alice".into(),
        password: Secret::new("not-the-pw"),
    }));
    let e = within("resolve", wrong.resolve(&reference))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Auth { .. }), "{e}");
    assert!(!format!("{e} {e:?}").contains("not-the-pw"), "{e:?}");

    // A credential file that is not one: an error naming the file, not its content.
    std::fs::write(&file, "s3cret-pw\n").expect("cred file");
    let e = Registry::new(RegistryConfig {
        hosts: BTreeMap::from([(
            addr.clone(),
            HostConfig {
                credentials: Some(HostCredentials::File(file.clone())),
                ..HostConfig::default()
            },
        )]),
        ..RegistryConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("cred") && !e.contains("s3cret-pw"), "{e}");
}
