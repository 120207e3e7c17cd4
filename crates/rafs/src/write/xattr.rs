//! Inline xattr bodies: the 12-byte EROFS ibody header, then one entry per attribute (name
//! stored after its namespace index, value after it, padded to 4 bytes). Shared xattrs are not
//! written (upstream leaves the shared xattr area empty and nydusd rejects a non-zero one).

use crate::error::{RafsError, Result};

/// EROFS name indexes and the prefixes they stand for, as upstream nydus-image matches them
/// (first match wins; the two ACL names are whole names, so their stored suffix is empty).
const PREFIXES: [(&[u8], u8); 5] = [
    (b"user.", 1),
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"trusted.", 4),
    (b"security.", 6),
];

/// Size of the ibody header.
const HEADER: usize = 12;
/// Longest name suffix an entry can record (`e_name_len` is one byte).
const MAX_SUFFIX: usize = 255;

/// Namespace index and stored suffix of a full xattr name.
fn split(name: &[u8]) -> Option<(u8, &[u8])> {
    PREFIXES
        .iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|(p, i)| (*i, &name[p.len()..]))
}

/// Check one attribute can be stored and read back by upstream readers.
pub(crate) fn check(name: &[u8], value: &[u8], what: &str) -> Result<()> {
    let bad = |m: String| {
        RafsError::InvalidTree(format!(
            "{what}: xattr {:?}: {m}",
            name.escape_ascii().to_string()
        ))
    };
    let (index, suffix) = split(name).ok_or_else(|| {
        bad(
            "no EROFS namespace (user., trusted., security., system.posix_acl_access, \
             system.posix_acl_default); upstream nydusd cannot read such an attribute"
                .into(),
        )
    })?;
    if suffix.len() > MAX_SUFFIX {
        return Err(bad(format!(
            "name suffix of {} bytes (at most {MAX_SUFFIX})",
            suffix.len()
        )));
    }
    if suffix.is_empty() && index != 2 && index != 3 {
        return Err(bad("empty name after the namespace prefix".into()));
    }
    if suffix.contains(&0) {
        return Err(bad("name contains NUL".into()));
    }
    if value.len() > usize::from(u16::MAX) {
        return Err(bad(format!(
            "value of {} bytes (at most 65535)",
            value.len()
        )));
    }
    Ok(())
}

/// Bytes the inline body of `xattrs` takes (0 when there are none).
pub(crate) fn body_size(xattrs: &[(Vec<u8>, Vec<u8>)]) -> usize {
    if xattrs.is_empty() {
        return 0;
    }
    HEADER
        + xattrs
            .iter()
            .map(|(n, v)| {
                let suffix = split(n).map_or(n.len(), |(_, s)| s.len());
                (4 + suffix + v.len()).div_ceil(4) * 4
            })
            .sum::<usize>()
}

/// `i_xattr_icount` for a body of `size` bytes.
pub(crate) fn icount(size: usize) -> Option<u16> {
    if size == 0 {
        return Some(0);
    }
    u16::try_from((size - HEADER) / 4 + 1).ok()
}

/// Append the inline body of `xattrs` (already checked and sorted) to `out`.
pub(crate) fn encode(xattrs: &[(Vec<u8>, Vec<u8>)], out: &mut Vec<u8>) {
    if xattrs.is_empty() {
        return;
    }
    out.extend_from_slice(&[0u8; HEADER]);
    for (name, value) in xattrs {
        let (index, suffix) = split(name).unwrap_or((0, name));
        let start = out.len();
        out.push(suffix.len() as u8);
        out.push(index);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(suffix);
        out.extend_from_slice(value);
        let used = out.len() - start;
        out.resize(start + used.div_ceil(4) * 4, 0);
    }
}
