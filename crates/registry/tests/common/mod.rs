//! Helpers shared by the registry crate's integration tests: clients that read credentials only
//! from a docker config the test wrote, the fixture images' files, and a registry behind a token
//! service with the image pushed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use dfagent_core::BlobId;
use dfagent_registry::{Registry, RegistryConfig};
use dfagent_test_support::proxy::Proxy;
use dfagent_test_support::registry::Registry as RegistryProc;
use dfagent_test_support::token::{ExpiresIn, TokenServer};
use dfagent_test_support::wait::within;

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A client that reads credentials only from `docker_config` (a file in a temp dir), retrying
/// `retries` times with a 10 ms first backoff.
pub fn client_with(docker_config: PathBuf, retries: u32) -> Registry {
    Registry::new(RegistryConfig {
        docker_config: Some(docker_config),
        retries,
        retry_base_delay: Duration::from_millis(10),
        ..RegistryConfig::default()
    })
    .expect("Registry::new")
}

/// A client without credentials.
pub fn anonymous_client(dir: &Path) -> Registry {
    client_with(dir.join("no-such-config.json"), 4)
}

/// A docker config in `dir` giving `user`/`pass` for `registry`.
pub fn write_docker_config(dir: &Path, registry: &str, user: &str, pass: &str) -> PathBuf {
    write_docker_config_for(dir, &[registry], user, pass)
}

/// A docker config in `dir` giving `user`/`pass` for each of `registries`.
pub fn write_docker_config_for(dir: &Path, registries: &[&str], user: &str, pass: &str) -> PathBuf {
    let path = dir.join("config.json");
    let auth = b64(format!("{user}:{pass}").as_bytes());
    let auths: serde_json::Map<String, serde_json::Value> = registries
        .iter()
        .map(|r| (r.to_string(), serde_json::json!({ "auth": auth })))
        .collect();
    let cfg = serde_json::json!({ "auths": auths });
    std::fs::write(&path, cfg.to_string()).expect("write docker config");
    path
}

/// `(bootstrap, blob dir)` of fixture image `name`.
pub fn fixture(name: &str) -> (PathBuf, PathBuf) {
    let dir = dfagent_test_support::fixtures::fixture(name);
    (dir.join("bootstrap"), dir.join("blobs"))
}

/// The bytes of data blob `id` of fixture image `name`.
pub fn blob_bytes(name: &str, id: &BlobId) -> Vec<u8> {
    std::fs::read(fixture(name).1.join(id.hex())).expect("fixture blob")
}

/// The image the token and fault tests read: two data blobs, 6.5 MB, many chunks.
pub const IMAGE: &str = "v6-chunkdict";

/// A registry with token authentication, a recording proxy in front of it, the image pushed
/// (straight to the registry), and a client with the right credentials for both addresses.
pub struct TokenSetup {
    pub tokens: TokenServer,
    pub proxy: Proxy,
    /// The image through the proxy.
    pub reference: String,
    pub client: Registry,
    // Dropped last: the registry, then its directory.
    _registry: RegistryProc,
    _tmp: tempfile::TempDir,
}

pub async fn token_setup(lifetime: Duration, expires_in: ExpiresIn) -> TokenSetup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tokens = TokenServer::builder()
        .credentials("carol", "t0ken-pw")
        .lifetime(lifetime)
        .expires_in(expires_in)
        .start();
    let registry = RegistryProc::builder()
        .config_extra(&tokens.registry_config())
        .start();
    let proxy = Proxy::forward(registry.addr());
    let config = write_docker_config_for(
        tmp.path(),
        &[&registry.host(), &proxy.host()],
        "carol",
        "t0ken-pw",
    );
    let client = client_with(config, 4);
    let (bootstrap, blobs) = fixture(IMAGE);
    let direct = format!("{}/team/app:v1", registry.host());
    let pushed = within("push", client.push_nydus(&direct, &bootstrap, &blobs)).await;
    if pushed.is_err() {
        eprintln!("registry log:\n{}", registry.log());
    }
    pushed.expect("push with short-lived tokens");
    TokenSetup {
        tokens,
        reference: format!("{}/team/app:v1", proxy.host()),
        proxy,
        client,
        _registry: registry,
        _tmp: tmp,
    }
}

/// A `tracing` writer that keeps everything written.
#[derive(Clone, Default)]
pub struct LogSink(Arc<Mutex<Vec<u8>>>);

impl LogSink {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log sink")).into_owned()
    }
}

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log sink").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogSink;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
