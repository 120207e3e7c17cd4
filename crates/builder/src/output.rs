//! Writing results: files appear complete or not at all (temporary file in the same directory,
//! then rename), and an OCI image layout holding the Nydus image in nydusify's layout
//! (optionally beside the source image under one index, `--merge-platform`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use dfagent_core::BlobId;
use serde_json::json;

use crate::error::{Error, Result};
use crate::source::{digest_hex, sha256_digest, SourceImage, ANNOTATION_REF_NAME};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Write `data` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir.display(), e))?;
    tmp.write_all(data)
        .map_err(|e| Error::io(tmp.path().display(), e))?;
    publishable(tmp.as_file(), tmp.path())?;
    tmp.persist(path)
        .map_err(|e| Error::io(path.display(), e.error))?;
    Ok(())
}

/// Make a finished file readable by all (temporary files start private), mode 0644.
pub fn publishable(f: &std::fs::File, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io(path.display(), e))
}

/// Put a copy of file `src` at `dest` (a hard link when possible), unless `dest` exists.
pub fn copy_blob(src: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        return Ok(());
    }
    if std::fs::hard_link(src, dest).is_ok() {
        return Ok(());
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir.display(), e))?;
    let mut f = std::fs::File::open(src).map_err(|e| Error::io(src.display(), e))?;
    std::io::copy(&mut f, &mut tmp).map_err(|e| Error::io(dest.display(), e))?;
    publishable(tmp.as_file(), tmp.path())?;
    tmp.persist(dest)
        .map_err(|e| Error::io(dest.display(), e.error))?;
    Ok(())
}

/// Copy bytes `[offset, offset+size)` of `src` to `dest` (a source layer inside an archive).
fn copy_range(src: &Path, offset: u64, size: u64, dest: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    if dest.exists() {
        return Ok(());
    }
    if offset == 0
        && std::fs::metadata(src)
            .map(|m| m.len() == size)
            .unwrap_or(false)
    {
        return copy_blob(src, dest);
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir.display(), e))?;
    let mut f = std::fs::File::open(src).map_err(|e| Error::io(src.display(), e))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| Error::io(src.display(), e))?;
    std::io::copy(&mut f.take(size), &mut tmp).map_err(|e| Error::io(dest.display(), e))?;
    publishable(tmp.as_file(), tmp.path())?;
    tmp.persist(dest)
        .map_err(|e| Error::io(dest.display(), e.error))?;
    Ok(())
}

/// Parse `--oci-layout DIR[:TAG]` (tag default `latest`).
pub fn parse_layout_arg(s: &str) -> (std::path::PathBuf, String) {
    match s.rsplit_once(':') {
        Some((d, t)) if !d.is_empty() && !t.is_empty() && !t.contains('/') => {
            (d.into(), t.to_string())
        }
        _ => (s.into(), "latest".to_string()),
    }
}

/// Write the Nydus image (`bootstrap` and `blobs` from `blob_dir`) into the OCI image layout
/// `dir` under `tag`. With `merge`, the tag names an index holding the source image's manifest
/// and the Nydus one (with `os.features: ["nydus.remoteimage.v1"]`), and the source image's
/// blobs are copied into the layout too. Entries of `index.json` with other tags are kept.
/// Returns the digest the tag points to.
pub fn write_oci_layout(
    dir: &Path,
    tag: &str,
    bootstrap: &[u8],
    blobs: &[(BlobId, u64)],
    blob_dir: &Path,
    platform: (&str, &str),
    merge: Option<&SourceImage>,
) -> Result<String> {
    let bdir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&bdir).map_err(|e| Error::io(bdir.display(), e))?;
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    for (id, _) in blobs {
        copy_blob(&blob_dir.join(id.hex()), &bdir.join(id.hex()))?;
    }
    let docs = dfagent_registry::nydus_manifest(bootstrap, blobs, platform)?;
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
                Error::Option(
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
        serde_json::to_vec(&index).map_err(|e| Error::Internal(format!("index.json: {e}")))?;
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
