//! The RAFS v6 writer against our reader: trees built in memory with every edge case the format
//! has (600-entry directories over several blocks, a directory of exactly one block, 255-byte
//! names, names sorting before ".", 40 levels, 1000- and 4095-byte symlinks, devices with the
//! largest numbers, fifos, sockets, empty / one-chunk / many-chunk / > 4 GiB files, chunks
//! shared within and across files, hard links to files, symlinks and fifos, xattrs in every
//! namespace, 32-bit owners) are written, read back and compared field by field; the image obeys
//! the layout rules upstream nydusd checks; the output is deterministic; malformed trees are
//! refused with `InvalidTree`.

use std::collections::HashMap;

use dfagent_core::{decode_chunk, ChunkDigest, Compression, DigestAlgo};
use dfagent_rafs::blob_meta::{parse_chunk_infos, BlobMetaHeader};
use dfagent_rafs::write::{
    write_bootstrap, BlobSpec, BlobWriter, BootstrapOptions, ChunkPlacement, Content, Node, Tree,
};
use dfagent_rafs::{max_stored_size, FileType, Image, RafsError};

const CS: u32 = 64 << 10;
const DIR: u32 = 0o040000;
const REG: u32 = 0o100000;

/// Builds a tree and its one blob, remembering what every node should read back as.
struct Builder {
    tree: Tree,
    blob: BlobWriter<Vec<u8>>,
    algo: DigestAlgo,
    compression: Compression,
    dedup: HashMap<ChunkDigest, ChunkPlacement>,
    data: HashMap<u32, Vec<u8>>,
}

fn node(name: &[u8], parent: u32, mode: u32, content: Content) -> Node {
    Node {
        name: name.to_vec(),
        parent,
        children: vec![],
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        rdev_major: 0,
        rdev_minor: 0,
        xattrs: vec![],
        content,
    }
}

impl Builder {
    fn new(compression: Compression, algo: DigestAlgo) -> Self {
        let mut root = node(b"", 0, DIR | 0o755, Content::None);
        root.mtime = 1_234_567_890;
        root.mtime_nsec = 500;
        Builder {
            tree: Tree { nodes: vec![root] },
            blob: BlobWriter::new(Vec::new(), CS, compression, algo),
            algo,
            compression,
            dedup: HashMap::new(),
            data: HashMap::new(),
        }
    }

    fn add(&mut self, parent: u32, name: &[u8], mode: u32, content: Content) -> u32 {
        let i = self.tree.nodes.len() as u32;
        self.tree.nodes.push(node(name, parent, mode, content));
        self.tree.nodes[parent as usize].children.push(i);
        i
    }

    fn dir(&mut self, parent: u32, name: &[u8]) -> u32 {
        self.add(parent, name, DIR | 0o755, Content::None)
    }

    fn chunk(&mut self, data: &[u8]) -> ChunkPlacement {
        let digest = self.algo.digest(data);
        if let Some(p) = self.dedup.get(&digest) {
            return *p;
        }
        let packed = match self.compression {
            Compression::Zstd => zstd::bulk::compress(data, 3).unwrap(),
            Compression::Lz4Block => lz4_flex::block::compress(data),
            Compression::None => data.to_vec(),
        };
        let p = if packed.len() < data.len() {
            self.blob
                .add_chunk(digest, data.len() as u32, &packed, true)
        } else {
            self.blob.add_chunk(digest, data.len() as u32, data, false)
        }
        .unwrap();
        self.dedup.insert(digest, p);
        p
    }

    fn file(&mut self, parent: u32, name: &[u8], data: &[u8]) -> u32 {
        let chunks = data.chunks(CS as usize).map(|c| self.chunk(c)).collect();
        let i = self.add(
            parent,
            name,
            REG | 0o644,
            Content::File {
                size: data.len() as u64,
                chunks,
            },
        );
        self.data.insert(i, data.to_vec());
        i
    }

    fn opts(&self) -> BootstrapOptions {
        BootstrapOptions {
            chunk_size: CS,
            digest_algo: self.algo,
            compression: self.compression,
            prefetch: vec![],
        }
    }
}

fn pseudo_random(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// The edge-case tree. Returns the builder and the indices of a few nodes tests refer to.
fn edge_tree(compression: Compression, algo: DigestAlgo) -> (Builder, HashMap<&'static str, u32>) {
    let mut b = Builder::new(compression, algo);
    let mut at = HashMap::new();
    // A directory of 600 entries spanning several blocks, with names that sort before "." and
    // "..", a 255-byte name and non-ASCII bytes.
    let big = b.dir(0, b"big");
    for k in 0..600u32 {
        let name = format!("entry-{k:04}-{}", "x".repeat((k % 40) as usize));
        if k % 3 == 0 {
            b.add(big, name.as_bytes(), 0o010644, Content::None);
        } else {
            b.file(big, name.as_bytes(), &[]);
        }
    }
    for name in [&b"!bang"[..], b"-dash", b"#hash", b"\xff\xfe bytes", b"+"] {
        b.file(big, name, b"tiny");
    }
    b.file(big, &[b'n'; 255], b"long name");
    at.insert("big", big);
    // A directory whose entries fill exactly one 4096-byte block ("." 13 + ".." 14 + 17 entries).
    let exact = b.dir(0, b"exact");
    for k in 0..16u8 {
        let mut name = vec![b'a' + k; 227];
        name[0] = b'a' + k;
        b.file(exact, &name, &[]);
    }
    b.file(exact, &[b'z'; 233], &[]);
    at.insert("exact", exact);
    // 40 levels.
    let mut d = b.dir(0, b"deep");
    for k in 0..40 {
        d = b.dir(d, format!("d{k}").as_bytes());
    }
    at.insert("bottom", b.file(d, b"bottom.txt", b"at the bottom\n"));
    // Symlinks: short, 1000 bytes (inline), 4095 bytes (full block).
    b.add(
        0,
        b"link-short",
        0o120777,
        Content::Symlink(b"big/+".to_vec()),
    );
    let long: Vec<u8> = (0..1000).map(|k| b'a' + (k % 26) as u8).collect();
    b.add(0, b"link-1000", 0o120777, Content::Symlink(long));
    let longest: Vec<u8> = (0..4095).map(|k| b'/' + (k % 60) as u8).collect();
    at.insert(
        "link-4095",
        b.add(0, b"link-4095", 0o120777, Content::Symlink(longest)),
    );
    // Devices, fifo, socket.
    let c = b.add(0, b"chardev", 0o020600, Content::None);
    b.tree.nodes[c as usize].rdev_major = 0xfff;
    b.tree.nodes[c as usize].rdev_minor = 0xf_ffff;
    let bd = b.add(0, b"blockdev", 0o060660, Content::None);
    b.tree.nodes[bd as usize].rdev_major = 8;
    b.tree.nodes[bd as usize].rdev_minor = 257;
    let fifo = b.add(0, b"fifo", 0o010600, Content::None);
    b.add(0, b"socket", 0o140755, Content::None);
    // Files: empty, one chunk exactly, several chunks, shared chunks, a repeated chunk.
    b.file(0, b"empty", &[]);
    b.file(0, b"one-chunk.bin", &pseudo_random(CS as usize, 1));
    let many = pseudo_random(5 * CS as usize + 1234, 2);
    b.file(0, b"many.bin", &many);
    let sub = b.dir(0, b"sub");
    b.file(sub, b"copy-of-many.bin", &many);
    b.file(0, b"zeros.bin", &vec![0u8; 3 * CS as usize]);
    b.file(
        0,
        b"text.txt",
        "compressible text ".repeat(10_000).as_bytes(),
    );
    // Hard links: a file with three names in two directories, a symlink and a fifo with two.
    let orig = b.file(0, b"orig.txt", b"linked content\n");
    b.add(0, b"link-a", REG | 0o644, Content::HardLink(orig));
    b.add(sub, b"link-b", REG | 0o644, Content::HardLink(orig));
    let sl = b.add(
        0,
        b"sym-orig",
        0o120777,
        Content::Symlink(b"orig.txt".to_vec()),
    );
    b.add(sub, b"sym-link", 0o120777, Content::HardLink(sl));
    b.add(sub, b"fifo-link", 0o010600, Content::HardLink(fifo));
    at.insert("orig", orig);
    // Owners, modes, times.
    let owned = b.file(0, b"owned", b"x");
    {
        let n = &mut b.tree.nodes[owned as usize];
        n.uid = 100_000;
        n.gid = 70_000;
        n.mode = REG | 0o4755;
        n.mtime = 4_000_000_000;
        n.mtime_nsec = 999_999_999;
    }
    let sticky = b.dir(0, b"sticky");
    b.tree.nodes[sticky as usize].mode = DIR | 0o1777;
    // Xattrs in every namespace, binary and empty values, on a file and on directories.
    let x = b.file(0, b"xattrs.txt", b"has xattrs");
    b.tree.nodes[x as usize].xattrs = vec![
        (b"user.plain".to_vec(), b"value".to_vec()),
        (b"user.empty".to_vec(), vec![]),
        (b"user.binary".to_vec(), vec![0, 1, 2, 255, 0]),
        (b"trusted.t".to_vec(), b"trusted".to_vec()),
        (
            b"security.capability".to_vec(),
            vec![1, 0, 0, 2, 0x20, 0, 0, 0],
        ),
        (
            b"system.posix_acl_access".to_vec(),
            vec![2, 0, 0, 0, 1, 0, 6, 0],
        ),
    ];
    b.tree.nodes[sub as usize].xattrs = vec![
        (b"system.posix_acl_default".to_vec(), vec![2, 0, 0, 0]),
        (b"user.dir".to_vec(), b"on a directory".to_vec()),
    ];
    // A directory whose xattrs leave no room for an inline tail.
    let heavy = b.dir(0, b"heavy-xattrs");
    b.tree.nodes[heavy as usize].xattrs = vec![(b"user.big".to_vec(), vec![7u8; 4000])];
    b.file(heavy, b"inside", b"in");
    at.insert("heavy", heavy);
    (b, at)
}

/// A written image and what it was made of.
struct Written {
    tree: Tree,
    data: HashMap<u32, Vec<u8>>,
    blob: Vec<u8>,
    spec: BlobSpec,
    boot: Vec<u8>,
}

/// Finish the blob and write the bootstrap.
fn write(b: Builder, prefetch: Vec<u32>) -> Written {
    let mut opts = b.opts();
    opts.prefetch = prefetch;
    let (blob, spec) = b.blob.finish().unwrap();
    let boot = write_bootstrap(&b.tree, std::slice::from_ref(&spec), &opts).unwrap();
    Written {
        tree: b.tree,
        data: b.data,
        blob,
        spec,
        boot,
    }
}

fn path_of(tree: &Tree, mut i: u32) -> Vec<Vec<u8>> {
    let mut p = vec![];
    while i != 0 {
        p.push(tree.nodes[i as usize].name.clone());
        i = tree.nodes[i as usize].parent;
    }
    p.reverse();
    p
}

fn lookup(img: &Image, path: &[Vec<u8>]) -> u64 {
    let mut nid = img.root();
    for c in path {
        nid = img
            .lookup(nid, c)
            .unwrap()
            .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(c)))
            .nid;
    }
    nid
}

fn target(tree: &Tree, i: u32) -> u32 {
    match tree.nodes[i as usize].content {
        Content::HardLink(t) => t,
        _ => i,
    }
}

/// Read every node back and compare it with what was written.
fn verify(tree: &Tree, data: &HashMap<u32, Vec<u8>>, blob: &[u8], img: &Image) {
    let mut links: HashMap<u32, u32> = HashMap::new();
    for i in 1..tree.nodes.len() as u32 {
        *links.entry(target(tree, i)).or_default() += 1;
    }
    let mut ino_of: HashMap<u32, u32> = HashMap::new();
    let mut nid_of: HashMap<u32, u64> = HashMap::new();
    for i in 0..tree.nodes.len() as u32 {
        let path = path_of(tree, i);
        let what = String::from_utf8_lossy(&path.join(&b'/')).into_owned();
        let nid = lookup(img, &path);
        let t = target(tree, i);
        let n = &tree.nodes[t as usize];
        let inode = img.inode(nid).unwrap();
        assert_eq!(u32::from(inode.mode as u16), n.mode, "{what}: mode");
        assert_eq!((inode.uid, inode.gid), (n.uid, n.gid), "{what}: owner");
        assert_eq!(
            (inode.mtime, inode.mtime_nsec),
            (n.mtime, n.mtime_nsec),
            "{what}: mtime"
        );
        // One inode per hard link group, a distinct ino for each.
        if let Some(&prev) = nid_of.get(&t) {
            assert_eq!(prev, nid, "{what}: hard links share an inode");
        }
        nid_of.insert(t, nid);
        let other = ino_of.insert(inode.ino, t);
        assert!(
            other.is_none() || other == Some(t),
            "{what}: ino {} reused",
            inode.ino
        );
        let mut want_x = n.xattrs.clone();
        want_x.sort();
        let mut got_x: Vec<(Vec<u8>, Vec<u8>)> = img
            .xattrs(nid)
            .unwrap()
            .into_iter()
            .map(|x| (x.name, x.value))
            .collect();
        got_x.sort();
        assert_eq!(got_x, want_x, "{what}: xattrs");
        match &n.content {
            _ if inode.file_type == FileType::Dir => {
                let subdirs = n
                    .children
                    .iter()
                    .filter(|&&c| {
                        matches!(tree.nodes[c as usize].content, Content::None)
                            && tree.nodes[c as usize].mode & 0o170000 == DIR
                    })
                    .count() as u32;
                assert_eq!(inode.nlink, 2 + subdirs, "{what}: directory nlink");
                let mut names = vec![];
                img.readdir(nid, 0, |e| {
                    names.push((e.name, e.nid));
                    true
                })
                .unwrap();
                let mut want: Vec<Vec<u8>> = n
                    .children
                    .iter()
                    .map(|&c| tree.nodes[c as usize].name.clone())
                    .chain([b".".to_vec(), b"..".to_vec()])
                    .collect();
                want.sort();
                let got: Vec<Vec<u8>> = names.iter().map(|e| e.0.clone()).collect();
                assert_eq!(got, want, "{what}: readdir is sorted and complete");
                let dot = names.iter().find(|e| e.0 == b".").unwrap().1;
                let dotdot = names.iter().find(|e| e.0 == b"..").unwrap().1;
                assert_eq!(dot, nid, "{what}: '.'");
                let parent_path = path_of(tree, if i == 0 { 0 } else { n.parent });
                assert_eq!(dotdot, lookup(img, &parent_path), "{what}: '..'");
            }
            Content::Symlink(target) => {
                assert_eq!(inode.file_type, FileType::Symlink, "{what}");
                assert_eq!(&img.readlink(nid).unwrap(), target, "{what}: target");
                assert_eq!(inode.nlink, links[&t], "{what}: nlink");
            }
            Content::File { size, .. } => {
                assert_eq!(inode.file_type, FileType::File, "{what}");
                assert_eq!(inode.size, *size, "{what}: size");
                assert_eq!(inode.nlink, links[&t], "{what}: nlink");
                if let Some(want) = data.get(&t) {
                    let mut got = Vec::new();
                    for fc in img.chunks(&inode, 0, inode.size).unwrap() {
                        let c = fc.chunk;
                        let stored = &blob[c.compressed_offset as usize
                            ..(c.compressed_offset + u64::from(c.compressed_size)) as usize];
                        got.extend(decode_chunk(&c, stored).unwrap());
                    }
                    assert!(&got == want, "{what}: content");
                }
            }
            Content::None => {
                assert_eq!(inode.nlink, links[&t], "{what}: nlink");
                if matches!(inode.file_type, FileType::CharDev | FileType::BlockDev) {
                    assert_eq!(
                        (inode.rdev_major(), inode.rdev_minor()),
                        (n.rdev_major, n.rdev_minor),
                        "{what}: rdev"
                    );
                }
                if inode.file_type == FileType::File {
                    assert_eq!(inode.size, 0, "{what}: empty file");
                }
            }
            Content::HardLink(_) => unreachable!("targets are never links"),
        }
    }
}

/// Layout rules upstream nydusd enforces when it loads a bootstrap, plus EROFS' inline rule.
fn assert_upstream_rules(boot: &[u8], img: &Image) {
    let le16 = |at: usize| u16::from_le_bytes([boot[at], boot[at + 1]]);
    let le32 = |at: usize| u32::from_le_bytes(boot[at..at + 4].try_into().unwrap());
    let le64 = |at: usize| u64::from_le_bytes(boot[at..at + 8].try_into().unwrap());
    assert_eq!(boot.len() % 4096, 0, "bootstrap size is block aligned");
    assert_eq!(le32(1024 + 4), 0, "no superblock checksum");
    assert_eq!(
        le16(1024 + 88) as usize * 128,
        1408,
        "device table slot offset"
    );
    assert_eq!(le32(1024 + 44), 0, "no shared xattr area");
    assert_ne!(le64(1024 + 16), 0, "inode count");
    assert_eq!(le16(1024 + 84), 0, "superblock union field");
    assert_eq!(
        le32(1024 + 80),
        0xc,
        "incompat: chunked files and device table"
    );
    let bto = le64(1152 + 8);
    assert!(bto >= 4096 && bto % 4096 == 0, "blob table offset {bto}");
    let (cto, cts) = (le64(1152 + 24), le64(1152 + 32));
    assert!(
        cts == 0 || (cto >= 4096 && cto % 4096 == 0),
        "chunk table offset {cto}"
    );
    for i in 0..le16(1024 + 86) as usize {
        assert_ne!(le32(1408 + 128 * i + 64), 0, "device {i} has blocks");
    }
    img.walk(|e| {
        let ino = &e.inode;
        let inline = ino.file_type == FileType::Dir || ino.file_type == FileType::Symlink;
        let at = ino.nid * 32 + u64::from(le32(1024 + 40)) * 4096;
        assert_eq!(at % 32, 0);
        let format = le16(at as usize);
        if inline && (format >> 1) & 7 == 2 {
            let xc = u64::from(le16(at as usize + 2));
            let xs = if xc == 0 { 0 } else { 12 + (xc - 1) * 4 };
            assert!(
                (at + 64 + xs) % 4096 + ino.size % 4096 <= 4096,
                "{}: inline tail crosses a block",
                String::from_utf8_lossy(&e.path)
            );
        }
        Ok(())
    })
    .unwrap();
}

#[test]
fn edge_tree_round_trips_in_every_compression() {
    for (compression, algo) in [
        (Compression::Zstd, DigestAlgo::Blake3),
        (Compression::Lz4Block, DigestAlgo::Sha256),
        (Compression::None, DigestAlgo::Blake3),
    ] {
        let (b, _) = edge_tree(compression, algo);
        let Written {
            tree,
            data,
            blob,
            spec,
            boot,
        } = write(b, vec![]);
        let img = Image::from_bytes(boot.clone()).unwrap();
        assert_eq!(img.superblock().compression, compression);
        assert_eq!(img.superblock().digest_algo, algo);
        assert_eq!(img.superblock().build_time, 0, "no wall-clock time");
        assert_eq!(img.blobs().len(), 1);
        assert_eq!(img.blobs()[0].id, spec.id);
        assert_eq!(img.blobs()[0].compressed_size, blob.len() as u64);
        verify(&tree, &data, &blob, &img);
        assert_upstream_rules(&boot, &img);

        // The blob's own chunk-info array agrees with the bootstrap's chunk table.
        let info = &img.blobs()[0];
        let hdr = BlobMetaHeader::parse(&blob[blob.len() - 4096..], info).unwrap();
        let ci =
            &blob[info.ci_offset as usize..(info.ci_offset + info.ci_compressed_size) as usize];
        let infos = parse_chunk_infos(&hdr, ci).unwrap();
        assert_eq!(infos.len() as u32, info.chunk_count);
        for i in 0..img.chunk_record_count() {
            let r = img.chunk_record(i).unwrap();
            let c = infos[r.blob_chunk_index as usize];
            assert_eq!(
                (
                    c.compressed_offset,
                    c.compressed_size,
                    c.uncompressed_offset,
                    c.uncompressed_size
                ),
                (
                    r.compressed_offset,
                    r.compressed_size,
                    r.uncompressed_offset,
                    r.uncompressed_size
                ),
                "chunk record {i}"
            );
            assert_eq!(c.uncompressed_offset % 4096, 0);
        }
        let sha = {
            use sha2::Digest as _;
            let d: [u8; 32] = sha2::Sha256::digest(&blob).into();
            d
        };
        assert_eq!(spec.id.bytes(), &sha, "blob id is the sha256 of the blob");
    }
}

#[test]
fn layout_choices_for_big_exact_and_heavy_directories() {
    let (b, at) = edge_tree(Compression::Zstd, DigestAlgo::Blake3);
    let Written { tree, boot, .. } = write(b, vec![]);
    let img = Image::from_bytes(boot).unwrap();
    let inode = |i: u32| img.inode(lookup(&img, &path_of(&tree, i))).unwrap();
    assert!(
        inode(at["big"]).size > 3 * 4096,
        "600 entries take several blocks"
    );
    assert_eq!(
        inode(at["exact"]).size,
        4096,
        "a directory of exactly one block"
    );
    assert_eq!(inode(at["link-4095"]).size, 4095);
    // The deepest file is reachable through 41 lookups.
    assert_eq!(path_of(&tree, at["bottom"]).len(), 42);
    let heavy = inode(at["heavy"]);
    assert!(heavy.size < 4096 && heavy.size > 0);
}

#[test]
fn output_is_deterministic_and_prefetch_lists_nids() {
    let (b1, at) = edge_tree(Compression::Zstd, DigestAlgo::Blake3);
    let (b2, _) = edge_tree(Compression::Zstd, DigestAlgo::Blake3);
    let prefetch = vec![at["orig"], at["bottom"], 0];
    let Written {
        tree,
        blob: blob1,
        boot: boot1,
        ..
    } = write(b1, prefetch.clone());
    let Written {
        blob: blob2,
        boot: boot2,
        ..
    } = write(b2, prefetch.clone());
    assert!(boot1 == boot2, "two writes of the same tree differ");
    assert!(blob1 == blob2, "two blobs of the same chunks differ");
    let img = Image::from_bytes(boot1).unwrap();
    let want: Vec<u64> = prefetch
        .iter()
        .map(|&i| lookup(&img, &path_of(&tree, i)))
        .collect();
    assert_eq!(img.prefetch_nids().unwrap(), want);
}

#[test]
fn huge_file_and_image_without_blobs() {
    // A file over 4 GiB made of one repeated chunk (plus a short tail): size and chunk count
    // survive the 64-bit inode fields.
    let mut b = Builder::new(Compression::Zstd, DigestAlgo::Blake3);
    let zero = b.chunk(&vec![0u8; CS as usize]);
    let tail = b.chunk(&[0u8; 1]);
    let size = 5u64 << 30 | 1;
    let mut chunks = vec![zero; (size / u64::from(CS)) as usize];
    chunks.push(tail);
    let f = b.add(0, b"huge", REG | 0o600, Content::File { size, chunks });
    let Written { tree, boot, .. } = write(b, vec![]);
    let img = Image::from_bytes(boot).unwrap();
    let ino = img.inode(lookup(&img, &path_of(&tree, f))).unwrap();
    assert_eq!(ino.size, size);
    assert_eq!(img.chunk_count(&ino), size.div_ceil(u64::from(CS)));
    let last = img.chunks(&ino, size - 1, 1).unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].chunk.uncompressed_size, 1);

    // Only empty files and directories: no blobs at all.
    let mut tree = Tree {
        nodes: vec![node(b"", 0, DIR | 0o755, Content::None)],
    };
    tree.nodes.push(node(b"e", 0, REG | 0o644, Content::None));
    tree.nodes[0].children.push(1);
    let opts = BootstrapOptions {
        chunk_size: CS,
        digest_algo: DigestAlgo::Sha256,
        compression: Compression::None,
        prefetch: vec![1],
    };
    let boot = write_bootstrap(&tree, &[], &opts).unwrap();
    let img = Image::from_bytes(boot.clone()).unwrap();
    assert!(img.blobs().is_empty());
    assert!(img.lookup(img.root(), b"e").unwrap().is_some());
    assert_upstream_rules(&boot, &img);
}

/// Every way a tree can be wrong, each refused with `InvalidTree`.
#[test]
fn malformed_trees_are_refused() {
    let (b, at) = edge_tree(Compression::Zstd, DigestAlgo::Blake3);
    let opts = b.opts();
    let (blob_bytes, spec) = b.blob.finish().unwrap();
    drop(blob_bytes);
    let good = b.tree;
    let blobs = vec![spec];
    assert!(write_bootstrap(&good, &blobs, &opts).is_ok());
    let file = (1..good.nodes.len())
        .find(
            |&i| matches!(&good.nodes[i].content, Content::File { chunks, .. } if chunks.len() > 1),
        )
        .unwrap();
    let dir = at["big"] as usize;
    let leaf = good.nodes[dir].children[0] as usize;
    type Mutation = (
        &'static str,
        Box<dyn Fn(&mut Tree, &mut Vec<BlobSpec>, &mut BootstrapOptions)>,
    );
    let cases: Vec<Mutation> = vec![
        ("empty tree", Box::new(|t, _, _| t.nodes.clear())),
        (
            "root not a directory",
            Box::new(|t, _, _| t.nodes[0].mode = REG | 0o644),
        ),
        (
            "root with a name",
            Box::new(|t, _, _| t.nodes[0].name = b"r".to_vec()),
        ),
        (
            "slash in a name",
            Box::new(move |t, _, _| t.nodes[leaf].name = b"a/b".to_vec()),
        ),
        (
            "NUL in a name",
            Box::new(move |t, _, _| t.nodes[leaf].name = b"a\0b".to_vec()),
        ),
        (
            "dot name",
            Box::new(move |t, _, _| t.nodes[leaf].name = b".".to_vec()),
        ),
        (
            "dotdot name",
            Box::new(move |t, _, _| t.nodes[leaf].name = b"..".to_vec()),
        ),
        (
            "empty name",
            Box::new(move |t, _, _| t.nodes[leaf].name.clear()),
        ),
        (
            "256-byte name",
            Box::new(move |t, _, _| t.nodes[leaf].name = vec![b'n'; 256]),
        ),
        (
            "wrong parent",
            Box::new(move |t, _, _| t.nodes[leaf].parent = 0),
        ),
        (
            "parent out of range",
            Box::new(move |t, _, _| t.nodes[leaf].parent = 1 << 30),
        ),
        (
            "not listed by parent",
            Box::new(move |t, _, _| t.nodes[dir].children.retain(|&c| c as usize != leaf)),
        ),
        (
            "listed twice",
            Box::new(move |t, _, _| t.nodes[dir].children.push(leaf as u32)),
        ),
        (
            "child out of range",
            Box::new(move |t, _, _| t.nodes[dir].children.push(u32::MAX)),
        ),
        (
            "root as a child",
            Box::new(move |t, _, _| t.nodes[dir].children.push(0)),
        ),
        (
            "duplicate names",
            Box::new(move |t, _, _| {
                let other = t.nodes[dir].children[1] as usize;
                t.nodes[other].name = t.nodes[leaf].name.clone();
            }),
        ),
        (
            "hard link to a directory",
            Box::new(move |t, _, _| t.nodes[leaf].content = Content::HardLink(dir as u32)),
        ),
        (
            "hard link out of range",
            Box::new(move |t, _, _| t.nodes[leaf].content = Content::HardLink(u32::MAX)),
        ),
        (
            "hard link to itself",
            Box::new(move |t, _, _| t.nodes[leaf].content = Content::HardLink(leaf as u32)),
        ),
        (
            "hard link to a hard link",
            Box::new(move |t, _, _| {
                let l = (0..t.nodes.len())
                    .find(|&i| matches!(t.nodes[i].content, Content::HardLink(_)))
                    .unwrap();
                t.nodes[leaf].content = Content::HardLink(l as u32);
            }),
        ),
        (
            "a file with children",
            Box::new(move |t, _, _| t.nodes[file].children.push(leaf as u32)),
        ),
        (
            "a directory with data",
            Box::new(move |t, _, _| {
                t.nodes[dir].content = Content::File {
                    size: 0,
                    chunks: vec![],
                }
            }),
        ),
        (
            "no file type",
            Box::new(move |t, _, _| t.nodes[leaf].mode = 0o644),
        ),
        (
            "mode beyond 16 bits",
            Box::new(move |t, _, _| t.nodes[leaf].mode |= 1 << 20),
        ),
        (
            "symlink without target",
            Box::new(move |t, _, _| {
                t.nodes[leaf].mode = 0o120777;
                t.nodes[leaf].content = Content::Symlink(vec![]);
            }),
        ),
        (
            "symlink of 4096 bytes",
            Box::new(move |t, _, _| {
                t.nodes[leaf].mode = 0o120777;
                t.nodes[leaf].content = Content::Symlink(vec![b'a'; 4096]);
            }),
        ),
        (
            "symlink with content None",
            Box::new(move |t, _, _| t.nodes[leaf].mode = 0o120777),
        ),
        (
            "device number too large",
            Box::new(move |t, _, _| {
                t.nodes[leaf].mode = 0o020600;
                t.nodes[leaf].content = Content::None;
                t.nodes[leaf].rdev_major = 4096;
            }),
        ),
        (
            "chunk blob out of range",
            Box::new(move |t, _, _| {
                if let Content::File { chunks, .. } = &mut t.nodes[file].content {
                    chunks[0].blob_index = 1;
                }
            }),
        ),
        (
            "chunk index beyond the blob",
            Box::new(move |t, b, _| {
                let n = b[0].chunk_count;
                if let Content::File { chunks, .. } = &mut t.nodes[file].content {
                    chunks[0].index_in_blob = n;
                }
            }),
        ),
        (
            "size does not match chunk count",
            Box::new(move |t, _, _| {
                if let Content::File { size, .. } = &mut t.nodes[file].content {
                    *size += u64::from(CS);
                }
            }),
        ),
        (
            "short middle chunk",
            Box::new(move |t, _, _| {
                if let Content::File { chunks, .. } = &mut t.nodes[file].content {
                    chunks[0].uncompressed_size -= 1;
                }
            }),
        ),
        (
            "same chunk described twice",
            Box::new(move |t, _, _| {
                if let Content::File { chunks, .. } = &mut t.nodes[file].content {
                    chunks[0].compressed_offset += 1;
                }
            }),
        ),
        (
            "digest of another algorithm",
            Box::new(move |t, _, _| {
                if let Content::File { chunks, .. } = &mut t.nodes[file].content {
                    chunks[0].digest = DigestAlgo::Sha256.digest(b"x");
                }
            }),
        ),
        (
            "unaligned uncompressed offset",
            Box::new(move |t, _, _| {
                if let Content::File { chunks, .. } = &mut t.nodes[file].content {
                    chunks[0].uncompressed_offset += 1;
                }
            }),
        ),
        (
            "xattr without a namespace",
            Box::new(move |t, _, _| t.nodes[leaf].xattrs = vec![(b"lustre.x".to_vec(), vec![])]),
        ),
        (
            "xattr set twice",
            Box::new(move |t, _, _| {
                t.nodes[leaf].xattrs =
                    vec![(b"user.x".to_vec(), vec![]), (b"user.x".to_vec(), vec![1])]
            }),
        ),
        (
            "xattr value over 64 KiB",
            Box::new(move |t, _, _| {
                t.nodes[leaf].xattrs = vec![(b"user.x".to_vec(), vec![0; 70_000])]
            }),
        ),
        (
            "prefetch out of range",
            Box::new(|_, _, o| o.prefetch = vec![u32::MAX]),
        ),
        (
            "chunk size not a power of two",
            Box::new(|_, _, o| o.chunk_size = 100_000),
        ),
        (
            "blob of another chunk size",
            Box::new(|_, b, _| b[0].chunk_size *= 2),
        ),
        (
            "blob listed twice",
            Box::new(|_, b, _| b.push(b[0].clone())),
        ),
        (
            "blob without ALIGNED",
            Box::new(|_, b, _| b[0].features = 0),
        ),
        (
            "parent cycle detached from the root",
            Box::new(|t, _, _| {
                let a = t.nodes.len() as u32;
                let mut x = node(b"a", a + 1, DIR | 0o755, Content::None);
                x.children = vec![a + 1];
                let mut y = node(b"b", a, DIR | 0o755, Content::None);
                y.children = vec![a];
                t.nodes.push(x);
                t.nodes.push(y);
            }),
        ),
    ];
    for (name, mutate) in cases {
        let mut t = good.clone();
        let mut b = blobs.clone();
        let mut o = opts.clone();
        mutate(&mut t, &mut b, &mut o);
        match write_bootstrap(&t, &b, &o) {
            Err(RafsError::InvalidTree(msg)) => assert!(!msg.is_empty(), "{name}"),
            Err(e) => panic!("{name}: wrong error {e}"),
            Ok(_) => panic!("{name}: accepted"),
        }
    }
}

/// The writer refuses the stored sizes the reader would refuse ([`max_stored_size`]).
#[test]
fn stored_sizes_beyond_the_compressors_worst_case_are_refused() {
    let (b, _) = edge_tree(Compression::Zstd, DigestAlgo::Blake3);
    let opts = b.opts();
    let (_, spec) = b.blob.finish().unwrap();
    let good = b.tree;
    let c = good
        .nodes
        .iter()
        .find_map(|n| match &n.content {
            Content::File { chunks, .. } => chunks.iter().find(|c| c.compressed).copied(),
            _ => None,
        })
        .expect("a compressed chunk in the edge tree");
    let limit = max_stored_size(Compression::Zstd, c.uncompressed_size);
    let with_size = |stored: u64| {
        let mut t = good.clone();
        for n in &mut t.nodes {
            if let Content::File { chunks, .. } = &mut n.content {
                for x in chunks.iter_mut().filter(|x| **x == c) {
                    x.compressed_size = stored as u32;
                }
            }
        }
        write_bootstrap(&t, std::slice::from_ref(&spec), &opts)
    };
    // The worst case is written and read back; one byte more is refused.
    let img = Image::from_bytes(with_size(limit).unwrap()).unwrap();
    let rec = (0..img.chunk_record_count())
        .map(|i| img.chunk_record(i).unwrap())
        .find(|r| r.digest == c.digest)
        .unwrap();
    assert_eq!(
        u64::from(img.chunk_ref(&rec).unwrap().compressed_size),
        limit
    );
    match with_size(limit + 1) {
        Err(RafsError::InvalidTree(msg)) => {
            assert!(msg.contains("is beyond what zstd gives"), "{msg}")
        }
        other => panic!("accepted or wrong error: {other:?}"),
    }
    // Compressed chunks in a blob without a compressor would read back as corrupt.
    let mut none = spec.clone();
    none.compression = Compression::None;
    match write_bootstrap(&good, &[none], &opts) {
        Err(RafsError::InvalidTree(msg)) => {
            assert!(msg.contains("is beyond what none gives"), "{msg}")
        }
        other => panic!("accepted or wrong error: {other:?}"),
    }
}

#[test]
fn blob_writer_refuses_what_v1_records_cannot_express() {
    let mut w = BlobWriter::new(Vec::new(), CS, Compression::Zstd, DigestAlgo::Blake3);
    let d = DigestAlgo::Blake3.digest(b"abcd");
    // A "compressed" chunk as long as the data would read back as raw.
    assert!(w.add_chunk(d, 4, b"wxyz", true).is_err());
    // A raw chunk whose stored size differs from its size.
    assert!(w.add_chunk(d, 4, b"abc", false).is_err());
    assert!(w.add_chunk(d, 0, b"", false).is_err());
    assert!(w
        .add_chunk(d, CS + 1, &vec![0; CS as usize + 1], false)
        .is_err());
    assert!(w
        .add_chunk(DigestAlgo::Sha256.digest(b"abcd"), 4, b"abcd", false)
        .is_err());
    let p = w.add_chunk(d, 4, b"abcd", false).unwrap();
    assert_eq!(
        (p.index_in_blob, p.compressed_offset, p.uncompressed_offset),
        (0, 0, 0)
    );
    let q = w
        .add_chunk(DigestAlgo::Blake3.digest(b"e"), 1, b"e", false)
        .unwrap();
    assert_eq!(
        (q.index_in_blob, q.compressed_offset, q.uncompressed_offset),
        (1, 4, 4096)
    );
    assert_eq!(w.chunk_count(), 2);
    let (bytes, spec) = w.finish().unwrap();
    assert_eq!(spec.uncompressed_size, 8192);
    assert_eq!(spec.compressed_size, bytes.len() as u64);
    assert_eq!(spec.ci_uncompressed_size, 32);
    assert_eq!(spec.ci_offset, 5);
    // 32 bytes do not shrink under zstd: stored raw, as upstream does.
    assert_eq!(spec.ci_compression, Compression::None);
    assert_eq!(bytes.len(), 5 + 32 + 4096);
}

#[test]
fn two_blobs_with_a_file_spanning_both() {
    // Blob 0 holds chunks a and b, blob 1 (lz4, as a chunk dictionary from another build might
    // be) holds c; one file uses a, c, b in that order. Device slots map each blob after the
    // bootstrap at 512 KiB boundaries, as upstream does.
    let algo = DigestAlgo::Blake3;
    let chunk = |seed| pseudo_random(CS as usize, seed);
    let (a, b, c) = (chunk(10), chunk(11), chunk(12));
    let mut w0 = BlobWriter::new(Vec::new(), CS, Compression::None, algo);
    let pa = w0.add_chunk(algo.digest(&a), CS, &a, false).unwrap();
    let pb = w0.add_chunk(algo.digest(&b), CS, &b, false).unwrap();
    let (blob0, spec0) = w0.finish().unwrap();
    let mut w1 = BlobWriter::new(Vec::new(), CS, Compression::Lz4Block, algo);
    let packed = lz4_flex::block::compress(&c);
    let compressed = packed.len() < c.len();
    let stored = if compressed { packed } else { c.clone() };
    let mut pc = w1
        .add_chunk(algo.digest(&c), CS, &stored, compressed)
        .unwrap();
    let (blob1, spec1) = w1.finish().unwrap();
    pc.blob_index = 1;
    let mut tree = Tree {
        nodes: vec![node(b"", 0, DIR | 0o755, Content::None)],
    };
    tree.nodes.push(node(
        b"mixed",
        0,
        REG | 0o644,
        Content::File {
            size: 3 * u64::from(CS),
            chunks: vec![pa, pc, pb],
        },
    ));
    tree.nodes[0].children.push(1);
    let opts = BootstrapOptions {
        chunk_size: CS,
        digest_algo: algo,
        compression: Compression::None,
        prefetch: vec![1],
    };
    let boot = write_bootstrap(&tree, &[spec0.clone(), spec1.clone()], &opts).unwrap();
    let img = Image::from_bytes(boot.clone()).unwrap();
    assert_eq!(img.blobs().len(), 2);
    assert_eq!(img.blobs()[1].compression, Compression::Lz4Block);
    let nid = img.lookup(img.root(), b"mixed").unwrap().unwrap().nid;
    assert_eq!(img.prefetch_nids().unwrap(), vec![nid]);
    let inode = img.inode(nid).unwrap();
    let mut got = Vec::new();
    for fc in img.chunks(&inode, 0, inode.size).unwrap() {
        let r = fc.chunk;
        let blob = if r.blob == spec0.id { &blob0 } else { &blob1 };
        let at = r.compressed_offset as usize;
        got.extend(decode_chunk(&r, &blob[at..at + r.compressed_size as usize]).unwrap());
    }
    assert!(got == [a, c, b].concat(), "file content across two blobs");
    // Device slots: blocks and 512 KiB-aligned mapping addresses.
    let le32 = |at: usize| u32::from_le_bytes(boot[at..at + 4].try_into().unwrap());
    let first = (boot.len() as u32).div_ceil(0x8_0000) * 0x8_0000 / 4096;
    assert_eq!((le32(1408 + 64), le32(1408 + 68)), (2 * CS / 4096, first));
    let second = ((first + 2 * CS / 4096) * 4096).div_ceil(0x8_0000) * 0x8_0000 / 4096;
    assert_eq!(
        (le32(1408 + 128 + 64), le32(1408 + 128 + 68)),
        (CS / 4096, second)
    );
    assert_eq!(le32(1024 + 36), 3 * CS / 4096, "superblock block count");
    assert_upstream_rules(&boot, &img);
}
