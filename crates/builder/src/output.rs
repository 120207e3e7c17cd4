//! Writing results: files appear complete or not at all (a temporary file in the same
//! directory, then a rename), readable by all once complete.

use std::io::Write;
use std::path::Path;

use crate::error::{BuildError, Result};

/// Write `data` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| BuildError::io(dir.display(), e))?;
    tmp.write_all(data)
        .map_err(|e| BuildError::io(tmp.path().display(), e))?;
    publishable(tmp.as_file(), tmp.path())?;
    tmp.persist(path)
        .map_err(|e| BuildError::io(path.display(), e.error))?;
    Ok(())
}

/// Make a finished file readable by all (temporary files start private), mode 0644.
pub fn publishable(f: &std::fs::File, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| BuildError::io(path.display(), e))
}

/// Put a copy of file `src` at `dest` (a hard link when possible), unless `dest` exists.
pub fn copy_blob(src: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        return Ok(());
    }
    if std::fs::hard_link(src, dest).is_ok() {
        return Ok(());
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| BuildError::io(dir.display(), e))?;
    let mut f = std::fs::File::open(src).map_err(|e| BuildError::io(src.display(), e))?;
    std::io::copy(&mut f, &mut tmp).map_err(|e| BuildError::io(dest.display(), e))?;
    publishable(tmp.as_file(), tmp.path())?;
    tmp.persist(dest)
        .map_err(|e| BuildError::io(dest.display(), e.error))?;
    Ok(())
}

/// Copy bytes `[offset, offset+size)` of `src` to `dest` (a source layer inside an archive).
pub fn copy_range(src: &Path, offset: u64, size: u64, dest: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    if dest.exists() {
        return Ok(());
    }
    if offset == 0
        && std::fs::metadata(src)
            .map(|m| m.len() == size)
            .unwrap_or(false)
    {
        return copy_blob(src, dest);
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| BuildError::io(dir.display(), e))?;
    let mut f = std::fs::File::open(src).map_err(|e| BuildError::io(src.display(), e))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| BuildError::io(src.display(), e))?;
    std::io::copy(&mut f.take(size), &mut tmp).map_err(|e| BuildError::io(dest.display(), e))?;
    publishable(tmp.as_file(), tmp.path())?;
    tmp.persist(dest)
        .map_err(|e| BuildError::io(dest.display(), e.error))?;
    Ok(())
}

/// Parse `--oci-layout DIR[:TAG]` (tag default `latest`).
pub fn parse_layout_arg(s: &str) -> (std::path::PathBuf, String) {
    match s.rsplit_once(':') {
        Some((d, t)) if !d.is_empty() && !t.is_empty() && !t.contains('/') => {
            (d.into(), t.to_string())
        }
        _ => (s.into(), "latest".to_string()),
    }
}
