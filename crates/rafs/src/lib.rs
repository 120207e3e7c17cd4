//! RAFS v6, the metadata format of Nydus images, read with every offset and length from the
//! image checked. [`Image`] is the handle a filesystem needs: `lookup`, `inode` (getattr),
//! `readdir`, `readlink`, `xattrs`, and `chunks` (which bytes of which blob hold a file range).
//! [`blob_meta`] reads what a data blob carries at its tail (chunk-info array, TOC).
//!
//! The layout follows upstream Nydus' `nydus-image` output (EROFS-compatible): superblock at
//! byte 1024, RAFS extended superblock after it, device table, inodes in 32-byte slots, 12-byte
//! dirents, chunk-based regular files whose 8-byte chunk addresses resolve through the chunk
//! table. Every offset, size and flag of the format is defined once, in [`layout`], for the
//! reader and the writer ([`mod@write`]) alike.

pub mod blob_meta;
mod blob_table;
mod bytes;
mod chunk_table;
mod dir;
mod error;
mod image;
mod inode;
pub mod layout;
mod superblock;
mod walk;
pub mod write;
mod xattr;

pub use blob_table::BlobInfo;
pub use chunk_table::{max_stored_size, ChunkRecord};
pub use dir::DirEntry;
pub use error::{RafsError, Result};
pub use image::{FileChunk, Image};
pub use inode::{FileType, Inode};
pub use layout::dirent::MAX_NAME_LEN;
pub use layout::{blob_features, chunk_flags, super_flags};
pub use superblock::SuperBlock;
pub use walk::{WalkEntry, MAX_DEPTH};
pub use xattr::Xattr;
