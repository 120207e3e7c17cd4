//! Walking a local directory into a [`Tree`], file data chunked into a [`BlobWriter`].

use std::io::Write;
use std::path::Path;

use super::{BlobWriter, BootstrapOptions, Tree};
use crate::error::{RafsError, Result};

/// Walk a local directory into a Tree; file contents are chunked and compressed through `blob`.
pub fn tree_from_dir(
    dir: &Path,
    blob: &mut BlobWriter<impl Write>,
    opts: &BootstrapOptions,
) -> Result<Tree> {
    let _ = (dir, blob, opts);
    Err(RafsError::Unsupported(
        "tree_from_dir: not implemented yet".into(),
    ))
}
