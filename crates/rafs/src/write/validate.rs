//! Checks of a [`Tree`] before it is written.

use super::{BlobSpec, BootstrapOptions, Tree};
use crate::error::Result;

/// Check `tree` is a well-formed filesystem tree whose chunks name existing blobs.
pub(crate) fn validate(tree: &Tree, blobs: &[BlobSpec], opts: &BootstrapOptions) -> Result<()> {
    let _ = (tree, blobs, opts);
    Ok(())
}
