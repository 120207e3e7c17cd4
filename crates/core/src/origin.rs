//! [`BlobOrigin`]: where an image's data blob lives at its registry, told to a proxy that fetches
//! it on the node's behalf (a Dragonfly seed peer). The registry crate knows URLs and
//! credentials; a proxying tier knows neither and asks through this trait.

use std::fmt;

use crate::{BlobId, BoxFuture, TierError};

/// How to fetch one blob from its registry: the blob's URL and the headers the registry wants.
/// Header values carry credentials: `Debug` prints their names only, and nobody logs them.
#[derive(Clone, PartialEq, Eq)]
pub struct OriginRequest {
    /// `http(s)://HOST[:PORT]/v2/REPOSITORY/blobs/sha256:HEX`.
    pub url: String,
    /// Request headers for the registry (e.g. `Authorization`), secret.
    pub headers: Vec<(String, String)>,
}

impl fmt::Debug for OriginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("OriginRequest")
            .field("url", &self.url)
            .field("headers", &names)
            .finish()
    }
}

/// The registry side of one image, for tiers that fetch its blobs through a proxy.
pub trait BlobOrigin: Send + Sync {
    /// The request for `blob`, or `None` when the image has no such blob (another tier's).
    /// May authenticate with the registry first.
    fn locate<'a>(
        &'a self,
        blob: &'a BlobId,
    ) -> BoxFuture<'a, Result<Option<OriginRequest>, TierError>>;

    /// The registry refused the credentials a `locate` returned (a 401 relayed by the proxy):
    /// forget them, so that the next `locate` authenticates again.
    fn credentials_refused(&self) {}
}
