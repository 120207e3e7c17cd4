//! POSIX ACLs written by `tar --acls` (PAX `SCHILY.acl.access` / `SCHILY.acl.default`, text
//! such as `user::rw-,user:bob:r--:1000,group::r--,mask::r--,other::r--`) turned into the
//! binary `system.posix_acl_access` / `system.posix_acl_default` xattr values the kernel and
//! Docker-written layers use.

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;
/// Most entries accepted in one ACL.
const MAX_ENTRIES: usize = 1024;

/// Convert ACL text to the binary xattr value. `None` when the text is not an ACL this can
/// represent (a named entry without a numeric id, a bad permission string, ...).
pub fn text_to_xattr(text: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?;
    let mut entries: Vec<(u16, u32, u16)> = Vec::new();
    for raw in text.split([',', '\n']) {
        let entry = raw.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        if entries.len() >= MAX_ENTRIES {
            return None;
        }
        let fields: Vec<&str> = entry.split(':').collect();
        if fields.len() < 3 || fields.len() > 4 {
            return None;
        }
        let (tag_name, qualifier, perms) = (fields[0], fields[1], fields[2]);
        let mut perm: u16 = 0;
        if perms.len() != 3 {
            return None;
        }
        for (c, (want, bit)) in perms.chars().zip([('r', 4u16), ('w', 2), ('x', 1)]) {
            match c {
                '-' => {}
                c if c == want => perm |= bit,
                _ => return None,
            }
        }
        let id = || -> Option<u32> {
            match fields.get(3) {
                Some(n) => n.parse().ok(),
                None => qualifier.parse().ok(),
            }
        };
        let (tag, id) = match (tag_name, qualifier.is_empty()) {
            ("user" | "u", true) => (USER_OBJ, UNDEFINED_ID),
            ("user" | "u", false) => (USER, id()?),
            ("group" | "g", true) => (GROUP_OBJ, UNDEFINED_ID),
            ("group" | "g", false) => (GROUP, id()?),
            ("mask" | "m", _) => (MASK, UNDEFINED_ID),
            ("other" | "o", _) => (OTHER, UNDEFINED_ID),
            _ => return None,
        };
        entries.push((tag, id, perm));
    }
    if entries.is_empty() {
        return None;
    }
    // The kernel wants entries sorted by tag, then id.
    entries.sort_by_key(|&(t, id, _)| (t, id));
    let mut out = Vec::with_capacity(4 + 8 * entries.len());
    out.extend_from_slice(&VERSION.to_le_bytes());
    for (tag, id, perm) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_and_numeric_forms() {
        let a =
            text_to_xattr(b"user::rw-,user:bob:r--:1000,group::r--,mask::r--,other::r--").unwrap();
        let b = text_to_xattr(b"user::rw-\nuser:1000:r--\ngroup::r--\t#x\nmask::r--\nother::r--\n")
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(
            hex::encode(&a),
            "02000000\
             01000600ffffffff\
             02000400e8030000\
             04000400ffffffff\
             10000400ffffffff\
             20000400ffffffff"
        );
        assert!(text_to_xattr(b"user:bob:r--").is_none());
        assert!(text_to_xattr(b"user::rwz").is_none());
        assert!(text_to_xattr(b"").is_none());
        assert!(text_to_xattr(b"weird::rwx").is_none());
    }
}
