//! Opening images: a registry reference (resolved online, or from the store's record when the
//! registry is unreachable; bootstrap from the store or downloaded and kept; chunks pinned) or a
//! local bootstrap with its blob directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dfagent_core::{ChunkDigest, ChunkTier};
use dfagent_rafs::Image;
use dfagent_registry::{NydusImage, RegistryTier};
use dfagent_resolver::{BlobDirTier, Resolver};

use crate::error::{NodeError, Result};
use crate::node::Node;
use crate::pins::PinGuard;

/// How long resolving a reference may take when the store has no copy of the image.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long it may take before the store's copy is used instead: a node holding the image
/// should start it promptly when its registry is down.
const RESOLVE_TIMEOUT_WITH_COPY: Duration = Duration::from_secs(1);

/// Which image to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// A Nydus image in a registry, e.g. `localhost:5000/app:v1`.
    Registry(String),
    /// A local image: its bootstrap and the directory of its blobs (named by sha256).
    Local {
        /// The bootstrap (RAFS v6 metadata).
        bootstrap: PathBuf,
        /// The blob directory.
        blob_dir: PathBuf,
    },
}

impl ImageSource {
    /// How the image is named in logs, listings and the mount's source.
    pub fn name(&self) -> String {
        match self {
            ImageSource::Registry(r) => r.clone(),
            ImageSource::Local { bootstrap, .. } => bootstrap.display().to_string(),
        }
    }
}

/// An opened image: its metadata, the chain of tiers that serves its chunks, and (for registry
/// images) the pin that keeps its chunks in the store while it is open.
pub struct OpenedImage {
    /// Where it came from.
    pub source: ImageSource,
    /// The bootstrap.
    pub image: Arc<Image>,
    /// The registry's description of it (registry images only).
    pub nydus: Option<Arc<NydusImage>>,
    /// Whether the registry was unreachable and the store's record was used.
    pub offline: bool,
    /// The chain of tiers over the node's shared resolver core.
    pub resolver: Arc<Resolver>,
    /// Released when the image is closed (dropped), on every path.
    pub pin: Option<PinGuard>,
    /// The distinct chunks of the image.
    pub digests: Arc<Vec<ChunkDigest>>,
    /// What names the image's content, `sha256:<hex>`: the manifest digest of a registry image,
    /// the digest of a local image's bootstrap file. A mount's source is `dfagent:` and this.
    pub content_digest: String,
}

/// `sha256:<hex>` of the file at `path`, read in pieces.
fn file_digest(path: &Path) -> std::io::Result<String> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    // Ends at the end of the file (a read of 0 bytes): bounded by its size.
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(dfagent_core::BlobId::from_bytes(hasher.finalize().into()).oci_digest())
}

/// The distinct chunk digests of `image`, sorted.
fn distinct_digests(image: &Image) -> Result<Vec<ChunkDigest>> {
    let mut d: Vec<ChunkDigest> = image.all_chunks()?.iter().map(|c| c.digest).collect();
    d.sort();
    d.dedup();
    Ok(d)
}

impl OpenedImage {
    /// The image's manifest digest (registry images), or empty.
    pub fn digest(&self) -> &str {
        self.nydus
            .as_ref()
            .map(|n| n.manifest_digest.as_str())
            .unwrap_or("")
    }
}

impl Node {
    /// Open `source`: metadata, pin and tier chain, ready to mount, read or pull.
    pub async fn open_image(self: &Arc<Self>, source: &ImageSource) -> Result<OpenedImage> {
        match source {
            ImageSource::Local {
                bootstrap,
                blob_dir,
            } => {
                let image = Image::open(bootstrap).map_err(|e| NodeError::BadImage {
                    reference: bootstrap.display().to_string(),
                    detail: e.to_string(),
                })?;
                let content_digest = file_digest(bootstrap)
                    .map_err(|e| NodeError::io(format!("reading {}", bootstrap.display()), e))?;
                let tiers: Vec<Arc<dyn ChunkTier>> = vec![Arc::new(BlobDirTier::new(blob_dir))];
                let digests = Arc::new(distinct_digests(&image)?);
                Ok(OpenedImage {
                    source: source.clone(),
                    image: Arc::new(image),
                    nydus: None,
                    offline: false,
                    resolver: Arc::new(Resolver::new(self.resolver_core().clone(), tiers)),
                    pin: None,
                    digests,
                    content_digest,
                })
            }
            ImageSource::Registry(reference) => self.open_registry_image(reference).await,
        }
    }

    async fn open_registry_image(self: &Arc<Self>, reference: &str) -> Result<OpenedImage> {
        // Without a store (it could not be opened) the image is served from the registry
        // alone: nothing cached, nothing pinned.
        let store = self.store().cloned();
        let (nydus, offline) = self.resolve(reference).await?;
        let cached = store.as_ref().and_then(|st| {
            st.bootstrap(&nydus.bootstrap.digest)
                .map_err(|e| tracing::warn!(reference, error = %e, "reading the stored bootstrap; fetching it again"))
                .ok()
                .flatten()
        });
        let bootstrap = match cached {
            Some(b) => b,
            None => {
                let b = self.registry()?.fetch_bootstrap(&nydus).await?;
                if let Some(st) = &store {
                    // A cache write that fails (a full disk) costs the next mount a fetch, not
                    // this one its image.
                    if let Err(e) = st.put_bootstrap(&nydus.bootstrap.digest, &b) {
                        tracing::warn!(reference, error = %e, "storing the bootstrap");
                    }
                }
                b
            }
        };
        let image = Arc::new(Image::from_bytes(bootstrap)?);
        let missing = nydus.missing_blobs(&image);
        if !missing.is_empty() {
            return Err(NodeError::BadImage {
                reference: reference.to_string(),
                detail: format!(
                    "the bootstrap references blobs the manifest does not list: {missing:?}"
                ),
            });
        }
        let digests = Arc::new(distinct_digests(&image)?);
        let pin = match &store {
            Some(st) => Some(self.pins().pin(st, reference, &digests)?),
            None => None,
        };
        let nydus = Arc::new(nydus);
        // store (the resolver core's) → peers → Dragonfly seed peers → registry.
        let mut tiers = self.tiers_before_registry();
        tiers.extend(self.dragonfly_tier(&nydus)?);
        tiers.push(Arc::new(RegistryTier::new(self.registry()?, nydus.clone())));
        // The manifest's own sha256 (what `manifest_digest` names), computed here: the digest
        // string came from the registry or a stored record, and names the mount.
        let content_digest = dfagent_core::sha256_digest(&nydus.manifest_bytes);
        Ok(OpenedImage {
            source: ImageSource::Registry(reference.to_string()),
            image,
            nydus: Some(nydus),
            offline,
            resolver: Arc::new(Resolver::new(self.resolver_core().clone(), tiers)),
            pin,
            digests,
            content_digest,
        })
    }

    /// Resolve `reference`, preferring the registry and falling back to the store's record.
    /// Returns the image and whether the record was used.
    async fn resolve(&self, reference: &str) -> Result<(NydusImage, bool)> {
        let store = self.store();
        let stored = match store.map(|st| st.image_record(reference)) {
            Some(Ok(rec)) => rec,
            Some(Err(e)) => {
                tracing::warn!(reference, error = %e, "reading the stored image record");
                None
            }
            None => None,
        };
        let limit = if stored.is_some() {
            RESOLVE_TIMEOUT_WITH_COPY
        } else {
            RESOLVE_TIMEOUT
        };
        let online = tokio::time::timeout(limit, self.registry()?.resolve(reference)).await;
        let err = match online {
            Ok(Ok(img)) => {
                if let Some(st) = store {
                    if let Err(e) = st.put_image_record(reference, &img.to_record()) {
                        tracing::warn!(reference, error = %e, "storing the image record");
                    }
                }
                return Ok((img, false));
            }
            Ok(Err(e)) => NodeError::Registry(e),
            Err(_) => NodeError::Resolve {
                reference: reference.to_string(),
                detail: format!("the registry gave no answer within {limit:?}"),
            },
        };
        match stored {
            Some(rec) => {
                let img = NydusImage::from_record(&rec).ok_or_else(|| NodeError::Resolve {
                    reference: reference.to_string(),
                    detail: format!("{err}; and the store's record of it is unreadable"),
                })?;
                tracing::warn!(reference, error = %err, "registry unreachable; using the image as the store last saw it");
                Ok((img, true))
            }
            None => Err(err),
        }
    }
}
