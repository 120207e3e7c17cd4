//! How records are laid out in RocksDB.
//!
//! Column families: `chunks` (digest → header + stored bytes), `access` (digest → [`Access`]:
//! last use, size and the blob the chunk arrived from; small so recency updates never rewrite
//! chunk data), `pins` (image + digest → nothing), `meta` ([`MetaKey`] → bytes: image records,
//! bootstraps, pulled marks).
//!
//! Access records come in two versions, told apart by length:
//! - version 1, 16 bytes: last-use tick (u64 LE), stored size (u64 LE). Written by stores before
//!   blobs were recorded, and still for a chunk whose blob is unknown; such a chunk counts under
//!   no blob.
//! - version 2, 49 bytes: the byte `2`, tick (u64 LE), size (u64 LE), the 32 bytes of the
//!   [`BlobId`] the chunk first arrived from. The store rebuilds its per-blob chunk counts from
//!   these at open.

use dfagent_core::{BlobId, ChunkDigest, Compression, DigestAlgo};

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

/// Version byte in front of an access record that names the chunk's blob (version 2).
const ACCESS_V2: u8 = 2;
/// Size of a version-1 access record: tick and size, no version byte, no blob.
const ACCESS_V1_LEN: usize = 16;
/// Size of a version-2 access record: version byte, tick, size, blob id.
const ACCESS_V2_LEN: usize = 1 + 16 + 32;

/// What an access record says about a stored chunk: its last use, its stored size and the
/// blob it first arrived from (`None` in records written before blobs were recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Access {
    /// Last-use tick (eviction order).
    pub tick: u64,
    /// Stored bytes.
    pub size: u64,
    /// The blob the chunk was stored for.
    pub blob: Option<BlobId>,
}

/// Encode an access record: version 2 (49 bytes) when the blob is known, else version 1 (the
/// 16 bytes of earlier versions), so a record without a blob keeps its old form.
pub(crate) fn access_value(a: &Access) -> Vec<u8> {
    let mut v = Vec::with_capacity(ACCESS_V2_LEN);
    if a.blob.is_some() {
        v.push(ACCESS_V2);
    }
    v.extend_from_slice(&a.tick.to_le_bytes());
    v.extend_from_slice(&a.size.to_le_bytes());
    if let Some(b) = &a.blob {
        v.extend_from_slice(b.bytes());
    }
    v
}

/// Decode an access record of either version (told apart by length).
pub(crate) fn parse_access_value(key: &[u8], v: &[u8]) -> Result<Access, StoreError> {
    let bad = |detail: &str| StoreError::BadRecord {
        key: hex_key(key),
        detail: detail.into(),
    };
    let u64_at = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&v[at..at + 8]);
        u64::from_le_bytes(a)
    };
    match v.len() {
        ACCESS_V1_LEN => Ok(Access {
            tick: u64_at(0),
            size: u64_at(8),
            blob: None,
        }),
        ACCESS_V2_LEN if v[0] == ACCESS_V2 => {
            let mut b = [0u8; 32];
            b.copy_from_slice(&v[17..]);
            Ok(Access {
                tick: u64_at(1),
                size: u64_at(9),
                blob: Some(BlobId::from_bytes(b)),
            })
        }
        ACCESS_V2_LEN => Err(bad("unknown access record version")),
        _ => Err(bad("access record is neither 16 nor 49 bytes")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_records_of_both_versions_read() {
        let key = [0u8; 33];
        // A record as stores before version 2 wrote it: tick then size, 16 bytes.
        let mut old = Vec::new();
        old.extend_from_slice(&7u64.to_le_bytes());
        old.extend_from_slice(&4096u64.to_le_bytes());
        let a = parse_access_value(&key, &old).unwrap();
        assert_eq!(
            a,
            Access {
                tick: 7,
                size: 4096,
                blob: None
            }
        );
        // Without a blob the old form is still what is written.
        assert_eq!(access_value(&a), old);

        let with = Access {
            tick: 9,
            size: 10,
            blob: Some(BlobId::from_bytes([0xab; 32])),
        };
        let v = access_value(&with);
        assert_eq!(v.len(), 49);
        assert_eq!(v[0], 2);
        assert_eq!(parse_access_value(&key, &v).unwrap(), with);

        let mut wrong_version = v.clone();
        wrong_version[0] = 3;
        assert!(parse_access_value(&key, &wrong_version).is_err());
        assert!(parse_access_value(&key, &v[..20]).is_err());
        assert!(parse_access_value(&key, &[]).is_err());
    }
}
