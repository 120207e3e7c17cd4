//! How records are laid out in RocksDB.
//!
//! Column families: `chunks` (digest → header + stored bytes), `access` (digest → last use and
//! size, small so recency updates never rewrite chunk data), `pins` (image + digest → nothing),
//! `meta` ([`MetaKey`] → bytes: image records, bootstraps, pulled marks).

use dfagent_core::{ChunkDigest, Compression, DigestAlgo};

use crate::error::StoreError;

pub(crate) const CF_CHUNKS: &str = "chunks";
pub(crate) const CF_ACCESS: &str = "access";
pub(crate) const CF_PINS: &str = "pins";
pub(crate) const CF_META: &str = "meta";

/// Key of a metadata record. The encodings are the on-disk keys of earlier versions, kept so
/// existing stores read on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum MetaKey<'a> {
    /// What the registry said about an image reference (an opaque record).
    Image(&'a str),
    /// A bootstrap, by the digest of the layer it came in.
    Bootstrap(&'a str),
    /// The image reference was pulled (its pins outlive its mounts).
    Pulled(&'a str),
}

impl MetaKey<'_> {
    pub(crate) fn encode(self) -> Vec<u8> {
        let (prefix, name) = match self {
            MetaKey::Image(r) => ("image/", r),
            MetaKey::Bootstrap(d) => ("bootstrap/", d),
            MetaKey::Pulled(r) => ("pulled/", r),
        };
        [prefix.as_bytes(), name.as_bytes()].concat()
    }
}

/// Version byte of chunk values.
const CHUNK_V1: u8 = 1;
/// Size of the header in front of a chunk's stored bytes.
pub(crate) const CHUNK_HEADER: usize = 6;

/// 33-byte key of a digest: algorithm, then the digest bytes.
pub(crate) fn digest_key(d: &ChunkDigest) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = match d.algo() {
        DigestAlgo::Blake3 => 0,
        DigestAlgo::Sha256 => 1,
    };
    k[1..].copy_from_slice(d.bytes());
    k
}

/// Digest from a 33-byte key.
pub(crate) fn parse_digest_key(k: &[u8]) -> Result<ChunkDigest, StoreError> {
    let bad = |detail: &str| StoreError::BadRecord {
        key: hex_key(k),
        detail: detail.into(),
    };
    if k.len() != 33 {
        return Err(bad("digest key is not 33 bytes"));
    }
    let algo = match k[0] {
        0 => DigestAlgo::Blake3,
        1 => DigestAlgo::Sha256,
        _ => return Err(bad("unknown digest algorithm")),
    };
    let mut b = [0u8; 32];
    b.copy_from_slice(&k[1..]);
    Ok(ChunkDigest::new(algo, b))
}

pub(crate) fn hex_key(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encode a chunk value.
pub(crate) fn chunk_value(
    compression: Compression,
    uncompressed_size: u32,
    data: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHUNK_HEADER + data.len());
    v.push(CHUNK_V1);
    // The store records compression with RAFS's ids (they fit a byte).
    v.push(compression.rafs_id() as u8);
    v.extend_from_slice(&uncompressed_size.to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// Decode a chunk value into (compression, uncompressed size, stored bytes range start).
pub(crate) fn parse_chunk_value(key: &[u8], v: &[u8]) -> Result<(Compression, u32), StoreError> {
    let bad = |detail: &str| StoreError::BadRecord {
        key: hex_key(key),
        detail: detail.into(),
    };
    if v.len() < CHUNK_HEADER {
        return Err(bad("chunk value shorter than its header"));
    }
    if v[0] != CHUNK_V1 {
        return Err(bad("unknown chunk value version"));
    }
    let compression =
        Compression::from_rafs_id(u32::from(v[1])).map_err(|_| bad("unknown compression"))?;
    let size = u32::from_le_bytes([v[2], v[3], v[4], v[5]]);
    Ok((compression, size))
}

/// Encode an access record: last-use tick and stored size.
pub(crate) fn access_value(tick: u64, size: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&tick.to_le_bytes());
    v[8..].copy_from_slice(&size.to_le_bytes());
    v
}

/// Decode an access record.
pub(crate) fn parse_access_value(key: &[u8], v: &[u8]) -> Result<(u64, u64), StoreError> {
    if v.len() != 16 {
        return Err(StoreError::BadRecord {
            key: hex_key(key),
            detail: "access record is not 16 bytes".into(),
        });
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&v[..8]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[8..]);
    Ok((u64::from_le_bytes(a), u64::from_le_bytes(b)))
}

/// Key of a pin: image name, a NUL, the digest key.
pub(crate) fn pin_key(image: &str, d: &ChunkDigest) -> Vec<u8> {
    let mut k = Vec::with_capacity(image.len() + 34);
    k.extend_from_slice(image.as_bytes());
    k.push(0);
    k.extend_from_slice(&digest_key(d));
    k
}

/// Prefix of all pins of an image.
pub(crate) fn pin_prefix(image: &str) -> Vec<u8> {
    let mut k = image.as_bytes().to_vec();
    k.push(0);
    k
}
