//! Data blob identities: the sha256 of the blob file, as an OCI registry names the layer.

use std::fmt;
use std::str::FromStr;

/// The sha256 of a data blob, which is also its name in a registry and in a blob directory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId([u8; 32]);

impl BlobId {
    /// A blob id from raw sha256 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw sha256 bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as used for file names.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The OCI digest string `sha256:<hex>`.
    pub fn oci_digest(&self) -> String {
        format!("sha256:{}", self.hex())
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.hex())
    }
}

/// A blob id that is not 64 hex digits (optionally prefixed by `sha256:`).
#[derive(Debug, thiserror::Error)]
#[error("invalid blob id {0:?}: expected 64 lower-case hex digits of a sha256")]
pub struct BlobIdError(pub String);

impl FromStr for BlobId {
    type Err = BlobIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        let mut bytes = [0u8; 32];
        if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(BlobIdError(s.to_string()));
        }
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| BlobIdError(s.to_string()))?;
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_oci_forms() {
        let h = "fad2542498a44f79c3b4ffeeee753ff15692a66557cb775d025523591e56b59e";
        let a: BlobId = h.parse().unwrap();
        let b: BlobId = format!("sha256:{h}").parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.hex(), h);
        assert!("abc".parse::<BlobId>().is_err());
        assert!(h.to_uppercase().parse::<BlobId>().is_err());
    }
}
