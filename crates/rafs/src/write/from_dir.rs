//! Walking a local directory into a [`Tree`], file data cut into chunks, compressed and appended
//! to a [`BlobWriter`] (chunks with the same digest stored once). Used by round-trip tests and
//! by `dfagent build` of a directory.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use dfagent_core::{encode_chunk, Compression};

use super::{BlobWriter, BootstrapOptions, ChunkPlacement, Content, Node, Tree};
use crate::error::{RafsError, Result};
use crate::walk::MAX_DEPTH;

/// Most entries a walk accepts (inode numbers are 31-bit).
const MAX_NODES: usize = i32::MAX as usize;
/// Largest xattr name list or value read (the Linux limit is 64 KiB).
const XATTR_BUF: usize = 1 << 16;

fn io_err(path: &Path, source: std::io::Error) -> RafsError {
    RafsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Walk a local directory into a Tree; file contents are chunked and compressed through `blob`
/// (with `opts.compression`, stored raw when that does not pay). Entries are visited in name
/// order and hard links are detected by (device, inode), so the result is deterministic.
/// Placements carry blob index 0.
pub fn tree_from_dir(
    dir: &Path,
    blob: &mut BlobWriter<impl Write>,
    opts: &BootstrapOptions,
) -> Result<Tree> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| io_err(dir, e))?;
    if !meta.is_dir() {
        return Err(RafsError::InvalidTree(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut w = Walker {
        blob,
        opts,
        nodes: Vec::new(),
        links: HashMap::new(),
        dedup: HashMap::new(),
    };
    let root = w.node(dir, Vec::new(), 0, &meta)?;
    w.nodes.push(root);
    let mut stack: Vec<(PathBuf, u32, usize)> = vec![(dir.to_path_buf(), 0, 0)];
    while let Some((path, index, depth)) = stack.pop() {
        if depth >= MAX_DEPTH {
            return Err(RafsError::InvalidTree(format!(
                "{}: nesting deeper than {MAX_DEPTH}",
                path.display()
            )));
        }
        let mut entries = Vec::new();
        for e in std::fs::read_dir(&path).map_err(|e| io_err(&path, e))? {
            entries.push(e.map_err(|e| io_err(&path, e))?.file_name());
        }
        entries.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut subdirs = Vec::new();
        for name in entries {
            if w.nodes.len() >= MAX_NODES {
                return Err(RafsError::InvalidTree(format!(
                    "more than {MAX_NODES} entries"
                )));
            }
            let child = path.join(&name);
            let meta = std::fs::symlink_metadata(&child).map_err(|e| io_err(&child, e))?;
            let ci = w.nodes.len() as u32;
            let node = w.node(&child, name.as_bytes().to_vec(), index, &meta)?;
            w.nodes.push(node);
            w.nodes[index as usize].children.push(ci);
            if meta.is_dir() {
                subdirs.push((child, ci, depth + 1));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(Tree { nodes: w.nodes })
}

struct Walker<'a, W: Write> {
    blob: &'a mut BlobWriter<W>,
    opts: &'a BootstrapOptions,
    nodes: Vec<Node>,
    links: HashMap<(u64, u64), u32>,
    dedup: HashMap<dfagent_core::ChunkDigest, ChunkPlacement>,
}

impl<W: Write> Walker<'_, W> {
    fn node(
        &mut self,
        path: &Path,
        name: Vec<u8>,
        parent: u32,
        meta: &std::fs::Metadata,
    ) -> Result<Node> {
        let ft = meta.file_type();
        let mut node = Node {
            name,
            parent,
            children: Vec::new(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime().max(0) as u64,
            mtime_nsec: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
            rdev_major: 0,
            rdev_minor: 0,
            xattrs: Vec::new(),
            content: Content::None,
        };
        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(&first) = self.links.get(&key) {
                node.content = Content::HardLink(first);
                return Ok(node);
            }
            self.links.insert(key, self.nodes.len() as u32);
        }
        node.xattrs = read_xattrs(path)?;
        if ft.is_symlink() {
            let t = std::fs::read_link(path).map_err(|e| io_err(path, e))?;
            node.content = Content::Symlink(t.as_os_str().as_bytes().to_vec());
        } else if ft.is_file() && meta.len() > 0 {
            node.content = self.file(path, meta.len())?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let dev = meta.rdev();
            node.rdev_major = (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32;
            node.rdev_minor = ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32;
        }
        Ok(node)
    }

    fn file(&mut self, path: &Path, size: u64) -> Result<Content> {
        let cs = u64::from(self.opts.chunk_size);
        let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        let mut chunks = Vec::with_capacity(size.div_ceil(cs) as usize);
        let mut buf = vec![0u8; cs as usize];
        let mut done = 0u64;
        while done < size {
            let want = (size - done).min(cs) as usize;
            f.read_exact(&mut buf[..want])
                .map_err(|e| io_err(path, e))?;
            let data = &buf[..want];
            let digest = self.opts.digest_algo.digest(data);
            let placement = match self.dedup.get(&digest) {
                Some(p) => *p,
                None => {
                    let (stored, used) = encode_chunk(self.opts.compression, data)
                        .map_err(|e| io_err(path, std::io::Error::other(e)))?;
                    let p = self
                        .blob
                        .add_chunk(digest, want as u32, &stored, used != Compression::None)
                        .map_err(|e| io_err(path, e))?;
                    self.dedup.insert(digest, p);
                    p
                }
            };
            chunks.push(placement);
            done += want as u64;
        }
        Ok(Content::File { size, chunks })
    }
}

/// Every xattr of `path` (not following symlinks), sorted by name.
fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RafsError::InvalidTree(format!("{}: path contains NUL", path.display())))?;
    let mut names = vec![0u8; XATTR_BUF];
    // SAFETY: `c` is a valid NUL-terminated path and `names` a writable buffer of the given size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTSUP) {
            return Ok(Vec::new());
        }
        return Err(io_err(path, e));
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).map_err(|_| RafsError::InvalidTree("xattr name".into()))?;
        let mut value = vec![0u8; XATTR_BUF];
        // SAFETY: valid NUL-terminated path and name, writable buffer of the given size.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len < 0 {
            return Err(io_err(path, std::io::Error::last_os_error()));
        }
        value.truncate(len as usize);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}
