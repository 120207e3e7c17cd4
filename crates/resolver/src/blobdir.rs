//! The local blob directory tier: `DIR/<sha256>` files as `dfagent build --output-dir` and the
//! fixtures lay them out, read with positioned reads.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dfagent_core::{
    answer_all, fail_all, Answer, BlobId, BoxFuture, ChunkRef, ChunkTier, Slot, StoredChunk,
    TierError, TierErrorKind,
};
use sha2::Digest as _;

/// Serves chunks from blob files named by their sha256 in one directory.
#[derive(Clone)]
pub struct BlobDirTier {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    files: Mutex<HashMap<BlobId, Arc<File>>>,
}

impl BlobDirTier {
    /// A tier over `dir`. Blob files are opened on first use and kept open.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: dir.into(),
                files: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Path of blob `id` in the directory.
    pub fn blob_path(&self, id: &BlobId) -> PathBuf {
        self.inner.dir.join(id.hex())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Stored bytes of `chunk`, or `None` when the directory lacks its blob.
    pub fn read_stored(&self, chunk: &ChunkRef) -> io::Result<Option<Vec<u8>>> {
        self.inner.read_stored(chunk)
    }

    /// sha256 and size of blob `id`'s file, `None` when it is absent.
    pub fn hash_blob(&self, id: &BlobId) -> io::Result<Option<(BlobId, u64)>> {
        let mut f = match File::open(self.blob_path(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            h.update(&buf[..n]);
        }
        Ok(Some((BlobId::from_bytes(h.finalize().into()), size)))
    }
}

impl Inner {
    fn file(&self, id: &BlobId) -> io::Result<Option<Arc<File>>> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = files.get(id) {
            return Ok(Some(f.clone()));
        }
        match File::open(self.dir.join(id.hex())) {
            Ok(f) => {
                let f = Arc::new(f);
                files.insert(*id, f.clone());
                Ok(Some(f))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_stored(&self, chunk: &ChunkRef) -> io::Result<Option<Vec<u8>>> {
        let Some(f) = self.file(&chunk.blob)? else {
            return Ok(None);
        };
        let mut buf = vec![0u8; chunk.compressed_size as usize];
        f.read_exact_at(&mut buf, chunk.compressed_offset)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "blob {} offset {} size {}: {e}",
                        chunk.blob, chunk.compressed_offset, chunk.compressed_size
                    ),
                )
            })?;
        Ok(Some(buf))
    }
}

impl ChunkTier for BlobDirTier {
    fn name(&self) -> &str {
        "blobdir"
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        let inner = self.inner.clone();
        let chunks: Vec<ChunkRef> = slots.iter().map(|s| *s.chunk()).collect();
        Box::pin(async move {
            let read = tokio::task::spawn_blocking(move || {
                chunks
                    .iter()
                    .map(|c| match inner.read_stored(c) {
                        Ok(Some(data)) => Answer::Found(StoredChunk {
                            data: Bytes::from(data),
                            compression: c.compression,
                        }),
                        Ok(None) => Answer::Missing,
                        Err(e) => Answer::Failed(TierError::new(
                            "blobdir",
                            TierErrorKind::Io,
                            e.to_string(),
                        )),
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            match read {
                Ok(answers) => answer_all(slots, answers),
                Err(e) => fail_all(
                    slots,
                    &TierError::new(
                        "blobdir",
                        TierErrorKind::Other,
                        format!("reader task failed: {e}"),
                    ),
                ),
            }
        })
    }
}
