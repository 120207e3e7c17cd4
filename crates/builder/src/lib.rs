//! `dfagent build`: converts an OCI image (layout directory, `docker save` archive or registry
//! reference) into a Nydus image (RAFS v6 bootstrap plus one data blob per layer with new
//! data), the way nydusify does, but in one process and deterministically.
//!
//! Per layer, the tar is streamed ([`layer`] detects gzip/zstd/plain, [`tar`] reads entries
//! including PAX binary xattrs), applied to the merged tree ([`overlay`]: whiteouts, opaque
//! directories, hard links), and regular files are cut into chunks that a worker pool hashes
//! and compresses ([`chunker`]); chunks already known (earlier layers, a `--chunk-dict`) are
//! referenced, not stored again. The merged tree is then written as one bootstrap by
//! `dfagent_rafs::write`. [`output`] writes the result as a blob directory, an OCI layout, or
//! hands it to the registry client for a push.
//!
//! Same input and options give the same bytes: chunks are placed in input order whatever the
//! thread count, and no wall-clock time is written anywhere.
#![deny(missing_docs)]

pub mod acl;
pub mod chunker;
pub mod dict;
mod error;
pub mod layer;
#[cfg(feature = "registry")]
pub mod oci_layout;
pub mod output;
pub mod overlay;
pub mod source;
pub mod tar;

use std::collections::BTreeSet;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use dfagent_core::{BlobId, Compression, DigestAlgo};
use dfagent_rafs::write::{BlobSpec, BootstrapOptions, Content};

pub use acl::AclError;
pub use chunker::ChunkOptions;
pub use error::{BuildError, Result};
pub use source::{SourceImage, SourceSpec};

use crate::chunker::{ChunkMap, LayerChunker};
use crate::overlay::{Applied, Overlay};

/// Default chunk size (1 MiB, as nydus-image).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

/// Receives progress of long steps (the CLI draws a bar; tests pass [`NoProgress`]).
pub trait Progress: Sync {
    /// A step starts; `total` is its size in bytes (0: unknown).
    fn begin(&self, step: &str, total: u64);
    /// Bytes done so far in the current step.
    fn position(&self, done: u64);
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _: &str, _: u64) {}
    fn position(&self, _: u64) {}
}

/// What to build and where.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Chunking, digest, compression and threads.
    pub chunk: ChunkOptions,
    /// Bootstrap of a chunk dictionary.
    pub chunk_dict: Option<PathBuf>,
    /// Where the dictionary's blobs are (default: `blobs/` beside its bootstrap); the ones the
    /// new image references are copied into the output's blob directory.
    pub chunk_dict_blobs: Option<PathBuf>,
    /// Absolute paths for the prefetch table, in order.
    pub prefetch: Vec<Vec<u8>>,
    /// Output directory: `bootstrap` and `blobs/<sha256>` are written there.
    pub output_dir: PathBuf,
}

impl BuildOptions {
    /// Check the options that can be wrong.
    pub fn validate(&self) -> Result<()> {
        validate_chunk_options(&self.chunk)
    }
}

/// Check chunk size (a power of two, 4 KiB ..= 16 MiB) and thread count (1 ..= 256).
pub fn validate_chunk_options(c: &ChunkOptions) -> Result<()> {
    let cs = c.chunk_size;
    if !dfagent_rafs::layout::is_valid_chunk_size(cs) {
        return Err(BuildError::Option(format!(
            "chunk size {cs:#x} must be a power of two from 4 KiB (0x1000) to 16 MiB \
             (0x1000000)"
        )));
    }
    if c.threads == 0 || c.threads > 256 {
        return Err(BuildError::Option("--threads must be 1..=256".into()));
    }
    Ok(())
}

/// Parse a chunk size (`1048576`, `0x100000`, `1M`, `64K`).
pub fn parse_chunk_size(s: &str) -> Result<u32> {
    let bad = || BuildError::Option(format!("chunk size {s:?} is not a size"));
    let t = s.trim();
    let v: u64 = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).map_err(|_| bad())?
    } else {
        let (num, mul) = match t.char_indices().last() {
            Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
            Some((i, 'm' | 'M')) => (&t[..i], 1u64 << 20),
            _ => (t, 1),
        };
        num.parse::<u64>()
            .map_err(|_| bad())?
            .checked_mul(mul)
            .ok_or_else(bad)?
    };
    u32::try_from(v).map_err(|_| bad())
}

/// Parse `--compressor` (`zstd`, `lz4_block` or `lz4`, `none`).
pub fn parse_compressor(s: &str) -> Result<Compression> {
    s.parse().map_err(|_| {
        BuildError::Option(format!(
            "compressor {s:?}: expected zstd, lz4_block or none"
        ))
    })
}

/// Parse `--digester`.
pub fn parse_digester(s: &str) -> Result<DigestAlgo> {
    match s {
        "blake3" => Ok(DigestAlgo::Blake3),
        "sha256" => Ok(DigestAlgo::Sha256),
        _ => Err(BuildError::Option(format!(
            "digester {s:?}: expected blake3 or sha256"
        ))),
    }
}

/// Read a prefetch patterns file: one absolute path a line; blank lines and `#` comments are
/// skipped; a relative path is an error.
pub fn read_prefetch_patterns(path: &Path) -> Result<Vec<Vec<u8>>> {
    let data = std::fs::read(path).map_err(|e| BuildError::io(path.display(), e))?;
    let mut out = Vec::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let trimmed: &[u8] = {
            let s = line.iter().position(|b| !b.is_ascii_whitespace());
            let e = line.iter().rposition(|b| !b.is_ascii_whitespace());
            match (s, e) {
                (Some(s), Some(e)) => &line[s..=e],
                _ => &[],
            }
        };
        if trimmed.is_empty() || trimmed.starts_with(b"#") {
            continue;
        }
        if !trimmed.starts_with(b"/") {
            return Err(BuildError::Option(format!(
                "{} line {}: prefetch pattern {:?} is not an absolute path",
                path.display(),
                i + 1,
                String::from_utf8_lossy(trimmed)
            )));
        }
        out.push(trimmed.to_vec());
    }
    Ok(out)
}

/// Counts and timings of a build (the `--json` summary).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BuildSummary {
    /// Layers read.
    pub layers: usize,
    /// Bytes of the source layers as stored (compressed).
    pub bytes_in: u64,
    /// Bytes of the layers' tar streams (uncompressed).
    pub tar_bytes: u64,
    /// Bytes written: bootstrap plus the new data blobs.
    pub bytes_out: u64,
    /// Size of the bootstrap.
    pub bootstrap_bytes: u64,
    /// Regular files with data, over all layers (before whiteouts).
    pub files: u64,
    /// Chunks cut (with duplicates).
    pub chunks: u64,
    /// Chunks stored in the new blobs (unique, not in the chunk dictionary).
    pub unique_chunks: u64,
    /// Uncompressed bytes of all chunks.
    pub data_bytes: u64,
    /// Uncompressed bytes of the stored chunks.
    pub unique_data_bytes: u64,
    /// `data_bytes / unique_data_bytes` (1.0: no duplicate data).
    pub dedup_ratio: f64,
    /// Chunks found in the chunk dictionary.
    pub dict_chunks: u64,
    /// Wall-clock seconds of the build (layers to bootstrap; not written anywhere).
    pub seconds: f64,
    /// `tar_bytes` per second, in MiB.
    pub mib_per_s: f64,
    /// Worker threads used.
    pub threads: usize,
    /// Blob ids of the bootstrap's blob table, in order.
    pub blobs: Vec<String>,
}

/// A finished build.
#[derive(Clone, Debug)]
pub struct BuildOutput {
    /// Path of the bootstrap.
    pub bootstrap: PathBuf,
    /// Directory of the blobs (named by sha256).
    pub blob_dir: PathBuf,
    /// The blob table: ids and file sizes, in order.
    pub blobs: Vec<(BlobId, u64)>,
    /// Counts.
    pub summary: BuildSummary,
}

enum BlobOrigin {
    Dict,
    Layer,
}

/// Build `source` into `opts.output_dir` (`bootstrap`, `blobs/`). Files are written as
/// temporary files in that directory and renamed when complete.
pub fn build(
    source: &SourceImage,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildOutput> {
    build_with(source, opts, progress, None)
}

/// Fetches a chunk-dictionary blob the image uses into the given path (for a dictionary whose
/// blobs are not local, e.g. an image in a registry).
pub type FetchBlob<'a> = &'a dyn Fn(&BlobId, &Path) -> Result<()>;

/// [`build`], with `fetch_dict_blob` called for each dictionary blob the image uses that is
/// not in the dictionary's blob directory.
pub fn build_with(
    source: &SourceImage,
    opts: &BuildOptions,
    progress: &dyn Progress,
    fetch_dict_blob: Option<FetchBlob<'_>>,
) -> Result<BuildOutput> {
    opts.validate()?;
    let started = Instant::now();
    let out = &opts.output_dir;
    let blob_dir = out.join("blobs");
    std::fs::create_dir_all(&blob_dir).map_err(|e| BuildError::io(blob_dir.display(), e))?;

    // Blob table being assembled: provisional indices (dictionary blobs first).
    let mut blobs: Vec<(BlobSpec, BlobOrigin)> = Vec::new();
    let mut known = ChunkMap::new();
    let dict = match &opts.chunk_dict {
        Some(p) => Some(dict::ChunkDict::load(p, &opts.chunk)?),
        None => None,
    };
    if let Some(d) = &dict {
        known = d.chunks.clone();
        blobs.extend(d.blobs.iter().cloned().map(|b| (b, BlobOrigin::Dict)));
    }
    let dict_count = blobs.len() as u32;
    let known = Arc::new(RwLock::new(known));

    let mut summary = BuildSummary {
        layers: source.layers.len(),
        threads: opts.chunk.threads,
        ..BuildSummary::default()
    };
    let total_in: u64 = source.layers.iter().map(|l| l.size).sum();
    progress.begin("building", total_in);
    let read = Arc::new(AtomicU64::new(0));
    let mut overlay = Overlay::new();
    let cs = u64::from(opts.chunk.chunk_size);
    for (li, layer) in source.layers.iter().enumerate() {
        overlay.begin_layer(li as u32);
        let mut open = layer::open(layer, read.clone())?;
        let tmp = tempfile::Builder::new()
            .prefix(".blob-")
            .tempfile_in(&blob_dir)
            .map_err(|e| BuildError::io(blob_dir.display(), e))?;
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(|e| BuildError::io(tmp.path().display(), e))?;
        let blob_index = blobs.len() as u32;
        let mut files: Vec<(overlay::InodeId, usize)> = Vec::new();
        let compression = open.compression;
        let result = std::thread::scope(|s| -> Result<chunker::WriterOutput> {
            let mut ch = LayerChunker::start(
                s,
                opts.chunk,
                known.clone(),
                BufWriter::with_capacity(1 << 20, file),
                blob_index,
            )?;
            let mut tr = tar::TarReader::new(&mut open.stream);
            let stopped = || BuildError::Internal("the chunk pipeline stopped".into());
            let mut last_report = 0u64;
            let fed = (|| -> Result<()> {
                while let Some(e) = tr
                    .next_entry()
                    .map_err(|e| decompress_context(e, compression))?
                {
                    let ino = match overlay.apply(&e)? {
                        Applied::Done => continue,
                        Applied::Data(ino) => ino,
                    };
                    summary.files += 1;
                    let mut left = e.size;
                    let mut n = 0usize;
                    while left > 0 {
                        let len = left.min(cs) as usize;
                        let mut buf = ch.buffer().ok_or_else(stopped)?;
                        buf.resize(len, 0);
                        tr.read_data_exact(&mut buf)
                            .map_err(|e| decompress_context(e, compression))?;
                        if !ch.push(buf) {
                            return Err(stopped());
                        }
                        left -= len as u64;
                        n += 1;
                        let r = read.load(Ordering::Relaxed);
                        if r - last_report > (4 << 20) {
                            progress.position(r);
                            last_report = r;
                        }
                    }
                    files.push((ino, n));
                }
                Ok(())
            })();
            match fed {
                Ok(()) => ch.finish(),
                Err(e) => {
                    // Stop the pipeline; its own error (if any) matters less than ours.
                    drop(ch);
                    Err(e)
                }
            }
        });
        let wo = result?;
        summary.tar_bytes += open.stream.tar_bytes;
        open.finish()?;
        summary.chunks += wo.stats.chunks;
        summary.data_bytes += wo.stats.bytes;
        summary.unique_chunks += wo.stats.new_chunks;
        summary.unique_data_bytes += wo.stats.new_bytes;
        let mut it = wo.placements.into_iter();
        for (ino, n) in files {
            let chunks: Vec<_> = it.by_ref().take(n).collect();
            overlay.set_chunks(ino, chunks);
        }
        match wo.blob {
            Some(spec) => {
                let dest = blob_dir.join(spec.id.hex());
                output::publishable(tmp.as_file(), tmp.path())?;
                tmp.persist(&dest)
                    .map_err(|e| BuildError::io(dest.display(), e.error))?;
                blobs.push((spec, BlobOrigin::Layer));
            }
            None => drop(tmp),
        }
        progress.position(read.load(Ordering::Relaxed));
    }
    summary.bytes_in = read.load(Ordering::Relaxed);

    let (mut tree, prefetch) = overlay.into_tree(&opts.prefetch)?;

    // Final blob table: the dictionary blobs the tree uses, then the layer blobs.
    let mut used: BTreeSet<u32> = BTreeSet::new();
    for n in &tree.nodes {
        if let Content::File { chunks, .. } = &n.content {
            for c in chunks {
                used.insert(c.blob_index);
                if c.blob_index < dict_count {
                    summary.dict_chunks += 1;
                }
            }
        }
    }
    let mut remap = vec![u32::MAX; blobs.len()];
    let mut table = Vec::new();
    for (i, (spec, origin)) in blobs.iter().enumerate() {
        let keep = match origin {
            BlobOrigin::Dict => used.contains(&(i as u32)),
            BlobOrigin::Layer => true,
        };
        if keep {
            remap[i] = table.len() as u32;
            table.push(spec.clone());
        }
    }
    for n in &mut tree.nodes {
        if let Content::File { chunks, .. } = &mut n.content {
            for c in chunks {
                c.blob_index = remap
                    .get(c.blob_index as usize)
                    .copied()
                    .filter(|&i| i != u32::MAX)
                    .ok_or_else(|| BuildError::Internal("chunk in an unknown blob".into()))?;
            }
        }
    }
    if let Some(d) = &dict {
        let src = opts
            .chunk_dict_blobs
            .clone()
            .unwrap_or_else(|| d.bootstrap.parent().unwrap_or(Path::new(".")).join("blobs"));
        for spec in table
            .iter()
            .filter(|b| d.blobs.iter().any(|x| x.id == b.id))
        {
            let from = src.join(spec.id.hex());
            let dest = blob_dir.join(spec.id.hex());
            if from.is_file() {
                output::copy_blob(&from, &dest)?;
            } else if !dest.is_file() {
                match fetch_dict_blob {
                    Some(fetch) => fetch(&spec.id, &dest)?,
                    None => {
                        return Err(BuildError::Option(format!(
                            "the image uses chunks of dictionary blob {} but {} does not \
                             exist; give the dictionary's blob directory with \
                             --chunk-dict-blobs DIR",
                            spec.id,
                            from.display()
                        )))
                    }
                }
            }
        }
    }

    let boot = dfagent_rafs::write::write_bootstrap(
        &tree,
        &table,
        &BootstrapOptions {
            chunk_size: opts.chunk.chunk_size,
            digest_algo: opts.chunk.digest,
            compression: opts.chunk.compression,
            prefetch,
        },
    )?;
    let bootstrap = out.join("bootstrap");
    output::write_atomic(&bootstrap, &boot)?;

    let mut blob_list = Vec::new();
    let mut blob_bytes = 0;
    for b in &table {
        let p = blob_dir.join(b.id.hex());
        let size = std::fs::metadata(&p)
            .map_err(|e| BuildError::io(p.display(), e))?
            .len();
        if blobs
            .iter()
            .any(|(s, o)| matches!(o, BlobOrigin::Layer) && s.id == b.id)
        {
            blob_bytes += size;
        }
        blob_list.push((b.id, size));
    }
    summary.bootstrap_bytes = boot.len() as u64;
    summary.bytes_out = blob_bytes + boot.len() as u64;
    summary.dedup_ratio = if summary.unique_data_bytes == 0 {
        1.0
    } else {
        summary.data_bytes as f64 / summary.unique_data_bytes as f64
    };
    summary.seconds = started.elapsed().as_secs_f64();
    summary.mib_per_s = if summary.seconds > 0.0 {
        summary.tar_bytes as f64 / (1 << 20) as f64 / summary.seconds
    } else {
        0.0
    };
    summary.blobs = table.iter().map(|b| b.id.hex()).collect();
    Ok(BuildOutput {
        bootstrap,
        blob_dir,
        blobs: blob_list,
        summary,
    })
}

/// A tar error whose cause is the decompressor gets the decompressor's name.
fn decompress_context(e: BuildError, c: layer::LayerCompression) -> BuildError {
    match e {
        BuildError::Tar { offset, detail } if detail.starts_with("read error") => BuildError::Tar {
            offset,
            detail: format!("{} stream: {detail}", layer::describe(c)),
        },
        other => other,
    }
}
