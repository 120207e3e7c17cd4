//! Decoding (decompress + verify) of fetched chunks on a few threads of the resolver's own.
//!
//! Decoding is CPU work: more threads than cores only add threads. Before this pool every
//! fetched chunk was decoded by a `spawn_blocking` of its own, so 64 concurrent readers kept
//! dozens of blocking threads busy, each allocating 1 MiB chunk buffers from a glibc malloc
//! arena of its own (up to 8 per core), and freed chunk memory stayed spread over all of them:
//! the daemon's RSS grew 10–20 MiB beyond the bytes actually held (readers row of
//! docs/reliability.md, finding 3). A fixed set of threads keeps the decoded chunks in as many
//! arenas as there are threads. A reader's chunks go first, then read-ahead, then background
//! work (prefetch, pull): a sequential reader's next chunk must not queue behind the window of
//! read-ahead its own first read started.
//!
//! A decoded chunk of [`MAPPED_MIN`] bytes or more is decoded into memory mapped for it alone
//! (anonymous, read-only once filled) rather than into a Vec: the decoded-chunk
//! cache keeps chunks long and frees them in whatever order it evicts them, and glibc kept the
//! freed buffers as holes in its arenas (freed memory it does not return to the system), so the
//! daemon's RSS grew about 1 MiB/s past the cache under 64 readers. A mapping is returned to the
//! system when its last `Bytes` is dropped.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use dfagent_core::{decode_chunk, decode_chunk_into, ChunkRef, DecodeError, MAX_CHUNK_SIZE};
use tokio::sync::oneshot;

/// Most decoder threads, whatever the core count.
const MAX_THREADS: usize = 4;

/// Decoded chunks at least this large get a mapping of their own (see the module doc).
pub(crate) const MAPPED_MIN: usize = 128 << 10;

/// Most chunks held in mappings of their own at once, node-wide: beyond it chunks stay in the
/// decoder's Vec, so a huge cache of small chunks never nears the kernel's limit on mappings
/// per process (`vm.max_map_count`, 65 530 by default).
const MAX_MAPPED: usize = 16_384;

/// Chunks held in mappings of their own right now.
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// What a decode yields: the verified bytes, or why not.
pub(crate) type Decoded = Result<Bytes, String>;

/// Most idle chunk mappings kept for reuse (see [`Mapped`]'s drop).
const IDLE_MAX: usize = 4;

/// Mappings of dropped chunks, writable again, for the next decodes of the same size: a fresh
/// mapping costs the kernel zeroing and charging its pages, and unmapping it a TLB flush, for
/// every chunk a sequential reader streams through. Each keeps its [`MAPPED`] slot.
static IDLE: Mutex<Vec<(memmap2::MmapMut, Slot)>> = Mutex::new(Vec::new());

/// One of the [`MAX_MAPPED`] mapping slots, given back when dropped.
struct Slot(());

impl Slot {
    /// A free slot, or `None` when they are all in use.
    fn reserve() -> Option<Self> {
        if MAPPED.fetch_add(1, Ordering::Relaxed) >= MAX_MAPPED {
            MAPPED.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        MAPPED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A decoded chunk in a mapping of its own, with its slot.
struct Mapped(Option<(memmap2::Mmap, Slot)>);

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref().map(|(m, _)| &m[..]).unwrap_or_default()
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // Back to the idle list while it has room (made writable again first); else unmapped,
        // its slot given back.
        if let Some((m, slot)) = self.0.take() {
            let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_MAX {
                if let Ok(w) = m.make_mut() {
                    idle.push((w, slot));
                }
            }
        }
    }
}

/// An idle mapping of exactly `len` bytes, if one is kept, with its slot.
fn reuse_mapping(len: usize) -> Option<(memmap2::MmapMut, Slot)> {
    let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
    let i = idle.iter().position(|(m, _)| m.len() == len)?;
    Some(idle.swap_remove(i))
}

/// A mapping of `len` bytes with its slot: an idle one, or a new one faulted in at once
/// (`None` when no slot is free or the kernel refuses the mapping).
fn mapping(len: usize) -> Option<(memmap2::MmapMut, Slot)> {
    if let Some(m) = reuse_mapping(len) {
        return Some(m);
    }
    let slot = Slot::reserve()?;
    match memmap2::MmapOptions::new().len(len).populate().map_anon() {
        Ok(m) => Some((m, slot)),
        Err(e) => {
            tracing::debug!(bytes = len, error = %e, "no mapping for a decoded chunk");
            None
        }
    }
}

/// Decode and verify `data`, the stored bytes of `chunk`. A chunk of [`MAPPED_MIN`] bytes or
/// more is decoded straight into a mapping of its own, faulted in by the kernel in one call
/// (`MAP_POPULATE`) and made read-only once verified: no intermediate buffer, no copy, no
/// page fault per 4 KiB.
fn decode(chunk: &ChunkRef, data: &[u8]) -> Decoded {
    let size = chunk.uncompressed_size as usize;
    let mapped = (size >= MAPPED_MIN && chunk.uncompressed_size <= MAX_CHUNK_SIZE)
        .then(|| mapping(size))
        .flatten();
    if let Some((mut m, slot)) = mapped {
        // On an error the mapping is unmapped and its slot given back, as they drop.
        return decode_chunk_into(chunk, data, &mut m)
            .and_then(|()| {
                m.make_read_only().map_err(|e| DecodeError::Decompress {
                    digest: chunk.digest,
                    compression: chunk.compression,
                    detail: format!("sealing the decoded chunk: {e}"),
                })
            })
            .map(|sealed| Bytes::from_owner(Mapped(Some((sealed, slot)))))
            .map_err(|e| e.to_string());
    }
    decode_chunk(chunk, data)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

struct Job {
    chunk: ChunkRef,
    data: Bytes,
    done: oneshot::Sender<Decoded>,
}

/// Who waits for a decode, in the order the decoder threads serve them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// A reader waits for this chunk now.
    Read,
    /// Fetched ahead of a sequential reader.
    Ahead,
    /// Prefetch, pull: nobody waits.
    Background,
}

#[derive(Default)]
struct Queue {
    foreground: VecDeque<Job>,
    ahead: VecDeque<Job>,
    background: VecDeque<Job>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The decoder threads and their queue. Dropping it stops the threads once the queue is empty
/// (they are not joined: each finishes at most the jobs already queued).
pub(crate) struct DecodePool {
    shared: Arc<Shared>,
    threads: usize,
}

impl DecodePool {
    /// A pool of one thread per core, at most [`MAX_THREADS`]. A thread that cannot be
    /// started is logged and done without; with none at all, decodes run on tokio's blocking
    /// pool as before.
    pub(crate) fn start() -> Self {
        let want = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, MAX_THREADS);
        Self::with_threads(want)
    }

    /// A pool of `want` threads (0: none, everything on tokio's blocking pool).
    pub(crate) fn with_threads(want: usize) -> Self {
        let shared = Arc::new(Shared::default());
        let mut threads = 0;
        for i in 0..want {
            let s = shared.clone();
            match std::thread::Builder::new()
                .name(format!("dfagent-decode-{i}"))
                .spawn(move || work(&s))
            {
                Ok(_) => threads += 1,
                Err(e) => {
                    tracing::warn!(thread = i, error = %e, "cannot start a chunk decoder thread");
                }
            }
        }
        tracing::debug!(threads, "chunk decoder threads started");
        Self { shared, threads }
    }

    /// Decoder threads running.
    #[cfg(test)]
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// Decode `data` (the stored bytes of `chunk`) and verify it; reads are decoded before
    /// queued read-ahead, and read-ahead before background work. The job is queued at once (not when the
    /// future is first polled), so several decodes queued in a row run in parallel.
    pub(crate) fn decode(
        &self,
        chunk: ChunkRef,
        data: Bytes,
        class: Class,
    ) -> impl Future<Output = Decoded> + Send + 'static {
        let queued = if self.threads == 0 {
            Err(tokio::task::spawn_blocking(move || decode(&chunk, &data)))
        } else {
            let (done, result) = oneshot::channel();
            {
                let mut q = self.shared.lock();
                let job = Job { chunk, data, done };
                match class {
                    Class::Read => q.foreground.push_back(job),
                    Class::Ahead => q.ahead.push_back(job),
                    Class::Background => q.background.push_back(job),
                }
            }
            self.shared.ready.notify_one();
            Ok(result)
        };
        async move {
            match queued {
                Ok(result) => result
                    .await
                    .unwrap_or_else(|_| Err("the chunk decoder stopped".into())),
                Err(task) => match task.await {
                    Ok(d) => d,
                    Err(e) => Err(format!("decoder task failed: {e}")),
                },
            }
        }
    }
}

impl Drop for DecodePool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

/// A decoder thread: take jobs, reads first, until the pool is dropped and the queue empty.
fn work(shared: &Shared) {
    loop {
        let job = {
            let mut q = shared.lock();
            loop {
                if let Some(j) = q
                    .foreground
                    .pop_front()
                    .or_else(|| q.ahead.pop_front())
                    .or_else(|| q.background.pop_front())
                {
                    break j;
                }
                if q.closed {
                    return;
                }
                q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let decoded = decode(&job.chunk, &job.data);
        // The reader may have gone (its read was cancelled): nothing to do then.
        let _ = job.done.send(decoded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfagent_core::{encode_chunk, BlobId, Compression, DigestAlgo};

    fn chunk_of(data: &[u8]) -> (ChunkRef, Bytes) {
        let (stored, compression) = encode_chunk(Compression::Zstd, data).expect("encode");
        let chunk = ChunkRef {
            digest: DigestAlgo::Blake3.digest(data),
            blob: BlobId::from_bytes([7; 32]),
            compressed_offset: 0,
            compressed_size: stored.len() as u32,
            uncompressed_size: data.len() as u32,
            compression,
        };
        (chunk, Bytes::from(stored.into_owned()))
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn decodes_and_verifies_on_its_threads_and_without_any() {
        for threads in [0, 1, 3] {
            let pool = DecodePool::with_threads(threads);
            assert_eq!(pool.threads(), threads);
            let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            let (chunk, stored) = chunk_of(&data);
            let rt = rt();
            let got = rt.block_on(async { pool.decode(chunk, stored.clone(), Class::Read).await });
            assert_eq!(got.as_deref(), Ok(&data[..]), "{threads} threads");
            // Bytes that do not hash to the digest are refused.
            let mut wrong = chunk;
            wrong.digest = DigestAlgo::Blake3.digest(b"something else");
            let got = rt.block_on(async { pool.decode(wrong, stored, Class::Background).await });
            assert!(
                got.is_err_and(|e| e.contains("digest")),
                "{threads} threads"
            );
        }
    }

    #[test]
    fn many_concurrent_decodes_all_answer() {
        let pool = Arc::new(DecodePool::with_threads(2));
        let chunks: Vec<(Vec<u8>, ChunkRef, Bytes)> = (0..64u32)
            .map(|n| {
                let data: Vec<u8> = (0..(1000 + n * 997)).map(|i| (i ^ n) as u8).collect();
                let (c, s) = chunk_of(&data);
                (data, c, s)
            })
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let results = rt.block_on(async {
            let tasks: Vec<_> = chunks
                .iter()
                .enumerate()
                .map(|(i, (_, c, s))| {
                    let (pool, c, s) = (pool.clone(), *c, s.clone());
                    tokio::spawn(async move {
                        pool.decode(c, s, [Class::Read, Class::Ahead, Class::Background][i % 3])
                            .await
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(
                    tokio::time::timeout(std::time::Duration::from_secs(60), t)
                        .await
                        .expect("decode within 60 s")
                        .expect("task"),
                );
            }
            out
        });
        for ((data, ..), got) in chunks.iter().zip(results) {
            assert_eq!(got.as_deref(), Ok(&data[..]));
        }
    }

    #[test]
    fn large_chunks_are_decoded_into_a_mapping_of_their_own_small_ones_into_a_vec() {
        let small: Vec<u8> = (0..(MAPPED_MIN - 1)).map(|i| i as u8).collect();
        let (chunk, stored) = chunk_of(&small);
        let b = decode(&chunk, &stored).expect("small chunk");
        assert_eq!(b, small);
        let large: Vec<u8> = (0..(MAPPED_MIN + 12_345))
            .map(|i| (i % 253) as u8)
            .collect();
        let (chunk, stored) = chunk_of(&large);
        let b = decode(&chunk, &stored).expect("large chunk");
        // A mapping starts on a page and holds the decoded bytes, byte for byte.
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        assert_eq!(b, large);
        // A chunk that fails verification is refused (its mapping dropped).
        let mut wrong = chunk;
        wrong.digest = DigestAlgo::Blake3.digest(b"something else");
        assert!(decode(&wrong, &stored).is_err_and(|e| e.contains("digest")));
        // A size beyond the format's bound is refused before anything is mapped.
        let mut huge = chunk;
        huge.uncompressed_size = MAX_CHUNK_SIZE + 1;
        assert!(decode(&huge, &stored).is_err());
        // Slices and clones share the mapping; it lives until the last of them is dropped.
        let tail = b.slice(MAPPED_MIN..);
        drop(b);
        assert_eq!(tail, large[MAPPED_MIN..]);
        drop(tail);
        // A dropped chunk's mapping may serve the next decode of its size: other bytes now,
        // every one of them the new chunk's.
        let other: Vec<u8> = (0..(MAPPED_MIN + 12_345))
            .map(|i| (i % 241) as u8 ^ 0x5a)
            .collect();
        let (chunk, stored) = chunk_of(&other);
        assert_eq!(decode(&chunk, &stored).expect("reused mapping"), other);
    }

    #[test]
    fn a_dropped_pool_stops_its_threads() {
        let pool = DecodePool::with_threads(2);
        let shared = pool.shared.clone();
        drop(pool);
        // Both threads let go of the queue once they see it closed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while Arc::strong_count(&shared) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(Arc::strong_count(&shared), 1);
    }
}
