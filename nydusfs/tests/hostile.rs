//! Crafted bootstraps through the plain operations ([`NydusOps`]), without a kernel: an image
//! written by the RAFS writer, then patched where the writer would never go (times of 2^63 and
//! beyond, sizes past what the kernel holds, blob sizes that overflow a sum, directory entries
//! naming nids near `u64::MAX`, a directory of `u64::MAX` bytes, chunks claiming 4 GiB stored).
//! Every number the mount layer takes from an image is checked or saturated: each operation
//! answers with a clear errno or a saturated value, never a panic (these tests run with overflow
//! checks on), and a chunk the reader refuses is never asked of a tier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use dfagent_core::{
    encode_chunk, BoxFuture, ChunkDigest, ChunkReader, ChunkRef, Compression, DigestAlgo, ReadError,
};
use dfagent_nydusfs::{Errno, FsConfig, NydusOps, MAX_FILE_SIZE, ROOT_INO};
use dfagent_rafs::layout::{blob_entry, chunk_record, dirent, ext_sb, inode as disk};
use dfagent_rafs::write::{
    write_bootstrap, BlobWriter, BootstrapOptions, ChunkPlacement, Content, Node, Tree,
};
use dfagent_rafs::{FileType, Image};

const CS: u32 = 4096;
const DIR: u32 = 0o040000;
const REG: u32 = 0o100000;

fn node(name: &[u8], parent: u32, mode: u32, content: Content) -> Node {
    Node {
        name: name.to_vec(),
        parent,
        children: vec![],
        mode,
        uid: 1000,
        gid: 1000,
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        rdev_major: 0,
        rdev_minor: 0,
        xattrs: vec![],
        content,
    }
}

/// A written image: its bootstrap and the decoded bytes of every chunk.
struct Crafted {
    boot: Vec<u8>,
    chunks: HashMap<ChunkDigest, Bytes>,
    /// Contents of `file`.
    file: Vec<u8>,
}

/// Cut `data` into chunks of blob `w` (index `blob`), compressed with zstd where that pays.
fn add_file_chunks(
    w: &mut BlobWriter<Vec<u8>>,
    blob: u32,
    data: &[u8],
    chunks: &mut HashMap<ChunkDigest, Bytes>,
) -> Vec<ChunkPlacement> {
    data.chunks(CS as usize)
        .map(|c| {
            let digest = DigestAlgo::Sha256.digest(c);
            let (stored, how) = encode_chunk(Compression::Zstd, c).unwrap();
            let mut p = w
                .add_chunk(digest, c.len() as u32, &stored, how != Compression::None)
                .unwrap();
            p.blob_index = blob;
            chunks.insert(digest, Bytes::copy_from_slice(c));
            p
        })
        .collect()
}

/// Root (mtime 2^63) with `dir/leaf` (a fifo), `file` (three chunks of blob 0, mtime
/// `u64::MAX` with 2^32 - 1 nanoseconds, owner `u32::MAX`), `link` (a symlink) and `other` (one
/// chunk of blob 1).
fn crafted() -> Crafted {
    let mut chunks = HashMap::new();
    let mut b0 = BlobWriter::new(Vec::new(), CS, Compression::Zstd, DigestAlgo::Sha256);
    let mut b1 = BlobWriter::new(Vec::new(), CS, Compression::Zstd, DigestAlgo::Sha256);
    let file: Vec<u8> = (0..3 * CS as usize - 100).map(|i| (i / 7) as u8).collect();
    let file_chunks = add_file_chunks(&mut b0, 0, &file, &mut chunks);
    let other_chunks = add_file_chunks(&mut b1, 1, b"other bytes", &mut chunks);

    let mut root = node(b"", 0, DIR | 0o755, Content::None);
    root.mtime = 1 << 63;
    let mut nodes = vec![root];
    let mut add = |n: Node| {
        let i = nodes.len() as u32;
        let parent = n.parent as usize;
        nodes.push(n);
        nodes[parent].children.push(i);
        i
    };
    let dir = add(node(b"dir", 0, DIR | 0o755, Content::None));
    add(node(b"leaf", dir, 0o010644, Content::None));
    let mut f = node(
        b"file",
        0,
        REG | 0o644,
        Content::File {
            size: file.len() as u64,
            chunks: file_chunks,
        },
    );
    f.mtime = u64::MAX;
    f.mtime_nsec = u32::MAX;
    f.uid = u32::MAX;
    f.gid = u32::MAX;
    add(f);
    add(node(
        b"link",
        0,
        0o120777,
        Content::Symlink(b"file".to_vec()),
    ));
    add(node(
        b"other",
        0,
        REG | 0o644,
        Content::File {
            size: 11,
            chunks: other_chunks,
        },
    ));
    let (_, s0) = b0.finish().unwrap();
    let (_, s1) = b1.finish().unwrap();
    let opts = BootstrapOptions {
        chunk_size: CS,
        digest_algo: DigestAlgo::Sha256,
        compression: Compression::Zstd,
        prefetch: vec![],
    };
    let boot = write_bootstrap(&Tree { nodes }, &[s0, s1], &opts).unwrap();
    Crafted { boot, chunks, file }
}

/// Serves decoded chunks from memory, optionally off by one byte; counts what it is asked.
#[derive(Default)]
struct MemReader {
    chunks: HashMap<ChunkDigest, Bytes>,
    /// Add a byte to every answer (> 0) or drop one (< 0).
    skew: i8,
    asked: Mutex<Vec<ChunkDigest>>,
}

impl ChunkReader for MemReader {
    fn read_chunk<'a>(&'a self, chunk: &'a ChunkRef) -> BoxFuture<'a, Result<Bytes, ReadError>> {
        Box::pin(async move {
            self.asked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(chunk.digest);
            let data = self.chunks.get(&chunk.digest).ok_or(ReadError::NotFound {
                digest: chunk.digest,
                blob: chunk.blob,
                offset: chunk.compressed_offset,
            })?;
            let mut v = data.to_vec();
            match self.skew {
                s if s > 0 => v.push(0),
                s if s < 0 => {
                    v.pop();
                }
                _ => {}
            }
            Ok(Bytes::from(v))
        })
    }
}

fn reader(c: &Crafted) -> Arc<MemReader> {
    Arc::new(MemReader {
        chunks: c.chunks.clone(),
        ..MemReader::default()
    })
}

fn ops_over(boot: Vec<u8>, reader: Arc<MemReader>) -> NydusOps {
    let image = Image::from_bytes(boot).expect("the crafted image opens");
    NydusOps::new(Arc::new(image), reader, FsConfig::default())
}

fn read(ops: &NydusOps, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(ops.read(ino, offset, size))
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
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Nid of `name` in the root.
fn nid(img: &Image, name: &str) -> u64 {
    img.lookup(img.root(), name.as_bytes())
        .unwrap()
        .unwrap_or_else(|| panic!("no {name}"))
        .nid
}

/// Byte offset of inode `nid`; every inode the writer makes is extended.
fn inode_at(boot: &[u8], img: &Image, nid: u64) -> usize {
    let at = (img.superblock().meta_offset + nid * disk::SLOT_SIZE) as usize;
    assert_eq!(get_u16(boot, at) & disk::FORMAT_EXTENDED, 1);
    at
}

/// Byte offset of the dirent `name` of the root directory (one block, inline or not, no xattrs).
fn root_dirent_at(boot: &[u8], img: &Image, name: &[u8]) -> usize {
    let at = inode_at(boot, img, img.root());
    assert_eq!(get_u16(boot, at + disk::I_XATTR_ICOUNT), 0);
    let size = img.inode(img.root()).unwrap().size as usize;
    assert!(size <= 4096);
    let layout = disk::format_layout(get_u16(boot, at));
    let block = if layout == disk::FLAT_INLINE && size < 4096 {
        at + disk::EXTENDED_SIZE as usize
    } else {
        u32::from_le_bytes(boot[at + disk::I_U..at + disk::I_U + 4].try_into().unwrap()) as usize
            * 4096
    };
    let b = &boot[block..block + size];
    let count = usize::from(get_u16(b, dirent::NAMEOFF)) / dirent::SIZE;
    for i in 0..count {
        let start = usize::from(get_u16(b, i * dirent::SIZE + dirent::NAMEOFF));
        let end = if i + 1 < count {
            usize::from(get_u16(b, (i + 1) * dirent::SIZE + dirent::NAMEOFF))
        } else {
            size
        };
        let n = &b[start..end];
        let n = &n[..n.iter().position(|&c| c == 0).unwrap_or(n.len())];
        if n == name {
            return block + i * dirent::SIZE;
        }
    }
    panic!("no dirent {}", String::from_utf8_lossy(name));
}

/// Byte offset of the chunk record of `digest`.
fn chunk_record_at(boot: &[u8], img: &Image, digest: &ChunkDigest) -> usize {
    let table = u64::from_le_bytes(
        boot[ext_sb::OFFSET as usize + ext_sb::CHUNK_TABLE_OFFSET..][..8]
            .try_into()
            .unwrap(),
    );
    let i = (0..img.chunk_record_count())
        .find(|&i| img.chunk_record(i).unwrap().digest == *digest)
        .expect("a chunk record");
    (table + i * chunk_record::SIZE) as usize
}

#[test]
fn the_crafted_image_reads_back() {
    let c = crafted();
    let ops = ops_over(c.boot.clone(), reader(&c));
    let file = ops.lookup(ROOT_INO, b"file").unwrap().attr;
    assert_eq!(file.size, c.file.len() as u64);
    assert_eq!(read(&ops, file.ino, 0, 1 << 20).unwrap(), c.file);
    assert_eq!(
        read(&ops, file.ino, 4000, 200).unwrap(),
        &c.file[4000..4200]
    );
    let other = ops.lookup(ROOT_INO, b"other").unwrap().attr;
    assert_eq!(read(&ops, other.ino, 0, 100).unwrap(), b"other bytes");
    let link = ops.lookup(ROOT_INO, b"link").unwrap().attr;
    assert_eq!(ops.readlink(link.ino).unwrap(), b"file");
}

#[test]
fn times_of_2_63_and_beyond_are_read_as_signed_seconds() {
    let c = crafted();
    let ops = ops_over(c.boot.clone(), reader(&c));
    // `stat` of the mount point: the root's 2^63 is the earliest signed second.
    let (root, _) = ops.getattr(ROOT_INO).unwrap();
    assert_eq!(root.mtime, UNIX_EPOCH - Duration::from_secs(1 << 63));
    // u64::MAX is one second before the epoch; nanoseconds beyond a second are the last one.
    let want = UNIX_EPOCH - Duration::from_secs(1) + Duration::from_nanos(999_999_999);
    let file = ops.lookup(ROOT_INO, b"file").unwrap().attr;
    assert_eq!(file.mtime, want);
    assert_eq!(ops.getattr(file.ino).unwrap().0.mtime, want);
    let mut seen = None;
    ops.readdirplus(ROOT_INO, 0, |e| {
        if e.name == b"file" {
            seen = Some(e.entry.attr);
        }
        true
    })
    .unwrap();
    assert_eq!(seen, Some(file));
    // Owners pass through as stored, even (uid_t)-1.
    assert_eq!((file.uid, file.gid), (u32::MAX, u32::MAX));

    // Every time the 64-bit field can hold, with every nanosecond count: no panic.
    let img = Image::from_bytes(c.boot.clone()).unwrap();
    let at = inode_at(&c.boot, &img, nid(&img, "file"));
    for secs in [1u64 << 63, (1 << 63) - 1, (1 << 63) + 1, u64::MAX - 1, 0] {
        for nsec in [0, 999_999_999, 1_000_000_000, u32::MAX] {
            let mut b = c.boot.clone();
            put_u64(&mut b, at + disk::extended::I_MTIME, secs);
            put_u32(&mut b, at + disk::extended::I_MTIME_NSEC, nsec);
            let ops = ops_over(b, reader(&c));
            let a = ops.lookup(ROOT_INO, b"file").unwrap().attr;
            assert_eq!(ops.getattr(a.ino).unwrap().0, a);
        }
    }
}

#[test]
fn sizes_and_link_counts_are_saturated() {
    let c = crafted();
    let img = Image::from_bytes(c.boot.clone()).unwrap();
    let at = inode_at(&c.boot, &img, nid(&img, "file"));
    for size in [1u64 << 63, u64::MAX, MAX_FILE_SIZE + 1] {
        let mut b = c.boot.clone();
        put_u64(&mut b, at + disk::extended::I_SIZE, size);
        put_u32(&mut b, at + disk::extended::I_NLINK, 0);
        let r = reader(&c);
        let ops = ops_over(b, r.clone());
        let a = ops.lookup(ROOT_INO, b"file").unwrap().attr;
        // Never a negative loff_t in the kernel.
        assert_eq!(a.size, MAX_FILE_SIZE, "size {size}");
        assert_eq!(a.blocks, MAX_FILE_SIZE.div_ceil(512));
        assert_eq!(a.nlink, 1);
        assert_eq!(ops.getattr(a.ino).unwrap().0, a);
        // The chunk list such a size needs is not in the bootstrap: reads fail, nothing is
        // fetched.
        for offset in [0, 1 << 40] {
            assert_eq!(read(&ops, a.ino, offset, 4096), Err(Errno::EIO));
        }
        // Past the size: nothing to read (or the same EIO), never a panic.
        let _ = read(&ops, a.ino, u64::MAX - 1, u32::MAX);
        assert!(r.asked.lock().unwrap().is_empty());
    }
}

#[test]
fn blob_sizes_that_overflow_a_sum_saturate_statfs() {
    let c = crafted();
    let img = Image::from_bytes(c.boot.clone()).unwrap();
    assert_eq!(img.blobs().len(), 2);
    let table = img.superblock().blob_table_offset as usize;
    let mut b = c.boot.clone();
    for i in 0..2 {
        let e = table + i * blob_entry::SIZE as usize;
        put_u64(&mut b, e + blob_entry::UNCOMPRESSED_SIZE, u64::MAX);
        put_u64(&mut b, e + blob_entry::COMPRESSED_SIZE, u64::MAX);
    }
    let ops = ops_over(b, reader(&c));
    let s = ops.statfs().unwrap();
    assert_eq!(s.blocks, u64::MAX.div_ceil(4096));
    assert_eq!((s.bfree, s.bavail, s.ffree), (0, 0, 0));
}

#[test]
fn dirent_nids_without_an_inode_number_fail_the_listing() {
    let c = crafted();
    let img = Image::from_bytes(c.boot.clone()).unwrap();
    let at = root_dirent_at(&c.boot, &img, b"link");
    for bad in [u64::MAX, u64::MAX - 1] {
        let mut b = c.boot.clone();
        put_u64(&mut b, at + dirent::NID, bad);
        let ops = ops_over(b, reader(&c));
        let mut before = Vec::new();
        assert_eq!(
            ops.readdir(ROOT_INO, 0, |e| {
                before.push(e.name);
                true
            }),
            Err(Errno::EIO),
            "nid {bad}"
        );
        // The entries before it were listed (`.`, `..`, `dir`, `file`).
        assert!(before.contains(&b"file".to_vec()), "{before:?}");
        assert_eq!(ops.readdirplus(ROOT_INO, 0, |_| true), Err(Errno::EIO));
        assert_eq!(ops.lookup(ROOT_INO, b"link"), Err(Errno::EIO));
        // The other names still work.
        assert!(ops.lookup(ROOT_INO, b"other").is_ok());
    }
    // u64::MAX - 2 has an inode number (u64::MAX) but no inode: listed by readdir (which reads
    // no inode when the dirent has a type), EIO for everything that reads the inode.
    let mut b = c.boot.clone();
    put_u64(&mut b, at + dirent::NID, u64::MAX - 2);
    let ops = ops_over(b, reader(&c));
    let mut inos = Vec::new();
    ops.readdir(ROOT_INO, 0, |e| {
        inos.push((e.name, e.ino));
        true
    })
    .unwrap();
    assert!(inos.contains(&(b"link".to_vec(), u64::MAX)), "{inos:?}");
    assert_eq!(ops.getattr(u64::MAX), Err(Errno::EIO));
    assert_eq!(ops.readlink(u64::MAX), Err(Errno::EIO));
    assert_eq!(ops.listxattr(u64::MAX, 0), Err(Errno::EIO));
    assert_eq!(read(&ops, u64::MAX, 0, 10), Err(Errno::EIO));
    assert_eq!(ops.lookup(ROOT_INO, b"link"), Err(Errno::EIO));
    assert_eq!(ops.readdirplus(ROOT_INO, 0, |_| true), Err(Errno::EIO));
}

#[test]
fn a_directory_of_u64_max_bytes_lists_at_any_offset_without_overflow() {
    let c = crafted();
    let img = Image::from_bytes(c.boot.clone()).unwrap();
    let at = inode_at(&c.boot, &img, nid(&img, "dir"));
    let mut b = c.boot.clone();
    put_u16(&mut b, at, disk::extended_format(disk::FLAT_PLAIN));
    put_u64(&mut b, at + disk::extended::I_SIZE, u64::MAX);
    put_u32(&mut b, at + disk::I_U, 16);
    let ops = ops_over(b, reader(&c));
    let dir = ops.lookup(ROOT_INO, b"dir").unwrap().attr;
    assert_eq!(dir.kind, FileType::Dir);
    assert_eq!(dir.size, MAX_FILE_SIZE);
    // Block 2^52 - 2 would start at (16 + 2^52 - 2) * 4096, beyond u64 (an lseek on the
    // directory hands the kernel any offset).
    let far = ((1u64 << 52) - 2) * 1024;
    assert_eq!(ops.readdir(dir.ino, far, |_| true), Err(Errno::EIO));
    assert_eq!(ops.readdirplus(dir.ino, far, |_| true), Err(Errno::EIO));
    for offset in [0, 1, far + 1023, far + 2048, u64::MAX] {
        let _ = ops.readdir(dir.ino, offset, |_| true);
        let _ = ops.readdirplus(dir.ino, offset, |_| true);
    }
    let _ = ops.lookup(dir.ino, b"leaf");
}

#[test]
fn chunks_claiming_more_than_the_worst_case_are_never_fetched() {
    let c = crafted();
    let img = Image::from_bytes(c.boot.clone()).unwrap();
    let file = img.inode(nid(&img, "file")).unwrap();
    let second = img.chunks(&file, u64::from(CS), 1).unwrap().remove(0);
    assert_eq!(second.chunk.compression, Compression::Zstd);
    let at = chunk_record_at(&c.boot, &img, &second.chunk.digest);
    for stored in [u32::MAX, 1 << 30, CS + 4096, 0] {
        let mut b = c.boot.clone();
        put_u32(&mut b, at + chunk_record::COMPRESSED_SIZE, stored);
        let r = reader(&c);
        let ops = ops_over(b, r.clone());
        let ino = ops.lookup(ROOT_INO, b"file").unwrap().attr.ino;
        // The first chunk reads; any read touching the second fails before a fetch.
        assert_eq!(read(&ops, ino, 0, 100).unwrap(), &c.file[..100]);
        assert_eq!(read(&ops, ino, 0, 1 << 20), Err(Errno::EIO), "{stored}");
        assert_eq!(
            read(&ops, ino, u64::from(CS) + 5, 10),
            Err(Errno::EIO),
            "{stored}"
        );
        assert!(
            !r.asked.lock().unwrap().contains(&second.chunk.digest),
            "stored size {stored}: the chunk was asked for"
        );
    }
}

#[test]
fn a_reader_answering_the_wrong_length_fails_the_read() {
    let c = crafted();
    for skew in [1i8, -1] {
        let r = Arc::new(MemReader {
            chunks: c.chunks.clone(),
            skew,
            ..MemReader::default()
        });
        let ops = ops_over(c.boot.clone(), r);
        let ino = ops.lookup(ROOT_INO, b"file").unwrap().attr.ino;
        assert_eq!(read(&ops, ino, 0, 1 << 20), Err(Errno::EIO), "skew {skew}");
        assert_eq!(read(&ops, ino, 10, 10), Err(Errno::EIO), "skew {skew}");
    }
}
