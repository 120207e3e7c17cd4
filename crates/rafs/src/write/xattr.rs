//! Inline xattr bodies: the 12-byte EROFS ibody header, then one entry per attribute (name
//! stored after its namespace index, value after it, padded to 4 bytes). Shared xattrs are not
//! written (upstream leaves the shared xattr area empty and nydusd rejects a non-zero one).

use crate::error::{RafsError, Result};
use crate::layout::xattr::{
    self as disk, INDEX_LUSTRE, INDEX_POSIX_ACL_ACCESS, INDEX_POSIX_ACL_DEFAULT, PREFIXES,
};

/// Longest name suffix an entry can record (`e_name_len` is one byte).
const MAX_SUFFIX: usize = u8::MAX as usize;

/// Namespace index and stored suffix of a full xattr name, matched as upstream nydus-image
/// matches them: the EROFS prefixes in index order but `lustre.`, first match wins (the two ACL
/// names are whole names, so their stored suffix is empty).
fn split(name: &[u8]) -> Option<(u8, &[u8])> {
    PREFIXES
        .iter()
        .filter(|(i, _)| *i != INDEX_LUSTRE)
        .find(|(_, p)| name.starts_with(p))
        .map(|(i, p)| (*i, &name[p.len()..]))
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
    if suffix.is_empty() && index != INDEX_POSIX_ACL_ACCESS && index != INDEX_POSIX_ACL_DEFAULT {
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
    disk::IBODY_HEADER_SIZE
        + xattrs
            .iter()
            .map(|(n, v)| {
                let suffix = split(n).map_or(n.len(), |(_, s)| s.len());
                disk::entry_size(suffix, v.len())
            })
            .sum::<usize>()
}

/// `i_xattr_icount` for a body of `size` bytes.
pub(crate) fn icount(size: usize) -> Option<u16> {
    disk::icount(size)
}

/// Append the inline body of `xattrs` (already checked and sorted) to `out`.
pub(crate) fn encode(xattrs: &[(Vec<u8>, Vec<u8>)], out: &mut Vec<u8>) {
    if xattrs.is_empty() {
        return;
    }
    out.extend_from_slice(&[0u8; disk::IBODY_HEADER_SIZE]);
    for (name, value) in xattrs {
        let (index, suffix) = split(name).unwrap_or((0, name));
        let start = out.len();
        let mut head = [0u8; disk::ENTRY_HEADER_SIZE];
        head[disk::E_NAME_LEN] = suffix.len() as u8;
        head[disk::E_NAME_INDEX] = index;
        head[disk::E_VALUE_SIZE..disk::E_VALUE_SIZE + 2]
            .copy_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(suffix);
        out.extend_from_slice(value);
        out.resize(start + disk::entry_size(suffix.len(), value.len()), 0);
    }
}
