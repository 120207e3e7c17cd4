//! The `dfagent` binary against the real Nydus images in `shared/fixtures/rafs`: `inspect --json`
//! reproduces each image's expected listing, `check` passes, and a single flipped byte inside a
//! chunk makes both commands fail, naming the chunk digest and its blob offset.

use std::path::Path;
use std::process::Output;

use dfagent_core::Compression;
use dfagent_rafs::{FileChunk, Image};
use dfagent_test_support::dfagent_cli;
use dfagent_test_support::fixtures::{fixtures_dir, listing_of, without_mtime, ALL_IMAGES};
use serde_json::Value;

fn dfagent(args: &[&Path]) -> Output {
    dfagent_cli!().run(args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `inspect BOOTSTRAP --blob-dir DIR --json`
fn inspect(bootstrap: &Path, blob_dir: &Path) -> Output {
    dfagent(&[
        Path::new("inspect"),
        bootstrap,
        Path::new("--blob-dir"),
        blob_dir,
        Path::new("--json"),
    ])
}

/// `check BOOTSTRAP --blob-dir DIR`
fn check(bootstrap: &Path, blob_dir: &Path) -> Output {
    dfagent(&[
        Path::new("check"),
        bootstrap,
        Path::new("--blob-dir"),
        blob_dir,
    ])
}

#[test]
fn inspect_json_matches_the_expected_listings() {
    let dir = fixtures_dir();
    for name in ALL_IMAGES {
        let listing = listing_of(name);
        let fx = dir.join(name);
        let out = inspect(&fx.join("bootstrap"), &fx.join("blobs"));
        assert!(
            out.status.success(),
            "{name}: inspect failed: {}",
            text(&out.stderr)
        );
        let got = text(&out.stdout);
        let want = std::fs::read_to_string(dir.join(listing)).unwrap();
        let got: Vec<&str> = got.lines().collect();
        let want: Vec<&str> = want.lines().collect();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let root = serde_json::from_str::<Value>(w).unwrap()["path"] == ".";
            // The root's mtime is not meaningful in single-layer images (the builder stores 0
            // and the listing has the source directory's); every other line must match exactly.
            if root {
                assert_eq!(
                    without_mtime(g),
                    without_mtime(w),
                    "{name}: line {} (root, mtime ignored)",
                    i + 1
                );
            } else {
                assert_eq!(g, w, "{name}: line {}", i + 1);
            }
        }
        assert_eq!(got.len(), want.len(), "{name}: number of lines");
    }
}

#[test]
fn merged_image_root_mtime_is_real() {
    // The nydusify merge stores the root's real mtime: for that image the root line matches too.
    let dir = fixtures_dir();
    let fx = dir.join("v6-nydusify-2layer");
    let out = inspect(&fx.join("bootstrap"), &fx.join("blobs"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = std::fs::read_to_string(dir.join("v6-nydusify-2layer.expected.jsonl")).unwrap();
    assert_eq!(text(&out.stdout).lines().next(), want.lines().next());
}

#[test]
fn check_passes_on_every_fixture() {
    let dir = fixtures_dir();
    for name in ALL_IMAGES {
        let fx = dir.join(name);
        let out = check(&fx.join("bootstrap"), &fx.join("blobs"));
        assert!(
            out.status.success(),
            "{name}: check failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("ok"),
            "{name}: {}",
            text(&out.stdout)
        );

        let out = dfagent(&[
            Path::new("check"),
            &fx.join("bootstrap"),
            Path::new("--blob-dir"),
            &fx.join("blobs"),
            Path::new("--json"),
        ]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["problems"], Value::Array(vec![]), "{name}");
        assert!(v["chunks"].as_u64().unwrap() > 0, "{name}: {v}");
    }
}

/// The chunks of `path` in the image.
fn file_chunks(img: &Image, path: &str) -> Vec<FileChunk> {
    let mut nid = img.root();
    for part in path.split('/') {
        nid = img.lookup(nid, part.as_bytes()).unwrap().unwrap().nid;
    }
    let inode = img.inode(nid).unwrap();
    img.chunks(&inode, 0, inode.size).unwrap()
}

/// Copy the fixture's blobs, flip one byte in the middle of `chunk`'s stored bytes, and check
/// that both `check` and `inspect --blob-dir` fail naming the chunk and its offset.
fn flipped_chunk_is_reported(name: &str, chunk: &FileChunk) {
    let fx = fixtures_dir().join(name);
    let bootstrap = fx.join("bootstrap");
    let c = &chunk.chunk;
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fx.join("blobs")).unwrap() {
        let entry = entry.unwrap();
        let dest = tmp.path().join(entry.file_name());
        std::fs::copy(entry.path(), &dest).unwrap();
        let mut perm = std::fs::metadata(&dest).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(&dest, perm).unwrap();
    }
    let blob_path = tmp.path().join(c.blob.hex());
    let mut blob = std::fs::read(&blob_path).unwrap();
    let at = (c.compressed_offset + u64::from(c.compressed_size) / 2) as usize;
    blob[at] ^= 0x40;
    std::fs::write(&blob_path, &blob).unwrap();

    let digest = c.digest.to_string();
    assert!(digest.starts_with("blake3:"), "{digest}");
    let offset = format!("offset {}", c.compressed_offset);

    // The problem lines themselves (not only log lines) must name the chunk and the offset.
    let names_chunk = |l: &&str| l.contains(&digest) && l.contains(&offset);

    let out = check(&bootstrap, tmp.path());
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{name}: check passed a flipped byte\n{err}"
    );
    assert!(
        err.lines()
            .filter(|l| l.starts_with("problem: "))
            .any(|l| names_chunk(&l)),
        "{name}: no check problem names {digest} at {offset}:\n{err}"
    );
    // The blob file no longer has the sha256 it is named by: reported as well.
    assert!(err.contains("has sha256"), "{name}: {err}");

    let out = inspect(&bootstrap, tmp.path());
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{name}: inspect passed a flipped byte\n{err}"
    );
    assert!(
        err.lines()
            .filter(|l| l.starts_with("dfagent: "))
            .any(|l| names_chunk(&l)),
        "{name}: inspect's error does not name {digest} at {offset}:\n{err}"
    );

    // The untouched blobs still pass.
    assert!(check(&bootstrap, &fx.join("blobs")).status.success());
}

#[test]
fn flipped_byte_in_a_zstd_chunk_is_reported() {
    let name = "v6-zstd-blake3";
    let img = Image::open(fixtures_dir().join(name).join("bootstrap")).unwrap();
    let chunks = file_chunks(&img, "multi-chunk.bin");
    assert!(chunks.len() >= 2);
    // multi-chunk.bin does not compress (its chunks are stored raw even in a zstd image), so
    // also take a chunk that is stored as a zstd frame.
    flipped_chunk_is_reported(name, &chunks[1]);
    let compressed = file_chunks(&img, "text/big.txt")
        .into_iter()
        .find(|c| c.chunk.compression == Compression::Zstd)
        .expect("a zstd-compressed chunk in text/big.txt");
    flipped_chunk_is_reported(name, &compressed);
}

#[test]
fn flipped_byte_in_an_uncompressed_chunk_is_reported() {
    let name = "v6-none-64k";
    let img = Image::open(fixtures_dir().join(name).join("bootstrap")).unwrap();
    let chunks = file_chunks(&img, "multi-chunk.bin");
    assert!(chunks.len() > 2);
    assert!(chunks
        .iter()
        .all(|c| c.chunk.compression == Compression::None));
    flipped_chunk_is_reported(name, &chunks[2]);
}
