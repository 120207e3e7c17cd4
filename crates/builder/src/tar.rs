//! A streaming tar reader for OCI layers: ustar, GNU (long names and link names, base-256
//! numbers) and PAX (local and global headers, `path`, `linkpath`, `size`, `uid`, `gid`,
//! `mtime` with fractions, `SCHILY.xattr.*` and `LIBARCHIVE.xattr.*` extended attributes, and
//! `SCHILY.acl.access`/`SCHILY.acl.default` POSIX ACL text, see [`crate::acl`]).
//!
//! Written here rather than taken from the `tar` crate because that crate splits PAX records at
//! newlines, so a binary xattr value (which GNU tar writes as raw bytes) makes the header
//! "malformed" — exactly what upstream Nydus trips over. Records here are split by their length
//! prefix, as POSIX specifies. Every size is bounded before anything is allocated; nothing here
//! panics on any input (the `tar_layer` fuzz target checks that).

use std::io::Read;

use crate::error::{BuildError, Result};

/// Tar block size.
pub const BLOCK: u64 = 512;
/// Largest PAX extended header accepted (all records of one entry together).
pub const MAX_PAX_SIZE: u64 = 8 << 20;
/// Largest GNU long name or long link name accepted.
pub const MAX_LONG_NAME: u64 = 64 << 10;
/// Largest regular file accepted (1 TiB): bigger sizes in a header are treated as corruption.
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// What a tar entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file; its data follows.
    Regular,
    /// A hard link to the entry named by `link`.
    HardLink,
    /// A symbolic link to `link`.
    Symlink,
    /// A character device.
    CharDev,
    /// A block device.
    BlockDev,
    /// A directory.
    Directory,
    /// A named pipe.
    Fifo,
}

/// One tar entry with every extension applied (long names, PAX overrides, xattrs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    /// The path as written (not yet normalised).
    pub path: Vec<u8>,
    /// Link target of symlinks and hard links.
    pub link: Vec<u8>,
    /// The entry type.
    pub kind: EntryKind,
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch (negative times read as 0).
    pub mtime: u64,
    /// Nanoseconds of the modification time (from a PAX `mtime` with a fraction).
    pub mtime_nsec: u32,
    /// Size of the data that follows (regular files).
    pub size: u64,
    /// Device major number (devices).
    pub dev_major: u32,
    /// Device minor number (devices).
    pub dev_minor: u32,
    /// Extended attributes, full names (`user.x`, `security.capability`), in header order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads a tar stream entry by entry; the data of the current entry is read with
/// [`TarReader::read_data`] (what is left unread is skipped by the next
/// [`TarReader::next_entry`]).
pub struct TarReader<R> {
    r: R,
    /// Bytes of the tar stream consumed so far.
    offset: u64,
    /// Unread data bytes of the current entry.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    /// Records of PAX global headers, applied to every later entry.
    global: Vec<(Vec<u8>, Vec<u8>)>,
    /// The end-of-archive marker (or the end of the stream) was seen.
    finished: bool,
}

fn padding_of(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

impl<R: Read> TarReader<R> {
    /// A reader of the tar stream `r`.
    pub fn new(r: R) -> Self {
        Self {
            r,
            offset: 0,
            remaining: 0,
            padding: 0,
            global: Vec::new(),
            finished: false,
        }
    }

    /// Bytes of the tar stream consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The underlying reader (e.g. to drain a compressed stream to its end).
    pub fn into_inner(self) -> R {
        self.r
    }

    fn err(&self, detail: impl Into<String>) -> BuildError {
        BuildError::Tar {
            offset: self.offset,
            detail: detail.into(),
        }
    }

    /// Read as much of `buf` as the stream has; returns the count (short only at EOF).
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => {
                    n += k;
                    self.offset += k as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(format!("read error: {e}"))),
            }
        }
        Ok(n)
    }

    fn skip(&mut self, mut n: u64) -> Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            let got = self.read_full(&mut buf[..want])?;
            if got < want {
                return Err(self.err("truncated: the stream ends inside an entry"));
            }
            n -= got as u64;
        }
        Ok(())
    }

    /// Read a whole meta entry's data (long name, PAX header) of `size` bytes.
    fn read_meta(&mut self, size: u64, limit: u64, what: &str) -> Result<Vec<u8>> {
        if size > limit {
            return Err(self.err(format!(
                "{what} of {size} bytes exceeds the limit of {limit}"
            )));
        }
        let mut data = vec![0u8; size as usize];
        if self.read_full(&mut data)? < data.len() {
            return Err(self.err(format!("truncated: the stream ends inside a {what}")));
        }
        self.skip(padding_of(size))?;
        Ok(data)
    }

    /// Read data of the current entry into `buf`; returns 0 at the entry's end. A stream that
    /// ends before the entry's declared size is an error.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        let want = (buf.len() as u64).min(self.remaining) as usize;
        if want == 0 {
            return Ok(0);
        }
        let got = self.read_full(&mut buf[..want])?;
        if got < want {
            return Err(self.err("truncated: the stream ends inside a file's data"));
        }
        self.remaining -= got as u64;
        Ok(got)
    }

    /// Fill `buf` completely from the current entry's data.
    pub fn read_data_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        let mut n = 0;
        while n < buf.len() {
            let k = self.read_data(&mut buf[n..])?;
            if k == 0 {
                return Err(self.err("internal: read past an entry's data"));
            }
            n += k;
        }
        Ok(())
    }

    /// The next entry, or `None` at the end of the archive. Skips what is left of the previous
    /// entry's data. Two zero blocks end the archive, and so does the stream ending at a block
    /// boundary between entries (some writers omit the end marker).
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>> {
        if self.finished {
            return Ok(None);
        }
        let rest = self.remaining.saturating_add(self.padding);
        self.remaining = 0;
        self.padding = 0;
        self.skip(rest)?;

        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        // Meta entries (long names, PAX headers) precede the entry they describe; a stream of
        // them is bounded by the stream's length.
        loop {
            let mut h = [0u8; BLOCK as usize];
            let n = self.read_full(&mut h)?;
            if n == 0 && long_name.is_none() && long_link.is_none() && pax.is_empty() {
                self.finished = true;
                return Ok(None);
            }
            if n < h.len() {
                return Err(self.err("truncated: the stream ends inside a header"));
            }
            if h.iter().all(|&b| b == 0) {
                if long_name.is_some() || long_link.is_some() || !pax.is_empty() {
                    return Err(self.err("end of archive right after an extended header"));
                }
                // End of archive (the second zero block, if any, is left to the drain).
                self.finished = true;
                return Ok(None);
            }
            self.check_checksum(&h)?;
            let size = self.number(&h[124..136], "size")?;
            let flag = h[156];
            match flag {
                b'L' => {
                    long_name = Some(trim_nul(self.read_meta(
                        size,
                        MAX_LONG_NAME,
                        "long name",
                    )?))
                }
                b'K' => {
                    long_link = Some(trim_nul(self.read_meta(
                        size,
                        MAX_LONG_NAME,
                        "long link name",
                    )?))
                }
                b'x' => {
                    let data = self.read_meta(size, MAX_PAX_SIZE, "PAX header")?;
                    pax.extend(parse_pax(&data).map_err(|d| self.err(d))?);
                }
                b'g' => {
                    let data = self.read_meta(size, MAX_PAX_SIZE, "PAX global header")?;
                    let recs = parse_pax(&data).map_err(|d| self.err(d))?;
                    self.global.extend(recs);
                }
                b'V' => {
                    // A volume label: no file.
                    if size > MAX_FILE_SIZE {
                        return Err(self.err(format!("volume label of absurd size {size}")));
                    }
                    self.skip(size + padding_of(size))?;
                }
                _ => {
                    return self
                        .entry(&h, flag, size, long_name, long_link, pax)
                        .map(Some)
                }
            }
        }
    }

    fn check_checksum(&self, h: &[u8; BLOCK as usize]) -> Result<()> {
        let stored = self.number(&h[148..156], "checksum")?;
        let mut unsigned: u64 = 0;
        let mut signed: i64 = 0;
        for (i, &b) in h.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { b };
            unsigned += u64::from(b);
            signed += i64::from(b as i8);
        }
        if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
            return Err(self.err(format!(
                "header checksum {stored} does not match the header ({unsigned}): not a tar \
                 stream, or a corrupt one"
            )));
        }
        Ok(())
    }

    /// A numeric header field: octal (space/NUL terminated) or GNU base-256.
    fn number(&self, field: &[u8], what: &str) -> Result<u64> {
        parse_number(field).map_err(|d| self.err(format!("{what} field: {d}")))
    }

    fn entry(
        &mut self,
        h: &[u8; BLOCK as usize],
        flag: u8,
        size: u64,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        local: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<TarEntry> {
        let magic = &h[257..263];
        let posix = magic == b"ustar\0";
        let mut path = field_str(&h[0..100]).to_vec();
        if posix {
            let prefix = field_str(&h[345..500]);
            if !prefix.is_empty() {
                let mut p = prefix.to_vec();
                p.push(b'/');
                p.extend_from_slice(&path);
                path = p;
            }
        }
        let mut link = field_str(&h[157..257]).to_vec();
        if let Some(n) = long_name {
            path = n;
        }
        if let Some(l) = long_link {
            link = l;
        }
        let mut e = TarEntry {
            path,
            link,
            kind: EntryKind::Regular,
            mode: (self.number(&h[100..108], "mode")? & 0o7777) as u32,
            uid: self.id(&h[108..116], "uid")?,
            gid: self.id(&h[116..124], "gid")?,
            mtime: self.number(&h[136..148], "mtime")?,
            mtime_nsec: 0,
            size,
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
        };
        let is_dev = flag == b'3' || flag == b'4';
        if is_dev {
            e.dev_major = self.dev(&h[329..337], "devmajor")?;
            e.dev_minor = self.dev(&h[337..345], "devminor")?;
        }
        let records: Vec<(Vec<u8>, Vec<u8>)> = self.global.iter().cloned().chain(local).collect();
        // ACL text is converted once every record is applied: an xattr record of the same ACL
        // wins wherever it stands.
        let mut acl_access = None;
        let mut acl_default = None;
        for (k, v) in records {
            match k.as_slice() {
                b"SCHILY.acl.access" => acl_access = Some(v),
                b"SCHILY.acl.default" => acl_default = Some(v),
                _ => self.apply_pax(&mut e, &k, v)?,
            }
        }
        for (which, text) in [("access", acl_access), ("default", acl_default)] {
            if let Some(text) = text {
                apply_acl_text(&mut e, which, &text)?;
            }
        }
        e.kind = match flag {
            b'0' | 0 | b'7' => {
                if e.path.ends_with(b"/") {
                    EntryKind::Directory
                } else {
                    EntryKind::Regular
                }
            }
            b'1' => EntryKind::HardLink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::CharDev,
            b'4' => EntryKind::BlockDev,
            b'5' | b'D' => EntryKind::Directory,
            b'6' => EntryKind::Fifo,
            b'S' => {
                return Err(BuildError::Unsupported(format!(
                    "GNU sparse tar entry {:?}",
                    String::from_utf8_lossy(&e.path)
                )))
            }
            other => {
                return Err(BuildError::Unsupported(format!(
                    "tar entry type {:?} ({:?})",
                    other as char,
                    String::from_utf8_lossy(&e.path)
                )))
            }
        };
        if e.size > MAX_FILE_SIZE {
            return Err(BuildError::entry(
                &e.path,
                format!("absurd size {} (limit {MAX_FILE_SIZE})", e.size),
            ));
        }
        self.remaining = e.size;
        self.padding = padding_of(e.size);
        if e.kind != EntryKind::Regular {
            // Data of other entry types is skipped, not interpreted.
            e.size = 0;
        }
        Ok(e)
    }

    fn id(&self, field: &[u8], what: &str) -> Result<u32> {
        let v = self.number(field, what)?;
        u32::try_from(v).map_err(|_| self.err(format!("{what} {v} does not fit 32 bits")))
    }

    fn dev(&self, field: &[u8], what: &str) -> Result<u32> {
        // Some writers leave device fields blank: parse_number reads that as 0.
        self.id(field, what)
    }

    fn apply_pax(&self, e: &mut TarEntry, key: &[u8], value: Vec<u8>) -> Result<()> {
        let num = |v: &[u8], what: &str| -> Result<u64> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| self.err(format!("PAX {what} {:?} is not a number", lossy(v))))
        };
        match key {
            b"path" => e.path = value,
            b"linkpath" => e.link = value,
            b"size" => e.size = num(&value, "size")?,
            b"uid" => {
                e.uid = u32::try_from(num(&value, "uid")?)
                    .map_err(|_| self.err("PAX uid does not fit 32 bits"))?
            }
            b"gid" => {
                e.gid = u32::try_from(num(&value, "gid")?)
                    .map_err(|_| self.err("PAX gid does not fit 32 bits"))?
            }
            b"mtime" => {
                let (s, ns) = parse_pax_time(&value).ok_or_else(|| {
                    self.err(format!("PAX mtime {:?} is not a time", lossy(&value)))
                })?;
                e.mtime = s;
                e.mtime_nsec = ns;
            }
            _ if key.starts_with(b"SCHILY.xattr.") => {
                let name = key[b"SCHILY.xattr.".len()..].to_vec();
                set_xattr(&mut e.xattrs, name, value);
            }
            _ if key.starts_with(b"LIBARCHIVE.xattr.") => {
                use base64::Engine as _;
                let name = percent_decode(&key[b"LIBARCHIVE.xattr.".len()..]);
                let v = base64::engine::general_purpose::STANDARD
                    .decode(&value)
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&value))
                    .map_err(|_| self.err("LIBARCHIVE.xattr value is not base64"))?;
                // A SCHILY record for the same name (written by the same tool) wins.
                if !e.xattrs.iter().any(|(n, _)| *n == name) {
                    e.xattrs.push((name, v));
                }
            }
            _ if key.starts_with(b"GNU.sparse.") => {
                return Err(BuildError::Unsupported(format!(
                    "GNU sparse tar entry {:?}",
                    lossy(&e.path)
                )))
            }
            // atime, ctime, uname, gname, charset, comment and vendor records do not change
            // what the image shows.
            _ => {}
        }
        Ok(())
    }
}

/// Add the `system.posix_acl_{which}` xattr converted from `tar --acls` text, unless an xattr
/// record (Docker's form, or GNU tar's with `--xattrs`) already gave it. Named entries without a
/// numeric id are dropped one by one, each with a warning naming its kind and position (not the
/// name); text that is not an ACL is an error.
fn apply_acl_text(e: &mut TarEntry, which: &'static str, text: &[u8]) -> Result<()> {
    let name = format!("system.posix_acl_{which}").into_bytes();
    if e.xattrs.iter().any(|(n, _)| *n == name) {
        tracing::debug!(
            path = %lossy(&e.path),
            acl = which,
            "ACL text ignored: an xattr record gives the same ACL"
        );
        return Ok(());
    }
    let converted = crate::acl::text_to_xattr(text).map_err(|source| BuildError::Acl {
        path: lossy(&e.path),
        which,
        source,
    })?;
    let Some(converted) = converted else {
        return Ok(());
    };
    for d in &converted.dropped {
        tracing::warn!(
            path = %lossy(&e.path),
            acl = which,
            entry = d.kind.as_str(),
            position = d.position,
            "ACL entry names a {} without a numeric id (the image's own user database is not \
             consulted); this entry is dropped, the rest of the ACL is kept",
            d.kind.as_str()
        );
    }
    e.xattrs.push((name, converted.xattr));
    Ok(())
}

fn set_xattr(xattrs: &mut Vec<(Vec<u8>, Vec<u8>)>, name: Vec<u8>, value: Vec<u8>) {
    match xattrs.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => xattrs.push((name, value)),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A NUL-terminated header string field.
fn field_str(f: &[u8]) -> &[u8] {
    match f.iter().position(|&b| b == 0) {
        Some(i) => &f[..i],
        None => f,
    }
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// Parse an octal or base-256 numeric field.
pub fn parse_number(f: &[u8]) -> std::result::Result<u64, String> {
    if let Some(&first) = f.first() {
        if first & 0x80 != 0 {
            if first & 0x40 != 0 {
                return Err("negative base-256 number".into());
            }
            let mut v: u64 = u64::from(first & 0x3f);
            for &b in &f[1..] {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(b)))
                    .ok_or("base-256 number does not fit 64 bits")?;
            }
            return Ok(v);
        }
    }
    let mut v: u64 = 0;
    let mut seen = false;
    for &b in f {
        match b {
            b' ' | 0 if !seen => continue,
            b' ' | 0 => break,
            b'0'..=b'7' => {
                seen = true;
                v = v
                    .checked_mul(8)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .ok_or("octal number does not fit 64 bits")?;
            }
            _ => return Err(format!("invalid octal digit {:?}", b as char)),
        }
    }
    Ok(v)
}

/// A PAX time `[-]SECONDS[.FRACTION]`: negative times read as 0.
fn parse_pax_time(v: &[u8]) -> Option<(u64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let mut ns: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        ns += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    if neg {
        return Some((0, 0));
    }
    Some((secs, ns))
}

/// Decode `%XX` escapes (libarchive's xattr names).
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(a), Some(b)) = (hexval(s[i + 1]), hexval(s[i + 2])) {
                out.push(a * 16 + b);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn hexval(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// One PAX record: key and value bytes.
pub type PaxRecord = (Vec<u8>, Vec<u8>);

/// Split a PAX extended header into `(key, value)` records by their length prefixes; values
/// may hold any bytes, newlines included.
pub fn parse_pax(data: &[u8]) -> std::result::Result<Vec<PaxRecord>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        if data[pos] == 0 {
            // NUL padding after the last record.
            break;
        }
        let rest = &data[pos..];
        let sp = rest
            .iter()
            .take(21)
            .position(|&b| b == b' ')
            .ok_or("PAX record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record length is not a number")?;
        if len <= sp + 1 || len > rest.len() {
            return Err(format!(
                "PAX record length {len} is outside the header ({} bytes left)",
                rest.len()
            ));
        }
        let rec = &rest[sp + 1..len];
        if rec.last() != Some(&b'\n') {
            return Err("PAX record does not end with a newline".into());
        }
        let rec = &rec[..rec.len() - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or("PAX record without '='")?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        pos += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_keep_binary_values() {
        let value: Vec<u8> = (0u8..=255).collect();
        let mut rec = b"SCHILY.xattr.user.binary=".to_vec();
        rec.extend_from_slice(&value);
        rec.push(b'\n');
        // length counts itself
        let mut len = rec.len() + 4;
        if len.to_string().len() != 3 {
            len = rec.len() + len.to_string().len() + 1;
        }
        let mut data = format!("{len} ").into_bytes();
        data.extend_from_slice(&rec);
        data.extend_from_slice(b"12 path=abc\n");
        let recs = parse_pax(&data).unwrap();
        assert_eq!(recs[0].1, value);
        assert_eq!(recs[1], (b"path".to_vec(), b"abc".to_vec()));
        assert!(parse_pax(b"99 path=abc\n").is_err());
        assert!(parse_pax(b"x path=abc\n").is_err());
    }

    #[test]
    fn numbers_and_times() {
        assert_eq!(parse_number(b"0000644\0").unwrap(), 0o644);
        assert_eq!(parse_number(b"  17 \0").unwrap(), 0o17);
        assert_eq!(parse_number(b"\0\0\0").unwrap(), 0);
        assert_eq!(parse_number(&[0x80, 0, 0, 1, 0]).unwrap(), 256);
        assert!(parse_number(&[0xff, 0xff]).is_err());
        assert!(parse_number(b"9").is_err());
        assert!(
            parse_number(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err()
        );
        assert_eq!(
            parse_pax_time(b"1700000001.5").unwrap(),
            (1700000001, 500_000_000)
        );
        assert_eq!(parse_pax_time(b"-3.2").unwrap(), (0, 0));
        assert!(parse_pax_time(b"x").is_none());
    }

    fn header(name: &str, size: [u8; 12], flag: u8) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[124..136].copy_from_slice(&size);
        h[156] = flag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    #[test]
    fn absurd_sizes_of_any_entry_type_are_errors() {
        let huge = [
            0x80, 0x3f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        for flag in [b'0', b'5', b'2', b'V', b'x', b'L', b'g', b'3'] {
            let mut data = header("d", huge, flag);
            data.extend_from_slice(&[0u8; 1024]);
            let r = TarReader::new(&data[..]).next_entry();
            assert!(r.is_err(), "type {:?}: {r:?}", flag as char);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let garbage = vec![0x41u8; 4096];
        let mut r = TarReader::new(&garbage[..]);
        assert!(matches!(r.next_entry(), Err(BuildError::Tar { .. })));
        let empty: &[u8] = &[];
        assert!(TarReader::new(empty).next_entry().unwrap().is_none());
        let short = [1u8; 100];
        assert!(TarReader::new(&short[..]).next_entry().is_err());
    }

    fn all(data: &[u8]) -> Vec<(TarEntry, Vec<u8>)> {
        let mut r = TarReader::new(data);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            let mut d = vec![0u8; e.size as usize];
            r.read_data_exact(&mut d).unwrap();
            out.push((e, d));
        }
        out
    }

    #[test]
    fn reads_what_the_tar_crate_writes() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
        let mut b = ::tar::Builder::new(Vec::new());
        let mut h = ::tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o4755);
        h.set_uid(1000);
        h.set_gid(33);
        h.set_mtime(1_700_000_001);
        h.set_entry_type(::tar::EntryType::Regular);
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        let mut h = ::tar::Header::new_gnu();
        h.set_entry_type(::tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "sym", "t".repeat(300)).unwrap();
        let mut h = ::tar::Header::new_ustar();
        h.set_entry_type(::tar::EntryType::Char);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_size(0);
        b.append_data(&mut h, "dev/null", &b""[..]).unwrap();
        let mut h = ::tar::Header::new_ustar();
        h.set_entry_type(::tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "hard", &long).unwrap();
        b.append_pax_extensions([
            ("path", &b"pax/path/name"[..]),
            ("mtime", &b"1700000002.25"[..]),
            (
                "SCHILY.xattr.security.capability",
                &[1u8, 0, 0, 2, b'\n', b'='][..],
            ),
            ("SCHILY.xattr.user.empty", &b""[..]),
            (
                "SCHILY.acl.access",
                &b"user::rw-\nuser:4242:r--\ngroup::r--\nmask::r--\nother::r--\n"[..],
            ),
        ])
        .unwrap();
        let mut h = ::tar::Header::new_ustar();
        h.set_size(3);
        h.set_entry_type(::tar::EntryType::Regular);
        b.append_data(&mut h, "short", &b"abc"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let got = all(&data);
        assert_eq!(got.len(), 5);
        let (f, d) = &got[0];
        assert_eq!(f.path, long.as_bytes());
        assert_eq!(
            (f.kind, f.mode, f.uid, f.gid, f.mtime),
            (EntryKind::Regular, 0o4755, 1000, 33, 1_700_000_001)
        );
        assert_eq!(d, b"hello");
        assert_eq!(got[1].0.kind, EntryKind::Symlink);
        assert_eq!(got[1].0.link, "t".repeat(300).as_bytes());
        assert_eq!(
            (got[2].0.kind, got[2].0.dev_major, got[2].0.dev_minor),
            (EntryKind::CharDev, 1, 3)
        );
        assert_eq!(got[3].0.kind, EntryKind::HardLink);
        assert_eq!(got[3].0.link, long.as_bytes());
        let (p, d) = &got[4];
        assert_eq!(p.path, b"pax/path/name");
        assert_eq!((p.mtime, p.mtime_nsec), (1_700_000_002, 250_000_000));
        assert_eq!(
            p.xattrs,
            vec![
                (
                    b"security.capability".to_vec(),
                    vec![1u8, 0, 0, 2, b'\n', b'=']
                ),
                (b"user.empty".to_vec(), Vec::new()),
                (
                    b"system.posix_acl_access".to_vec(),
                    hex::decode(
                        "0200000001000600ffffffff020004009210000004000400ffffffff\
                         10000400ffffffff20000400ffffffff"
                    )
                    .unwrap()
                ),
            ]
        );
        assert_eq!(d, b"abc");
        // Every truncation of the archive is an error or a clean end, never a panic, and a
        // cut inside a header or data is an error.
        for cut in (0..data.len()).step_by(97) {
            let mut r = TarReader::new(&data[..cut]);
            let mut buf = [0u8; 64];
            let mut failed = false;
            while let Ok(Some(_)) = r.next_entry().inspect_err(|_| failed = true) {
                loop {
                    match r.read_data(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
            }
            // (A cut in the second end-of-archive block is harmless: the first one ended it.)
            if cut % 512 != 0 && cut < data.len() - 512 {
                assert!(failed, "a cut at byte {cut} went unnoticed");
            }
        }
    }

    /// One regular file `f` whose PAX header holds `records`.
    fn with_pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        b.append_pax_extensions(records.iter().copied()).unwrap();
        let mut h = ::tar::Header::new_ustar();
        h.set_size(0);
        h.set_entry_type(::tar::EntryType::Regular);
        b.append_data(&mut h, "f", &b""[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn first(data: &[u8]) -> Result<TarEntry> {
        TarReader::new(data)
            .next_entry()
            .map(|e| e.expect("one entry"))
    }

    #[test]
    fn acl_text_drops_only_entries_without_ids() {
        let data = with_pax(&[
            (
                "SCHILY.acl.access",
                &b"user::rw-\nuser:nosuchuser:r--\nuser:4242:r--\ngroup::r--\n\
                  group:staff:r-x:50\nmask::r-x\nother::---\n"[..],
            ),
            (
                "SCHILY.acl.default",
                &b"user::rwx,group::r-x,group:nosuchgroup:rwx,other::r-x"[..],
            ),
        ]);
        let e = first(&data).unwrap();
        assert_eq!(
            e.xattrs,
            vec![
                (
                    b"system.posix_acl_access".to_vec(),
                    hex::decode(
                        "0200000001000600ffffffff020004009210000004000400ffffffff\
                         080005003200000010000500ffffffff20000000ffffffff"
                    )
                    .unwrap()
                ),
                (
                    b"system.posix_acl_default".to_vec(),
                    hex::decode("0200000001000700ffffffff04000500ffffffff20000500ffffffff")
                        .unwrap()
                ),
            ]
        );
    }

    #[test]
    fn acl_xattr_record_wins_over_text_wherever_it_stands() {
        let binary: &[u8] =
            &hex::decode("0200000001000600ffffffff04000400ffffffff20000400ffffffff").unwrap();
        let text: &[u8] = b"user::rwx,user:4242:r--,group::r--,mask::r--,other::r--";
        for records in [
            [
                ("SCHILY.acl.access", text),
                ("SCHILY.xattr.system.posix_acl_access", binary),
            ],
            [
                ("SCHILY.xattr.system.posix_acl_access", binary),
                ("SCHILY.acl.access", text),
            ],
        ] {
            let e = first(&with_pax(&records)).unwrap();
            assert_eq!(
                e.xattrs,
                vec![(b"system.posix_acl_access".to_vec(), binary.to_vec())]
            );
        }
        // Text that is not an ACL is not even read when the xattr record is there...
        let e = first(&with_pax(&[
            ("SCHILY.acl.access", &b"user::rwz"[..]),
            ("SCHILY.xattr.system.posix_acl_access", binary),
        ]))
        .unwrap();
        assert_eq!(e.xattrs.len(), 1);
        // ...and is an error naming the entry when it is the only form.
        match first(&with_pax(&[(
            "SCHILY.acl.default",
            &b"user::rw-,user:bob:r--"[..],
        )])) {
            Err(BuildError::Acl {
                path,
                which: "default",
                source: crate::acl::AclError::Missing("group"),
            }) => assert_eq!(path, "f"),
            other => panic!("{other:?}"),
        }
        // Empty text is no ACL.
        assert!(first(&with_pax(&[("SCHILY.acl.access", &b""[..])]))
            .unwrap()
            .xattrs
            .is_empty());
    }

    #[test]
    fn percent_names() {
        assert_eq!(percent_decode(b"user.a%3Db"), b"user.a=b");
        assert_eq!(percent_decode(b"x%4"), b"x%4");
        assert_eq!(percent_decode(b"%"), b"%");
    }
}
