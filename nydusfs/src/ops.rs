//! The filesystem's operations as plain functions over an [`Image`] and a [`ChunkReader`], with
//! argument and result types of our own. Nothing here knows FUSE: the adapter in `fuse.rs`
//! converts a kernel request into a call of [`NydusOps`] and the result into a reply, so the
//! operations can be tested and fuzzed without a kernel, and the FUSE crate could be swapped
//! without touching them.
//!
//! Metadata operations answer straight from the memory-mapped bootstrap and never wait on a
//! tier. A read is split in two: [`NydusOps::start_read`] maps it to chunks and decides on
//! read-ahead at once, on the caller's thread; [`PendingRead::finish`] is the future that waits
//! for the chunks. [`NydusOps::read`] is both in one `async fn`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dfagent_core::{ChunkReader, ChunkRef};
use dfagent_rafs::{FileChunk, FileType, Image, Inode, RafsError};

use crate::attr::{ino_of, nid_of, Attr, ROOT_INO};
use crate::metrics::FsMetrics;
use crate::readahead::ReadAhead;

/// How long the kernel may cache the root's attributes (see [`NydusOps::getattr`]).
const ROOT_ATTR_TTL: Duration = Duration::from_secs(1);

/// Tunables of a mount; the defaults suit an immutable image.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// How long the kernel may cache attributes and entries (the image never changes).
    pub ttl: Duration,
    /// Largest read the kernel sends in one request.
    pub max_read: u32,
    /// Bytes of file data fetched ahead of a sequential reader (0: no read-ahead).
    pub readahead: u64,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            max_read: 1 << 20,
            readahead: 16 << 20,
        }
    }
}

/// Why an operation failed: a positive `errno` value (the `libc` constants), which is all a
/// kernel (or any FUSE crate) is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// No such file or directory (unknown inode number or name).
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    /// I/O error: a corrupt image, or a chunk no tier could deliver verified.
    pub const EIO: Errno = Errno(libc::EIO);
    /// Invalid argument (readlink of a non-symlink, read of a non-file).
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// Not a directory (readdir, lookup or opendir of a non-directory).
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    /// Is a directory (open of a directory as a file).
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    /// Read-only filesystem: every write, and every open or access for writing.
    pub const EROFS: Errno = Errno(libc::EROFS);
    /// The caller's buffer is too small for an xattr value or name list.
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    /// No such extended attribute (Linux's `ENOATTR`).
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    /// Permission denied (access check).
    pub const EACCES: Errno = Errno(libc::EACCES);
    /// An xattr value or name list too large to describe (beyond 4 GiB).
    pub const E2BIG: Errno = Errno(libc::E2BIG);

    /// The `errno` value.
    pub fn code(self) -> i32 {
        self.0
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

/// Errno of an image error: the kind of node asked for was wrong, or the image is broken.
fn errno(e: &RafsError) -> Errno {
    match e {
        RafsError::NotDir(_) => Errno::ENOTDIR,
        RafsError::NotSymlink(_) | RafsError::NotFile(_) => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

/// A node found by name ([`NydusOps::lookup`], [`NydusOps::readdirplus`]): its attributes and
/// how long the kernel may cache both the name and the attributes (generation is always 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The node's attributes.
    pub attr: Attr,
    /// Cache lifetime of the entry and its attributes.
    pub ttl: Duration,
}

/// One entry of [`NydusOps::readdir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number of the entry's node.
    pub ino: u64,
    /// Offset to pass to continue the listing after this entry.
    pub offset: u64,
    /// Kind of node.
    pub kind: FileType,
    /// Name (any bytes but `/` and NUL; `.` and `..` included).
    pub name: Vec<u8>,
}

/// One entry of [`NydusOps::readdirplus`]: a [`DirEntry`] with the node's attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntryPlus {
    /// Offset to pass to continue the listing after this entry.
    pub offset: u64,
    /// Name (`.` and `..` included).
    pub name: Vec<u8>,
    /// The node's attributes (their inode number is the entry's) and cache lifetime.
    pub entry: Entry,
}

/// What [`NydusOps::statfs`] reports. The image is read-only: nothing is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Size in `frsize` blocks (file data, or the bootstrap's block count if larger).
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks free to unprivileged users.
    pub bavail: u64,
    /// Inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size (the unit of `blocks`).
    pub frsize: u32,
}

/// Answer to an xattr request, following the `getxattr(2)`/`listxattr(2)` size protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XattrReply {
    /// The caller asked with size 0: how many bytes the value (or name list) has.
    Size(u32),
    /// The value (or the NUL-terminated names), which fit the caller's size.
    Data(Vec<u8>),
}

/// How an opened file or directory may be cached; the handle is always 0 (no per-open state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The kernel may keep file data cached across opens (the image never changes).
    pub keep_cache: bool,
    /// The kernel may cache the directory's listing.
    pub cache_dir: bool,
}

/// Parent nid and name of every node looked up or listed.
type Names = Arc<Mutex<HashMap<u64, (u64, Vec<u8>)>>>;

/// The filesystem's operations over one image, without FUSE: the bootstrap, the reader of
/// verified chunks, the tunables, the counters, the read-ahead state and the names of nodes seen
/// (to name files in error logs). Inode numbers are the kernel's: [`ROOT_INO`] for the root,
/// `nid + 2` for every other node.
pub struct NydusOps {
    image: Arc<Image>,
    reader: Arc<dyn ChunkReader>,
    config: FsConfig,
    metrics: Arc<FsMetrics>,
    /// Parent and name of every node looked up or listed, to name files in error logs.
    names: Names,
    readahead: ReadAhead,
}

impl NydusOps {
    /// Operations over `image`, reading file data through `reader`.
    pub fn new(image: Arc<Image>, reader: Arc<dyn ChunkReader>, config: FsConfig) -> Self {
        Self {
            image,
            reader,
            metrics: Arc::new(FsMetrics::default()),
            names: Arc::new(Mutex::new(HashMap::new())),
            readahead: ReadAhead::new(config.readahead),
            config,
        }
    }

    /// The image served.
    pub fn image(&self) -> &Arc<Image> {
        &self.image
    }

    /// The tunables.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// Live counters of these operations.
    pub fn metrics(&self) -> Arc<FsMetrics> {
        self.metrics.clone()
    }

    fn nid(&self, ino: u64) -> Result<u64, Errno> {
        nid_of(ino, self.image.root()).ok_or(Errno::ENOENT)
    }

    fn attr(&self, nid: u64) -> Result<Attr, Errno> {
        let inode = self.image.inode(nid).map_err(|e| {
            tracing::error!(nid, error = %e, "bad inode");
            errno(&e)
        })?;
        Attr::of(&inode, self.image.root()).ok_or_else(|| no_ino(nid))
    }

    fn remember(&self, parent: u64, name: &[u8], nid: u64) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.entry(nid).or_insert_with(|| (parent, name.to_vec()));
    }

    /// Hand the entries of directory `ino` from `offset` to `add` until it returns `false`
    /// or fails; children are remembered for naming files in logs.
    fn list_dir(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(dfagent_rafs::DirEntry) -> Result<bool, Errno>,
    ) -> Result<(), Errno> {
        let nid = self.nid(ino)?;
        let mut failed = None;
        self.image
            .readdir(nid, offset, |e| {
                if e.name != b"." && e.name != b".." {
                    self.remember(nid, &e.name, e.nid);
                }
                match add(e) {
                    Ok(more) => more,
                    Err(err) => {
                        failed = Some(err);
                        false
                    }
                }
            })
            .map_err(|e| {
                tracing::error!(nid, error = %e, "readdir failed");
                errno(&e)
            })?;
        failed.map_or(Ok(()), Err)
    }

    /// After a read of `[offset, end)` touching `chunks`: if the file is being read
    /// sequentially, the chunks after them to fetch in the background.
    fn read_ahead(
        &self,
        inode: &Inode,
        offset: u64,
        end: u64,
        chunks: &[FileChunk],
    ) -> Vec<ChunkRef> {
        let Some(last) = chunks.last() else {
            return Vec::new();
        };
        let chunks_end = last
            .file_offset
            .saturating_add(u64::from(last.chunk.uncompressed_size));
        let Some((from, to)) = self
            .readahead
            .after_read(inode.nid, offset, end, chunks_end, inode.size)
        else {
            return Vec::new();
        };
        match self.image.chunks(inode, from, to - from) {
            Ok(c) => {
                self.metrics.readahead(c.len());
                c.into_iter().map(|fc| fc.chunk).collect()
            }
            Err(e) => {
                tracing::debug!(nid = inode.nid, error = %e, "no read-ahead");
                Vec::new()
            }
        }
    }

    /// The node named `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Entry, Errno> {
        self.metrics.op("lookup");
        let p = self.nid(parent)?;
        match self.image.lookup(p, name) {
            Ok(Some(e)) => {
                let attr = self.attr(e.nid)?;
                self.remember(p, name, e.nid);
                Ok(Entry {
                    attr,
                    ttl: self.config.ttl,
                })
            }
            Ok(None) => Err(Errno::ENOENT),
            Err(e) => {
                tracing::error!(
                    parent = p,
                    name = ?String::from_utf8_lossy(name),
                    error = %e,
                    "lookup failed"
                );
                Err(errno(&e))
            }
        }
    }

    /// Attributes of `ino` and how long the kernel may cache them. The root's are kept at most
    /// a second: `stat MOUNTPOINT` is answered from them, and a mount whose server died should
    /// show `ENOTCONN` (and look stale to `mount_state`) within a second, not after the TTL.
    pub fn getattr(&self, ino: u64) -> Result<(Attr, Duration), Errno> {
        self.metrics.op("getattr");
        let attr = self.nid(ino).and_then(|n| self.attr(n))?;
        let ttl = if ino == ROOT_INO {
            self.config.ttl.min(ROOT_ATTR_TTL)
        } else {
            self.config.ttl
        };
        Ok((attr, ttl))
    }

    /// Target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        self.metrics.op("readlink");
        self.nid(ino)
            .and_then(|n| self.image.readlink(n).map_err(|e| errno(&e)))
    }

    /// Open `ino` with open(2) `flags`: read-only opens of anything but a directory succeed.
    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened, Errno> {
        self.metrics.op("open");
        // O_ACCMODE with both bits set is no valid mode; it counts as read-only.
        if matches!(flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR) {
            return Err(Errno::EROFS);
        }
        match self.nid(ino).and_then(|n| self.attr(n))? {
            a if a.kind == FileType::Dir => Err(Errno::EISDIR),
            _ => Ok(Opened {
                keep_cache: true,
                cache_dir: false,
            }),
        }
    }

    /// Open directory `ino` for listing.
    pub fn opendir(&self, ino: u64) -> Result<Opened, Errno> {
        self.metrics.op("opendir");
        match self.nid(ino).and_then(|n| self.attr(n))? {
            a if a.kind == FileType::Dir => Ok(Opened {
                keep_cache: true,
                cache_dir: true,
            }),
            _ => Err(Errno::ENOTDIR),
        }
    }

    /// Close a file opened with [`open`](Self::open): nothing to free (handles carry no
    /// state); counted so the per-operation counters show opens and closes.
    pub fn release(&self, _ino: u64) -> Result<(), Errno> {
        self.metrics.op("release");
        Ok(())
    }

    /// Close a directory opened with [`opendir`](Self::opendir); like [`release`](Self::release).
    pub fn releasedir(&self, _ino: u64) -> Result<(), Errno> {
        self.metrics.op("releasedir");
        Ok(())
    }

    /// Begin a read of `size` bytes at `offset` of regular file `ino`: map it to chunks and,
    /// when the file is read sequentially, pick the chunks to fetch ahead. Nothing is fetched
    /// yet: the returned [`PendingRead`] does that. Runs on the caller's thread, in request
    /// order, so read-ahead sees the reads in the order they arrive.
    pub fn start_read(&self, ino: u64, offset: u64, size: u32) -> Result<PendingRead, Errno> {
        self.metrics.op("read");
        let started = Instant::now();
        let nid = self.nid(ino)?;
        let inode = match self.image.inode(nid) {
            Ok(i) if i.file_type == FileType::File => i,
            Ok(_) => return Err(Errno::EINVAL),
            Err(e) => return Err(errno(&e)),
        };
        let chunks = match self.image.chunks(&inode, offset, u64::from(size)) {
            Ok(c) => c,
            Err(e) => {
                let path = path_of(&self.names, self.image.root(), nid);
                tracing::error!(file = %path, nid, error = %e, "cannot map read to chunks");
                self.metrics.read_done(None, started.elapsed());
                return Err(Errno::EIO);
            }
        };
        let end = offset.saturating_add(u64::from(size)).min(inode.size);
        let ahead = self.read_ahead(&inode, offset, end, &chunks);
        Ok(PendingRead {
            chunks,
            ahead,
            offset,
            end,
            nid,
            root: self.image.root(),
            started,
            reader: self.reader.clone(),
            metrics: self.metrics.clone(),
            names: self.names.clone(),
        })
    }

    /// Read `size` bytes at `offset` of regular file `ino` (fewer at the end of the file):
    /// [`start_read`](Self::start_read), then the read's chunks, then its read-ahead (if any),
    /// all awaited here. A chunk that cannot be read verified fails the read with `EIO`.
    pub async fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let mut pending = self.start_read(ino, offset, size)?;
        let ahead = pending.take_readahead();
        let data = pending.finish().await;
        if let Some(ahead) = ahead {
            ahead.await;
        }
        data.map(|b| b.to_vec())
    }

    /// A write: always refused, the image is read-only.
    pub fn write(&self, _ino: u64) -> Result<u32, Errno> {
        self.metrics.request();
        Err(Errno::EROFS)
    }

    /// Entries of directory `ino` from `offset` (0, or an entry's [`DirEntry::offset`]), `.` and
    /// `..` included, handed to `add` until it returns `false` (no room for more).
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(DirEntry) -> bool,
    ) -> Result<(), Errno> {
        self.metrics.op("readdir");
        let root = self.image.root();
        self.list_dir(ino, offset, |e| {
            let kind = match e.file_type {
                Some(t) => t,
                None => {
                    self.image
                        .inode(e.nid)
                        .map_err(|err| errno(&err))?
                        .file_type
                }
            };
            Ok(add(DirEntry {
                ino: ino_of(e.nid, root).ok_or_else(|| no_ino(e.nid))?,
                offset: e.next_offset,
                kind,
                name: e.name,
            }))
        })
    }

    /// Entries of directory `ino` from `offset` with their attributes, handed to `add` until it
    /// returns `false`; like [`readdir`](Self::readdir).
    pub fn readdirplus(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(DirEntryPlus) -> bool,
    ) -> Result<(), Errno> {
        self.metrics.op("readdirplus");
        self.list_dir(ino, offset, |e| {
            let attr = self.attr(e.nid)?;
            Ok(add(DirEntryPlus {
                offset: e.next_offset,
                name: e.name,
                entry: Entry {
                    attr,
                    ttl: self.config.ttl,
                },
            }))
        })
    }

    /// Size and inode count of the filesystem (4 KiB blocks, nothing free).
    pub fn statfs(&self) -> Result<StatFs, Errno> {
        self.metrics.op("statfs");
        let sb = self.image.superblock();
        // Blob sizes come from the image: summed saturating, never wrapping.
        let data = self
            .image
            .blobs()
            .iter()
            .fold(0u64, |sum, b| sum.saturating_add(b.uncompressed_size));
        let blocks = data.div_ceil(4096).max(u64::from(sb.blocks));
        Ok(StatFs {
            blocks,
            bfree: 0,
            bavail: 0,
            files: sb.inodes,
            ffree: 0,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
        })
    }

    /// Value of xattr `name` of `ino`, for a caller with a `size`-byte buffer (0: size query).
    pub fn getxattr(&self, ino: u64, name: &[u8], size: u32) -> Result<XattrReply, Errno> {
        self.metrics.op("getxattr");
        let value = self
            .nid(ino)
            .and_then(|n| self.image.getxattr(n, name).map_err(|e| errno(&e)))?;
        match value {
            Some(v) => xattr_reply(v, size),
            None => Err(Errno::ENODATA),
        }
    }

    /// Names of the xattrs of `ino`, each NUL-terminated, for a caller with a `size`-byte
    /// buffer (0: size query).
    pub fn listxattr(&self, ino: u64, size: u32) -> Result<XattrReply, Errno> {
        self.metrics.op("listxattr");
        let xs = self
            .nid(ino)
            .and_then(|n| self.image.xattrs(n).map_err(|e| errno(&e)))?;
        let mut names = Vec::new();
        for x in xs {
            names.extend_from_slice(&x.name);
            names.push(0);
        }
        xattr_reply(names, size)
    }

    /// Whether user `uid` of group `gid` may access `ino` as access(2) `mask` (`R_OK`, `W_OK`,
    /// `X_OK` bits) asks: writing never; otherwise by the mode bits (root may read anything and
    /// execute anything with an x bit, or a directory).
    pub fn access(&self, ino: u64, mask: i32, uid: u32, gid: u32) -> Result<(), Errno> {
        self.metrics.op("access");
        let inode = self
            .nid(ino)
            .and_then(|n| self.image.inode(n).map_err(|e| errno(&e)))?;
        if mask & libc::W_OK != 0 {
            return Err(Errno::EROFS);
        }
        let perm = inode.mode;
        let granted = if uid == 0 {
            if mask & libc::X_OK != 0 && inode.file_type != FileType::Dir && perm & 0o111 == 0 {
                0
            } else {
                0o7
            }
        } else if uid == inode.uid {
            (perm >> 6) & 7
        } else if gid == inode.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        let want = (if mask & libc::R_OK != 0 { 4 } else { 0 })
            | (if mask & libc::X_OK != 0 { 1 } else { 0 });
        if granted & want == want {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }
}

/// `EIO` for directory entry `nid`, which has no inode number ([`ino_of`]), logged.
fn no_ino(nid: u64) -> Errno {
    tracing::error!(
        nid,
        "corrupt image: a directory entry names nid {nid}, which has no inode number"
    );
    Errno::EIO
}

/// `data` as the answer to a caller with a `size`-byte buffer (0: size query).
fn xattr_reply(data: Vec<u8>, size: u32) -> Result<XattrReply, Errno> {
    let len = u32::try_from(data.len()).map_err(|_| Errno::E2BIG)?;
    if size == 0 {
        Ok(XattrReply::Size(len))
    } else if len > size {
        Err(Errno::ERANGE)
    } else {
        Ok(XattrReply::Data(data))
    }
}

/// A read mapped to chunks ([`NydusOps::start_read`]) whose chunks are yet to be fetched; it
/// owns what it needs, so its futures can run on any runtime thread.
pub struct PendingRead {
    chunks: Vec<FileChunk>,
    ahead: Vec<ChunkRef>,
    offset: u64,
    end: u64,
    nid: u64,
    root: u64,
    started: Instant,
    reader: Arc<dyn ChunkReader>,
    metrics: Arc<FsMetrics>,
    names: Names,
}

impl PendingRead {
    /// The chunks this read needs, in file order.
    pub fn chunks(&self) -> &[FileChunk] {
        &self.chunks
    }

    /// The chunks chosen to fetch ahead of a sequential reader (empty for other reads, and
    /// after [`take_readahead`](Self::take_readahead)).
    pub fn readahead_chunks(&self) -> &[ChunkRef] {
        &self.ahead
    }

    /// The read-ahead as a future of its own, to run beside the read (waiting for the read
    /// first halved cold sequential throughput: it kept one batch in flight instead of two).
    /// The chunks go out in groups of about [`READAHEAD_GROUP`] stored bytes, fetched
    /// concurrently: a tier answers a batch when all of it is read, so one big batch would
    /// hold the reader's next chunk until the window's last one arrived, while groups let the
    /// first ones be decoded while later ones are still read. Its failures are not reported
    /// here: they surface, logged, when a reader asks for those chunks. `None` when there is
    /// nothing to fetch ahead.
    pub fn take_readahead(&mut self) -> Option<impl Future<Output = ()> + Send + 'static> {
        if self.ahead.is_empty() {
            return None;
        }
        let ahead = std::mem::take(&mut self.ahead);
        let reader = self.reader.clone();
        Some(async move {
            let mut groups = readahead_groups(ahead).into_iter();
            let first = groups.next();
            let rest: Vec<_> = groups
                .map(|g| {
                    let reader = reader.clone();
                    tokio::spawn(async move {
                        let _ = reader.read_ahead(&g).await;
                    })
                })
                .collect();
            if let Some(g) = first {
                let _ = reader.read_ahead(&g).await;
            }
            for task in rest {
                let _ = task.await;
            }
        })
    }

    /// Fetch the read's chunks (all at once, so tiers can merge them) and assemble the bytes
    /// asked for. A chunk that cannot be read verified fails the read with `EIO`, logged with
    /// the file, chunk, blob and offset. Counts the read and its latency in the metrics.
    pub async fn finish(self) -> Result<Bytes, Errno> {
        let PendingRead {
            chunks,
            offset,
            end,
            nid,
            root,
            started,
            reader,
            metrics,
            names,
            ..
        } = self;
        let refs: Vec<_> = chunks.iter().map(|fc| fc.chunk).collect();
        let results = reader.read_chunks(&refs).await;
        let mut failed = false;
        let mut got = Vec::with_capacity(chunks.len());
        for (fc, r) in chunks.iter().zip(results) {
            match r {
                Ok(data) => got.push(data),
                Err(e) => {
                    failed = true;
                    tracing::error!(
                        file = %path_of(&names, root, nid),
                        chunk = %fc.chunk.digest,
                        blob = %fc.chunk.blob,
                        blob_offset = fc.chunk.compressed_offset,
                        error = %e,
                        "read failed"
                    );
                }
            }
        }
        let assembled = if failed {
            None
        } else {
            match assemble(offset, end, &chunks, &got) {
                Ok(buf) => Some(buf),
                Err(why) => {
                    tracing::error!(
                        file = %path_of(&names, root, nid),
                        nid,
                        offset,
                        end,
                        error = %why,
                        "read failed: chunk data does not fit the file"
                    );
                    None
                }
            }
        };
        match assembled {
            Some(buf) => {
                metrics.read_done(Some(buf.len()), started.elapsed());
                Ok(buf)
            }
            None => {
                metrics.read_done(None, started.elapsed());
                Err(Errno::EIO)
            }
        }
    }
}

/// Stored bytes per read-ahead group (see [`PendingRead::take_readahead`]).
const READAHEAD_GROUP: u64 = 2 << 20;

/// `chunks` cut, in order, into groups of at least one chunk and at most about
/// [`READAHEAD_GROUP`] stored bytes.
fn readahead_groups(chunks: Vec<ChunkRef>) -> Vec<Vec<ChunkRef>> {
    let mut groups: Vec<Vec<ChunkRef>> = Vec::new();
    let mut bytes = 0u64;
    for c in chunks {
        let size = u64::from(c.compressed_size);
        match groups.last_mut() {
            Some(g) if bytes.saturating_add(size) <= READAHEAD_GROUP => {
                bytes = bytes.saturating_add(size);
                g.push(c);
            }
            _ => {
                bytes = size;
                groups.push(vec![c]);
            }
        }
    }
    groups
}

/// The bytes `[offset, end)` of a file from its chunks there (`chunks`, in file order) and
/// their data (`data`, one per chunk). Nothing is taken on trust: every chunk must hold exactly
/// its uncompressed size and the chunks must cover the range without a gap, or the read fails
/// (saying why) rather than return bytes from the wrong place or short.
fn assemble(offset: u64, end: u64, chunks: &[FileChunk], data: &[Bytes]) -> Result<Bytes, String> {
    if chunks.len() != data.len() {
        return Err(format!(
            "{} answers for {} chunks",
            data.len(),
            chunks.len()
        ));
    }
    // Each piece of the range: (chunk data, from, to) within that chunk.
    let mut pieces: Vec<(&Bytes, usize, usize)> = Vec::with_capacity(chunks.len());
    // The file offset of the next byte wanted.
    let mut pos = offset;
    for (fc, d) in chunks.iter().zip(data) {
        if pos >= end {
            break;
        }
        if d.len() as u64 != u64::from(fc.chunk.uncompressed_size) {
            return Err(format!(
                "chunk {} gave {} bytes, expected {}",
                fc.chunk.digest,
                d.len(),
                fc.chunk.uncompressed_size
            ));
        }
        let chunk_end = fc.file_offset.saturating_add(d.len() as u64);
        if fc.file_offset > pos || chunk_end <= pos {
            return Err(format!(
                "chunk {} covers file bytes {}..{chunk_end}, not byte {pos}",
                fc.chunk.digest, fc.file_offset
            ));
        }
        let from = (pos - fc.file_offset) as usize;
        let to = (end.min(chunk_end) - fc.file_offset) as usize;
        pieces.push((d, from, to));
        pos = fc.file_offset + to as u64;
    }
    if pos < end {
        return Err(format!("the chunks end at file byte {pos}, before {end}"));
    }
    // A range inside one chunk (most reads: the kernel asks at most a chunk's worth, aligned)
    // is a view of the chunk's own bytes, not a copy.
    if let [(d, from, to)] = pieces[..] {
        return Ok(d.slice(from..to));
    }
    let mut buf = Vec::with_capacity(end.saturating_sub(offset).min(1 << 30) as usize);
    for (d, from, to) in pieces {
        buf.extend_from_slice(&d[from..to]);
    }
    Ok(Bytes::from(buf))
}

/// Path of `nid` from the names of nodes looked up or listed, for log lines.
fn path_of(names: &Mutex<HashMap<u64, (u64, Vec<u8>)>>, root: u64, nid: u64) -> String {
    let names = names.lock().unwrap_or_else(|p| p.into_inner());
    let mut parts = Vec::new();
    let mut cur = nid;
    while cur != root && parts.len() < 256 {
        match names.get(&cur) {
            Some((parent, name)) => {
                parts.push(String::from_utf8_lossy(name).into_owned());
                cur = *parent;
            }
            None => {
                parts.push(format!("<nid {cur}>"));
                break;
            }
        }
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readahead_goes_out_in_groups_of_stored_bytes() {
        let chunk = |n: u8, size: u32| ChunkRef {
            digest: dfagent_core::DigestAlgo::Blake3.digest(&[n]),
            blob: dfagent_core::BlobId::from_bytes([1; 32]),
            compressed_offset: 0,
            compressed_size: size,
            uncompressed_size: 1 << 20,
            compression: dfagent_core::Compression::Zstd,
        };
        let half = 1 << 19;
        // 0.5 MiB stored each: four per 2 MiB group, order kept.
        let all: Vec<ChunkRef> = (0..9).map(|n| chunk(n, half)).collect();
        let groups = readahead_groups(all.clone());
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 4, 1]
        );
        assert_eq!(groups.concat(), all);
        // A chunk bigger than a group is a group of its own; nothing is dropped.
        let big = vec![
            chunk(1, 100),
            chunk(2, 3 << 20),
            chunk(3, 100),
            chunk(4, u32::MAX),
        ];
        let groups = readahead_groups(big.clone());
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 1, 1, 1]
        );
        assert_eq!(groups.concat(), big);
        assert!(readahead_groups(Vec::new()).is_empty());
    }

    #[test]
    fn xattr_replies_follow_the_size_protocol() {
        assert_eq!(xattr_reply(b"abc".to_vec(), 0), Ok(XattrReply::Size(3)));
        assert_eq!(xattr_reply(b"abc".to_vec(), 2), Err(Errno::ERANGE));
        assert_eq!(
            xattr_reply(b"abc".to_vec(), 3),
            Ok(XattrReply::Data(b"abc".to_vec()))
        );
        assert_eq!(xattr_reply(Vec::new(), 0), Ok(XattrReply::Size(0)));
    }

    #[test]
    fn paths_name_what_is_known() {
        let names = Mutex::new(HashMap::from([
            (10, (1, b"etc".to_vec())),
            (11, (10, b"passwd".to_vec())),
        ]));
        assert_eq!(path_of(&names, 1, 11), "/etc/passwd");
        assert_eq!(path_of(&names, 1, 1), "/");
        assert_eq!(path_of(&names, 1, 12), "/<nid 12>");
        // A cycle in what was remembered stops after 256 parts instead of looping.
        let cyclic = Mutex::new(HashMap::from([
            (5, (6, b"a".to_vec())),
            (6, (5, b"b".to_vec())),
        ]));
        assert!(path_of(&cyclic, 1, 5).len() > 256);
    }

    /// Chunk `index` of a file cut into `size`-byte chunks, `len` bytes long.
    fn file_chunk(index: u32, size: u64, len: u32) -> FileChunk {
        FileChunk {
            index,
            file_offset: u64::from(index) * size,
            chunk: ChunkRef {
                digest: dfagent_core::DigestAlgo::Sha256.digest(&[index as u8]),
                blob: "0".repeat(64).parse().unwrap(),
                compressed_offset: 0,
                compressed_size: len,
                uncompressed_size: len,
                compression: dfagent_core::Compression::None,
            },
        }
    }

    #[test]
    fn reads_are_assembled_from_whole_chunks_only() {
        let chunks = [
            file_chunk(0, 4, 4),
            file_chunk(1, 4, 4),
            file_chunk(2, 4, 2),
        ];
        let data = [
            Bytes::from_static(b"abcd"),
            Bytes::from_static(b"efgh"),
            Bytes::from_static(b"ij"),
        ];
        assert_eq!(assemble(0, 10, &chunks, &data).unwrap(), &b"abcdefghij"[..]);
        assert_eq!(assemble(3, 6, &chunks, &data).unwrap(), &b"def"[..]);
        assert_eq!(
            assemble(9, 10, &chunks[2..], &data[2..]).unwrap(),
            &b"j"[..]
        );
        // At or past the end of the file: nothing, from no chunks.
        assert_eq!(assemble(10, 10, &[], &[]).unwrap(), &b""[..]);
        assert_eq!(assemble(12, 10, &[], &[]).unwrap(), &b""[..]);

        // A chunk shorter or longer than its size: the read fails instead of shifting bytes.
        let short = [data[0].clone(), Bytes::from_static(b"efg"), data[2].clone()];
        let e = assemble(0, 10, &chunks, &short).unwrap_err();
        assert!(e.contains("gave 3 bytes, expected 4"), "{e}");
        let long = [
            data[0].clone(),
            Bytes::from_static(b"efghX"),
            data[2].clone(),
        ];
        assert!(assemble(0, 10, &chunks, &long).is_err());
        // A gap, chunks out of order, chunks that stop short, answers missing.
        let e = assemble(
            0,
            10,
            &[chunks[0].clone(), chunks[2].clone()],
            &[data[0].clone(), data[2].clone()],
        )
        .unwrap_err();
        assert!(e.contains("not byte 4"), "{e}");
        assert!(assemble(
            0,
            10,
            &[chunks[1].clone(), chunks[0].clone()],
            &[data[1].clone(), data[0].clone()]
        )
        .is_err());
        let e = assemble(0, 10, &chunks[..2], &data[..2]).unwrap_err();
        assert!(e.contains("end at file byte 8, before 10"), "{e}");
        assert!(assemble(0, 10, &chunks, &data[..2]).is_err());
        // Offsets near the top of the range neither wrap nor panic.
        let mut top = file_chunk(0, 4, 4);
        top.file_offset = u64::MAX - 1;
        assert_eq!(
            assemble(u64::MAX - 1, u64::MAX, &[top], &data[..1]).unwrap(),
            &b"a"[..]
        );
    }

    #[test]
    fn errnos_print_as_the_os_does() {
        assert_eq!(Errno::ENOENT.code(), libc::ENOENT);
        assert!(Errno::EIO.to_string().contains("Input/output error"));
    }
}
