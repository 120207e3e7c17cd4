//! `dfagent containerd pull`: a Nydus image made ready for `ctr run --snapshotter dfagent`
//! through containerd's own API, the way containerd's CRI plugin pulls for a remote snapshotter:
//! the manifest and config go into containerd's content store (with the garbage collector's
//! references), each layer is prepared through containerd on the dfagent snapshotter with the
//! image's labels (which commits it at once: no layer is downloaded), and the image record points
//! at the manifest. A lease keeps everything from the garbage collector until the image exists.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1 as svc;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::Descriptor as ApiDescriptor;
use dfagent_registry::Registry;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tracing::{debug, info};

use crate::error::{Result, SnapshotterError};
use crate::labels;

/// containerd's namespace for Kubernetes' images (the CRI plugin's), the default.
pub const DEFAULT_NAMESPACE: &str = "k8s.io";
/// The snapshotter's name in containerd's `proxy_plugins`.
pub const DEFAULT_SNAPSHOTTER: &str = "dfagent";
/// Largest image config read.
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// How long containerd keeps a pull's lease if the pull dies half way.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);
/// containerd's limit on one label (key and value).
const MAX_LABEL_BYTES: usize = 4096;

/// Where and how to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// containerd's socket.
    pub address: PathBuf,
    /// containerd namespace.
    pub namespace: String,
    /// The snapshotter's name in containerd's configuration.
    pub snapshotter: String,
}

/// What a pull did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullReport {
    /// The image name recorded in containerd.
    pub name: String,
    /// The manifest's digest.
    pub manifest_digest: String,
    /// Layers in the image.
    pub layers: usize,
    /// Layers the snapshotter committed in this pull (the rest were there).
    pub prepared: usize,
    /// Chain id of the top layer (the parent of every container's snapshot).
    pub chain_id: String,
    /// Wall time.
    pub elapsed: Duration,
}

#[derive(Deserialize)]
struct ManifestDoc {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: DescriptorDoc,
    layers: Vec<DescriptorDoc>,
}

#[derive(Deserialize)]
struct DescriptorDoc {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ConfigDoc {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// The chain ids of layers with `diff_ids` (OCI image spec: the first is its diff id, each next
/// is the sha256 of "parent-chain-id diff-id").
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let id = match out.last() {
            None => d.clone(),
            Some(p) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{p} {d}").as_bytes()))
            ),
        };
        out.push(id);
    }
    out
}

/// Requests with the namespace and (once made) the pull's lease.
struct Ctx {
    channel: Channel,
    namespace: String,
    lease: Option<String>,
}

impl Ctx {
    fn req<T>(&self, msg: T) -> Result<Request<T>> {
        let mut r = Request::new(msg);
        let bad = |what: &str| SnapshotterError::InvalidArgument(format!("bad {what}"));
        r.metadata_mut().insert(
            "containerd-namespace",
            self.namespace.parse().map_err(|_| bad("namespace"))?,
        );
        if let Some(l) = &self.lease {
            r.metadata_mut()
                .insert("containerd-lease", l.parse().map_err(|_| bad("lease"))?);
        }
        Ok(r)
    }
}

fn rpc(call: &'static str) -> impl Fn(tonic::Status) -> SnapshotterError {
    move |s| SnapshotterError::Containerd {
        call,
        status: s.message().to_string(),
        code: s.code(),
    }
}

/// `unix seconds` as RFC 3339 UTC (what containerd's `containerd.io/gc.expire` label takes).
fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Pull `reference` (a Nydus image) for the dfagent snapshotter of the containerd at
/// `opts.address`. Ordinary OCI images are pulled by containerd itself
/// (`ctr image pull --snapshotter dfagent`): the snapshotter unpacks them like overlayfs.
pub async fn pull(registry: &Registry, reference: &str, opts: &PullOptions) -> Result<PullReport> {
    let started = Instant::now();
    let image = registry.resolve(reference).await?;
    let manifest: ManifestDoc =
        serde_json::from_slice(&image.manifest_bytes).map_err(|e| SnapshotterError::Image {
            reference: reference.to_string(),
            detail: format!("manifest: {e}"),
        })?;
    if manifest.config.size > MAX_CONFIG_BYTES {
        return Err(SnapshotterError::Image {
            reference: reference.to_string(),
            detail: format!(
                "config of {} bytes (at most {MAX_CONFIG_BYTES})",
                manifest.config.size
            ),
        });
    }
    let tmp = tempfile_path();
    let config_bytes = {
        let r = registry
            .download_blob(
                reference,
                &manifest.config.digest,
                manifest.config.size,
                &tmp,
            )
            .await
            .and_then(|()| {
                std::fs::read(&tmp).map_err(|e| {
                    dfagent_registry::RegistryError::Protocol(format!("reading the config: {e}"))
                })
            });
        let _ = std::fs::remove_file(&tmp);
        r?
    };
    let config: ConfigDoc =
        serde_json::from_slice(&config_bytes).map_err(|e| SnapshotterError::Image {
            reference: reference.to_string(),
            detail: format!("config: {e}"),
        })?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(SnapshotterError::Image {
            reference: reference.to_string(),
            detail: format!(
                "the config lists {} diff ids for {} layers",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ),
        });
    }
    let chain = chain_ids(&config.rootfs.diff_ids);
    let Some(top) = chain.last().cloned() else {
        return Err(SnapshotterError::Image {
            reference: reference.to_string(),
            detail: "the image has no layers".into(),
        });
    };

    let channel = containerd_client::connect(&opts.address)
        .await
        .map_err(|e| SnapshotterError::Connect {
            address: opts.address.display().to_string(),
            detail: std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string()),
        })?;
    let mut ctx = Ctx {
        channel,
        namespace: opts.namespace.clone(),
        lease: None,
    };
    let lease_id = format!(
        "dfagent-pull-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let expire = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + LEASE_EXPIRY.as_secs();
    let mut leases = svc::leases_client::LeasesClient::new(ctx.channel.clone());
    leases
        .create(ctx.req(svc::CreateRequest {
            id: lease_id.clone(),
            labels: HashMap::from([("containerd.io/gc.expire".to_string(), rfc3339(expire))]),
        })?)
        .await
        .map_err(rpc("Leases.Create"))?;
    ctx.lease = Some(lease_id.clone());

    let result = pull_in_lease(
        &ctx,
        reference,
        &image,
        &manifest,
        &config_bytes,
        &chain,
        opts,
    )
    .await;
    // The image (or the failure) stands on its own now: the lease goes either way.
    ctx.lease = None;
    if let Err(e) = leases
        .delete(ctx.req(svc::DeleteRequest {
            id: lease_id,
            sync: false,
        })?)
        .await
    {
        debug!(error = %e.message(), "deleting the pull's lease (it expires by itself)");
    }
    let prepared = result?;
    let report = PullReport {
        name: reference.to_string(),
        manifest_digest: image.manifest_digest.clone(),
        layers: manifest.layers.len(),
        prepared,
        chain_id: top,
        elapsed: started.elapsed(),
    };
    info!(image = %report.name, manifest = %report.manifest_digest, layers = report.layers,
        prepared = report.prepared, elapsed_ms = report.elapsed.as_millis() as u64,
        "pulled for the dfagent snapshotter");
    Ok(report)
}

fn tempfile_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "dfagent-pull-config-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ))
}

async fn pull_in_lease(
    ctx: &Ctx,
    reference: &str,
    image: &dfagent_registry::NydusImage,
    manifest: &ManifestDoc,
    config_bytes: &[u8],
    chain: &[String],
    opts: &PullOptions,
) -> Result<usize> {
    // Content: the manifest names its config and layers for the garbage collector; the config
    // names the top snapshot.
    let mut manifest_labels = HashMap::from([(
        format!("{}config", labels::GC_REF_CONTENT),
        manifest.config.digest.clone(),
    )]);
    for (i, l) in manifest.layers.iter().enumerate() {
        manifest_labels.insert(format!("{}l.{i}", labels::GC_REF_CONTENT), l.digest.clone());
    }
    write_content(
        ctx,
        &image.manifest_digest,
        &image.manifest_bytes,
        manifest_labels,
    )
    .await?;
    let top = chain.last().cloned().unwrap_or_default();
    write_content(
        ctx,
        &manifest.config.digest,
        config_bytes,
        HashMap::from([(
            format!("{}{}", labels::GC_REF_SNAPSHOT, opts.snapshotter),
            top,
        )]),
    )
    .await?;

    // Layers, bottom up: each prepare on the dfagent snapshotter commits the layer under its
    // chain id and answers AlreadyExists.
    let mut snapshots = snap::snapshots_client::SnapshotsClient::new(ctx.channel.clone());
    let mut prepared = 0;
    for (i, (layer, id)) in manifest.layers.iter().zip(chain).enumerate() {
        let stat = snapshots
            .stat(ctx.req(snap::StatSnapshotRequest {
                snapshotter: opts.snapshotter.clone(),
                key: id.clone(),
            })?)
            .await;
        match stat {
            Ok(_) => continue,
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(rpc("Snapshots.Stat")(s)),
        }
        let parent = if i == 0 {
            String::new()
        } else {
            chain[i - 1].clone()
        };
        let mut l: HashMap<String, String> = layer
            .annotations
            .iter()
            .filter(|(k, _)| k.starts_with("containerd.io/snapshot/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        l.insert(labels::TARGET_REF.into(), id.clone());
        l.insert(labels::IMAGE_REF.into(), reference.to_string());
        l.insert(
            labels::MANIFEST_DIGEST.into(),
            image.manifest_digest.clone(),
        );
        l.insert(labels::LAYER_DIGEST.into(), layer.digest.clone());
        let mut layers = String::new();
        for d in &manifest.layers[i..] {
            if layers.len() + d.digest.len() + 1 + labels::IMAGE_LAYERS.len() > MAX_LABEL_BYTES {
                break;
            }
            if !layers.is_empty() {
                layers.push(',');
            }
            layers.push_str(&d.digest);
        }
        l.insert(labels::IMAGE_LAYERS.into(), layers);
        let key = format!("extract-{}-{id}", std::process::id());
        let r = snapshots
            .prepare(ctx.req(snap::PrepareSnapshotRequest {
                snapshotter: opts.snapshotter.clone(),
                key: key.clone(),
                parent,
                labels: l,
            })?)
            .await;
        match r {
            Err(s) if s.code() == Code::AlreadyExists => prepared += 1,
            Err(s) => return Err(rpc("Snapshots.Prepare")(s)),
            Ok(_) => {
                // The snapshotter would have containerd unpack this layer: not a Nydus layer.
                let _ = snapshots
                    .remove(ctx.req(snap::RemoveSnapshotRequest {
                        snapshotter: opts.snapshotter.clone(),
                        key,
                    })?)
                    .await;
                return Err(SnapshotterError::Image {
                    reference: reference.to_string(),
                    detail: format!(
                        "layer {i} ({}, {}) is not a Nydus layer the snapshotter serves",
                        layer.digest, layer.media_type
                    ),
                });
            }
        }
    }

    // The image record.
    let target = ApiDescriptor {
        media_type: if manifest.media_type.is_empty() {
            "application/vnd.oci.image.manifest.v1+json".to_string()
        } else {
            manifest.media_type.clone()
        },
        digest: image.manifest_digest.clone(),
        size: i64::try_from(image.manifest_bytes.len()).unwrap_or(i64::MAX),
        annotations: HashMap::new(),
    };
    let record = svc::Image {
        name: reference.to_string(),
        labels: HashMap::new(),
        target: Some(target),
        created_at: None,
        updated_at: None,
    };
    let mut images = svc::images_client::ImagesClient::new(ctx.channel.clone());
    let created = images
        .create(ctx.req(svc::CreateImageRequest {
            image: Some(record.clone()),
            source_date_epoch: None,
        })?)
        .await;
    match created {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists => {
            images
                .update(ctx.req(svc::UpdateImageRequest {
                    image: Some(record),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".into()],
                    }),
                    source_date_epoch: None,
                })?)
                .await
                .map_err(rpc("Images.Update"))?;
        }
        Err(s) => return Err(rpc("Images.Create")(s)),
    }
    Ok(prepared)
}

/// Store `bytes` (named by `digest`) in containerd's content store with `labels`; content that
/// is there already gets the labels.
async fn write_content(
    ctx: &Ctx,
    digest: &str,
    bytes: &[u8],
    labels: HashMap<String, String>,
) -> Result<()> {
    let mut content = svc::content_client::ContentClient::new(ctx.channel.clone());
    let total = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
    let req = svc::WriteContentRequest {
        action: svc::WriteAction::Commit as i32,
        r#ref: format!("dfagent-pull-{digest}"),
        total,
        expected: digest.to_string(),
        offset: 0,
        data: bytes.to_vec(),
        labels: labels.clone(),
    };
    let written = async {
        let mut answers = content
            .write(ctx.req(futures::stream::iter(vec![req]))?)
            .await
            .map_err(rpc("Content.Write"))?
            .into_inner();
        answers.message().await.map_err(rpc("Content.Write"))?;
        Ok::<_, SnapshotterError>(())
    }
    .await;
    match written {
        Ok(()) => Ok(()),
        Err(SnapshotterError::Containerd {
            code: Code::AlreadyExists,
            ..
        }) => {
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            content
                .update(ctx.req(svc::UpdateRequest {
                    info: Some(svc::Info {
                        digest: digest.to_string(),
                        size: total,
                        created_at: None,
                        updated_at: None,
                        labels,
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                })?)
                .await
                .map_err(rpc("Content.Update"))?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        let want = hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()));
        assert_eq!(c[1], format!("sha256:{want}"));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn expiry_dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_931_646), "2026-11-29T05:54:06Z");
    }
}
