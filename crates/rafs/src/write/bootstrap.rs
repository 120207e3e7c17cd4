//! Serialising a [`Tree`] as a RAFS v6 bootstrap, laid out as upstream nydus-image lays it out:
//!
//! ```text
//! 0      1024 superblock, 1152 extended superblock, 1408 device table (128 bytes per blob)
//! 4096   blob table (256 bytes per blob), prefetch table (u32 nids) right after it
//! M      meta_blkaddr (next 4 KiB boundary); one empty block, so the root's nid is 128
//! M+4096 inodes (64-byte extended form, inline xattrs, inline tails, chunk address arrays),
//!        interleaved with full directory and symlink blocks
//! C      chunk table (80-byte records sorted by digest), padded to 4 KiB
//! ```
//!
//! No wall-clock time is recorded: the superblock's build time is 0, as upstream writes it, and
//! every inode carries its own mtime.

use std::collections::BTreeMap;

use dfagent_core::{Compression, DigestAlgo};

use super::layout::{layout, Data, Layout, Slot, BLOCK, DIRENT, INODE_SIZE};
use super::{validate, xattr, BlobSpec, BootstrapOptions, ChunkPlacement, Content, Tree};
use crate::blob_table::features;
use crate::chunk_table::chunk_flags;
use crate::error::{RafsError, Result};
use crate::inode::{layout as data_layout, FileType};
use crate::superblock::{
    flags, BLOB_ENTRY_SIZE, CHUNK_RECORD_SIZE, COMPAT_RAFS_V6, DEVICE_SLOT_SIZE, EROFS_MAGIC,
    EXT_SUPER_SIZE, INCOMPAT_CHUNKED_FILE, INCOMPAT_DEVICE_TABLE, SUPER_OFFSET, SUPER_SIZE,
};

/// Byte offset of the device table.
const DEVTABLE_OFFSET: u64 = SUPER_OFFSET + SUPER_SIZE + EXT_SUPER_SIZE;
/// Device mapping addresses are aligned to 512 KiB, as upstream aligns them.
const DEVICE_ALIGN: u64 = 0x8_0000;
/// Flag of an inode chunk format: the inode holds 8-byte chunk indexes.
const CHUNK_FORMAT_INDEXES: u32 = 0x20;

fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Numeric compression id of the blob table.
pub(crate) fn compression_id(c: Compression) -> u32 {
    match c {
        Compression::None => 0,
        Compression::Lz4Block => 1,
        Compression::Zstd => 3,
    }
}

/// Numeric digest id of the blob table.
pub(crate) fn digest_id(d: DigestAlgo) -> u32 {
    match d {
        DigestAlgo::Blake3 => 0,
        DigestAlgo::Sha256 => 1,
    }
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn too_big(what: &str) -> RafsError {
    RafsError::InvalidTree(format!("{what} does not fit RAFS v6 addressing"))
}

/// Serialise `tree` as a RAFS v6 bootstrap. Deterministic: same input, same bytes; no
/// wall-clock time.
pub fn write_bootstrap(
    tree: &Tree,
    blobs: &[BlobSpec],
    opts: &BootstrapOptions,
) -> Result<Vec<u8>> {
    validate::validate(tree, blobs, opts)?;
    let nblobs = blobs.len() as u64;
    let blob_table_offset = align(DEVTABLE_OFFSET + nblobs * DEVICE_SLOT_SIZE, BLOCK);
    let blob_table_size = nblobs * BLOB_ENTRY_SIZE;
    // Upstream records a prefetch table only when the image has blobs to prefetch from.
    let prefetch_size = if nblobs > 0 {
        opts.prefetch.len() as u64 * 4
    } else {
        0
    };
    let prefetch_offset = if prefetch_size > 0 {
        blob_table_offset + blob_table_size
    } else {
        0
    };
    let meta_addr = align(blob_table_offset + blob_table_size + prefetch_size, BLOCK);
    let lay = layout(tree, opts.chunk_size, meta_addr + BLOCK)?;
    let nid = |slot: &Slot| -> u64 { (slot.offset - meta_addr) / 32 };
    let root_nid =
        u16::try_from(nid(&lay.slots[lay.slot_of[0] as usize])).map_err(|_| too_big("root nid"))?;

    let mut out = vec![0u8; lay.end as usize];
    let mut has_xattr = false;
    let mut chunk_table: BTreeMap<([u8; 32], u32, u32), (ChunkPlacement, u64)> = BTreeMap::new();
    for slot in &lay.slots {
        has_xattr |= slot.xattr_size > 0;
        write_inode(
            tree,
            &lay,
            slot,
            meta_addr,
            opts,
            &mut out,
            &mut chunk_table,
        )?;
    }

    // A chunk shared by several files records the offset of its last use in upstream's
    // breadth-first dump order, as upstream's table (a map overwritten per use) ends up with.
    let cs = u64::from(opts.chunk_size);
    for &i in &lay.bfs {
        let t = super::layout::target(tree, i);
        if let Content::File { chunks, .. } = &tree.nodes[t as usize].content {
            for (k, c) in chunks.iter().enumerate() {
                let key = (*c.digest.bytes(), c.blob_index, c.index_in_blob);
                if let Some(e) = chunk_table.get_mut(&key) {
                    e.1 = k as u64 * cs;
                }
            }
        }
    }
    let chunk_table_offset = align(out.len() as u64, BLOCK);
    let chunk_table_size = chunk_table.len() as u64 * CHUNK_RECORD_SIZE;
    let total = align(chunk_table_offset + chunk_table_size, BLOCK);
    out.resize(total as usize, 0);
    for (k, (c, file_offset)) in chunk_table.values().enumerate() {
        let at = (chunk_table_offset + k as u64 * CHUNK_RECORD_SIZE) as usize;
        let r = &mut out[at..at + CHUNK_RECORD_SIZE as usize];
        r[..32].copy_from_slice(c.digest.bytes());
        put32(r, 32, c.blob_index);
        put32(
            r,
            36,
            if c.compressed {
                chunk_flags::COMPRESSED
            } else {
                0
            },
        );
        put32(r, 40, c.compressed_size);
        put32(r, 44, c.uncompressed_size);
        put64(r, 48, c.compressed_offset);
        put64(r, 56, c.uncompressed_offset);
        put64(r, 64, *file_offset);
        put32(r, 72, c.index_in_blob);
    }

    // Device slots: each blob mapped after the bootstrap, at 512 KiB boundaries.
    let mut pos = total;
    let mut blocks = 0u32;
    for (i, b) in blobs.iter().enumerate() {
        let cnt = u32::try_from(b.uncompressed_size / BLOCK).map_err(|_| too_big("blob size"))?;
        let mapped = u32::try_from(align(pos, DEVICE_ALIGN) / BLOCK)
            .map_err(|_| too_big("device mapping"))?;
        pos = (u64::from(mapped) + u64::from(cnt)) * BLOCK;
        blocks = blocks
            .checked_add(cnt)
            .ok_or_else(|| too_big("total data blocks"))?;
        let at = (DEVTABLE_OFFSET + i as u64 * DEVICE_SLOT_SIZE) as usize;
        let s = &mut out[at..at + DEVICE_SLOT_SIZE as usize];
        s[..64].copy_from_slice(b.id.hex().as_bytes());
        put32(s, 64, cnt);
        put32(s, 68, mapped);
    }
    for (i, b) in blobs.iter().enumerate() {
        let at = (blob_table_offset + i as u64 * BLOB_ENTRY_SIZE) as usize;
        write_blob_entry(&mut out[at..at + BLOB_ENTRY_SIZE as usize], i as u32, b);
    }
    for (k, &p) in opts
        .prefetch
        .iter()
        .enumerate()
        .take((prefetch_size / 4) as usize)
    {
        let slot = &lay.slots[lay.slot_of[p as usize] as usize];
        let n = u32::try_from(nid(slot)).map_err(|_| too_big("prefetch nid"))?;
        put32(&mut out, (prefetch_offset + 4 * k as u64) as usize, n);
    }

    // Superblock.
    let sb = &mut out[SUPER_OFFSET as usize..(SUPER_OFFSET + SUPER_SIZE) as usize];
    put32(sb, 0, EROFS_MAGIC);
    put32(sb, 8, COMPAT_RAFS_V6);
    sb[12] = 12;
    put16(sb, 14, root_nid);
    put64(sb, 16, lay.inos);
    put32(sb, 36, blocks);
    put32(
        sb,
        40,
        u32::try_from(meta_addr / BLOCK).map_err(|_| too_big("meta address"))?,
    );
    put32(sb, 80, INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE);
    put16(sb, 86, blobs.len() as u16);
    put16(sb, 88, (DEVTABLE_OFFSET / DEVICE_SLOT_SIZE) as u16);

    let mut f = flags::EXPLICIT_UID_GID | flags::ENCRYPTION_NONE;
    f |= match opts.compression {
        Compression::None => flags::COMPRESSION_NONE,
        Compression::Lz4Block => flags::COMPRESSION_LZ4,
        Compression::Zstd => flags::COMPRESSION_ZSTD,
    };
    f |= match opts.digest_algo {
        DigestAlgo::Blake3 => flags::HASH_BLAKE3,
        DigestAlgo::Sha256 => flags::HASH_SHA256,
    };
    if has_xattr {
        f |= flags::HAS_XATTR;
    }
    if blobs
        .iter()
        .all(|b| b.features & features::INLINED_CHUNK_DIGEST != 0)
    {
        f |= flags::INLINED_CHUNK_DIGEST;
    }
    let ext = &mut out[(SUPER_OFFSET + SUPER_SIZE) as usize..DEVTABLE_OFFSET as usize];
    put64(ext, 0, f);
    put64(ext, 8, blob_table_offset);
    put32(ext, 16, blob_table_size as u32);
    put32(ext, 20, opts.chunk_size);
    put64(ext, 24, chunk_table_offset);
    put64(ext, 32, chunk_table_size);
    put64(ext, 40, prefetch_offset);
    put32(ext, 48, prefetch_size as u32);
    Ok(out)
}

fn write_blob_entry(e: &mut [u8], index: u32, b: &BlobSpec) {
    e[..64].copy_from_slice(b.id.hex().as_bytes());
    put32(e, 64, index);
    put32(e, 68, b.chunk_size);
    put32(e, 72, b.chunk_count);
    put32(e, 76, compression_id(b.compression));
    put32(e, 80, digest_id(b.digest_algo));
    put32(e, 84, b.features);
    put64(e, 88, b.compressed_size);
    put64(e, 96, b.uncompressed_size);
    // 104: TOC size, 0 for blobs whose meta sits at their tail.
    put32(e, 108, compression_id(b.ci_compression));
    put64(e, 112, b.ci_offset);
    put64(e, 120, b.ci_compressed_size);
    put64(e, 128, b.ci_uncompressed_size);
    // 136..216: TOC digest, meta digest and size, cipher IV: zero; 216: cipher none.
}

/// EROFS chunk format of a file: upstream widens the chunk to the next power of two of the
/// file size when all its chunks sit back to back in one blob, so the kernel maps it at once.
fn chunk_format(chunks: &[ChunkPlacement], size: u64, chunk_size: u32) -> u32 {
    let cs = u64::from(chunk_size);
    let contiguous = chunks.windows(2).all(|w| {
        w[0].blob_index == w[1].blob_index
            && w[0].uncompressed_offset + cs == w[1].uncompressed_offset
    });
    let bits = if contiguous && size > cs {
        size.next_power_of_two().trailing_zeros()
    } else {
        chunk_size.trailing_zeros()
    };
    CHUNK_FORMAT_INDEXES | (bits - 12)
}

#[allow(clippy::too_many_arguments)]
fn write_inode(
    tree: &Tree,
    lay: &Layout,
    slot: &Slot,
    meta_addr: u64,
    opts: &BootstrapOptions,
    out: &mut [u8],
    chunk_table: &mut BTreeMap<([u8; 32], u32, u32), (ChunkPlacement, u64)>,
) -> Result<()> {
    let n = &tree.nodes[slot.node as usize];
    let nid_of =
        |node: u32| (lay.slots[lay.slot_of[node as usize] as usize].offset - meta_addr) / 32;
    let mut xattrs = n.xattrs.clone();
    xattrs.sort();
    let icount = xattr::icount(slot.xattr_size as usize)
        .ok_or_else(|| RafsError::InvalidTree("xattrs too large".into()))?;
    let layout_bits = match slot.data {
        Data::None | Data::Plain => data_layout::FLAT_PLAIN,
        Data::Inline => data_layout::FLAT_INLINE,
        Data::Chunks => data_layout::CHUNK_BASED,
    };
    let union = match (slot.file_type, &n.content) {
        (FileType::CharDev | FileType::BlockDev, _) => {
            (n.rdev_minor & 0xff) | (n.rdev_major << 8) | ((n.rdev_minor & !0xff) << 12)
        }
        (FileType::File, Content::File { size, chunks }) => {
            chunk_format(chunks, *size, opts.chunk_size)
        }
        (FileType::File, _) => chunk_format(&[], 0, opts.chunk_size),
        _ => slot.blkaddr,
    };
    let at = slot.offset as usize;
    let ino = &mut out[at..at + INODE_SIZE as usize];
    put16(ino, 0, 1 | (layout_bits << 1));
    put16(ino, 2, icount);
    put16(ino, 4, n.mode as u16);
    put64(ino, 8, slot.size);
    put32(ino, 16, union);
    put32(ino, 20, slot.ino);
    put32(ino, 24, n.uid);
    put32(ino, 28, n.gid);
    put64(ino, 32, n.mtime);
    put32(ino, 40, n.mtime_nsec);
    put32(ino, 44, slot.nlink);
    let mut body = Vec::with_capacity(slot.xattr_size as usize);
    xattr::encode(&xattrs, &mut body);
    let xat = at + INODE_SIZE as usize;
    out[xat..xat + body.len()].copy_from_slice(&body);
    let data_at = xat + body.len();

    match (&n.content, slot.file_type) {
        (_, FileType::Dir) => {
            let last = slot.dir_blocks.len() - 1;
            for (bi, block) in slot.dir_blocks.iter().enumerate() {
                let bytes = dir_block(tree, block, &nid_of);
                let start = if bi == last && slot.data == Data::Inline {
                    data_at
                } else {
                    (u64::from(slot.blkaddr) * BLOCK) as usize + bi * BLOCK as usize
                };
                out[start..start + bytes.len()].copy_from_slice(&bytes);
            }
        }
        (Content::Symlink(target), _) => {
            let start = if slot.data == Data::Inline {
                data_at
            } else {
                (u64::from(slot.blkaddr) * BLOCK) as usize
            };
            out[start..start + target.len()].copy_from_slice(target);
        }
        (Content::File { chunks, .. }, _) => {
            let base = data_at.div_ceil(8) * 8;
            for (k, c) in chunks.iter().enumerate() {
                let a = &mut out[base + 8 * k..base + 8 * k + 8];
                put16(a, 0, (c.index_in_blob & 0xffff) as u16);
                put16(
                    a,
                    2,
                    ((c.blob_index + 1) as u16) | (((c.index_in_blob >> 16) as u16) << 8),
                );
                put32(a, 4, (c.uncompressed_offset / BLOCK) as u32);
                let key = (*c.digest.bytes(), c.blob_index, c.index_in_blob);
                chunk_table.entry(key).or_insert((*c, 0));
            }
        }
        _ => {}
    }
    Ok(())
}

/// One directory block: dirents, then the names packed after them.
fn dir_block(tree: &Tree, block: &[(Vec<u8>, u32)], nid_of: &dyn Fn(u32) -> u64) -> Vec<u8> {
    let mut bytes = vec![0u8; block.len() * DIRENT];
    let mut nameoff = bytes.len();
    for (k, (name, node)) in block.iter().enumerate() {
        let t = super::layout::target(tree, *node);
        let code = validate::file_type(tree, t, &tree.nodes[t as usize])
            .map(|ft| ft.dirent_code())
            .unwrap_or(0);
        let d = &mut bytes[k * DIRENT..(k + 1) * DIRENT];
        put64(d, 0, nid_of(*node));
        put16(d, 8, nameoff as u16);
        d[10] = code;
        nameoff += name.len();
    }
    for (name, _) in block {
        bytes.extend_from_slice(name);
    }
    bytes
}
