//! [`RegistryOrigin`]: the registry as a [`BlobOrigin`] — where one image's data blobs live and
//! the credentials a proxy (a Dragonfly seed peer) needs to fetch them on the node's behalf.
//!
//! The URL is the blob's at the image's own registry host (never a mirror), over the scheme our
//! own reads use for that host. The headers are what our reads would send now: a Bearer token
//! for pulls of the image's repository (shared with the registry tier, renewed when due),
//! Basic credentials, or nothing. A proxy does not answer a 401 challenge for us, so what the
//! registry wants is learned before the first answer: unless a read of that host has met a
//! challenge already, the first `locate` sends the registry a `HEAD` of the blob (which fetches a
//! token if one is wanted). When the proxy relays a refusal
//! ([`BlobOrigin::credentials_refused`]), the token handed out last is dropped, and the next
//! `locate` fetches a new one (or asks the registry again what it wants).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dfagent_core::{BlobId, BlobOrigin, BoxFuture, OriginRequest, TierError};
use tracing::debug;

use crate::auth::Sent;
use crate::client::Registry;
use crate::error::{RegistryError, Result};
use crate::image::NydusImage;

/// Name of the tier a [`TierError`] of [`RegistryOrigin`] names.
const TIER: &str = "registry";

/// The registry side of one image for a proxying tier: blob URLs at the image's registry and
/// the headers (credentials) that registry wants. Cheap to share behind an [`Arc`]; tokens are
/// the [`Registry`]'s, shared with every other read of the same repository.
pub struct RegistryOrigin {
    registry: Arc<Registry>,
    image: Arc<NydusImage>,
    /// The registry has been asked (a `HEAD` of a blob) what it wants.
    probed: AtomicBool,
    /// Ask it again at the next `locate`, whatever is known (credentials other than a token
    /// were refused).
    probe_again: AtomicBool,
    /// What the last `locate` handed out.
    last_sent: Mutex<Option<Sent>>,
    /// Credentials refused since the last `locate`: what had been handed out then.
    refused: Mutex<Option<Sent>>,
}

impl std::fmt::Debug for RegistryOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryOrigin")
            .field("registry", &self.image.registry)
            .field("repository", &self.image.repository)
            .field("reference", &self.image.reference)
            .finish_non_exhaustive()
    }
}

impl RegistryOrigin {
    /// The origin of `image`'s blobs, reached and authenticated through `registry`.
    pub fn new(registry: Arc<Registry>, image: Arc<NydusImage>) -> Self {
        Self {
            registry,
            image,
            probed: AtomicBool::new(false),
            probe_again: AtomicBool::new(false),
            last_sent: Mutex::new(None),
            refused: Mutex::new(None),
        }
    }

    /// The image whose blobs this locates.
    pub fn image(&self) -> &Arc<NydusImage> {
        &self.image
    }

    /// The request for the image's manifest (by its digest) at the image's registry, with the
    /// same credentials as its blobs: what a Dragonfly preheat is given.
    pub async fn manifest_request(&self) -> Result<OriginRequest> {
        let Some((first, _)) = self.image.blobs.first() else {
            return Err(RegistryError::InvalidRequest(format!(
                "image {} has no data blobs to preheat",
                self.image.reference
            )));
        };
        // Authenticate exactly as for a blob, then point at the manifest.
        let blob = self.request(first).await?.ok_or_else(|| {
            RegistryError::InvalidRequest(format!("image {} lost its blob", self.image.reference))
        })?;
        let r = self.image.oci_reference();
        let host = self.registry.host(&r)?;
        Ok(OriginRequest {
            url: host
                .http
                .url_of(&r, &format!("manifests/{}", self.image.manifest_digest)),
            headers: blob.headers,
        })
    }

    /// The request for `blob` at the image's registry, `None` when the image has no such blob.
    /// Authenticates with the registry first when needed (transient failures retried as the
    /// client's reads are).
    pub async fn request(&self, blob: &BlobId) -> Result<Option<OriginRequest>> {
        if self.image.blob_size(blob).is_none() {
            return Ok(None);
        }
        let r = self.image.oci_reference();
        let host = self.registry.host(&r)?;
        let repository = r.repository();
        let tail = format!("blobs/{}", blob.oci_digest());
        let what = format!("locate blob {blob} at {}/{repository}", self.image.registry);
        let refused = self.refused.lock().ok().and_then(|mut s| s.take());
        match refused {
            Some(sent @ Sent::Bearer(_)) => host.http.forget(repository, sent).await,
            // No token to drop: the registry may have started to want credentials, or refuses
            // the ones we have. Ask it again; it says which.
            Some(Sent::Nothing | Sent::Basic) => self.probe_again.store(true, Ordering::SeqCst),
            None => {}
        }
        let again = self.probe_again.swap(false, Ordering::SeqCst);
        if again || (!self.probed.load(Ordering::SeqCst) && !host.http.knows_challenge()) {
            let probe = format!("{what}: ask the registry what it wants");
            self.registry
                .with_retries(&probe, || host.http.head(&r, &tail, &probe))
                .await?;
            self.probed.store(true, Ordering::SeqCst);
        }
        let (authorization, sent) = self
            .registry
            .with_retries(&what, || host.http.pull_authorization(repository, &what))
            .await?;
        let mut headers = Vec::new();
        if let Some(value) = authorization {
            let value = value.to_str().map_err(|_| {
                RegistryError::Protocol(format!(
                    "{what}: the credentials are not a visible-ASCII header value"
                ))
            })?;
            headers.push((
                http::header::AUTHORIZATION.as_str().to_string(),
                value.to_string(),
            ));
        }
        if let Ok(mut last) = self.last_sent.lock() {
            *last = Some(sent);
        }
        debug!(image = %self.image.reference, %blob, ?sent, "blob located at its registry");
        Ok(Some(OriginRequest {
            url: host.http.url_of(&r, &tail),
            headers,
        }))
    }
}

impl BlobOrigin for RegistryOrigin {
    fn locate<'a>(
        &'a self,
        blob: &'a BlobId,
    ) -> BoxFuture<'a, std::result::Result<Option<OriginRequest>, TierError>> {
        Box::pin(async move {
            self.request(blob)
                .await
                .map_err(|e| TierError::new(TIER, e.tier_error_kind(), e.to_string()))
        })
    }

    /// Remember that what the last `locate` handed out was refused; the next `locate` drops
    /// that token (unless another request has replaced it) or asks the registry again.
    fn credentials_refused(&self) {
        let last = self.last_sent.lock().ok().and_then(|l| *l);
        debug!(image = %self.image.reference, sent = ?last, "registry credentials refused through a proxy");
        if let (Some(sent), Ok(mut refused)) = (last, self.refused.lock()) {
            *refused = Some(sent);
        }
    }
}
