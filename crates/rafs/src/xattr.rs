//! Extended attributes: the inline xattr body after an inode (header, shared xattr ids, entries)
//! and shared entries in the xattr area. Every namespace EROFS can encode is returned.

use crate::bytes::{slice, Le};
use crate::error::{RafsError, Result};
use crate::inode::Inode;
use crate::superblock::SuperBlock;

/// One extended attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xattr {
    /// Full name, namespace prefix included (`user.foo`, `security.capability`).
    pub name: Vec<u8>,
    /// Value (may be empty or binary).
    pub value: Vec<u8>,
}

fn prefix(index: u8, nid: u64) -> Result<&'static [u8]> {
    Ok(match index {
        0 => b"",
        1 => b"user.",
        2 => b"system.posix_acl_access",
        3 => b"system.posix_acl_default",
        4 => b"trusted.",
        5 => b"lustre.",
        6 => b"security.",
        i if i & 0x80 != 0 => {
            return Err(RafsError::Unsupported(format!(
                "nid {nid}: EROFS long xattr name prefixes"
            )))
        }
        i => {
            return Err(RafsError::corrupt(format!(
                "nid {nid}: unknown xattr name index {i}"
            )))
        }
    })
}

/// Parse one entry at `at` within `area`, returning it and the 4-aligned size it takes.
fn parse_entry(area: &[u8], at: usize, nid: u64) -> Result<(Xattr, usize)> {
    let trunc = || RafsError::corrupt(format!("nid {nid}: xattr entry at {at} runs past its area"));
    if at + 4 > area.len() {
        return Err(trunc());
    }
    let e = Le(&area[at..]);
    let name_len = usize::from(e.u8(0));
    let index = e.u8(1);
    let value_len = usize::from(e.u16(2));
    let end = at + 4 + name_len + value_len;
    if end > area.len() {
        return Err(trunc());
    }
    let mut name = prefix(index, nid)?.to_vec();
    name.extend_from_slice(&area[at + 4..at + 4 + name_len]);
    if name.is_empty() {
        return Err(RafsError::corrupt(format!(
            "nid {nid}: xattr with an empty name"
        )));
    }
    let value = area[at + 4 + name_len..end].to_vec();
    Ok((
        Xattr { name, value },
        (4 + name_len + value_len).div_ceil(4) * 4,
    ))
}

/// All xattrs of `inode`, in stored order (shared ones first).
pub(crate) fn parse_xattrs(data: &[u8], sb: &SuperBlock, inode: &Inode) -> Result<Vec<Xattr>> {
    if inode.xattr_size == 0 {
        return Ok(Vec::new());
    }
    let nid = inode.nid;
    let area = slice(data, inode.xattr_offset(), inode.xattr_size, "xattr body")?;
    let shared = usize::from(area[4]);
    let mut at = 12 + shared * 4;
    if at > area.len() {
        return Err(RafsError::corrupt(format!(
            "nid {nid}: {shared} shared xattr ids do not fit its {}-byte xattr body",
            area.len()
        )));
    }
    let mut out = Vec::new();
    for i in 0..shared {
        let id = u64::from(Le(area).u32(12 + i * 4));
        let off = sb.xattr_offset + id * 4;
        // A shared entry is at most 4 + 255 + 65535 bytes; take what the bootstrap has.
        let avail = (data.len() as u64).saturating_sub(off).min(4 + 255 + 65535);
        let region = slice(data, off, avail, "shared xattr")?;
        out.push(parse_entry(region, 0, nid)?.0);
    }
    while at < area.len() {
        let (x, used) = parse_entry(area, at, nid)?;
        out.push(x);
        at += used;
    }
    Ok(out)
}
