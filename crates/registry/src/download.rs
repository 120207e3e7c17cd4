//! Streaming download of whole blobs (e.g. the layers of an OCI image that `dfagent build`
//! converts): the body goes to a file piece by piece, never whole into memory, and is checked
//! against its digest before the call returns.

use std::path::Path;

use futures::StreamExt;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use crate::client::{parse_reference, Registry};
use crate::error::{Failure, RegistryError, Result};

/// `reference` pinned to `digest` (`host/repo@sha256:…`), e.g. to fetch a manifest an index
/// points to.
pub fn reference_with_digest(reference: &str, digest: &str) -> Result<String> {
    let r = parse_reference(reference)?;
    Ok(format!(
        "{}/{}@{}",
        r.resolve_registry(),
        r.repository(),
        digest
    ))
}

impl Registry {
    /// Download blob `digest` of `size` bytes from the repository of `reference` into the file
    /// `dest` (created or truncated), verifying size and sha256. The host's mirrors are tried
    /// first; transient failures of the host are retried from the start.
    pub async fn download_blob(
        &self,
        reference: &str,
        digest: &str,
        size: u64,
        dest: &Path,
    ) -> Result<()> {
        let r = parse_reference(reference)?;
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegistryError::Protocol(format!(
                "blob digest {digest:?} is not sha256"
            )));
        }
        let what = format!("download blob {digest}");
        let what = what.as_str();
        self.read_via_mirrors(&r, what, |r| async move {
            let host = self.host(&r)?;
            let mut stream = host
                .http
                .get(&r, &format!("blobs/{digest}"), &[], what)
                .await?
                .bytes_stream();
            let io = |source| {
                Failure::fatal(RegistryError::Io {
                    path: dest.display().to_string(),
                    source,
                })
            };
            let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
            let mut h = sha2::Sha256::new();
            let mut got: u64 = 0;
            while let Some(piece) = stream.next().await {
                let piece = piece.map_err(|e| host.http.request_failure(e, what))?;
                got += piece.len() as u64;
                if got > size {
                    return Err(Failure::fatal(RegistryError::Protocol(format!(
                        "{what}: the registry sent more than the {size} bytes of the descriptor"
                    ))));
                }
                h.update(&piece);
                file.write_all(&piece).await.map_err(io)?;
            }
            file.flush().await.map_err(io)?;
            if got < size {
                return Err(Failure::transient(RegistryError::ShortRead {
                    what: what.to_string(),
                    got,
                    expected: size,
                }));
            }
            let actual = format!("sha256:{}", hex::encode(h.finalize()));
            if actual != digest {
                return Err(Failure::fatal(RegistryError::Digest {
                    what: what.to_string(),
                    expected: digest.to_string(),
                    actual,
                }));
            }
            Ok(())
        })
        .await
    }
}
