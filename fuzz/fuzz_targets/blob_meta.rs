//! Any bytes as the tail of a data blob: the tar headers, the TOC, the 4 KiB chunk-info header and
//! the chunk-info array before it must parse or fail cleanly. The blob table entries come from
//! the fixture images (compiled in), plus one made to agree with whatever header the input has,
//! so that the chunk-info decoding is reached as well.
#![no_main]

use std::sync::OnceLock;

use dfagent_core::{Compression, MAX_CHUNK_SIZE};
use dfagent_rafs::blob_meta::{
    self, BlobMetaHeader, META_HEADER_SIZE, META_MAGIC, TAR_HEADER_SIZE,
};
use dfagent_rafs::layout::blob_meta_header;
use dfagent_rafs::{BlobInfo, Image};
use libfuzzer_sys::fuzz_target;

const BOOTSTRAPS: [&[u8]; 5] = [
    include_bytes!("../../../shared/fixtures/rafs/v6-zstd-blake3/bootstrap"),
    include_bytes!("../../../shared/fixtures/rafs/v6-lz4-sha256/bootstrap"),
    include_bytes!("../../../shared/fixtures/rafs/v6-none-64k/bootstrap"),
    include_bytes!("../../../shared/fixtures/rafs/v6-chunkdict/bootstrap"),
    include_bytes!("../../../shared/fixtures/rafs/v6-nydusify-2layer/bootstrap"),
];

/// Every blob table entry of every fixture image.
fn fixture_blobs() -> &'static [BlobInfo] {
    static BLOBS: OnceLock<Vec<BlobInfo>> = OnceLock::new();
    BLOBS.get_or_init(|| {
        BOOTSTRAPS
            .iter()
            .flat_map(|b| {
                Image::from_bytes(b.to_vec())
                    .expect("fixture bootstrap")
                    .blobs()
                    .to_vec()
            })
            .collect()
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A blob table entry agreeing with the header `h` (so `BlobMetaHeader::parse` gets past its
/// consistency checks), or `None` when the header names no compression this reader knows.
fn matching_blob(base: &BlobInfo, h: &[u8]) -> Option<BlobInfo> {
    let ci_compression =
        Compression::from_rafs_id(u32_at(h, blob_meta_header::CI_COMPRESSOR)).ok()?;
    Some(BlobInfo {
        chunk_count: u32_at(h, blob_meta_header::CI_ENTRIES),
        ci_offset: u64_at(h, blob_meta_header::CI_OFFSET),
        ci_compressed_size: u64_at(h, blob_meta_header::CI_COMPRESSED_SIZE),
        ci_uncompressed_size: u64_at(h, blob_meta_header::CI_UNCOMPRESSED_SIZE),
        ci_compression,
        features: u32_at(h, blob_meta_header::FEATURES),
        ..base.clone()
    })
}

/// Parse `h` as a chunk-info header and, when it parses, the `ci_compressed_size` bytes just
/// before it (`before`) as the chunk-info array it describes.
fn header_and_array(h: &[u8], before: &[u8], blob: &BlobInfo) {
    let _ = blob_meta::meta_range(blob);
    let Ok(hdr) = BlobMetaHeader::parse(h, blob) else {
        return;
    };
    let ci_len = hdr.ci_compressed_size;
    if ci_len <= before.len() as u64 {
        let stored = &before[before.len() - ci_len as usize..];
        if let Ok(infos) = blob_meta::parse_chunk_infos(&hdr, stored) {
            assert_eq!(infos.len() as u64, u64::from(hdr.ci_entries));
            for i in &infos {
                assert!(i.uncompressed_size >= 1 && i.uncompressed_size <= MAX_CHUNK_SIZE);
            }
        }
    }
    // The whole input as the array too (any length).
    let _ = blob_meta::parse_chunk_infos(&hdr, before);
}

fuzz_target!(|data: &[u8]| {
    let len = data.len();
    let tar = TAR_HEADER_SIZE as usize;

    // The blob's last 512 bytes: a TOC's tar header when the blob has one.
    if len >= tar {
        let last = &data[len - tar..];
        let _ = blob_meta::parse_tar_header(last);
        let _ = blob_meta::parse_tar_header(&data[..tar]);
        if let Ok(Some((off, size))) = blob_meta::toc_location(last, len as u64) {
            assert!(off + size + TAR_HEADER_SIZE == len as u64);
            if let Ok(entries) =
                blob_meta::parse_toc(&data[off as usize..(off + size) as usize], len as u64)
            {
                for e in entries {
                    assert!(e.compressed_offset + e.compressed_size <= len as u64);
                }
            }
        }
        // Any 512 bytes is never a panic either, nor a short or long slice.
        let _ = blob_meta::parse_tar_header(&data[..tar - 1]);
        let _ = blob_meta::toc_location(&data[1..], len as u64);
    }
    // The whole input as TOC entries.
    let _ = blob_meta::parse_toc(data, len as u64);
    let _ = blob_meta::parse_toc(data, u64::MAX);

    // The blob's last 4096 bytes as the chunk-info header (where a plain blob has it), with the
    // chunk-info array right before it.
    let hs = META_HEADER_SIZE as usize;
    if len >= hs {
        let (before, h) = data.split_at(len - hs);
        let blobs = fixture_blobs();
        for blob in blobs {
            header_and_array(h, before, blob);
        }
        if u32_at(h, blob_meta_header::MAGIC) == META_MAGIC
            && u32_at(h, blob_meta_header::MAGIC_END) == META_MAGIC
        {
            if let Some(blob) = matching_blob(&blobs[0], h) {
                header_and_array(h, before, &blob);
            }
        }
        // And the first 4096 bytes, for inputs that start with a header.
        let (h, after) = data.split_at(hs);
        if let Some(blob) = matching_blob(&blobs[0], h) {
            if let Ok(hdr) = BlobMetaHeader::parse(h, &blob) {
                let _ = blob_meta::parse_chunk_infos(&hdr, after);
            }
        }
    }
});
