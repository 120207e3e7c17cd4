//! The `fuser` adapter: [`NydusFs`] implements [`fuser::Filesystem`] by converting each request's
//! arguments, calling the matching operation of [`NydusOps`] and converting its result into the
//! reply. No filesystem logic lives here. Metadata requests are answered on the session thread
//! (they never wait on the network); a read is mapped to chunks on the session thread, then its
//! fetch (and its read-ahead, beside it) is spawned onto the runtime, which replies when the
//! chunks arrive.

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::task::Poll;

use dfagent_core::ChunkReader;
use dfagent_rafs::{FileType, Image};
use fuser::{
    AccessFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, WriteFlags,
};

use crate::attr::Attr;
use crate::metrics::FsMetrics;
use crate::ops::{Errno, FsConfig, NydusOps, Opened, XattrReply};

/// A mountable image: the operations over the bootstrap and the reader of verified chunks, and
/// the runtime reads run on.
pub struct NydusFs {
    ops: NydusOps,
    rt: tokio::runtime::Handle,
    /// The kernel agreed to skip open and opendir (and their releases) once they answer
    /// `ENOSYS`: handles carry no state here, so each open would only cost a round trip.
    no_open: bool,
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
            ops: NydusOps::new(image, reader, config),
            rt,
            no_open: false,
        }
    }

    /// The operations this filesystem serves.
    pub fn ops(&self) -> &NydusOps {
        &self.ops
    }

    /// Live counters of this filesystem.
    pub fn metrics(&self) -> Arc<FsMetrics> {
        self.ops.metrics()
    }
}

impl From<Errno> for fuser::Errno {
    fn from(e: Errno) -> Self {
        fuser::Errno::from_i32(e.code())
    }
}

fn kind(t: FileType) -> fuser::FileType {
    match t {
        FileType::Dir => fuser::FileType::Directory,
        FileType::File => fuser::FileType::RegularFile,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::CharDev => fuser::FileType::CharDevice,
        FileType::BlockDev => fuser::FileType::BlockDevice,
        FileType::Socket => fuser::FileType::Socket,
    }
}

fn file_attr(a: &Attr) -> fuser::FileAttr {
    fuser::FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn fopen_flags(o: Opened) -> FopenFlags {
    let mut flags = FopenFlags::empty();
    if o.keep_cache {
        flags |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if o.cache_dir {
        flags |= FopenFlags::FOPEN_CACHE_DIR;
    }
    flags
}

fn reply_xattr(r: Result<XattrReply, Errno>, reply: ReplyXattr) {
    match r {
        Ok(XattrReply::Size(n)) => reply.size(n),
        Ok(XattrReply::Data(d)) => reply.data(&d),
        Err(e) => reply.error(e.into()),
    }
}

impl Filesystem for NydusFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let max_read = self.ops.config().max_read;
        let _ = config.set_max_readahead(max_read);
        let _ = config.set_max_write(max_read);
        // Every listing carries attributes (not READDIRPLUS_AUTO, which the kernel uses only
        // for a directory's first buffer, so a `ls -l` of a big directory then looks up the
        // rest one by one): attributes cost nothing extra here, they sit beside the names.
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_CACHE_SYMLINKS
                | InitFlags::FUSE_PARALLEL_DIROPS,
        );
        // Without open/opendir the kernel keeps file pages and directory listings cached, as
        // the FOPEN_KEEP_CACHE / FOPEN_CACHE_DIR our opens answer ask for. A file opened for
        // writing is refused by the read-only mount before it gets here.
        self.no_open = config
            .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT | InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.ops.lookup(parent.0, name.as_bytes()) {
            Ok(e) => reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.ops.getattr(ino.0) {
            Ok((attr, ttl)) => reply.attr(&ttl, &file_attr(&attr)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.ops.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e.into()),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open {
            // The kernel takes this as "opens need no round trip" from now on.
            return reply.error(fuser::Errno::ENOSYS);
        }
        match self.ops.open(ino.0, flags.0) {
            Ok(o) => reply.opened(FileHandle(0), fopen_flags(o)),
            Err(e) => reply.error(e.into()),
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
        // Mapping and the read-ahead decision happen here, in request order; the fetch runs
        // on the runtime and replies from there, so the session thread returns at once.
        let mut pending = match self.ops.start_read(ino.0, offset, size) {
            Ok(p) => p,
            Err(e) => return reply.error(e.into()),
        };
        let ahead = pending.take_readahead();
        self.rt.spawn(async move {
            let mut read = std::pin::pin!(pending.finish());
            // Polled once before its read-ahead is spawned: the read is then known to the
            // resolver (which lets a mount's reads reach the tiers before its read-ahead).
            let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
            if let Some(ahead) = ahead {
                tokio::spawn(ahead);
            }
            let result = match first {
                Poll::Ready(r) => r,
                Poll::Pending => read.await,
            };
            match result {
                Ok(buf) => reply.data(&buf),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.ops.release(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        match self.ops.releasedir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.ops.write(ino.0) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e.into()),
        }
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
        reply.error(fuser::Errno::ENOTTY);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open {
            return reply.error(fuser::Errno::ENOSYS);
        }
        match self.ops.opendir(ino.0) {
            Ok(o) => reply.opened(FileHandle(0), fopen_flags(o)),
            Err(e) => reply.error(e.into()),
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
        // `add` says whether the reply buffer is full; the op wants whether to go on.
        let r = self.ops.readdir(ino.0, offset, |e| {
            !reply.add(
                INodeNo(e.ino),
                e.offset,
                kind(e.kind),
                OsStr::from_bytes(&e.name),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
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
        let r = self.ops.readdirplus(ino.0, offset, |e| {
            !reply.add(
                INodeNo(e.entry.attr.ino),
                e.offset,
                OsStr::from_bytes(&e.name),
                &e.entry.ttl,
                &file_attr(&e.entry.attr),
                Generation(0),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.ops.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(e.into()),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(self.ops.getxattr(ino.0, name.as_bytes(), size), reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(self.ops.listxattr(ino.0, size), reply);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.ops.access(ino.0, mask.bits(), req.uid(), req.gid()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }
}
