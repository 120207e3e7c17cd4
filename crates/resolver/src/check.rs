//! Whole-image verification against a blob directory: the tree parses, every file's chunks
//! resolve, every blob file is the blob its name says, every blob's chunk-info array and TOC
//! agree with the bootstrap, and every chunk decodes to its digest.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;

use dfagent_core::{decode_chunk, decompress, ChunkDigest};
use dfagent_rafs::blob_meta::{self, BlobMetaHeader};
use dfagent_rafs::{blob_features, BlobInfo, FileType, Image};
use sha2::Digest as _;

use crate::BlobDirTier;

/// Largest TOC section `check` decompresses to verify (the bootstrap copy in `image.boot`).
const MAX_TOC_SECTION: u64 = 1 << 30;

/// What `dfagent check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Inodes reached from the root (hard links counted once).
    pub inodes: u64,
    /// Regular files (paths).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Bytes of regular file data (hard links counted once).
    pub bytes: u64,
    /// Chunk references of all files.
    pub chunks: u64,
    /// Distinct chunks.
    pub unique_chunks: u64,
    /// Blobs in the blob table.
    pub blobs: u64,
    /// Sum of the blob files' sizes.
    pub compressed_bytes: u64,
    /// Every problem found, each naming the file, chunk and blob offset it concerns.
    pub problems: Vec<String>,
}

/// Verify `img` and the blobs in `dir`.
pub fn check_image(img: &Image, dir: &BlobDirTier) -> CheckReport {
    let mut r = CheckReport {
        blobs: img.blobs().len() as u64,
        ..Default::default()
    };
    let users = check_tree(img, &mut r);
    let present = check_blob_files(img, dir, &mut r);
    for blob in img.blobs().iter().filter(|b| present.contains(&b.index)) {
        if let Err(e) = check_blob_meta(img, dir, blob) {
            r.problems.push(format!("blob {}: {e}", blob.id));
        }
    }
    check_chunks(img, dir, &present, &users, &mut r);
    r
}

/// Walk the tree; returns the first path using each chunk.
fn check_tree(img: &Image, r: &mut CheckReport) -> HashMap<ChunkDigest, String> {
    let mut users = HashMap::new();
    let mut nids = HashSet::new();
    let walked = img.walk(|e| {
        let path = if e.path.is_empty() {
            "/".to_string()
        } else {
            String::from_utf8_lossy(&e.path).into_owned()
        };
        let first = nids.insert(e.inode.nid);
        img.xattrs(e.inode.nid)?;
        match e.inode.file_type {
            FileType::Dir => r.dirs += 1,
            FileType::Symlink => {
                r.symlinks += 1;
                img.readlink(e.inode.nid)?;
            }
            FileType::File => {
                r.files += 1;
                let chunks = img.chunks(&e.inode, 0, e.inode.size)?;
                if first {
                    r.bytes += e.inode.size;
                    r.chunks += chunks.len() as u64;
                }
                for c in chunks {
                    users.entry(c.chunk.digest).or_insert_with(|| path.clone());
                }
            }
            _ => {}
        }
        Ok(())
    });
    if let Err(e) = walked {
        r.problems.push(format!("metadata: {e}"));
    }
    r.inodes = nids.len() as u64;
    r.unique_chunks = users.len() as u64;
    users
}

/// Hash every blob file; returns the indexes of blobs present and intact.
fn check_blob_files(img: &Image, dir: &BlobDirTier, r: &mut CheckReport) -> HashSet<u32> {
    let mut ok = HashSet::new();
    for blob in img.blobs() {
        let path = dir.blob_path(&blob.id);
        match dir.hash_blob(&blob.id) {
            Ok(None) => r
                .problems
                .push(format!("blob {}: missing ({})", blob.id, path.display())),
            Ok(Some((actual, size))) => {
                r.compressed_bytes += size;
                if actual != blob.id {
                    r.problems.push(format!(
                        "blob {}: file {} has sha256 {actual}",
                        blob.id,
                        path.display()
                    ));
                }
                ok.insert(blob.index);
            }
            Err(e) => r
                .problems
                .push(format!("blob {}: {}: {e}", blob.id, path.display())),
        }
    }
    ok
}

fn read_at(f: &File, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    if len > MAX_TOC_SECTION {
        return Err(format!("refusing to read {len} bytes at {offset}"));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset)
        .map_err(|e| format!("reading {len} bytes at offset {offset}: {e}"))?;
    Ok(buf)
}

/// The blob's chunk-info array must agree with every chunk record of that blob, and its TOC
/// sections must match their digests.
fn check_blob_meta(img: &Image, dir: &BlobDirTier, blob: &BlobInfo) -> Result<(), String> {
    let f = File::open(dir.blob_path(&blob.id)).map_err(|e| e.to_string())?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    if blob.ci_compressed_size > 0 {
        let (off, len) = blob_meta::meta_range(blob).ok_or("chunk-info range overflows")?;
        let meta = read_at(&f, off, len)?;
        let (ci, hdr) = meta.split_at(blob.ci_compressed_size as usize);
        let hdr = BlobMetaHeader::parse(hdr, blob).map_err(|e| e.to_string())?;
        let infos = blob_meta::parse_chunk_infos(&hdr, ci).map_err(|e| e.to_string())?;
        for i in 0..img.chunk_record_count() {
            let rec = img.chunk_record(i).map_err(|e| e.to_string())?;
            if rec.blob_index != blob.index {
                continue;
            }
            let info = infos.get(rec.blob_chunk_index as usize).ok_or_else(|| {
                format!(
                    "chunk {} is number {} but the chunk-info array has {} entries",
                    rec.digest,
                    rec.blob_chunk_index,
                    infos.len()
                )
            })?;
            if info.compressed_offset != rec.compressed_offset
                || info.compressed_size != rec.compressed_size
                || info.uncompressed_size != rec.uncompressed_size
                || info.uncompressed_offset != rec.uncompressed_offset
            {
                return Err(format!(
                    "chunk-info entry {} disagrees with the bootstrap for chunk {} (blob offset {})",
                    rec.blob_chunk_index, rec.digest, rec.compressed_offset
                ));
            }
        }
    }
    if blob.features & blob_features::HAS_TOC != 0 {
        check_toc(&f, size)?;
    }
    Ok(())
}

fn check_toc(f: &File, size: u64) -> Result<(), String> {
    let hdr_off = size
        .checked_sub(blob_meta::TAR_HEADER_SIZE)
        .ok_or("blob too small for a TOC")?;
    let hdr = read_at(f, hdr_off, blob_meta::TAR_HEADER_SIZE)?;
    let Some((off, len)) = blob_meta::toc_location(&hdr, size).map_err(|e| e.to_string())? else {
        return Err("the blob table says it has a TOC, but it does not end with one".into());
    };
    let toc = blob_meta::parse_toc(&read_at(f, off, len)?, size).map_err(|e| e.to_string())?;
    for e in toc.iter().filter(|e| e.name != "image.blob") {
        if e.uncompressed_size > MAX_TOC_SECTION {
            return Err(format!(
                "TOC section {} claims {} bytes",
                e.name, e.uncompressed_size
            ));
        }
        let stored = read_at(f, e.compressed_offset, e.compressed_size)?;
        let data = decompress(e.compression, &stored, e.uncompressed_size as usize)
            .map_err(|err| format!("TOC section {}: {err}", e.name))?;
        let digest: [u8; 32] = sha2::Sha256::digest(&data).into();
        if digest != e.sha256 {
            return Err(format!(
                "TOC section {} at offset {} does not match its sha256",
                e.name, e.compressed_offset
            ));
        }
        if e.name == "image.boot" {
            // A layer's own bootstrap names its blob with a placeholder id (the blob's digest is
            // not known while it is written), so only its superblocks are checked.
            dfagent_rafs::SuperBlock::parse(&data)
                .map_err(|err| format!("inline bootstrap: {err}"))?;
        }
    }
    Ok(())
}

/// Decode every chunk of the chunk table from the blob directory.
fn check_chunks(
    img: &Image,
    dir: &BlobDirTier,
    present: &HashSet<u32>,
    users: &HashMap<ChunkDigest, String>,
    r: &mut CheckReport,
) {
    for i in 0..img.chunk_record_count() {
        let rec = match img.chunk_record(i) {
            Ok(rec) => rec,
            Err(e) => {
                r.problems.push(format!("chunk table: {e}"));
                return;
            }
        };
        if !present.contains(&rec.blob_index) {
            continue;
        }
        let file = users
            .get(&rec.digest)
            .map(String::as_str)
            .unwrap_or("(no file)");
        let chunk = match img.chunk_ref(&rec) {
            Ok(c) => c,
            Err(e) => {
                r.problems.push(format!("file {file}: {e}"));
                continue;
            }
        };
        let at = format!(
            "file {file}: chunk {} at blob {} offset {}",
            chunk.digest, chunk.blob, chunk.compressed_offset
        );
        match dir.read_stored(&chunk) {
            Ok(Some(stored)) => {
                if let Err(e) = decode_chunk(&chunk, &stored) {
                    r.problems.push(format!("{at}: {e}"));
                }
            }
            Ok(None) => r.problems.push(format!("{at}: blob missing")),
            Err(e) => r.problems.push(format!("{at}: {e}")),
        }
    }
}
