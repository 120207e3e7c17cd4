//! How records are laid out in RocksDB.
//!
//! Column families: `chunks` (digest → header + stored bytes, or for a chunk kept in a file of
//! its own, in the store's `chunks` directory under [`chunk_file_name`], header + the file's
//! length), `access` (digest → [`Access`]:
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
//! - version 3, 54 bytes, for a chunk kept in a file of its own: the byte `3`, then as version
//!   2, then the chunk record's compression (RAFS id, one byte) and size after decoding (u32
//!   LE). The store loads these at open, so a get of such a chunk opens its file without
//!   reading the chunk record first (one dependent disk read fewer on a cold page cache).

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

/// Version byte of chunk values that hold the stored bytes (after the header).
const CHUNK_V1: u8 = 1;
/// Version byte of chunk values whose stored bytes are in a file of their own (see
/// [`chunk_file_name`]); the value is the header and the file's length.
const CHUNK_V2_FILE: u8 = 2;
/// Size of the header in front of a chunk's stored bytes.
pub(crate) const CHUNK_HEADER: usize = 6;
/// Size of a file-backed chunk value: the header, then the file's length (u32 LE).
pub(crate) const CHUNK_FILE_VALUE: usize = CHUNK_HEADER + 4;

/// Where a chunk's stored bytes are, as its record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkPlace {
    /// In the record, after the header.
    Inline,
    /// In the chunk's own file, of this many bytes.
    File(u32),
}

/// What a chunk record says: encoding, size after decoding, where the bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkHeader {
    pub compression: Compression,
    pub uncompressed_size: u32,
    pub place: ChunkPlace,
}

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

/// Name of the file holding a file-backed chunk's stored bytes (in the store's `chunks`
/// directory): the hex of its 33-byte key, so the algorithm is part of the name.
pub(crate) fn chunk_file_name(d: &ChunkDigest) -> String {
    hex_key(&digest_key(d))
}

/// The digest a chunk file's name stands for (`None` for a name that is not one).
pub(crate) fn parse_chunk_file_name(name: &str) -> Option<ChunkDigest> {
    if name.len() != 66 || !name.is_ascii() {
        return None;
    }
    let mut k = [0u8; 33];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&name[2 * i..2 * i + 2], 16).ok()?;
    }
    parse_digest_key(&k).ok()
}

/// Encode an inline chunk value: the header, then the stored bytes.
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

/// Encode the value of a chunk whose `len` stored bytes are in its own file.
pub(crate) fn chunk_file_value(
    compression: Compression,
    uncompressed_size: u32,
    len: u32,
) -> [u8; CHUNK_FILE_VALUE] {
    let mut v = [0u8; CHUNK_FILE_VALUE];
    v[0] = CHUNK_V2_FILE;
    v[1] = compression.rafs_id() as u8;
    v[2..6].copy_from_slice(&uncompressed_size.to_le_bytes());
    v[6..10].copy_from_slice(&len.to_le_bytes());
    v
}

/// Decode a chunk value of either version.
pub(crate) fn parse_chunk_value(key: &[u8], v: &[u8]) -> Result<ChunkHeader, StoreError> {
    let bad = |detail: &str| StoreError::BadRecord {
        key: hex_key(key),
        detail: detail.into(),
    };
    if v.len() < CHUNK_HEADER {
        return Err(bad("chunk value shorter than its header"));
    }
    let place = match v[0] {
        CHUNK_V1 => ChunkPlace::Inline,
        CHUNK_V2_FILE if v.len() == CHUNK_FILE_VALUE => {
            ChunkPlace::File(u32::from_le_bytes([v[6], v[7], v[8], v[9]]))
        }
        CHUNK_V2_FILE => return Err(bad("file-backed chunk value is not 10 bytes")),
        _ => return Err(bad("unknown chunk value version")),
    };
    let compression =
        Compression::from_rafs_id(u32::from(v[1])).map_err(|_| bad("unknown compression"))?;
    let uncompressed_size = u32::from_le_bytes([v[2], v[3], v[4], v[5]]);
    Ok(ChunkHeader {
        compression,
        uncompressed_size,
        place,
    })
}

/// Version byte in front of an access record that names the chunk's blob (version 2).
const ACCESS_V2: u8 = 2;
/// Version byte of an access record that also carries a file-backed chunk's header (version 3).
const ACCESS_V3_FILE: u8 = 3;
/// Size of a version-1 access record: tick and size, no version byte, no blob.
const ACCESS_V1_LEN: usize = 16;
/// Size of a version-2 access record: version byte, tick, size, blob id.
const ACCESS_V2_LEN: usize = 1 + 16 + 32;
/// Size of a version-3 access record: version 2's fields, compression, size after decoding.
const ACCESS_V3_LEN: usize = ACCESS_V2_LEN + 1 + 4;

/// What a get needs to decode a chunk kept in a file of its own, besides the file: the
/// chunk record's header (the file's length is the access record's size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileHeader {
    pub compression: Compression,
    pub uncompressed_size: u32,
}

/// What an access record says about a stored chunk: its last use, its stored size, the blob
/// it first arrived from (`None` in records written before blobs were recorded) and, for a
/// chunk in a file of its own, its header (`None` in records written before version 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Access {
    /// Last-use tick (eviction order).
    pub tick: u64,
    /// Stored bytes.
    pub size: u64,
    /// The blob the chunk was stored for.
    pub blob: Option<BlobId>,
    /// The header of a file-backed chunk.
    pub file: Option<FileHeader>,
}

/// Encode an access record: version 3 (54 bytes) for a file-backed chunk with a known blob,
/// version 2 (49 bytes) for another chunk with a known blob, else version 1 (the 16 bytes of
/// earlier versions), so a record without a blob keeps its old form.
pub(crate) fn access_value(a: &Access) -> Vec<u8> {
    let mut v = Vec::with_capacity(ACCESS_V3_LEN);
    match (&a.blob, &a.file) {
        (Some(_), Some(_)) => v.push(ACCESS_V3_FILE),
        (Some(_), None) => v.push(ACCESS_V2),
        (None, _) => {}
    }
    v.extend_from_slice(&a.tick.to_le_bytes());
    v.extend_from_slice(&a.size.to_le_bytes());
    if let Some(b) = &a.blob {
        v.extend_from_slice(b.bytes());
        if let Some(f) = &a.file {
            // The store records compression with RAFS's ids (they fit a byte).
            v.push(f.compression.rafs_id() as u8);
            v.extend_from_slice(&f.uncompressed_size.to_le_bytes());
        }
    }
    v
}

/// Decode an access record of any version (told apart by length and version byte).
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
    let blob_at = |at: usize| {
        let mut b = [0u8; 32];
        b.copy_from_slice(&v[at..at + 32]);
        BlobId::from_bytes(b)
    };
    match v.len() {
        ACCESS_V1_LEN => Ok(Access {
            tick: u64_at(0),
            size: u64_at(8),
            blob: None,
            file: None,
        }),
        ACCESS_V2_LEN if v[0] == ACCESS_V2 => Ok(Access {
            tick: u64_at(1),
            size: u64_at(9),
            blob: Some(blob_at(17)),
            file: None,
        }),
        ACCESS_V3_LEN if v[0] == ACCESS_V3_FILE => {
            let compression = Compression::from_rafs_id(u32::from(v[ACCESS_V2_LEN]))
                .map_err(|_| bad("unknown compression in access record"))?;
            let at = ACCESS_V2_LEN + 1;
            let size = u64_at(9);
            if size > u64::from(u32::MAX) {
                return Err(bad("file-backed chunk larger than 4 GiB"));
            }
            Ok(Access {
                tick: u64_at(1),
                size,
                blob: Some(blob_at(17)),
                file: Some(FileHeader {
                    compression,
                    uncompressed_size: u32::from_le_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]]),
                }),
            })
        }
        ACCESS_V2_LEN | ACCESS_V3_LEN => Err(bad("unknown access record version")),
        _ => Err(bad("access record is neither 16, 49 nor 54 bytes")),
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
    fn chunk_values_of_both_places_read_and_file_names_round_trip() {
        let key = [0u8; 33];
        let inline = chunk_value(Compression::Zstd, 1000, b"abc");
        let h = parse_chunk_value(&key, &inline).unwrap();
        assert_eq!(
            h,
            ChunkHeader {
                compression: Compression::Zstd,
                uncompressed_size: 1000,
                place: ChunkPlace::Inline
            }
        );
        assert_eq!(&inline[CHUNK_HEADER..], b"abc");
        let file = chunk_file_value(Compression::None, 70_000, 70_000);
        assert_eq!(
            parse_chunk_value(&key, &file).unwrap().place,
            ChunkPlace::File(70_000)
        );
        assert!(parse_chunk_value(&key, &file[..8]).is_err());
        let mut unknown = file;
        unknown[0] = 9;
        assert!(parse_chunk_value(&key, &unknown).is_err());

        let d = DigestAlgo::Sha256.digest(b"x");
        let name = chunk_file_name(&d);
        assert_eq!(name.len(), 66);
        assert_eq!(parse_chunk_file_name(&name), Some(d));
        assert_eq!(parse_chunk_file_name("not-a-chunk"), None);
        assert_eq!(parse_chunk_file_name(&format!("ff{}", &name[2..])), None);
    }

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
                blob: None,
                file: None,
            }
        );
        // Without a blob the old form is still what is written.
        assert_eq!(access_value(&a), old);

        let with = Access {
            tick: 9,
            size: 10,
            blob: Some(BlobId::from_bytes([0xab; 32])),
            file: None,
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

        // A file-backed chunk's record carries its header (version 3).
        let file = Access {
            file: Some(FileHeader {
                compression: Compression::Zstd,
                uncompressed_size: 1 << 20,
            }),
            size: 300_000,
            ..with
        };
        let v3 = access_value(&file);
        assert_eq!(v3.len(), 54);
        assert_eq!(v3[0], 3);
        assert_eq!(parse_access_value(&key, &v3).unwrap(), file);
        let mut bad_compression = v3.clone();
        bad_compression[49] = 0xee;
        assert!(parse_access_value(&key, &bad_compression).is_err());
        let mut wrong_version = v3.clone();
        wrong_version[0] = 2;
        assert!(parse_access_value(&key, &wrong_version).is_err());
        let mut huge = v3;
        huge[9..17].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_access_value(&key, &huge).is_err());
        // Without a blob no header is written: the record keeps the old form.
        let no_blob = Access { blob: None, ..file };
        assert_eq!(access_value(&no_blob).len(), 16);
    }
}
