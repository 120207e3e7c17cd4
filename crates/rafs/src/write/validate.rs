//! Checks of a [`Tree`], its blobs and options before anything is written: every malformed
//! input becomes a [`RafsError::InvalidTree`] naming the node, never a panic or a bad image.

use std::collections::{HashMap, HashSet};

use dfagent_core::{Compression, MAX_CHUNK_SIZE};

use super::placement::is_dir_mode;
use super::{xattr, BlobSpec, BootstrapOptions, ChunkPlacement, Content, Node, Tree};
use crate::chunk_table::max_stored_size;
use crate::error::{RafsError, Result};
use crate::inode::FileType;
use crate::layout::chunk_addr::{self, MAX_CHUNKS_PER_BLOB};
use crate::layout::chunk_info::{
    self, MAX_V1_COMPRESSED_OFFSET as MAX_C_OFFSET, MAX_V1_UNCOMPRESSED_OFFSET as MAX_U_OFFSET,
};
use crate::layout::dirent::MAX_NAME_LEN;
use crate::layout::inode::{MAX_RDEV_MAJOR, MAX_RDEV_MINOR};
use crate::layout::{blob_features as features, is_valid_chunk_size, BLOCK_SIZE};

/// Most blobs an image written here may reference (one fewer than chunk addresses, which store
/// `blob index + 1` in one byte, could name).
pub(crate) const MAX_BLOBS: usize = chunk_addr::MAX_BLOBS as usize - 1;
/// Longest symlink target (Linux' PATH_MAX minus the NUL).
pub(crate) const MAX_SYMLINK: usize = 4095;

fn bad(msg: String) -> RafsError {
    RafsError::InvalidTree(msg)
}

/// Printable form of a node for messages.
pub(crate) fn describe(tree: &Tree, i: u32) -> String {
    match tree.nodes.get(i as usize) {
        Some(_) if i == 0 => "root directory".to_string(),
        Some(n) => format!("node {i} ({:?})", String::from_utf8_lossy(&n.name)),
        None => format!("node {i}"),
    }
}

/// The file type of node `n`, checked.
pub(crate) fn file_type(tree: &Tree, i: u32, n: &Node) -> Result<FileType> {
    if n.mode > 0xffff {
        return Err(bad(format!(
            "{}: mode {:#o} does not fit 16 bits",
            describe(tree, i),
            n.mode
        )));
    }
    FileType::from_mode(n.mode).ok_or_else(|| {
        bad(format!(
            "{}: mode {:#o} has no valid file type",
            describe(tree, i),
            n.mode
        ))
    })
}

/// Check `tree` is a well-formed filesystem tree whose chunks name existing blobs.
pub(crate) fn validate(tree: &Tree, blobs: &[BlobSpec], opts: &BootstrapOptions) -> Result<()> {
    check_options(blobs, opts)?;
    let nodes = &tree.nodes;
    if nodes.is_empty() {
        return Err(bad("the tree has no root node".into()));
    }
    if nodes.len() > i32::MAX as usize {
        return Err(bad(format!("{} nodes is too many", nodes.len())));
    }
    let root = &nodes[0];
    if file_type(tree, 0, root)? != FileType::Dir || !matches!(root.content, Content::None) {
        return Err(bad("node 0 (the root) is not a directory".into()));
    }
    if !root.name.is_empty() || root.parent != 0 {
        return Err(bad(
            "the root node must have an empty name and parent 0".into()
        ));
    }
    let mut placements: HashMap<(u32, u32), ChunkPlacement> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        let i = i as u32;
        check_node(tree, i, n, blobs, opts, &mut placements)?;
    }
    check_reachable(tree)?;
    for &p in &opts.prefetch {
        if p as usize >= nodes.len() {
            return Err(bad(format!(
                "prefetch entry {p} is beyond the {}-node tree",
                nodes.len()
            )));
        }
    }
    Ok(())
}

fn check_options(blobs: &[BlobSpec], opts: &BootstrapOptions) -> Result<()> {
    let cs = opts.chunk_size;
    if !is_valid_chunk_size(cs) {
        return Err(bad(format!(
            "chunk size {cs} is not a power of two between 4 KiB and 16 MiB"
        )));
    }
    if blobs.len() > MAX_BLOBS {
        return Err(bad(format!(
            "{} blobs; an image can reference at most {MAX_BLOBS}",
            blobs.len()
        )));
    }
    let unsupported = features::ZRAN
        | features::BATCH
        | features::ENCRYPTED
        | features::TARFS
        | features::EXTERNAL
        | features::SEPARATE;
    let mut ids = HashSet::new();
    for (i, b) in blobs.iter().enumerate() {
        let what = format!("blob {i} ({})", b.id);
        if !ids.insert(b.id) {
            return Err(bad(format!("{what} is listed twice")));
        }
        if b.chunk_size != cs {
            return Err(bad(format!(
                "{what}: chunk size {} differs from the image's {cs} (upstream rejects that)",
                b.chunk_size
            )));
        }
        if b.chunk_count == 0 || b.uncompressed_size < BLOCK_SIZE {
            return Err(bad(format!(
                "{what} holds no chunks; upstream rejects a device of 0 blocks, leave it out"
            )));
        }
        if b.features & features::ALIGNED == 0 {
            return Err(bad(format!("{what}: the ALIGNED feature is not set")));
        }
        if b.features & unsupported != 0 {
            return Err(bad(format!(
                "{what}: features {:#x} are not written by this writer",
                b.features & unsupported
            )));
        }
        let entry = chunk_info::entry_size(b.features);
        if b.features & features::IS_CHUNKDICT_GENERATED == 0
            && b.ci_uncompressed_size != u64::from(b.chunk_count) * entry
        {
            return Err(bad(format!(
                "{what}: chunk-info array of {} bytes cannot describe {} chunks",
                b.ci_uncompressed_size, b.chunk_count
            )));
        }
        if b.ci_compressed_size > b.ci_uncompressed_size
            || b.ci_offset.checked_add(b.ci_compressed_size).is_none()
        {
            return Err(bad(format!(
                "{what}: chunk-info array sizes {}/{} at {} are inconsistent",
                b.ci_compressed_size, b.ci_uncompressed_size, b.ci_offset
            )));
        }
        if b.uncompressed_size / BLOCK_SIZE > u64::from(u32::MAX) {
            return Err(bad(format!("{what}: uncompressed size is too large")));
        }
    }
    Ok(())
}

fn check_node(
    tree: &Tree,
    i: u32,
    n: &Node,
    blobs: &[BlobSpec],
    opts: &BootstrapOptions,
    placements: &mut HashMap<(u32, u32), ChunkPlacement>,
) -> Result<()> {
    let nodes = &tree.nodes;
    let what = describe(tree, i);
    if i != 0 {
        if n.name.is_empty() || n.name.len() > MAX_NAME_LEN {
            return Err(bad(format!(
                "node {i}: name of {} bytes (1..={MAX_NAME_LEN} allowed)",
                n.name.len()
            )));
        }
        if n.name.contains(&b'/') || n.name.contains(&0) {
            return Err(bad(format!("{what}: name contains '/' or NUL")));
        }
        if n.name == b"." || n.name == b".." {
            return Err(bad(format!("{what}: \".\" and \"..\" are not entry names")));
        }
        let parent = nodes
            .get(n.parent as usize)
            .ok_or_else(|| bad(format!("{what}: parent {} is beyond the tree", n.parent)))?;
        if !is_dir_mode(parent.mode) || matches!(parent.content, Content::HardLink(_)) {
            return Err(bad(format!(
                "{what}: parent {} is not a directory",
                n.parent
            )));
        }
        let listed = parent.children.iter().filter(|&&c| c == i).count();
        if listed != 1 {
            return Err(bad(format!(
                "{what}: its parent {} lists it {listed} times",
                n.parent
            )));
        }
    }
    if let Content::HardLink(t) = n.content {
        let target = nodes
            .get(t as usize)
            .ok_or_else(|| bad(format!("{what}: hard link to node {t}, beyond the tree")))?;
        if t == i || t == 0 {
            return Err(bad(format!("{what}: hard link to node {t}")));
        }
        if matches!(target.content, Content::HardLink(_)) {
            return Err(bad(format!(
                "{what}: hard link to node {t}, itself a hard link (link to the original)"
            )));
        }
        if file_type(tree, t, target)? == FileType::Dir {
            return Err(bad(format!("{what}: hard link to directory node {t}")));
        }
        if !n.children.is_empty() {
            return Err(bad(format!("{what}: a hard link has children")));
        }
        return Ok(());
    }
    let ft = file_type(tree, i, n)?;
    if ft != FileType::Dir && !n.children.is_empty() {
        return Err(bad(format!("{what}: a {ft:?} has children")));
    }
    match (&n.content, ft) {
        (Content::None, FileType::Dir | FileType::File | FileType::Fifo | FileType::Socket) => {}
        (Content::None, FileType::CharDev | FileType::BlockDev) => {
            if n.rdev_major > MAX_RDEV_MAJOR || n.rdev_minor > MAX_RDEV_MINOR {
                return Err(bad(format!(
                    "{what}: device {}:{} does not fit the 32-bit encoding (major <= 4095, minor <= 1048575)",
                    n.rdev_major, n.rdev_minor
                )));
            }
        }
        (Content::Symlink(t), FileType::Symlink) => {
            if t.is_empty() || t.len() > MAX_SYMLINK || t.contains(&0) {
                return Err(bad(format!(
                    "{what}: symlink target of {} bytes (1..={MAX_SYMLINK}, no NUL)",
                    t.len()
                )));
            }
        }
        (Content::File { size, chunks }, FileType::File) => {
            check_chunks(&what, *size, chunks, blobs, opts, placements)?;
        }
        (c, ft) => {
            let kind = match c {
                Content::None => "no content",
                Content::Symlink(_) => "a symlink target",
                Content::File { .. } => "file data",
                Content::HardLink(_) => "a hard link",
            };
            return Err(bad(format!("{what}: a {ft:?} with {kind}")));
        }
    }
    if ft == FileType::Dir {
        let mut names = HashSet::with_capacity(n.children.len());
        for &c in &n.children {
            let child = nodes
                .get(c as usize)
                .ok_or_else(|| bad(format!("{what}: child {c} is beyond the tree")))?;
            if c == 0 || child.parent != i {
                return Err(bad(format!(
                    "{what} lists node {c} as a child, but its parent is {}",
                    if c == 0 { 0 } else { child.parent }
                )));
            }
            if !names.insert(child.name.as_slice()) {
                return Err(bad(format!(
                    "{what}: two entries are named {:?}",
                    String::from_utf8_lossy(&child.name)
                )));
            }
        }
    }
    let mut seen = HashSet::with_capacity(n.xattrs.len());
    for (name, value) in &n.xattrs {
        xattr::check(name, value, &what)?;
        if !seen.insert(name.as_slice()) {
            return Err(bad(format!(
                "{what}: xattr {:?} is set twice",
                String::from_utf8_lossy(name)
            )));
        }
    }
    let body = xattr::body_size(&n.xattrs);
    if xattr::icount(body).is_none() {
        return Err(bad(format!("{what}: {body} bytes of xattrs is too much")));
    }
    Ok(())
}

fn check_chunks(
    what: &str,
    size: u64,
    chunks: &[ChunkPlacement],
    blobs: &[BlobSpec],
    opts: &BootstrapOptions,
    placements: &mut HashMap<(u32, u32), ChunkPlacement>,
) -> Result<()> {
    let cs = u64::from(opts.chunk_size);
    let want = size.div_ceil(cs);
    if chunks.len() as u64 != want {
        return Err(bad(format!(
            "{what}: {} chunks for {size} bytes, expected {want}",
            chunks.len()
        )));
    }
    for (k, c) in chunks.iter().enumerate() {
        let cw = format!("{what} chunk {k}");
        let expect = (size - k as u64 * cs).min(cs);
        if u64::from(c.uncompressed_size) != expect {
            return Err(bad(format!(
                "{cw}: {} bytes, expected {expect}",
                c.uncompressed_size
            )));
        }
        let blob = blobs.get(c.blob_index as usize).ok_or_else(|| {
            bad(format!(
                "{cw}: blob index {} is beyond the {} blobs",
                c.blob_index,
                blobs.len()
            ))
        })?;
        if c.index_in_blob >= blob.chunk_count || c.index_in_blob >= MAX_CHUNKS_PER_BLOB {
            return Err(bad(format!(
                "{cw}: chunk index {} is beyond blob {}'s {} chunks",
                c.index_in_blob, c.blob_index, blob.chunk_count
            )));
        }
        if c.digest.algo() != opts.digest_algo {
            return Err(bad(format!(
                "{cw}: {} digest in a {} image",
                c.digest.algo(),
                opts.digest_algo
            )));
        }
        if !c.uncompressed_offset.is_multiple_of(BLOCK_SIZE) || c.uncompressed_offset > MAX_U_OFFSET
        {
            return Err(bad(format!(
                "{cw}: uncompressed offset {} is not 4 KiB aligned or too large",
                c.uncompressed_offset
            )));
        }
        if c.compressed_size == 0
            || c.compressed_size > MAX_CHUNK_SIZE
            || c.compressed_offset > MAX_C_OFFSET
        {
            return Err(bad(format!(
                "{cw}: stored size {} at {} is out of range",
                c.compressed_size, c.compressed_offset
            )));
        }
        // The blob's v1 chunk-info records tell compressed from raw by the sizes alone.
        if c.compressed == (c.compressed_size == c.uncompressed_size) {
            return Err(bad(format!(
                "{cw}: {} chunk with stored size {} and size {}",
                if c.compressed { "compressed" } else { "raw" },
                c.compressed_size,
                c.uncompressed_size
            )));
        }
        // What the reader accepts: a compressed chunk in a blob with a compressor, within that
        // compressor's worst case.
        let stored_as = if c.compressed {
            blob.compression
        } else {
            Compression::None
        };
        if (c.compressed && blob.compression == Compression::None)
            || u64::from(c.compressed_size) > max_stored_size(stored_as, c.uncompressed_size)
        {
            return Err(bad(format!(
                "{cw}: stored size {} is beyond what {} gives for {} bytes",
                c.compressed_size, blob.compression, c.uncompressed_size
            )));
        }
        match placements.insert((c.blob_index, c.index_in_blob), *c) {
            Some(prev) if prev != *c => {
                return Err(bad(format!(
                    "{cw}: blob {} chunk {} is described two different ways",
                    c.blob_index, c.index_in_blob
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Every node must hang off the root: a parent cycle detached from it is an error.
fn check_reachable(tree: &Tree) -> Result<()> {
    let nodes = &tree.nodes;
    let mut seen = vec![false; nodes.len()];
    seen[0] = true;
    let mut stack = vec![0u32];
    let mut count = 1usize;
    while let Some(d) = stack.pop() {
        for &c in &nodes[d as usize].children {
            // Validated before: c is in range and its parent is d.
            if !seen[c as usize] {
                seen[c as usize] = true;
                count += 1;
                stack.push(c);
            }
        }
    }
    if count != nodes.len() {
        let lost = seen.iter().position(|s| !s).unwrap_or(0) as u32;
        return Err(bad(format!(
            "{} is not reachable from the root",
            describe(tree, lost)
        )));
    }
    Ok(())
}
