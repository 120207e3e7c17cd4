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

use super::placement::{place, target, Data, Placement, Slot};
use super::{validate, xattr, BlobSpec, BootstrapOptions, ChunkPlacement, Content, Tree};
use crate::error::{RafsError, Result};
use crate::inode::FileType;
use crate::layout::chunk_addr::ChunkAddr;
use crate::layout::inode::{self as disk, extended};
use crate::layout::{
    blob_entry, blob_features as features, chunk_addr, chunk_flags, chunk_record, device_slot,
    dirent, ext_sb, inode::SLOT_SIZE, sb, super_flags as flags, BLOB_ID_LEN, BLOCK_BITS,
    BLOCK_SIZE as BLOCK, PREFETCH_ENTRY_SIZE,
};

/// Byte offset of the device table: right after the superblocks, as upstream puts it.
const DEVTABLE_OFFSET: u64 = ext_sb::END;
/// Device mapping addresses are aligned to 512 KiB, as upstream aligns them.
const DEVICE_ALIGN: u64 = 0x8_0000;

fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
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
    let blob_table_offset = align(DEVTABLE_OFFSET + nblobs * device_slot::SIZE, BLOCK);
    let blob_table_size = nblobs * blob_entry::SIZE;
    // Upstream records a prefetch table only when the image has blobs to prefetch from.
    let prefetch_size = if nblobs > 0 {
        opts.prefetch.len() as u64 * PREFETCH_ENTRY_SIZE
    } else {
        0
    };
    let prefetch_offset = if prefetch_size > 0 {
        blob_table_offset + blob_table_size
    } else {
        0
    };
    let meta_addr = align(blob_table_offset + blob_table_size + prefetch_size, BLOCK);
    let lay = place(tree, opts.chunk_size, meta_addr + BLOCK)?;
    let nid = |slot: &Slot| -> u64 { (slot.offset - meta_addr) / SLOT_SIZE };
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
        let t = target(tree, i);
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
    let chunk_table_size = chunk_table.len() as u64 * chunk_record::SIZE;
    let total = align(chunk_table_offset + chunk_table_size, BLOCK);
    out.resize(total as usize, 0);
    for (k, (c, file_offset)) in chunk_table.values().enumerate() {
        let at = (chunk_table_offset + k as u64 * chunk_record::SIZE) as usize;
        let r = &mut out[at..at + chunk_record::SIZE as usize];
        let digest = c.digest.bytes();
        r[chunk_record::DIGEST..chunk_record::DIGEST + digest.len()].copy_from_slice(digest);
        put32(r, chunk_record::BLOB_INDEX, c.blob_index);
        put32(
            r,
            chunk_record::FLAGS,
            if c.compressed {
                chunk_flags::COMPRESSED
            } else {
                0
            },
        );
        put32(r, chunk_record::COMPRESSED_SIZE, c.compressed_size);
        put32(r, chunk_record::UNCOMPRESSED_SIZE, c.uncompressed_size);
        put64(r, chunk_record::COMPRESSED_OFFSET, c.compressed_offset);
        put64(r, chunk_record::UNCOMPRESSED_OFFSET, c.uncompressed_offset);
        put64(r, chunk_record::FILE_OFFSET, *file_offset);
        put32(r, chunk_record::INDEX, c.index_in_blob);
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
        let at = (DEVTABLE_OFFSET + i as u64 * device_slot::SIZE) as usize;
        let s = &mut out[at..at + device_slot::SIZE as usize];
        put_blob_id(s, device_slot::BLOB_ID, b);
        put32(s, device_slot::BLOCKS, cnt);
        put32(s, device_slot::MAPPED_BLKADDR, mapped);
    }
    for (i, b) in blobs.iter().enumerate() {
        let at = (blob_table_offset + i as u64 * blob_entry::SIZE) as usize;
        write_blob_entry(&mut out[at..at + blob_entry::SIZE as usize], i as u32, b);
    }
    for (k, &p) in opts
        .prefetch
        .iter()
        .enumerate()
        .take((prefetch_size / PREFETCH_ENTRY_SIZE) as usize)
    {
        let slot = &lay.slots[lay.slot_of[p as usize] as usize];
        let n = u32::try_from(nid(slot)).map_err(|_| too_big("prefetch nid"))?;
        let at = prefetch_offset + PREFETCH_ENTRY_SIZE * k as u64;
        put32(&mut out, at as usize, n);
    }

    // Superblock.
    let s = &mut out[sb::OFFSET as usize..(sb::OFFSET + sb::SIZE) as usize];
    put32(s, sb::MAGIC, sb::EROFS_MAGIC);
    put32(s, sb::FEATURE_COMPAT, sb::COMPAT_RAFS_V6);
    s[sb::BLKSZBITS] = BLOCK_BITS;
    put16(s, sb::ROOT_NID, root_nid);
    put64(s, sb::INOS, lay.inos);
    put32(s, sb::BLOCKS, blocks);
    put32(
        s,
        sb::META_BLKADDR,
        u32::try_from(meta_addr / BLOCK).map_err(|_| too_big("meta address"))?,
    );
    put32(
        s,
        sb::FEATURE_INCOMPAT,
        sb::INCOMPAT_CHUNKED_FILE | sb::INCOMPAT_DEVICE_TABLE,
    );
    put16(s, sb::EXTRA_DEVICES, blobs.len() as u16);
    put16(
        s,
        sb::DEVT_SLOTOFF,
        (DEVTABLE_OFFSET / device_slot::SIZE) as u16,
    );

    let mut f = flags::EXPLICIT_UID_GID | flags::ENCRYPTION_NONE;
    f |= flags::compression(opts.compression);
    f |= flags::hash(opts.digest_algo);
    if has_xattr {
        f |= flags::HAS_XATTR;
    }
    if blobs
        .iter()
        .all(|b| b.features & features::INLINED_CHUNK_DIGEST != 0)
    {
        f |= flags::INLINED_CHUNK_DIGEST;
    }
    let ext = &mut out[ext_sb::OFFSET as usize..ext_sb::END as usize];
    put64(ext, ext_sb::FLAGS, f);
    put64(ext, ext_sb::BLOB_TABLE_OFFSET, blob_table_offset);
    put32(ext, ext_sb::BLOB_TABLE_SIZE, blob_table_size as u32);
    put32(ext, ext_sb::CHUNK_SIZE, opts.chunk_size);
    put64(ext, ext_sb::CHUNK_TABLE_OFFSET, chunk_table_offset);
    put64(ext, ext_sb::CHUNK_TABLE_SIZE, chunk_table_size);
    put64(ext, ext_sb::PREFETCH_TABLE_OFFSET, prefetch_offset);
    put32(ext, ext_sb::PREFETCH_TABLE_SIZE, prefetch_size as u32);
    Ok(out)
}

/// The blob's id (sha256 hex) in the [`BLOB_ID_LEN`]-byte field at `at`.
fn put_blob_id(b: &mut [u8], at: usize, blob: &BlobSpec) {
    b[at..at + BLOB_ID_LEN].copy_from_slice(blob.id.hex().as_bytes());
}

fn write_blob_entry(e: &mut [u8], index: u32, b: &BlobSpec) {
    put_blob_id(e, blob_entry::BLOB_ID, b);
    put32(e, blob_entry::BLOB_INDEX, index);
    put32(e, blob_entry::CHUNK_SIZE, b.chunk_size);
    put32(e, blob_entry::CHUNK_COUNT, b.chunk_count);
    put32(e, blob_entry::COMPRESSOR, b.compression.rafs_id());
    put32(
        e,
        blob_entry::DIGESTER,
        blob_entry::digest_id(b.digest_algo),
    );
    put32(e, blob_entry::FEATURES, b.features);
    put64(e, blob_entry::COMPRESSED_SIZE, b.compressed_size);
    put64(e, blob_entry::UNCOMPRESSED_SIZE, b.uncompressed_size);
    // TOC size: 0 for blobs whose meta sits at their tail.
    put32(e, blob_entry::CI_COMPRESSOR, b.ci_compression.rafs_id());
    put64(e, blob_entry::CI_OFFSET, b.ci_offset);
    put64(e, blob_entry::CI_COMPRESSED_SIZE, b.ci_compressed_size);
    put64(e, blob_entry::CI_UNCOMPRESSED_SIZE, b.ci_uncompressed_size);
    // TOC digest, meta digest and size, cipher IV: zero; cipher: 0 (none).
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
    disk::chunk_format(bits)
}

#[allow(clippy::too_many_arguments)]
fn write_inode(
    tree: &Tree,
    lay: &Placement,
    slot: &Slot,
    meta_addr: u64,
    opts: &BootstrapOptions,
    out: &mut [u8],
    chunk_table: &mut BTreeMap<([u8; 32], u32, u32), (ChunkPlacement, u64)>,
) -> Result<()> {
    let n = &tree.nodes[slot.node as usize];
    let nid_of =
        |node: u32| (lay.slots[lay.slot_of[node as usize] as usize].offset - meta_addr) / SLOT_SIZE;
    let mut xattrs = n.xattrs.clone();
    xattrs.sort();
    let icount = xattr::icount(slot.xattr_size as usize)
        .ok_or_else(|| RafsError::InvalidTree("xattrs too large".into()))?;
    let layout_bits = match slot.data {
        Data::None | Data::Plain => disk::FLAT_PLAIN,
        Data::Inline => disk::FLAT_INLINE,
        Data::Chunks => disk::CHUNK_BASED,
    };
    let union = match (slot.file_type, &n.content) {
        (FileType::CharDev | FileType::BlockDev, _) => {
            disk::encode_rdev(n.rdev_major, n.rdev_minor)
        }
        (FileType::File, Content::File { size, chunks }) => {
            chunk_format(chunks, *size, opts.chunk_size)
        }
        (FileType::File, _) => chunk_format(&[], 0, opts.chunk_size),
        _ => slot.blkaddr,
    };
    let at = slot.offset as usize;
    let ino = &mut out[at..at + disk::EXTENDED_SIZE as usize];
    put16(ino, disk::I_FORMAT, disk::extended_format(layout_bits));
    put16(ino, disk::I_XATTR_ICOUNT, icount);
    put16(ino, disk::I_MODE, n.mode as u16);
    put64(ino, extended::I_SIZE, slot.size);
    put32(ino, disk::I_U, union);
    put32(ino, disk::I_INO, slot.ino);
    put32(ino, extended::I_UID, n.uid);
    put32(ino, extended::I_GID, n.gid);
    put64(ino, extended::I_MTIME, n.mtime);
    put32(ino, extended::I_MTIME_NSEC, n.mtime_nsec);
    put32(ino, extended::I_NLINK, slot.nlink);
    let mut body = Vec::with_capacity(slot.xattr_size as usize);
    xattr::encode(&xattrs, &mut body);
    let xat = at + disk::EXTENDED_SIZE as usize;
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
            let align = chunk_addr::ALIGN as usize;
            let size = chunk_addr::SIZE as usize;
            let base = data_at.div_ceil(align) * align;
            for (k, c) in chunks.iter().enumerate() {
                let addr = ChunkAddr::new(
                    c.blob_index,
                    c.index_in_blob,
                    (c.uncompressed_offset / BLOCK) as u32,
                );
                out[base + size * k..base + size * (k + 1)].copy_from_slice(&addr.encode());
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
    let mut bytes = vec![0u8; block.len() * dirent::SIZE];
    let mut nameoff = bytes.len();
    for (k, (name, node)) in block.iter().enumerate() {
        let t = target(tree, *node);
        let code = validate::file_type(tree, t, &tree.nodes[t as usize])
            .map(|ft| ft.dirent_code())
            .unwrap_or(0);
        let d = &mut bytes[k * dirent::SIZE..(k + 1) * dirent::SIZE];
        put64(d, dirent::NID, nid_of(*node));
        put16(d, dirent::NAMEOFF, nameoff as u16);
        d[dirent::FILE_TYPE] = code;
        nameoff += name.len();
    }
    for (name, _) in block {
        bytes.extend_from_slice(name);
    }
    bytes
}
