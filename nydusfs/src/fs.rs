//! The FUSE operations. Metadata requests are answered from the bootstrap on the session
//! thread (they never wait on the network); reads are spawned onto the runtime and reply when
//! their chunks arrive.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dfagent_core::ChunkReader;
use dfagent_rafs::{FileType, Image, RafsError};
use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, WriteFlags,
};

use crate::attr::{file_attr, ino_of, kind, nid_of};
use crate::metrics::FsMetrics;
use crate::readahead::ReadAhead;

/// How long the kernel may cache the root's attributes (see `getattr`).
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

/// Parent nid and name of every node the kernel looked up.
type Names = Arc<Mutex<HashMap<u64, (u64, Vec<u8>)>>>;

/// A mounted image: the bootstrap, the reader of verified chunks, and where to run reads.
pub struct NydusFs {
    image: Arc<Image>,
    reader: Arc<dyn ChunkReader>,
    rt: tokio::runtime::Handle,
    config: FsConfig,
    metrics: Arc<FsMetrics>,
    /// Parent and name of every node the kernel looked up, to name files in error logs.
    names: Names,
    readahead: ReadAhead,
}

fn errno(e: &RafsError) -> Errno {
    match e {
        RafsError::NotDir(_) => Errno::ENOTDIR,
        RafsError::NotSymlink(_) | RafsError::NotFile(_) => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

impl NydusFs {
    /// A filesystem over `image` reading data through `reader`, running reads on `rt`.
    pub fn new(
        image: Arc<Image>,
        reader: Arc<dyn ChunkReader>,
        rt: tokio::runtime::Handle,
        config: FsConfig,
    ) -> Self {
        Self {
            image,
            reader,
            rt,
            metrics: Arc::new(FsMetrics::default()),
            names: Arc::new(Mutex::new(HashMap::new())),
            readahead: ReadAhead::new(config.readahead),
            config,
        }
    }

    /// Live counters of this filesystem.
    pub fn metrics(&self) -> Arc<FsMetrics> {
        self.metrics.clone()
    }

    fn nid(&self, ino: INodeNo) -> Result<u64, Errno> {
        nid_of(ino, self.image.root()).ok_or(Errno::ENOENT)
    }

    fn attr(&self, nid: u64) -> Result<fuser::FileAttr, Errno> {
        let inode = self.image.inode(nid).map_err(|e| {
            tracing::error!(nid, error = %e, "bad inode");
            errno(&e)
        })?;
        Ok(file_attr(&inode, self.image.root()))
    }

    fn remember(&self, parent: u64, name: &[u8], nid: u64) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.entry(nid).or_insert_with(|| (parent, name.to_vec()));
    }

    /// Hand the entries of directory `ino` from `offset` to `add` until it returns `false`
    /// (reply buffer full) or fails; children are remembered for naming files in logs.
    fn list_dir(
        &self,
        ino: INodeNo,
        offset: u64,
        mut add: impl FnMut(&dfagent_rafs::DirEntry) -> Result<bool, Errno>,
    ) -> Result<(), Errno> {
        let nid = self.nid(ino)?;
        let mut failed = None;
        self.image
            .readdir(nid, offset, |e| {
                if e.name != b"." && e.name != b".." {
                    self.remember(nid, &e.name, e.nid);
                }
                match add(&e) {
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
        inode: &dfagent_rafs::Inode,
        offset: u64,
        end: u64,
        chunks: &[dfagent_rafs::FileChunk],
    ) -> Vec<dfagent_core::ChunkRef> {
        let Some(last) = chunks.last() else {
            return Vec::new();
        };
        let chunks_end = last.file_offset + u64::from(last.chunk.uncompressed_size);
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

    fn xattr_reply(data: Vec<u8>, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(data.len() as u32);
        } else if data.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&data);
        }
    }
}

/// Path of `nid` from the names the kernel looked up, for log lines.
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

impl Filesystem for NydusFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(self.config.max_read);
        let _ = config.set_max_write(self.config.max_read);
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO
                | InitFlags::FUSE_CACHE_SYMLINKS
                | InitFlags::FUSE_PARALLEL_DIROPS,
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.metrics.request();
        let result = self
            .nid(parent)
            .and_then(|p| match self.image.lookup(p, name.as_bytes()) {
                Ok(Some(e)) => {
                    let attr = self.attr(e.nid)?;
                    self.remember(p, name.as_bytes(), e.nid);
                    Ok(attr)
                }
                Ok(None) => Err(Errno::ENOENT),
                Err(e) => {
                    tracing::error!(parent = p, name = ?name, error = %e, "lookup failed");
                    Err(errno(&e))
                }
            });
        match result {
            Ok(attr) => reply.entry(&self.config.ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.metrics.request();
        match self.nid(ino).and_then(|n| self.attr(n)) {
            Ok(attr) => {
                // `stat MOUNTPOINT` is answered from the root's cached attributes: keep them
                // briefly, so a mount whose server died shows ENOTCONN (and `mount_state` sees
                // it as stale) within a second rather than after the full TTL.
                let ttl = if ino == INodeNo::ROOT {
                    self.config.ttl.min(ROOT_ATTR_TTL)
                } else {
                    self.config.ttl
                };
                reply.attr(&ttl, &attr)
            }
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.metrics.request();
        match self
            .nid(ino)
            .and_then(|n| self.image.readlink(n).map_err(|e| errno(&e)))
        {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.metrics.request();
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.nid(ino).and_then(|n| self.attr(n)) {
            Ok(a) if a.kind == fuser::FileType::Directory => reply.error(Errno::EISDIR),
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.metrics.request();
        let started = Instant::now();
        let nid = match self.nid(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let inode = match self.image.inode(nid) {
            Ok(i) if i.file_type == FileType::File => i,
            Ok(_) => return reply.error(Errno::EINVAL),
            Err(e) => return reply.error(errno(&e)),
        };
        let chunks = match self.image.chunks(&inode, offset, u64::from(size)) {
            Ok(c) => c,
            Err(e) => {
                let path = path_of(&self.names, self.image.root(), nid);
                tracing::error!(file = %path, nid, error = %e, "cannot map read to chunks");
                self.metrics.read_done(None, started.elapsed());
                return reply.error(Errno::EIO);
            }
        };
        let end = offset.saturating_add(u64::from(size)).min(inode.size);
        let ahead = self.read_ahead(&inode, offset, end, &chunks);
        let reader = self.reader.clone();
        let metrics = self.metrics.clone();
        let names = self.names.clone();
        let root = self.image.root();
        self.rt.spawn(async move {
            let refs: Vec<_> = chunks.iter().map(|fc| fc.chunk).collect();
            let results = reader.read_chunks(&refs).await;
            let mut buf = Vec::with_capacity(end.saturating_sub(offset) as usize);
            let mut failed = false;
            for (fc, r) in chunks.iter().zip(results) {
                match r {
                    Ok(data) if !failed => {
                        let from = offset.saturating_sub(fc.file_offset) as usize;
                        let to = ((end - fc.file_offset) as usize).min(data.len());
                        if from <= to {
                            buf.extend_from_slice(&data[from..to]);
                        }
                    }
                    Ok(_) => {}
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
            if failed {
                metrics.read_done(None, started.elapsed());
                reply.error(Errno::EIO);
            } else {
                metrics.read_done(Some(buf.len()), started.elapsed());
                reply.data(&buf);
            }
        });
        if !ahead.is_empty() {
            // Read-ahead runs beside the read (waiting for the read first halved cold
            // sequential throughput: it kept one batch in flight instead of two). Its
            // failures surface (and are logged) when a reader asks for those chunks.
            let reader = self.reader.clone();
            self.rt.spawn(async move {
                let _ = reader.read_chunks(&ahead).await;
            });
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.metrics.request();
        reply.error(Errno::EROFS);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.metrics.request();
        match self.nid(ino).and_then(|n| self.attr(n)) {
            Ok(a) if a.kind == fuser::FileType::Directory => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.metrics.request();
        let root = self.image.root();
        let r = self.list_dir(ino, offset, |e| {
            let t = match e.file_type {
                Some(t) => t,
                None => {
                    self.image
                        .inode(e.nid)
                        .map_err(|err| errno(&err))?
                        .file_type
                }
            };
            Ok(!reply.add(
                ino_of(e.nid, root),
                e.next_offset,
                kind(t),
                OsStr::from_bytes(&e.name),
            ))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.metrics.request();
        let root = self.image.root();
        let r = self.list_dir(ino, offset, |e| {
            let attr = self.attr(e.nid)?;
            Ok(!reply.add(
                ino_of(e.nid, root),
                e.next_offset,
                OsStr::from_bytes(&e.name),
                &self.config.ttl,
                &attr,
                Generation(0),
            ))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.metrics.request();
        let sb = self.image.superblock();
        let data: u64 = self.image.blobs().iter().map(|b| b.uncompressed_size).sum();
        let blocks = data.div_ceil(4096).max(u64::from(sb.blocks));
        reply.statfs(blocks, 0, 0, sb.inodes, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.metrics.request();
        match self.nid(ino).and_then(|n| {
            self.image
                .getxattr(n, name.as_bytes())
                .map_err(|e| errno(&e))
        }) {
            Ok(Some(v)) => Self::xattr_reply(v, size, reply),
            Ok(None) => reply.error(Errno::NO_XATTR),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.metrics.request();
        match self
            .nid(ino)
            .and_then(|n| self.image.xattrs(n).map_err(|e| errno(&e)))
        {
            Ok(xs) => {
                let mut names = Vec::new();
                for x in xs {
                    names.extend_from_slice(&x.name);
                    names.push(0);
                }
                Self::xattr_reply(names, size, reply)
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.metrics.request();
        let inode = match self
            .nid(ino)
            .and_then(|n| self.image.inode(n).map_err(|e| errno(&e)))
        {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        let uid = req.uid();
        let perm = inode.mode;
        let granted = if uid == 0 {
            // root may read anything; execute needs some x bit (or a directory).
            if mask.contains(AccessFlags::X_OK)
                && inode.file_type != FileType::Dir
                && perm & 0o111 == 0
            {
                0
            } else {
                0o7
            }
        } else if uid == inode.uid {
            (perm >> 6) & 7
        } else if req.gid() == inode.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        let want = (if mask.contains(AccessFlags::R_OK) {
            4
        } else {
            0
        }) | (if mask.contains(AccessFlags::X_OK) {
            1
        } else {
            0
        });
        if granted & want == want {
            reply.ok()
        } else {
            reply.error(Errno::EACCES)
        }
    }
}
