//! Extended attributes: the inline xattr body after an inode (header, shared xattr ids, entries)
//! and shared entries in the xattr area. Every namespace EROFS can encode is returned.

use crate::bytes::{slice, Le};
use crate::error::{RafsError, Result};
use crate::inode::Inode;
use crate::layout::xattr::{
    self as disk, ENTRY_HEADER_SIZE, E_NAME_INDEX, E_NAME_LEN, E_VALUE_SIZE, H_SHARED_COUNT,
    IBODY_HEADER_SIZE, SHARED_ID_SIZE,
};
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
    if let Some(p) = disk::prefix(index) {
        return Ok(p);
    }
    if index & disk::LONG_PREFIX_FLAG != 0 {
        return Err(RafsError::Unsupported(format!(
            "nid {nid}: EROFS long xattr name prefixes"
        )));
    }
    Err(RafsError::corrupt(format!(
        "nid {nid}: unknown xattr name index {index}"
    )))
}

/// Parse one entry at `at` within `area`, returning it and the 4-aligned size it takes.
fn parse_entry(area: &[u8], at: usize, nid: u64) -> Result<(Xattr, usize)> {
    let trunc = || RafsError::corrupt(format!("nid {nid}: xattr entry at {at} runs past its area"));
    if at + ENTRY_HEADER_SIZE > area.len() {
        return Err(trunc());
    }
    let e = Le(&area[at..]);
    let name_len = usize::from(e.u8(E_NAME_LEN));
    let index = e.u8(E_NAME_INDEX);
    let value_len = usize::from(e.u16(E_VALUE_SIZE));
    let name_at = at + ENTRY_HEADER_SIZE;
    let end = name_at + name_len + value_len;
    if end > area.len() {
        return Err(trunc());
    }
    let mut name = prefix(index, nid)?.to_vec();
    name.extend_from_slice(&area[name_at..name_at + name_len]);
    if name.is_empty() {
        return Err(RafsError::corrupt(format!(
            "nid {nid}: xattr with an empty name"
        )));
    }
    let value = area[name_at + name_len..end].to_vec();
    Ok((Xattr { name, value }, disk::entry_size(name_len, value_len)))
}

/// All xattrs of `inode`, in stored order (shared ones first).
pub(crate) fn parse_xattrs(data: &[u8], sb: &SuperBlock, inode: &Inode) -> Result<Vec<Xattr>> {
    if inode.xattr_size == 0 {
        return Ok(Vec::new());
    }
    let nid = inode.nid;
    let area = slice(data, inode.xattr_offset(), inode.xattr_size, "xattr body")?;
    let shared = usize::from(area[H_SHARED_COUNT]);
    let mut at = IBODY_HEADER_SIZE + shared * SHARED_ID_SIZE;
    if at > area.len() {
        return Err(RafsError::corrupt(format!(
            "nid {nid}: {shared} shared xattr ids do not fit its {}-byte xattr body",
            area.len()
        )));
    }
    let mut out = Vec::new();
    for i in 0..shared {
        let id = u64::from(Le(area).u32(IBODY_HEADER_SIZE + i * SHARED_ID_SIZE));
        let off = sb.xattr_offset + id * SHARED_ID_SIZE as u64;
        // A shared entry is at most header + 255 + 65535 bytes; take what the bootstrap has.
        let max_entry = ENTRY_HEADER_SIZE + usize::from(u8::MAX) + usize::from(u16::MAX);
        let avail = (data.len() as u64)
            .saturating_sub(off)
            .min(max_entry as u64);
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
