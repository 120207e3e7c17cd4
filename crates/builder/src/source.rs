//! Source images: an OCI image layout directory (`oci:DIR[:TAG]`), a `docker save` archive
//! (`docker-archive:FILE[:REF]`) or a registry reference. Every source ends up as a list of
//! layers that are byte ranges of local files (registry layers are downloaded first), so one
//! reader serves them all.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use dfagent_core::sha256_digest;
use serde::Deserialize;

use crate::error::{BuildError, Result};
use crate::tar::{EntryKind, TarReader};

/// Largest manifest, index or config read (4 MiB, the distribution spec's advice).
pub const MAX_DOC_SIZE: u64 = 4 << 20;
/// Annotation naming a manifest in an OCI layout's index.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Where the source image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// An OCI image layout directory and an optional tag (`org.opencontainers.image.ref.name`).
    OciLayout {
        /// The layout directory.
        dir: PathBuf,
        /// The tag; without it the layout must hold exactly one manifest.
        tag: Option<String>,
    },
    /// A `docker save` (or `skopeo copy … docker-archive:`) tar file.
    DockerArchive {
        /// The archive.
        file: PathBuf,
        /// The `RepoTags` entry to take; without it the first image.
        tag: Option<String>,
    },
    /// An image in a registry.
    Registry(String),
}

impl SourceSpec {
    /// Parse `oci:DIR[:TAG]`, `docker-archive:FILE[:REF]`, `docker://REF` or a bare reference.
    pub fn parse(s: &str) -> Result<Self> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.is_empty() && !t.contains('/') && !d.is_empty() => {
                    (d, Some(t.to_string()))
                }
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(BuildError::Option(format!("{s:?}: no layout directory")));
            }
            return Ok(SourceSpec::OciLayout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (file, tag) = if Path::new(rest).is_file() {
                (rest, None)
            } else {
                match rest.split_once(':') {
                    Some((f, t)) if !t.is_empty() => (f, Some(t.to_string())),
                    _ => (rest, None),
                }
            };
            return Ok(SourceSpec::DockerArchive {
                file: PathBuf::from(file),
                tag,
            });
        }
        let r = s.strip_prefix("docker://").unwrap_or(s);
        if r.is_empty() {
            return Err(BuildError::Option("empty source".into()));
        }
        Ok(SourceSpec::Registry(r.to_string()))
    }
}

/// One layer: a byte range of a local file.
#[derive(Clone, Debug)]
pub struct Layer {
    /// File holding the layer.
    pub file: PathBuf,
    /// Start of the layer in the file.
    pub offset: u64,
    /// Length of the layer.
    pub size: u64,
    /// `sha256:` digest of the stored (possibly compressed) bytes, checked while reading.
    pub digest: Option<String>,
    /// `sha256:` of the uncompressed tar (the config's diff id), checked for plain tar layers.
    pub diff_id: Option<String>,
}

impl Layer {
    /// A layer that is a whole blob file, described by `desc` (digest and size checked while
    /// reading).
    fn whole_file(file: PathBuf, desc: &Descriptor, diff_id: Option<String>) -> Layer {
        Layer {
            file,
            offset: 0,
            size: desc.size,
            digest: Some(desc.digest.clone()),
            diff_id,
        }
    }
}

/// A JSON document of the source image as stored (manifest or config).
#[derive(Clone, Debug)]
pub struct Doc {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// `sha256:` digest of the bytes.
    pub digest: String,
    /// Declared media type.
    pub media_type: String,
}

/// The source image, ready to read.
#[derive(Clone, Debug)]
pub struct SourceImage {
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// The source manifest (OCI layout and registry sources), for `--merge-platform`.
    pub manifest: Option<Doc>,
    /// The source config.
    pub config: Option<Doc>,
    /// `(os, architecture)` from the config (default linux/amd64).
    pub platform: (String, String),
    /// The source's blob files by digest (layers and config), for copying the source image
    /// next to the Nydus one.
    pub blob_files: BTreeMap<String, (PathBuf, u64, u64)>,
}

/// An OCI/Docker content descriptor.
#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Digest.
    pub digest: String,
    /// Size.
    pub size: u64,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Platform (index entries).
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// Platform of an index entry.
#[derive(Clone, Debug, Deserialize)]
pub struct Platform {
    /// OS.
    #[serde(default)]
    pub os: String,
    /// Architecture.
    #[serde(default)]
    pub architecture: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The hex of a `sha256:` digest, refusing anything else (it becomes a file name).
pub fn digest_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(h)
        }
        _ => Err(BuildError::Source(format!(
            "digest {digest:?} is not sha256:<64 lower-case hex digits>"
        ))),
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Layer media types we can read (plain, gzip or zstd tar; the compression is detected from
/// the bytes).
fn check_layer_type(d: &Descriptor) -> Result<()> {
    let t = d.media_type.as_str();
    if t.contains("nydus") {
        return Err(BuildError::Source(format!(
            "layer {} is a Nydus blob ({t}): the source is already a Nydus image",
            d.digest
        )));
    }
    if !t.is_empty() && !t.contains("tar") {
        return Err(BuildError::Unsupported(format!(
            "layer media type {t:?} ({})",
            d.digest
        )));
    }
    Ok(())
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| BuildError::Source(format!("{what}: {e}")))
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| BuildError::io(path.display(), e))?;
    let mut out = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| BuildError::io(path.display(), e))?;
    if out.len() as u64 > limit {
        return Err(BuildError::Source(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(out)
}

/// Pick an index entry: by tag when given, else the one entry (or the platform's).
fn pick_entry<'a>(
    entries: &'a [Descriptor],
    tag: Option<&str>,
    platform: (&str, &str),
    what: &str,
) -> Result<&'a Descriptor> {
    if let Some(t) = tag {
        return entries
            .iter()
            .find(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(t))
            .ok_or_else(|| BuildError::Source(format!("{what} has no image tagged {t:?}")));
    }
    if entries.len() == 1 {
        return Ok(&entries[0]);
    }
    let by_platform: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == platform.0 && p.architecture == platform.1)
        })
        .collect();
    match by_platform.as_slice() {
        [one] => Ok(one),
        _ => {
            let tags: Vec<&str> = entries
                .iter()
                .filter_map(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str))
                .collect();
            Err(BuildError::Source(format!(
                "{what} holds {} images; name one with :TAG (tags: {tags:?})",
                entries.len()
            )))
        }
    }
}

/// Read an OCI image layout.
pub fn open_oci_layout(
    dir: &Path,
    tag: Option<&str>,
    platform: (&str, &str),
) -> Result<SourceImage> {
    let layout = dir.join("oci-layout");
    if !layout.is_file() {
        return Err(BuildError::Source(format!(
            "{} is not an OCI image layout (no oci-layout file)",
            dir.display()
        )));
    }
    let blob = |d: &Descriptor| -> Result<PathBuf> {
        Ok(dir
            .join("blobs")
            .join("sha256")
            .join(digest_hex(&d.digest)?))
    };
    let read_doc = |d: &Descriptor| -> Result<Doc> {
        if d.size > MAX_DOC_SIZE {
            return Err(BuildError::Source(format!(
                "document {} of {} bytes is too large",
                d.digest, d.size
            )));
        }
        let bytes = read_bounded(&blob(d)?, MAX_DOC_SIZE)?;
        let actual = sha256_digest(&bytes);
        if actual != d.digest {
            return Err(BuildError::Digest {
                what: format!("document in {}", dir.display()),
                expected: d.digest.clone(),
                actual,
            });
        }
        Ok(Doc {
            bytes,
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
        })
    };
    let index: Index = parse_json(
        &read_bounded(&dir.join("index.json"), MAX_DOC_SIZE)?,
        "index.json",
    )?;
    let mut entry = pick_entry(
        &index.manifests,
        tag,
        platform,
        &format!("{}", dir.display()),
    )?
    .clone();
    // Nested indexes (a multi-platform image): bounded depth.
    for _ in 0..4 {
        if !is_index(&entry.media_type) {
            break;
        }
        let doc = read_doc(&entry)?;
        let inner: Index = parse_json(&doc.bytes, "image index")?;
        entry = pick_entry(&inner.manifests, None, platform, "image index")?.clone();
    }
    let manifest = read_doc(&entry)?;
    let m: Manifest = parse_json(&manifest.bytes, "image manifest")?;
    if is_index(&m.media_type) {
        return Err(BuildError::Source("image indexes nested too deep".into()));
    }
    let config = read_doc(&m.config)?;
    let cfg: ConfigDoc = parse_json(&config.bytes, "image config").unwrap_or_default();
    let diff_ids = cfg.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    let mut blob_files = BTreeMap::new();
    blob_files.insert(
        m.config.digest.clone(),
        (blob(&m.config)?, 0, m.config.size),
    );
    let mut layers = Vec::new();
    for (i, d) in m.layers.iter().enumerate() {
        check_layer_type(d)?;
        let file = blob(d)?;
        blob_files.insert(d.digest.clone(), (file.clone(), 0, d.size));
        layers.push(Layer::whole_file(file, d, diff_ids.get(i).cloned()));
    }
    Ok(SourceImage {
        layers,
        manifest: Some(Doc {
            media_type: if m.media_type.is_empty() {
                entry.media_type.clone()
            } else {
                m.media_type.clone()
            },
            ..manifest
        }),
        config: Some(config),
        platform: platform_of(&cfg.os, &cfg.architecture, platform),
        blob_files,
    })
}

fn platform_of(os: &str, arch: &str, default: (&str, &str)) -> (String, String) {
    if os.is_empty() || arch.is_empty() {
        (default.0.to_string(), default.1.to_string())
    } else {
        (os.to_string(), arch.to_string())
    }
}

#[derive(Debug, Deserialize)]
struct ArchiveManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// Read a `docker save` archive: index its files (one pass over the tar), then take
/// `manifest.json`, the config and the layers as byte ranges of the archive.
pub fn open_docker_archive(
    file: &Path,
    tag: Option<&str>,
    platform: (&str, &str),
) -> Result<SourceImage> {
    let f = std::fs::File::open(file).map_err(|e| BuildError::io(file.display(), e))?;
    let mut tar = TarReader::new(std::io::BufReader::with_capacity(1 << 20, f));
    let mut files: BTreeMap<Vec<u8>, (u64, u64)> = BTreeMap::new();
    while let Some(e) = tar.next_entry()? {
        if e.kind == EntryKind::Regular {
            let key: Vec<u8> = e.path.strip_prefix(b"./").unwrap_or(&e.path).to_vec();
            files.insert(key, (tar.offset(), e.size));
        }
    }
    let range = |name: &str| -> Result<(u64, u64)> {
        let key = name.strip_prefix("./").unwrap_or(name);
        files.get(key.as_bytes()).copied().ok_or_else(|| {
            BuildError::Source(format!("{}: the archive has no {name:?}", file.display()))
        })
    };
    let read = |name: &str| -> Result<Vec<u8>> {
        let (off, size) = range(name)?;
        if size > MAX_DOC_SIZE {
            return Err(BuildError::Source(format!(
                "{name} in the archive is too large"
            )));
        }
        let mut f = std::fs::File::open(file).map_err(|e| BuildError::io(file.display(), e))?;
        f.seek(SeekFrom::Start(off))
            .map_err(|e| BuildError::io(file.display(), e))?;
        let mut buf = vec![0u8; size as usize];
        f.read_exact(&mut buf)
            .map_err(|e| BuildError::io(file.display(), e))?;
        Ok(buf)
    };
    let manifests: Vec<ArchiveManifest> = parse_json(&read("manifest.json")?, "manifest.json")?;
    let m = match tag {
        Some(t) => manifests
            .iter()
            .find(|m| m.repo_tags.iter().flatten().any(|x| x == t))
            .ok_or_else(|| BuildError::Source(format!("the archive has no image tagged {t:?}")))?,
        None => manifests.first().ok_or_else(|| {
            BuildError::Source("the archive's manifest.json lists no image".into())
        })?,
    };
    let config_bytes = read(&m.config)?;
    let cfg: ConfigDoc = parse_json(&config_bytes, "image config").unwrap_or_default();
    let diff_ids = cfg.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    let mut layers = Vec::new();
    for (i, l) in m.layers.iter().enumerate() {
        let (offset, size) = range(l)?;
        // Newer archives name layers blobs/sha256/<digest>: that is the stored bytes' digest.
        let digest = l
            .strip_prefix("blobs/sha256/")
            .filter(|h| digest_hex(&format!("sha256:{h}")).is_ok())
            .map(|h| format!("sha256:{h}"));
        layers.push(Layer {
            file: file.to_path_buf(),
            offset,
            size,
            digest,
            diff_id: diff_ids.get(i).cloned(),
        });
    }
    Ok(SourceImage {
        layers,
        manifest: None,
        config: Some(Doc {
            digest: sha256_digest(&config_bytes),
            bytes: config_bytes,
            media_type: "application/vnd.docker.container.image.v1+json".into(),
        }),
        platform: platform_of(&cfg.os, &cfg.architecture, platform),
        blob_files: BTreeMap::new(),
    })
}

#[cfg(feature = "registry")]
/// Fetch an image from a registry: manifest (an index is resolved to the platform's
/// manifest), config, and every layer downloaded into `work_dir` (streamed, digest-checked).
pub async fn open_registry(
    registry: &dfagent_registry::Registry,
    reference: &str,
    work_dir: &Path,
    progress: &dyn crate::Progress,
) -> Result<SourceImage> {
    let platform = registry.config().platform.clone();
    let plat = (platform.0.as_str(), platform.1.as_str());
    let mut raw = registry.fetch_manifest_raw(reference).await?;
    for _ in 0..4 {
        if !is_index(&raw.media_type) {
            let probe: serde_json::Value = parse_json(&raw.bytes, "manifest")?;
            if probe.get("manifests").is_none() {
                break;
            }
        }
        let idx: Index = parse_json(&raw.bytes, "image index")?;
        let e = pick_entry(&idx.manifests, None, plat, reference)?;
        let child = dfagent_registry::reference_with_digest(reference, &e.digest)?;
        raw = registry.fetch_manifest_raw(&child).await?;
    }
    let m: Manifest = parse_json(&raw.bytes, "image manifest")?;
    let mut blob_files = BTreeMap::new();
    let fetch = |d: Descriptor, name: String| async move {
        digest_hex(&d.digest)?;
        let path = work_dir.join(name);
        registry
            .download_blob(reference, &d.digest, d.size, &path)
            .await?;
        Ok::<PathBuf, BuildError>(path)
    };
    if m.config.size > MAX_DOC_SIZE {
        return Err(BuildError::Source("the image config is too large".into()));
    }
    let cpath = fetch(m.config.clone(), ".source-config".into()).await?;
    let config_bytes = read_bounded(&cpath, MAX_DOC_SIZE)?;
    blob_files.insert(m.config.digest.clone(), (cpath, 0, m.config.size));
    let cfg: ConfigDoc = parse_json(&config_bytes, "image config").unwrap_or_default();
    let diff_ids = cfg.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    let total: u64 = m.layers.iter().map(|l| l.size).sum();
    progress.begin("pulling source layers", total);
    let mut done = 0;
    let mut layers = Vec::new();
    for (i, d) in m.layers.iter().enumerate() {
        check_layer_type(d)?;
        let path = fetch(d.clone(), format!(".source-layer-{i}")).await?;
        done += d.size;
        progress.position(done);
        blob_files.insert(d.digest.clone(), (path.clone(), 0, d.size));
        layers.push(Layer::whole_file(path, d, diff_ids.get(i).cloned()));
    }
    Ok(SourceImage {
        layers,
        manifest: Some(Doc {
            media_type: if m.media_type.is_empty() {
                raw.media_type.clone()
            } else {
                m.media_type.clone()
            },
            digest: raw.digest,
            bytes: raw.bytes,
        }),
        config: Some(Doc {
            digest: m.config.digest.clone(),
            bytes: config_bytes,
            media_type: m.config.media_type.clone(),
        }),
        platform: platform_of(&cfg.os, &cfg.architecture, plat),
        blob_files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            SourceSpec::parse("oci:/x/y:v1").unwrap(),
            SourceSpec::OciLayout {
                dir: "/x/y".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            SourceSpec::parse("oci:dir").unwrap(),
            SourceSpec::OciLayout {
                dir: "dir".into(),
                tag: None
            }
        );
        assert_eq!(
            SourceSpec::parse("127.0.0.1:5000/a:b").unwrap(),
            SourceSpec::Registry("127.0.0.1:5000/a:b".into())
        );
        assert!(matches!(
            SourceSpec::parse("docker-archive:/nope.tar:repo:tag").unwrap(),
            SourceSpec::DockerArchive { tag: Some(t), .. } if t == "repo:tag"
        ));
        assert!(digest_hex("sha256:../../etc").is_err());
    }
}
