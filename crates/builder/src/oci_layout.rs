//! An OCI image layout holding the Nydus image in nydusify's layout (`--oci-layout`), optionally
//! beside the source image under one index (`--merge-platform`). The documents come from
//! `dfagent_registry::nydus_manifest`, the same code `dfagent push` publishes with.

use std::collections::BTreeMap;
use std::path::Path;

use dfagent_core::{sha256_digest, BlobId};
use serde_json::json;

use crate::error::{BuildError, Result};
use crate::output::{copy_blob, copy_range, write_atomic};
use crate::source::{digest_hex, SourceImage, ANNOTATION_REF_NAME};
use crate::BuildOutput;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Write the Nydus image `built` (made from `src`) into the OCI image layout `dir` under
/// `tag`. Its config is the source's (entrypoint, env, ... carry over), as nydusify does.
/// With `merge`, the tag names an index holding the source image's manifest and the Nydus one
/// (with `os.features: ["nydus.remoteimage.v1"]`), and the source image's blobs are copied
/// into the layout too. Entries of `index.json` with other tags are kept. Returns the digest
/// the tag points to.
pub fn write_oci_layout(
    dir: &Path,
    tag: &str,
    built: &BuildOutput,
    src: &SourceImage,
    merge: bool,
) -> Result<String> {
    let bootstrap = std::fs::read(&built.bootstrap)
        .map_err(|e| BuildError::io(built.bootstrap.display(), e))?;
    let blobs: &[(BlobId, u64)] = &built.blobs;
    let blob_dir = &built.blob_dir;
    let platform = (src.platform.0.as_str(), src.platform.1.as_str());
    let base_config = src.config.as_ref().map(|c| c.bytes.as_slice());
    let merge = merge.then_some(src);
    let bdir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&bdir).map_err(|e| BuildError::io(bdir.display(), e))?;
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    for (id, _) in blobs {
        copy_blob(&blob_dir.join(id.hex()), &bdir.join(id.hex()))?;
    }
    let docs = dfagent_registry::nydus_manifest(&bootstrap, blobs, platform, base_config)?;
    let put = |digest: &str, data: &[u8]| -> Result<()> {
        let p = bdir.join(digest_hex(digest)?);
        if p.exists() {
            return Ok(());
        }
        write_atomic(&p, data)
    };
    put(&docs.bootstrap_layer_digest, &docs.bootstrap_layer)?;
    put(&docs.config_digest, &docs.config)?;
    put(&docs.manifest_digest, &docs.manifest)?;
    let (media_type, digest, size) = match merge {
        None => (
            OCI_MANIFEST.to_string(),
            docs.manifest_digest.clone(),
            docs.manifest.len() as u64,
        ),
        Some(src) => {
            let m = src.manifest.as_ref().ok_or_else(|| {
                BuildError::Option(
                    "--merge-platform needs a source with a manifest (an OCI layout or a \
                     registry image, not a docker archive)"
                        .into(),
                )
            })?;
            for (d, (file, off, size)) in &src.blob_files {
                copy_range(file, *off, *size, &bdir.join(digest_hex(d)?))?;
            }
            put(&m.digest, &m.bytes)?;
            let index = merged_index(
                (&m.media_type, &m.digest, m.bytes.len() as u64),
                (&docs.manifest_digest, docs.manifest.len() as u64),
                platform,
            );
            let d = sha256_digest(&index);
            put(&d, &index)?;
            (OCI_INDEX.to_string(), d, index.len() as u64)
        }
    };
    // index.json: keep entries of other tags.
    let index_path = dir.join("index.json");
    let mut entries: Vec<serde_json::Value> = match std::fs::read(&index_path) {
        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
            .ok()
            .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    entries.retain(|e| {
        e.get("annotations")
            .and_then(|a| a.get(ANNOTATION_REF_NAME))
            .and_then(|t| t.as_str())
            != Some(tag)
    });
    let mut ann = BTreeMap::new();
    ann.insert(ANNOTATION_REF_NAME, tag);
    entries.push(json!({
        "mediaType": media_type,
        "digest": digest,
        "size": size,
        "annotations": ann,
    }));
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    });
    let bytes =
        serde_json::to_vec(&index).map_err(|e| BuildError::Internal(format!("index.json: {e}")))?;
    write_atomic(&index_path, &bytes)?;
    Ok(digest)
}

/// An image index holding the source manifest and the Nydus manifest for one platform, the
/// Nydus entry marked with `os.features: ["nydus.remoteimage.v1"]` as nydusify does.
pub fn merged_index(
    source: (&str, &str, u64),
    nydus: (&str, u64),
    platform: (&str, &str),
) -> Vec<u8> {
    let v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": if source.0.is_empty() { OCI_MANIFEST } else { source.0 },
                "digest": source.1,
                "size": source.2,
                "platform": {"os": platform.0, "architecture": platform.1},
            },
            {
                "mediaType": OCI_MANIFEST,
                "digest": nydus.0,
                "size": nydus.1,
                "platform": {
                    "os": platform.0,
                    "architecture": platform.1,
                    "os.features": [dfagent_registry::OS_FEATURE_NYDUS],
                },
            },
        ],
    });
    serde_json::to_vec(&v).unwrap_or_default()
}
