//! Helpers shared by the store's integration tests: made-up chunks, blob ids and configs.
#![allow(dead_code)]

use dfagent_core::{BlobId, ChunkDigest, DigestAlgo};
use dfagent_store::StoreConfig;

/// Chunk `i`: `len` bytes, distinct for every `i` (its bytes first), and its digest.
pub fn chunk(i: u32, len: usize) -> (ChunkDigest, Vec<u8>) {
    let data: Vec<u8> = i
        .to_le_bytes()
        .into_iter()
        .chain((4..len).map(|j| (j as u32).wrapping_mul(17).wrapping_add(i * 7) as u8))
        .take(len)
        .collect();
    (DigestAlgo::Blake3.digest(&data), data)
}

/// A blob id for tests.
pub fn blob(i: u8) -> BlobId {
    BlobId::from_bytes([i; 32])
}

/// Default settings with `capacity` bytes.
pub fn config(capacity: u64) -> StoreConfig {
    StoreConfig {
        capacity,
        ..StoreConfig::default()
    }
}
