//! Malformed bootstraps: real fixture images with single fields corrupted, tiny hand-made ones,
//! truncations and a deterministic byte-flip sweep. Every broken image must give a clear error
//! (never a panic, a hang or a huge allocation), and the error must say what is wrong.
//!
//! Field offsets follow the RAFS v6 layout: EROFS superblock at 1024, RAFS extended superblock at
//! 1152 (flags u64 +0, blob table offset u64 +8 and size u32 +16, chunk size u32 +20, chunk table
//! offset u64 +24 and size u64 +32, prefetch table offset u64 +40 and size u32 +48), 256-byte blob
//! table entries (compression +76, features +84, chunk-info compression +108, cipher +216),
//! 80-byte chunk records (blob index +32, uncompressed size +44), 12-byte dirents (nid u64 +0,
//! name offset u16 +8), 8-byte chunk addresses (ci index low u16 +0, blob index + 1 in the byte
//! at +2, ci index bits 16..23 at +3).

use std::sync::mpsc;
use std::time::Duration;

use dfagent_rafs::blob_meta::{BlobMetaHeader, META_HEADER_SIZE, META_MAGIC};
use dfagent_rafs::{FileType, Image, RafsError};
use dfagent_test_support::fixtures::fixture;

// ---------------------------------------------------------------------------------------------
// Fixtures and byte helpers
// ---------------------------------------------------------------------------------------------

fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = fixture(name).join("bootstrap");
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {} ({e})", path.display()))
}

/// The bootstrap most corruption tests start from.
fn base() -> Vec<u8> {
    fixture_bytes("v6-zstd-blake3")
}

const SB: usize = 1024;
const EXT: usize = 1152;
const EXT_FLAGS: usize = EXT;
const EXT_BLOB_TABLE_OFFSET: usize = EXT + 8;
const EXT_BLOB_TABLE_SIZE: usize = EXT + 16;
const EXT_CHUNK_TABLE_OFFSET: usize = EXT + 24;
const EXT_CHUNK_TABLE_SIZE: usize = EXT + 32;
const EXT_PREFETCH_OFFSET: usize = EXT + 40;
const EXT_PREFETCH_SIZE: usize = EXT + 48;

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn open(bytes: &[u8]) -> Image {
    Image::from_bytes(bytes.to_vec()).unwrap_or_else(|e| panic!("image should open: {e}"))
}

/// The error opening `bytes` must give.
fn open_err(bytes: Vec<u8>) -> RafsError {
    match Image::from_bytes(bytes) {
        Ok(img) => panic!("a malformed image opened: {img:?}"),
        Err(e) => e,
    }
}

fn assert_msg(e: &RafsError, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(
            msg.contains(p),
            "error {msg:?} ({e:?}) does not mention {p:?}"
        );
    }
}

fn assert_truncated(e: &RafsError, expected_what: &str) {
    match e {
        RafsError::Truncated { what, .. } if what == expected_what => {}
        other => panic!("expected Truncated {{ what: {expected_what:?} }}, got {other:?}"),
    }
}

fn assert_corrupt(e: &RafsError, parts: &[&str]) {
    assert!(
        matches!(e, RafsError::Corrupt(_)),
        "expected Corrupt, got {e:?}"
    );
    assert_msg(e, parts);
}

fn assert_unsupported(e: &RafsError, parts: &[&str]) {
    assert!(
        matches!(e, RafsError::Unsupported(_)),
        "expected Unsupported, got {e:?}"
    );
    assert_msg(e, parts);
}

/// Nid of `path` (`/`-separated, relative to the root).
fn nid_of(img: &Image, path: &str) -> u64 {
    let mut nid = img.root();
    for part in path.split('/') {
        nid = img
            .lookup(nid, part.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{path}: no {part}"))
            .nid;
    }
    nid
}

/// Byte offset of inode `nid`.
fn inode_off(img: &Image, nid: u64) -> usize {
    (img.superblock().meta_offset + nid * 32) as usize
}

/// On-disk size of inode `nid` (32 or 64) and of its inline xattrs.
fn inode_and_xattr_size(bytes: &[u8], at: usize) -> (usize, usize) {
    let isize = if get_u16(bytes, at) & 1 == 1 { 64 } else { 32 };
    let icount = usize::from(get_u16(bytes, at + 2));
    let xsize = if icount == 0 {
        0
    } else {
        12 + (icount - 1) * 4
    };
    (isize, xsize)
}

/// Byte offset of the first chunk address of regular file `nid`.
fn chunk_addr_off(bytes: &[u8], img: &Image, nid: u64) -> usize {
    let at = inode_off(img, nid);
    let (isize, xsize) = inode_and_xattr_size(bytes, at);
    at + (isize + xsize).div_ceil(8) * 8
}

/// `(offset, length)` of every data block of directory `nid`, read from the raw inode.
fn dir_blocks(bytes: &[u8], img: &Image, nid: u64) -> Vec<(usize, usize)> {
    let at = inode_off(img, nid);
    let format = get_u16(bytes, at);
    let (isize, xsize) = inode_and_xattr_size(bytes, at);
    let size = if isize == 64 {
        get_u64(bytes, at + 8)
    } else {
        u64::from(get_u32(bytes, at + 8))
    } as usize;
    let raw_blk = get_u32(bytes, at + 16) as usize;
    let inline = (format >> 1) & 7 == 2;
    let n = size.div_ceil(4096);
    (0..n)
        .map(|k| {
            let len = (size - k * 4096).min(4096);
            if inline && k == n - 1 && len < 4096 {
                (at + isize + xsize, len)
            } else {
                ((raw_blk + k) * 4096, len)
            }
        })
        .collect()
}

/// Byte offset of the dirent named `name` in directory `dir`.
fn dirent_off(bytes: &[u8], img: &Image, dir: u64, name: &str) -> usize {
    for (off, len) in dir_blocks(bytes, img, dir) {
        let block = &bytes[off..off + len];
        let count = usize::from(get_u16(block, 8)) / 12;
        for i in 0..count {
            let start = usize::from(get_u16(block, i * 12 + 8));
            let end = if i + 1 < count {
                usize::from(get_u16(block, (i + 1) * 12 + 8))
            } else {
                len
            };
            let mut n = &block[start..end];
            if let Some(p) = n.iter().position(|&c| c == 0) {
                n = &n[..p];
            }
            if n == name.as_bytes() {
                return off + i * 12;
            }
        }
    }
    panic!("no dirent {name} in directory nid {dir}");
}

/// Run `f` on another thread and fail (instead of hanging) when it takes too long.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("did not finish within {secs} s (hang?)"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the worker thread panicked"),
    }
}

/// Walk `bytes` on another thread with a time limit; returns the walk's result.
fn walk_within(bytes: Vec<u8>) -> Result<usize, RafsError> {
    within(60, move || {
        let img = Image::from_bytes(bytes)?;
        let mut n = 0;
        img.walk(|_| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    })
}

/// Everything a filesystem would do with an image, errors ignored: must never panic.
fn exercise(img: &Image) {
    let _ = img.prefetch_nids();
    for name in [&b"hello.txt"[..], b"many", b"zzz", b".", b"..", b""] {
        if let Ok(Some(e)) = img.lookup(img.root(), name) {
            let _ = img.inode(e.nid);
        }
    }
    for offset in [0, 1, 2, 5, 1023, 1024, 1025, 4097, u64::MAX] {
        let mut n = 0;
        let _ = img.readdir(img.root(), offset, |_| {
            n += 1;
            n < 4
        });
    }
    let records = img.chunk_record_count().min(100_000);
    for i in 0..records {
        if let Ok(rec) = img.chunk_record(i) {
            let _ = img.chunk_ref(&rec);
        }
    }
    let _ = img.walk(|e| {
        let nid = e.inode.nid;
        let _ = img.xattrs(nid);
        match e.inode.file_type {
            FileType::Symlink => {
                let _ = img.readlink(nid);
            }
            FileType::File => {
                let _ = img.chunks(&e.inode, 0, e.inode.size);
                let _ = img.chunks(&e.inode, e.inode.size / 2, 1);
            }
            FileType::Dir => {
                let _ = img.getxattr(nid, b"user.dir");
                let _ = img.readdir(nid, 3, |_| true);
            }
            _ => {
                // Wrong-type requests must fail cleanly too.
                let _ = img.readlink(nid);
                let _ = img.chunks(&e.inode, 0, u64::MAX);
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// A tiny hand-made image: root directory with `.`, `..` and a symlink `link` -> `target`
// ---------------------------------------------------------------------------------------------

const SYN_META: usize = 4096;
const SYN_ROOT: usize = SYN_META; // nid 0
const SYN_LINK_NID: u64 = 4;
const SYN_LINK: usize = SYN_META + 4 * 32;
/// The root's inline dirents start right after its 64-byte inode.
const SYN_DIRENTS: usize = SYN_ROOT + 64;

fn synthetic() -> Vec<u8> {
    let mut b = vec![0u8; 3 * 4096];
    // EROFS superblock.
    put_u32(&mut b, SB, 0xE0F5_E1E2);
    put_u32(&mut b, SB + 8, 0x4000_0000); // RAFS v6
    b[SB + 12] = 12; // 4 KiB blocks
    put_u16(&mut b, SB + 14, 0); // root nid
    put_u64(&mut b, SB + 16, 2); // inodes
    put_u32(&mut b, SB + 40, 1); // meta_blkaddr: inodes at 4096
    put_u32(&mut b, SB + 80, 0xC); // CHUNKED_FILE | DEVICE_TABLE
                                   // RAFS extended superblock: zstd, blake3, no encryption, 1 MiB chunks, no tables.
    put_u64(&mut b, EXT_FLAGS, 0x0100_0084);
    put_u32(&mut b, EXT + 20, 1 << 20);

    // Root: extended inode, FLAT_INLINE directory.
    let names: [&[u8]; 3] = [b".", b"..", b"link"];
    let nids = [0u64, 0, SYN_LINK_NID];
    let types = [2u8, 2, 7];
    let mut dir = vec![0u8; 12 * names.len()];
    for i in 0..names.len() {
        let nameoff = dir.len();
        put_u64(&mut dir, i * 12, nids[i]);
        put_u16(&mut dir, i * 12 + 8, nameoff as u16);
        dir[i * 12 + 10] = types[i];
        dir.extend_from_slice(names[i]);
    }
    put_u16(&mut b, SYN_ROOT, 1 | (2 << 1));
    put_u16(&mut b, SYN_ROOT + 4, 0o040755);
    put_u64(&mut b, SYN_ROOT + 8, dir.len() as u64);
    put_u32(&mut b, SYN_ROOT + 20, 1); // ino
    put_u32(&mut b, SYN_ROOT + 44, 2); // nlink
    b[SYN_DIRENTS..SYN_DIRENTS + dir.len()].copy_from_slice(&dir);

    // Symlink: extended inode, FLAT_INLINE target.
    put_u16(&mut b, SYN_LINK, 1 | (2 << 1));
    put_u16(&mut b, SYN_LINK + 4, 0o120777);
    put_u64(&mut b, SYN_LINK + 8, 6);
    put_u32(&mut b, SYN_LINK + 20, 2);
    put_u32(&mut b, SYN_LINK + 44, 1);
    b[SYN_LINK + 64..SYN_LINK + 70].copy_from_slice(b"target");
    b
}

#[test]
fn synthetic_image_is_valid() {
    let img = open(&synthetic());
    let mut seen = Vec::new();
    img.walk(|e| {
        seen.push((e.path.clone(), e.inode.file_type));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![
            (b"".to_vec(), FileType::Dir),
            (b"link".to_vec(), FileType::Symlink)
        ]
    );
    assert_eq!(img.readlink(SYN_LINK_NID).unwrap(), b"target");
    assert_eq!(img.lookup(0, b"link").unwrap().unwrap().nid, SYN_LINK_NID);
    assert!(img.blobs().is_empty());
    assert!(img.prefetch_nids().unwrap().is_empty());
}

#[test]
fn synthetic_root_that_is_not_a_directory() {
    let mut b = synthetic();
    put_u16(&mut b, SYN_ROOT + 4, 0o010644); // a fifo
    assert_corrupt(&open_err(b), &["root nid 0 is not a directory"]);
}

#[test]
fn synthetic_root_nid_out_of_range() {
    let mut b = synthetic();
    put_u16(&mut b, SB + 14, 0xFFFF);
    assert_corrupt(&open_err(b), &["nid 65535 is out of range"]);
}

#[test]
fn synthetic_compressed_inode_layout() {
    let mut b = synthetic();
    put_u16(&mut b, SYN_ROOT, 1 | (1 << 1)); // EROFS compressed layout
    assert_unsupported(&open_err(b), &["compressed inode layout"]);
}

#[test]
fn synthetic_bad_dirents() {
    // A name containing '/'.
    let mut b = synthetic();
    let name_at = SYN_DIRENTS + usize::from(get_u16(&b, SYN_DIRENTS + 2 * 12 + 8));
    b[name_at + 1] = b'/';
    let img = open(&b);
    assert_corrupt(&img.readdir(0, 0, |_| true).unwrap_err(), &["contains '/'"]);
    assert_corrupt(&img.lookup(0, b"link").unwrap_err(), &["contains '/'"]);
    assert!(walk_within(b).is_err());

    // First name offset not a multiple of the dirent size.
    let mut b = synthetic();
    put_u16(&mut b, SYN_DIRENTS + 8, 13);
    let img = open(&b);
    assert_corrupt(
        &img.readdir(0, 0, |_| true).unwrap_err(),
        &["first name offset 13 is invalid"],
    );

    // Name offsets out of order.
    let mut b = synthetic();
    put_u16(&mut b, SYN_DIRENTS + 12 + 8, 40);
    let img = open(&b);
    assert_corrupt(&img.readdir(0, 0, |_| true).unwrap_err(), &["out of order"]);
}

#[test]
fn synthetic_dirent_nid_overflow_and_self_loop() {
    // nid * 32 overflows u64.
    let mut b = synthetic();
    put_u64(&mut b, SYN_DIRENTS + 2 * 12, u64::MAX);
    let e = walk_within(b).unwrap_err();
    assert_corrupt(&e, &["out of range"]);

    // `link` made a directory entry pointing back at the root.
    let mut b = synthetic();
    put_u64(&mut b, SYN_DIRENTS + 2 * 12, 0);
    b[SYN_DIRENTS + 2 * 12 + 10] = 2;
    let e = walk_within(b).unwrap_err();
    assert_corrupt(&e, &["directory loop", "link"]);
}

#[test]
fn synthetic_symlink_sizes() {
    let mut b = synthetic();
    put_u64(&mut b, SYN_LINK + 8, 0);
    assert_corrupt(
        &open(&b).readlink(SYN_LINK_NID).unwrap_err(),
        &["0-byte target"],
    );
    put_u64(&mut b, SYN_LINK + 8, u64::MAX);
    assert_corrupt(
        &open(&b).readlink(SYN_LINK_NID).unwrap_err(),
        &[&format!("{}-byte target", u64::MAX)],
    );
    // An inline tail that would cross the block holding the inode.
    put_u64(&mut b, SYN_LINK + 8, 4000);
    assert_corrupt(
        &open(&b).readlink(SYN_LINK_NID).unwrap_err(),
        &["crosses a block boundary"],
    );
}

#[test]
fn synthetic_xattr_count_beyond_the_data() {
    let mut b = synthetic();
    // Put the symlink in the last inode slot so its xattrs cannot fit.
    let last_nid = (b.len() - SYN_META) as u64 / 32 - 2;
    let at = SYN_META + last_nid as usize * 32;
    let link: Vec<u8> = b[SYN_LINK..SYN_LINK + 64].to_vec();
    b[at..at + 64].copy_from_slice(&link);
    put_u16(&mut b, at + 2, 0xFFFF);
    put_u64(&mut b, SYN_DIRENTS + 2 * 12, last_nid);
    let img = open(&b);
    assert_truncated(&img.inode(last_nid).unwrap_err(), "inode with xattrs");
    assert_truncated(&walk_within(b).unwrap_err(), "inode with xattrs");
}

// ---------------------------------------------------------------------------------------------
// Empty, truncated, wrong magic, RAFS v5
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_input() {
    let e = open_err(Vec::new());
    assert!(matches!(e, RafsError::NotRafs(_)), "{e:?}");
    assert_msg(&e, &["0 bytes is too short"]);

    let f = tempfile::NamedTempFile::new().unwrap();
    let e = Image::open(f.path()).unwrap_err();
    assert!(matches!(e, RafsError::NotRafs(_)), "{e:?}");
    assert_msg(&e, &["is empty"]);

    let e = Image::open("/nonexistent/dfagent/bootstrap").unwrap_err();
    assert!(matches!(e, RafsError::Io { .. }), "{e:?}");
}

#[test]
fn truncated_before_and_inside_the_superblocks() {
    let b = base();
    for len in [1usize, 3, 4, 512, 1023, 1024, 1100, 1151] {
        let e = open_err(b[..len].to_vec());
        assert!(matches!(e, RafsError::NotRafs(_)), "length {len}: {e:?}");
        assert_msg(&e, &["too short to hold a superblock"]);
    }
    // The superblock is there but the metadata area (block 2) is not.
    for len in [1152, 1300, 1408, 4096, 8192] {
        let e = open_err(b[..len].to_vec());
        assert_corrupt(&e, &["metadata area at 8192 starts beyond"]);
    }
}

#[test]
fn truncated_tables() {
    let b = base();
    let img = open(&b);
    let sb = img.superblock().clone();
    assert_eq!(sb.blob_table_offset, get_u64(&b, EXT_BLOB_TABLE_OFFSET));
    assert_eq!(sb.chunk_table_offset, get_u64(&b, EXT_CHUNK_TABLE_OFFSET));
    // The chunk table is the last table: any cut before its end is caught when opening.
    let ct = sb.chunk_table_offset as usize;
    let ct_end = ct + sb.chunk_table_size as usize;
    let root_inode = inode_off(&img, img.root());
    for len in [
        8193,
        root_inode + 10,  // mid root inode
        root_inode + 100, // mid inode area
        ct - 1,
        ct + 40,          // mid first chunk record
        ct + 80 * 7 + 13, // mid chunk table
        ct_end - 1,
    ] {
        let e = open_err(b[..len].to_vec());
        match &e {
            RafsError::Truncated {
                what,
                offset,
                len: need,
                end,
            } => {
                assert_eq!(what, "chunk table", "length {len}");
                assert_eq!(*offset, sb.chunk_table_offset);
                assert_eq!(*need, sb.chunk_table_size);
                assert_eq!(*end, len as u64);
            }
            other => panic!("length {len}: expected a truncated chunk table, got {other:?}"),
        }
        assert_msg(&e, &["truncated image: chunk table at offset"]);
    }
    // Cut inside the blob table (the chunk table emptied so that the blob table is checked
    // against the shorter data,
    // and the metadata area moved to block 1, so that it starts before the cut).
    let mut nb = b.clone();
    put_u64(&mut nb, EXT_CHUNK_TABLE_SIZE, 0);
    put_u32(&mut nb, SB + 40, 1);
    let bt = sb.blob_table_offset as usize;
    for len in [bt + 1, bt + 100, bt + 255] {
        assert_truncated(&open_err(nb[..len].to_vec()), "blob table");
    }
    // Everything up to the end of the chunk table is enough.
    let img = open(&b[..ct_end]);
    assert_eq!(walk_within(b[..ct_end].to_vec()).unwrap(), 672);
    exercise(&img);
}

#[test]
fn truncated_inode_area() {
    // With the chunk table emptied, opening gets as far as the inodes.
    let mut b = base();
    let img = open(&b);
    let root = inode_off(&img, img.root());
    let multi = nid_of(&img, "multi-chunk.bin");
    let multi_at = inode_off(&img, multi);
    put_u64(&mut b, EXT_CHUNK_TABLE_SIZE, 0);

    // Inside the root inode: its 64-byte extended form is cut.
    assert_truncated(&open_err(b[..root + 40].to_vec()), "extended inode");
    // Inside the root's inline dirents.
    let e = open(&b[..root + 64 + 20])
        .readdir(img.root(), 0, |_| true)
        .unwrap_err();
    assert_truncated(&e, "inline data");

    // Inside a later inode: its compact head is there, the extended part is not.
    assert!(multi_at > root);
    let cut = b[..multi_at + 40].to_vec();
    let img = open(&cut);
    assert_truncated(&img.inode(multi).unwrap_err(), "extended inode");
    // Inodes past the cut are out of range.
    let e = img.inode(multi + 4).unwrap_err();
    assert_corrupt(&e, &[&format!("nid {} is out of range", multi + 4)]);
    let e = walk_within(cut).unwrap_err();
    assert!(
        matches!(e, RafsError::Truncated { .. } | RafsError::Corrupt(_)),
        "{e:?}"
    );
    // The same image with the chunk table left in place: every file read fails cleanly.
    let img = open(&b);
    let inode = img.inode(multi).unwrap();
    assert_corrupt(
        &img.chunks(&inode, 0, inode.size).unwrap_err(),
        &["is not in the chunk table"],
    );
}

#[test]
fn bad_magic() {
    let mut b = base();
    b[SB] ^= 0xFF;
    let e = open_err(b);
    assert!(matches!(e, RafsError::NotRafs(_)), "{e:?}");
    assert_msg(&e, &["bad magic 0xe0f5e11d at offset 1024"]);

    let mut b = base();
    put_u32(&mut b, SB + 8, 0); // EROFS without the RAFS v6 compat bit
    let e = open_err(b);
    assert!(matches!(e, RafsError::NotRafs(_)), "{e:?}");
    assert_msg(&e, &["plain EROFS image"]);

    // A page of zeros, a page of 0xFF.
    assert!(matches!(open_err(vec![0; 4096]), RafsError::NotRafs(_)));
    assert!(matches!(open_err(vec![0xFF; 8192]), RafsError::NotRafs(_)));
}

#[test]
fn rafs_v5_magic_is_unsupported() {
    const V5: [u8; 4] = 0x5241_4653u32.to_le_bytes();
    // Tiny synthetic ones: just the magic, and the magic plus a v5 superblock's worth of zeros.
    for len in [4usize, 8, 8192] {
        let mut b = vec![0u8; len];
        b[..4].copy_from_slice(&V5);
        let e = open_err(b);
        assert_unsupported(&e, &["RAFS v5", "only RAFS v6"]);
    }
    // A real v6 image with the v5 magic at byte 0: still refused as v5.
    let mut b = base();
    b[..4].copy_from_slice(&V5);
    assert_unsupported(&open_err(b), &["RAFS v5"]);
}

// ---------------------------------------------------------------------------------------------
// Unsupported features
// ---------------------------------------------------------------------------------------------

fn blob_entry(b: &[u8]) -> usize {
    get_u64(b, EXT_BLOB_TABLE_OFFSET) as usize
}

#[test]
fn unsupported_encryption_flag() {
    let mut b = base();
    let flags = get_u64(&b, EXT_FLAGS);
    assert_eq!(flags, 0x0100_00B4);
    put_u64(&mut b, EXT_FLAGS, flags | 0x0200_0000);
    assert_unsupported(&open_err(b), &["encrypted image"]);

    // A blob with a cipher.
    let mut b = base();
    let e = blob_entry(&b);
    put_u32(&mut b, e + 216, 1);
    assert_unsupported(&open_err(b), &["encrypted blob (cipher 1)"]);

    // A blob with the ENCRYPTED feature.
    let mut b = base();
    let e = blob_entry(&b);
    let f = get_u32(&b, e + 84);
    put_u32(&mut b, e + 84, f | 0x100);
    assert_unsupported(&open_err(b), &["encrypted blobs"]);
}

#[test]
fn unsupported_zran_and_other_blob_features() {
    let b0 = base();
    let e = blob_entry(&b0);
    assert_eq!(get_u32(&b0, e + 84), 0x4000_0001);
    for (bit, what) in [
        (0x8u32, "zran (targz-ref) blobs"),
        (0x40, "tarfs blobs"),
        (0x80, "batch chunks"),
        (0x800, "external blobs"),
    ] {
        let mut b = b0.clone();
        put_u32(&mut b, e + 84, 0x4000_0001 | bit);
        assert_unsupported(&open_err(b), &["blob table entry 0", what]);
    }
}

#[test]
fn unsupported_gzip_compression() {
    // Superblock: gzip instead of zstd.
    let mut b = base();
    let flags = get_u64(&b, EXT_FLAGS);
    put_u64(&mut b, EXT_FLAGS, (flags & !0x80) | 0x40);
    assert_unsupported(&open_err(b), &["gzip"]);

    // Blob table entry: chunk compression and chunk-info compression id 2 (gzip).
    for field in [76, 108] {
        let mut b = base();
        let e = blob_entry(&b);
        put_u32(&mut b, e + field, 2);
        assert_unsupported(&open_err(b), &["gzip compression of blob table entry 0"]);
    }
    // An unknown compression id is corruption, not a missing feature.
    let mut b = base();
    let e = blob_entry(&b);
    put_u32(&mut b, e + 76, 9);
    assert_corrupt(&open_err(b), &["unknown compression id 9"]);

    // Blob meta header with a gzip chunk-info array.
    let img = open(&base());
    let blob = &img.blobs()[0];
    let mut h = vec![0u8; META_HEADER_SIZE as usize];
    put_u32(&mut h, 0, META_MAGIC);
    put_u32(&mut h, 4092, META_MAGIC);
    put_u32(&mut h, 8, 2);
    let e = BlobMetaHeader::parse(&h, blob).unwrap_err();
    assert_unsupported(&e, &["gzip compression"]);
}

#[test]
fn other_superblock_values() {
    let cases: Vec<(usize, Vec<u8>, &str)> = vec![
        (SB + 12, vec![9], "block size 2^9"),
        (SB + 13, vec![1], "extended superblock slots"),
        (
            SB + 80,
            0x1Cu32.to_le_bytes().to_vec(),
            "incompatible feature bits 0x10",
        ),
        (
            EXT_FLAGS,
            0x0100_0284u64.to_le_bytes().to_vec(),
            "tarfs mode",
        ),
    ];
    for (at, bytes, msg) in cases {
        let mut b = base();
        b[at..at + bytes.len()].copy_from_slice(&bytes);
        assert_unsupported(&open_err(b), &[msg]);
    }
    let mut b = base();
    put_u64(&mut b, EXT_FLAGS, 0x0100_0084 | 0x1); // zstd and none
    assert_corrupt(&open_err(b), &["several compression algorithms"]);
    let mut b = base();
    put_u64(&mut b, EXT_FLAGS, 0x0100_0080 | 0xC); // blake3 and sha256
    assert_corrupt(&open_err(b), &["exactly one digest algorithm"]);
    for cs in [0u32, 4095, 3 << 20, 32 << 20] {
        let mut b = base();
        put_u32(&mut b, EXT + 20, cs);
        assert_corrupt(
            &open_err(b),
            &[&format!("chunk size {cs} is not a power of two")],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Broken references: nids, directory loops, chunk and blob indexes
// ---------------------------------------------------------------------------------------------

#[test]
fn dirent_with_huge_nid() {
    let b0 = base();
    let img = open(&b0);
    let root = img.root();
    let at = dirent_off(&b0, &img, root, "hello.txt");
    assert_eq!(get_u64(&b0, at), nid_of(&img, "hello.txt"));
    for nid in [0x00FF_FFFF_FFFFu64, u64::MAX, (b0.len() / 32) as u64] {
        let mut b = b0.clone();
        put_u64(&mut b, at, nid);
        let img = open(&b);
        let e = img.lookup(root, b"hello.txt").unwrap().unwrap();
        assert_eq!(e.nid, nid);
        let err = img.inode(nid).unwrap_err();
        assert_corrupt(&err, &[&format!("nid {nid} is out of range")]);
        assert!(img.xattrs(nid).is_err());
        assert!(img.readlink(nid).is_err());
        let err = walk_within(b).unwrap_err();
        assert_corrupt(&err, &[&format!("nid {nid} is out of range")]);
    }
}

#[test]
fn dirent_pointing_into_the_middle_of_an_inode() {
    // A nid naming the second half of an extended inode: whatever is there is parsed as an
    // inode and must be rejected or be harmless, never panic.
    let b0 = base();
    let img = open(&b0);
    let at = dirent_off(&b0, &img, img.root(), "multi-chunk.bin");
    let mut b = b0.clone();
    put_u64(&mut b, at, nid_of(&img, "multi-chunk.bin") + 1);
    let img = open(&b);
    exercise(&img);
    assert!(walk_within(b).is_err());
}

#[test]
fn directory_loop_back_to_the_root() {
    let b0 = base();
    let img = open(&b0);
    let root = img.root();
    let at = dirent_off(&b0, &img, root, "text");
    let mut b = b0.clone();
    put_u64(&mut b, at, root);
    let e = walk_within(b).unwrap_err();
    assert_corrupt(
        &e,
        &["directory loop", "text", &format!("directory nid {root}")],
    );
}

#[test]
fn directory_loop_back_to_a_parent() {
    let b0 = base();
    let img = open(&b0);
    let d0 = nid_of(&img, "deep/d0");
    let d1 = nid_of(&img, "deep/d0/d1");
    let at = dirent_off(&b0, &img, d1, "d2");
    // deep/d0/d1/d2 -> deep/d0 (its grandparent) and -> deep/d0/d1 (its parent, i.e. itself).
    for target in [d0, d1] {
        let mut b = b0.clone();
        put_u64(&mut b, at, target);
        let img = open(&b);
        // Lookups and readdir still work: only a full walk notices.
        assert_eq!(img.lookup(d1, b"d2").unwrap().unwrap().nid, target);
        let e = walk_within(b).unwrap_err();
        assert_corrupt(
            &e,
            &["directory loop", "deep/d0/d1/d2", &format!("nid {target}")],
        );
    }
}

#[test]
fn chunk_index_beyond_the_chunk_table() {
    let b0 = base();
    let img = open(&b0);
    let nid = nid_of(&img, "multi-chunk.bin");
    let inode = img.inode(nid).unwrap();
    assert!(img.chunks(&inode, 0, inode.size).unwrap().len() >= 2);
    let at = chunk_addr_off(&b0, &img, nid);
    // The address is (ci low 16 bits, blob + 1, ci high 8 bits, block address).
    assert_eq!(b0[at + 2], 1, "blob byte of the first chunk address");
    let ci = u32::from(get_u16(&b0, at)) | (u32::from(b0[at + 3]) << 16);
    assert!(u64::from(ci) < img.chunk_record_count());

    let mut b = b0.clone();
    put_u16(&mut b, at, 0xFFFF);
    b[at + 3] = 0xAB;
    let img = open(&b);
    let e = img.chunks(&inode, 0, inode.size).unwrap_err();
    assert_corrupt(
        &e,
        &[&format!(
            "file nid {nid} chunk 0 (blob 0, chunk {}) is not in the chunk table",
            0xAB_FFFF
        )],
    );
    // Chunks after the broken one still resolve.
    assert!(!img.chunks(&inode, 1 << 20, 1).unwrap().is_empty());
    // And a record number beyond the table.
    let n = img.chunk_record_count();
    assert_corrupt(
        &img.chunk_record(n).unwrap_err(),
        &["beyond the 615-entry chunk table"],
    );
    assert!(img.chunk_record(u64::MAX).is_err());
}

#[test]
fn blob_index_beyond_the_blob_table() {
    let b0 = base();
    let img = open(&b0);
    let nid = nid_of(&img, "multi-chunk.bin");
    let inode = img.inode(nid).unwrap();
    let at = chunk_addr_off(&b0, &img, nid);

    let mut b = b0.clone();
    b[at + 2] = 200; // blob index 199
    let e = open(&b).chunks(&inode, 0, inode.size).unwrap_err();
    assert_corrupt(
        &e,
        &["chunk 0 names blob index 199 beyond the 1-entry blob table"],
    );

    let mut b = b0.clone();
    b[at + 2] = 0;
    let e = open(&b).chunks(&inode, 0, inode.size).unwrap_err();
    assert_corrupt(&e, &["chunk 0 has no blob"]);

    // A chunk record naming blob 200.
    let mut b = b0.clone();
    let ct = get_u64(&b0, EXT_CHUNK_TABLE_OFFSET) as usize;
    put_u32(&mut b, ct + 32, 200);
    let img = open(&b);
    let rec = img.chunk_record(0).unwrap();
    assert_eq!(rec.blob_index, 200);
    assert_corrupt(
        &img.chunk_ref(&rec).unwrap_err(),
        &[&format!(
            "chunk {} names blob index 200 beyond the 1-entry blob table",
            rec.digest
        )],
    );
}

#[test]
fn absurd_table_sizes() {
    // Blob table: larger than the data (no allocation for 16 million entries).
    let mut b = base();
    put_u32(&mut b, EXT_BLOB_TABLE_SIZE, 0xFFFF_FF00);
    assert_truncated(&open_err(b), "blob table");
    // Blob table: inside the data but more entries than a chunk address can name.
    let mut b = base();
    put_u32(&mut b, EXT_BLOB_TABLE_SIZE, 256 * 300);
    assert_corrupt(&open_err(b), &["blob table holds 300 entries; at most 255"]);
    // Not a whole number of entries.
    let mut b = base();
    put_u32(&mut b, EXT_BLOB_TABLE_SIZE, 300);
    assert_corrupt(&open_err(b), &["blob table size 300 is not a multiple"]);
    // Offset that overflows.
    let mut b = base();
    put_u64(&mut b, EXT_BLOB_TABLE_OFFSET, u64::MAX - 100);
    assert_truncated(&open_err(b), "blob table");

    // Chunk table: huge sizes, some overflowing offset + size.
    for size in [80 * (1u64 << 40), 80 * (1u64 << 57), u64::MAX / 80 * 80] {
        let mut b = base();
        put_u64(&mut b, EXT_CHUNK_TABLE_SIZE, size);
        assert_truncated(&open_err(b), "chunk table");
    }
    let mut b = base();
    put_u64(&mut b, EXT_CHUNK_TABLE_SIZE, u64::MAX);
    assert_corrupt(
        &open_err(b),
        &[
            "chunk table size",
            "is not a multiple of its 80-byte entries",
        ],
    );
    let mut b = base();
    put_u64(&mut b, EXT_CHUNK_TABLE_OFFSET, u64::MAX - 79);
    assert_truncated(&open_err(b), "chunk table");

    // Prefetch table.
    let mut b = base();
    put_u32(&mut b, EXT_PREFETCH_SIZE, 0xFFFF_FFFC);
    assert_truncated(&open_err(b), "prefetch table");
    let mut b = base();
    put_u64(&mut b, EXT_PREFETCH_OFFSET, u64::MAX - 1);
    put_u32(&mut b, EXT_PREFETCH_SIZE, 4);
    assert_truncated(&open_err(b), "prefetch table");
    let mut b = base();
    put_u32(&mut b, EXT_PREFETCH_SIZE, 6);
    assert_corrupt(&open_err(b), &["prefetch table size 6"]);
    // A prefetch table inside the data lists whatever is there, bounded by the data.
    let mut b = base();
    put_u64(&mut b, EXT_PREFETCH_OFFSET, 0);
    put_u32(&mut b, EXT_PREFETCH_SIZE, 4096);
    assert_eq!(open(&b).prefetch_nids().unwrap().len(), 1024);

    // Chunk-info sizes in a blob meta header: refused before any decompression.
    let img = open(&base());
    let blob = img.blobs()[0].clone();
    let hdr = BlobMetaHeader {
        features: 0,
        ci_compression: dfagent_core::Compression::None,
        ci_entries: u32::MAX,
        ci_offset: blob.ci_offset,
        ci_compressed_size: 16,
        ci_uncompressed_size: u64::from(u32::MAX) * 16,
    };
    let e = dfagent_rafs::blob_meta::parse_chunk_infos(&hdr, &[0u8; 16]).unwrap_err();
    assert_corrupt(&e, &["limit"]);
}

#[test]
fn absurd_inode_sizes() {
    let b0 = base();
    let img = open(&b0);

    // A regular file claiming 2^60 bytes: its chunk address array would run past the data.
    let nid = nid_of(&img, "hello.txt");
    let at = inode_off(&img, nid);
    let mut b = b0.clone();
    put_u64(&mut b, at + 8, 1 << 60);
    let img = open(&b);
    let inode = img.inode(nid).unwrap();
    assert_eq!(inode.size, 1 << 60);
    assert_truncated(
        &img.chunks(&inode, 0, u64::MAX).unwrap_err(),
        "chunk index array",
    );
    assert_truncated(
        &img.chunks(&inode, (1 << 60) - 1, 1).unwrap_err(),
        "chunk index array",
    );

    // A directory claiming u64::MAX bytes: its blocks are read one by one and fail.
    let nid = nid_of(&img, "text");
    let at = inode_off(&img, nid);
    let mut b = b0.clone();
    put_u64(&mut b, at + 8, u64::MAX);
    let img = open(&b);
    assert!(img.readdir(nid, 0, |_| true).is_err());
    assert!(img.lookup(nid, b"big.txt").is_err());
    assert!(walk_within(b).is_err());

    // A symlink with a huge target.
    let nid = nid_of(&open(&b0), "link-rel");
    let at = inode_off(&open(&b0), nid);
    let mut b = b0.clone();
    put_u64(&mut b, at + 8, 1 << 40);
    assert_corrupt(
        &open(&b).readlink(nid).unwrap_err(),
        &["1099511627776-byte target"],
    );
}

fn record_of(img: &Image, digest: &dfagent_core::ChunkDigest) -> u64 {
    (0..img.chunk_record_count())
        .find(|&i| img.chunk_record(i).unwrap().digest == *digest)
        .expect("chunk record of a file chunk")
}

#[test]
fn chunk_record_with_bad_uncompressed_size() {
    let b0 = base();
    let img = open(&b0);
    let nid = nid_of(&img, "multi-chunk.bin");
    let inode = img.inode(nid).unwrap();
    let first = img.chunks(&inode, 0, 1).unwrap().remove(0);
    let ri = record_of(&img, &first.chunk.digest);
    let ct = get_u64(&b0, EXT_CHUNK_TABLE_OFFSET) as usize;
    let at = ct + ri as usize * 80;
    assert_eq!(get_u32(&b0, at + 44), first.chunk.uncompressed_size);

    for size in [0u32, (16 << 20) + 1, u32::MAX] {
        let mut b = b0.clone();
        put_u32(&mut b, at + 44, size);
        let img = open(&b);
        let rec = img.chunk_record(ri).unwrap();
        assert_eq!(rec.uncompressed_size, size);
        let msg = format!("chunk {} has uncompressed size {size}", rec.digest);
        assert_corrupt(&img.chunk_ref(&rec).unwrap_err(), &[&msg]);
        assert_corrupt(&img.chunks(&inode, 0, inode.size).unwrap_err(), &[&msg]);
    }
    // A valid size that does not match the file's chunk size.
    // (Stored and uncompressed size both changed, so that a chunk stored raw stays consistent.)
    let mut b = b0.clone();
    put_u32(&mut b, at + 40, 4096);
    put_u32(&mut b, at + 44, 4096);
    let e = open(&b).chunks(&inode, 0, 1).unwrap_err();
    assert_corrupt(&e, &["chunk 0 is 4096 bytes, expected 1048576"]);
}

#[test]
fn chunk_record_flags() {
    let b0 = base();
    let ct = get_u64(&b0, EXT_CHUNK_TABLE_OFFSET) as usize;
    for (flag, what) in [(0x2u32, "legacy hole"), (0x4, "encrypted"), (0x8, "batch")] {
        let mut b = b0.clone();
        put_u32(&mut b, ct + 36, get_u32(&b0, ct + 36) | flag);
        let img = open(&b);
        let rec = img.chunk_record(0).unwrap();
        assert_unsupported(&img.chunk_ref(&rec).unwrap_err(), &[what]);
    }
    // A compressed chunk marked as stored raw: its stored size differs from its size.
    let img = open(&b0);
    let ri = (0..img.chunk_record_count())
        .find(|&i| {
            let r = img.chunk_record(i).unwrap();
            r.flags & 1 != 0 && r.compressed_size != r.uncompressed_size
        })
        .expect("a compressed chunk in the zstd image") as usize;
    let mut b = b0.clone();
    let at = ct + ri * 80 + 36;
    put_u32(&mut b, at, get_u32(&b0, at) & !1);
    let img = open(&b);
    let rec = img.chunk_record(ri as u64).unwrap();
    assert_corrupt(
        &img.chunk_ref(&rec).unwrap_err(),
        &["is stored raw but its stored size"],
    );
    // Offset + size overflowing.
    let mut b = b0.clone();
    put_u64(&mut b, ct + 48, u64::MAX);
    let img = open(&b);
    let rec = img.chunk_record(0).unwrap();
    assert_corrupt(&img.chunk_ref(&rec).unwrap_err(), &["overflows"]);
}

// ---------------------------------------------------------------------------------------------
// Every fixture is fine; random damage never panics
// ---------------------------------------------------------------------------------------------

#[test]
fn every_fixture_opens_and_walks() {
    for (name, entries) in [
        ("v6-zstd-blake3", 672),
        ("v6-lz4-sha256", 672),
        ("v6-none-64k", 672),
        ("v6-chunkdict", 676),
        ("v6-nydusify-2layer", 72),
    ] {
        let path = fixture(name).join("bootstrap");
        let img = Image::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut n = 0;
        let mut bytes = 0;
        img.walk(|e| {
            n += 1;
            img.xattrs(e.inode.nid)?;
            match e.inode.file_type {
                FileType::Symlink => {
                    assert!(!img.readlink(e.inode.nid)?.is_empty());
                }
                FileType::File => {
                    let chunks = img.chunks(&e.inode, 0, e.inode.size)?;
                    let sum: u64 = chunks
                        .iter()
                        .map(|c| u64::from(c.chunk.uncompressed_size))
                        .sum();
                    assert_eq!(sum, e.inode.size, "{name}: {:?}", e.path);
                    bytes += sum;
                }
                _ => {}
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(n, entries, "{name}: entries");
        assert!(bytes > 6_000_000, "{name}: {bytes} bytes of files");
        for i in 0..img.chunk_record_count() {
            img.chunk_ref(&img.chunk_record(i).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let prefetch = img.prefetch_nids().unwrap();
        if name == "v6-nydusify-2layer" {
            assert_eq!(prefetch, vec![img.root()]);
            assert_eq!(img.blobs().len(), 2);
        } else {
            assert!(prefetch.is_empty(), "{name}: {prefetch:?}");
        }
        // The same bytes held in memory give the same image.
        let owned = Image::from_bytes(std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(owned.blobs(), img.blobs());
        exercise(&owned);
    }
}

/// A tiny linear congruential generator (Knuth's MMIX constants): deterministic positions.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Flip bytes of `original` one at a time; every result must be refused or be usable without a
/// panic. Returns how many images were tried and how many of them still opened. The positions
/// are shared out among threads (a panic in any of them fails the test).
fn sweep(original: &[u8], positions: &[(usize, u8)]) -> (usize, usize) {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let per = positions.len().div_ceil(threads).max(1);
    let opened: usize = std::thread::scope(|s| {
        let workers: Vec<_> = positions
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    let mut buf = original.to_vec();
                    let mut opened = 0;
                    for &(pos, mask) in part {
                        buf[pos] ^= mask;
                        if let Ok(img) = Image::from_bytes(buf.clone()) {
                            opened += 1;
                            exercise(&img);
                        }
                        buf[pos] ^= mask;
                    }
                    opened
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    (positions.len(), opened)
}

#[test]
fn byte_flip_sweep_never_panics() {
    for name in ["v6-zstd-blake3", "v6-nydusify-2layer"] {
        let original = fixture_bytes(name);
        let len = original.len();
        let img = open(&original);
        let meta = img.superblock().meta_offset as usize;
        // Every byte of the superblocks, blob and device tables (the first 8 KiB)...
        let head = (0..8192.min(len)).map(|p| (p, 0xFF));
        // ...every byte of the root inode and its inline dirents...
        let root = inode_off(&img, img.root());
        let root_area = (root..(root + 512).min(len)).map(|p| (p, 0x5A));
        // ...and pseudo-random positions everywhere, with pseudo-random masks.
        let mut lcg = Lcg(0x5EED ^ len as u64);
        let random: Vec<(usize, u8)> = (0..2000)
            .map(|_| {
                let pos = meta + (lcg.next() as usize) % (len - meta);
                let mask = (lcg.next() % 255) as u8 + 1;
                (pos, mask)
            })
            .collect();
        let positions: Vec<_> = head.chain(root_area).chain(random).collect();
        let (tried, opened) = sweep(&original, &positions);
        assert!(tried >= 2000 + 512, "{name}: {tried}");
        assert!(
            opened > 0 && opened < tried,
            "{name}: {opened} of {tried} opened"
        );
    }
}

#[test]
fn byte_flip_sweep_synthetic() {
    let original = synthetic();
    let positions: Vec<_> = (0..original.len())
        .flat_map(|p| [(p, 0x01u8), (p, 0x80), (p, 0xFF)])
        .collect();
    let (tried, opened) = sweep(&original, &positions);
    assert_eq!(tried, 3 * original.len());
    assert!(opened > 0);
}

#[test]
fn device_table_must_match_the_blob_table() {
    // Device slot 0 (byte 1408) names another blob than blob table entry 0.
    let mut b = base();
    b[1408] = if b[1408] == b'0' { b'1' } else { b'0' };
    let e = open_err(b);
    assert_corrupt(&e, &["device slot 0 names blob"]);

    // A device count that disagrees with the blob table.
    let mut b = base();
    put_u16(&mut b, SB + 86, 3);
    let e = open_err(b);
    assert_corrupt(
        &e,
        &["device table has 3 slots but the blob table 1 entries"],
    );
}

// ---------------------------------------------------------------------------------------------
// Stored sizes beyond the compressor's worst case; block addresses that overflow
// ---------------------------------------------------------------------------------------------

/// A compressed chunk of a file of `bytes`: its record's index and byte offset, and the file.
fn compressed_record(bytes: &[u8]) -> (u64, usize, u64) {
    let img = open(bytes);
    let mut found = None;
    img.walk(|e| {
        if found.is_none() && e.inode.file_type == FileType::File {
            let chunks = img.chunks(&e.inode, 0, e.inode.size)?;
            if let Some(c) = chunks
                .iter()
                .find(|c| c.chunk.compression != dfagent_core::Compression::None)
            {
                found = Some((c.chunk.digest, e.inode.nid));
            }
        }
        Ok(())
    })
    .unwrap();
    let (digest, nid) = found.expect("a compressed chunk");
    let ri = record_of(&img, &digest);
    let ct = get_u64(bytes, EXT_CHUNK_TABLE_OFFSET) as usize;
    (ri, ct + ri as usize * 80, nid)
}

#[test]
fn chunk_stored_size_is_bounded_by_the_compressor() {
    for (fixture_name, compression) in [
        ("v6-zstd-blake3", dfagent_core::Compression::Zstd),
        ("v6-lz4-sha256", dfagent_core::Compression::Lz4Block),
    ] {
        let b0 = fixture_bytes(fixture_name);
        let (ri, at, file) = compressed_record(&b0);
        let size = get_u32(&b0, at + 44);
        let limit = dfagent_rafs::max_stored_size(compression, size);
        assert!(limit > u64::from(size) && limit < u64::from(size) + 8192);

        // The worst case itself is accepted (the bytes would then fail to decode, not here).
        let mut b = b0.clone();
        put_u32(&mut b, at + 40, limit as u32);
        let img = open(&b);
        let c = img.chunk_ref(&img.chunk_record(ri).unwrap()).unwrap();
        assert_eq!(u64::from(c.compressed_size), limit);

        // One byte more, 4 GiB, or nothing at all: a typed error naming the chunk.
        for stored in [limit as u32 + 1, u32::MAX, 0] {
            let mut b = b0.clone();
            put_u32(&mut b, at + 40, stored);
            let img = open(&b);
            let rec = img.chunk_record(ri).unwrap();
            let e = img.chunk_ref(&rec).unwrap_err();
            match &e {
                RafsError::StoredSize {
                    chunk,
                    stored: s,
                    uncompressed,
                    compression: c,
                    limit: l,
                } => {
                    assert_eq!(
                        (*chunk, *s, *uncompressed, *c, *l),
                        (rec.digest, stored, size, compression, limit),
                        "{fixture_name}"
                    );
                }
                other => panic!("{fixture_name}: expected StoredSize, got {other:?}"),
            }
            assert_msg(
                &e,
                &[&rec.digest.to_string(), &format!("stored size {stored}")],
            );
            // Mapping a read of the file fails the same way; so does listing every chunk.
            let inode = img.inode(file).unwrap();
            assert!(matches!(
                img.chunks(&inode, 0, inode.size).unwrap_err(),
                RafsError::StoredSize { .. }
            ));
            assert!(matches!(
                img.all_chunks().unwrap_err(),
                RafsError::StoredSize { .. }
            ));
        }
    }
}

#[test]
fn directory_block_address_overflow_is_an_error() {
    // A directory claiming u64::MAX bytes (2^52 blocks) whose blocks start at block 16: block
    // 2^52 - 2 would sit at (16 + 2^52 - 2) * 4096, beyond u64. A listing resumed there (an
    // lseek on the directory hands the kernel any offset) must fail, not overflow.
    let b0 = base();
    let img = open(&b0);
    let nid = nid_of(&img, "text");
    let at = inode_off(&img, nid);
    let mut b = b0.clone();
    put_u16(&mut b, at, 1); // extended, FLAT_PLAIN
    put_u64(&mut b, at + 8, u64::MAX);
    put_u32(&mut b, at + 16, 16);
    let img = open(&b);
    let offset = ((1u64 << 52) - 2) * 1024;
    let e = img.readdir(nid, offset, |_| true).unwrap_err();
    assert_corrupt(&e, &[&format!("nid {nid}"), "overflows"]);
    // Around it, and a lookup's binary search over the 2^52 blocks: no panic either way.
    for offset in [offset + 1023, offset - 1, offset + 1024, u64::MAX, 0] {
        let _ = img.readdir(nid, offset, |_| true);
    }
    let _ = img.lookup(nid, b"zzzz");
}
