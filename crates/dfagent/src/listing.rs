//! The JSON-lines listing format shared with the fixtures (`*.expected.jsonl`): one object per
//! entry, keys sorted, Python's `json.dumps` spacing, paths relative to the root (`.`).

use std::io::{self, Write};

use dfagent_rafs::{FileType, Image, Inode};
use serde_json::{Map, Value};

/// Python-compatible separators (`", "` and `": "`).
struct PySeparators;

impl serde_json::ser::Formatter for PySeparators {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// Serialize one listing object as a line.
pub fn to_line(obj: &Map<String, Value>) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PySeparators);
    serde::Serialize::serialize(obj, &mut ser).expect("serializing a JSON map to memory");
    String::from_utf8_lossy(&out).into_owned()
}

/// Name of a file type in the listing.
pub fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::Dir => "dir",
        FileType::File => "file",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::CharDev => "chardev",
        FileType::BlockDev => "blockdev",
        FileType::Socket => "socket",
    }
}

/// The listing object of one entry, without `sha256` (the caller adds it when it read the data).
pub fn entry(img: &Image, path: &str, inode: &Inode) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    m.insert("path".into(), path.into());
    m.insert("type".into(), type_name(inode.file_type).into());
    if inode.file_type != FileType::Symlink {
        m.insert("mode".into(), format!("0o{:o}", inode.mode & 0o7777).into());
    }
    m.insert("uid".into(), inode.uid.into());
    m.insert("gid".into(), inode.gid.into());
    m.insert("mtime".into(), inode.mtime.into());
    match inode.file_type {
        FileType::File => {
            m.insert("size".into(), inode.size.into());
            m.insert("nlink".into(), inode.nlink.into());
        }
        FileType::Symlink => {
            let target = img.readlink(inode.nid)?;
            m.insert("target".into(), String::from_utf8_lossy(&target).into());
        }
        FileType::CharDev | FileType::BlockDev => {
            m.insert(
                "rdev".into(),
                Value::Array(vec![inode.rdev_major().into(), inode.rdev_minor().into()]),
            );
        }
        _ => {}
    }
    let mut xattrs = Map::new();
    for x in img.xattrs(inode.nid)? {
        if x.name.starts_with(b"user.") {
            xattrs.insert(
                String::from_utf8_lossy(&x.name).into(),
                hex::encode(&x.value).into(),
            );
        }
    }
    if !xattrs.is_empty() {
        m.insert("xattrs".into(), Value::Object(xattrs));
    }
    Ok(m)
}
