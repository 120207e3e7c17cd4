//! [`Image`]: an immutable, cheaply shared handle on one bootstrap. Opening maps the file and
//! validates the superblocks and the blob table; everything else is parsed on demand, so a mount
//! of a huge image starts at once.

use std::fs::File;
use std::path::Path;
use std::sync::OnceLock;

use dfagent_core::{ChunkRef, Compression};

use crate::blob_table::{parse_blob_table, BlobInfo};
use crate::bytes::slice;
use crate::chunk_table::{self, ChunkRecord};
use crate::dir::{DirBlock, DirEntry, OFFSETS_PER_BLOCK};
use crate::error::{RafsError, Result};
use crate::inode::{parse_inode, FileType, Inode};
use crate::layout::chunk_addr::{self, ChunkAddr};
use crate::layout::inode::{self as disk, CHUNK_FORMAT_INDEXES};
use crate::layout::{chunk_flags, BLOCK_SIZE, PREFETCH_ENTRY_SIZE};
use crate::superblock::SuperBlock;
use crate::xattr::{parse_xattrs, Xattr};

/// Bytes of a bootstrap: mapped from a file or owned (tests, fuzzing, downloads).
enum Backing {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// One chunk of a regular file, with where it sits in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChunk {
    /// Chunk number within the file.
    pub index: u32,
    /// Offset of the chunk's first byte in the file.
    pub file_offset: u64,
    /// The chunk itself.
    pub chunk: ChunkRef,
}

/// A RAFS v6 image's metadata, ready for filesystem operations.
pub struct Image {
    data: Backing,
    sb: SuperBlock,
    blobs: Vec<BlobInfo>,
    chunk_index: OnceLock<std::result::Result<Vec<(u64, u32)>, String>>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("bytes", &self.data.bytes().len())
            .field("superblock", &self.sb)
            .field("blobs", &self.blobs.len())
            .finish()
    }
}

impl Image {
    /// Open and validate the bootstrap at `path` (the file is mapped, not read).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| RafsError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Err(RafsError::NotRafs(format!("{} is empty", path.display())));
        }
        // SAFETY: the bootstrap is read-only input owned by this process' caller; every access
        // is bounds-checked against the mapping's length.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::with_backing(Backing::Mapped(map))
    }

    /// Validate a bootstrap held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::with_backing(Backing::Owned(bytes))
    }

    fn with_backing(data: Backing) -> Result<Self> {
        let sb = SuperBlock::parse(data.bytes())?;
        let blobs = parse_blob_table(data.bytes(), &sb)?;
        let img = Image {
            data,
            sb,
            blobs,
            chunk_index: OnceLock::new(),
        };
        let root = img.inode(img.sb.root_nid)?;
        if !root.is_dir() {
            return Err(RafsError::corrupt(format!(
                "root nid {} is not a directory",
                img.sb.root_nid
            )));
        }
        Ok(img)
    }

    fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// The validated superblocks.
    pub fn superblock(&self) -> &SuperBlock {
        &self.sb
    }

    /// Data blobs the image references, in blob table order.
    pub fn blobs(&self) -> &[BlobInfo] {
        &self.blobs
    }

    /// Nid of the root directory.
    pub fn root(&self) -> u64 {
        self.sb.root_nid
    }

    /// Size of the bootstrap in bytes.
    pub fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// Whether the bootstrap is empty (never true for a valid image).
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// Attributes of inode `nid`.
    pub fn inode(&self, nid: u64) -> Result<Inode> {
        parse_inode(self.bytes(), &self.sb, nid)
    }

    /// Block `index` of a flat (non-chunked) inode's data: the full blocks live at
    /// `raw_blkaddr`; with the inline layout the last partial block follows the inode.
    fn data_block(&self, inode: &Inode, index: u64) -> Result<&[u8]> {
        let bs = self.sb.block_size();
        let blocks = inode.size.div_ceil(bs);
        if index >= blocks {
            return Err(RafsError::corrupt(format!(
                "nid {}: block {index} is beyond its {blocks} blocks",
                inode.nid
            )));
        }
        let len = (inode.size - index * bs).min(bs);
        match inode.layout {
            disk::FLAT_INLINE if index == blocks - 1 && len < bs => {
                // The tail must not cross the metadata block holding the inode.
                let at = inode.inline_offset();
                if at % bs + len > bs {
                    return Err(RafsError::corrupt(format!(
                        "nid {}: inline tail of {len} bytes crosses a block boundary",
                        inode.nid
                    )));
                }
                slice(self.bytes(), at, len, "inline data")
            }
            disk::FLAT_PLAIN | disk::FLAT_INLINE => {
                let start = u64::from(inode.union)
                    .checked_add(index)
                    .and_then(|b| b.checked_mul(bs))
                    .ok_or_else(|| {
                        RafsError::corrupt(format!(
                            "nid {}: address of block {index} overflows",
                            inode.nid
                        ))
                    })?;
                slice(self.bytes(), start, len, "data block")
            }
            other => Err(RafsError::Unsupported(format!(
                "nid {}: {:?} with data layout {other}",
                inode.nid, inode.file_type
            ))),
        }
    }

    fn dir_inode(&self, nid: u64) -> Result<Inode> {
        let inode = self.inode(nid)?;
        if !inode.is_dir() {
            return Err(RafsError::NotDir(nid));
        }
        Ok(inode)
    }

    fn dir_block(&self, dir: &Inode, index: u64) -> Result<DirBlock<'_>> {
        DirBlock::parse(self.data_block(dir, index)?, dir.nid, index)
    }

    /// Find `name` in directory `parent` (a binary search over blocks, then within one).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<DirEntry>> {
        let dir = self.dir_inode(parent)?;
        let blocks = dir.size.div_ceil(self.sb.block_size());
        let (mut lo, mut hi) = (0u64, blocks);
        // Find the last block whose first name is <= name.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let b = self.dir_block(&dir, mid)?;
            if b.name(0) <= name {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return Ok(None);
        }
        let bi = lo - 1;
        let b = self.dir_block(&dir, bi)?;
        Ok(b.find(name).ok().map(|i| DirEntry {
            name: b.name(i).to_vec(),
            nid: b.nid(i),
            file_type: b.file_type(i),
            next_offset: bi * OFFSETS_PER_BLOCK + i as u64 + 1,
        }))
    }

    /// Entries of directory `nid` starting at `offset` (0 for the start, else an entry's
    /// `next_offset`), `.` and `..` included, handed to `f` until it returns `false`.
    pub fn readdir(
        &self,
        nid: u64,
        offset: u64,
        mut f: impl FnMut(DirEntry) -> bool,
    ) -> Result<()> {
        let dir = self.dir_inode(nid)?;
        let blocks = dir.size.div_ceil(self.sb.block_size());
        let mut bi = offset / OFFSETS_PER_BLOCK;
        let mut ei = (offset % OFFSETS_PER_BLOCK) as usize;
        while bi < blocks {
            let b = self.dir_block(&dir, bi)?;
            for i in ei..b.len() {
                let e = DirEntry {
                    name: b.name(i).to_vec(),
                    nid: b.nid(i),
                    file_type: b.file_type(i),
                    next_offset: bi * OFFSETS_PER_BLOCK + i as u64 + 1,
                };
                if !f(e) {
                    return Ok(());
                }
            }
            bi += 1;
            ei = 0;
        }
        Ok(())
    }

    /// Target of symlink `nid`.
    pub fn readlink(&self, nid: u64) -> Result<Vec<u8>> {
        let inode = self.inode(nid)?;
        if inode.file_type != FileType::Symlink {
            return Err(RafsError::NotSymlink(nid));
        }
        // A target is at most PATH_MAX bytes, which is also one block.
        if inode.size == 0 || inode.size > BLOCK_SIZE {
            return Err(RafsError::corrupt(format!(
                "symlink nid {nid} has a {}-byte target",
                inode.size
            )));
        }
        let mut out = Vec::with_capacity(inode.size as usize);
        for i in 0..inode.size.div_ceil(self.sb.block_size()) {
            out.extend_from_slice(self.data_block(&inode, i)?);
        }
        Ok(out)
    }

    /// Every extended attribute of inode `nid`.
    pub fn xattrs(&self, nid: u64) -> Result<Vec<Xattr>> {
        let inode = self.inode(nid)?;
        parse_xattrs(self.bytes(), &self.sb, &inode)
    }

    /// Value of xattr `name` of inode `nid`, if set.
    pub fn getxattr(&self, nid: u64, name: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .xattrs(nid)?
            .into_iter()
            .find(|x| x.name == name)
            .map(|x| x.value))
    }

    /// Nids the builder listed for prefetch, in order.
    pub fn prefetch_nids(&self) -> Result<Vec<u64>> {
        let sb = &self.sb;
        let t = slice(
            self.bytes(),
            sb.prefetch_table_offset,
            sb.prefetch_table_size,
            "prefetch table",
        )?;
        Ok(t.chunks_exact(PREFETCH_ENTRY_SIZE as usize)
            .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect())
    }

    /// Number of records in the chunk table.
    pub fn chunk_record_count(&self) -> u64 {
        chunk_table::record_count(&self.sb)
    }

    /// Record `i` of the chunk table.
    pub fn chunk_record(&self, i: u64) -> Result<ChunkRecord> {
        chunk_table::parse_record(self.bytes(), &self.sb, self.sb.digest_algo, i)
    }

    /// Every chunk of the image (one per chunk table record), in blob and offset order: what a
    /// full prefetch or pull fetches, and what a store pins for the image.
    pub fn all_chunks(&self) -> Result<Vec<ChunkRef>> {
        let mut out = Vec::with_capacity(self.chunk_record_count() as usize);
        for i in 0..self.chunk_record_count() {
            out.push(self.chunk_ref(&self.chunk_record(i)?)?);
        }
        out.sort_by_key(|c| (c.blob, c.compressed_offset));
        Ok(out)
    }

    /// The chunk reference a chunk record describes: which blob, where, how it is encoded.
    pub fn chunk_ref(&self, rec: &ChunkRecord) -> Result<ChunkRef> {
        let blob = self.blobs.get(rec.blob_index as usize).ok_or_else(|| {
            RafsError::corrupt(format!(
                "chunk {} names blob index {} beyond the {}-entry blob table",
                rec.digest,
                rec.blob_index,
                self.blobs.len()
            ))
        })?;
        for (bit, name) in [
            (chunk_flags::HOLE, "legacy hole"),
            (chunk_flags::BATCH, "batch"),
            (chunk_flags::ENCRYPTED, "encrypted"),
        ] {
            if rec.flags & bit != 0 {
                return Err(RafsError::Unsupported(format!(
                    "chunk {} is a {name} chunk",
                    rec.digest
                )));
            }
        }
        if rec.uncompressed_size == 0 || rec.uncompressed_size > dfagent_core::MAX_CHUNK_SIZE {
            return Err(RafsError::corrupt(format!(
                "chunk {} has uncompressed size {}",
                rec.digest, rec.uncompressed_size
            )));
        }
        let compression = if rec.flags & chunk_flags::COMPRESSED != 0 {
            blob.compression
        } else {
            Compression::None
        };
        if compression == Compression::None && rec.compressed_size != rec.uncompressed_size {
            return Err(RafsError::corrupt(format!(
                "chunk {} is stored raw but its stored size {} differs from its size {}",
                rec.digest, rec.compressed_size, rec.uncompressed_size
            )));
        }
        let limit = chunk_table::max_stored_size(compression, rec.uncompressed_size);
        if rec.compressed_size == 0 || u64::from(rec.compressed_size) > limit {
            return Err(RafsError::StoredSize {
                chunk: rec.digest,
                stored: rec.compressed_size,
                uncompressed: rec.uncompressed_size,
                compression,
                limit,
            });
        }
        if rec
            .compressed_offset
            .checked_add(u64::from(rec.compressed_size))
            .is_none()
        {
            return Err(RafsError::corrupt(format!(
                "chunk {} offset {} overflows",
                rec.digest, rec.compressed_offset
            )));
        }
        Ok(ChunkRef {
            digest: rec.digest,
            blob: blob.id,
            compressed_offset: rec.compressed_offset,
            compressed_size: rec.compressed_size,
            uncompressed_size: rec.uncompressed_size,
            compression,
        })
    }

    fn chunk_index(&self) -> Result<&[(u64, u32)]> {
        let built = self.chunk_index.get_or_init(|| {
            chunk_table::build_index(self.bytes(), &self.sb).map_err(|e| e.to_string())
        });
        built
            .as_deref()
            .map_err(|e| RafsError::corrupt(format!("chunk table: {e}")))
    }

    /// Number of chunks of a regular file.
    pub fn chunk_count(&self, inode: &Inode) -> u64 {
        inode.size.div_ceil(u64::from(self.sb.chunk_size))
    }

    /// The chunks of regular file `inode` that overlap `offset..offset+len`, in file order.
    pub fn chunks(&self, inode: &Inode, offset: u64, len: u64) -> Result<Vec<FileChunk>> {
        if inode.file_type != FileType::File {
            return Err(RafsError::NotFile(inode.nid));
        }
        let end = offset.saturating_add(len).min(inode.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        if inode.layout != disk::CHUNK_BASED {
            return Err(RafsError::corrupt(format!(
                "file nid {} with data is not chunk-based",
                inode.nid
            )));
        }
        let format = inode.union & 0xffff;
        if format & CHUNK_FORMAT_INDEXES == 0 {
            return Err(RafsError::Unsupported(format!(
                "file nid {}: EROFS block-map chunks (format {format:#x}); RAFS uses chunk indexes",
                inode.nid
            )));
        }
        let cs = u64::from(self.sb.chunk_size);
        let count = self.chunk_count(inode);
        let base = inode.inline_offset().div_ceil(chunk_addr::ALIGN) * chunk_addr::ALIGN;
        let first = offset / cs;
        let last = (end - 1) / cs;
        let table = slice(
            self.bytes(),
            base,
            count * chunk_addr::SIZE,
            "chunk index array",
        )?;
        let index = self.chunk_index()?;
        let mut out = Vec::with_capacity((last - first + 1) as usize);
        for i in first..=last {
            let a = ChunkAddr::decode(&table[(i * chunk_addr::SIZE) as usize..]);
            if a.device == 0 {
                return Err(RafsError::corrupt(format!(
                    "file nid {} chunk {i} has no blob (blob index 0)",
                    inode.nid
                )));
            }
            let blob_index = u32::from(a.device) - 1;
            if blob_index as usize >= self.blobs.len() {
                return Err(RafsError::corrupt(format!(
                    "file nid {} chunk {i} names blob index {blob_index} beyond the {}-entry blob table",
                    inode.nid,
                    self.blobs.len()
                )));
            }
            let ci = a.index;
            let k = chunk_table::key(blob_index, ci);
            let rec_idx = index
                .binary_search_by_key(&k, |e| e.0)
                .map(|p| index[p].1)
                .map_err(|_| {
                    RafsError::corrupt(format!(
                        "file nid {} chunk {i} (blob {blob_index}, chunk {ci}) is not in the chunk table",
                        inode.nid
                    ))
                })?;
            let rec = self.chunk_record(u64::from(rec_idx))?;
            let chunk = self.chunk_ref(&rec)?;
            let want = (inode.size - i * cs).min(cs);
            if u64::from(chunk.uncompressed_size) != want {
                return Err(RafsError::corrupt(format!(
                    "file nid {} chunk {i} is {} bytes, expected {want}",
                    inode.nid, chunk.uncompressed_size
                )));
            }
            let index = u32::try_from(i).map_err(|_| {
                RafsError::corrupt(format!(
                    "file nid {} chunk {i} is beyond the 2^32 chunks a file can have",
                    inode.nid
                ))
            })?;
            out.push(FileChunk {
                index,
                file_offset: i * cs,
                chunk,
            });
        }
        Ok(out)
    }
}
