//! The plain operations ([`NydusOps`]) without a kernel: every node of every fixture image is
//! reached with readdir/readdirplus/lookup/getattr, checked against the fixture's listing
//! (types, modes, owners, times, sizes, link counts, device numbers, symlink targets, xattrs),
//! and every regular file is read through a resolver over the image's blob directory and
//! compared with the listing's sha256. Then the errors, the access checks, read-ahead, a chunk
//! that cannot be read, and the counters.

pub mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use common::{file_chunk_refs, fixture_reader, open_image};
use dfagent_core::{BoxFuture, ChunkDigest, ChunkReader, ChunkRef, ReadError};
use dfagent_nydusfs::{
    Attr, DirEntry, DirEntryPlus, Errno, FsConfig, NydusOps, Opened, XattrReply, ROOT_INO,
};
use dfagent_rafs::FileType;
use dfagent_test_support::fixtures::{expected_file, expected_lines, sha256_hex, ALL_IMAGES};

const HOUR: Duration = Duration::from_secs(3600);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// Operations over fixture `name`, reading through a resolver over its blob directory.
fn ops_for(name: &str, config: FsConfig) -> NydusOps {
    NydusOps::new(open_image(name), fixture_reader(name), config)
}

/// Every entry of directory `ino`, via readdir.
fn list(ops: &NydusOps, ino: u64) -> Vec<DirEntry> {
    let mut out = Vec::new();
    ops.readdir(ino, 0, |e| {
        out.push(e);
        true
    })
    .unwrap_or_else(|e| panic!("readdir {ino}: {e}"));
    out
}

/// Every entry of directory `ino`, via readdir, taking `page` entries per call and continuing
/// from the last entry's offset, as the kernel does with a small buffer.
fn list_paged(ops: &NydusOps, ino: u64, page: usize) -> Vec<DirEntry> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let mut got = Vec::new();
        ops.readdir(ino, offset, |e| {
            got.push(e);
            got.len() < page
        })
        .unwrap_or_else(|e| panic!("readdir {ino} at {offset}: {e}"));
        let Some(last) = got.last() else {
            return out;
        };
        offset = last.offset;
        out.extend(got);
    }
}

/// Every entry of directory `ino`, via readdirplus.
fn list_plus(ops: &NydusOps, ino: u64) -> Vec<DirEntryPlus> {
    let mut out = Vec::new();
    ops.readdirplus(ino, 0, |e| {
        out.push(e);
        true
    })
    .unwrap_or_else(|e| panic!("readdirplus {ino}: {e}"));
    out
}

/// A node reached by the walk.
struct Node {
    attr: Attr,
}

/// Walk the tree from the root with opendir/readdir/readdirplus/lookup/getattr, checking that
/// they agree; every node by path (the root as `.`).
fn walk(ops: &NydusOps) -> BTreeMap<String, Node> {
    let (root, ttl) = ops.getattr(ROOT_INO).expect("getattr of the root");
    assert_eq!(
        ttl,
        Duration::from_secs(1),
        "the root's attributes live 1 s"
    );
    assert_eq!(root.ino, ROOT_INO);
    assert_eq!(root.kind, FileType::Dir);
    let mut nodes = BTreeMap::new();
    nodes.insert(".".to_owned(), Node { attr: root });
    let mut dirs = vec![(String::new(), ROOT_INO, ROOT_INO)];
    while let Some((dir, ino, parent)) = dirs.pop() {
        assert_eq!(
            ops.opendir(ino),
            Ok(Opened {
                keep_cache: true,
                cache_dir: true
            }),
            "opendir {dir}"
        );
        assert_eq!(ops.open(ino, libc::O_RDONLY), Err(Errno::EISDIR), "{dir}");
        let entries = list(ops, ino);
        let plus = list_plus(ops, ino);
        assert_eq!(list_paged(ops, ino, 1), entries, "{dir}: paged readdir");
        assert_eq!(list_paged(ops, ino, 7), entries, "{dir}: paged readdir");
        assert_eq!(entries.len(), plus.len(), "{dir}: readdir vs readdirplus");
        let mut last_offset = 0;
        for (e, p) in entries.iter().zip(&plus) {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            assert_eq!(e.name, p.name, "{dir}: readdir vs readdirplus");
            assert_eq!(e.offset, p.offset, "{dir}/{name}: offsets");
            assert_eq!(e.ino, p.entry.attr.ino, "{dir}/{name}: inode numbers");
            assert_eq!(e.kind, p.entry.attr.kind, "{dir}/{name}: kinds");
            assert_eq!(p.entry.ttl, HOUR, "{dir}/{name}: readdirplus TTL");
            assert!(e.offset > last_offset, "{dir}: offsets not increasing");
            last_offset = e.offset;
            // Resuming right after an entry lists what follows it.
            let mut next = None;
            ops.readdir(ino, e.offset, |n| {
                next = Some(n);
                false
            })
            .unwrap();
            let i = entries.iter().position(|x| x == e).unwrap();
            assert_eq!(next.as_ref(), entries.get(i + 1), "{dir}/{name}: resume");
            match e.name.as_slice() {
                b"." => {
                    assert_eq!(e.ino, ino, "{dir}/.");
                    continue;
                }
                b".." => {
                    assert_eq!(e.ino, parent, "{dir}/..");
                    continue;
                }
                _ => {}
            }
            let entry = ops
                .lookup(ino, &e.name)
                .unwrap_or_else(|err| panic!("lookup {dir}/{name}: {err}"));
            assert_eq!(entry.ttl, HOUR);
            assert_eq!(
                entry.attr, p.entry.attr,
                "{dir}/{name}: lookup vs readdirplus"
            );
            let (attr, ttl) = ops.getattr(e.ino).unwrap();
            assert_eq!(attr, entry.attr, "{dir}/{name}: getattr vs lookup");
            assert_eq!(ttl, HOUR);
            assert!(attr.ino >= 2 && attr.ino != ROOT_INO);
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if attr.kind == FileType::Dir {
                dirs.push((path.clone(), e.ino, ino));
            }
            assert!(
                nodes.insert(path.clone(), Node { attr }).is_none(),
                "{path} twice"
            );
        }
    }
    nodes
}

/// `user.*` xattrs of `ino` by name, through listxattr and getxattr (with the size protocol).
fn user_xattrs(ops: &NydusOps, ino: u64, path: &str) -> BTreeMap<String, String> {
    let XattrReply::Size(len) = ops.listxattr(ino, 0).unwrap() else {
        panic!("{path}: listxattr size query answered with data");
    };
    let names = match ops.listxattr(ino, len.max(1)).unwrap() {
        XattrReply::Data(d) => d,
        XattrReply::Size(_) => panic!("{path}: listxattr answered a size"),
    };
    assert_eq!(names.len(), len as usize, "{path}: listxattr size");
    if len > 0 {
        assert_eq!(ops.listxattr(ino, len - 1), Err(Errno::ERANGE), "{path}");
    }
    let mut out = BTreeMap::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let shown = String::from_utf8_lossy(name).into_owned();
        let XattrReply::Size(vlen) = ops.getxattr(ino, name, 0).unwrap() else {
            panic!("{path} {shown}: size query answered with data");
        };
        let value = match ops.getxattr(ino, name, vlen.max(1)).unwrap() {
            XattrReply::Data(d) => d,
            XattrReply::Size(_) => panic!("{path} {shown}: answered a size"),
        };
        assert_eq!(value.len(), vlen as usize, "{path} {shown}");
        if vlen > 0 {
            assert_eq!(
                ops.getxattr(ino, name, vlen - 1),
                Err(Errno::ERANGE),
                "{path} {shown}"
            );
        }
        if shown.starts_with("user.") {
            out.insert(shown, hex::encode(value));
        }
    }
    assert_eq!(
        ops.getxattr(ino, b"user.no-such-xattr", 0),
        Err(Errno::ENODATA),
        "{path}"
    );
    out
}

/// All of regular file `ino` through `read`, `chunk` bytes per request until a short answer.
fn read_all(rt: &tokio::runtime::Runtime, ops: &NydusOps, ino: u64, chunk: u32) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let got = rt
            .block_on(ops.read(ino, data.len() as u64, chunk))
            .unwrap_or_else(|e| panic!("read of {ino} at {}: {e}", data.len()));
        let short = got.len() < chunk as usize;
        data.extend_from_slice(&got);
        if short {
            return data;
        }
    }
}

fn kind_of(t: &str) -> FileType {
    match t {
        "dir" => FileType::Dir,
        "file" => FileType::File,
        "symlink" => FileType::Symlink,
        "fifo" => FileType::Fifo,
        "chardev" => FileType::CharDev,
        "blockdev" => FileType::BlockDev,
        other => panic!("listing type {other}"),
    }
}

/// Walk fixture `name` with every metadata operation, read every file, and compare it all
/// with the listing.
fn every_node_matches_the_listing(name: &str) {
    let rt = runtime();
    let ops = ops_for(name, FsConfig::default());
    let nodes = walk(&ops);
    let lines: Vec<serde_json::Value> = expected_lines(name)
        .iter()
        .map(|l| serde_json::from_str(l).expect("listing line is JSON"))
        .collect();
    assert_eq!(nodes.len(), lines.len(), "{name}: number of nodes");

    let mut files_read = 0;
    let mut contents: HashMap<u64, String> = HashMap::new();
    for want in &lines {
        let path = want["path"].as_str().unwrap();
        let node = nodes
            .get(path)
            .unwrap_or_else(|| panic!("{name}: {path} not reached by the walk"));
        let a = &node.attr;
        let kind = kind_of(want["type"].as_str().unwrap());
        assert_eq!(a.kind, kind, "{name}/{path}: type");
        assert_eq!(u64::from(a.uid), want["uid"].as_u64().unwrap(), "{path}");
        assert_eq!(u64::from(a.gid), want["gid"].as_u64().unwrap(), "{path}");
        if let Some(mode) = want["mode"].as_str() {
            let mode = u16::from_str_radix(mode.trim_start_matches("0o"), 8).unwrap();
            assert_eq!(a.perm, mode, "{name}/{path}: mode");
        }
        if path != "." {
            let secs = a.mtime.duration_since(UNIX_EPOCH).unwrap().as_secs();
            assert_eq!(
                secs,
                want["mtime"].as_u64().unwrap(),
                "{name}/{path}: mtime"
            );
        }
        assert!(a.nlink >= 1);
        assert_eq!(a.blksize, 4096);
        assert_eq!(a.blocks, a.size.div_ceil(512), "{path}");
        if let Some(rdev) = want["rdev"].as_array() {
            let major = (a.rdev >> 8) & 0xfff;
            let minor = (a.rdev & 0xff) | ((a.rdev >> 12) & 0xfff00);
            assert_eq!(
                [u64::from(major), u64::from(minor)],
                [rdev[0].as_u64().unwrap(), rdev[1].as_u64().unwrap()],
                "{name}/{path}: rdev"
            );
        }
        let want_xattrs: BTreeMap<String, String> = want["xattrs"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            user_xattrs(&ops, a.ino, path),
            want_xattrs,
            "{name}/{path}: xattrs"
        );

        match kind {
            FileType::Symlink => {
                let target = ops.readlink(a.ino).unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&target),
                    want["target"].as_str().unwrap(),
                    "{name}/{path}: target"
                );
                assert_eq!(a.size, target.len() as u64);
                assert_eq!(ops.open(a.ino, libc::O_RDONLY).map(|_| ()), Ok(()));
            }
            FileType::File => {
                assert_eq!(
                    a.size,
                    want["size"].as_u64().unwrap(),
                    "{name}/{path}: size"
                );
                assert_eq!(
                    u64::from(a.nlink),
                    want["nlink"].as_u64().unwrap(),
                    "{name}/{path}: nlink"
                );
                assert_eq!(ops.readlink(a.ino), Err(Errno::EINVAL), "{path}");
                assert_eq!(
                    ops.open(a.ino, libc::O_RDONLY),
                    Ok(Opened {
                        keep_cache: true,
                        cache_dir: false
                    })
                );
                assert_eq!(ops.opendir(a.ino), Err(Errno::ENOTDIR), "{path}");
                assert_eq!(ops.lookup(a.ino, b"x"), Err(Errno::ENOTDIR), "{path}");
                let sha = want["sha256"].as_str().unwrap();
                // Hard links share an inode: read each inode once.
                if let Some(seen) = contents.get(&a.ino) {
                    assert_eq!(seen, sha, "{name}/{path}: hard link with other bytes");
                    continue;
                }
                // 128 KiB requests, like the kernel's; they look sequential, so read-ahead
                // runs too.
                let data = read_all(&rt, &ops, a.ino, 128 << 10);
                assert_eq!(data.len() as u64, a.size, "{name}/{path}: bytes read");
                assert_eq!(sha256_hex(&data), sha, "{name}/{path}: sha256");
                // A request inside the file, at an odd offset, and one past its end.
                if a.size > 10 {
                    let (from, len) = (a.size / 3, 70_001u32);
                    let got = rt.block_on(ops.read(a.ino, from, len)).unwrap();
                    let to = (from + u64::from(len)).min(a.size);
                    assert_eq!(got, data[from as usize..to as usize], "{name}/{path}");
                }
                assert_eq!(rt.block_on(ops.read(a.ino, a.size, 4096)), Ok(Vec::new()));
                contents.insert(a.ino, sha.to_owned());
                files_read += 1;
            }
            FileType::Dir => {
                assert_eq!(ops.readlink(a.ino), Err(Errno::EINVAL), "{path}");
                assert_eq!(
                    rt.block_on(ops.read(a.ino, 0, 4096)),
                    Err(Errno::EINVAL),
                    "{path}"
                );
            }
            _ => {
                assert_eq!(ops.readdir(a.ino, 0, |_| true), Err(Errno::ENOTDIR));
                assert_eq!(ops.readdirplus(a.ino, 0, |_| true), Err(Errno::ENOTDIR));
            }
        }
    }
    assert!(files_read > 0, "{name}: no file read");

    let image = ops.image();
    let s = ops.statfs().unwrap();
    assert_eq!(s.files, image.superblock().inodes);
    assert_eq!((s.bsize, s.frsize, s.namelen), (4096, 4096, 255));
    assert_eq!((s.bfree, s.bavail, s.ffree), (0, 0, 0));
    let data: u64 = image.blobs().iter().map(|b| b.uncompressed_size).sum();
    assert!(s.blocks >= data.div_ceil(4096));

    let stats = ops.metrics().snapshot();
    assert_eq!(stats.read_errors, 0);
    assert!(stats.reads > files_read as u64);
    assert!(stats.bytes_served > 0);
}

#[test]
fn every_node_of_every_fixture_matches_its_listing() {
    for name in ALL_IMAGES {
        every_node_matches_the_listing(name);
    }
}

#[test]
fn unknown_inodes_names_and_writes_are_refused() {
    let rt = runtime();
    let ops = ops_for("v6-zstd-blake3", FsConfig::default());
    let root_nid = ops.image().root();
    // 0 is no inode; the root's nid + 2 would alias the root; far past the image is garbage.
    for ino in [0, root_nid + 2] {
        assert_eq!(ops.getattr(ino), Err(Errno::ENOENT), "ino {ino}");
        assert_eq!(ops.lookup(ino, b"hello.txt"), Err(Errno::ENOENT));
        assert_eq!(ops.readdir(ino, 0, |_| true), Err(Errno::ENOENT));
        assert_eq!(ops.readlink(ino), Err(Errno::ENOENT));
        assert_eq!(ops.listxattr(ino, 0), Err(Errno::ENOENT));
        assert_eq!(rt.block_on(ops.read(ino, 0, 10)), Err(Errno::ENOENT));
    }
    assert!(ops.getattr(1 << 40).is_err(), "an inode far past the image");
    assert_eq!(ops.lookup(ROOT_INO, b"no-such-name"), Err(Errno::ENOENT));
    assert_eq!(ops.lookup(ROOT_INO, b""), Err(Errno::ENOENT));

    let hello = ops.lookup(ROOT_INO, b"hello.txt").unwrap().attr.ino;
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDWR | libc::O_CREAT] {
        assert_eq!(
            ops.open(hello, flags),
            Err(Errno::EROFS),
            "flags {flags:#o}"
        );
    }
    assert_eq!(ops.write(hello), Err(Errno::EROFS));
    assert_eq!(ops.write(ROOT_INO), Err(Errno::EROFS));
    let whole = rt.block_on(ops.read(hello, 0, 4096)).unwrap();
    let want = expected_file("v6-zstd-blake3", "hello.txt");
    assert_eq!(whole.len() as u64, want.size);
    assert_eq!(sha256_hex(&whole), want.sha256);
    assert_eq!(rt.block_on(ops.read(hello, 7, 3)).unwrap(), whole[7..10]);
    assert_eq!(rt.block_on(ops.read(hello, 1 << 40, 3)).unwrap(), b"");
}

#[test]
fn access_follows_the_mode_bits_and_refuses_writing() {
    let ops = ops_for("v6-zstd-blake3", FsConfig::default());
    let ino = |path: &str| ino_at(&ops, path);
    let (chardev, tool, hello, owned) = (
        ino("chardev"),
        ino("bin/tool"),
        ino("hello.txt"),
        ino("owned/by-1000"),
    );
    let (r, w, x) = (libc::R_OK, libc::W_OK, libc::X_OK);
    // root: reads anything, executes what has an x bit (and directories), writes nothing.
    assert_eq!(ops.access(chardev, r, 0, 0), Ok(()));
    assert_eq!(ops.access(chardev, libc::F_OK, 0, 0), Ok(()));
    assert_eq!(ops.access(hello, x, 0, 0), Err(Errno::EACCES));
    assert_eq!(ops.access(tool, r | x, 0, 0), Ok(()));
    assert_eq!(ops.access(ROOT_INO, x, 0, 0), Ok(()));
    assert_eq!(ops.access(hello, w, 0, 0), Err(Errno::EROFS));
    assert_eq!(ops.access(ROOT_INO, r | w, 0, 0), Err(Errno::EROFS));
    // others: owner bits for the owner, group bits for the group, other bits for the rest.
    assert_eq!(ops.access(chardev, r, 1000, 1000), Err(Errno::EACCES)); // 0600 root:root
    assert_eq!(ops.access(owned, r, 1000, 1000), Ok(())); // 0644 1000:1000
    assert_eq!(ops.access(owned, x, 1000, 1000), Err(Errno::EACCES));
    assert_eq!(ops.access(hello, r, 1000, 0), Ok(())); // group r
    assert_eq!(ops.access(tool, x, 1000, 1000), Ok(())); // 0755: other x
    assert_eq!(ops.access(0, r, 0, 0), Err(Errno::ENOENT));
}

/// Looks up a fixture's inode by path through the ops.
fn ino_at(ops: &NydusOps, path: &str) -> u64 {
    let mut ino = ROOT_INO;
    for part in path.split('/') {
        ino = ops.lookup(ino, part.as_bytes()).unwrap().attr.ino;
    }
    ino
}

#[test]
fn sequential_reads_fetch_ahead_and_random_ones_do_not() {
    // 64 KiB chunks: a 2 MiB file has 33 of them.
    let name = "v6-none-64k";
    let ops = ops_for(name, FsConfig::default());
    let ino = ino_at(&ops, "multi-chunk.bin");
    let size = ops.getattr(ino).unwrap().0.size;

    // A first read that does not start the file looks random: nothing ahead.
    let p = ops.start_read(ino, size / 2, 4096).unwrap();
    assert_eq!(p.chunks().len(), 1);
    assert!(p.readahead_chunks().is_empty());

    // A read from the start is sequential: the chunks after it, to the end of the window or
    // the file, are picked; taking them leaves none behind.
    let ops = ops_for(name, FsConfig::default());
    let mut p = ops.start_read(ino, 0, 128 << 10).unwrap();
    assert_eq!(p.chunks().len(), 2);
    let all = file_chunk_refs(ops.image(), "multi-chunk.bin");
    assert_eq!(p.readahead_chunks(), &all[2..]);
    assert_eq!(
        ops.metrics().snapshot().readahead_chunks,
        (all.len() - 2) as u64
    );
    let ahead = p.take_readahead().expect("a read-ahead future");
    assert!(p.readahead_chunks().is_empty());
    assert!(p.take_readahead().is_none());
    let rt = runtime();
    rt.block_on(ahead);
    let data = rt.block_on(p.finish()).unwrap();
    assert_eq!(data.len(), 128 << 10);

    // Off: nothing ahead, however sequential.
    let ops = ops_for(
        name,
        FsConfig {
            readahead: 0,
            ..FsConfig::default()
        },
    );
    let p = ops.start_read(ino, 0, 128 << 10).unwrap();
    assert!(p.readahead_chunks().is_empty());
    assert_eq!(ops.metrics().snapshot().readahead_chunks, 0);
}

/// A reader that fails one chunk as corrupt and asks `inner` for every other.
struct FailOne {
    inner: Arc<dyn ChunkReader>,
    bad: ChunkDigest,
}

impl ChunkReader for FailOne {
    fn read_chunk<'a>(&'a self, chunk: &'a ChunkRef) -> BoxFuture<'a, Result<Bytes, ReadError>> {
        if chunk.digest == self.bad {
            Box::pin(async move {
                Err(ReadError::Corrupt {
                    digest: chunk.digest,
                    detail: "test: every tier sent bad bytes".into(),
                })
            })
        } else {
            self.inner.read_chunk(chunk)
        }
    }
}

#[test]
fn a_chunk_that_cannot_be_read_fails_only_reads_that_need_it() {
    let name = "v6-zstd-blake3";
    let image = open_image(name);
    let chunks = file_chunk_refs(&image, "multi-chunk.bin");
    assert!(chunks.len() > 1);
    let reader = Arc::new(FailOne {
        inner: fixture_reader(name),
        bad: chunks[1].digest,
    });
    let ops = NydusOps::new(image, reader, FsConfig::default());
    let ino = ino_at(&ops, "multi-chunk.bin");
    let rt = runtime();
    let chunk_size = 1u64 << 20;
    // Inside the first chunk: fine. Across into the second, or inside it: EIO, every time.
    assert_eq!(rt.block_on(ops.read(ino, 4096, 8192)).unwrap().len(), 8192);
    for _ in 0..2 {
        assert_eq!(
            rt.block_on(ops.read(ino, chunk_size - 10, 20)),
            Err(Errno::EIO)
        );
    }
    assert_eq!(
        rt.block_on(ops.read(ino, chunk_size + 10, 20)),
        Err(Errno::EIO)
    );
    let stats = ops.metrics().snapshot();
    assert_eq!(stats.reads, 4);
    assert_eq!(stats.read_errors, 3);
    assert_eq!(stats.bytes_served, 8192);
    assert_eq!(stats.read_latency.iter().sum::<u64>(), 4);
}

#[test]
fn every_operation_counts_one_request() {
    let rt = runtime();
    let ops = ops_for("v6-zstd-blake3", FsConfig::default());
    let count = || ops.metrics().snapshot().requests;
    assert_eq!(count(), 0);
    let hello = ops.lookup(ROOT_INO, b"hello.txt").unwrap().attr.ino;
    let _ = ops.getattr(hello);
    let _ = ops.readlink(hello);
    let _ = ops.open(hello, libc::O_RDONLY);
    let _ = ops.opendir(ROOT_INO);
    let _ = ops.readdir(ROOT_INO, 0, |_| false);
    let _ = ops.readdirplus(ROOT_INO, 0, |_| false);
    let _ = ops.statfs();
    let _ = ops.getxattr(hello, b"user.x", 0);
    let _ = ops.listxattr(hello, 0);
    let _ = ops.access(hello, libc::R_OK, 0, 0);
    let _ = ops.release(hello);
    let _ = ops.releasedir(ROOT_INO);
    let _ = ops.write(hello);
    assert_eq!(count(), 14);
    let _ = rt.block_on(ops.read(hello, 0, 4096));
    let _ = rt.block_on(ops.read(0, 0, 4096));
    assert_eq!(count(), 16);
    let stats = ops.metrics().snapshot();
    // Reads that reached the chunk mapping are counted as reads; one of an unknown inode not.
    assert_eq!(stats.reads, 1);
    // Per operation: each once, reads twice; a write counts only in the total.
    let mut per_op = stats.ops.clone();
    per_op.sort();
    let mut want = vec![
        ("access", 1),
        ("getattr", 1),
        ("getxattr", 1),
        ("listxattr", 1),
        ("lookup", 1),
        ("open", 1),
        ("opendir", 1),
        ("read", 2),
        ("readdir", 1),
        ("readdirplus", 1),
        ("readlink", 1),
        ("release", 1),
        ("releasedir", 1),
        ("statfs", 1),
    ];
    want.sort();
    assert_eq!(per_op, want);
}
