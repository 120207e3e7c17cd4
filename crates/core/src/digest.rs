//! Content digests of chunks. The same bytes have one identity per algorithm, so a digest always
//! carries its algorithm.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// Hash algorithm of a chunk digest, as recorded in a Nydus image.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DigestAlgo {
    /// BLAKE3 with 32-byte output: Nydus' default.
    Blake3,
    /// SHA-256.
    Sha256,
}

impl DigestAlgo {
    /// Name used in digest strings (`blake3:…`, `sha256:…`).
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgo::Blake3 => "blake3",
            DigestAlgo::Sha256 => "sha256",
        }
    }

    /// Digest `data` with this algorithm.
    pub fn digest(self, data: &[u8]) -> ChunkDigest {
        let bytes: [u8; 32] = match self {
            DigestAlgo::Blake3 => *blake3::hash(data).as_bytes(),
            DigestAlgo::Sha256 => sha2::Sha256::digest(data).into(),
        };
        ChunkDigest { algo: self, bytes }
    }
}

impl fmt::Display for DigestAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of a chunk: the digest of its uncompressed bytes and the algorithm that made it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkDigest {
    algo: DigestAlgo,
    bytes: [u8; 32],
}

impl ChunkDigest {
    /// A digest from its algorithm and raw 32 bytes.
    pub fn new(algo: DigestAlgo, bytes: [u8; 32]) -> Self {
        Self { algo, bytes }
    }

    /// The algorithm.
    pub fn algo(&self) -> DigestAlgo {
        self.algo
    }

    /// The raw digest bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Whether `data` has this digest.
    pub fn matches(&self, data: &[u8]) -> bool {
        self.algo.digest(data) == *self
    }

    /// Lower-case hex of the digest bytes, without the algorithm.
    pub fn hex(&self) -> String {
        hex::encode(self.bytes)
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.hex())
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A digest string that is not `blake3:<64 hex>` or `sha256:<64 hex>`.
#[derive(Debug, thiserror::Error)]
#[error("invalid chunk digest {0:?}: expected blake3:<64 hex digits> or sha256:<64 hex digits>")]
pub struct DigestParseError(pub String);

impl FromStr for ChunkDigest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DigestParseError(s.to_string());
        let (algo, hex_part) = s.split_once(':').ok_or_else(err)?;
        let algo = match algo {
            "blake3" => DigestAlgo::Blake3,
            "sha256" => DigestAlgo::Sha256,
            _ => return Err(err()),
        };
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| err())?;
        Ok(Self { algo, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_carry_their_algorithm() {
        let a = DigestAlgo::Blake3.digest(b"abc");
        let b = DigestAlgo::Sha256.digest(b"abc");
        assert_ne!(a, b);
        assert!(a.matches(b"abc") && !a.matches(b"abd"));
        assert_eq!(
            b.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(a.to_string().parse::<ChunkDigest>().unwrap(), a);
        assert!("md5:00".parse::<ChunkDigest>().is_err());
        assert!("sha256:zz".parse::<ChunkDigest>().is_err());
    }
}
