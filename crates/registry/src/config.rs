//! Client configuration: per-host settings (plain HTTP, mirrors, credentials), the plain-HTTP
//! rule for registries, credentials read from a docker `config.json` or a credential file, and
//! [`Secret`], the password type that never prints.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{RegistryError, Result};

/// What a [`Secret`] shows wherever it is printed or serialized.
pub const REDACTED: &str = "<redacted>";

/// A secret (a registry password). `Debug`, `Display` and `Serialize` all give
/// [`REDACTED`], so a secret cannot reach a log line, an error message or a printed
/// configuration by accident; [`Secret::expose`] is the one way to the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends it (the registry's authentication).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl serde::Serialize for Secret {
    /// Always [`REDACTED`]: serialized configurations are for showing, never for keeping secrets.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Credentials for one registry host given in the agent's configuration (they take precedence
/// over the docker config's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostCredentials {
    /// A user name and password.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// A file read when the client is made: either one line `user:password`, or a docker
    /// `config.json` (e.g. a Kubernetes `.dockerconfigjson` secret) whose `auths` entry for the
    /// host is used.
    File(PathBuf),
}

/// Settings of one registry host (`host[:port]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// Speak plain HTTP to this host (loopback hosts always are).
    pub plain_http: bool,
    /// Mirrors (`host[:port]`) that reads of this host's images try first, in order. A mirror
    /// that fails (connection error, timeout, 5xx, 404, refused credentials, bad answer) is
    /// skipped for the next one, and the host itself comes last. Pushes go to the host only.
    /// Each mirror is a host of its own for plain HTTP and credentials.
    pub mirrors: Vec<String>,
    /// Credentials for this host; `None`: the docker config's, if any.
    pub credentials: Option<HostCredentials>,
}

/// How the agent talks to registries.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`, or a bare host for every port) served over plain HTTP.
    /// `localhost`, `127.0.0.0/8` and `::1` are always plain HTTP, as Docker does, so a local
    /// test registry needs no entry here. [`HostConfig::plain_http`] says the same per host.
    pub insecure: Vec<String>,
    /// Per-host settings by `host[:port]` (a key without a port applies to every port of the
    /// host; an exact `host:port` key wins). Docker Hub's names (`docker.io`,
    /// `index.docker.io`, `registry-1.docker.io`) are one host.
    pub hosts: BTreeMap<String, HostConfig>,
    /// How long a mirror that failed with a connection error, timeout or 5xx is skipped before
    /// it is tried again (default 30 s), so a dead mirror does not cost every read a timeout.
    pub mirror_holdoff: Duration,
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
            hosts: BTreeMap::new(),
            mirror_holdoff: Duration::from_secs(30),
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
    /// The settings of `registry` (`host[:port]`): the entry of exactly that name, else the
    /// entry of its host without a port.
    pub fn host(&self, registry: &str) -> Option<&HostConfig> {
        self.host_entry(registry).map(|(_, h)| h)
    }

    /// [`RegistryConfig::host`] with the key of the entry.
    pub(crate) fn host_entry(&self, registry: &str) -> Option<(&str, &HostConfig)> {
        let want = normalize_registry(registry);
        let bare = host_of(&want);
        let mut fallback = None;
        for (key, host) in &self.hosts {
            let norm = normalize_registry(key);
            if norm == want {
                return Some((key, host));
            }
            if !has_port(&norm) && host_of(&norm) == bare {
                fallback = Some((key.as_str(), host));
            }
        }
        fallback
    }

    /// Whether `registry` (`host[:port]`) is reached over plain HTTP: loopback always, plus
    /// the hosts listed in [`RegistryConfig::insecure`] or marked
    /// [`HostConfig::plain_http`].
    pub fn is_plain_http(&self, registry: &str) -> bool {
        if self.host(registry).is_some_and(|h| h.plain_http) {
            return true;
        }
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

/// Whether `host[:port]` names a port.
fn has_port(registry: &str) -> bool {
    let tail = match registry.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(_, t)| t),
        None => registry,
    };
    tail.rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
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
                return Err(RegistryError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Self::parse(&text).map_err(|e| RegistryError::Config(format!("{}: {e}", path.display())))
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
                // The decoder's message names the offending character: a piece of the
                // secret, so it is not passed on.
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| format!("auths.{key}.auth is not base64"))?;
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

/// Read the credentials of `registry` from a credential file (see [`HostCredentials::File`]):
/// a docker `config.json` if the text starts with `{`, else one line `user:password`. Errors
/// name the file and the host, never the content.
pub(crate) fn read_credential_file(path: &Path, registry: &str) -> Result<(String, Secret)> {
    let bad = |detail: String| {
        RegistryError::Config(format!(
            "{}: credential file of registry {registry}: {detail}",
            path.display()
        ))
    };
    let text = std::fs::read(path).map_err(|source| RegistryError::Io {
        path: path.display().to_string(),
        source,
    })?;
    if text.trim_ascii_start().starts_with(b"{") {
        let creds = Credentials::parse(&text).map_err(bad)?;
        return creds
            .get(registry)
            .map(|(u, p)| (u.clone(), Secret::new(p.clone())))
            .ok_or_else(|| bad(format!("its `auths` have no entry for {registry}")));
    }
    let text = String::from_utf8(text).map_err(|_| bad("not UTF-8".into()))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    match line.split_once(':') {
        Some((user, pass)) if !user.is_empty() => Ok((user.to_string(), Secret::new(pass))),
        _ => Err(bad(
            "expected one line `user:password` or a docker config.json".into(),
        )),
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
    fn host_entries_match_exactly_then_by_bare_host() {
        let entry = |mirror: &str| HostConfig {
            mirrors: vec![mirror.to_string()],
            ..Default::default()
        };
        let c = RegistryConfig {
            hosts: BTreeMap::from([
                ("reg.lan".to_string(), entry("any-port")),
                ("reg.lan:5000".to_string(), entry("exact")),
                ("Docker.io".to_string(), entry("hub")),
                ("[fd00::1]".to_string(), entry("v6")),
                (
                    "plain.lan:80".to_string(),
                    HostConfig {
                        plain_http: true,
                        ..Default::default()
                    },
                ),
            ]),
            ..Default::default()
        };
        let mirror = |r: &str| c.host(r).map(|h| h.mirrors[0].as_str());
        assert_eq!(mirror("reg.lan:5000"), Some("exact"));
        assert_eq!(mirror("reg.lan:5001"), Some("any-port"));
        assert_eq!(mirror("REG.lan"), Some("any-port"));
        assert_eq!(mirror("index.docker.io"), Some("hub"));
        assert_eq!(mirror("registry-1.docker.io"), Some("hub"));
        assert_eq!(mirror("[fd00::1]:5000"), Some("v6"));
        assert_eq!(mirror("other.lan"), None);
        assert!(c.is_plain_http("plain.lan:80"));
        assert!(!c.is_plain_http("plain.lan:81"));
        assert!(!c.is_plain_http("reg.lan:5000"));
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        let creds = HostCredentials::Basic {
            username: "u".into(),
            password: s.clone(),
        };
        assert!(!format!("{creds:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
        let back: Secret = serde_json::from_str("\"pw\"").unwrap();
        assert_eq!(back.expose(), "pw");
    }

    #[test]
    fn credential_files_plain_and_docker_json() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let plain = dir.join("plain");
        std::fs::write(&plain, "alice:pa:ss\n").unwrap();
        let (u, p) = read_credential_file(&plain, "reg.lan").unwrap();
        assert_eq!((u.as_str(), p.expose()), ("alice", "pa:ss"));

        let json = dir.join("json");
        std::fs::write(
            &json,
            br#" {"auths":{"reg.lan:5000":{"username":"bob","password":"pw"}}}"#,
        )
        .unwrap();
        let (u, p) = read_credential_file(&json, "reg.lan:5000").unwrap();
        assert_eq!((u.as_str(), p.expose()), ("bob", "pw"));
        let e = read_credential_file(&json, "other")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no entry for other") && e.contains("json"),
            "{e}"
        );

        let bad = dir.join("bad");
        std::fs::write(&bad, "hunter2\n").unwrap();
        let e = read_credential_file(&bad, "reg.lan")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2") && e.contains("bad"), "{e}");
        std::fs::write(&bad, br#"{"auths":{"x":{"auth":"hunter2!"}}}"#).unwrap();
        let e = read_credential_file(&bad, "x").unwrap_err().to_string();
        assert!(!e.contains("hunter2") && !e.contains("symbol"), "{e}");
        let e = read_credential_file(&dir.join("missing"), "x").unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
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
