//! POSIX ACLs written by `tar --acls` (PAX `SCHILY.acl.access` / `SCHILY.acl.default`, text
//! such as `user::rw-,user:bob:r--:1000,group::r--,mask::r--,other::r--`) turned into the
//! binary `system.posix_acl_access` / `system.posix_acl_default` xattr values the kernel and
//! Docker-written layers use.
//!
//! A named entry (`user:NAME:…`, `group:NAME:…`) needs a numeric id: either the qualifier is
//! one (`user:1000:r--`) or star's fourth field gives it (`user:bob:r--:1000`). GNU tar writes
//! names only (`user:bob:r--`) whenever the creating machine knows a name for the id; such an
//! entry is dropped on its own (the image's passwd database is not consulted) and reported in
//! [`Converted::dropped`], and the rest of the ACL is kept. Text that is not an ACL at all (an
//! unknown tag, bad permissions, a missing `user::`/`group::`/`other::` entry, a repeated entry,
//! named entries without a mask) is an [`AclError`].

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
/// The id field of entries without a qualifier.
const UNDEFINED_ID: u32 = u32::MAX;
/// Most entries accepted in one ACL (dropped ones included).
pub const MAX_ENTRIES: usize = 1024;

/// Why ACL text cannot be converted. Messages name entries by position and tag, never by the
/// user or group name they hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// The text is not UTF-8.
    #[error("ACL text is not UTF-8")]
    NotUtf8,
    /// More than [`MAX_ENTRIES`] entries.
    #[error("ACL has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// One entry is malformed.
    #[error("ACL entry {position}: {detail}")]
    BadEntry {
        /// 1-based position of the entry in the text.
        position: usize,
        /// What is wrong with it.
        detail: String,
    },
    /// A required entry (`user::`, `group::`, `other::`) is missing.
    #[error("ACL has no `{0}::` entry")]
    Missing(&'static str),
    /// An entry appears twice.
    #[error("ACL entry {position} repeats an earlier {what} entry")]
    Duplicate {
        /// 1-based position of the second occurrence.
        position: usize,
        /// The entry's tag and id (`mask`, `user 1000`).
        what: String,
    },
    /// Named entries are kept but there is no `mask::` entry (the kernel rejects such an ACL).
    #[error("ACL has named user or group entries but no mask entry")]
    NoMask,
}

/// The kind of a named entry that was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedKind {
    /// `user:NAME:…`
    User,
    /// `group:NAME:…`
    Group,
}

impl NamedKind {
    /// `"user"` or `"group"`.
    pub fn as_str(self) -> &'static str {
        match self {
            NamedKind::User => "user",
            NamedKind::Group => "group",
        }
    }
}

/// A named entry that was dropped because it carries no numeric id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// 1-based position of the entry in the text.
    pub position: usize,
    /// User or group.
    pub kind: NamedKind,
}

/// An ACL converted to its xattr value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// The binary `system.posix_acl_*` value: version 2, entries sorted by tag, then id.
    pub xattr: Vec<u8>,
    /// Named entries left out because they have no numeric id, in text order.
    pub dropped: Vec<Dropped>,
}

/// Permission text: up to three of `r`, `w`, `x` (each at most once) and `-`, as libacl accepts.
fn parse_perm(perms: &str) -> Option<u16> {
    if perms.is_empty() || perms.len() > 3 {
        return None;
    }
    let mut perm = 0u16;
    for c in perms.chars() {
        let bit = match c {
            'r' => 4,
            'w' => 2,
            'x' => 1,
            '-' => continue,
            _ => return None,
        };
        if perm & bit != 0 {
            return None;
        }
        perm |= bit;
    }
    Some(perm)
}

/// The text form of a tag.
fn tag_label(tag: u16) -> &'static str {
    match tag {
        USER_OBJ | USER => "user",
        GROUP_OBJ | GROUP => "group",
        MASK => "mask",
        _ => "other",
    }
}

/// A numeric id: `None` when `s` is not all digits; an error when it is but is no valid id.
fn parse_id(s: &str, position: usize) -> Result<Option<u32>, AclError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match s.parse::<u32>() {
        Ok(id) if id != UNDEFINED_ID => Ok(Some(id)),
        _ => Err(AclError::BadEntry {
            position,
            detail: format!("id {s} is out of range"),
        }),
    }
}

/// Convert ACL text to the binary xattr value. Entries are separated by `,` or newlines;
/// `#` starts a comment (getfacl's `#effective:`). `Ok(None)` when the text holds no entry
/// (no ACL). Named entries without a numeric id are left out and listed in
/// [`Converted::dropped`]; anything else that is not a valid ACL is an error.
pub fn text_to_xattr(text: &[u8]) -> Result<Option<Converted>, AclError> {
    let text = std::str::from_utf8(text).map_err(|_| AclError::NotUtf8)?;
    // (tag, id, permissions, position)
    let mut entries: Vec<(u16, u32, u16, usize)> = Vec::new();
    let mut dropped = Vec::new();
    let mut position = 0usize;
    for raw in text.split([',', '\n']) {
        let entry = raw.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        position += 1;
        if position > MAX_ENTRIES {
            return Err(AclError::TooManyEntries);
        }
        let bad = |detail: &str| AclError::BadEntry {
            position,
            detail: detail.to_string(),
        };
        let fields: Vec<&str> = entry.split(':').map(str::trim).collect();
        if fields.len() < 3 || fields.len() > 4 {
            return Err(bad(
                "not TAG:QUALIFIER:PERMISSIONS (or star's TAG:NAME:PERMISSIONS:ID)",
            ));
        }
        let (tag_name, qualifier, perms) = (fields[0], fields[1], fields[2]);
        let extra_id = fields.get(3).copied();
        let perm = parse_perm(perms).ok_or_else(|| AclError::BadEntry {
            position,
            detail: format!("permissions {perms:?} are not made of r, w, x and -"),
        })?;
        let (tag, named) = match tag_name {
            "user" | "u" if qualifier.is_empty() => (USER_OBJ, None),
            "user" | "u" => (USER, Some(NamedKind::User)),
            "group" | "g" if qualifier.is_empty() => (GROUP_OBJ, None),
            "group" | "g" => (GROUP, Some(NamedKind::Group)),
            "mask" | "m" => (MASK, None),
            "other" | "o" => (OTHER, None),
            _ => return Err(bad("unknown tag (not user, group, mask or other)")),
        };
        let Some(kind) = named else {
            if !qualifier.is_empty() {
                return Err(bad("mask and other entries take no qualifier"));
            }
            if extra_id.is_some() {
                return Err(bad("an entry without a qualifier takes no id field"));
            }
            entries.push((tag, UNDEFINED_ID, perm, position));
            continue;
        };
        // star's fourth field is the id; else the qualifier must be one.
        let id = match extra_id {
            Some(id) if !id.is_empty() => {
                Some(parse_id(id, position)?.ok_or_else(|| bad("the id field is not a number"))?)
            }
            _ => parse_id(qualifier, position)?,
        };
        let Some(id) = id else {
            dropped.push(Dropped { position, kind });
            continue;
        };
        entries.push((tag, id, perm, position));
    }
    if position == 0 {
        return Ok(None);
    }
    // The kernel wants entries sorted by tag, then id; equal neighbours are repeats.
    entries.sort_unstable_by_key(|&(t, id, _, pos)| (t, id, pos));
    if let Some(w) = entries
        .windows(2)
        .find(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1))
    {
        let (tag, id, _, position) = w[1];
        let what = if id == UNDEFINED_ID {
            format!("{}::", tag_label(tag))
        } else {
            format!("{} {id}", tag_label(tag))
        };
        return Err(AclError::Duplicate { position, what });
    }
    let has = |tag: u16| entries.iter().any(|&(t, ..)| t == tag);
    for tag in [USER_OBJ, GROUP_OBJ, OTHER] {
        if !has(tag) {
            return Err(AclError::Missing(tag_label(tag)));
        }
    }
    if !has(MASK) && (has(USER) || has(GROUP)) {
        return Err(AclError::NoMask);
    }
    let mut xattr = Vec::with_capacity(4 + 8 * entries.len());
    xattr.extend_from_slice(&VERSION.to_le_bytes());
    for (tag, id, perm, _) in entries {
        xattr.extend_from_slice(&tag.to_le_bytes());
        xattr.extend_from_slice(&perm.to_le_bytes());
        xattr.extend_from_slice(&id.to_le_bytes());
    }
    Ok(Some(Converted { xattr, dropped }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xattr(text: &str) -> Converted {
        text_to_xattr(text.as_bytes())
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .unwrap_or_else(|| panic!("{text:?}: no ACL"))
    }

    #[test]
    fn star_and_numeric_forms() {
        let a = xattr("user::rw-,user:bob:r--:1000,group::r--,mask::r--,other::r--");
        let b = xattr("user::rw-\nuser:1000:r--\ngroup::r--\t#x\nmask::r--\nother::r--\n");
        assert_eq!(a, b);
        assert!(a.dropped.is_empty());
        assert_eq!(
            hex::encode(&a.xattr),
            "02000000\
             01000600ffffffff\
             02000400e8030000\
             04000400ffffffff\
             10000400ffffffff\
             20000400ffffffff"
        );
        // Abbreviated tags, reduced permissions and getfacl's comments.
        let c = xattr("u::rw,u:1000:r  #effective:r--\ng::r,m::r,o::r");
        assert_eq!(c.xattr, a.xattr);
        assert_eq!(text_to_xattr(b""), Ok(None));
        assert_eq!(text_to_xattr(b" \n#only a comment\n,"), Ok(None));
    }

    #[test]
    fn named_entries_without_ids_are_dropped_one_by_one() {
        // GNU tar's form: names without ids. Only those entries go; the order of the text does
        // not matter.
        let got = xattr(
            "user::rw-\nuser:nosuchuser:r--\nuser:alice:r-x:4242\nuser:4343:rw-\ngroup::r--\n\
             group:staff:-w-:50\ngroup:nosuchgroup:rwx\nmask::rwx\nother::---\n",
        );
        assert_eq!(
            got.dropped,
            vec![
                Dropped {
                    position: 2,
                    kind: NamedKind::User
                },
                Dropped {
                    position: 7,
                    kind: NamedKind::Group
                },
            ]
        );
        let want = xattr(
            "other::---,group:50:-w-,user::rw-,mask::rwx,user:4343:rw-,group::r--,\
             user:4242:r-x",
        );
        assert_eq!(got.xattr, want.xattr);
        assert_eq!(
            hex::encode(&got.xattr),
            "02000000\
             01000600ffffffff\
             0200050092100000\
             02000600f7100000\
             04000400ffffffff\
             0800020032000000\
             10000700ffffffff\
             20000000ffffffff"
        );
        // An empty star id field is no id either.
        let e = xattr("user::rw-,user:bob:r--:,group::r--,mask::r--,other::r--");
        assert_eq!(e.dropped.len(), 1);
        // When every named entry goes, the mask stays (the kernel accepts that).
        let only = xattr("user::rw-,user:bob:r--,group::r--,mask::r--,other::r--");
        assert_eq!(
            hex::encode(&only.xattr),
            "0200000001000600ffffffff04000400ffffffff10000400ffffffff20000400ffffffff"
        );
    }

    #[test]
    fn malformed_text_is_a_typed_error() {
        let err = |t: &str| text_to_xattr(t.as_bytes()).unwrap_err();
        const BASE: &str = "group::r--,mask::r--,other::r--";
        assert!(matches!(
            err(&format!("user::rwz,{BASE}")),
            AclError::BadEntry { position: 1, .. }
        ));
        assert!(matches!(
            err(&format!("user::rwrw,{BASE}")),
            AclError::BadEntry { .. }
        ));
        assert!(matches!(
            err(&format!("user::rr-,{BASE}")),
            AclError::BadEntry { .. }
        ));
        assert!(matches!(
            err(&format!("weird::rwx,{BASE}")),
            AclError::BadEntry { .. }
        ));
        assert!(matches!(
            err(&format!("user::rw-,{BASE},other:x:r--")),
            AclError::BadEntry { position: 5, .. }
        ));
        assert!(matches!(
            err(&format!("user::rw-,user:bob:r--:notanid,{BASE}")),
            AclError::BadEntry { position: 2, .. }
        ));
        assert!(matches!(
            err(&format!("user::rw-,user:4294967295:r--,{BASE}")),
            AclError::BadEntry { .. }
        ));
        assert!(matches!(
            err(&format!("user::rw-,user:99999999999:r--,{BASE}")),
            AclError::BadEntry { .. }
        ));
        assert!(matches!(
            err(&format!("user::rw-:0,{BASE}")),
            AclError::BadEntry { .. }
        ));
        assert!(matches!(
            err(&format!("user::rw-:a:b:c,{BASE}")),
            AclError::BadEntry { .. }
        ));
        assert_eq!(err("user::rw-"), AclError::Missing("group"));
        assert_eq!(err("user::rw-,group::r--"), AclError::Missing("other"));
        assert_eq!(err(BASE), AclError::Missing("user"));
        assert!(matches!(
            err(&format!("user::rw-,{BASE},user::r--")),
            AclError::Duplicate { position: 5, .. }
        ));
        assert!(matches!(
            err(&format!("user::rw-,user:7:r--,u:x:r--:7,{BASE}")),
            AclError::Duplicate { position: 3, .. }
        ));
        assert_eq!(
            err("user::rw-,user:7:r--,group::r--,other::r--"),
            AclError::NoMask
        );
        assert_eq!(
            text_to_xattr(b"user::rw-,user:bob:r--\xff"),
            Err(AclError::NotUtf8)
        );
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("user:{i}:r--")).collect();
        let many = many.join(",");
        assert_eq!(err(&many), AclError::TooManyEntries);
        // Messages name positions and tags, not the names in the entries.
        let msg = err(&format!("user::rw-,user:secretname:r--:x,{BASE}")).to_string();
        assert!(!msg.contains("secretname"), "{msg}");
    }
}
