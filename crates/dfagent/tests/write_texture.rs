//! The RAFS v6 writer end to end: the texture tree (regenerated with `make-texture.py`) written
//! with every compression, both digesters and two chunk sizes must list exactly as the expected
//! listing through `dfagent inspect --json`, pass `dfagent check`, come out byte-identical on a
//! second build, match upstream nydus-image's blobs where the compressor is the same library
//! output (zstd, none) and its bootstrap byte for byte (but for three documented fields), and
//! show the same tree through a real FUSE mount.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use dfagent_core::{Compression, DigestAlgo};
use dfagent_rafs::write::{tree_from_dir, write_bootstrap, BlobWriter, BootstrapOptions};
use dfagent_rafs::Image;
use dfagent_test_support::dfagent_cli;
use dfagent_test_support::fixtures::{
    fixture, fixtures_dir, list_tree, listing_lines, make_texture, without_mtime,
};
use dfagent_test_support::mount::MountGuard;
use dfagent_test_support::mountinfo::mounts_at;
use dfagent_test_support::tmp_dir;
use dfagent_test_support::wait::wait_until;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn dfagent(args: &[&Path]) -> Output {
    dfagent_cli!().run(args)
}

/// Make texture tree 1 in a fresh temporary directory (needs root for owners and devices).
fn texture() -> tempfile::TempDir {
    let dir = tmp_dir("dfagent-write-texture-");
    make_texture(&dir.path().join("src"), 1);
    dir
}

/// Build `src` into `out/bootstrap` and `out/blobs/<id>`; returns the blob id.
fn build(src: &Path, out: &Path, opts: &BootstrapOptions) -> String {
    std::fs::create_dir_all(out.join("blobs")).unwrap();
    let mut blob = BlobWriter::new(
        Vec::new(),
        opts.chunk_size,
        opts.compression,
        opts.digest_algo,
    );
    let tree = tree_from_dir(src, &mut blob, opts).unwrap();
    let (bytes, spec) = blob.finish().unwrap();
    let id = spec.id.hex();
    std::fs::write(out.join("blobs").join(&id), bytes).unwrap();
    let boot = write_bootstrap(&tree, &[spec], opts).unwrap();
    std::fs::write(out.join("bootstrap"), boot).unwrap();
    id
}

/// Compare a listing with the expected texture listing (the root's mtime is not meaningful).
fn assert_listing(what: &str, got: &str) {
    let want = listing_lines("texture.expected.jsonl");
    let got: Vec<&str> = got.lines().collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    assert_eq!(got.len(), want.len(), "{what}: number of lines");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if i == 0 {
            assert_eq!(without_mtime(g), without_mtime(w), "{what}: root line");
        } else {
            assert_eq!(g, w, "{what}: line {}", i + 1);
        }
    }
}

#[test]
fn texture_round_trips_in_every_configuration() {
    let tmp = texture();
    let src = tmp.path().join("src");
    let upstream = fixtures_dir();
    for compression in [Compression::Zstd, Compression::Lz4Block, Compression::None] {
        for digest_algo in [DigestAlgo::Blake3, DigestAlgo::Sha256] {
            for chunk_size in [64 << 10, 1 << 20] {
                let what = format!("{compression}/{digest_algo}/{chunk_size}");
                let opts = BootstrapOptions {
                    chunk_size,
                    digest_algo,
                    compression,
                    prefetch: vec![],
                };
                let out = tmp.path().join(what.replace('/', "-"));
                let id = build(&src, &out, &opts);
                let boot = out.join("bootstrap");
                let blobs = out.join("blobs");
                let r = dfagent(&[
                    Path::new("inspect"),
                    &boot,
                    Path::new("--blob-dir"),
                    &blobs,
                    Path::new("--json"),
                ]);
                assert!(r.status.success(), "{what}: inspect: {}", text(&r.stderr));
                assert_listing(&what, &text(&r.stdout));
                let r = dfagent(&[Path::new("check"), &boot, Path::new("--blob-dir"), &blobs]);
                assert!(
                    r.status.success() && text(&r.stdout).contains("ok"),
                    "{what}: check: {}\n{}",
                    text(&r.stdout),
                    text(&r.stderr)
                );
                // Same input, same bytes.
                let again = tmp.path().join("again");
                let _ = std::fs::remove_dir_all(&again);
                assert_eq!(
                    build(&src, &again, &opts),
                    id,
                    "{what}: blob id of a second build"
                );
                assert!(
                    std::fs::read(again.join("bootstrap")).unwrap()
                        == std::fs::read(&boot).unwrap(),
                    "{what}: bootstrap of a second build differs"
                );
                // Upstream nydus-image made these from the same tree: its zstd and raw blobs
                // are the same bytes (chunk order, alignment, chunk-info array and header).
                let fixture = match (compression, chunk_size) {
                    (Compression::Zstd, 0x10_0000) => Some("v6-zstd-blake3"),
                    (Compression::None, 0x1_0000) => Some("v6-none-64k"),
                    _ => None,
                };
                if let Some(f) = fixture {
                    assert!(
                        upstream.join(f).join("blobs").join(&id).is_file(),
                        "{what}: blob {id} differs from upstream's {f} blob"
                    );
                }
            }
        }
    }
}

#[test]
fn texture_bootstrap_matches_upstream_byte_for_byte() {
    // Same tree, same options as the v6-zstd-blake3 fixture: the bootstrap must be upstream's,
    // byte for byte, except for three things upstream does differently on purpose or by accident:
    // the root's mtime (upstream stores 0, we keep the directory's), the order of xattr entries
    // (upstream's comes from a hash map; ours is sorted by name) and the chunk records' crc32
    // (upstream adds HAS_CRC32 and a checksum; `ChunkPlacement` carries none).
    let tmp = texture();
    for (name, compression, chunk_size) in [
        ("v6-zstd-blake3", Compression::Zstd, 1 << 20),
        ("v6-none-64k", Compression::None, 64 << 10),
    ] {
        let out = tmp.path().join(name);
        let opts = BootstrapOptions {
            chunk_size,
            digest_algo: DigestAlgo::Blake3,
            compression,
            prefetch: vec![],
        };
        build(&tmp.path().join("src"), &out, &opts);
        let ours = std::fs::read(out.join("bootstrap")).unwrap();
        let theirs = std::fs::read(fixture(name).join("bootstrap")).unwrap();
        compare_with_upstream(name, ours, theirs);
    }
}

fn compare_with_upstream(fixture: &str, ours: Vec<u8>, theirs: Vec<u8>) {
    assert_eq!(ours.len(), theirs.len(), "{fixture}: bootstrap size");
    let (mut a, mut b) = (ours.clone(), theirs.clone());
    let le16 = |v: &[u8], at: usize| u16::from_le_bytes([v[at], v[at + 1]]) as usize;
    let le32 = |v: &[u8], at: usize| u32::from_le_bytes(v[at..at + 4].try_into().unwrap()) as usize;
    let le64 = |v: &[u8], at: usize| u64::from_le_bytes(v[at..at + 8].try_into().unwrap()) as usize;
    let meta = le32(&ours, 1024 + 40) * 4096;
    let root = meta + le16(&ours, 1024 + 14) * 32;
    for v in [&mut a, &mut b] {
        v[root + 32..root + 44].fill(0);
    }
    let img_a = Image::from_bytes(ours.clone()).unwrap();
    let img_b = Image::from_bytes(theirs.clone()).unwrap();
    let mut with_xattrs = 0;
    img_a
        .walk(|e| {
            let at = meta + e.inode.nid as usize * 32;
            let icount = le16(&ours, at + 2);
            if icount > 0 {
                let mut xa = img_a.xattrs(e.inode.nid).unwrap();
                let mut xb = img_b.xattrs(e.inode.nid).unwrap();
                xa.sort_by(|p, q| p.name.cmp(&q.name));
                xb.sort_by(|p, q| p.name.cmp(&q.name));
                assert_eq!(
                    xa,
                    xb,
                    "{fixture} {}: xattrs",
                    String::from_utf8_lossy(&e.path)
                );
                let size = 12 + (icount - 1) * 4;
                a[at + 64..at + 64 + size].fill(0);
                b[at + 64..at + 64 + size].fill(0);
                with_xattrs += 1;
            }
            Ok(())
        })
        .unwrap();
    assert!(
        with_xattrs >= 2,
        "the texture tree has xattrs on a file and a directory"
    );
    let (cto, cts) = (le64(&ours, 1152 + 24), le64(&ours, 1152 + 32));
    assert!(cts > 0);
    for rec in (cto..cto + cts).step_by(80) {
        // Upstream adds HAS_CRC32 (0x10) to the same COMPRESSED bit, and the crc itself.
        a[rec + 36] |= 0x10;
        a[rec + 76..rec + 80].fill(0);
        b[rec + 76..rec + 80].fill(0);
    }
    let first = a.iter().zip(&b).position(|(x, y)| x != y);
    assert!(
        first.is_none(),
        "{fixture}: bootstraps differ first at byte {first:?}"
    );
}

#[test]
fn written_image_mounts_over_fuse() {
    let tmp = texture();
    let out = tmp.path().join("img");
    let opts = BootstrapOptions {
        chunk_size: 64 << 10,
        digest_algo: DigestAlgo::Sha256,
        compression: Compression::Lz4Block,
        prefetch: vec![],
    };
    build(&tmp.path().join("src"), &out, &opts);
    let mp = tmp.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let log = tmp.path().join("mount.log");
    let cli = dfagent_cli!();
    let child = cli
        .command()
        .arg("mount")
        .arg("--bootstrap")
        .arg(out.join("bootstrap"))
        .arg("--blob-dir")
        .arg(out.join("blobs"))
        .arg(&mp)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawning dfagent mount");
    // Kills the mount process and detaches the mount on drop, even when the test fails.
    let mut m = MountGuard::new(&mp);
    m.adopt(child);
    let served = wait_until(Duration::from_secs(10), || {
        mounts_at(&mp) == 1 && std::fs::read(mp.join("hello.txt")).is_ok()
    });
    assert!(
        served,
        "mount not serving within 10 s: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_listing("FUSE mount", &list_tree(&mp).join("\n"));
    let r = dfagent(&[Path::new("umount"), &mp]);
    assert!(r.status.success(), "umount: {}", text(&r.stderr));
    assert!(wait_until(Duration::from_secs(10), || m
        .child(0)
        .try_wait()
        .ok()
        .flatten()
        .is_some()));
}
