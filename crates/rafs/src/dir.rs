//! Directory blocks: 12-byte dirents at the start of each block, names packed after them, sorted
//! by name across the whole directory so that lookups are binary searches.

use crate::bytes::Le;
use crate::error::{RafsError, Result};
use crate::inode::FileType;
use crate::layout::dirent::{FILE_TYPE, MAX_NAME_LEN, NAMEOFF, NID, SIZE as DIRENT_SIZE};

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Entry name (any bytes but `/` and NUL).
    pub name: Vec<u8>,
    /// Node id of the target inode.
    pub nid: u64,
    /// Type recorded in the dirent (a hint; the inode's mode is authoritative).
    pub file_type: Option<FileType>,
    /// Offset to pass to `readdir` to continue after this entry.
    pub next_offset: u64,
}

/// `readdir` offsets: block index times this, plus the entry index, plus one.
pub(crate) const OFFSETS_PER_BLOCK: u64 = 1024;

/// A parsed view of one directory block.
pub(crate) struct DirBlock<'a> {
    block: &'a [u8],
    count: usize,
}

impl<'a> DirBlock<'a> {
    /// Validate the dirent array of `block` (the block's real length: the tail block of an
    /// inline directory is shorter than a full block).
    pub fn parse(block: &'a [u8], nid: u64, index: u64) -> Result<Self> {
        let bad =
            |msg: String| RafsError::corrupt(format!("directory nid {nid} block {index}: {msg}"));
        if block.len() < DIRENT_SIZE {
            return Err(bad(format!("{} bytes cannot hold a dirent", block.len())));
        }
        let first = usize::from(Le(block).u16(NAMEOFF));
        if first < DIRENT_SIZE || first % DIRENT_SIZE != 0 || first > block.len() {
            return Err(bad(format!("first name offset {first} is invalid")));
        }
        let count = first / DIRENT_SIZE;
        let mut prev = first;
        for i in 1..count {
            let off = usize::from(Le(block).u16(i * DIRENT_SIZE + NAMEOFF));
            if off <= prev || off > block.len() {
                return Err(bad(format!(
                    "name offset {off} of entry {i} is out of order or beyond the block"
                )));
            }
            prev = off;
        }
        if prev >= block.len() {
            return Err(bad("the last name is empty".into()));
        }
        let b = DirBlock { block, count };
        for i in 0..count {
            let n = b.name(i);
            if n.is_empty() || n.len() > MAX_NAME_LEN {
                return Err(bad(format!("entry {i} has a name of {} bytes", n.len())));
            }
            if n.contains(&b'/') {
                return Err(bad(format!("entry {i} name contains '/'")));
            }
        }
        Ok(b)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Name of entry `i` (validated in `parse`).
    pub fn name(&self, i: usize) -> &'a [u8] {
        let start = usize::from(Le(self.block).u16(i * DIRENT_SIZE + NAMEOFF));
        let end = if i + 1 < self.count {
            usize::from(Le(self.block).u16((i + 1) * DIRENT_SIZE + NAMEOFF))
        } else {
            self.block.len()
        };
        let name = &self.block[start..end];
        // The last name runs to the end of the block, padded with NULs.
        match name.iter().position(|&c| c == 0) {
            Some(p) => &name[..p],
            None => name,
        }
    }

    /// Nid of entry `i`.
    pub fn nid(&self, i: usize) -> u64 {
        Le(self.block).u64(i * DIRENT_SIZE + NID)
    }

    /// File type code of entry `i`.
    pub fn file_type(&self, i: usize) -> Option<FileType> {
        FileType::from_dirent_code(Le(self.block).u8(i * DIRENT_SIZE + FILE_TYPE))
    }

    /// Binary search for `name` in this block.
    pub fn find(&self, name: &[u8]) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid).cmp(name) {
                std::cmp::Ordering::Equal => return Ok(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Err(lo)
    }
}
