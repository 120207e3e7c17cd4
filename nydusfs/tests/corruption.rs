//! A chunk whose stored bytes were damaged is never served: reading it fails with EIO, and every
//! other file still reads correctly.

pub mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use common::{file_chunk_refs, TestMount};
use dfagent_core::decode_chunk;
use dfagent_resolver::BlobDirTier;
use dfagent_test_support::fixtures::{
    expected_file, expected_files, fixture, sha256_hex, TEXTURE_IMAGES,
};
use dfagent_test_support::tmp_dir;
use dfagent_test_support::wait::bounded;

fn corrupt_chunk_gives_eio(image: &str) {
    let img = common::open_image(image);
    let chunks = file_chunk_refs(&img, "multi-chunk.bin");
    assert!(chunks.len() > 1, "{image}: multi-chunk.bin has one chunk");
    let bad = chunks[1];

    // Copy the blobs and flip one byte in the middle of the second chunk's stored range.
    let dir = tmp_dir(&format!("nydusfs-corrupt-{image}-"));
    let blobs = dir.path().join("blobs");
    std::fs::create_dir(&blobs).unwrap();
    for e in std::fs::read_dir(fixture(image).join("blobs")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), blobs.join(e.file_name())).unwrap();
    }
    let flipped = bad.compressed_offset + u64::from(bad.compressed_size) / 2;
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(blobs.join(bad.blob.hex()))
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, flipped).unwrap();
        b[0] ^= 0x5a;
        f.write_all_at(&b, flipped).unwrap();
    }

    // Which files have their bytes at the flipped position: multi-chunk.bin and its hard link.
    let hit = |path: &str| {
        file_chunk_refs(&img, path)
            .iter()
            .any(|c| c.blob == bad.blob && c.blob_range().contains(&flipped))
    };
    let files = expected_files(image);
    let (affected, clean): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| hit(&f.path));
    let mut affected: Vec<_> = affected.into_iter().map(|f| f.path).collect();
    affected.sort();
    assert_eq!(
        affected,
        ["bin/hardlink-multi", "multi-chunk.bin"],
        "{image}"
    );

    let m = TestMount::with_tier(image, Arc::new(BlobDirTier::new(&blobs)));
    let p = m.join("multi-chunk.bin");
    let errs = bounded(
        "reading the corrupted file",
        Duration::from_secs(10),
        move || {
            // Twice: a failure is not remembered, the second read verifies again and fails again.
            [std::fs::read(&p), std::fs::read(&p)]
        },
    );
    for r in errs {
        match r {
            Ok(d) => panic!(
                "{image}: reading a corrupted file succeeded ({} bytes, sha256 {})",
                d.len(),
                sha256_hex(&d)
            ),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{image}: {e}"),
        }
    }
    assert!(
        m.metrics.snapshot().read_errors >= 2,
        "{image}: read errors not counted"
    );

    // The intact first chunk of the same file still reads (a positioned read inside it).
    let first = chunks[0];
    let stored = BlobDirTier::new(fixture(image).join("blobs"))
        .read_stored(&first)
        .unwrap()
        .unwrap();
    let want = decode_chunk(&first, &stored).unwrap();
    let p = m.join("multi-chunk.bin");
    let got = bounded(
        "reading the intact chunk",
        Duration::from_secs(10),
        move || {
            let f = std::fs::File::open(p)?;
            let mut buf = vec![0u8; 4096];
            f.read_exact_at(&mut buf, 8192)?;
            std::io::Result::Ok(buf)
        },
    )
    .unwrap_or_else(|e| panic!("{image}: reading the intact first chunk: {e}"));
    assert_eq!(got, want[8192..8192 + 4096]);

    // Every other file reads correctly.
    let root = m.path().to_path_buf();
    let n = clean.len();
    let image_name = image.to_owned();
    bounded(
        "reading the intact files",
        Duration::from_secs(60),
        move || {
            for f in clean {
                let d = std::fs::read(root.join(&f.path))
                    .unwrap_or_else(|e| panic!("{image_name}: reading intact {}: {e}", f.path));
                assert_eq!(
                    sha256_hex(&d),
                    f.sha256,
                    "{image_name}: {}: wrong bytes",
                    f.path
                );
            }
        },
    );
    assert!(n > 600);
    assert_eq!(
        expected_file(image, "multi-chunk.bin").size,
        2109497,
        "fixture changed"
    );
    m.unmount();
}

#[test]
fn corrupt_chunk_gives_eio_zstd_blake3() {
    corrupt_chunk_gives_eio(TEXTURE_IMAGES[0]);
}

#[test]
fn corrupt_chunk_gives_eio_lz4_sha256() {
    corrupt_chunk_gives_eio(TEXTURE_IMAGES[1]);
}

#[test]
fn corrupt_chunk_gives_eio_none_64k() {
    corrupt_chunk_gives_eio(TEXTURE_IMAGES[2]);
}

#[test]
fn missing_blob_gives_eio() {
    // A blob directory without the blob: the tier answers nothing, the read fails with EIO.
    let image = "v6-zstd-blake3";
    let dir = tmp_dir("nydusfs-noblob-");
    let m = TestMount::with_tier(image, Arc::new(BlobDirTier::new(dir.path())));
    let p = m.join("hello.txt");
    let r = bounded(
        "reading without the blob",
        Duration::from_secs(10),
        move || std::fs::read(p),
    );
    let e = r.expect_err("read without the blob succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // Metadata needs no blob.
    assert_eq!(std::fs::metadata(m.join("hello.txt")).unwrap().len(), 13);
    m.unmount();
}
