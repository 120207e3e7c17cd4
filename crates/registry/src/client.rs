//! [`Registry`]: one OCI distribution client per registry host, credentials from the
//! configuration or the docker config, mirrors tried in order before a host, retries of
//! transient failures (after the registry's `Retry-After` when it sends one, within
//! [`MAX_RETRY_WAIT`]), one retry after authenticating again when a 401 says the credentials
//! went stale, and the pull side of Nydus images (resolve a reference, fetch the bootstrap, read
//! blob ranges). Reads are our own HTTP requests (`http.rs`, authenticated by `auth.rs`);
//! pushes go through the OCI client.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io::Read;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dfagent_core::{sha256_digest, BlobId};
use futures::StreamExt;
use http::header::{HeaderValue, ACCEPT, CONTENT_RANGE, RANGE};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{
    OciManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use tracing::{debug, info, warn};

use crate::config::{read_credential_file, Credentials, HostCredentials, RegistryConfig, Secret};
use crate::error::{classify, Failure, RegistryError, Result};
use crate::http::HostHttp;
use crate::image::{
    has_bootstrap_layer, index_candidates, nydus_parts, Descriptor, NydusImage,
    BOOTSTRAP_PATH_IN_LAYER, OS_FEATURE_NYDUS,
};
// Our own parser: oci-spec's `FromStr` would compile a regex that keeps ~7 MiB.
pub(crate) use crate::reference::parse_reference;

/// Largest bootstrap layer (compressed) and bootstrap (uncompressed) we accept: 1 GiB.
pub const MAX_BOOTSTRAP_SIZE: u64 = 1 << 30;
/// Largest manifest or index we accept: 4 MiB (the distribution spec's recommended limit).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Largest single range read: 1 GiB.
pub const MAX_RANGE_LEN: u64 = 1 << 30;
/// Longest backoff between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The most one request waits between its attempts, backoffs and `Retry-After` waits together.
/// A `Retry-After` longer than what is left of it ends the retries at once
/// ([`RegistryError::RetriesExhausted`] names the wait asked for).
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// Manifest media types we ask for.
const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// A manifest (or index) as the registry served it.
#[derive(Clone, Debug)]
pub struct RawManifest {
    /// The bytes; their sha256 is `digest`.
    pub bytes: Vec<u8>,
    /// Content digest, checked against the bytes (and against the reference's digest if it
    /// named one).
    pub digest: String,
    /// The `mediaType` the document declares (empty if it declares none).
    pub media_type: String,
}

/// The OCI client of one registry host and what we know about authenticating there.
pub(crate) struct HostClient {
    /// host[:port].
    registry: String,
    /// The OCI clients, made at the first push (reads never use them, and each loads the
    /// system's TLS roots when made: a mount would pay that twice for nothing). First, the
    /// client that is given the credentials (it probes `/v2/` and fetches tokens itself); then
    /// one that never holds credentials, used for a registry that asks for none, so each
    /// request is not preceded by an authentication probe.
    oci: OnceLock<(oci_client::Client, oci_client::Client)>,
    /// Credentials from the configuration or the docker config, or anonymous.
    auth: RegistryAuth,
    /// `(repository, operation)` pairs authenticated so far; `bool` = the registry wants no
    /// authentication at all (use `bare`).
    authed: Mutex<HashMap<(String, Op), bool>>,
    /// Our own HTTP client and authentication, for reads.
    pub(crate) http: HostHttp,
}

/// [`RegistryOperation`] with the traits a map key needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Op {
    Pull,
    Push,
}

impl Op {
    fn oci(self) -> RegistryOperation {
        match self {
            Op::Pull => RegistryOperation::Pull,
            Op::Push => RegistryOperation::Push,
        }
    }
}

/// A client for OCI registries holding Nydus images: resolves references, downloads
/// bootstraps, reads byte ranges of data blobs and publishes images. Cheap to share behind an
/// [`Arc`]; one instance serves any number of registries.
pub struct Registry {
    config: RegistryConfig,
    /// Credentials from the docker config.
    credentials: Credentials,
    /// Credentials from the configuration's host entries (read at start), by the entry's key;
    /// they win over the docker config's.
    host_credentials: HashMap<String, (String, Secret)>,
    extra_roots: Vec<Certificate>,
    /// The same roots for our own HTTP clients.
    http_roots: Vec<reqwest::Certificate>,
    hosts: Mutex<HashMap<String, Arc<HostClient>>>,
    /// Mirrors that failed with a connection error or 5xx, and until when they are skipped.
    held_off: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.config)
            .field("credentials", &self.credentials)
            .field(
                "host_credentials",
                &self.host_credentials.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// `r` on `mirror`: the same repository, tag and digest, asked of another host.
fn on_mirror(r: &Reference, mirror: &str) -> Reference {
    let (repo, mirror) = (r.repository().to_string(), mirror.to_string());
    match (r.tag(), r.digest()) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(mirror, repo, t.into(), d.into()),
        (None, Some(d)) => Reference::with_digest(mirror, repo, d.into()),
        (t, None) => Reference::with_tag(mirror, repo, t.unwrap_or("latest").into()),
    }
}

/// Check that a mirror is a bare `host[:port]`.
fn check_mirror(host: &str, mirror: &str) -> Result<()> {
    if mirror.is_empty() || mirror.contains("://") || mirror.contains('/') || mirror.contains(' ') {
        return Err(RegistryError::Config(format!(
            "mirror {mirror:?} of registry {host}: expected host[:port] (no scheme, no path)"
        )));
    }
    Ok(())
}

/// Backoff before retry number `retry` (1-based): `base * 2^(retry-1)`, capped, with the upper
/// half jittered so that many clients do not retry in lockstep.
fn backoff(base: Duration, retry: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << (retry.saturating_sub(1)).min(16))
        .min(MAX_BACKOFF);
    exp / 2 + exp.mul_f64(fastrand::f64() / 2.0)
}

impl Registry {
    /// A client with `config`. Reads the docker config for credentials and the extra CA file
    /// now, so mistakes there show up at start rather than at the first pull. Installs rustls'
    /// ring crypto provider as the process default if none is installed.
    pub fn new(config: RegistryConfig) -> Result<Self> {
        // reqwest is built without a bundled provider; ours is ring. An error means another
        // provider is already installed, which reqwest then uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let credentials = match config
            .docker_config
            .clone()
            .or_else(Credentials::default_path)
        {
            Some(path) => Credentials::load(&path)?,
            None => Credentials::default(),
        };
        let mut host_credentials = HashMap::new();
        for (host, entry) in &config.hosts {
            for mirror in &entry.mirrors {
                check_mirror(host, mirror)?;
            }
            let pair = match &entry.credentials {
                None => continue,
                Some(HostCredentials::Basic { username, password }) => {
                    (username.clone(), password.clone())
                }
                Some(HostCredentials::File(path)) => read_credential_file(path, host)?,
            };
            host_credentials.insert(host.clone(), pair);
        }
        let (extra_roots, http_roots) = match &config.extra_ca {
            Some(path) => {
                let data = std::fs::read(path).map_err(|source| RegistryError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                if !data
                    .windows(27)
                    .any(|w| w == b"-----BEGIN CERTIFICATE-----")
                {
                    return Err(RegistryError::Config(format!(
                        "{}: no PEM certificate in the extra CA file",
                        path.display()
                    )));
                }
                let http_roots = reqwest::Certificate::from_pem_bundle(&data).map_err(|e| {
                    RegistryError::Config(format!(
                        "{}: the extra CA file does not parse: {e}",
                        path.display()
                    ))
                })?;
                let roots = vec![Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                }];
                (roots, http_roots)
            }
            None => (Vec::new(), Vec::new()),
        };
        debug!(
            ?credentials,
            configured_credentials = ?host_credentials.keys().collect::<Vec<_>>(),
            "registry client ready"
        );
        Ok(Self {
            config,
            credentials,
            host_credentials,
            extra_roots,
            http_roots,
            hosts: Mutex::new(HashMap::new()),
            held_off: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    fn oci_client(&self, registry: &str) -> Result<oci_client::Client> {
        let protocol = if self.config.is_plain_http(registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            extra_root_certificates: self.extra_roots.clone(),
            // We pick index entries ourselves (see `resolve`).
            platform_resolver: None,
            connect_timeout: Some(self.config.connect_timeout),
            read_timeout: Some(self.config.read_timeout),
            user_agent: concat!("dfagent-registry/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        oci_client::Client::try_from(config).map_err(|e| {
            RegistryError::Config(format!("cannot build an HTTP client for {registry}: {e}"))
        })
    }

    /// The client of `reference`'s registry, made on first use.
    pub(crate) fn host(&self, reference: &Reference) -> Result<Arc<HostClient>> {
        let registry = reference.resolve_registry().to_string();
        let mut hosts = self
            .hosts
            .lock()
            .map_err(|_| RegistryError::Config("registry client state poisoned".into()))?;
        if let Some(h) = hosts.get(&registry) {
            return Ok(h.clone());
        }
        let (creds, from) = match (
            self.configured_credentials(&registry),
            self.credentials.get(&registry),
        ) {
            (Some((u, p)), _) => (Some((u.clone(), p.clone())), "configuration"),
            (None, Some((u, p))) => (Some((u.clone(), Secret::new(p.clone()))), "docker config"),
            (None, None) => (None, "none"),
        };
        let auth = match &creds {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.expose().to_string()),
            None => RegistryAuth::Anonymous,
        };
        debug!(
            %registry,
            plain_http = self.config.is_plain_http(&registry),
            credentials = from,
            "new registry host"
        );
        let h = Arc::new(HostClient {
            oci: OnceLock::new(),
            http: HostHttp::new(&self.config, &registry, &self.http_roots, creds)?,
            registry: registry.clone(),
            auth,
            authed: Mutex::new(HashMap::new()),
        });
        hosts.insert(registry, h.clone());
        Ok(h)
    }

    /// Credentials of `registry` from the configuration's host entries (the entry
    /// [`RegistryConfig::host`] picks).
    fn configured_credentials(&self, registry: &str) -> Option<&(String, Secret)> {
        let (key, _) = self.config.host_entry(registry)?;
        self.host_credentials.get(key)
    }

    /// Whether `mirror` is being skipped after a failure.
    fn is_held_off(&self, mirror: &str) -> bool {
        let Ok(mut m) = self.held_off.lock() else {
            return false;
        };
        match m.get(mirror) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                m.remove(mirror);
                false
            }
            None => false,
        }
    }

    /// Run a read of `r`: on each of its host's mirrors in order (once each, skipping those
    /// held off), then on the host itself with retries. A mirror's failure of any kind moves
    /// on to the next; a connection error or 5xx also holds the mirror off for
    /// [`RegistryConfig::mirror_holdoff`]. The host's error is the one returned.
    pub(crate) async fn read_via_mirrors<T, F, Fut>(
        &self,
        r: &Reference,
        what: &str,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(Reference) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let registry = r.resolve_registry();
        if let Some(entry) = self.config.host(registry) {
            for mirror in &entry.mirrors {
                if self.is_held_off(mirror) {
                    debug!(%registry, %mirror, what, "mirror held off after a failure; skipped");
                    continue;
                }
                match attempt(on_mirror(r, mirror)).await {
                    Ok(v) => {
                        debug!(%registry, %mirror, what, "served by mirror");
                        return Ok(v);
                    }
                    Err(f) => {
                        if f.transient {
                            let now = Instant::now();
                            let until = now
                                .checked_add(self.config.mirror_holdoff)
                                .unwrap_or(now + Duration::from_secs(1 << 30));
                            if let Ok(mut m) = self.held_off.lock() {
                                m.insert(mirror.clone(), until);
                            }
                        }
                        if matches!(f.error, RegistryError::NotFound { .. }) {
                            // A mirror without some content is ordinary: no warning per read.
                            debug!(%registry, %mirror, what, error = %f.error,
                                "mirror does not have it; trying the next source");
                        } else {
                            warn!(%registry, %mirror, what, error = %f.error,
                                held_off = f.transient, "mirror failed; trying the next source");
                        }
                    }
                }
            }
        }
        self.with_retries(what, || attempt(r.clone())).await
    }

    /// The host client for `reference`, authenticated for `op` on its repository, for requests
    /// through the OCI client (pushes). The first time, and again after a 401 ([`Self::failure`]
    /// forgets), this runs the authentication explicitly (oci-client's own, which answers a
    /// Basic challenge with the credentials and a Bearer challenge by fetching a token from the
    /// realm), so that refused credentials give an [`RegistryError::Auth`] instead of a bare
    /// 401 later.
    pub(crate) async fn prepare(
        &self,
        reference: &Reference,
        op: Op,
    ) -> Result<(Arc<HostClient>, oci_client::Client), Failure> {
        let host = self.host(reference)?;
        if host.oci.get().is_none() {
            let made = (
                self.oci_client(&host.registry)?,
                self.oci_client(&host.registry)?,
            );
            // Another push may have made them meanwhile: either pair will do.
            let _ = host.oci.set(made);
        }
        let (authed_client, bare) = host
            .oci
            .get()
            .ok_or_else(|| RegistryError::Config("registry client state lost".into()))?;
        let key = (reference.repository().to_string(), op);
        let known = host.authed.lock().ok().and_then(|m| m.get(&key).copied());
        let open = match known {
            Some(open) => open,
            None => {
                let token = authed_client
                    .auth(reference, &host.auth, op.oci())
                    .await
                    .map_err(|e| classify(e, &host.registry, "authenticate"))?;
                // No token and no credentials: the registry asked for nothing.
                let open = token.is_none() && matches!(host.auth, RegistryAuth::Anonymous);
                debug!(registry = %host.registry, repository = %key.0, ?op, open, "authenticated");
                if let Ok(mut m) = host.authed.lock() {
                    m.insert(key, open);
                }
                open
            }
        };
        let client = if open {
            bare.clone()
        } else {
            authed_client.clone()
        };
        Ok((host, client))
    }

    /// Classify an OCI client error; an authentication failure also forgets that the
    /// repository was authenticated, so the next attempt authenticates again.
    pub(crate) fn failure(
        &self,
        host: &HostClient,
        reference: &Reference,
        err: OciDistributionError,
        what: &str,
    ) -> Failure {
        let f = classify(err, &host.registry, what);
        if matches!(f.error, RegistryError::Auth { .. }) {
            if let Ok(mut m) = host.authed.lock() {
                m.retain(|(repo, _), _| repo != reference.repository());
            }
        }
        f
    }

    /// Run `attempt` until it succeeds, fails for good, or its retries are used up. A transient
    /// failure is retried up to `retries` times, after the registry's `Retry-After` if it sent
    /// one, else after exponential backoff with jitter, all waits together within
    /// [`MAX_RETRY_WAIT`]. A 401 that may mean stale credentials is retried once at once (the
    /// attempt authenticates again); it does not count against the transient retries.
    pub(crate) async fn with_retries<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let mut attempts = 0u32;
        let mut retries = 0u32;
        let mut waited = Duration::ZERO;
        let mut reauthenticated = false;
        loop {
            attempts += 1;
            let f = match attempt().await {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            if f.reauth && !reauthenticated {
                reauthenticated = true;
                debug!(
                    what,
                    attempt = attempts,
                    "401 Unauthorized: authenticating again, then retrying once"
                );
                continue;
            }
            if !f.transient {
                return Err(f.error);
            }
            retries += 1;
            let wait = retry_wait(
                &f,
                retries,
                self.config.retries,
                self.config.retry_base_delay,
                waited,
            );
            let Some(delay) = wait else {
                let left = MAX_RETRY_WAIT.saturating_sub(waited);
                return Err(RegistryError::RetriesExhausted {
                    what: what.to_string(),
                    attempts,
                    retry_after: f.retry_after.filter(|d| *d > left),
                    last: Box::new(f.error),
                });
            };
            warn!(what, attempt = attempts, error = %f.error, ?delay,
                retry_after = ?f.retry_after, "transient registry failure, retrying");
            tokio::time::sleep(delay).await;
            waited += delay;
        }
    }

    /// Fetch the manifest or index `reference` names, as served, with its digest verified.
    pub async fn fetch_manifest_raw(&self, reference: &str) -> Result<RawManifest> {
        let r = parse_reference(reference)?;
        self.fetch_manifest(&r).await
    }

    async fn fetch_manifest(&self, r: &Reference) -> Result<RawManifest> {
        let what = format!("fetch manifest {}", r.whole());
        let what = what.as_str();
        self.read_via_mirrors(
            r,
            what,
            |r| async move { self.attempt_manifest(&r, what).await },
        )
        .await
    }

    async fn attempt_manifest(
        &self,
        r: &Reference,
        what: &str,
    ) -> std::result::Result<RawManifest, Failure> {
        let host = self.host(r)?;
        let name = r.digest().or(r.tag()).unwrap_or("latest");
        let accept = HeaderValue::from_str(&ACCEPTED_MANIFESTS.join(", "))
            .map_err(|e| RegistryError::Protocol(format!("Accept header: {e}")))?;
        let resp = host
            .http
            .get(r, &format!("manifests/{name}"), &[(ACCEPT, accept)], what)
            .await?;
        let too_large = |size| {
            Failure::fatal(RegistryError::TooLarge {
                what: what.to_string(),
                size,
                limit: MAX_MANIFEST_SIZE,
            })
        };
        if let Some(len) = resp.content_length().filter(|l| *l > MAX_MANIFEST_SIZE) {
            return Err(too_large(len));
        }
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_stream(resp, 0, MAX_MANIFEST_SIZE + 1, false, &host, what).await?;
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(too_large(bytes.len() as u64));
        }
        let digest = manifest_digest(&bytes, r.digest(), header_digest.as_deref(), what)?;
        #[derive(serde::Deserialize)]
        struct Versioned {
            #[serde(rename = "mediaType", default)]
            media_type: String,
        }
        let media_type = serde_json::from_slice::<Versioned>(&bytes)
            .map(|v| v.media_type)
            .map_err(|e| RegistryError::Protocol(format!("{what}: not a JSON manifest: {e}")))?;
        Ok(RawManifest {
            bytes: bytes.to_vec(),
            digest,
            media_type,
        })
    }

    /// Resolve `reference` (by tag or digest) to a Nydus image. An image index is searched for
    /// the Nydus manifest of the configured platform the way nydusify publishes it: the entry
    /// whose `platform.os.features` holds `nydus.remoteimage.v1`, else any entry of the platform
    /// whose manifest has a Nydus bootstrap layer. A plain manifest must have a layer annotated
    /// `containerd.io/snapshot/nydus-bootstrap: "true"`.
    pub async fn resolve(&self, reference: &str) -> Result<NydusImage> {
        let r = parse_reference(reference)?;
        let raw = self.fetch_manifest(&r).await?;
        let (os, arch) = (&self.config.platform.0, &self.config.platform.1);
        let (digest, bytes, manifest) = match parse_manifest(&raw.bytes, reference)? {
            OciManifest::Image(m) => (raw.digest, raw.bytes, m),
            OciManifest::ImageIndex(index) => {
                let candidates = index_candidates(&index.manifests, os, arch);
                if candidates.is_empty() {
                    return Err(RegistryError::NotNydus {
                        reference: reference.to_string(),
                        detail: format!("the image index has no manifest for {os}/{arch}"),
                    });
                }
                let mut found = None;
                for d in candidates {
                    let child = r.clone_with_digest(d.clone());
                    let raw = self.fetch_manifest(&child).await?;
                    match parse_manifest(&raw.bytes, reference)? {
                        OciManifest::Image(m) if has_bootstrap_layer(&m) => {
                            found = Some((raw.digest, raw.bytes, m));
                            break;
                        }
                        _ => debug!(%d, "index entry is not a Nydus manifest"),
                    }
                }
                found.ok_or_else(|| RegistryError::NotNydus {
                    reference: reference.to_string(),
                    detail: format!(
                        "the image index has no Nydus manifest for {os}/{arch} (no entry with \
                         os.features {OS_FEATURE_NYDUS}, and no {os}/{arch} manifest with a \
                         bootstrap layer)"
                    ),
                })?
            }
        };
        let (bootstrap, blobs) = nydus_parts(reference, &manifest)?;
        info!(reference, manifest = %digest, blobs = blobs.len(), "resolved Nydus image");
        Ok(NydusImage {
            reference: reference.to_string(),
            registry: r.resolve_registry().to_string(),
            repository: r.repository().to_string(),
            manifest_digest: digest,
            manifest_bytes: bytes,
            bootstrap,
            blobs,
        })
    }

    /// Download the bootstrap layer of `img`, verify its sha256 against the manifest's
    /// descriptor before touching its content, and return the bootstrap (`image/image.boot`
    /// from the layer's tar, gzip'd or not). Both the layer and the bootstrap are bounded by
    /// [`MAX_BOOTSTRAP_SIZE`].
    pub async fn fetch_bootstrap(&self, img: &NydusImage) -> Result<Vec<u8>> {
        let desc = img.bootstrap.clone();
        if desc.size > MAX_BOOTSTRAP_SIZE {
            return Err(RegistryError::TooLarge {
                what: format!("bootstrap layer {}", desc.digest),
                size: desc.size,
                limit: MAX_BOOTSTRAP_SIZE,
            });
        }
        if !desc.digest.starts_with("sha256:") {
            return Err(RegistryError::Protocol(format!(
                "bootstrap layer digest {} is not sha256",
                desc.digest
            )));
        }
        let r = img.oci_reference();
        let what = format!("fetch bootstrap layer {}", desc.digest);
        let (w, d) = (what.as_str(), &desc);
        let layer = self
            .read_via_mirrors(&r, w, |r| async move { self.attempt_blob(&r, d, w).await })
            .await?;
        let actual = sha256_digest(&layer);
        if actual != desc.digest {
            return Err(RegistryError::Digest {
                what,
                expected: desc.digest,
                actual,
            });
        }
        let digest = desc.digest.clone();
        tokio::task::spawn_blocking(move || extract_bootstrap(&layer, &digest))
            .await
            .map_err(|e| {
                RegistryError::Protocol(format!("bootstrap extraction task failed: {e}"))
            })?
    }

    /// Download a whole blob of known size (bounded by the descriptor).
    async fn attempt_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        what: &str,
    ) -> std::result::Result<Vec<u8>, Failure> {
        let host = self.host(r)?;
        let resp = host
            .http
            .get(r, &format!("blobs/{}", desc.digest), &[], what)
            .await?;
        if let Some(len) = resp.content_length() {
            if len != desc.size {
                return Err(Failure::fatal(RegistryError::Protocol(format!(
                    "{what}: the registry announces {len} bytes, the manifest says {}",
                    desc.size
                ))));
            }
        }
        let data = read_stream(resp, 0, desc.size, true, &host, what).await?;
        Ok(data.to_vec())
    }

    /// Read bytes `range` of data blob `blob` of `img` with an HTTP range request. Returns
    /// exactly `range.end - range.start` bytes or an error. Redirects (object-store backed
    /// registries answer 307) are followed; connection errors, 429 and 5xx are retried (after
    /// the registry's `Retry-After`, else with backoff); a 401 is answered by authenticating
    /// again and retrying once. The bytes are not verified here.
    pub async fn read_range(
        &self,
        img: &NydusImage,
        blob: &BlobId,
        range: Range<u64>,
    ) -> Result<Bytes> {
        let size = img.blob_size(blob).ok_or_else(|| {
            RegistryError::InvalidRequest(format!(
                "blob {blob} is not part of image {}",
                img.reference
            ))
        })?;
        if range.start > range.end || range.end > size {
            return Err(RegistryError::InvalidRequest(format!(
                "range {}..{} is outside blob {blob} of {size} bytes",
                range.start, range.end
            )));
        }
        let len = range.end - range.start;
        if len == 0 {
            return Ok(Bytes::new());
        }
        if len > MAX_RANGE_LEN {
            return Err(RegistryError::TooLarge {
                what: format!("range read of blob {blob}"),
                size: len,
                limit: MAX_RANGE_LEN,
            });
        }
        let r = img.oci_reference();
        let digest = blob.oci_digest();
        let what = format!("read bytes {}..{} of blob {blob}", range.start, range.end);
        let (what, digest, start) = (what.as_str(), digest.as_str(), range.start);
        self.read_via_mirrors(&r, what, |r| async move {
            self.attempt_range(&r, digest, start, len, what).await
        })
        .await
    }

    async fn attempt_range(
        &self,
        r: &Reference,
        digest: &str,
        start: u64,
        len: u64,
        what: &str,
    ) -> std::result::Result<Bytes, Failure> {
        let host = self.host(r)?;
        let last = start + len - 1;
        let range = HeaderValue::from_str(&format!("bytes={start}-{last}"))
            .map_err(|e| RegistryError::Protocol(format!("Range header: {e}")))?;
        let resp = host
            .http
            .get(r, &format!("blobs/{digest}"), &[(RANGE, range)], what)
            .await?;
        match resp.status().as_u16() {
            206 => {
                let content_range = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok());
                if let Some(cr) = content_range {
                    if parse_content_range(cr) != Some((start, last)) {
                        return Err(Failure::fatal(RegistryError::Protocol(format!(
                            "{what}: the registry answered Content-Range {cr:?}"
                        ))));
                    }
                }
                if let Some(cl) = resp.content_length() {
                    if cl != len {
                        return Err(Failure::fatal(RegistryError::ShortRead {
                            what: what.to_string(),
                            got: cl,
                            expected: len,
                        }));
                    }
                }
                read_stream(resp, 0, len, true, &host, what).await
            }
            200 => {
                // The server ignored the Range header: skip to the range, stop after it.
                debug!(
                    what,
                    "registry answered a range request with the whole blob"
                );
                let data = read_stream(resp, start, len, false, &host, what).await?;
                if (data.len() as u64) < len {
                    return Err(Failure::fatal(RegistryError::ShortRead {
                        what: what.to_string(),
                        got: data.len() as u64,
                        expected: len,
                    }));
                }
                Ok(data)
            }
            other => Err(Failure::fatal(RegistryError::Protocol(format!(
                "{what}: the registry answered {other} to a range request"
            )))),
        }
    }
}

/// `(first, last)` of a `Content-Range: bytes FIRST-LAST/TOTAL` value.
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let (range, _total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// The wait before transient retry number `retry` (1-based) after `f`, having waited `waited`
/// already: the registry's `Retry-After` if it sent one, else backoff from `base`; all waits of
/// a request within [`MAX_RETRY_WAIT`]. `None`: give up (`retries` used up, the budget spent,
/// or a `Retry-After` beyond what is left of it).
fn retry_wait(
    f: &Failure,
    retry: u32,
    retries: u32,
    base: Duration,
    waited: Duration,
) -> Option<Duration> {
    if retry > retries {
        return None;
    }
    let left = MAX_RETRY_WAIT.saturating_sub(waited);
    match f.retry_after {
        Some(d) if d > left => None,
        Some(d) => Some(d),
        None if left.is_zero() => None,
        None => Some(backoff(base, retry).min(left)),
    }
}

/// The digest of a manifest's `bytes`, checked: against the digest the reference names (if
/// any) and the `Docker-Content-Digest` the registry sent (if any). The reference's digest if
/// it has one, else the bytes' sha256.
fn manifest_digest(
    bytes: &[u8],
    reference_digest: Option<&str>,
    header_digest: Option<&str>,
    what: &str,
) -> std::result::Result<String, Failure> {
    let check = |expected: &str| -> std::result::Result<(), Failure> {
        let actual = digest_of(bytes, expected).ok_or_else(|| {
            Failure::fatal(RegistryError::Protocol(format!(
                "{what}: unsupported digest {expected:?}"
            )))
        })?;
        if actual != expected {
            return Err(Failure::fatal(RegistryError::Digest {
                what: what.to_string(),
                expected: expected.to_string(),
                actual,
            }));
        }
        Ok(())
    };
    if let Some(d) = reference_digest {
        check(d)?;
    }
    if let Some(h) = header_digest.filter(|h| Some(*h) != reference_digest) {
        // A header in an algorithm we do not know is the registry's business, not an error.
        if digest_of(bytes, h).is_some() {
            check(h)?;
        }
    }
    Ok(reference_digest.map_or_else(|| sha256_digest(bytes), str::to_string))
}

/// `bytes` digested with the algorithm of `like` (`sha256:…`, `sha384:…`, `sha512:…`), in the
/// same form; `None` for other algorithms.
fn digest_of(bytes: &[u8], like: &str) -> Option<String> {
    use sha2::Digest as _;
    let (algo, _) = like.split_once(':')?;
    let hex = match algo {
        "sha256" => hex::encode(sha2::Sha256::digest(bytes)),
        "sha384" => hex::encode(sha2::Sha384::digest(bytes)),
        "sha512" => hex::encode(sha2::Sha512::digest(bytes)),
        _ => return None,
    };
    Some(format!("{algo}:{hex}"))
}

/// Parse a manifest or index.
fn parse_manifest(bytes: &[u8], reference: &str) -> Result<OciManifest> {
    serde_json::from_slice::<OciManifest>(bytes).map_err(|e| {
        RegistryError::Protocol(format!(
            "{reference}: not an OCI/Docker v2 image manifest or index: {e}"
        ))
    })
}

/// Read `len` bytes after skipping `skip` from the body of `resp`. With `exact`, the body must
/// end right there (a longer one is a protocol error); without, the rest is dropped. A body cut
/// short by the network is a transient failure; a short body that ended cleanly is final.
async fn read_stream(
    resp: reqwest::Response,
    mut skip: u64,
    len: u64,
    exact: bool,
    host: &HostClient,
    what: &str,
) -> std::result::Result<Bytes, Failure> {
    let mut out = BytesMut::with_capacity(usize::try_from(len.min(64 << 20)).unwrap_or(0));
    let mut stream = resp.bytes_stream();
    while let Some(item) = stream.next().await {
        let mut chunk = item.map_err(|e| host.http.request_failure(e, what))?;
        if skip > 0 {
            let n = skip.min(chunk.len() as u64);
            let _ = chunk.split_to(n as usize);
            skip -= n;
        }
        let room = len - out.len() as u64;
        if chunk.len() as u64 > room {
            if exact {
                return Err(Failure::fatal(RegistryError::Protocol(format!(
                    "{what}: the registry sent more than the {len} bytes asked for"
                ))));
            }
            out.extend_from_slice(&chunk[..room as usize]);
            break;
        }
        out.extend_from_slice(&chunk);
        if !exact && out.len() as u64 == len {
            break;
        }
    }
    if exact && (out.len() as u64) < len {
        // A body cut short by the network surfaces as a stream error above; a clean short
        // body is the server's answer, and asking again would get the same.
        return Err(Failure::fatal(RegistryError::ShortRead {
            what: what.to_string(),
            got: out.len() as u64,
            expected: len,
        }));
    }
    Ok(out.freeze())
}

/// Find `image/image.boot` in a bootstrap layer (tar, gzip'd or not) and return its bytes.
pub(crate) fn extract_bootstrap(layer: &[u8], digest: &str) -> Result<Vec<u8>> {
    let bad = |detail: String| RegistryError::BootstrapLayer {
        digest: digest.to_string(),
        detail,
    };
    // Bound what decompression may produce (the bootstrap plus tar overhead), so a gzip bomb
    // cannot keep us busy.
    let limit = MAX_BOOTSTRAP_SIZE + (16 << 20);
    let reader: Box<dyn Read + '_> = if layer.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(layer).take(limit))
    } else {
        Box::new(Read::take(layer, limit))
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    let mut seen = BTreeSet::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt tar archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("bad tar entry name: {e}")))?
            .to_string_lossy()
            .into_owned();
        let name = path.trim_start_matches("./").trim_start_matches('/');
        if name != BOOTSTRAP_PATH_IN_LAYER {
            if seen.len() < 8 {
                seen.insert(name.to_string());
            }
            continue;
        }
        if !entry.header().entry_type().is_file() {
            return Err(bad(format!(
                "{BOOTSTRAP_PATH_IN_LAYER} is not a regular file"
            )));
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| bad(format!("bad size of {BOOTSTRAP_PATH_IN_LAYER}: {e}")))?;
        if size > MAX_BOOTSTRAP_SIZE {
            return Err(RegistryError::TooLarge {
                what: format!("bootstrap in layer {digest}"),
                size,
                limit: MAX_BOOTSTRAP_SIZE,
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("cannot read {BOOTSTRAP_PATH_IN_LAYER}: {e}")))?;
        if out.len() as u64 != size {
            return Err(bad(format!(
                "{BOOTSTRAP_PATH_IN_LAYER} is truncated: {} of {size} bytes",
                out.len()
            )));
        }
        return Ok(out);
    }
    Err(bad(format!(
        "the layer's tar has no {BOOTSTRAP_PATH_IN_LAYER} (entries seen: {seen:?})"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        for retry in 1..=20 {
            let d = backoff(base, retry);
            let exp = (base * 2u32.pow((retry - 1).min(16))).min(MAX_BACKOFF);
            assert!(d >= exp / 2 && d <= exp, "retry {retry}: {d:?} vs {exp:?}");
        }
    }

    #[test]
    fn retries_wait_as_asked_within_the_budget() {
        let base = Duration::from_millis(100);
        let busy = |after: Option<u64>| Failure {
            retry_after: after.map(Duration::from_secs),
            ..Failure::transient(RegistryError::Protocol("503".into()))
        };
        // Retry-After is honoured as sent.
        assert_eq!(
            retry_wait(&busy(Some(2)), 1, 4, base, Duration::ZERO),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_wait(&busy(Some(0)), 1, 4, base, Duration::ZERO),
            Some(Duration::ZERO)
        );
        // Without one: the backoff.
        let d = retry_wait(&busy(None), 2, 4, base, Duration::ZERO).unwrap();
        assert!(d >= base && d <= base * 2, "{d:?}");
        // Beyond the retries, beyond the budget: give up.
        assert_eq!(retry_wait(&busy(Some(1)), 5, 4, base, Duration::ZERO), None);
        assert_eq!(
            retry_wait(&busy(Some(3600)), 1, 4, base, Duration::ZERO),
            None
        );
        assert_eq!(
            retry_wait(
                &busy(Some(10)),
                1,
                4,
                base,
                MAX_RETRY_WAIT - Duration::from_secs(5)
            ),
            None
        );
        assert_eq!(retry_wait(&busy(None), 1, 4, base, MAX_RETRY_WAIT), None);
        // A backoff is cut to what is left of the budget.
        let left = Duration::from_millis(30);
        assert_eq!(
            retry_wait(
                &busy(None),
                4,
                4,
                Duration::from_secs(4),
                MAX_RETRY_WAIT - left
            ),
            Some(left)
        );
    }

    #[test]
    fn manifest_digests_are_checked() {
        let body = br#"{"schemaVersion":2}"#;
        let d = sha256_digest(body);
        assert_eq!(manifest_digest(body, None, None, "m").unwrap(), d);
        assert_eq!(manifest_digest(body, Some(&d), Some(&d), "m").unwrap(), d);
        let other = sha256_digest(b"other");
        let e = manifest_digest(body, Some(&other), None, "m").unwrap_err();
        assert!(matches!(e.error, RegistryError::Digest { .. }), "{e:?}");
        let e = manifest_digest(body, None, Some(&other), "m").unwrap_err();
        assert!(matches!(e.error, RegistryError::Digest { .. }), "{e:?}");
        let sha512 = digest_of(body, "sha512:").unwrap();
        assert_eq!(
            manifest_digest(body, Some(&sha512), None, "m").unwrap(),
            sha512
        );
        assert!(manifest_digest(body, None, Some("md5:00"), "m").is_ok());
        assert!(manifest_digest(body, Some("md5:00"), None, "m").is_err());
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 5-9/100"), Some((5, 9)));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn extracts_bootstrap_and_rejects_layers_without_it() {
        let boot = b"bootstrap bytes".to_vec();
        let layer = crate::push::bootstrap_layer(&boot).unwrap();
        assert_eq!(
            extract_bootstrap(&layer.compressed, "sha256:x").unwrap(),
            boot
        );
        assert_eq!(extract_bootstrap(&layer.tar, "sha256:x").unwrap(), boot);

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "image/other", &b"abc"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let e = extract_bootstrap(&tar, "sha256:y").unwrap_err();
        assert!(e.to_string().contains("has no image/image.boot"), "{e}");
        assert!(extract_bootstrap(b"\x1f\x8bgarbage", "sha256:z").is_err());
    }
}
