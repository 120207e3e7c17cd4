//! Serialising a [`Tree`] as a RAFS v6 bootstrap.

use super::{BlobSpec, BootstrapOptions, Tree};
use crate::error::{RafsError, Result};

/// Serialise `tree` as a RAFS v6 bootstrap. Deterministic: same input, same bytes; no
/// wall-clock time.
pub fn write_bootstrap(
    tree: &Tree,
    blobs: &[BlobSpec],
    opts: &BootstrapOptions,
) -> Result<Vec<u8>> {
    super::validate::validate(tree, blobs, opts)?;
    Err(RafsError::Unsupported(
        "write_bootstrap: not implemented yet".into(),
    ))
}
