//! Where every inode and directory block of a bootstrap goes (the writer's placement; the format
//! itself is [`crate::layout`]), decided exactly as upstream
//! nydus-image decides it, so our bootstraps are upstream's byte for byte: inodes are numbered
//! in entry order (the root, each directory's entries sorted by name, subdirectories depth
//! first; hard links share the first entry's number) and placed in the same order by the same
//! allocator: a cursor plus the free tails of blocks left behind, which later small inodes fill.
//! Directory and symlink tails are inlined after their inode when inode and tail fit in one
//! block (EROFS requires the tail not to cross a block); full data blocks are block aligned.

use super::validate::file_type;
use super::{xattr, Content, Tree};
use crate::error::{RafsError, Result};
use crate::inode::FileType;
use crate::layout::inode::{EXTENDED_SIZE as INODE_SIZE, SLOT_SIZE};
use crate::layout::{chunk_addr, dirent, BLOCK_SIZE as BLOCK};

/// One directory entry before it is written: name and the node it names.
pub(crate) type Entry = (Vec<u8>, u32);

/// Data layout of a placed inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Data {
    /// No data beyond the inode (devices, fifos, sockets).
    None,
    /// Chunk-based file: the chunk address array follows the inode, 8-aligned.
    Chunks,
    /// Directory or symlink whose last partial block follows the inode.
    Inline,
    /// Directory or symlink whose data all lives in full blocks.
    Plain,
}

/// One on-disk inode.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The node whose attributes and content the inode records (a hard link's target).
    pub node: u32,
    /// Inode number: position of its first entry in the walk, 1-based.
    pub ino: u32,
    /// Byte offset in the bootstrap.
    pub offset: u64,
    /// Kind.
    pub file_type: FileType,
    /// Number of directory entries naming it (directories: 2 + subdirectories).
    pub nlink: u32,
    /// `i_size`.
    pub size: u64,
    /// Inline xattr body size.
    pub xattr_size: u64,
    /// Data layout.
    pub data: Data,
    /// First block of the full data blocks (directories and symlinks).
    pub blkaddr: u32,
    /// Directory blocks: each a list of (name, node) sorted by name, "." and ".." included.
    pub dir_blocks: Vec<Vec<Entry>>,
}

/// The placed metadata of a whole tree.
pub(crate) struct Placement {
    /// Inodes in placement order.
    pub slots: Vec<Slot>,
    /// For every node, the index of its inode in `slots`.
    pub slot_of: Vec<u32>,
    /// Number of tree nodes (upstream's inode count: one per entry, hard links included).
    pub inos: u64,
    /// End of the inode and directory block area.
    pub end: u64,
    /// Every entry in breadth-first order, each directory's entries sorted by name: the order
    /// upstream dumps inodes in (it decides which file a shared chunk's `file_offset` names).
    pub bfs: Vec<u32>,
}

fn too_big(what: &str) -> RafsError {
    RafsError::InvalidTree(format!(
        "{what}: the image is too large for RAFS v6 addressing"
    ))
}

/// The node whose inode a node's entry names.
pub(crate) fn target(tree: &Tree, i: u32) -> u32 {
    match tree.nodes[i as usize].content {
        Content::HardLink(t) => t,
        _ => i,
    }
}

/// Entry order: the root, each directory's children sorted by name, subdirectories depth first.
/// Also returns each directory's sorted children.
fn walk_order(tree: &Tree) -> (Vec<u32>, Vec<Vec<u32>>) {
    let n = tree.nodes.len();
    let mut sorted: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut order = Vec::with_capacity(n);
    order.push(0u32);
    let mut stack = vec![0u32];
    while let Some(d) = stack.pop() {
        let mut children = tree.nodes[d as usize].children.clone();
        children.sort_by(|a, b| {
            tree.nodes[*a as usize]
                .name
                .cmp(&tree.nodes[*b as usize].name)
        });
        order.extend_from_slice(&children);
        for &c in children.iter().rev() {
            if is_dir_mode(tree.nodes[c as usize].mode)
                && !matches!(tree.nodes[c as usize].content, Content::HardLink(_))
            {
                stack.push(c);
            }
        }
        sorted[d as usize] = children;
    }
    (order, sorted)
}

/// Whether a mode's type bits say directory.
pub(crate) fn is_dir_mode(mode: u32) -> bool {
    FileType::from_mode(mode) == Some(FileType::Dir)
}

/// Fill directory blocks with `entries` (sorted by name): each entry takes a dirent plus its
/// name, and a block holds what fits in one block. Returns the blocks and `i_size`.
fn dir_blocks(entries: Vec<Entry>) -> (Vec<Vec<Entry>>, u64) {
    let mut blocks: Vec<Vec<Entry>> = vec![Vec::new()];
    let mut used = 0usize;
    for e in entries {
        let len = dirent::SIZE + e.0.len();
        if used + len > BLOCK as usize {
            blocks.push(Vec::new());
            used = 0;
        }
        used += len;
        if let Some(b) = blocks.last_mut() {
            b.push(e);
        }
    }
    let size = (blocks.len() as u64 - 1) * BLOCK + used as u64;
    (blocks, size)
}

fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Upstream nydus-image's metadata allocator: a cursor, and the unused tails of blocks it left
/// behind, queued by how many inode slots each has free, so later small inodes fill them.
struct Allocator {
    cursor: u64,
    free: Vec<std::collections::VecDeque<u64>>,
}

impl Allocator {
    fn new(cursor: u64) -> Self {
        Allocator {
            cursor,
            free: vec![std::collections::VecDeque::new(); (BLOCK / SLOT_SIZE) as usize],
        }
    }

    /// Remember the free tail of the block holding `offset` (nothing when it is a boundary).
    fn leave(&mut self, offset: u64) {
        if !offset.is_multiple_of(BLOCK) {
            let slots = ((BLOCK - offset % BLOCK) / SLOT_SIZE) as usize;
            self.free[slots].push_back(offset - offset % BLOCK);
        }
    }

    /// Leave the rest of the current block free and move to the next one.
    fn skip_to_block(&mut self) {
        self.leave(self.cursor);
        self.cursor = align(self.cursor, BLOCK);
    }

    /// Room for `size` bytes in a block left behind earlier, first fit by free slots.
    fn take(&mut self, size: u64) -> Option<u64> {
        if size >= BLOCK {
            return None;
        }
        let need = size.div_ceil(SLOT_SIZE) as usize;
        for slots in need..self.free.len() {
            if let Some(block) = self.free[slots].pop_front() {
                let at = block + BLOCK - slots as u64 * SLOT_SIZE;
                self.leave(at + need as u64 * SLOT_SIZE);
                return Some(at);
            }
        }
        None
    }
}

/// Place every inode of `tree` starting at byte `start` (the root's offset).
pub(crate) fn place(tree: &Tree, chunk_size: u32, start: u64) -> Result<Placement> {
    let nodes = &tree.nodes;
    let (order, sorted) = walk_order(tree);
    let mut slot_of = vec![u32::MAX; nodes.len()];
    let mut slots: Vec<Slot> = Vec::new();
    // Directories are placed when the walk reaches them, their non-directory entries right
    // after: first the slots are created in entry order, then placed in upstream's order.
    let mut links = vec![0u32; nodes.len()];
    for &i in &order[1..] {
        links[target(tree, i) as usize] += 1;
    }
    for (pos, &i) in order.iter().enumerate() {
        let t = target(tree, i);
        if slot_of[t as usize] != u32::MAX {
            continue;
        }
        let n = &nodes[t as usize];
        let ft = file_type(tree, t, n)?;
        let xattr_size = xattr::body_size(&n.xattrs) as u64;
        let (size, dir_blocks, data, nlink) = match (&n.content, ft) {
            (_, FileType::Dir) => {
                let mut entries: Vec<Entry> = Vec::with_capacity(sorted[t as usize].len() + 2);
                entries.push((b".".to_vec(), t));
                entries.push((b"..".to_vec(), if t == 0 { 0 } else { n.parent }));
                let mut subdirs = 0u32;
                for &c in &sorted[t as usize] {
                    let ct = target(tree, c);
                    if ct == c && is_dir_mode(nodes[c as usize].mode) {
                        subdirs += 1;
                    }
                    entries.push((nodes[c as usize].name.clone(), c));
                }
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                let (blocks, size) = dir_blocks(entries);
                (size, blocks, Data::Plain, 2 + subdirs)
            }
            (Content::Symlink(target), _) => (
                target.len() as u64,
                Vec::new(),
                Data::Plain,
                links[t as usize],
            ),
            (Content::File { size, .. }, _) => (*size, Vec::new(), Data::Chunks, links[t as usize]),
            (_, FileType::File) => (0, Vec::new(), Data::Chunks, links[t as usize]),
            _ => (0, Vec::new(), Data::None, links[t as usize]),
        };
        slot_of[t as usize] = slots.len() as u32;
        slots.push(Slot {
            node: t,
            ino: pos as u32 + 1,
            offset: 0,
            file_type: ft,
            nlink: nlink.max(1),
            size,
            xattr_size,
            data,
            blkaddr: 0,
            dir_blocks,
        });
    }
    // Placement order: a directory, then its non-directory entries, then its subdirectories.
    let mut place: Vec<u32> = Vec::with_capacity(slots.len());
    let mut placed = vec![false; slots.len()];
    let mut stack = vec![0u32];
    while let Some(d) = stack.pop() {
        let ds = slot_of[d as usize];
        if !placed[ds as usize] {
            placed[ds as usize] = true;
            place.push(ds);
        }
        for &c in &sorted[d as usize] {
            let s = slot_of[target(tree, c) as usize];
            if slots[s as usize].file_type != FileType::Dir && !placed[s as usize] {
                placed[s as usize] = true;
                place.push(s);
            }
        }
        for &c in sorted[d as usize].iter().rev() {
            if slots[slot_of[target(tree, c) as usize] as usize].file_type == FileType::Dir {
                stack.push(c);
            }
        }
    }
    let cs = u64::from(chunk_size);
    let mut a = Allocator::new(start);
    for &s in &place {
        let slot = &mut slots[s as usize];
        let head = INODE_SIZE + slot.xattr_size;
        match slot.data {
            Data::None => {
                slot.offset = a.cursor;
                a.cursor += head;
            }
            Data::Chunks => {
                let total =
                    align(head, chunk_addr::ALIGN) + chunk_addr::SIZE * slot.size.div_ceil(cs);
                slot.offset = a.take(total).unwrap_or_else(|| {
                    let at = a.cursor;
                    a.cursor += total;
                    at
                });
            }
            Data::Inline | Data::Plain => {
                let tail = slot.size % BLOCK;
                let data_at = if tail != 0 && head + tail <= BLOCK {
                    slot.data = Data::Inline;
                    slot.offset = a.take(head + tail).unwrap_or_else(|| {
                        if BLOCK - a.cursor % BLOCK < head + tail {
                            a.skip_to_block();
                        }
                        let at = a.cursor;
                        a.cursor += head + tail;
                        at
                    });
                    if slot.size != tail {
                        a.skip_to_block();
                    }
                    let at = a.cursor;
                    a.cursor += slot.size - tail;
                    at
                } else {
                    slot.data = Data::Plain;
                    slot.offset = a.take(head).unwrap_or_else(|| {
                        let at = a.cursor;
                        a.cursor += head;
                        at
                    });
                    a.skip_to_block();
                    let at = a.cursor;
                    a.cursor = align(a.cursor + slot.size, BLOCK);
                    at
                };
                // Upstream records the data's block even when all of it is inline.
                slot.blkaddr =
                    u32::try_from(data_at / BLOCK).map_err(|_| too_big("directory blocks"))?;
            }
        }
        a.cursor = align(a.cursor, SLOT_SIZE);
    }
    let end = a.cursor;
    let inos = order.len() as u64;
    // Put slots in placement order so the writer emits them sequentially.
    let mut remap = vec![0u32; slots.len()];
    for (new, &old) in place.iter().enumerate() {
        remap[old as usize] = new as u32;
    }
    let mut by_place: Vec<Option<Slot>> = slots.into_iter().map(Some).collect();
    let slots: Vec<Slot> = place
        .iter()
        .filter_map(|&old| by_place[old as usize].take())
        .collect();
    for s in slot_of.iter_mut() {
        if *s != u32::MAX {
            *s = remap[*s as usize];
        }
    }
    // Hard link entries share their target's inode.
    for i in 0..nodes.len() as u32 {
        slot_of[i as usize] = slot_of[target(tree, i) as usize];
    }
    let mut bfs = Vec::with_capacity(nodes.len());
    bfs.push(0u32);
    let mut k = 0;
    while k < bfs.len() {
        let d = bfs[k] as usize;
        bfs.extend_from_slice(&sorted[d]);
        k += 1;
    }
    Ok(Placement {
        slots,
        slot_of,
        inos,
        end,
        bfs,
    })
}
