//! The OCI content digest of bytes: how registries and OCI layouts name manifests, configs and
//! layers, so the registry client and the builder compute it the same way.

use sha2::Digest as _;

use crate::BlobId;

/// `sha256:<64 lower-case hex digits>` of `data` (the form of [`BlobId::oci_digest`]).
pub fn sha256_digest(data: &[u8]) -> String {
    BlobId::from_bytes(sha2::Sha256::digest(data).into()).oci_digest()
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_the_oci_digest_of_the_bytes() {
        assert_eq!(
            super::sha256_digest(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
