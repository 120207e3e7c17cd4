//! Any bytes as a bootstrap: opening must fail cleanly or give an image on which every
//! operation a mount or `dfagent check` performs returns (an error is fine, a panic, a hang or a
//! runaway allocation is not).
#![no_main]

use std::collections::HashSet;

use dfagent_rafs::{FileType, Image};
use libfuzzer_sys::fuzz_target;

/// Names looked up in the root (present in the fixtures, and some that cannot be).
const NAMES: [&[u8]; 8] = [
    b"hello.txt",
    b"multi-chunk.bin",
    b"many",
    b"zzzz",
    b".",
    b"..",
    b"",
    b"a/b",
];

/// readdir offsets: the start, entries inside the first block, block boundaries, nonsense.
const OFFSETS: [u64; 8] = [0, 1, 2, 7, 1023, 1024, 1025, u64::MAX];

fuzz_target!(|data: &[u8]| {
    let Ok(img) = Image::from_bytes(data.to_vec()) else {
        return;
    };
    let root = img.root();
    let _ = img.inode(root);
    let _ = img.prefetch_nids();
    for name in NAMES {
        if let Ok(Some(e)) = img.lookup(root, name) {
            let _ = img.inode(e.nid);
            let _ = img.readdir(e.nid, 0, |_| true);
        }
    }
    for offset in OFFSETS {
        let mut left = 16;
        let _ = img.readdir(root, offset, |e| {
            let _ = img.lookup(root, &e.name);
            left -= 1;
            left > 0
        });
    }
    for i in 0..img.chunk_record_count().min(4096) {
        if let Ok(rec) = img.chunk_record(i) {
            let _ = img.chunk_ref(&rec);
        }
    }
    let _ = img.chunk_record(img.chunk_record_count());

    // Each inode is examined once, however many directory entries name it: the walk itself
    // visits every entry, but a small input could otherwise repeat the per-file work
    // thousands of times.
    let mut seen = HashSet::new();
    let _ = img.walk(|e| {
        let inode = &e.inode;
        if !seen.insert(inode.nid) {
            return Ok(());
        }
        let _ = img.xattrs(inode.nid);
        let _ = img.getxattr(inode.nid, b"user.dir");
        let _ = img.readlink(inode.nid);
        let _ = img.chunks(inode, 0, inode.size);
        let _ = img.chunks(inode, inode.size / 2, 1);
        let _ = img.chunks(inode, inode.size.saturating_sub(1), u64::MAX);
        let _ = img.chunk_count(inode);
        if inode.file_type == FileType::Dir {
            let mut names = Vec::new();
            let _ = img.readdir(inode.nid, 0, |d| {
                names.push(d.name);
                names.len() < 4
            });
            for n in names {
                let _ = img.lookup(inode.nid, &n);
            }
        }
        Ok(())
    });
});
