//! A real registry: Debian's `docker-registry` (distribution 2.8) serving from a temporary
//! directory, on a free 127.0.0.1 port or on a given address (a bridge address in a network
//! namespace the test made), over plain HTTP or over TLS with a certificate of a test CA made
//! for its address ([`RegistryBuilder::tls`]). Start-up is bounded; the process is killed and its
//! directory removed on drop.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::free_addr;

/// How long the registry may take to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The registry's configuration: storage under `root` (deletes allowed), listening on `addr`,
/// warnings only, no access log; `extra` is appended as is (an `auth:` section, ...).
pub fn config_yaml(root: &Path, addr: SocketAddr, extra: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n{extra}",
        root = root.display(),
    )
}

/// Whether something at `addr` answers `GET /v2/` with an HTTP status line (200, or 401 for a
/// registry with authentication); each probe is bounded to a few seconds.
pub fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}

/// How to start a [`Registry`].
#[derive(Clone, Debug, Default)]
pub struct RegistryBuilder {
    addr: Option<SocketAddr>,
    extra: String,
    htpasswd: Option<String>,
    tls: bool,
}

impl RegistryBuilder {
    /// Listen on `addr` (default: a free 127.0.0.1 port).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Append `yaml` to the configuration (an `auth:` section for htpasswd or token auth).
    pub fn config_extra(mut self, yaml: &str) -> Self {
        self.extra.push_str(yaml);
        self
    }

    /// Require HTTP basic auth as `user`/`password` (an htpasswd file with a bcrypt hash, kept
    /// beside the registry's data).
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        let hash = bcrypt::hash_with_result(password, 4)
            .expect("bcrypt")
            .format_for_version(bcrypt::Version::TwoY);
        self.htpasswd = Some(format!("{user}:{hash}\n"));
        self
    }

    /// Serve HTTPS with a certificate for its address signed by a CA made for this registry
    /// ([`Registry::ca_file`] is the CA's PEM, what a client must trust).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Start it and wait (bounded) until it answers; fails with its log if it does not.
    pub fn start(mut self) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("dfagent-registry-")
            .tempdir()
            .expect("creating the registry's directory");
        let addr = self.addr.unwrap_or_else(free_addr);
        if let Some(entries) = self.htpasswd.take() {
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, entries).expect("writing htpasswd");
            self.extra.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
                file.display()
            ));
        }
        if self.tls {
            let (cert, key) = write_tls_files(dir.path(), addr);
            // Continues the `http:` mapping that `config_yaml` ends with.
            self.extra.insert_str(
                0,
                &format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                ),
            );
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            config_yaml(&dir.path().join("data"), addr, &self.extra),
        )
        .expect("writing the registry's configuration");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("registry log"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry (Debian package docker-registry; scripts/setup.sh installs it)");
        let mut r = Registry { child, addr, dir };
        r.wait_ready();
        r
    }
}

/// A running `docker-registry`, killed on drop (its data directory goes with it).
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    // Dropped after the process is killed (fields drop after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl Registry {
    /// A registry on a free 127.0.0.1 port.
    pub fn start() -> Registry {
        Self::builder().start()
    }

    /// A registry listening on `addr` (such as a bridge address of a test's network namespace).
    pub fn start_on(addr: SocketAddr) -> Registry {
        Self::builder().addr(addr).start()
    }

    /// Options: address, extra configuration.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited with {status}: {}", self.log());
            }
            if answers(self.addr) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry on {} not ready after {READY_TIMEOUT:?}: {}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `HOST:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The PEM of the CA that signed its certificate (a registry started with
    /// [`RegistryBuilder::tls`]; the file does not exist otherwise).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Its temporary directory (configuration, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// A test CA (`dir/ca.pem`) and a server certificate for `addr`'s IP signed by it
/// (`dir/server.pem`, `dir/server-key.pem`); the certificate and key paths.
fn write_tls_files(dir: &Path, addr: SocketAddr) -> (PathBuf, PathBuf) {
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA certificate parameters");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dfagent test registry CA");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-signing the CA");
    let params = rcgen::CertificateParams::new(vec![addr.ip().to_string()])
        .expect("server certificate parameters");
    let key = rcgen::KeyPair::generate().expect("server key");
    let cert = params
        .signed_by(&key, &ca)
        .expect("signing the server certificate");
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server-key.pem"));
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("writing ca.pem");
    std::fs::write(&cert_path, cert.pem()).expect("writing server.pem");
    std::fs::write(&key_path, key.serialize_pem()).expect("writing server-key.pem");
    (cert_path, key_path)
}

impl Drop for Registry {
    fn drop(&mut self) {
        crate::process::kill(&mut self.child);
    }
}
