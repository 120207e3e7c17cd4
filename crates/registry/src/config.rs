//! Client configuration, the plain-HTTP rule for registries, and credentials read from a docker
//! `config.json`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};

/// How the agent talks to registries.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`, or a bare host for every port) served over plain HTTP.
    /// `localhost`, `127.0.0.0/8` and `::1` are always plain HTTP, as Docker does, so a local
    /// test registry needs no entry here.
    pub insecure: Vec<String>,
    /// A PEM file of extra CA certificates trusted for HTTPS registries (besides the system's).
    pub extra_ca: Option<PathBuf>,
    /// The docker `config.json` to take credentials from. `None` means
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; a missing file means
    /// anonymous access.
    pub docker_config: Option<PathBuf>,
    /// Time allowed to establish a connection (default 3 s).
    pub connect_timeout: Duration,
    /// Longest silence allowed while waiting for response bytes (default 30 s), so a stalled
    /// registry fails a request instead of hanging it.
    pub read_timeout: Duration,
    /// How many times a request that failed transiently (connection error, 429, 5xx) is tried
    /// again, with exponential backoff and jitter (default 4).
    pub retries: u32,
    /// First backoff delay; doubled after each retry, capped at 5 s (default 100 ms).
    pub retry_base_delay: Duration,
    /// Platform `(os, architecture)` picked from image indexes, in OCI spelling (default
    /// `("linux", "amd64")`); also written into the config of images we push.
    pub platform: (String, String),
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            extra_ca: None,
            docker_config: None,
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(30),
            retries: 4,
            retry_base_delay: Duration::from_millis(100),
            platform: ("linux".to_string(), "amd64".to_string()),
        }
    }
}

impl RegistryConfig {
    /// Whether `registry` (`host[:port]`) is reached over plain HTTP: loopback always, plus
    /// the hosts listed in [`RegistryConfig::insecure`].
    pub fn is_plain_http(&self, registry: &str) -> bool {
        let host = host_of(registry);
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            if ip.is_loopback() {
                return true;
            }
        }
        self.insecure
            .iter()
            .any(|i| i == registry || (!i.contains(':') && i.eq_ignore_ascii_case(host)))
    }
}

/// The host part of `host[:port]` (IPv6 literals in brackets lose their brackets).
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    }
}

/// Credentials by registry host, read from a docker `config.json`.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    by_host: HashMap<String, (String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: HashMap<String, DockerAuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize)]
struct DockerAuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The key docker uses for a registry, reduced to `host[:port]`: scheme and path dropped, and
/// Docker Hub's aliases folded into one.
pub(crate) fn normalize_registry(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match k.as_str() {
        "docker.io" | "registry-1.docker.io" | "index.docker.io" => "index.docker.io".to_string(),
        _ => k,
    }
}

impl Credentials {
    /// The default location of the docker config: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`.
    pub(crate) fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
    }

    /// Read `path`. A missing file gives no credentials; a file that does not parse is an
    /// error (silently going anonymous would hide the mistake until a 401).
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(path = %path.display(), "no docker config, registries are accessed anonymously");
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(Error::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parse the JSON text of a docker config.
    pub(crate) fn parse(text: &[u8]) -> std::result::Result<Self, String> {
        let file: DockerConfigFile =
            serde_json::from_slice(text).map_err(|e| format!("not a docker config.json: {e}"))?;
        if let Some(store) = &file.creds_store {
            tracing::warn!(store = %store, "docker credential stores are not supported; using only `auths`");
        }
        if !file.cred_helpers.is_empty() {
            tracing::warn!("docker credential helpers are not supported; using only `auths`");
        }
        let mut by_host = HashMap::new();
        for (key, entry) in file.auths {
            let host = normalize_registry(&key);
            let pair = if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|e| format!("auths.{key}.auth is not base64: {e}"))?;
                let text = String::from_utf8(raw)
                    .map_err(|_| format!("auths.{key}.auth is not UTF-8 user:password"))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
                (u.to_string(), p.to_string())
            } else if let (Some(u), Some(p)) = (entry.username, entry.password) {
                (u, p)
            } else {
                if entry.identitytoken.is_some() {
                    tracing::warn!(registry = %key, "identity tokens are not supported; ignoring entry");
                }
                continue;
            };
            by_host.insert(host, pair);
        }
        Ok(Self { by_host })
    }

    /// User and password for `registry` (`host[:port]`), if the config has them.
    pub(crate) fn get(&self, registry: &str) -> Option<&(String, String)> {
        self.by_host.get(&normalize_registry(registry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_hosts_are_plain_http() {
        let c = RegistryConfig {
            insecure: vec!["reg.lan:5000".into(), "mirror".into()],
            ..Default::default()
        };
        assert!(c.is_plain_http("localhost:5000"));
        assert!(c.is_plain_http("127.0.0.1:1234"));
        assert!(c.is_plain_http("127.3.2.1"));
        assert!(c.is_plain_http("[::1]:5000"));
        assert!(c.is_plain_http("reg.lan:5000"));
        assert!(!c.is_plain_http("reg.lan:5001"));
        assert!(c.is_plain_http("mirror:8080"));
        assert!(!c.is_plain_http("ghcr.io"));
        assert!(!c.is_plain_http("10.0.0.1:5000"));
    }

    #[test]
    fn reads_auth_and_username_password() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
            "127.0.0.1:5000":{"username":"u2","password":"p2"},
            "other":{}
        }}"#;
        let c = Credentials::parse(json).unwrap();
        assert_eq!(
            c.get("docker.io"),
            Some(&("user".to_string(), "pa:ss".to_string()))
        );
        assert_eq!(c.get("127.0.0.1:5000").unwrap().0, "u2");
        assert!(c.get("other").is_none());
        assert!(Credentials::parse(br#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());
        assert!(Credentials::parse(b"not json").is_err());
    }
}
