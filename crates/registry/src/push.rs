//! Publishing a local Nydus image (a bootstrap plus a directory of blobs named by sha256) in the
//! layout nydusify uses, so that nydus-snapshotter, nydusify and our own `resolve` accept it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use dfagent_core::{sha256_digest, BlobId};
use oci_client::manifest::{OciDescriptor, OciImageManifest, IMAGE_CONFIG_MEDIA_TYPE};
use oci_client::manifest::{IMAGE_LAYER_GZIP_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE};
use oci_client::Reference;
use sha2::Digest as _;
use tracing::{debug, info};

use crate::client::{parse_reference, Registry, MAX_BOOTSTRAP_SIZE};
use crate::error::{Failure, RegistryError, Result};
use crate::image::{
    ANNOTATION_NYDUS_BLOB, ANNOTATION_NYDUS_BLOB_IDS, ANNOTATION_NYDUS_BOOTSTRAP,
    ANNOTATION_NYDUS_FS_VERSION, ANNOTATION_UNCOMPRESSED, BOOTSTRAP_PATH_IN_LAYER,
    MEDIA_TYPE_NYDUS_BLOB,
};

/// Size of the pieces a blob file is streamed in (one chunked-upload PATCH each).
const UPLOAD_PIECE: usize = 4 << 20;

/// The bootstrap layer: a deterministic tar of `image/image.boot` and its gzip.
pub(crate) struct BootstrapLayer {
    /// The uncompressed tar (its sha256 is the layer's diff id).
    pub(crate) tar: Vec<u8>,
    /// The gzip'd tar (the layer blob).
    pub(crate) compressed: Vec<u8>,
}

/// Build the bootstrap layer for `bootstrap`: a tar holding the directory `image/` and the file
/// `image/image.boot`, with mtime 0, uid/gid 0, modes 0755/0644, gzip'd with a zero timestamp,
/// so the same bootstrap always gives the same layer digest.
pub(crate) fn bootstrap_layer(bootstrap: &[u8]) -> Result<BootstrapLayer> {
    let io = |source| RegistryError::Io {
        path: "bootstrap layer".into(),
        source,
    };
    let mut b = tar::Builder::new(Vec::with_capacity(bootstrap.len() + 2048));
    b.mode(tar::HeaderMode::Deterministic);
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_uid(0);
    dir.set_gid(0);
    dir.set_mtime(0);
    dir.set_size(0);
    dir.set_cksum();
    b.append_data(&mut dir, "image/", std::io::empty())
        .map_err(io)?;
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o644);
    file.set_uid(0);
    file.set_gid(0);
    file.set_mtime(0);
    file.set_size(bootstrap.len() as u64);
    file.set_cksum();
    b.append_data(&mut file, BOOTSTRAP_PATH_IN_LAYER, bootstrap)
        .map_err(io)?;
    let tar = b.into_inner().map_err(io)?;
    let mut gz = flate2::GzBuilder::new().mtime(0).write(
        Vec::with_capacity(tar.len() / 2),
        flate2::Compression::default(),
    );
    gz.write_all(&tar).map_err(io)?;
    let compressed = gz.finish().map_err(io)?;
    Ok(BootstrapLayer { tar, compressed })
}

/// sha256 and size of a file, read in pieces.
fn hash_file(path: &Path) -> Result<(String, u64)> {
    let io = |source| RegistryError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(h.finalize())), size))
}

/// The image config we write: just enough for OCI tooling (platform and diff ids).
#[derive(serde::Serialize)]
struct ImageConfig<'a> {
    architecture: &'a str,
    os: &'a str,
    rootfs: RootFs,
}

#[derive(serde::Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

/// One blob to upload: where its bytes come from.
enum Upload {
    File(PathBuf),
    Memory(Bytes),
}

/// The documents of a Nydus image in nydusify's layout, ready to be written to an OCI layout
/// directory or pushed: one `application/vnd.oci.image.layer.nydus.blob.v1` layer per data blob
/// (annotated `containerd.io/snapshot/nydus-blob`), then the bootstrap as a deterministic tar.gz
/// layer (annotated `containerd.io/snapshot/nydus-bootstrap` and the fs version), and a minimal
/// OCI config. The same inputs always give the same bytes.
#[derive(Clone, Debug)]
pub struct NydusManifest {
    /// The OCI image manifest (media type [`OCI_IMAGE_MEDIA_TYPE`]).
    pub manifest: Vec<u8>,
    /// `sha256:` digest of `manifest`.
    pub manifest_digest: String,
    /// The image config.
    pub config: Vec<u8>,
    /// `sha256:` digest of `config`.
    pub config_digest: String,
    /// The bootstrap layer (gzip'd tar holding `image/image.boot`).
    pub bootstrap_layer: Vec<u8>,
    /// `sha256:` digest of `bootstrap_layer`.
    pub bootstrap_layer_digest: String,
}

/// Build the manifest, config and bootstrap layer of a Nydus image whose data blobs are
/// `blobs` (id and size, in the bootstrap's blob table order) for platform `(os, arch)`.
/// With `base_config` (the source image's config, as nydusify does) the config keeps
/// everything the source says (entrypoint, env, ...) except `rootfs` (replaced) and
/// `history` (dropped); without, it is a minimal config.
pub fn nydus_manifest(
    bootstrap: &[u8],
    blobs: &[(BlobId, u64)],
    platform: (&str, &str),
    base_config: Option<&[u8]>,
) -> Result<NydusManifest> {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (id, size) in blobs {
        let digest = id.oci_digest();
        layers.push(OciDescriptor {
            media_type: MEDIA_TYPE_NYDUS_BLOB.to_string(),
            digest: digest.clone(),
            size: i64::try_from(*size)
                .map_err(|_| RegistryError::Protocol(format!("blob {id} is too large")))?,
            annotations: Some(BTreeMap::from([(
                ANNOTATION_NYDUS_BLOB.to_string(),
                "true".to_string(),
            )])),
            ..OciDescriptor::default()
        });
        diff_ids.push(digest);
    }
    let blob_ids = serde_json::to_string(&blobs.iter().map(|(id, _)| id.hex()).collect::<Vec<_>>())
        .map_err(|e| RegistryError::Protocol(format!("cannot serialize blob ids: {e}")))?;
    let boot = bootstrap_layer(bootstrap)?;
    let boot_diff_id = sha256_digest(&boot.tar);
    let boot_digest = sha256_digest(&boot.compressed);
    layers.push(OciDescriptor {
        media_type: IMAGE_LAYER_GZIP_MEDIA_TYPE.to_string(),
        digest: boot_digest.clone(),
        size: boot.compressed.len() as i64,
        annotations: Some(BTreeMap::from([
            (ANNOTATION_NYDUS_BOOTSTRAP.to_string(), "true".to_string()),
            (ANNOTATION_NYDUS_FS_VERSION.to_string(), "6".to_string()),
            (ANNOTATION_NYDUS_BLOB_IDS.to_string(), blob_ids),
            (ANNOTATION_UNCOMPRESSED.to_string(), boot_diff_id.clone()),
        ])),
        ..OciDescriptor::default()
    });
    diff_ids.push(boot_diff_id);
    let rootfs = RootFs {
        kind: "layers",
        diff_ids,
    };
    let base = base_config.and_then(|b| {
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(b) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "source image config is not a JSON object; writing a minimal one");
                None
            }
        }
    });
    let config = match base {
        Some(mut m) => {
            m.remove("history");
            m.insert(
                "rootfs".into(),
                serde_json::to_value(&rootfs).map_err(|e| {
                    RegistryError::Protocol(format!("cannot serialize rootfs: {e}"))
                })?,
            );
            serde_json::to_vec(&m)
        }
        None => serde_json::to_vec(&ImageConfig {
            architecture: platform.1,
            os: platform.0,
            rootfs,
        }),
    }
    .map_err(|e| RegistryError::Protocol(format!("cannot serialize the image config: {e}")))?;
    let config_digest = sha256_digest(&config);
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        config: OciDescriptor {
            media_type: IMAGE_CONFIG_MEDIA_TYPE.to_string(),
            digest: config_digest.clone(),
            size: config.len() as i64,
            ..OciDescriptor::default()
        },
        layers,
        subject: None,
        artifact_type: None,
        annotations: None,
    };
    let manifest = serde_json::to_vec(&manifest)
        .map_err(|e| RegistryError::Protocol(format!("cannot serialize the manifest: {e}")))?;
    Ok(NydusManifest {
        manifest_digest: sha256_digest(&manifest),
        manifest,
        config,
        config_digest,
        bootstrap_layer_digest: boot_digest,
        bootstrap_layer: boot.compressed,
    })
}

impl Registry {
    /// Publish the local Nydus image `bootstrap` + `blob_dir` (blobs named by their sha256, as
    /// `nydus-image` writes them) under `reference`, in nydusify's layout (see
    /// [`nydus_manifest`]). Blobs the registry already has are not uploaded again. Returns the
    /// manifest digest.
    pub async fn push_nydus(
        &self,
        reference: &str,
        bootstrap: &Path,
        blob_dir: &Path,
    ) -> Result<String> {
        self.push_nydus_with_config(reference, bootstrap, blob_dir, None)
            .await
    }

    /// [`Registry::push_nydus`] with the source image's config as the base of the Nydus
    /// image's config (see [`nydus_manifest`]).
    pub async fn push_nydus_with_config(
        &self,
        reference: &str,
        bootstrap: &Path,
        blob_dir: &Path,
        base_config: Option<Vec<u8>>,
    ) -> Result<String> {
        let r = parse_reference(reference)?;
        let image = dfagent_rafs::Image::open(bootstrap)?;
        let boot_bytes = std::fs::read(bootstrap).map_err(|source| RegistryError::Io {
            path: bootstrap.display().to_string(),
            source,
        })?;
        if boot_bytes.len() as u64 > MAX_BOOTSTRAP_SIZE {
            return Err(RegistryError::TooLarge {
                what: format!("bootstrap {}", bootstrap.display()),
                size: boot_bytes.len() as u64,
                limit: MAX_BOOTSTRAP_SIZE,
            });
        }

        // Data blobs: check each file is what the bootstrap names.
        let mut uploads = Vec::new();
        let mut blobs = Vec::new();
        let blob_ids: Vec<BlobId> = image.blobs().iter().map(|b| b.id).collect();
        for id in blob_ids {
            let path = blob_dir.join(id.hex());
            let p = path.clone();
            let (digest, size) = tokio::task::spawn_blocking(move || hash_file(&p))
                .await
                .map_err(|e| RegistryError::Protocol(format!("hashing task failed: {e}")))??;
            if digest != id.oci_digest() {
                return Err(RegistryError::Digest {
                    what: format!("blob file {}", path.display()),
                    expected: id.oci_digest(),
                    actual: digest,
                });
            }
            uploads.push((digest, size, Upload::File(path)));
            blobs.push((id, size));
        }

        let platform = self.config().platform.clone();
        let docs = tokio::task::spawn_blocking(move || {
            nydus_manifest(
                &boot_bytes,
                &blobs,
                (&platform.0, &platform.1),
                base_config.as_deref(),
            )
        })
        .await
        .map_err(|e| RegistryError::Protocol(format!("bootstrap packing task failed: {e}")))??;
        uploads.push((
            docs.bootstrap_layer_digest.clone(),
            docs.bootstrap_layer.len() as u64,
            Upload::Memory(Bytes::from(docs.bootstrap_layer)),
        ));
        uploads.push((
            docs.config_digest.clone(),
            docs.config.len() as u64,
            Upload::Memory(Bytes::from(docs.config)),
        ));

        let uploaded = self.upload_missing(&r, &uploads).await?;
        let digest = docs.manifest_digest;
        self.put_manifest(
            &r,
            docs.manifest,
            http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
        )
        .await?;
        info!(reference, %digest, uploaded, blobs = uploads.len(), "pushed Nydus image");
        Ok(digest)
    }

    /// Upload the blob files `files` (`digest`, size, path; whole files) that the repository
    /// of `reference` lacks. Returns how many were uploaded.
    pub async fn push_blob_files(
        &self,
        reference: &str,
        files: &[(String, u64, PathBuf)],
    ) -> Result<usize> {
        let r = parse_reference(reference)?;
        let uploads: Vec<(String, u64, Upload)> = files
            .iter()
            .map(|(d, s, p)| (d.clone(), *s, Upload::File(p.clone())))
            .collect();
        self.upload_missing(&r, &uploads).await
    }

    /// Push a manifest or index `body` of `media_type` under `reference` (a tag, or the body's
    /// digest). Returns the body's digest.
    pub async fn push_manifest(
        &self,
        reference: &str,
        body: Vec<u8>,
        media_type: &str,
    ) -> Result<String> {
        let r = parse_reference(reference)?;
        let digest = sha256_digest(&body);
        let content_type = http::HeaderValue::from_str(media_type)
            .map_err(|_| RegistryError::InvalidRequest(format!("media type {media_type:?}")))?;
        self.put_manifest(&r, body, content_type).await?;
        Ok(digest)
    }

    async fn upload_missing(
        &self,
        r: &Reference,
        uploads: &[(String, u64, Upload)],
    ) -> Result<usize> {
        let mut uploaded = 0usize;
        for (digest, size, source) in uploads {
            if self.blob_exists(r, digest).await? {
                debug!(%digest, "blob already in the registry");
                continue;
            }
            let what = format!("upload blob {digest} ({size} bytes)");
            self.with_retries(&what, || {
                self.attempt_upload(r, digest, *size, source, &what)
            })
            .await?;
            uploaded += 1;
        }
        Ok(uploaded)
    }

    async fn put_manifest(
        &self,
        r: &Reference,
        body: Vec<u8>,
        content_type: http::HeaderValue,
    ) -> Result<()> {
        let body = Bytes::from(body);
        let what = format!("push manifest {}", r.whole());
        self.with_retries(&what, || {
            self.attempt_push_manifest(r, body.clone(), content_type.clone(), &what)
        })
        .await
    }

    /// Whether the repository of `r` already has blob `digest`.
    async fn blob_exists(&self, r: &Reference, digest: &str) -> Result<bool> {
        let what = format!("check blob {digest}");
        let what = what.as_str();
        self.with_retries(what, || async move {
            // A HEAD needs only pull rights.
            let (host, client) = self.prepare(r, crate::client::Op::Pull).await?;
            client
                .blob_exists(r, digest)
                .await
                .map_err(|e| self.failure(&host, r, e, what))
        })
        .await
    }

    async fn attempt_upload(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        source: &Upload,
        what: &str,
    ) -> std::result::Result<(), Failure> {
        let (host, client) = self.prepare(r, crate::client::Op::Push).await?;
        let res = match source {
            Upload::Memory(data) => client.push_blob(r, data.clone(), digest).await,
            Upload::File(path) => {
                let file =
                    tokio::fs::File::open(path)
                        .await
                        .map_err(|source| RegistryError::Io {
                            path: path.display().to_string(),
                            source,
                        })?;
                client
                    .push_blob_stream(r, file_stream(file), digest, Some(size))
                    .await
            }
        };
        res.map(|_| ()).map_err(|e| self.failure(&host, r, e, what))
    }

    async fn attempt_push_manifest(
        &self,
        r: &Reference,
        body: Bytes,
        content_type: http::HeaderValue,
        what: &str,
    ) -> std::result::Result<(), Failure> {
        let (host, client) = self.prepare(r, crate::client::Op::Push).await?;
        client
            .push_manifest_raw(r, body, content_type)
            .await
            .map(|_| ())
            .map_err(|e| self.failure(&host, r, e, what))
    }
}

/// A file as a stream of [`UPLOAD_PIECE`]-sized pieces (the last one shorter).
fn file_stream(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = oci_client::errors::Result<Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; UPLOAD_PIECE];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Some((Err(e.into()), None)),
            }
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        let next = (filled == UPLOAD_PIECE).then_some(file);
        Some((Ok(Bytes::from(buf)), next))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_layer_is_deterministic_and_readable() {
        let boot = vec![7u8; 10_000];
        let a = bootstrap_layer(&boot).unwrap();
        let b = bootstrap_layer(&boot).unwrap();
        assert_eq!(a.compressed, b.compressed);
        assert_eq!(a.tar, b.tar);
        let mut ar = tar::Archive::new(&a.tar[..]);
        let names: Vec<(String, u32, u64, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("image/".to_string(), 0o755, 0, 0),
                ("image/image.boot".to_string(), 0o644, 0, 0)
            ]
        );
    }
}
