//! The snapshot labels the remote-snapshotter protocol uses: what containerd and its CRI plugin
//! set during a pull, and what a layer's Nydus annotations become.

use std::collections::BTreeMap;

use dfagent_registry::{reference_with_digest, ANNOTATION_NYDUS_BLOB, ANNOTATION_NYDUS_BOOTSTRAP};

use crate::error::{Result, SnapshotterError};
use crate::meta::Remote;

/// The committed name containerd asks a remote snapshotter to create (the layer's chain id).
pub const TARGET_REF: &str = "containerd.io/snapshot.ref";
/// The image reference being pulled (set by the CRI plugin, and by `dfagent containerd pull`).
pub const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The digest of the image's manifest.
pub const MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// The digest of the layer being unpacked.
pub const LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// The layers from this one up, comma-separated (a hint; cut by containerd when long).
pub const IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
/// Label pointing a content blob at a snapshot of the named snapshotter (containerd's garbage
/// collector keeps the snapshot while the blob lives): `containerd.io/gc.ref.snapshot.<name>`.
pub const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// Label pointing a content blob at another one (manifest → config, layers).
pub const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content.";

/// Whether `labels` describe a Nydus layer, and if so the image it belongs to
/// (`host/repository@manifest-digest`). A Nydus layer without the image's reference and manifest
/// digest is an error: nothing could mount it, and unpacking it as a tar would fail.
pub fn nydus_layer(labels: &BTreeMap<String, String>) -> Result<Option<Remote>> {
    let is = |k: &str| labels.get(k).is_some_and(|v| v == "true");
    let bootstrap = is(ANNOTATION_NYDUS_BOOTSTRAP);
    if !bootstrap && !is(ANNOTATION_NYDUS_BLOB) {
        return Ok(None);
    }
    let (Some(reference), Some(digest)) = (labels.get(IMAGE_REF), labels.get(MANIFEST_DIGEST))
    else {
        return Err(SnapshotterError::FailedPrecondition(format!(
            "a Nydus layer comes without the labels {IMAGE_REF} and {MANIFEST_DIGEST}: pull \
             Nydus images with `dfagent containerd pull` or through the CRI plugin \
             (disable_snapshot_annotations = false)"
        )));
    };
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SnapshotterError::InvalidArgument(format!(
            "label {MANIFEST_DIGEST}: {digest:?} is not a sha256 digest"
        )));
    }
    let image = reference_with_digest(reference, digest)
        .map_err(|e| SnapshotterError::InvalidArgument(format!("label {IMAGE_REF}: {e}")))?;
    Ok(Some(Remote { image, bootstrap }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nydus_layers_are_told_from_ordinary_ones() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(nydus_layer(&l(&[(IMAGE_REF, "x")])).unwrap(), None);
        let r = nydus_layer(&l(&[
            (ANNOTATION_NYDUS_BOOTSTRAP, "true"),
            (IMAGE_REF, "localhost:5000/app:v1"),
            (MANIFEST_DIGEST, &d),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(r.image, format!("localhost:5000/app@{d}"));
        assert!(r.bootstrap);
        let e = nydus_layer(&l(&[(ANNOTATION_NYDUS_BLOB, "true")])).unwrap_err();
        assert!(e.to_string().contains("dfagent containerd pull"), "{e}");
        for bad in ["sha256:zz", "md5:aa"] {
            assert!(nydus_layer(&l(&[
                (ANNOTATION_NYDUS_BLOB, "true"),
                (IMAGE_REF, "localhost:5000/app:v1"),
                (MANIFEST_DIGEST, bad),
            ]))
            .is_err());
        }
    }
}
