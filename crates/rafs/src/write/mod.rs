//! Writing RAFS v6 images: the bootstrap ([`write_bootstrap`]) from an in-memory [`Tree`], and
//! native data blobs ([`BlobWriter`]) with their chunk-info array and 4 KiB meta header, laid out
//! as upstream `nydus-image` lays them out so that nydusd and our reader both read them.

mod blob;
mod bootstrap;
mod from_dir;
mod placement;
mod validate;
mod xattr;

use dfagent_core::{BlobId, ChunkDigest, Compression, DigestAlgo};

pub use blob::BlobWriter;
pub use bootstrap::write_bootstrap;
pub use from_dir::tree_from_dir;

/// A filesystem tree to write as a RAFS v6 bootstrap. `nodes[0]` is the root directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    /// All nodes; `nodes[0]` is the root, every other node is listed in its parent's children.
    pub nodes: Vec<Node>,
}

/// One directory entry of a [`Tree`] and the object it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// One path component (no '/', not "." or ".."); empty for the root.
    pub name: Vec<u8>,
    /// Index of the parent directory node (root: 0).
    pub parent: u32,
    /// Directory entries, any order (the writer sorts them by name bytes).
    pub children: Vec<u32>,
    /// Full `st_mode`, file-type bits included.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime: u64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Device major number (device nodes only).
    pub rdev_major: u32,
    /// Device minor number (device nodes only).
    pub rdev_minor: u32,
    /// Extended attributes: full names with namespace prefix, arbitrary values.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// What the node holds.
    pub content: Content,
}

/// What a [`Node`] holds besides its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Directories, fifos, sockets, devices, empty regular files.
    None,
    /// Symlink target.
    Symlink(Vec<u8>),
    /// Regular file data: `chunks[i]` holds file bytes `[i*chunk_size, ...)`. Sizes of all but
    /// the last chunk equal the image's chunk size.
    File {
        /// File size in bytes.
        size: u64,
        /// The file's chunks in file order.
        chunks: Vec<ChunkPlacement>,
    },
    /// A hard link to another node (never a directory, never itself a hard link): this
    /// directory entry points at that node's inode, whose attributes are the target node's
    /// (the link node's own mode, owner, times and xattrs are ignored). The writer computes
    /// nlink.
    HardLink(u32),
}

/// Where one chunk of a file lives. The same placement may appear in many files (dedup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlacement {
    /// Digest of the uncompressed bytes.
    pub digest: ChunkDigest,
    /// Index into the `blobs` slice given to [`write_bootstrap`].
    pub blob_index: u32,
    /// Position in that blob's chunk-info array.
    pub index_in_blob: u32,
    /// Offset of the stored bytes in the blob.
    pub compressed_offset: u64,
    /// Stored size.
    pub compressed_size: u32,
    /// Offset in the blob's uncompressed address space.
    pub uncompressed_offset: u64,
    /// Uncompressed size.
    pub uncompressed_size: u32,
    /// Whether the stored bytes are compressed with the blob's compressor (false: raw).
    pub compressed: bool,
}

/// One data blob, as the blob table records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobSpec {
    /// sha256 of the whole blob file.
    pub id: BlobId,
    /// Chunk size the blob was cut with.
    pub chunk_size: u32,
    /// Number of chunks (entries of its chunk-info array).
    pub chunk_count: u32,
    /// Compressor of its compressed chunks.
    pub compression: Compression,
    /// Digest algorithm of its chunks.
    pub digest_algo: DigestAlgo,
    /// Size of the whole blob file, chunk-info array and header included: what upstream
    /// nydus-image records here (its fixtures show it), although upstream's field comment says
    /// "chunk data area".
    pub compressed_size: u64,
    /// Size of the uncompressed (4 KiB aligned) address space.
    pub uncompressed_size: u64,
    /// [`crate::blob_features`] bits.
    pub features: u32,
    /// Offset of the chunk-info array in the blob.
    pub ci_offset: u64,
    /// Stored size of the chunk-info array.
    pub ci_compressed_size: u64,
    /// Size of the chunk-info array after decompression.
    pub ci_uncompressed_size: u64,
    /// Compression of the chunk-info array.
    pub ci_compression: Compression,
}

impl From<&crate::BlobInfo> for BlobSpec {
    /// A blob another image references (a chunk dictionary's), to reference again.
    fn from(b: &crate::BlobInfo) -> Self {
        BlobSpec {
            id: b.id,
            chunk_size: b.chunk_size,
            chunk_count: b.chunk_count,
            compression: b.compression,
            digest_algo: b.digest_algo,
            compressed_size: b.compressed_size,
            uncompressed_size: b.uncompressed_size,
            features: b.features,
            ci_offset: b.ci_offset,
            ci_compressed_size: b.ci_compressed_size,
            ci_uncompressed_size: b.ci_uncompressed_size,
            ci_compression: b.ci_compression,
        }
    }
}

/// Image-wide settings of a bootstrap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapOptions {
    /// Chunk size: a power of two, 4 KiB ..= 16 MiB.
    pub chunk_size: u32,
    /// Chunk digest algorithm.
    pub digest_algo: DigestAlgo,
    /// Image-wide default compression recorded in the superblock.
    pub compression: Compression,
    /// Node indices for the prefetch table, in order.
    pub prefetch: Vec<u32>,
}
