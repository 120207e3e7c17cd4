//! `dfagent build` as a user runs it: OCI layouts made from the texture trees (GNU tar, which
//! keeps empty and binary xattrs), a docker archive made by skopeo, a real registry, FUSE
//! mounts of the results, and malformed inputs. Needs root (texture trees have devices and
//! owners), /dev/fuse, GNU tar, gzip, skopeo and docker-registry.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use dfagent_test_support::dfagent_cli;
use dfagent_test_support::fixtures::{
    fixture, list_tree_without_root, listing_lines, listing_without_root, make_texture,
};
use dfagent_test_support::oci::{gnu_tar, gzip, oci_layout, zstd};
use dfagent_test_support::process::{run_bounded, succeeded};
use dfagent_test_support::registry::Registry;
use dfagent_test_support::tmp_dir;

fn run(args: &[&str]) -> Output {
    dfagent_cli!().run(args)
}

fn ok(args: &[&str]) -> Output {
    succeeded(run(args))
}

/// Run a helper command (tar, cp, skopeo, python3), which must succeed within 10 minutes.
fn sh(cmd: &mut Command) {
    succeeded(run_bounded(cmd, Duration::from_secs(600)));
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Texture tree `seed` (1 or 2, tree 2 with the README's extra copies) under `dir`.
fn texture(dir: &Path, seed: u32) -> PathBuf {
    let t = dir.join(format!("tree{seed}"));
    if t.exists() {
        return t;
    }
    make_texture(&t, seed);
    if seed == 2 {
        let t1 = texture(dir, 1);
        sh(Command::new("cp")
            .arg("-a")
            .arg(t1.join("multi-chunk.bin"))
            .arg(t.join("shared-multi.bin")));
        sh(Command::new("cp")
            .arg("-a")
            .arg(t1.join("text"))
            .arg(t.join("shared-text")));
    }
    t
}

/// `dfagent build SOURCE --output-dir OUT EXTRA...`; the JSON summary.
fn build(source: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["build", source, "--output-dir", p(out), "--json", "-q"];
    args.extend_from_slice(extra);
    let o = ok(&args);
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `inspect --json` of a built image (every file read through the verified chunk path),
/// without the root line.
fn inspect(out: &Path) -> Vec<String> {
    let o = ok(&[
        "inspect",
        "--json",
        p(&out.join("bootstrap")),
        "--blob-dir",
        p(&out.join("blobs")),
    ]);
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

fn check(out: &Path) {
    ok(&[
        "check",
        p(&out.join("bootstrap")),
        "--blob-dir",
        p(&out.join("blobs")),
    ]);
}

/// Listing of a FUSE mount of a built image.
fn mounted_listing(out: &Path, mp: &Path) -> Vec<String> {
    std::fs::create_dir_all(mp).unwrap();
    let blob_arg = format!("--blob-dir={}", p(&out.join("blobs")));
    let m = dfagent_cli!()
        .with_store(&out.join("unused-store"))
        .mount_with(&blob_arg, mp, &["--bootstrap", p(&out.join("bootstrap"))]);
    let l = list_tree_without_root(mp);
    m.stop();
    l
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push((
                    e.path().strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn work() -> tempfile::TempDir {
    tmp_dir("dfagent-build-cli-")
}

#[test]
fn texture_round_trips_through_inspect_mount_and_check_byte_identically() {
    let w = work();
    let t = texture(w.path(), 1);
    let layout = w.path().join("L");
    oci_layout(&layout, "v1", &[gnu_tar(&t)], true);
    let src = format!("oci:{}:v1", p(&layout));
    let out = w.path().join("out");
    let s = build(&src, &out, &[]);
    assert_eq!(s["layers"], 1);
    assert!(s["unique_chunks"].as_u64().unwrap() < s["chunks"].as_u64().unwrap());
    check(&out);
    let want = listing_without_root("texture.expected.jsonl");
    assert_eq!(inspect(&out), want);
    assert_eq!(mounted_listing(&out, &w.path().join("mnt")), want);

    // Same input, same bytes, whatever the thread count; a fresh tar of the same tree (GNU tar
    // records atime/ctime, so the layer differs) gives the same image too.
    let out2 = w.path().join("out2");
    build(&src, &out2, &["--threads", "1"]);
    assert_eq!(files(&out), files(&out2));
    let layout3 = w.path().join("L3");
    oci_layout(&layout3, "v1", &[gnu_tar(&t)], false);
    let out3 = w.path().join("out3");
    build(&format!("oci:{}", p(&layout3)), &out3, &["--threads", "3"]);
    assert_eq!(files(&out), files(&out3));

    // --prefetch-patterns fills the prefetch table with those paths, in order; missing paths
    // are skipped.
    let patterns = w.path().join("prefetch.txt");
    std::fs::write(&patterns, "/hello.txt\n# comment\n/text\n/does/not/exist\n").unwrap();
    let out4 = w.path().join("out4");
    build(&src, &out4, &["--prefetch-patterns", p(&patterns)]);
    let img = dfagent_rafs::Image::open(out4.join("bootstrap")).unwrap();
    let root = img.root();
    let nid = |name: &[u8]| img.lookup(root, name).unwrap().unwrap().nid;
    assert_eq!(
        img.prefetch_nids().unwrap(),
        vec![nid(b"hello.txt"), nid(b"text")]
    );
    assert!(dfagent_rafs::Image::open(out.join("bootstrap"))
        .unwrap()
        .prefetch_nids()
        .unwrap()
        .is_empty());

    // The OCI layout output is deterministic and in nydusify's layout.
    let (o1, o2) = (w.path().join("oci1"), w.path().join("oci2"));
    for o in [&o1, &o2] {
        ok(&[
            "build",
            &src,
            "--oci-layout",
            &format!("{}:nydus", p(o)),
            "-q",
        ]);
    }
    assert_eq!(files(&o1), files(&o2));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o1.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "nydus"
    );
    let digest = entry["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o1.join("blobs/sha256").join(&digest[7..])).unwrap())
            .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.nydus.blob.v1"
    );
    assert_eq!(
        layers[0]["annotations"]["containerd.io/snapshot/nydus-blob"],
        "true"
    );
    assert_eq!(
        layers[1]["annotations"]["containerd.io/snapshot/nydus-bootstrap"],
        "true"
    );
    let ids: Vec<String> = serde_json::from_str(
        layers[1]["annotations"]["containerd.io/snapshot/nydus-blob-ids"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        ids,
        vec![layers[0]["digest"].as_str().unwrap()[7..].to_string()]
    );
    // The config is the source's (entrypoint, env) with the Nydus layers' diff ids and no
    // history, as nydusify makes it.
    let cd = manifest["config"]["digest"].as_str().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o1.join("blobs/sha256").join(&cd[7..])).unwrap())
            .unwrap();
    assert_eq!(config["config"]["Entrypoint"][0], "/bin/sh");
    assert!(config.get("history").is_none());
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    // No stray temporary files anywhere.
    for (f, _) in files(&o1).iter().chain(files(&out).iter()) {
        assert!(!f.to_string_lossy().contains(".tmp-"), "{f:?}");
    }

    // --merge-platform: an index with the source manifest and the Nydus one.
    let o3 = w.path().join("oci3");
    ok(&[
        "build",
        &src,
        "--oci-layout",
        p(&o3),
        "--merge-platform",
        "-q",
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o3.join("index.json")).unwrap()).unwrap();
    let d = index["manifests"][0]["digest"].as_str().unwrap();
    let merged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o3.join("blobs/sha256").join(&d[7..])).unwrap())
            .unwrap();
    let m = merged["manifests"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert!(m[0]["platform"].get("os.features").is_none());
    assert_eq!(m[1]["platform"]["os.features"][0], "nydus.remoteimage.v1");
    // skopeo reads both images of the merged layout.
    sh(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:latest", p(&o3))));
}

#[test]
fn chunk_dict_leaves_only_new_chunks_in_the_new_blob() {
    let w = work();
    let t1 = texture(w.path(), 1);
    let t2 = texture(w.path(), 2);
    let (l1, l2) = (w.path().join("L1"), w.path().join("L2"));
    oci_layout(&l1, "v1", &[gnu_tar(&t1)], true);
    oci_layout(&l2, "v1", &[gnu_tar(&t2)], true);
    let out1 = w.path().join("out1");
    build(&format!("oci:{}:v1", p(&l1)), &out1, &[]);
    let out2 = w.path().join("out2");
    let dict = format!("bootstrap={}", p(&out1.join("bootstrap")));
    let s = build(
        &format!("oci:{}:v1", p(&l2)),
        &out2,
        &["--chunk-dict", &dict],
    );
    check(&out2);
    assert_eq!(
        inspect(&out2),
        listing_without_root("texture2.expected.jsonl")
    );
    assert_eq!(
        mounted_listing(&out2, &w.path().join("mnt")),
        listing_without_root("texture2.expected.jsonl")
    );

    let dict_img = dfagent_rafs::Image::open(out1.join("bootstrap")).unwrap();
    let dict_digests: BTreeSet<String> = (0..dict_img.chunk_record_count())
        .map(|i| dict_img.chunk_record(i).unwrap().digest.to_string())
        .collect();
    let img = dfagent_rafs::Image::open(out2.join("bootstrap")).unwrap();
    let blobs = img.blobs();
    assert_eq!(blobs.len(), 2, "the dictionary's blob and the new one");
    assert_eq!(blobs[0].id, dict_img.blobs()[0].id);
    // Chunks in the new blob: none is in the dictionary, and their count is what the tree
    // has beyond tree 1 (upstream's chunk-dict build of the same trees agrees).
    let mut new_blob = BTreeSet::new();
    for i in 0..img.chunk_record_count() {
        let r = img.chunk_record(i).unwrap();
        if r.blob_index == 1 {
            assert!(
                !dict_digests.contains(&r.digest.to_string()),
                "{}",
                r.digest
            );
            new_blob.insert(r.digest.to_string());
        }
    }
    assert_eq!(new_blob.len() as u32, blobs[1].chunk_count);
    let upstream = dfagent_rafs::Image::open(fixture("v6-chunkdict").join("bootstrap")).unwrap();
    let upstream_dict =
        dfagent_rafs::Image::open(fixture("v6-zstd-blake3").join("bootstrap")).unwrap();
    let upstream_new = upstream
        .blobs()
        .iter()
        .find(|b| b.id != upstream_dict.blobs()[0].id)
        .map(|b| b.chunk_count)
        .unwrap();
    assert_eq!(blobs[1].chunk_count, upstream_new);
    assert_eq!(
        s["unique_chunks"].as_u64().unwrap(),
        u64::from(upstream_new)
    );
    assert!(s["dict_chunks"].as_u64().unwrap() > 0);
    // The dictionary blob it uses is in the output, so the image mounts from OUT alone.
    assert!(out2.join("blobs").join(blobs[0].id.hex()).is_file());
    // A dictionary whose blobs cannot be found is a clear error.
    let lone = w.path().join("lone");
    std::fs::create_dir_all(&lone).unwrap();
    std::fs::copy(out1.join("bootstrap"), lone.join("dict.boot")).unwrap();
    let o = run(&[
        "build",
        &format!("oci:{}:v1", p(&l2)),
        "--output-dir",
        p(&w.path().join("out3")),
        "--chunk-dict",
        &format!("bootstrap={}", p(&lone.join("dict.boot"))),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--chunk-dict-blobs"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!w.path().join("out3/bootstrap").exists());
}

#[test]
fn two_layers_read_like_the_nydusify_fixture() {
    let w = work();
    let t = texture(w.path(), 1);
    sh(Command::new("python3")
        .arg("-c")
        .arg("import os, sys; os.removexattr(sys.argv[1], 'user.binary')")
        .arg(t.join("xattr.txt")));
    let layer2 = std::fs::read(fixture("v6-nydusify-2layer").join("layer2.tar")).unwrap();
    let layout = w.path().join("L");
    oci_layout(&layout, "v1", &[gnu_tar(&t), layer2], true);
    let out = w.path().join("out");
    let s = build(&format!("oci:{}:v1", p(&layout)), &out, &[]);
    assert_eq!(s["layers"], 2);
    check(&out);
    // Here the root's attributes come from layer 2, so the root line is compared too.
    let want: Vec<String> = listing_lines("v6-nydusify-2layer.expected.jsonl");
    let o = ok(&[
        "inspect",
        "--json",
        p(&out.join("bootstrap")),
        "--blob-dir",
        p(&out.join("blobs")),
    ]);
    let got: Vec<String> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        mounted_listing(&out, &w.path().join("mnt")),
        want[1..].to_vec()
    );
}

/// Write `entries` as a tar with Python's tarfile (which can write whiteouts, hard links to
/// files of lower layers and any path).
fn py_tar(dest: &Path, script: &str) {
    let prog = format!(
        "import tarfile, io, sys\n\
         t = tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT)\n\
         def add(name, kind=tarfile.REGTYPE, data=b'', mode=0o644, link='', mtime=1700000500, x={{}}):\n\
         \x20   i = tarfile.TarInfo(name); i.type = kind; i.mode = mode; i.mtime = mtime\n\
         \x20   i.pax_headers = {{'SCHILY.xattr.' + k: v.decode('utf-8', 'surrogateescape') for k, v in x.items()}}\n\
         \x20   i.linkname = link; i.size = len(data) if kind == tarfile.REGTYPE else 0\n\
         \x20   t.addfile(i, io.BytesIO(data) if kind == tarfile.REGTYPE else None)\n\
         {script}\n\
         t.close()\n"
    );
    sh(Command::new("python3").arg("-c").arg(prog).arg(dest));
}

#[test]
fn overlay_of_two_layers_matches_applying_them_to_a_directory() {
    let w = work();
    let lower = w.path().join("lower");
    std::fs::create_dir_all(&lower).unwrap();
    for (f, data) in [
        ("hello.txt", "lower hello\n"),
        ("keep.txt", "keep\n"),
        ("gone.txt", "gone\n"),
        ("dir/a", "a\n"),
        ("dir/sub/b", "b\n"),
        ("opaque/old1", "old1\n"),
        ("opaque/sub/old2", "old2\n"),
        ("attrs/x", "x\n"),
        ("big.bin", &"0123456789abcdef".repeat(200_000)),
    ] {
        let path = lower.join(f);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
    }
    std::fs::hard_link(lower.join("hello.txt"), lower.join("hello-link")).unwrap();
    let upper_tar = w.path().join("upper.tar");
    py_tar(
        &upper_tar,
        "add('hello.txt', data=b'upper hello\\n')\n\
         add('added.txt', data=b'added\\n')\n\
         add('.wh.gone.txt')\n\
         add('dir', tarfile.DIRTYPE, mode=0o755)\n\
         add('dir/.wh.sub')\n\
         add('opaque', tarfile.DIRTYPE, mode=0o700)\n\
         add('opaque/.wh..wh..opq')\n\
         add('opaque/new', data=b'new\\n')\n\
         add('attrs', tarfile.DIRTYPE, mode=0o711, mtime=1700000999)\n\
         add('keep-link', tarfile.LNKTYPE, link='keep.txt')\n\
         add('big-copy.bin', data=b'0123456789abcdef' * 200000)\n\
         add('.wh.never-existed')\n\
         acl = bytes.fromhex('02000000' '0100060000000000' '02000400e8030000' '0400040000000000' '1000040000000000' '2000040000000000')\n\
         add('xattrs.bin', data=b'x', x={'security.capability': bytes.fromhex('0100000200200000000000000000000000000000'), 'trusted.bin': b'\\x00\\xff\\n=', 'system.posix_acl_access': acl})\n",
    );
    let lower_tar = gnu_tar(&lower);
    let layout = w.path().join("L");
    oci_layout(
        &layout,
        "v1",
        &[lower_tar.clone(), std::fs::read(&upper_tar).unwrap()],
        true,
    );
    let out = w.path().join("out");
    let s = build(&format!("oci:{}:v1", p(&layout)), &out, &[]);
    // big-copy.bin repeats big.bin's chunks: deduplicated across layers.
    assert!(s["dedup_ratio"].as_f64().unwrap() > 1.5, "{s}");
    check(&out);

    // Expected: extract the lower layer, apply the whiteouts and the opaque marker, then
    // extract the upper layer without its whiteout files.
    let exp = w.path().join("expected");
    std::fs::create_dir_all(&exp).unwrap();
    let lower_file = w.path().join("lower.tar");
    std::fs::write(&lower_file, &lower_tar).unwrap();
    sh(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(&lower_file)
        .arg("-C")
        .arg(&exp));
    std::fs::remove_file(exp.join("gone.txt")).unwrap();
    std::fs::remove_dir_all(exp.join("dir/sub")).unwrap();
    std::fs::remove_dir_all(exp.join("opaque")).unwrap();
    std::fs::create_dir(exp.join("opaque")).unwrap();
    sh(Command::new("tar")
        .args(["--exclude=.wh.*", "-xpf"])
        .arg(&upper_tar)
        .arg("-C")
        .arg(&exp));
    let want = list_tree_without_root(&exp);
    assert_eq!(inspect(&out), want);
    assert_eq!(mounted_listing(&out, &w.path().join("mnt")), want);
    // Xattrs of every namespace, binary values included, reach the image.
    let img = dfagent_rafs::Image::open(out.join("bootstrap")).unwrap();
    let nid = img.lookup(img.root(), b"xattrs.bin").unwrap().unwrap().nid;
    let get = |n: &str| img.getxattr(nid, n.as_bytes()).unwrap().unwrap();
    assert_eq!(
        hex::encode(get("security.capability")),
        "0100000200200000000000000000000000000000"
    );
    assert_eq!(get("trusted.bin"), b"\x00\xff\n=");
    assert_eq!(
        hex::encode(get("system.posix_acl_access")),
        "02000000010006000000000002000400e80300000400040000000000100004000000000020000400\
         00000000"
    );
    // The old hard-link partner of hello.txt keeps the old bytes with nlink 1.
    assert!(want
        .iter()
        .any(|l| l.contains("\"path\": \"hello-link\"") && l.contains("\"nlink\": 1")));
}

#[test]
fn docker_archive_source_gives_the_same_image() {
    let w = work();
    let t = texture(w.path(), 1);
    let layout = w.path().join("L");
    oci_layout(&layout, "v1", &[gnu_tar(&t)], true);
    let archive = w.path().join("image.tar");
    sh(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:v1", p(&layout)))
        .arg(format!("docker-archive:{}", p(&archive))));
    let (a, b) = (w.path().join("a"), w.path().join("b"));
    build(&format!("oci:{}:v1", p(&layout)), &a, &[]);
    build(&format!("docker-archive:{}", p(&archive)), &b, &[]);
    check(&b);
    assert_eq!(inspect(&b), listing_without_root("texture.expected.jsonl"));
    // skopeo stores the layer uncompressed; the tar inside is the same, so is the image.
    assert_eq!(files(&a), files(&b));
}

#[test]
fn zstd_layers_and_every_compressor_digester_and_chunk_size() {
    let w = work();
    let t = texture(w.path(), 1);
    let layout = w.path().join("L");
    // A zstd-compressed layer (stored as given; the compression is found from the bytes).
    oci_layout(&layout, "v1", &[zstd(&gnu_tar(&t))], false);
    let src = format!("oci:{}:v1", p(&layout));
    let want = listing_without_root("texture.expected.jsonl");
    for (i, opts) in [
        &["--compressor", "lz4_block", "--digester", "sha256"][..],
        &["--compressor", "none", "--chunk-size", "64K"][..],
        &["--chunk-size", "0x1000", "--threads", "1"][..],
        &["--chunk-size", "16M"][..],
    ]
    .iter()
    .enumerate()
    {
        let out = w.path().join(format!("out{i}"));
        let s = build(&src, &out, opts);
        check(&out);
        assert_eq!(inspect(&out), want, "{opts:?}");
        assert_eq!(s["layers"], 1);
    }
    for bad in [
        ["--compressor", "gzip"],
        ["--digester", "md5"],
        ["--chunk-size", "32M"],
    ] {
        let never = w.path().join("never");
        let mut args = vec!["build", &src, "--output-dir", p(&never)];
        args.extend_from_slice(&bad);
        let o = run(&args);
        assert!(!o.status.success(), "{bad:?}");
        assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
        assert!(!never.exists(), "{bad:?}: the output dir was created");
    }
}

/// A ustar header for `name` with a raw `size` field (12 bytes) and a valid checksum.
fn header(name: &str, size_field: [u8; 12], typeflag: u8) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(&size_field);
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[test]
fn malformed_layers_fail_cleanly_and_write_nothing() {
    let w = work();
    let good = {
        let d = w.path().join("small");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), vec![7u8; 300_000]).unwrap();
        gnu_tar(&d)
    };
    let gz = gzip(&good);
    let mut absurd = header("huge", [0x80, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0], b'0');
    absurd.extend_from_slice(&[0u8; 1024]);
    let mut short = header("short", *b"77777777777\0", b'0');
    short.extend_from_slice(&[1u8; 4096]);
    let mut dotdot = Vec::new();
    for (name, flag) in [("../escape", b'0'), ("x", b'0')] {
        dotdot.extend(header(name, *b"00000000000\0", flag));
    }
    dotdot.extend_from_slice(&[0u8; 1024]);
    let mut wh = header("dir/.wh..", *b"00000000000\0", b'0');
    wh.extend_from_slice(&[0u8; 1024]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated gzip", gz[..gz.len() / 2].to_vec(), "gzip"),
        ("garbage tar", vec![0x5a; 5000], "checksum"),
        ("dotdot path", dotdot, ".."),
        ("absurd size", absurd, "absurd size"),
        ("size beyond the stream", short, "truncated"),
        ("whiteout of ..", wh, "whiteout"),
    ];
    for (what, layer, needle) in cases {
        let case = w.path().join(what.replace(' ', "-"));
        let layout = case.join("L");
        oci_layout(&layout, "v1", &[layer], false);
        // Stored as given; the compression is detected from the bytes.
        let out = case.join("out");
        let before: BTreeSet<PathBuf> = files(&case).into_iter().map(|(f, _)| f).collect();
        let o = run(&[
            "build",
            &format!("oci:{}:v1", p(&layout)),
            "--output-dir",
            p(&out),
            "-q",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: succeeded");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(err.contains(needle), "{what}: {err}");
        // Nothing but the (empty) blob directory was written, and nothing outside `out`.
        let after: BTreeSet<PathBuf> = files(&case).into_iter().map(|(f, _)| f).collect();
        assert_eq!(before, after, "{what}: files appeared");
        assert!(!out.join("bootstrap").exists());
    }
    // An absurd chunk size is an option error.
    let o = run(&[
        "build",
        &format!("oci:{}", p(&w.path().join("no-layout"))),
        "--output-dir",
        p(&w.path().join("o")),
        "--chunk-size",
        "3000",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("power of two"));
}

#[test]
fn push_and_registry_source_mount_from_the_registry() {
    let reg = Registry::start();
    let w = work();
    let store = w.path().join("store");
    let t = texture(w.path(), 1);
    let layout = w.path().join("L");
    oci_layout(&layout, "v1", &[gnu_tar(&t)], true);
    let nydus_ref = format!("{}/built/texture:v1", reg.host());
    let out = run(&[
        "build",
        &format!("oci:{}:v1", p(&layout)),
        "--push",
        &nydus_ref,
        "-q",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mp = w.path().join("mnt");
    std::fs::create_dir_all(&mp).unwrap();
    let m = dfagent_cli!()
        .with_store(&store)
        .mount(&nydus_ref, &mp, "none");
    assert_eq!(
        list_tree_without_root(&mp),
        listing_without_root("texture.expected.jsonl")
    );
    m.stop();

    // A Nydus image in the registry as the chunk dictionary: the new blob holds only what the
    // dictionary lacks, and the dictionary blob the image uses is fetched next to it.
    let t2 = texture(w.path(), 2);
    let layout2 = w.path().join("L2");
    oci_layout(&layout2, "v1", &[gnu_tar(&t2)], true);
    let out2 = w.path().join("out2");
    let s = build(
        &format!("oci:{}:v1", p(&layout2)),
        &out2,
        &["--chunk-dict", &nydus_ref],
    );
    check(&out2);
    assert_eq!(
        inspect(&out2),
        listing_without_root("texture2.expected.jsonl")
    );
    assert!(s["dict_chunks"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["blobs"].as_array().unwrap().len(), 2, "{s}");
    let t2_ref = format!("{}/built/texture2:v1", reg.host());
    ok(&[
        "build",
        &format!("oci:{}:v1", p(&layout2)),
        "--chunk-dict",
        &nydus_ref,
        "--push",
        &t2_ref,
        "-q",
    ]);
    let store5 = w.path().join("store5");
    let m = dfagent_cli!()
        .with_store(&store5)
        .mount(&t2_ref, &mp, "none");
    assert_eq!(
        list_tree_without_root(&mp),
        listing_without_root("texture2.expected.jsonl")
    );
    m.stop();

    // The source itself in the registry (as skopeo pushes it), converted from there.
    let src_ref = format!("{}/src/texture:v1", reg.host());
    sh(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", p(&layout)))
        .arg(format!("docker://{src_ref}")));
    let nydus2 = format!("{}/built/from-registry:v1", reg.host());
    let o = ok(&["build", &src_ref, "--push", &nydus2, "--json", "-q"]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(s["pushed"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    let store2 = w.path().join("store2");
    let m = dfagent_cli!()
        .with_store(&store2)
        .mount(&nydus2, &mp, "none");
    assert_eq!(
        list_tree_without_root(&mp),
        listing_without_root("texture.expected.jsonl")
    );
    m.stop();

    // --merge-platform: the tag names an index of the source and the Nydus manifests; the
    // mount picks the Nydus one.
    let merged = format!("{}/built/merged:v1", reg.host());
    ok(&[
        "build",
        &src_ref,
        "--push",
        &merged,
        "--merge-platform",
        "-q",
    ]);
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{merged}"))
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let index: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    assert_eq!(
        entries[1]["platform"]["os.features"][0],
        "nydus.remoteimage.v1"
    );
    let store4 = w.path().join("store4");
    let m = dfagent_cli!()
        .with_store(&store4)
        .mount(&merged, &mp, "none");
    assert_eq!(
        list_tree_without_root(&mp),
        listing_without_root("texture.expected.jsonl")
    );
    m.stop();

    // An OCI layout we wrote, copied to the registry by skopeo, mounts too.
    let ol = w.path().join("oci-out");
    ok(&[
        "build",
        &src_ref,
        "--oci-layout",
        &format!("{}:n", p(&ol)),
        "-q",
    ]);
    let nydus3 = format!("{}/built/via-skopeo:v1", reg.host());
    sh(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:n", p(&ol)))
        .arg(format!("docker://{nydus3}")));
    let store3 = w.path().join("store3");
    let m = dfagent_cli!()
        .with_store(&store3)
        .mount(&nydus3, &mp, "none");
    assert_eq!(
        list_tree_without_root(&mp),
        listing_without_root("texture.expected.jsonl")
    );
    m.stop();
}

/// `(tag, permissions, id)` of each entry of a binary `system.posix_acl_*` value, in order.
fn acl_entries(value: &[u8]) -> Vec<(u16, u16, u32)> {
    assert_eq!(value.get(..4), Some(&[2u8, 0, 0, 0][..]), "ACL version");
    assert_eq!(value.len() % 8, 4, "ACL length {}", value.len());
    value[4..]
        .chunks_exact(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect()
}

// ACL tags and the id of entries without a qualifier.
const A_USER_OBJ: u16 = 0x01;
const A_USER: u16 = 0x02;
const A_GROUP_OBJ: u16 = 0x04;
const A_GROUP: u16 = 0x08;
const A_MASK: u16 = 0x10;
const A_OTHER: u16 = 0x20;
const NO_ID: u32 = u32::MAX;

/// The ACL entries of `name`'s `system.posix_acl_{which}` xattr in `img` (a path of one or two
/// components under the root).
fn image_acl(img: &dfagent_rafs::Image, path: &str, which: &str) -> Vec<(u16, u16, u32)> {
    let mut nid = img.root();
    for c in path.split('/') {
        nid = img
            .lookup(nid, c.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{path} not in the image"))
            .nid;
    }
    let name = format!("system.posix_acl_{which}");
    let v = img
        .getxattr(nid, name.as_bytes())
        .unwrap()
        .unwrap_or_else(|| panic!("{path} has no {name}"));
    acl_entries(&v)
}

/// `s` without ANSI colour sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn tar_acls_text_drops_only_entries_without_numeric_ids() {
    let w = work();
    // 424242 and 434343 have no names here, so GNU tar writes them as numbers; root (0) has
    // one, so GNU tar writes `user:root:rw-` with no id at all.
    for (db, id) in [("passwd", "424242"), ("group", "434343")] {
        let o = Command::new("getent").args([db, id]).output().unwrap();
        assert!(!o.status.success(), "{db} {id} has a name on this machine");
    }
    let t = w.path().join("tree");
    std::fs::create_dir_all(t.join("dir")).unwrap();
    std::fs::write(t.join("file"), "acl\n").unwrap();
    let setfacl = |args: &[&str], path: &Path| sh(Command::new("setfacl").args(args).arg(path));
    setfacl(
        &[
            "-m",
            "u:424242:r--,u:root:rw-,g:434343:r-x,g:root:r--,m::rwx",
        ],
        &t.join("file"),
    );
    setfacl(&["-m", "u:424242:r-x,m::r-x"], &t.join("dir"));
    setfacl(
        &["-d", "-m", "u:root:rwx,u:424242:rwx,g:434343:r-x,m::rwx"],
        &t.join("dir"),
    );
    let tar = |extra: &[&str]| {
        let out = Command::new("tar")
            .args(["--format=pax", "--acls", "--numeric-owner"])
            .args(extra)
            .arg("-C")
            .arg(&t)
            .args(["-cf", "-", "."])
            .output()
            .unwrap();
        succeeded(out).stdout
    };
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    // With --xattrs GNU tar also writes the kernel's binary ACLs, which win over the text.
    let with_xattrs = tar(&["--xattrs"]);
    assert!(contains(
        &with_xattrs,
        "SCHILY.xattr.system.posix_acl_default="
    ));
    // Without, only text: named entries carry names and no ids.
    let text_only = tar(&[]);
    assert!(contains(&text_only, "SCHILY.acl.access="));
    assert!(contains(&text_only, "SCHILY.acl.default="));
    assert!(contains(&text_only, "user:root:rw-\n"));
    assert!(contains(&text_only, "user:424242:r--\n"));
    assert!(!contains(&text_only, "SCHILY.xattr."));

    // Hand-made records: an id-less name beside star's NAME:PERMS:ID form, numeric qualifiers
    // and the comma form, in any order.
    let crafted = w.path().join("crafted.tar");
    sh(Command::new("python3")
        .arg("-c")
        .arg(
            "import tarfile, io, sys\n\
             t = tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT)\n\
             f = tarfile.TarInfo('crafted.txt'); f.size = 2; f.mode = 0o640\n\
             f.pax_headers = {'SCHILY.acl.access': 'user::rw-\\nuser:nosuchuser:r--\\nuser:alice:r-x:424242\\nuser:4343:rw-\\ngroup::r--\\ngroup:staff:-w-:50\\nmask::rwx\\nother::---\\n'}\n\
             t.addfile(f, io.BytesIO(b'c\\n'))\n\
             d = tarfile.TarInfo('crafted-dir'); d.type = tarfile.DIRTYPE; d.mode = 0o755\n\
             d.pax_headers = {'SCHILY.acl.default': 'other::r-x,group:nosuchgroup:r--,user::rwx,mask::r-x,user:nosuchuser:rwx,group::r-x,group:434343:r-x'}\n\
             t.addfile(d)\n\
             t.close()\n",
        )
        .arg(&crafted));

    let layout = w.path().join("L");
    oci_layout(&layout, "xattrs", &[with_xattrs], true);
    oci_layout(
        &w.path().join("L2"),
        "text",
        &[text_only, std::fs::read(&crafted).unwrap()],
        true,
    );
    let kernel_out = w.path().join("out-xattrs");
    build(&format!("oci:{}:xattrs", p(&layout)), &kernel_out, &[]);
    let text_out = w.path().join("out-text");
    let o = dfagent_cli!().ok(&[
        "build",
        &format!("oci:{}:text", p(&w.path().join("L2"))),
        "--output-dir",
        p(&text_out),
        "-q",
    ]);
    check(&text_out);
    let stderr = strip_ansi(&String::from_utf8_lossy(&o.stderr));

    // The kernel's own binary ACLs (GNU tar's xattr records): every entry, named ones by id.
    let kernel = dfagent_rafs::Image::open(kernel_out.join("bootstrap")).unwrap();
    let file_acl = vec![
        (A_USER_OBJ, 6, NO_ID),
        (A_USER, 6, 0),
        (A_USER, 4, 424242),
        (A_GROUP_OBJ, 4, NO_ID),
        (A_GROUP, 4, 0),
        (A_GROUP, 5, 434343),
        (A_MASK, 7, NO_ID),
        (A_OTHER, 4, NO_ID),
    ];
    assert_eq!(image_acl(&kernel, "file", "access"), file_acl);
    let dir_access = vec![
        (A_USER_OBJ, 7, NO_ID),
        (A_USER, 5, 424242),
        (A_GROUP_OBJ, 5, NO_ID),
        (A_MASK, 5, NO_ID),
        (A_OTHER, 5, NO_ID),
    ];
    assert_eq!(image_acl(&kernel, "dir", "access"), dir_access);
    let dir_default = vec![
        (A_USER_OBJ, 7, NO_ID),
        (A_USER, 7, 0),
        (A_USER, 7, 424242),
        (A_GROUP_OBJ, 5, NO_ID),
        (A_GROUP, 5, 434343),
        (A_MASK, 7, NO_ID),
        (A_OTHER, 5, NO_ID),
    ];
    assert_eq!(image_acl(&kernel, "dir", "default"), dir_default);

    // From the text: the same bytes as the kernel's, less exactly the entries GNU tar wrote by
    // name (root's), which have no id.
    let text = dfagent_rafs::Image::open(text_out.join("bootstrap")).unwrap();
    let without_root = |acl: &[(u16, u16, u32)]| -> Vec<(u16, u16, u32)> {
        acl.iter()
            .copied()
            .filter(|&(tag, _, id)| !((tag == A_USER || tag == A_GROUP) && id == 0))
            .collect()
    };
    assert_eq!(image_acl(&text, "file", "access"), without_root(&file_acl));
    assert_eq!(image_acl(&text, "dir", "access"), dir_access);
    assert_eq!(
        image_acl(&text, "dir", "default"),
        without_root(&dir_default)
    );
    // The hand-made ones: only the id-less names are gone.
    assert_eq!(
        image_acl(&text, "crafted.txt", "access"),
        vec![
            (A_USER_OBJ, 6, NO_ID),
            (A_USER, 6, 4343),
            (A_USER, 5, 424242),
            (A_GROUP_OBJ, 4, NO_ID),
            (A_GROUP, 2, 50),
            (A_MASK, 7, NO_ID),
            (A_OTHER, 0, NO_ID),
        ]
    );
    assert_eq!(
        image_acl(&text, "crafted-dir", "default"),
        vec![
            (A_USER_OBJ, 7, NO_ID),
            (A_GROUP_OBJ, 5, NO_ID),
            (A_GROUP, 5, 434343),
            (A_MASK, 5, NO_ID),
            (A_OTHER, 5, NO_ID),
        ]
    );

    // One warning per dropped entry, naming the path, the ACL, the entry's kind and position,
    // never the name it held.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("without a numeric id"))
        .collect();
    // (Paths as the tars write them.)
    let expect = [
        ("./file", "access", "user", 2),
        ("./file", "access", "group", 5),
        ("./dir/", "default", "user", 2),
        ("crafted.txt", "access", "user", 2),
        ("crafted-dir/", "default", "group", 2),
        ("crafted-dir/", "default", "user", 5),
    ];
    assert_eq!(warnings.len(), expect.len(), "{stderr}");
    for (path, which, kind, position) in expect {
        assert!(
            warnings.iter().any(|l| l.contains("WARN")
                && l.contains(&format!("path={path} "))
                && l.contains(&format!("acl=\"{which}\""))
                && l.contains(&format!("entry=\"{kind}\""))
                && l.contains(&format!("position={position}"))),
            "no warning for {path} {which} {kind} {position}:\n{stderr}"
        );
    }
    for name in ["nosuchuser", "nosuchgroup"] {
        assert!(!stderr.contains(name), "{name} logged:\n{stderr}");
    }
    assert!(
        !warnings.iter().any(|l| l.contains("root")),
        "root logged:\n{stderr}"
    );

    // Text that is not an ACL fails the build, naming the entry and the fault, and leaves no
    // image.
    let bad = w.path().join("bad.tar");
    sh(Command::new("python3")
        .arg("-c")
        .arg(
            "import tarfile, io, sys\n\
             t = tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT)\n\
             f = tarfile.TarInfo('bad.txt'); f.size = 0\n\
             f.pax_headers = {'SCHILY.acl.access': 'user::rw-,user:1000:rwq,group::r--,mask::rw-,other::r--'}\n\
             t.addfile(f, io.BytesIO(b''))\n\
             t.close()\n",
        )
        .arg(&bad));
    let bad_layout = w.path().join("L3");
    oci_layout(&bad_layout, "bad", &[std::fs::read(&bad).unwrap()], false);
    let bad_out = w.path().join("out-bad");
    let o = run(&[
        "build",
        &format!("oci:{}:bad", p(&bad_layout)),
        "--output-dir",
        p(&bad_out),
        "-q",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a malformed ACL was accepted");
    assert!(
        err.contains("\"bad.txt\": malformed access ACL text: ACL entry 2: permissions \"rwq\""),
        "{err}"
    );
    assert!(!bad_out.join("bootstrap").exists());
}
