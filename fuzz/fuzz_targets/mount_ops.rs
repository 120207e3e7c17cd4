//! Any bytes as a mounted image, without a kernel: every operation of the mount layer
//! (`dfagent_nydusfs::NydusOps`: statfs, getattr, lookup, readdir and readdirplus (paged),
//! opendir, open, readlink, getxattr, listxattr, access, release, write, read with read-ahead)
//! over every inode of an arbitrary bootstrap — each one reached from the root, and every inode
//! slot of the metadata area by number. File data is read twice: through a resolver over a tier
//! that serves the chunks' stored bytes from the input (decoded and verified as on a real
//! mount), and through a reader that hands the mount layer raw slices of the input, of any
//! length, as if a reader lied. An error is fine; a panic, a hang or a runaway allocation is not.
//!
//! Input: a little-endian u32 `n`, then `n` bytes of bootstrap, then the bytes every blob is
//! read from (`./seed.sh` makes seeds of that shape from the fixtures).
#![no_main]

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use dfagent_core::{BoxFuture, ChunkReader, ChunkRef, ChunkTier, ReadError, Slot};
use dfagent_nydusfs::{FsConfig, NydusOps, XattrReply, ROOT_INO};
use dfagent_rafs::{FileType, Image};
use dfagent_resolver::{Resolver, ResolverConfig};
use libfuzzer_sys::fuzz_target;

/// Most nodes visited from the root, and most inode slots tried by number.
const MAX_NODES: usize = 256;
const MAX_SLOTS: u64 = 256;
/// Most entries taken from one readdirplus listing, most readdir calls per directory, most
/// lookups per directory.
const MAX_ENTRIES: usize = 1024;
const PAGES: usize = 8;
const LOOKUPS: usize = 8;
/// Most regular files read.
const MAX_FILES: usize = 16;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Serves every blob's stored chunk bytes from the same input bytes (a chunk beyond them is
/// missing): the resolver decodes and verifies what it gets, as from any tier.
struct InputTier(Bytes);

impl ChunkTier for InputTier {
    fn name(&self) -> &str {
        "fuzz-input"
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for slot in slots.iter_mut() {
                let c = *slot.chunk();
                let start = c.compressed_offset;
                let Some(end) = start.checked_add(u64::from(c.compressed_size)) else {
                    continue;
                };
                if end <= self.0.len() as u64 {
                    slot.found(self.0.slice(start as usize..end as usize), c.compression);
                }
            }
        })
    }
}

/// A reader that lies: the input bytes at the chunk's offset, as many as are there (up to the
/// chunk's size), unverified. The mount layer must not trust their length either.
struct RawReader(Bytes);

impl ChunkReader for RawReader {
    fn read_chunk<'a>(&'a self, chunk: &'a ChunkRef) -> BoxFuture<'a, Result<Bytes, ReadError>> {
        Box::pin(async move {
            let len = self.0.len() as u64;
            let start = chunk.compressed_offset.min(len);
            let end = start
                .saturating_add(u64::from(chunk.uncompressed_size))
                .min(len);
            if start == len && chunk.uncompressed_size > 0 {
                return Err(ReadError::NotFound {
                    digest: chunk.digest,
                    blob: chunk.blob,
                    offset: chunk.compressed_offset,
                });
            }
            Ok(self.0.slice(start as usize..end as usize))
        })
    }
}

/// Every metadata operation on inode `ino` (whatever it is), results ignored but checked for
/// consistency where the answer must be.
fn metadata_ops(ops: &NydusOps, ino: u64) {
    if let Ok((attr, _)) = ops.getattr(ino) {
        assert_eq!(attr.ino, ino);
        assert!(attr.size <= dfagent_nydusfs::MAX_FILE_SIZE);
        assert!(attr.nlink >= 1);
    }
    let _ = ops.readlink(ino);
    let _ = ops.open(ino, libc::O_RDONLY);
    let _ = ops.open(ino, libc::O_RDWR);
    let _ = ops.opendir(ino);
    let _ = ops.release(ino);
    let _ = ops.releasedir(ino);
    let _ = ops.write(ino);
    for (mask, uid, gid) in [
        (libc::R_OK, 0, 0),
        (libc::X_OK, 0, 0),
        (libc::R_OK | libc::X_OK, 1000, 1000),
        (libc::W_OK, 0, 0),
    ] {
        let _ = ops.access(ino, mask, uid, gid);
    }
    if let Ok(XattrReply::Size(n)) = ops.listxattr(ino, 0) {
        if let Ok(XattrReply::Data(names)) = ops.listxattr(ino, n.max(1)) {
            assert_eq!(names.len(), n as usize);
            for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()).take(16) {
                if let Ok(XattrReply::Size(v)) = ops.getxattr(ino, name, 0) {
                    let _ = ops.getxattr(ino, name, v.max(1));
                    let _ = ops.getxattr(ino, name, v.saturating_sub(1).max(1));
                }
            }
        }
        let _ = ops.listxattr(ino, n.saturating_sub(1).max(1));
    }
    let _ = ops.getxattr(ino, b"user.dir", 0);
    let _ = ops.getxattr(ino, b"security.capability", 4096);
}

/// Reads of file `ino` (`size` bytes as getattr says): the start, a sequential run (read-ahead),
/// the middle, the end, past the end, the top of the offset range.
fn reads(ops: &NydusOps, ino: u64, size: u64) {
    let rt = runtime();
    // A read that succeeds returns exactly the bytes asked for, cut at the end of the file.
    let read = |at: u64, len: u32| {
        let r = rt.block_on(ops.read(ino, at, len));
        if let Ok(buf) = &r {
            let want = size.saturating_sub(at).min(u64::from(len));
            assert_eq!(buf.len() as u64, want, "read of {len} at {at} of {size}");
        }
        r
    };
    let mut offset = 0u64;
    for _ in 0..3 {
        match read(offset, 64 << 10) {
            Ok(buf) if !buf.is_empty() => offset += buf.len() as u64,
            _ => break,
        }
    }
    for (at, len) in [
        (size / 2, 4096u32),
        (size.saturating_sub(1), 1),
        (size, 10),
        (size.saturating_add(4096), 4096),
        (u64::MAX - 1, 4096),
        (0, 0),
    ] {
        let _ = read(at, len);
    }
    // A read mapped but dropped before its chunks are fetched.
    if let Ok(mut p) = ops.start_read(ino, 0, 4096) {
        let _ = p.take_readahead();
        let _ = p.chunks().len();
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let rest = &data[4..];
    let (boot, blob) = rest.split_at(n.min(rest.len()));
    let Ok(image) = Image::from_bytes(boot.to_vec()) else {
        return;
    };
    let image = Arc::new(image);
    let blob = Bytes::copy_from_slice(blob);
    let config = FsConfig {
        readahead: 256 << 10,
        ..FsConfig::default()
    };
    let resolver = Resolver::standalone(
        vec![Arc::new(InputTier(blob.clone()))],
        ResolverConfig {
            cache_bytes: 8 << 20,
            ..ResolverConfig::default()
        },
    );
    let ops = NydusOps::new(image.clone(), Arc::new(resolver), config.clone());
    let raw = NydusOps::new(image.clone(), Arc::new(RawReader(blob)), config);

    let _ = ops.statfs();

    // Every node reachable from the root, breadth first, found by readdirplus (which lists a
    // directory with its nodes' attributes); each directory also listed by readdir a few
    // entries a call, continuing from the last offset as the kernel does with a small buffer,
    // and a sample of its names looked up (a lookup is a binary search over the blocks, so all
    // of them would make big directories dominate the run time).
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([ROOT_INO]);
    seen.insert(ROOT_INO);
    let mut files = 0;
    while let Some(dir) = queue.pop_front() {
        metadata_ops(&ops, dir);
        let mut offset = 0;
        for _ in 0..PAGES {
            let mut page = Vec::new();
            let r = ops.readdir(dir, offset, |e| {
                page.push(e);
                page.len() < 5
            });
            if r.is_err() || page.is_empty() {
                break;
            }
            for e in page {
                // Offsets move forward, or the kernel would list forever.
                assert!(e.offset > offset);
                offset = e.offset;
            }
        }
        let mut plus = Vec::new();
        let _ = ops.readdirplus(dir, 0, |e| {
            plus.push(e);
            plus.len() < MAX_ENTRIES
        });
        // Resuming in the middle of a big directory (a later block).
        if let Some(mid) = plus.get(plus.len() / 2) {
            let _ = ops.readdir(dir, mid.offset, |e| e.offset < mid.offset + 8);
        }
        let step = plus.len().div_ceil(LOOKUPS).max(1);
        for (i, e) in plus.iter().enumerate() {
            let attr = e.entry.attr;
            assert!(attr.size <= dfagent_nydusfs::MAX_FILE_SIZE);
            if e.name == b"." || e.name == b".." {
                continue;
            }
            // (A crafted directory may hold a name twice: a lookup finds one of them.)
            if i % step == 0 {
                let _ = ops.lookup(dir, &e.name);
            }
            if seen.len() >= MAX_NODES || !seen.insert(attr.ino) {
                continue;
            }
            match attr.kind {
                FileType::Dir => queue.push_back(attr.ino),
                FileType::File if files < MAX_FILES => {
                    files += 1;
                    metadata_ops(&ops, attr.ino);
                    reads(&ops, attr.ino, attr.size);
                    reads(&raw, attr.ino, attr.size);
                }
                _ => metadata_ops(&ops, attr.ino),
            }
        }
    }
    // Names that cannot be there.
    for name in [&b""[..], b"/", b"a/b", &[0xff; 300]] {
        let _ = ops.lookup(ROOT_INO, name);
    }

    // Every inode slot by number, reachable or not (inode number = nid + 2), and numbers no
    // node can have.
    let sb = image.superblock();
    let slots = image.len().saturating_sub(sb.meta_offset) / 32;
    let numbers = (0..slots.min(MAX_SLOTS)).map(|nid| nid + 2).chain([
        0,
        ROOT_INO,
        u64::MAX,
        u64::MAX - 1,
        image.root().saturating_add(2),
    ]);
    for ino in numbers {
        let _ = ops.getattr(ino);
        let _ = ops.readlink(ino);
        let _ = ops.listxattr(ino, 0);
        let _ = ops.opendir(ino);
        let _ = ops.readdir(ino, 0, |_| false);
        let _ = ops.readdirplus(ino, 0, |_| false);
        let _ = ops.readdir(ino, u64::MAX, |_| true);
        if let Ok(p) = ops.start_read(ino, 0, 4096) {
            let _ = p.chunks().len();
        }
    }
});
