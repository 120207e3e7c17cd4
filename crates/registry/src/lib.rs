//! OCI distribution client for Nydus images, built on `oci-client`.
//!
//! - [`Registry::resolve`] turns a reference (tag or digest) into a [`NydusImage`]: the Nydus
//!   manifest (picked from an index the way nydusify publishes it), its bootstrap layer and its
//!   data blobs.
//! - [`Registry::fetch_bootstrap`] downloads and verifies the bootstrap layer and unpacks
//!   `image/image.boot` from it.
//! - [`Registry::read_range`] reads byte ranges of data blobs (HTTP range requests, redirects
//!   followed, transient failures retried with backoff), and [`RegistryTier`] makes that a
//!   [`dfagent_core::ChunkTier`] that merges neighbouring chunks into one request.
//! - [`Registry::push_nydus`] publishes a local Nydus image in nydusify's layout; the layout's
//!   documents come from [`nydus_manifest`], which `dfagent build` also writes to OCI layouts.
//! - [`Registry::download_blob`] streams a whole blob (an OCI layer) into a file, verified.
//! - [`RegistryOrigin`] is the registry as a [`dfagent_core::BlobOrigin`]: a blob's URL at the
//!   image's registry and the credentials a proxy (a Dragonfly seed peer) needs to fetch it.
//!
//! Credentials come from the configuration's host entries ([`HostConfig`]), else from a docker
//! `config.json`. Reads are our own HTTP requests: a registry's 401 challenge says what it
//! wants (Basic credentials, or a Bearer token from its realm); tokens are renewed before the
//! lifetime their service announced runs out, and at once, single flight, when the registry
//! refuses one (the request is then retried once). Busy answers (429, 503) are retried after
//! their `Retry-After` (delta-seconds or an HTTP-date), within [`MAX_RETRY_WAIT`] per request.
//! Pushes go through oci-client, which answers the same challenges itself; a 401 there is also
//! retried once after authenticating again. Registries on loopback (and those configured so)
//! are spoken to over plain HTTP. Reads of a host with mirrors try the mirrors in order first
//! and fall back to the host.
#![deny(missing_docs)]

mod auth;
mod client;
mod config;
mod download;
mod error;
mod http;
mod image;
mod origin;
mod push;
mod reference;
mod tier;

pub use client::{
    RawManifest, Registry, MAX_BOOTSTRAP_SIZE, MAX_MANIFEST_SIZE, MAX_RANGE_LEN, MAX_RETRY_WAIT,
};
pub use config::{HostConfig, HostCredentials, RegistryConfig, Secret, REDACTED};
pub use dfagent_core::ranges::{DEFAULT_MAX_MERGE, MAX_MERGE_GAP};
pub use download::reference_with_digest;
pub use error::{RegistryError, Result};
pub use image::{
    Descriptor, NydusImage, ANNOTATION_NYDUS_BLOB, ANNOTATION_NYDUS_BLOB_IDS,
    ANNOTATION_NYDUS_BOOTSTRAP, ANNOTATION_NYDUS_FS_VERSION, ANNOTATION_UNCOMPRESSED,
    BOOTSTRAP_PATH_IN_LAYER, MEDIA_TYPE_NYDUS_BLOB, OS_FEATURE_NYDUS,
};
pub use origin::RegistryOrigin;
pub use push::{nydus_manifest, NydusManifest};
pub use tier::RegistryTier;
