//! A full walk of the tree, for tools that need every entry (inspect, check, prefetch-all).
//! Mounts never walk: they look up on demand.

use std::collections::HashSet;

use crate::error::{RafsError, Result};
use crate::image::Image;
use crate::inode::Inode;

/// Deepest directory nesting a walk follows before it calls the image corrupt.
pub const MAX_DEPTH: usize = 4096;

/// One entry met by [`Image::walk`].
#[derive(Debug)]
pub struct WalkEntry {
    /// Path relative to the root, `/`-separated; empty for the root itself.
    pub path: Vec<u8>,
    /// The entry's inode.
    pub inode: Inode,
}

impl Image {
    /// Visit every entry, parents before children, each directory's entries in name order.
    /// Fails on a directory reached twice (a loop or a hard-linked directory), nesting deeper
    /// than [`MAX_DEPTH`], or any entry that does not parse.
    pub fn walk(&self, f: impl FnMut(&WalkEntry) -> Result<()>) -> Result<()> {
        self.walk_from(self.root(), f)
    }

    /// Like [`Image::walk`], from node `nid` (paths are relative to it).
    pub fn walk_from(&self, nid: u64, mut f: impl FnMut(&WalkEntry) -> Result<()>) -> Result<()> {
        let root = self.inode(nid)?;
        let mut seen_dirs = HashSet::new();
        seen_dirs.insert(root.nid);
        let mut stack = vec![(
            WalkEntry {
                path: Vec::new(),
                inode: root,
            },
            0usize,
        )];
        while let Some((entry, depth)) = stack.pop() {
            f(&entry)?;
            if !entry.inode.is_dir() {
                continue;
            }
            if depth >= MAX_DEPTH {
                return Err(RafsError::corrupt(format!(
                    "directory nesting deeper than {MAX_DEPTH} at {}",
                    String::from_utf8_lossy(&entry.path)
                )));
            }
            let mut children = Vec::new();
            let mut err = None;
            self.readdir(entry.inode.nid, 0, |d| {
                if d.name == b"." || d.name == b".." {
                    return true;
                }
                match self.inode(d.nid) {
                    Ok(inode) => {
                        let mut path = entry.path.clone();
                        if !path.is_empty() {
                            path.push(b'/');
                        }
                        path.extend_from_slice(&d.name);
                        children.push(WalkEntry { path, inode });
                        true
                    }
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                }
            })?;
            if let Some(e) = err {
                return Err(e);
            }
            for child in children.into_iter().rev() {
                if child.inode.is_dir() && !seen_dirs.insert(child.inode.nid) {
                    return Err(RafsError::corrupt(format!(
                        "directory loop: {} points back to directory nid {}",
                        String::from_utf8_lossy(&child.path),
                        child.inode.nid
                    )));
                }
                stack.push((child, depth + 1));
            }
        }
        Ok(())
    }
}
