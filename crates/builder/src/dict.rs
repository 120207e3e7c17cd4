//! Chunk dictionaries: the chunks of an existing Nydus bootstrap, so that a new image refers to
//! them instead of storing them again (`--chunk-dict bootstrap=PATH`, as upstream).

use std::path::{Path, PathBuf};

use dfagent_rafs::chunk_flags;
use dfagent_rafs::write::{BlobSpec, ChunkPlacement};

use crate::chunker::{ChunkMap, ChunkOptions};
use crate::error::{BuildError, Result};

/// A loaded chunk dictionary.
pub struct ChunkDict {
    /// The dictionary's bootstrap.
    pub bootstrap: PathBuf,
    /// Its blobs, in its blob table order (the dictionary's blob indices).
    pub blobs: Vec<BlobSpec>,
    /// Every chunk it has, first occurrence of each digest, with `blob_index` its own index.
    pub chunks: ChunkMap,
}

/// Parse `--chunk-dict` (`bootstrap=PATH` or a bare path).
pub fn parse_arg(arg: &str) -> Result<PathBuf> {
    match arg.split_once('=') {
        Some(("bootstrap", p)) => Ok(PathBuf::from(p)),
        Some((kind, _)) if !kind.contains('/') => Err(BuildError::Option(format!(
            "--chunk-dict {arg:?}: only bootstrap=PATH (or a path) is supported"
        ))),
        _ => Ok(PathBuf::from(arg)),
    }
}

impl ChunkDict {
    /// Load the chunks of `bootstrap`. Its chunk size and digest must be the build's (a chunk
    /// of another size or digest could never be shared).
    pub fn load(bootstrap: &Path, opts: &ChunkOptions) -> Result<Self> {
        let image = dfagent_rafs::Image::open(bootstrap)?;
        let sb = image.superblock();
        if sb.digest_algo != opts.digest {
            return Err(BuildError::Option(format!(
                "chunk dictionary {} uses {} digests, the build {}",
                bootstrap.display(),
                sb.digest_algo,
                opts.digest
            )));
        }
        let mut blobs = Vec::new();
        for b in image.blobs() {
            if b.chunk_size != opts.chunk_size {
                return Err(BuildError::Option(format!(
                    "chunk dictionary {} has {}-byte chunks, the build {}",
                    bootstrap.display(),
                    b.chunk_size,
                    opts.chunk_size
                )));
            }
            blobs.push(BlobSpec::from(b));
        }
        let mut chunks = ChunkMap::new();
        for i in 0..image.chunk_record_count() {
            let r = image.chunk_record(i)?;
            if r.blob_index as usize >= blobs.len() {
                return Err(BuildError::Source(format!(
                    "chunk dictionary {}: chunk {} names blob {} of {}",
                    bootstrap.display(),
                    r.digest,
                    r.blob_index,
                    blobs.len()
                )));
            }
            if r.flags & !(chunk_flags::COMPRESSED | chunk_flags::HAS_CRC32) != 0 {
                // Batch, encrypted or hole chunks cannot be shared as plain chunks.
                continue;
            }
            chunks.entry(r.digest).or_insert(ChunkPlacement {
                digest: r.digest,
                blob_index: r.blob_index,
                index_in_blob: r.blob_chunk_index,
                compressed_offset: r.compressed_offset,
                compressed_size: r.compressed_size,
                uncompressed_offset: r.uncompressed_offset,
                uncompressed_size: r.uncompressed_size,
                compressed: r.flags & chunk_flags::COMPRESSED != 0,
            });
        }
        Ok(Self {
            bootstrap: bootstrap.to_path_buf(),
            blobs,
            chunks,
        })
    }
}
