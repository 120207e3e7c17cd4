//! The Nydus image layout in a registry, as nydusify and the nydus converter publish it, and the
//! parts of a manifest the agent needs.
//!
//! A Nydus image manifest has one layer per data blob (media type
//! [`MEDIA_TYPE_NYDUS_BLOB`], annotated [`ANNOTATION_NYDUS_BLOB`]`: "true"`) and, last, a
//! gzip'd tar holding the bootstrap at [`BOOTSTRAP_PATH_IN_LAYER`] (annotated
//! [`ANNOTATION_NYDUS_BOOTSTRAP`]`: "true"` and [`ANNOTATION_NYDUS_FS_VERSION`]). When the
//! Nydus image sits next to an OCI image in an index, its entry carries the OS feature
//! [`OS_FEATURE_NYDUS`].

use std::collections::BTreeMap;

use dfagent_core::BlobId;
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageManifest};
use oci_client::Reference;

use crate::error::{RegistryError, Result};

/// Media type of a Nydus data blob layer.
pub const MEDIA_TYPE_NYDUS_BLOB: &str = "application/vnd.oci.image.layer.nydus.blob.v1";
/// Layer annotation marking a Nydus data blob.
pub const ANNOTATION_NYDUS_BLOB: &str = "containerd.io/snapshot/nydus-blob";
/// Bootstrap layer annotation listing the data blob ids (JSON array of hex sha256s), as
/// nydusify writes it.
pub const ANNOTATION_NYDUS_BLOB_IDS: &str = "containerd.io/snapshot/nydus-blob-ids";
/// Layer annotation marking the Nydus bootstrap layer.
pub const ANNOTATION_NYDUS_BOOTSTRAP: &str = "containerd.io/snapshot/nydus-bootstrap";
/// Layer annotation giving the RAFS version of the bootstrap (`"5"` or `"6"`).
pub const ANNOTATION_NYDUS_FS_VERSION: &str = "containerd.io/snapshot/nydus-fs-version";
/// Layer annotation giving the digest of the uncompressed layer (its diff id).
pub const ANNOTATION_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// OS feature of an index entry that points at a Nydus manifest.
pub const OS_FEATURE_NYDUS: &str = "nydus.remoteimage.v1";
/// Path of the bootstrap inside the bootstrap layer's tar.
pub const BOOTSTRAP_PATH_IN_LAYER: &str = "image/image.boot";

/// A content descriptor: what a manifest says about one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// Digest (`sha256:<hex>`) that names and verifies the content.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// A Nydus image found in a registry: where it lives, its manifest, its bootstrap layer and its
/// data blobs. What [`crate::Registry::resolve`] returns and every later read takes.
#[derive(Clone, Debug)]
pub struct NydusImage {
    /// The reference as the user gave it.
    pub reference: String,
    /// Registry host[:port] the image is read from.
    pub registry: String,
    /// Repository path within the registry.
    pub repository: String,
    /// Digest of the Nydus image manifest (not of an index that pointed to it).
    pub manifest_digest: String,
    /// The manifest exactly as the registry served it (its sha256 is `manifest_digest`).
    pub manifest_bytes: Vec<u8>,
    /// The layer holding the bootstrap.
    pub bootstrap: Descriptor,
    /// Data blobs: the Nydus blob layers in manifest order, with their sizes.
    pub blobs: Vec<(BlobId, u64)>,
}

impl NydusImage {
    /// A JSON record of everything needed to use the image again without the registry (what
    /// the chunk store keeps so that a mount works offline).
    pub fn to_record(&self) -> Vec<u8> {
        let blobs: Vec<serde_json::Value> = self
            .blobs
            .iter()
            .map(|(id, size)| serde_json::json!([id.hex(), size]))
            .collect();
        serde_json::json!({
            "reference": self.reference,
            "registry": self.registry,
            "repository": self.repository,
            "manifest_digest": self.manifest_digest,
            "manifest_hex": hex::encode(&self.manifest_bytes),
            "bootstrap": {
                "media_type": self.bootstrap.media_type,
                "digest": self.bootstrap.digest,
                "size": self.bootstrap.size,
            },
            "blobs": blobs,
        })
        .to_string()
        .into_bytes()
    }

    /// Parse a record written by [`NydusImage::to_record`].
    pub fn from_record(bytes: &[u8]) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let s = |k: &str| v.get(k)?.as_str().map(str::to_string);
        let b = v.get("bootstrap")?;
        let mut blobs = Vec::new();
        for e in v.get("blobs")?.as_array()? {
            let id: BlobId = e.get(0)?.as_str()?.parse().ok()?;
            blobs.push((id, e.get(1)?.as_u64()?));
        }
        Some(NydusImage {
            reference: s("reference")?,
            registry: s("registry")?,
            repository: s("repository")?,
            manifest_digest: s("manifest_digest")?,
            manifest_bytes: hex::decode(s("manifest_hex")?).ok()?,
            bootstrap: Descriptor {
                media_type: b.get("media_type")?.as_str()?.to_string(),
                digest: b.get("digest")?.as_str()?.to_string(),
                size: b.get("size")?.as_u64()?,
            },
            blobs,
        })
    }

    /// Size of data blob `blob`, if the image has it.
    pub fn blob_size(&self, blob: &BlobId) -> Option<u64> {
        self.blobs.iter().find(|(b, _)| b == blob).map(|(_, s)| *s)
    }

    /// Data blobs `bootstrap` references that the manifest does not list: chunks in them cannot
    /// be read from this registry. Empty for a well-formed image.
    pub fn missing_blobs(&self, bootstrap: &dfagent_rafs::Image) -> Vec<BlobId> {
        bootstrap
            .blobs()
            .iter()
            .map(|b| b.id)
            .filter(|id| self.blob_size(id).is_none())
            .collect()
    }

    /// The image pinned by manifest digest, for requests to its repository.
    pub(crate) fn oci_reference(&self) -> Reference {
        Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            self.manifest_digest.clone(),
        )
    }
}

fn annotation<'a>(annotations: &'a Option<BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    annotations.as_ref()?.get(key).map(String::as_str)
}

/// Whether a layer is the Nydus bootstrap layer.
pub(crate) fn is_bootstrap_layer(layer: &OciDescriptor) -> bool {
    annotation(&layer.annotations, ANNOTATION_NYDUS_BOOTSTRAP) == Some("true")
}

/// Whether a manifest has a Nydus bootstrap layer.
pub(crate) fn has_bootstrap_layer(manifest: &OciImageManifest) -> bool {
    manifest.layers.iter().any(is_bootstrap_layer)
}

fn descriptor_size(d: &OciDescriptor) -> Result<u64> {
    u64::try_from(d.size).map_err(|_| {
        RegistryError::Protocol(format!("layer {} has negative size {}", d.digest, d.size))
    })
}

/// The bootstrap layer and data blobs of a Nydus image manifest.
pub(crate) fn nydus_parts(
    reference: &str,
    manifest: &OciImageManifest,
) -> Result<(Descriptor, Vec<(BlobId, u64)>)> {
    let bootstraps: Vec<&OciDescriptor> = manifest
        .layers
        .iter()
        .filter(|l| is_bootstrap_layer(l))
        .collect();
    let boot = match bootstraps.as_slice() {
        [] => {
            return Err(RegistryError::NotNydus {
                reference: reference.to_string(),
                detail: format!(
                    "the manifest has no layer annotated {ANNOTATION_NYDUS_BOOTSTRAP}: \"true\" \
                     ({} layers)",
                    manifest.layers.len()
                ),
            })
        }
        [one] => *one,
        more => {
            return Err(RegistryError::Protocol(format!(
                "{reference}: the manifest has {} bootstrap layers",
                more.len()
            )))
        }
    };
    let bootstrap = Descriptor {
        media_type: boot.media_type.clone(),
        digest: boot.digest.clone(),
        size: descriptor_size(boot)?,
    };
    let mut blobs = Vec::new();
    for layer in &manifest.layers {
        if layer.media_type != MEDIA_TYPE_NYDUS_BLOB {
            continue;
        }
        let id: BlobId = layer.digest.parse().map_err(|_| {
            RegistryError::Protocol(format!(
                "{reference}: Nydus blob layer digest {:?} is not a sha256 digest",
                layer.digest
            ))
        })?;
        blobs.push((id, descriptor_size(layer)?));
    }
    Ok((bootstrap, blobs))
}

/// Index entries for `(os, arch)`, the ones advertising [`OS_FEATURE_NYDUS`] first. Returns the
/// digests to try in order, and whether the first one is a declared Nydus manifest.
pub(crate) fn index_candidates(entries: &[ImageIndexEntry], os: &str, arch: &str) -> Vec<String> {
    let matching: Vec<&ImageIndexEntry> = entries
        .iter()
        .filter(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os.to_string() == os && p.architecture.to_string() == arch)
        })
        .collect();
    let declared = |e: &&ImageIndexEntry| {
        e.platform
            .as_ref()
            .and_then(|p| p.os_features.as_ref())
            .is_some_and(|f| f.iter().any(|x| x == OS_FEATURE_NYDUS))
    };
    let mut out: Vec<String> = matching
        .iter()
        .filter(|e| declared(e))
        .map(|e| e.digest.clone())
        .collect();
    out.extend(
        matching
            .iter()
            .filter(|e| !declared(e))
            .map(|e| e.digest.clone()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::manifest::OciManifest;

    const BLOB: &str = "sha256:fad2542498a44f79c3b4ffeeee753ff15692a66557cb775d025523591e56b59e";

    fn manifest(layers: serde_json::Value) -> OciImageManifest {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": BLOB, "size": 2},
            "layers": layers,
        });
        match serde_json::from_value::<OciManifest>(m).unwrap() {
            OciManifest::Image(i) => i,
            OciManifest::ImageIndex(_) => panic!("index"),
        }
    }

    #[test]
    fn finds_bootstrap_and_blobs() {
        let m = manifest(serde_json::json!([
            {"mediaType": MEDIA_TYPE_NYDUS_BLOB, "digest": BLOB, "size": 10,
             "annotations": {ANNOTATION_NYDUS_BLOB: "true"}},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:00", "size": 5,
             "annotations": {ANNOTATION_NYDUS_BOOTSTRAP: "true"}},
        ]));
        let (boot, blobs) = nydus_parts("r", &m).unwrap();
        assert_eq!(boot.digest, "sha256:00");
        assert_eq!(boot.size, 5);
        assert_eq!(blobs.len(), 1);
        assert_eq!(blobs[0].1, 10);
        assert_eq!(blobs[0].0.oci_digest(), BLOB);
    }

    #[test]
    fn plain_oci_image_is_not_nydus() {
        let m = manifest(serde_json::json!([
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": BLOB, "size": 5},
        ]));
        let e = nydus_parts("reg/x:1", &m).unwrap_err();
        assert!(
            e.to_string().starts_with("not a Nydus image: reg/x:1"),
            "{e}"
        );
    }

    #[test]
    fn prefers_entries_with_the_nydus_feature() {
        let idx = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:a", "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:b", "size": 1,
                 "platform": {"os": "linux", "architecture": "arm64", "os.features": [OS_FEATURE_NYDUS]}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:c", "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64", "os.features": [OS_FEATURE_NYDUS]}},
            ]
        });
        let OciManifest::ImageIndex(i) = serde_json::from_value::<OciManifest>(idx).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(
            index_candidates(&i.manifests, "linux", "amd64"),
            vec!["sha256:c".to_string(), "sha256:a".to_string()]
        );
        assert_eq!(
            index_candidates(&i.manifests, "linux", "arm64"),
            vec!["sha256:b".to_string()]
        );
        assert!(index_candidates(&i.manifests, "windows", "amd64").is_empty());
    }
}
