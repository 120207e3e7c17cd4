//! Fake tiers and stores that speak the resolver's contract ([`ChunkTier`], [`ChunkStore`]):
//! an in-memory tier, wrappers that count, hold back, corrupt or fail another tier's answers,
//! and in-memory stores (one whose writes can be held, to show a slow store never delays a
//! read).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dfagent_core::{
    Answer, BlobId, BoxFuture, ChunkDigest, ChunkRef, ChunkStore, ChunkTier, Compression,
    DigestAlgo, Retry, Slot, StoredChunk, TierError, TierErrorKind,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A raw (uncompressed) test chunk of `size` bytes derived from `seed`, and its reference in a
/// made-up blob.
pub fn raw_chunk(seed: u8, size: usize) -> (ChunkRef, Bytes) {
    let data: Vec<u8> = (0..size)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8))
        .collect();
    let data = Bytes::from(data);
    let c = ChunkRef {
        digest: DigestAlgo::Blake3.digest(&data),
        blob: BlobId::from_bytes([7; 32]),
        compressed_offset: u64::from(seed) * size as u64,
        compressed_size: size as u32,
        uncompressed_size: size as u32,
        compression: Compression::None,
    };
    (c, data)
}

/// The digests of `refs`, as a set.
pub fn digests(refs: &[ChunkRef]) -> HashSet<ChunkDigest> {
    refs.iter().map(|c| c.digest).collect()
}

/// What a fake tier saw: each request's digests, and the chunks it was told were bad.
#[derive(Default)]
pub struct Record {
    requests: Mutex<Vec<Vec<ChunkDigest>>>,
    bad: Mutex<Vec<ChunkDigest>>,
    in_request: AtomicUsize,
}

impl Record {
    fn request(&self, slots: &[Slot]) {
        lock(&self.requests).push(slots.iter().map(|s| s.chunk().digest).collect());
    }

    /// Every request so far, as the digests it asked for.
    pub fn requests(&self) -> Vec<Vec<ChunkDigest>> {
        lock(&self.requests).clone()
    }

    /// Every digest asked for, in order, across requests.
    pub fn requested(&self) -> Vec<ChunkDigest> {
        lock(&self.requests).iter().flatten().copied().collect()
    }

    /// Chunks the resolver reported as failing verification.
    pub fn bad_answers(&self) -> Vec<ChunkDigest> {
        lock(&self.bad).clone()
    }

    /// Requests being answered right now.
    pub fn in_request(&self) -> usize {
        self.in_request.load(Ordering::SeqCst)
    }
}

/// A tier holding chunks in memory (as raw bytes). Records what it is asked; with
/// [`MemTier::corrupt_first`] it flips a byte of its first answers per chunk; it asks to be
/// asked again after a bad answer unless told otherwise.
pub struct MemTier {
    name: String,
    chunks: HashMap<ChunkDigest, Bytes>,
    bad_answers: u64,
    answered: Mutex<HashMap<ChunkDigest, u64>>,
    retry: Retry,
    /// What it saw.
    pub record: Record,
}

impl MemTier {
    /// A tier named `name` holding `chunks`.
    pub fn new(name: &str, chunks: &[(ChunkRef, Bytes)]) -> Self {
        Self {
            name: name.to_string(),
            chunks: chunks.iter().map(|(c, d)| (c.digest, d.clone())).collect(),
            bad_answers: 0,
            answered: Mutex::default(),
            retry: Retry::AskAgain,
            record: Record::default(),
        }
    }

    /// Corrupt the first `n` answers for each chunk (`u64::MAX`: always).
    pub fn corrupt_first(mut self, n: u64) -> Self {
        self.bad_answers = n;
        self
    }

    /// What to ask of the resolver after a bad answer.
    pub fn on_bad_answer(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }
}

impl ChunkTier for MemTier {
    fn name(&self) -> &str {
        &self.name
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.record.request(slots);
            for slot in slots.iter_mut() {
                let Some(data) = self.chunks.get(&slot.chunk().digest) else {
                    continue;
                };
                let n = {
                    let mut a = lock(&self.answered);
                    let n = a.entry(slot.chunk().digest).or_default();
                    *n += 1;
                    *n
                };
                let mut data = data.to_vec();
                if n <= self.bad_answers {
                    data[0] ^= 1;
                }
                slot.found(Bytes::from(data), Compression::None);
            }
        })
    }

    fn bad_answer(&self, chunk: &ChunkRef, _detail: &str) -> Retry {
        lock(&self.record.bad).push(chunk.digest);
        self.retry
    }
}

/// Wraps a tier and records every request and bad-answer report.
pub struct CountingTier {
    inner: Arc<dyn ChunkTier>,
    name: String,
    /// What it saw.
    pub record: Record,
}

impl CountingTier {
    /// Counting in front of `inner`, named `name`.
    pub fn new(name: &str, inner: Arc<dyn ChunkTier>) -> Self {
        Self {
            inner,
            name: name.to_string(),
            record: Record::default(),
        }
    }
}

impl ChunkTier for CountingTier {
    fn name(&self) -> &str {
        &self.name
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        self.record.request(slots);
        self.inner.fetch(slots)
    }

    fn bad_answer(&self, chunk: &ChunkRef, detail: &str) -> Retry {
        lock(&self.record.bad).push(chunk.digest);
        self.inner.bad_answer(chunk, detail)
    }
}

/// Wraps a tier and holds back every request that includes one chunk until the gate opens.
pub struct GatedTier {
    inner: Arc<dyn ChunkTier>,
    gated: ChunkDigest,
    open: tokio::sync::watch::Sender<bool>,
    hits: AtomicUsize,
    /// What it saw.
    pub record: Record,
}

impl GatedTier {
    /// A gate (closed) on `gated` in front of `inner`.
    pub fn new(inner: Arc<dyn ChunkTier>, gated: ChunkDigest) -> Self {
        Self {
            inner,
            gated,
            open: tokio::sync::watch::channel(false).0,
            hits: AtomicUsize::new(0),
            record: Record::default(),
        }
    }

    /// Let held and future requests through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Requests that reached the gate.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl ChunkTier for GatedTier {
    fn name(&self) -> &str {
        "gated"
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.record.request(slots);
            self.record.in_request.fetch_add(1, Ordering::SeqCst);
            if slots.iter().any(|s| s.chunk().digest == self.gated) {
                self.hits.fetch_add(1, Ordering::SeqCst);
                let mut open = self.open.subscribe();
                if open.wait_for(|o| *o).await.is_err() {
                    let e = TierError::new("gated", TierErrorKind::Other, "gate dropped");
                    for s in slots.iter_mut() {
                        s.failed(e.clone());
                    }
                    self.record.in_request.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            }
            self.inner.fetch(slots).await;
            self.record.in_request.fetch_sub(1, Ordering::SeqCst);
        })
    }

    fn bad_answer(&self, chunk: &ChunkRef, detail: &str) -> Retry {
        self.inner.bad_answer(chunk, detail)
    }
}

/// Opens a [`GatedTier`] when dropped, so a failing test never leaves a reader stuck.
pub struct OpenOnDrop(pub Arc<GatedTier>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Wraps a tier and flips a byte in its first `n` answers for each chunk.
pub struct CorruptingTier {
    inner: Arc<dyn ChunkTier>,
    name: String,
    n: u64,
    answered: Mutex<HashMap<ChunkDigest, u64>>,
    retry: Retry,
    /// What it saw.
    pub record: Record,
}

impl CorruptingTier {
    /// Corrupting the first `n` answers per chunk of `inner` (`u64::MAX`: all).
    pub fn new(name: &str, inner: Arc<dyn ChunkTier>, n: u64) -> Self {
        Self {
            inner,
            name: name.to_string(),
            n,
            answered: Mutex::default(),
            retry: Retry::AskAgain,
            record: Record::default(),
        }
    }

    /// What to ask of the resolver after a bad answer.
    pub fn on_bad_answer(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }
}

impl ChunkTier for CorruptingTier {
    fn name(&self) -> &str {
        &self.name
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.record.request(slots);
            self.inner.fetch(slots).await;
            for slot in slots.iter_mut() {
                let digest = slot.chunk().digest;
                let Answer::Found(stored) = slot.answer().clone() else {
                    continue;
                };
                let n = {
                    let mut a = lock(&self.answered);
                    let n = a.entry(digest).or_default();
                    *n += 1;
                    *n
                };
                let mut data = stored.data.to_vec();
                if n <= self.n && !data.is_empty() {
                    let mid = data.len() / 2;
                    data[mid] ^= 0x20;
                }
                slot.found(Bytes::from(data), stored.compression);
            }
        })
    }

    fn bad_answer(&self, chunk: &ChunkRef, _detail: &str) -> Retry {
        lock(&self.record.bad).push(chunk.digest);
        self.retry
    }
}

/// A tier that fails every chunk with the same error.
pub struct FailingTier {
    error: TierError,
    /// What it saw.
    pub record: Record,
}

impl FailingTier {
    /// Failing with `message` of kind `kind`, as tier `name`.
    pub fn new(name: &str, kind: TierErrorKind, message: &str) -> Self {
        Self {
            error: TierError::new(name, kind, message),
            record: Record::default(),
        }
    }
}

impl ChunkTier for FailingTier {
    fn name(&self) -> &str {
        &self.error.tier
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.record.request(slots);
            for s in slots.iter_mut() {
                s.failed(self.error.clone());
            }
        })
    }
}

/// An in-memory chunk store. With [`MemStore::hold_puts`] its writes wait until released, to
/// show that a slow store never delays a read.
pub struct MemStore {
    chunks: Mutex<HashMap<ChunkDigest, StoredChunk>>,
    hold: (Mutex<bool>, std::sync::Condvar),
    puts: AtomicU64,
    rejects: Mutex<Vec<ChunkDigest>>,
    /// What it saw as a tier.
    pub record: Record,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            chunks: Mutex::default(),
            hold: (Mutex::new(false), std::sync::Condvar::new()),
            puts: AtomicU64::new(0),
            rejects: Mutex::default(),
            record: Record::default(),
        }
    }

    /// Make every write wait until [`MemStore::release_puts`].
    pub fn hold_puts(&self) {
        *lock(&self.hold.0) = true;
    }

    /// Let held writes through.
    pub fn release_puts(&self) {
        *lock(&self.hold.0) = false;
        self.hold.1.notify_all();
    }

    /// Put a chunk in directly (e.g. a tampered copy).
    pub fn insert(&self, digest: ChunkDigest, data: Bytes, compression: Compression) {
        lock(&self.chunks).insert(digest, StoredChunk { data, compression });
    }

    /// Whether the store holds `digest`.
    pub fn contains(&self, digest: &ChunkDigest) -> bool {
        lock(&self.chunks).contains_key(digest)
    }

    /// Writes completed.
    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }

    /// Chunks the resolver told it to drop.
    pub fn rejected(&self) -> Vec<ChunkDigest> {
        lock(&self.rejects).clone()
    }
}

impl ChunkTier for MemStore {
    fn name(&self) -> &str {
        "store"
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.record.request(slots);
            let chunks = lock(&self.chunks);
            for s in slots.iter_mut() {
                if let Some(c) = chunks.get(&s.chunk().digest) {
                    s.found(c.data.clone(), c.compression);
                }
            }
        })
    }
}

impl ChunkStore for MemStore {
    fn put(&self, chunk: &ChunkRef, stored: &StoredChunk) -> Result<(), TierError> {
        let mut held = lock(&self.hold.0);
        while *held {
            held = self.hold.1.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        drop(held);
        lock(&self.chunks).insert(chunk.digest, stored.clone());
        self.puts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn reject(&self, chunk: &ChunkRef, _detail: &str) {
        lock(&self.chunks).remove(&chunk.digest);
        lock(&self.rejects).push(chunk.digest);
    }
}
