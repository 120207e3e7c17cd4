//! [`DfdaemonSeed`]: a real `dfdaemon` (Dragonfly's client, 1.5.10) as a super seed peer for
//! tests, attached to a [`TestScheduler`].
//!
//! Its configuration (keys read in `dragonfly-client-config-1.5.10/src/dfdaemon.rs`) keeps
//! everything inside one test directory and on one address (127.0.0.1 unless [`SeedOptions::ip`]): a unique hostname, `host.ip`
//! that address, every listening port its own free port (upload gRPC, proxy, health, metrics,
//! stats, piece server TCP and QUIC), storage, cache, plugin dir, download socket and logs under
//! the directory, `seedPeer: {enable: true, type: super}`, no manager (so the scheduler comes
//! from the dynconfig file given with `--dynconfig`, which names the test scheduler), a short
//! announce interval and GC thresholds that do not evict during a test. It is started with
//! `--log-dir` in the directory (`dfdaemon.log`; stdout and stderr go to `dfdaemon.out`), and
//! start-up waits (bounded) until the scheduler has its AnnounceHost, `/healthy` answers on the
//! health port, and the proxy and upload ports accept connections. Dropping it kills it
//! (SIGKILL) and reaps it; [`DfdaemonSeed::kill`] does so early (a seed dying mid-read).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::dfdaemon_path;
use super::scheduler::TestScheduler;
use crate::net::free_port;

/// How long a seed may take to announce itself and open its ports.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Options for a [`DfdaemonSeed`].
#[derive(Clone, Debug, Default)]
pub struct SeedOptions {
    /// `proxy.prefetch`: fetch the whole task in the background when a range is asked (the
    /// `X-Dragonfly-Prefetch` header overrides it per request).
    pub prefetch: bool,
    /// `--log-level` (default `info`).
    pub log_level: Option<String>,
    /// The address it announces and listens on (default 127.0.0.1; e.g. a test bridge's
    /// address, so nodes in network namespaces reach it).
    pub ip: Option<IpAddr>,
}

/// A running dfdaemon seed peer; killed on drop.
pub struct DfdaemonSeed {
    child: Option<Child>,
    ip: IpAddr,
    hostname: String,
    upload_port: u16,
    proxy_port: u16,
    health_port: u16,
    storage_port: u16,
    // Dropped after the process is killed (fields drop after `Drop::drop`).
    dir: tempfile::TempDir,
}

/// Ports of one seed.
struct Ports {
    upload: u16,
    proxy: u16,
    health: u16,
    metrics: u16,
    stats: u16,
    storage_tcp: u16,
    storage_quic: u16,
}

impl Ports {
    fn pick() -> Ports {
        // Bound 100 tries: free ports are released before dfdaemon binds them, so two picks may
        // collide; ask again until all seven differ.
        for _ in 0..100 {
            let v: Vec<u16> = (0..7).map(|_| free_port()).collect();
            let mut s = v.clone();
            s.sort_unstable();
            s.dedup();
            if s.len() == v.len() {
                return Ports {
                    upload: v[0],
                    proxy: v[1],
                    health: v[2],
                    metrics: v[3],
                    stats: v[4],
                    storage_tcp: v[5],
                    storage_quic: v[6],
                };
            }
        }
        panic!("no seven distinct free ports after 100 tries");
    }
}

fn config_yaml(dir: &Path, hostname: &str, ip: IpAddr, p: &Ports, opts: &SeedOptions) -> String {
    let d = dir.display();
    format!(
        "host:
  hostname: {hostname}
  ip: {ip}
server:
  pluginDir: {d}/plugins
  cacheDir: {d}/cache
download:
  server:
    socketPath: {d}/dfdaemon.sock
upload:
  server:
    ip: {ip}
    port: {upload}
scheduler:
  announceInterval: 10s
  scheduleTimeout: 60s
seedPeer:
  enable: true
  type: super
dynconfig:
  refreshInterval: 30s
storage:
  server:
    ip: {ip}
    tcpPort: {tcp}
    quicPort: {quic}
  dir: {d}/storage
  keep: false
gc:
  interval: 600s
  policy:
    taskTTL: 1h
    diskHighThresholdPercent: 98
    diskLowThresholdPercent: 95
proxy:
  server:
    ip: {ip}
    port: {proxy}
  prefetch: {prefetch}
health:
  server:
    ip: {ip}
    port: {health}
metrics:
  server:
    ip: {ip}
    port: {metrics}
stats:
  server:
    ip: {ip}
    port: {stats}
",
        upload = p.upload,
        tcp = p.storage_tcp,
        quic = p.storage_quic,
        proxy = p.proxy,
        prefetch = opts.prefetch,
        health = p.health,
        metrics = p.metrics,
        stats = p.stats,
    )
}

/// Whether `GET /healthy` on `addr` answers 200 (bounded to a few seconds).
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(
        format!("GET /healthy HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

impl DfdaemonSeed {
    /// Start a seed announcing itself to `scheduler`, with default options (no prefetch unless
    /// the request asks for it).
    pub fn start(scheduler: &TestScheduler) -> DfdaemonSeed {
        Self::start_with(scheduler, SeedOptions::default())
    }

    /// Start a seed with `opts`; fails the test if the binary is missing or the seed is not up
    /// within [`START_TIMEOUT`] (with its log).
    pub fn start_with(scheduler: &TestScheduler, opts: SeedOptions) -> DfdaemonSeed {
        let bin = dfdaemon_path();
        assert!(
            bin.is_file(),
            "dfdaemon {} not found at {} (set DFAGENT_DFDAEMON, or run scripts/setup.sh, which \
             installs it)",
            super::DFDAEMON_VERSION,
            bin.display()
        );
        let dir = crate::tmp_dir("dfagent-dfdaemon-");
        let ports = Ports::pick();
        let ip = opts.ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let unique = dir
            .path()
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "")
            })
            .unwrap_or_default();
        let hostname = format!("dfagent-seed-{}-{unique}", std::process::id());
        let config = dir.path().join("dfdaemon.yaml");
        std::fs::write(
            &config,
            config_yaml(dir.path(), &hostname, ip, &ports, &opts),
        )
        .expect("writing dfdaemon.yaml");
        let dynconfig = dir.path().join("dynconfig.yaml");
        std::fs::write(
            &dynconfig,
            format!("scheduler:\n  addr: {}\n", scheduler.addr()),
        )
        .expect("writing dynconfig.yaml");
        let out = std::fs::File::create(dir.path().join("dfdaemon.out")).expect("dfdaemon.out");
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .arg("--dynconfig")
            .arg(&dynconfig)
            .arg("--log-dir")
            .arg(dir.path())
            .arg("--log-level")
            .arg(opts.log_level.as_deref().unwrap_or("info"))
            .env_remove("DFDAEMON_CONFIG")
            .env_remove("DFDAEMON_DYNCONFIG")
            .env_remove("DFDAEMON_CONSOLE")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dfdaemon.out"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut seed = DfdaemonSeed {
            child: Some(child),
            ip,
            hostname,
            upload_port: ports.upload,
            proxy_port: ports.proxy,
            health_port: ports.health,
            storage_port: ports.storage_tcp,
            dir,
        };
        seed.wait_ready(scheduler);
        seed
    }

    fn wait_ready(&mut self, scheduler: &TestScheduler) {
        let start = Instant::now();
        let deadline = start + START_TIMEOUT;
        let host_id = self.host_id();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "dfdaemon exited with {status} during start-up:\n{}",
                        self.log()
                    );
                }
            }
            if scheduler.host(&host_id).is_some()
                && healthy(SocketAddr::new(self.ip, self.health_port))
                && accepts(self.proxy_addr())
                && accepts(self.upload_addr())
            {
                tracing::info!(%host_id, elapsed_ms = start.elapsed().as_millis() as u64,
                               "dfdaemon seed ready");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dfdaemon seed {host_id} not ready after {START_TIMEOUT:?} (announced: {}):\n{}",
                scheduler.host(&host_id).is_some(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The host id it announces (`IP-HOSTNAME-seed`).
    pub fn host_id(&self) -> String {
        format!("{}-{}-seed", self.ip, self.hostname)
    }

    /// Its process id while it runs (for a harness that must kill it on an interrupt).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Its hostname.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Its HTTP proxy (`proxy.server`).
    pub fn proxy_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.proxy_port)
    }

    /// Its upload gRPC server (DfdaemonUpload; the host's `port`).
    pub fn upload_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.upload_port)
    }

    /// Its piece server (TCP).
    pub fn storage_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.storage_port)
    }

    /// Its test directory (configuration, storage, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("dfdaemon.log")
    }

    /// What it logged so far (the log file, then stdout and stderr).
    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let out = std::fs::read_to_string(self.dir.path().join("dfdaemon.out")).unwrap_or_default();
        if !out.is_empty() {
            s.push_str("\n--- stdout/stderr ---\n");
            s.push_str(&out);
        }
        s
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Kill it now (SIGKILL) and reap it; a no-op when already killed.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::process::kill(&mut c);
        }
    }
}

impl Drop for DfdaemonSeed {
    fn drop(&mut self) {
        self.kill();
    }
}
