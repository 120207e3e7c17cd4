//! Chunk hashing and compression on a pool of worker threads, with results put back in input
//! order so the blob comes out the same whatever the thread count.
//!
//! ```text
//!  reader (caller's thread) ──jobs (bounded)──► workers ×N ──results (bounded)──► writer thread
//!  tar → chunk buffers          digest + compress             reorder by sequence, dedup,
//!    ▲                                                         append to the blob
//!    └──────────────── empty buffers (a fixed pool) ◄──────────────┘
//! ```
//! The reader takes a buffer from a fixed pool before it reads a chunk, and the writer returns
//! it once the chunk is written, so at most `pool` chunks (plus their compressed copies) are in
//! memory at any time: memory is bounded by about `2 × pool × chunk_size`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, RwLock};

use dfagent_core::{ChunkDigest, ChunkEncoder, Compression, DigestAlgo};
use dfagent_rafs::write::{BlobSpec, BlobWriter, ChunkPlacement};

use crate::error::{BuildError, Result};

/// How chunks are made.
#[derive(Clone, Copy, Debug)]
pub struct ChunkOptions {
    /// Chunk size (power of two, 4 KiB ..= 16 MiB).
    pub chunk_size: u32,
    /// Digest of uncompressed chunks.
    pub digest: DigestAlgo,
    /// Compressor of new chunks.
    pub compression: Compression,
    /// Worker threads (≥ 1).
    pub threads: usize,
}

/// Chunks known so far: digest → where it is (dictionary, earlier layers, this layer).
pub type ChunkMap = HashMap<ChunkDigest, ChunkPlacement>;

/// Counts of one layer's chunking.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkStats {
    /// Chunks cut (with duplicates).
    pub chunks: u64,
    /// Chunks that were new (written to this layer's blob).
    pub new_chunks: u64,
    /// Uncompressed bytes of all chunks.
    pub bytes: u64,
    /// Uncompressed bytes of the new chunks.
    pub new_bytes: u64,
    /// Stored bytes of the new chunks.
    pub stored_bytes: u64,
}

struct Job {
    seq: u64,
    buf: Vec<u8>,
}

struct Done {
    seq: u64,
    buf: Vec<u8>,
    digest: ChunkDigest,
    /// The compressed bytes, when compression was tried and paid off.
    compressed: Option<Vec<u8>>,
    /// Whether compression was skipped because the chunk was already known.
    skipped: bool,
}

/// One layer's chunking session: feed chunks with [`LayerChunker::push`], then
/// [`LayerChunker::finish`].
pub struct LayerChunker<'scope> {
    jobs: Option<SyncSender<Job>>,
    pool: Receiver<Vec<u8>>,
    next_seq: u64,
    writer: std::thread::ScopedJoinHandle<'scope, Result<WriterOutput>>,
    workers: Vec<std::thread::ScopedJoinHandle<'scope, Result<()>>>,
}

/// What the writer thread hands back.
pub struct WriterOutput {
    /// Placements of every pushed chunk, in push order.
    pub placements: Vec<ChunkPlacement>,
    /// The finished blob (`None` when the layer added no chunk) and its writer's output.
    pub blob: Option<BlobSpec>,
    /// Counts.
    pub stats: ChunkStats,
}

/// The compressed bytes of `data`, or `None` when it is stored raw (compression off, or it does
/// not pay: see [`dfagent_core::encode_chunk`]).
fn compress(c: Compression, enc: &mut ChunkEncoder, data: &[u8]) -> Result<Option<Vec<u8>>> {
    let (stored, used) = enc
        .encode(c, data)
        .map_err(|e| BuildError::Internal(e.to_string()))?;
    Ok((used != Compression::None).then(|| stored.into_owned()))
}

impl<'scope> LayerChunker<'scope> {
    /// Start workers and the writer thread for one layer. `known` is shared with the workers
    /// (they skip compressing chunks already known); `blob_out` receives this layer's blob;
    /// `blob_index` is the (provisional) blob index new chunks are placed in.
    pub fn start<'env, W: Write + Send + 'scope>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        opts: ChunkOptions,
        known: Arc<RwLock<ChunkMap>>,
        blob_out: W,
        blob_index: u32,
    ) -> Result<Self> {
        let threads = opts.threads.max(1);
        let pool_size = 2 * threads + 2;
        let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
        let (done_tx, done_rx) = sync_channel::<Done>(pool_size);
        let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(pool_size);
        for _ in 0..pool_size {
            pool_tx
                .send(Vec::with_capacity(opts.chunk_size as usize))
                .map_err(|_| BuildError::Internal("buffer pool closed".into()))?;
        }
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = job_rx.clone();
            let tx = done_tx.clone();
            let known = known.clone();
            let h = std::thread::Builder::new()
                .name(format!("chunk-{i}"))
                .spawn_scoped(scope, move || worker(opts, rx, tx, known))
                .map_err(|e| BuildError::Internal(format!("cannot start a worker: {e}")))?;
            workers.push(h);
        }
        drop(done_tx);
        let writer = std::thread::Builder::new()
            .name("blob-writer".into())
            .spawn_scoped(scope, move || {
                writer(opts, done_rx, pool_tx, known, blob_out, blob_index)
            })
            .map_err(|e| BuildError::Internal(format!("cannot start the blob writer: {e}")))?;
        Ok(Self {
            jobs: Some(job_tx),
            pool: pool_rx,
            next_seq: 0,
            writer,
            workers,
        })
    }

    /// A buffer to fill with the next chunk (blocks while the pool is empty). `None` means the
    /// pipeline stopped (its error comes out of [`LayerChunker::finish`]).
    pub fn buffer(&mut self) -> Option<Vec<u8>> {
        self.pool.recv().ok()
    }

    /// Queue a filled chunk buffer. `false` means the pipeline stopped.
    pub fn push(&mut self, buf: Vec<u8>) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        match &self.jobs {
            Some(tx) => tx.send(Job { seq, buf }).is_ok(),
            None => false,
        }
    }

    /// Wait for every queued chunk, finish the blob and return the placements in push order.
    pub fn finish(mut self) -> Result<WriterOutput> {
        self.jobs = None;
        let mut first_err = None;
        for w in self.workers {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(BuildError::Internal("a chunk worker panicked".into()));
                }
            }
        }
        let out = match self.writer.join() {
            Ok(r) => r,
            Err(_) => Err(BuildError::Internal("the blob writer panicked".into())),
        };
        match (out, first_err) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(e)) => Err(e),
            (Ok(o), None) => {
                if o.placements.len() as u64 != self.next_seq {
                    return Err(BuildError::Internal(format!(
                        "{} chunks queued, {} placed",
                        self.next_seq,
                        o.placements.len()
                    )));
                }
                Ok(o)
            }
        }
    }
}

fn worker(
    opts: ChunkOptions,
    rx: Arc<Mutex<Receiver<Job>>>,
    tx: SyncSender<Done>,
    known: Arc<RwLock<ChunkMap>>,
) -> Result<()> {
    let mut enc = ChunkEncoder::new();
    loop {
        let job = {
            let guard = rx
                .lock()
                .map_err(|_| BuildError::Internal("job queue poisoned".into()))?;
            match guard.recv() {
                Ok(j) => j,
                Err(_) => return Ok(()),
            }
        };
        let digest = opts.digest.digest(&job.buf);
        let is_known = known
            .read()
            .map_err(|_| BuildError::Internal("chunk map poisoned".into()))?
            .contains_key(&digest);
        let compressed = if is_known {
            None
        } else {
            compress(opts.compression, &mut enc, &job.buf)?
        };
        let done = Done {
            seq: job.seq,
            buf: job.buf,
            digest,
            compressed,
            skipped: is_known,
        };
        if tx.send(done).is_err() {
            // The writer stopped; its error is reported by finish().
            return Ok(());
        }
    }
}

fn writer<W: Write>(
    opts: ChunkOptions,
    rx: Receiver<Done>,
    pool: SyncSender<Vec<u8>>,
    known: Arc<RwLock<ChunkMap>>,
    out: W,
    blob_index: u32,
) -> Result<WriterOutput> {
    let mut blob = BlobWriter::new(out, opts.chunk_size, opts.compression, opts.digest);
    let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
    let mut next: u64 = 0;
    let mut placements = Vec::new();
    let mut stats = ChunkStats::default();
    let mut enc = ChunkEncoder::new();
    let io = |e| BuildError::io("data blob", e);
    while let Ok(d) = rx.recv() {
        pending.insert(d.seq, d);
        while let Some(mut d) = pending.remove(&next) {
            next += 1;
            let len = d.buf.len();
            let size = u32::try_from(len)
                .map_err(|_| BuildError::Internal("chunk larger than 4 GiB".into()))?;
            stats.chunks += 1;
            stats.bytes += len as u64;
            let found = known
                .read()
                .map_err(|_| BuildError::Internal("chunk map poisoned".into()))?
                .get(&d.digest)
                .copied();
            let placement = match found {
                Some(p) => p,
                None => {
                    if d.skipped {
                        // Not reachable (the map only grows), but cheap to handle.
                        d.compressed = compress(opts.compression, &mut enc, &d.buf)?;
                    }
                    let mut p = match &d.compressed {
                        Some(c) => blob.add_chunk(d.digest, size, c, true).map_err(io)?,
                        None => blob.add_chunk(d.digest, size, &d.buf, false).map_err(io)?,
                    };
                    p.blob_index = blob_index;
                    stats.new_chunks += 1;
                    stats.new_bytes += len as u64;
                    stats.stored_bytes += u64::from(p.compressed_size);
                    known
                        .write()
                        .map_err(|_| BuildError::Internal("chunk map poisoned".into()))?
                        .insert(d.digest, p);
                    p
                }
            };
            placements.push(placement);
            let mut buf = d.buf;
            buf.clear();
            // The reader may have stopped; then nobody needs the buffer.
            let _ = pool.try_send(buf);
        }
    }
    if !pending.is_empty() {
        return Err(BuildError::Internal(format!(
            "{} chunks never arrived in order",
            pending.len()
        )));
    }
    let blob = if blob.chunk_count() > 0 {
        let (mut w, spec) = blob.finish().map_err(io)?;
        w.flush().map_err(io)?;
        Some(spec)
    } else {
        None
    };
    Ok(WriterOutput {
        placements,
        blob,
        stats,
    })
}
