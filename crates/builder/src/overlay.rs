//! The merged filesystem of an image: layers applied in order with OCI whiteout semantics, then
//! turned into the writer's [`Tree`].
//!
//! Directory entries (dentries) and inodes are kept apart so hard links are what they are on
//! disk: several dentries naming one inode. When a later layer replaces one name of a
//! hard-linked file, the other names keep the old inode (and its old bytes).
//!
//! Rules (the OCI image spec's, with the choices it leaves open written down):
//! - Paths: a leading `/` and `.` components are dropped (as tar does); a `..` component is an
//!   error. The entry for the root (`./`) sets the root's attributes.
//! - A parent directory missing from the layer is created with mode 0755, owner 0:0, mtime 0.
//!   A parent that exists but is not a directory is an error (symlinks are never followed).
//! - `DIR/.wh.NAME` removes `DIR/NAME` as lower layers left it; `DIR/.wh..wh..opq` hides
//!   everything lower layers put in `DIR` (recursively). Both act on lower layers only, whatever
//!   their position in the layer's tar, and never appear in the image. A whiteout naming `.`,
//!   `..` or nothing is an error; other `.wh..wh.*` names (aufs bookkeeping) are ignored.
//! - A directory entry over an existing directory replaces its attributes (mode, owner, mtime,
//!   xattrs) and keeps its children; any other entry replaces what was there.
//! - A hard link entry names a path that must exist (in this or a lower layer) and must not be
//!   a directory.

use std::collections::{BTreeMap, HashMap};

use dfagent_rafs::write::{ChunkPlacement, Content, Node, Tree};

use crate::error::{BuildError, Result};
use crate::tar::{EntryKind, TarEntry};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFIFO: u32 = 0o010000;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";

/// Index of an inode in [`Overlay`].
pub type InodeId = u32;
type DentryId = u32;

/// What an inode holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// A directory (its entries live in the dentries).
    Dir,
    /// Devices and fifos.
    Special,
    /// A symlink target.
    Symlink(Vec<u8>),
    /// A regular file; `chunks` are filled in once its layer's chunks are placed.
    File {
        /// Size in bytes.
        size: u64,
        /// Placements in file order.
        chunks: Vec<ChunkPlacement>,
    },
}

/// One inode of the merged tree.
#[derive(Clone, Debug)]
pub struct Inode {
    /// Full `st_mode` (type bits and permission bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds).
    pub mtime: u64,
    /// Modification time (nanoseconds).
    pub mtime_nsec: u32,
    /// Device major (devices).
    pub rdev_major: u32,
    /// Device minor (devices).
    pub rdev_minor: u32,
    /// Extended attributes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Content.
    pub data: Data,
}

struct Dentry {
    name: Vec<u8>,
    inode: InodeId,
    /// The layer that last declared this dentry (whiteouts act only on lower layers).
    layer: u32,
    children: BTreeMap<Vec<u8>, DentryId>,
}

/// What applying a tar entry asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Nothing more (directories, links, whiteouts, empty files, ...).
    Done,
    /// A regular file with data: feed its bytes to the chunker for this inode.
    Data(InodeId),
}

/// The merged tree being built.
pub struct Overlay {
    dentries: Vec<Dentry>,
    inodes: Vec<Inode>,
    layer: u32,
}

impl Default for Overlay {
    fn default() -> Self {
        Self::new()
    }
}

/// Split a tar path into components: leading `/`, empty and `.` components dropped, `..`
/// refused.
pub fn split_path(path: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(BuildError::entry(
                    path,
                    "a `..` component would escape the image root",
                ))
            }
            c if c.contains(&0) => {
                return Err(BuildError::entry(path, "a NUL byte in a path component"))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Overlay {
    /// An image holding only its root directory (0755, root-owned, mtime 0).
    pub fn new() -> Self {
        Self {
            dentries: vec![Dentry {
                name: Vec::new(),
                inode: 0,
                layer: 0,
                children: BTreeMap::new(),
            }],
            inodes: vec![dir_inode()],
            layer: 0,
        }
    }

    /// Start applying layer `index` (0 = bottom); layers must come in order.
    pub fn begin_layer(&mut self, index: u32) {
        self.layer = index;
    }

    /// The inode `id`.
    pub fn inode(&self, id: InodeId) -> &Inode {
        &self.inodes[id as usize]
    }

    /// Record the chunks of file inode `id` (sizes were checked by the chunker).
    pub fn set_chunks(&mut self, id: InodeId, placements: Vec<ChunkPlacement>) {
        if let Some(Inode {
            data: Data::File { chunks, .. },
            ..
        }) = self.inodes.get_mut(id as usize)
        {
            *chunks = placements;
        }
    }

    fn is_dir(&self, d: DentryId) -> bool {
        self.inodes[self.dentries[d as usize].inode as usize].data == Data::Dir
    }

    fn new_inode(&mut self, inode: Inode) -> Result<InodeId> {
        let id = u32::try_from(self.inodes.len())
            .map_err(|_| BuildError::Unsupported("more than 2^32 inodes".into()))?;
        self.inodes.push(inode);
        Ok(id)
    }

    fn link(&mut self, parent: DentryId, name: &[u8], inode: InodeId) -> Result<DentryId> {
        let id = u32::try_from(self.dentries.len())
            .map_err(|_| BuildError::Unsupported("more than 2^32 directory entries".into()))?;
        self.dentries.push(Dentry {
            name: name.to_vec(),
            inode,
            layer: self.layer,
            children: BTreeMap::new(),
        });
        self.dentries[parent as usize]
            .children
            .insert(name.to_vec(), id);
        Ok(id)
    }

    fn unlink(&mut self, parent: DentryId, name: &[u8]) {
        // The subtree below becomes unreachable; that is all removal needs.
        self.dentries[parent as usize].children.remove(name);
    }

    /// The directory at `comps`, creating missing components (0755, 0:0, mtime 0).
    fn ensure_dir(&mut self, comps: &[&[u8]], path: &[u8]) -> Result<DentryId> {
        let mut cur: DentryId = 0;
        for c in comps {
            cur = match self.dentries[cur as usize].children.get(*c) {
                Some(&d) if self.is_dir(d) => d,
                Some(_) => {
                    return Err(BuildError::entry(
                        path,
                        format!(
                            "parent component {:?} is not a directory",
                            String::from_utf8_lossy(c)
                        ),
                    ))
                }
                None => {
                    let ino = self.new_inode(dir_inode())?;
                    self.link(cur, c, ino)?
                }
            };
        }
        Ok(cur)
    }

    /// The dentry at `comps`, if it exists.
    fn lookup(&self, comps: &[&[u8]]) -> Option<DentryId> {
        let mut cur: DentryId = 0;
        for c in comps {
            cur = *self.dentries[cur as usize].children.get(*c)?;
        }
        Some(cur)
    }

    /// Apply one tar entry of the current layer.
    pub fn apply(&mut self, e: &TarEntry) -> Result<Applied> {
        let comps = split_path(&e.path)?;
        let Some((name, parents)) = comps.split_last() else {
            if e.kind != EntryKind::Directory {
                return Err(BuildError::entry(
                    &e.path,
                    "the image root must be a directory",
                ));
            }
            let root = self.dentries[0].inode;
            self.set_attrs(root, e);
            return Ok(Applied::Done);
        };
        let name: &[u8] = name;
        if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(e, parents, name, target);
        }
        if name.len() > dfagent_rafs::MAX_NAME_LEN {
            return Err(BuildError::entry(
                &e.path,
                format!("name longer than {} bytes", dfagent_rafs::MAX_NAME_LEN),
            ));
        }
        // Resolve a hard link's target before anything at the entry's path is replaced.
        let link_target = if e.kind == EntryKind::HardLink {
            let tcomps = split_path(&e.link)?;
            let t = self.lookup(&tcomps).ok_or_else(|| {
                BuildError::entry(
                    &e.path,
                    format!(
                        "hard link to {:?}, which does not exist",
                        String::from_utf8_lossy(&e.link)
                    ),
                )
            })?;
            if t == 0 || self.is_dir(t) {
                return Err(BuildError::entry(&e.path, "hard link to a directory"));
            }
            Some(self.dentries[t as usize].inode)
        } else {
            None
        };
        let parent = self.ensure_dir(parents, &e.path)?;
        let existing = self.dentries[parent as usize].children.get(name).copied();
        if e.kind == EntryKind::Directory {
            if let Some(d) = existing.filter(|&d| self.is_dir(d)) {
                let ino = self.dentries[d as usize].inode;
                self.set_attrs(ino, e);
                self.dentries[d as usize].layer = self.layer;
                return Ok(Applied::Done);
            }
        }
        if let Some(d) = existing {
            if link_target == Some(self.dentries[d as usize].inode) {
                // A hard link to itself.
                return Ok(Applied::Done);
            }
            self.unlink(parent, name);
        }
        if let Some(ino) = link_target {
            self.link(parent, name, ino)?;
            return Ok(Applied::Done);
        }
        let (type_bits, data) = match e.kind {
            EntryKind::Directory => (S_IFDIR, Data::Dir),
            EntryKind::Regular => (
                S_IFREG,
                Data::File {
                    size: e.size,
                    chunks: Vec::new(),
                },
            ),
            EntryKind::Symlink => {
                if e.link.is_empty() || e.link.contains(&0) {
                    return Err(BuildError::entry(
                        &e.path,
                        "symlink target is empty or holds a NUL byte",
                    ));
                }
                (S_IFLNK, Data::Symlink(e.link.clone()))
            }
            EntryKind::CharDev => (S_IFCHR, Data::Special),
            EntryKind::BlockDev => (S_IFBLK, Data::Special),
            EntryKind::Fifo => (S_IFIFO, Data::Special),
            EntryKind::HardLink => return Err(BuildError::Internal("unresolved hard link".into())),
        };
        let is_special = matches!(e.kind, EntryKind::CharDev | EntryKind::BlockDev);
        let ino = self.new_inode(Inode {
            mode: type_bits | (e.mode & 0o7777),
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            rdev_major: if is_special { e.dev_major } else { 0 },
            rdev_minor: if is_special { e.dev_minor } else { 0 },
            xattrs: e.xattrs.clone(),
            data,
        })?;
        self.link(parent, name, ino)?;
        Ok(if e.kind == EntryKind::Regular && e.size > 0 {
            Applied::Data(ino)
        } else {
            Applied::Done
        })
    }

    fn set_attrs(&mut self, ino: InodeId, e: &TarEntry) {
        let i = &mut self.inodes[ino as usize];
        i.mode = S_IFDIR | (e.mode & 0o7777);
        i.uid = e.uid;
        i.gid = e.gid;
        i.mtime = e.mtime;
        i.mtime_nsec = e.mtime_nsec;
        i.xattrs = e.xattrs.clone();
    }

    fn whiteout(
        &mut self,
        e: &TarEntry,
        parents: &[&[u8]],
        name: &[u8],
        target: &[u8],
    ) -> Result<Applied> {
        if name == WHITEOUT_OPAQUE {
            if let Some(d) = self.lookup(parents) {
                if self.is_dir(d) {
                    self.purge_lower(d);
                }
            }
            return Ok(Applied::Done);
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            tracing::debug!(path = %String::from_utf8_lossy(&e.path), "ignoring aufs meta whiteout");
            return Ok(Applied::Done);
        }
        if target.is_empty() || target == b"." || target == b".." {
            return Err(BuildError::entry(
                &e.path,
                "whiteout that names no entry of its directory",
            ));
        }
        let Some(parent) = self.lookup(parents).filter(|&d| self.is_dir(d)) else {
            // Nothing lower to hide.
            return Ok(Applied::Done);
        };
        if let Some(&d) = self.dentries[parent as usize].children.get(target) {
            if self.dentries[d as usize].layer < self.layer {
                self.unlink(parent, target);
            }
        }
        Ok(Applied::Done)
    }

    /// Hide everything lower layers put below directory `d` (an opaque directory).
    fn purge_lower(&mut self, d: DentryId) {
        let mut stack = vec![d];
        while let Some(dir) = stack.pop() {
            let kids: Vec<(Vec<u8>, DentryId)> = self.dentries[dir as usize]
                .children
                .iter()
                .map(|(n, &c)| (n.clone(), c))
                .collect();
            for (n, c) in kids {
                if self.dentries[c as usize].layer < self.layer {
                    self.unlink(dir, &n);
                } else if self.is_dir(c) {
                    stack.push(c);
                }
            }
        }
    }

    /// Node indices (in the tree [`Overlay::into_tree`] makes) of the paths of `patterns`,
    /// which are absolute paths; missing paths are skipped with a warning.
    fn resolve_patterns(&self, patterns: &[Vec<u8>]) -> Vec<DentryId> {
        let mut out = Vec::new();
        for p in patterns {
            let found = split_path(p).ok().and_then(|c| self.lookup(&c));
            match found {
                Some(d) => {
                    if !out.contains(&d) {
                        out.push(d)
                    }
                }
                None => tracing::warn!(
                    path = %String::from_utf8_lossy(p),
                    "prefetch pattern names no file of the image; skipped"
                ),
            }
        }
        out
    }

    /// The writer's tree: nodes in depth-first order with children sorted by name; the first
    /// name of a hard-linked inode carries the content, later names are
    /// [`Content::HardLink`]s to it. `prefetch` patterns become node indices.
    pub fn into_tree(self, prefetch: &[Vec<u8>]) -> Result<(Tree, Vec<u32>)> {
        let wanted = self.resolve_patterns(prefetch);
        let mut node_of: HashMap<DentryId, u32> = HashMap::new();
        let mut first_node_of_inode: HashMap<InodeId, u32> = HashMap::new();
        let mut nodes: Vec<Node> = Vec::new();
        // (dentry, parent node)
        let mut stack: Vec<(DentryId, u32)> = vec![(0, 0)];
        while let Some((d, parent_node)) = stack.pop() {
            let idx = u32::try_from(nodes.len())
                .map_err(|_| BuildError::Unsupported("more than 2^32 nodes".into()))?;
            let dentry = &self.dentries[d as usize];
            let inode = &self.inodes[dentry.inode as usize];
            let content = match first_node_of_inode.get(&dentry.inode) {
                Some(&first) if inode.data != Data::Dir => Content::HardLink(first),
                _ => {
                    first_node_of_inode.insert(dentry.inode, idx);
                    match &inode.data {
                        Data::Dir | Data::Special => Content::None,
                        Data::Symlink(t) => Content::Symlink(t.clone()),
                        Data::File { size: 0, .. } => Content::None,
                        Data::File { size, chunks } => Content::File {
                            size: *size,
                            chunks: chunks.clone(),
                        },
                    }
                }
            };
            nodes.push(Node {
                name: dentry.name.clone(),
                parent: parent_node,
                children: Vec::new(),
                mode: inode.mode,
                uid: inode.uid,
                gid: inode.gid,
                mtime: inode.mtime,
                mtime_nsec: inode.mtime_nsec,
                rdev_major: inode.rdev_major,
                rdev_minor: inode.rdev_minor,
                xattrs: inode.xattrs.clone(),
                content,
            });
            node_of.insert(d, idx);
            if d != 0 {
                nodes[parent_node as usize].children.push(idx);
            }
            // Reverse so the smallest name is popped (and numbered) first.
            for &c in dentry.children.values().rev() {
                stack.push((c, idx));
            }
        }
        let prefetch = wanted
            .iter()
            .filter_map(|d| node_of.get(d).copied())
            .collect();
        Ok((Tree { nodes }, prefetch))
    }
}

fn dir_inode() -> Inode {
    Inode {
        mode: S_IFDIR | 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        rdev_major: 0,
        rdev_minor: 0,
        xattrs: Vec::new(),
        data: Data::Dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(path: &str, kind: EntryKind) -> TarEntry {
        TarEntry {
            path: path.as_bytes().to_vec(),
            link: Vec::new(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            mtime_nsec: 0,
            size: 0,
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
        }
    }

    fn names(o: Overlay) -> Vec<String> {
        let (t, _) = o.into_tree(&[]).unwrap();
        let mut out = Vec::new();
        for n in &t.nodes[1..] {
            let mut p = vec![String::from_utf8_lossy(&n.name).into_owned()];
            let mut cur = n.parent;
            while cur != 0 {
                p.push(String::from_utf8_lossy(&t.nodes[cur as usize].name).into_owned());
                cur = t.nodes[cur as usize].parent;
            }
            p.reverse();
            out.push(p.join("/"));
        }
        out
    }

    #[test]
    fn whiteouts_and_opaque_act_on_lower_layers_only() {
        let mut o = Overlay::new();
        o.begin_layer(0);
        for p in ["a/x", "a/y", "b/z", "c"] {
            o.apply(&ent(p, EntryKind::Regular)).unwrap();
        }
        o.begin_layer(1);
        // The new file comes before the opaque marker in the tar: it survives.
        o.apply(&ent("a/new", EntryKind::Regular)).unwrap();
        o.apply(&ent("a/.wh..wh..opq", EntryKind::Regular)).unwrap();
        o.apply(&ent("./.wh.c", EntryKind::Regular)).unwrap();
        o.apply(&ent("b/.wh.missing", EntryKind::Regular)).unwrap();
        assert_eq!(names(o), vec!["a", "a/new", "b", "b/z"]);
    }

    #[test]
    fn hard_links_survive_replacement_of_a_partner() {
        let mut o = Overlay::new();
        o.begin_layer(0);
        let mut f = ent("f", EntryKind::Regular);
        f.size = 3;
        assert_eq!(o.apply(&f).unwrap(), Applied::Data(1));
        let mut l = ent("g", EntryKind::HardLink);
        l.link = b"./f".to_vec();
        assert_eq!(o.apply(&l).unwrap(), Applied::Done);
        o.begin_layer(1);
        assert!(matches!(o.apply(&f).unwrap(), Applied::Data(2)));
        let (t, _) = o.into_tree(&[]).unwrap();
        assert!(t
            .nodes
            .iter()
            .all(|n| !matches!(n.content, Content::HardLink(_))));
    }

    #[test]
    fn bad_paths_are_errors() {
        let mut o = Overlay::new();
        assert!(o.apply(&ent("../etc/passwd", EntryKind::Regular)).is_err());
        assert!(o.apply(&ent("a/.wh...", EntryKind::Regular)).is_err());
        o.apply(&ent("/abs/file", EntryKind::Regular)).unwrap();
        assert!(o.apply(&ent("abs/file/under", EntryKind::Regular)).is_err());
        let mut l = ent("l", EntryKind::HardLink);
        l.link = b"nope".to_vec();
        assert!(o.apply(&l).is_err());
        l.link = b"abs".to_vec();
        assert!(o.apply(&l).is_err());
        assert_eq!(names(o), vec!["abs", "abs/file"]);
    }
}
