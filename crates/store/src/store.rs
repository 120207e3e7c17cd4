//! [`Store`]: chunk records in RocksDB plus the in-memory eviction index.
//!
//! Locking: `get` takes no lock that a write holds across I/O. It reads RocksDB (which never
//! waits for writers) and appends the digest to a short log of uses (`touches`, a mutex held for a
//! push). Changes of chunk records (`put`, `remove`, `gc`, `clear`) are serialised by `writer`,
//! held across their database write (and a big chunk's file write before it, the unlinks of
//! removed chunks' files after it); the eviction index (`lru`) is locked only for in-memory
//! steps before and after that write, never across it. A get of a file-backed chunk reads the
//! file after its record, with no lock held. The log of uses is applied to the index
//! by the next put (before it picks victims) or, when it grows long, by the get that fills it;
//! the access records of chunks used since they were written go out with a later put's batch
//! (and when the store closes), so a read costs no write. (A get that finds an unreadable
//! record removes it, and that removal does wait for a put in progress, as removals do.)
//!
//! Blob inventory: the index also counts the chunks held per blob. A change that takes a blob's
//! count from 0 to 1 or from 1 to 0 queues a [`BlobEvent`] under the index lock (so the queue is
//! in commit order); after releasing `writer` and the index, the changing thread takes the
//! `delivering` lock, drains the queue and calls the listener, so events reach the listener in
//! order and with no store lock held.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use dfagent_core::{decode_chunk, BlobId, ChunkDigest, ChunkRef, Compression};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode,
    Options, ReadOptions, WriteBatch, WriteOptions, DB,
};

use crate::bufs::ReadBufs;
use crate::error::StoreError;
use crate::layout::*;
use crate::lock::OwnerLock;
use crate::lru::Lru;

/// Settings of a store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Most bytes of chunk data the store keeps.
    pub capacity: u64,
    /// Whether chunks pinned by an image may be evicted (last) when nothing else is left.
    pub evict_pinned: bool,
    /// Keep chunk values in RocksDB blob files (values of 1 MiB do not belong in the LSM tree).
    /// Applies to chunks kept in the database, those under [`StoreConfig::file_min_size`].
    pub blob_files: bool,
    /// Chunks of at least this many stored bytes are kept in a file of their own in the store's
    /// `chunks` directory (the database keeps their header): written once and read once, where
    /// RocksDB wrote a big value three times (write-ahead log, memtable, blob file) with a
    /// CRC32c each, and copied it twice more on a read. `u64::MAX` keeps every chunk in the
    /// database. Chunks already stored stay where they are when this changes.
    pub file_min_size: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            capacity: 10 << 30,
            evict_pinned: true,
            blob_files: true,
            file_min_size: FILE_MIN_SIZE,
        }
    }
}

/// Default [`StoreConfig::file_min_size`]: 64 KiB. Smaller chunks (small files' chunks, often a
/// few KiB) stay in RocksDB, where they cost no inode and no open; at 64 KiB and more a file's
/// open and close are small beside the bytes.
pub const FILE_MIN_SIZE: u64 = 64 << 10;

/// Name of the directory of chunk files inside the store directory.
const CHUNK_FILES_DIR: &str = "chunks";
/// Extension of a chunk file being written (see `Store::write_chunk_file`).
const PARTIAL: &str = "partial";

/// A chunk as the store holds it.
#[derive(Clone, Debug)]
pub struct StoredValue {
    /// Encoding of `data`.
    pub compression: Compression,
    /// Size after decoding.
    pub uncompressed_size: u32,
    /// The stored bytes.
    pub data: Bytes,
}

/// Counters and sizes of a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Chunks held.
    pub chunks: u64,
    /// Bytes of chunk data held.
    pub bytes: u64,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Chunks some image pins.
    pub pinned_chunks: u64,
    /// Bytes of pinned chunks.
    pub pinned_bytes: u64,
    /// Lookups that found the chunk.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Chunks evicted to make room.
    pub evictions: u64,
    /// Chunks dropped because they failed verification.
    pub rejected: u64,
}

/// What `verify` found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Chunks checked.
    pub checked: u64,
    /// Chunks that failed to decode or verify, now removed.
    pub removed: Vec<(ChunkDigest, String)>,
}

/// What [`Store::gc`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunks removed.
    pub chunks: u64,
    /// Bytes of chunk data freed.
    pub bytes: u64,
}

/// Uses logged by gets before the get that logs the next one applies the log to the index
/// itself (in memory; puts normally apply it first).
const TOUCH_BATCH: usize = 512;

/// Most access records of chunks read since they were written that one put carries in its
/// batch (each is 49 bytes of key and version-1 value, 82 with a blob, 87 with a file header).
const RECENCY_PER_PUT: usize = 1024;

/// A change in the set of blobs the store holds chunks of (see [`Store::set_blob_listener`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobEvent {
    /// The store now holds a chunk of this blob and held none before.
    Held(BlobId),
    /// The last chunk held of this blob is gone (evicted, removed, rejected, collected or
    /// cleared).
    Gone(BlobId),
}

/// Receives [`BlobEvent`]s; see [`Store::set_blob_listener`] for what it may do.
pub type BlobListener = Arc<dyn Fn(BlobEvent) + Send + Sync>;

/// A function run inside [`Store::put`] just before its database write; see
/// [`Store::set_put_hook`].
#[doc(hidden)]
pub type PutHook = Arc<dyn Fn(&ChunkDigest) + Send + Sync>;

/// The node's chunk store.
pub struct Store {
    db: DB,
    path: PathBuf,
    /// Directory of the file-backed chunks (`chunks` in the store directory).
    files: PathBuf,
    config: StoreConfig,
    lru: Mutex<Lru>,
    /// Buffers of chunk-file reads, reused.
    read_bufs: ReadBufs,
    /// Digests read since the log was last applied to `lru`.
    touches: Mutex<Vec<ChunkDigest>>,
    /// Serialises changes of chunk and access records (held across their database write).
    writer: Mutex<()>,
    /// Whether `put_hook` is set (checked with one relaxed load per put).
    hooked: AtomicBool,
    put_hook: Mutex<Option<PutHook>>,
    /// Who hears of blobs held and gone.
    listener: Mutex<Option<BlobListener>>,
    /// Taken (after every other lock is released) to drain the index's blob events and call
    /// the listener, one thread at a time, so events arrive in commit order.
    delivering: Mutex<()>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    rejected: AtomicU64,
    _lock: OwnerLock,
}

fn no_wal() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.disable_wal(true);
    w
}

/// Reads of chunk values skip RocksDB's own checksums: every chunk is verified against its
/// digest by whoever decodes it, which covers the same bytes (and RocksDB's CRC32c is the
/// portable software one in this build, a large share of a get's CPU time).
fn chunk_read() -> ReadOptions {
    let mut r = ReadOptions::default();
    r.set_verify_checksums(false);
    r
}

impl Drop for Store {
    /// Write the access records of chunks read since their last write, then flush the
    /// memtables so the next open does not replay the write-ahead log's chunk data (up to a
    /// memtable's worth of it, which made the first mount after a pull slow).
    fn drop(&mut self) {
        if let Err(e) = self.save_recency() {
            tracing::warn!(error = %e, "could not save the recency of chunks read at close");
        }
        for name in [CF_CHUNKS, CF_ACCESS, CF_PINS, CF_META] {
            if let Some(cf) = self.db.cf_handle(name) {
                if let Err(e) = self.db.flush_cf(cf) {
                    tracing::warn!(family = name, error = %e, "could not flush the store at close");
                }
            }
        }
    }
}

/// What reading a chunk's file found.
enum ChunkFile {
    /// The bytes, of the recorded length.
    Read(Bytes),
    /// No file.
    Missing,
    /// A file of this many bytes.
    WrongLength(usize),
}

impl std::fmt::Display for ChunkFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkFile::Read(b) => write!(f, "{} bytes read", b.len()),
            ChunkFile::Missing => f.write_str("no file"),
            ChunkFile::WrongLength(n) => write!(f, "{n} bytes"),
        }
    }
}

/// A pin record as stored: its key, and the chunk it names if the key parses.
type PinRecord = (Box<[u8]>, Option<ChunkDigest>);

/// Most bytes every memtable of the store holds together (RocksDB's write buffer manager).
pub const MEMTABLE_BUDGET: usize = 16 << 20;

/// RocksDB's block cache, one for every column family. Left to RocksDB, each column family
/// gets a 32 MiB block cache of its own, and chunks under `min_blob_size` live in SST blocks:
/// under 64 readers the daemon's RSS grew with it (10 MiB after 60 s, still growing). The
/// decoded-chunk cache is the cache that matters; the OS page cache holds the files anyway.
pub const BLOCK_CACHE_BUDGET: usize = 4 << 20;

/// The memory the store is configured to keep (memtables and block cache): the store's part of
/// a node's configured caches.
pub const MEMORY_BUDGET: usize = MEMTABLE_BUDGET + BLOCK_CACHE_BUDGET;

impl Store {
    /// Open (creating if needed) the store in `dir`, taking ownership of it.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = OwnerLock::acquire(dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // Flushes and compactions are work no reader waits for: RocksDB's background threads
        // run at the lowest CPU priority (and compactions at a lowered I/O priority), so a get
        // does not share a core with them on an equal footing (store-get-under-put).
        match rocksdb::Env::new() {
            Ok(mut env) => {
                env.lower_thread_pool_cpu_priority();
                env.lower_high_priority_thread_pool_cpu_priority();
                env.lower_thread_pool_io_priority();
                opts.set_env(&env);
            }
            Err(e) => {
                tracing::debug!(error = %e, "RocksDB's background threads keep the node's priority")
            }
        }
        // Memory: RocksDB's defaults let each column family hold two 64 MiB memtables, so a
        // node that writes chunks would keep up to 128 MiB of them in RAM beyond the
        // configured caches. Chunks reach the store only after they were served, and are
        // flushed into blob files at once: small memtables cost nothing on the read path.
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        let mut tables = BlockBasedOptions::default();
        tables.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BUDGET));
        // A get probes every L0 table whose key range covers the digest (digests spread over
        // all of them): without a filter each probe reads a data block from disk, a dependent
        // read per table on a cold page cache. Whole-key bloom filters (10 bits a key, about
        // 1 % false positives) leave one read per get.
        tables.set_bloom_filter(10.0, false);
        let family = || {
            let mut o = Options::default();
            o.set_block_based_table_factory(&tables);
            o
        };
        let mut chunk_opts = family();
        chunk_opts.set_write_buffer_size(MEMTABLE_BUDGET / 2);
        chunk_opts.set_max_write_buffer_number(2);
        if config.blob_files {
            chunk_opts.set_enable_blob_files(true);
            chunk_opts.set_min_blob_size(4096);
            chunk_opts.set_blob_file_size(256 << 20);
            chunk_opts.set_enable_blob_gc(true);
        }
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_CHUNKS, chunk_opts),
            ColumnFamilyDescriptor::new(CF_ACCESS, family()),
            ColumnFamilyDescriptor::new(CF_PINS, family()),
            ColumnFamilyDescriptor::new(CF_META, family()),
        ];
        let db = DB::open_cf_descriptors(&opts, dir.join("db"), cfs)?;
        let files = dir.join(CHUNK_FILES_DIR);
        std::fs::create_dir_all(&files).map_err(|source| StoreError::Io {
            path: files.clone(),
            source,
        })?;
        let store = Store {
            db,
            path: dir.to_path_buf(),
            files,
            config,
            lru: Mutex::new(Lru::default()),
            read_bufs: ReadBufs::default(),
            touches: Mutex::new(Vec::new()),
            writer: Mutex::new(()),
            hooked: AtomicBool::new(false),
            put_hook: Mutex::new(None),
            listener: Mutex::new(None),
            delivering: Mutex::new(()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            _lock: lock,
        };
        store.load_index()?;
        store.sweep_chunk_files()?;
        Ok(store)
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // The four families are created at open; a missing one is a bug, not bad input.
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn lru(&self) -> MutexGuard<'_, Lru> {
        lock(&self.lru)
    }

    /// Held across every change of chunk or access records, never by a get.
    fn writer(&self) -> MutexGuard<'_, ()> {
        lock(&self.writer)
    }

    /// Apply the gets' log of uses to the index (taken from the log first: the two locks are
    /// never held together).
    fn apply_touches(&self) -> MutexGuard<'_, Lru> {
        let log = std::mem::take(&mut *lock(&self.touches));
        let mut lru = self.lru();
        for d in &log {
            lru.touch(d);
        }
        lru
    }

    /// Record a use of `digest` for eviction order, without I/O and without waiting for a write.
    fn note_use(&self, digest: &ChunkDigest) {
        let logged = {
            let mut log = lock(&self.touches);
            log.push(*digest);
            log.len()
        };
        if logged >= TOUCH_BATCH {
            drop(self.apply_touches());
        }
    }

    /// Write the access records of chunks read since their last write.
    fn save_recency(&self) -> Result<(), StoreError> {
        let _writer = self.writer();
        let dirty = self.apply_touches().take_dirty(usize::MAX, &[]);
        if dirty.is_empty() {
            return Ok(());
        }
        let mut b = WriteBatch::default();
        for (d, a) in &dirty {
            b.put_cf(self.cf(CF_ACCESS), digest_key(d), access_value(a));
        }
        if let Err(e) = self.db.write_opt(b, &no_wal()) {
            let mut lru = self.lru();
            for (d, _) in &dirty {
                lru.mark_dirty(d);
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Test hook: run `hook` inside every [`Store::put`] that writes, just before its database
    /// write (with the put's write lock held and the eviction index unlocked), or stop with
    /// `None`. Lets a test hold a put "inside its write" and check what does not wait for it.
    /// Not for production use; costs a put one relaxed load when unset.
    #[doc(hidden)]
    pub fn set_put_hook(&self, hook: Option<PutHook>) {
        let mut h = lock(&self.put_hook);
        self.hooked.store(hook.is_some(), Relaxed);
        *h = hook;
    }

    fn run_put_hook(&self, digest: &ChunkDigest) {
        if self.hooked.load(Relaxed) {
            let hook = lock(&self.put_hook).clone();
            if let Some(h) = hook {
                h(digest);
            }
        }
    }

    /// Rebuild the eviction index from the access and pin records.
    fn load_index(&self) -> Result<(), StoreError> {
        let mut lru = self.lru();
        for item in self.db.iterator_cf(self.cf(CF_PINS), IteratorMode::Start) {
            let (k, _) = item?;
            if k.len() > 33 {
                if let Ok(d) = parse_digest_key(&k[k.len() - 33..]) {
                    lru.pin(&d);
                }
            }
        }
        let mut bad = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_ACCESS), IteratorMode::Start) {
            let (k, v) = item?;
            match (parse_digest_key(&k), parse_access_value(&k, &v)) {
                (Ok(d), Ok(a)) => {
                    lru.observe_tick(a.tick);
                    lru.insert(d, a);
                }
                _ => bad.push(k),
            }
        }
        // What is held at open is read with `blobs()`, not announced: no listener exists yet.
        drop(lru.take_events());
        drop(lru);
        for k in bad {
            tracing::warn!(key = %hex_key(&k), "dropping unreadable access record and its chunk");
            let mut b = WriteBatch::default();
            b.delete_cf(self.cf(CF_ACCESS), &k);
            b.delete_cf(self.cf(CF_CHUNKS), &k);
            self.db.write(b)?;
        }
        Ok(())
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn chunk_file(&self, digest: &ChunkDigest) -> PathBuf {
        self.files.join(chunk_file_name(digest))
    }

    /// Delete the files of chunks whose records were just deleted (a chunk kept in the
    /// database has none: not found is fine). Called with `writer` held, so a put of the same
    /// chunk cannot write its file in between. A file left behind (an error here, a crash
    /// before this) is an orphan that the next open deletes.
    fn unlink_chunk_files<'a>(&self, digests: impl IntoIterator<Item = &'a ChunkDigest>) {
        for d in digests {
            let p = self.chunk_file(d);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(chunk = %d, path = %p.display(), error = %e, "could not delete a chunk file; the next open deletes it")
                }
            }
        }
    }

    /// Delete chunk files no record names: written by a put that a crash stopped before its
    /// database write, or left by a removal that a crash stopped after it. Run at open, after
    /// the index is loaded (every chunk record has its access record: one batch writes both).
    fn sweep_chunk_files(&self) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: self.files.clone(),
            source,
        };
        let mut orphans = Vec::new();
        {
            let lru = self.lru();
            for entry in std::fs::read_dir(&self.files).map_err(io)? {
                let entry = entry.map_err(io)?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                // A put a crash stopped before its rename.
                if let Some(stem) = name.strip_suffix(".partial") {
                    if parse_chunk_file_name(stem).is_some() {
                        let p = entry.path();
                        if let Err(e) = std::fs::remove_file(&p) {
                            tracing::warn!(path = %p.display(), error = %e, "could not delete a partial chunk file");
                        }
                    }
                    continue;
                }
                // Files the store did not name are not its to delete.
                let Some(d) = parse_chunk_file_name(name) else {
                    continue;
                };
                if !lru.contains(&d) {
                    orphans.push(d);
                }
            }
        }
        if !orphans.is_empty() {
            tracing::info!(
                files = orphans.len(),
                "deleting chunk files that no record names (left by a crash)"
            );
            self.unlink_chunk_files(&orphans);
        }
        Ok(())
    }

    /// Write a file-backed chunk's bytes (no fsync: like the database's write-ahead log, the
    /// bytes are safe from a crash of the process once written). Called with `writer` held.
    /// The bytes go to a `.partial` file renamed over the chunk's name once complete, so a get
    /// racing an eviction and a new put of the same chunk never opens a half-written file.
    fn write_chunk_file(&self, digest: &ChunkDigest, data: &[u8]) -> Result<(), StoreError> {
        let p = self.chunk_file(digest);
        let partial = p.with_extension(PARTIAL);
        std::fs::write(&partial, data)
            .and_then(|()| std::fs::rename(&partial, &p))
            .map_err(|source| {
                let _ = std::fs::remove_file(&partial);
                StoreError::Io { path: p, source }
            })
    }

    /// Read a file-backed chunk's `len` bytes: `Ok(None)` when the file is missing or has
    /// another length (the record is then dropped by the caller).
    fn read_chunk_file(&self, digest: &ChunkDigest, len: u32) -> Result<ChunkFile, StoreError> {
        use std::io::Read;
        let p = self.chunk_file(digest);
        let mut f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ChunkFile::Missing),
            Err(source) => return Err(StoreError::Io { path: p, source }),
        };
        let mut v = self.read_bufs.take();
        // `File`'s own `read_to_end` asks the file's size first, reserves that much (not what a
        // record says, which is not trusted with an allocation) and reads it in one call
        // (through a `Take` it would read 8 KiB, then 16 KiB, ... doubling: 8 calls for 1 MiB).
        match f.read_to_end(&mut v) {
            Ok(n) if n == len as usize => Ok(ChunkFile::Read(self.read_bufs.bytes(v))),
            Ok(n) => Ok(ChunkFile::WrongLength(n)),
            Err(source) => Err(StoreError::Io { path: p, source }),
        }
    }

    /// Whether the store holds `digest`.
    pub fn contains(&self, digest: &ChunkDigest) -> bool {
        self.lru().contains(digest)
    }

    /// The stored chunk `digest`, marking it recently used. Not verified here: callers decode it
    /// with [`dfagent_core::decode_chunk`] and [`Store::remove`] it when that fails.
    pub fn get(&self, digest: &ChunkDigest) -> Result<Option<StoredValue>, StoreError> {
        // A chunk in a file of its own whose header the index holds: straight to the file,
        // without reading its record. Anything unexpected takes the record's way below.
        let file = self.lru().file_of(digest);
        if let Some((header, len)) = file {
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            match self.read_chunk_file(digest, len)? {
                ChunkFile::Read(data) => {
                    self.hits.fetch_add(1, Relaxed);
                    self.note_use(digest);
                    return Ok(Some(StoredValue {
                        compression: header.compression,
                        uncompressed_size: header.uncompressed_size,
                        data,
                    }));
                }
                ChunkFile::Missing if !self.contains(digest) => {
                    self.misses.fetch_add(1, Relaxed);
                    return Ok(None);
                }
                _ => {}
            }
        }
        let key = digest_key(digest);
        let Some(v) = self.db.get_cf_opt(self.cf(CF_CHUNKS), key, &chunk_read())? else {
            self.misses.fetch_add(1, Relaxed);
            return Ok(None);
        };
        let header = match parse_chunk_value(&key, &v) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(chunk = %digest, error = %e, "dropping unreadable chunk record");
                self.remove(digest)?;
                self.misses.fetch_add(1, Relaxed);
                return Ok(None);
            }
        };
        let data = match header.place {
            ChunkPlace::Inline => Bytes::from(v).slice(CHUNK_HEADER..),
            ChunkPlace::File(len) => match self.read_chunk_file(digest, len)? {
                ChunkFile::Read(b) => {
                    // From now on (and, once its access record is rewritten, after a reopen)
                    // its gets skip the record.
                    self.lru().set_file(
                        digest,
                        FileHeader {
                            compression: header.compression,
                            uncompressed_size: header.uncompressed_size,
                        },
                    );
                    b
                }
                ChunkFile::Missing if !self.contains(digest) => {
                    // Evicted or removed between the record's read and the file's open.
                    self.misses.fetch_add(1, Relaxed);
                    return Ok(None);
                }
                bad => {
                    tracing::warn!(chunk = %digest, expected = len, found = %bad, "dropping a chunk whose file is missing or of another length");
                    self.remove(digest)?;
                    self.misses.fetch_add(1, Relaxed);
                    return Ok(None);
                }
            },
        };
        self.hits.fetch_add(1, Relaxed);
        // Recency is a hint (losing it in a crash only changes eviction order): logged in
        // memory here, written later in batches.
        self.note_use(digest);
        Ok(Some(StoredValue {
            compression: header.compression,
            uncompressed_size: header.uncompressed_size,
            data,
        }))
    }

    /// Keep chunk `digest` (already verified by the caller), arrived as part of `blob`,
    /// evicting least recently used chunks (pinned ones last) to stay within capacity. Durable
    /// against process crashes once this returns. Puts (and removals) wait for each other; gets
    /// never wait for a put. A chunk already held keeps the blob it first arrived from. Blob
    /// events of the put (its blob held, victims' blobs gone) are delivered before it returns,
    /// unless another thread delivering at the same time takes them.
    pub fn put(
        &self,
        digest: &ChunkDigest,
        blob: &BlobId,
        compression: Compression,
        uncompressed_size: u32,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let r = self.put_locked(digest, blob, compression, uncompressed_size, data);
        self.deliver_blob_events();
        r
    }

    /// [`Store::put`] with its locks; blob events are left queued.
    fn put_locked(
        &self,
        digest: &ChunkDigest,
        blob: &BlobId,
        compression: Compression,
        uncompressed_size: u32,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let size = data.len() as u64;
        if size > self.config.capacity {
            return Err(StoreError::Full(format!(
                "a {size}-byte chunk exceeds the {}-byte capacity",
                self.config.capacity
            )));
        }
        let key = digest_key(digest);
        // Nothing else changes chunk records until this put is done, so the victims picked
        // here are still there at the write, and the index is updated after it.
        let _writer = self.writer();
        let (victims, tick, recency) = {
            let mut lru = self.apply_touches();
            if lru.contains(digest) {
                return Ok(());
            }
            let victims = lru
                .victims(size, self.config.capacity, self.config.evict_pinned)
                .ok_or_else(|| {
                    StoreError::Full(format!(
                        "only chunks of pinned images are left to evict ({} of {} bytes pinned)",
                        lru.pinned_bytes(),
                        self.config.capacity
                    ))
                })?;
            let tick = lru.next_tick();
            let recency = lru.take_dirty(RECENCY_PER_PUT, &victims);
            (victims, tick, recency)
        };
        // Nothing of the batch was applied when this runs: the victims stay, the records stay
        // dirty.
        let undo = || {
            let mut lru = self.lru();
            for (d, _) in &recency {
                lru.mark_dirty(d);
            }
        };
        // A big chunk's bytes go to its own file before the record that names it, so a record
        // never names a file that is not complete (a crash in between leaves an orphan file,
        // deleted at the next open).
        let in_file = size >= self.config.file_min_size && size <= u64::from(u32::MAX);
        if in_file {
            if let Err(e) = self.write_chunk_file(digest, data) {
                undo();
                return Err(e);
            }
        }
        let mut b = WriteBatch::default();
        for (d, a) in &recency {
            b.put_cf(self.cf(CF_ACCESS), digest_key(d), access_value(a));
        }
        for v in &victims {
            let k = digest_key(v);
            b.delete_cf(self.cf(CF_CHUNKS), k);
            b.delete_cf(self.cf(CF_ACCESS), k);
        }
        if in_file {
            b.put_cf(
                self.cf(CF_CHUNKS),
                key,
                chunk_file_value(compression, uncompressed_size, size as u32),
            );
        } else {
            b.put_cf(
                self.cf(CF_CHUNKS),
                key,
                chunk_value(compression, uncompressed_size, data),
            );
        }
        let access = Access {
            tick,
            size,
            blob: Some(*blob),
            file: in_file.then_some(FileHeader {
                compression,
                uncompressed_size,
            }),
        };
        b.put_cf(self.cf(CF_ACCESS), key, access_value(&access));
        self.run_put_hook(digest);
        if let Err(e) = self.db.write(b) {
            undo();
            if in_file {
                self.unlink_chunk_files([digest]);
            }
            return Err(e.into());
        }
        let mut freed = 0u64;
        {
            let mut lru = self.lru();
            for v in &victims {
                freed += lru.remove(v).unwrap_or(0);
            }
            lru.insert(*digest, access);
        }
        // After the index forgot them, so a get that finds a victim's file gone sees it
        // evicted, not damaged.
        self.unlink_chunk_files(&victims);
        self.evictions.fetch_add(victims.len() as u64, Relaxed);
        if !victims.is_empty() {
            tracing::info!(
                chunks = victims.len(),
                bytes = freed,
                for_chunk = %digest,
                capacity = self.config.capacity,
                "evicted least recently used chunks to stay within capacity"
            );
        }
        Ok(())
    }

    /// Bytes that can still be stored without evicting any pinned chunk.
    pub fn headroom_without_pinned(&self) -> u64 {
        let lru = self.lru();
        self.config.capacity.saturating_sub(lru.pinned_bytes())
    }

    /// Drop chunk `digest` (e.g. it failed verification). Waits for a put in progress.
    pub fn remove(&self, digest: &ChunkDigest) -> Result<(), StoreError> {
        let r = self.remove_locked(digest);
        self.deliver_blob_events();
        r
    }

    fn remove_locked(&self, digest: &ChunkDigest) -> Result<(), StoreError> {
        let _writer = self.writer();
        let key = digest_key(digest);
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_CHUNKS), key);
        b.delete_cf(self.cf(CF_ACCESS), key);
        self.db.write(b)?;
        self.lru().remove(digest);
        self.unlink_chunk_files([digest]);
        Ok(())
    }

    /// Drop a chunk that failed verification, counting it.
    pub fn reject(&self, digest: &ChunkDigest) -> Result<(), StoreError> {
        self.rejected.fetch_add(1, Relaxed);
        self.remove(digest)
    }

    /// Record that `image` uses `digests`, replacing what it used before. Pinned chunks are
    /// evicted last (or never, see [`StoreConfig::evict_pinned`]). Only the difference from the
    /// pins already recorded is written: re-pinning an image (a mount of a pulled image, a
    /// second mount) reads its pins and writes nothing.
    pub fn pin(&self, image: &str, digests: &[ChunkDigest]) -> Result<(), StoreError> {
        let mut wanted: Vec<ChunkDigest> = digests.to_vec();
        wanted.sort();
        wanted.dedup();
        let mut had: Vec<ChunkDigest> = self
            .pin_records(image)?
            .into_iter()
            .filter_map(|(_, d)| d)
            .collect();
        had.sort();
        let gone: Vec<&ChunkDigest> = had
            .iter()
            .filter(|d| wanted.binary_search(d).is_err())
            .collect();
        let new: Vec<&ChunkDigest> = wanted
            .iter()
            .filter(|d| had.binary_search(d).is_err())
            .collect();
        if gone.is_empty() && new.is_empty() {
            return Ok(());
        }
        let mut b = WriteBatch::default();
        for d in &gone {
            b.delete_cf(self.cf(CF_PINS), pin_key(image, d));
        }
        for d in &new {
            b.put_cf(self.cf(CF_PINS), pin_key(image, d), []);
        }
        self.db.write(b)?;
        let mut lru = self.lru();
        for d in gone {
            lru.unpin(d);
        }
        for d in new {
            lru.pin(d);
        }
        Ok(())
    }

    /// Every pin record of `image` ([`PinRecord`]): its key, and the chunk it names (`None` for a key that
    /// does not parse, which is still `image`'s to delete).
    fn pin_records(&self, image: &str) -> Result<Vec<PinRecord>, StoreError> {
        let prefix = pin_prefix(image);
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_PINS),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in iter {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let d = parse_digest_key(&k[prefix.len()..]).ok();
            out.push((k, d));
        }
        Ok(out)
    }

    /// Forget `image`'s pins.
    pub fn unpin(&self, image: &str) -> Result<(), StoreError> {
        let mut b = WriteBatch::default();
        let mut gone = Vec::new();
        for (k, d) in self.pin_records(image)? {
            gone.extend(d);
            b.delete_cf(self.cf(CF_PINS), &k);
        }
        self.db.write(b)?;
        let mut lru = self.lru();
        for d in &gone {
            lru.unpin(d);
        }
        Ok(())
    }

    /// Images that pin chunks.
    pub fn pinned_images(&self) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_PINS), IteratorMode::Start) {
            let (k, _) = item?;
            if let Some(p) = k.iter().position(|&c| c == 0) {
                let name = String::from_utf8_lossy(&k[..p]).into_owned();
                if out.last() != Some(&name) {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }

    fn put_meta(&self, key: MetaKey<'_>, value: &[u8]) -> Result<(), StoreError> {
        Ok(self.db.put_cf(self.cf(CF_META), key.encode(), value)?)
    }

    fn get_meta(&self, key: MetaKey<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_META), key.encode())?)
    }

    fn delete_meta(&self, key: MetaKey<'_>) -> Result<(), StoreError> {
        Ok(self.db.delete_cf(self.cf(CF_META), key.encode())?)
    }

    /// Keep what the registry last said about image `reference` (an opaque record its client
    /// wrote), so the image can be mounted when the registry is unreachable.
    pub fn put_image_record(&self, reference: &str, record: &[u8]) -> Result<(), StoreError> {
        self.put_meta(MetaKey::Image(reference), record)
    }

    /// The record [`Store::put_image_record`] kept for `reference`.
    pub fn image_record(&self, reference: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_meta(MetaKey::Image(reference))
    }

    /// Keep the bootstrap (RAFS metadata) whose layer has digest `layer_digest`.
    pub fn put_bootstrap(&self, layer_digest: &str, bootstrap: &[u8]) -> Result<(), StoreError> {
        self.put_meta(MetaKey::Bootstrap(layer_digest), bootstrap)
    }

    /// The bootstrap kept under `layer_digest`.
    pub fn bootstrap(&self, layer_digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_meta(MetaKey::Bootstrap(layer_digest))
    }

    /// Record that `reference` was pulled: its chunks stay pinned after unmounts.
    pub fn mark_pulled(&self, reference: &str) -> Result<(), StoreError> {
        self.put_meta(MetaKey::Pulled(reference), b"1")
    }

    /// Whether `reference` was pulled.
    pub fn is_pulled(&self, reference: &str) -> Result<bool, StoreError> {
        Ok(self.get_meta(MetaKey::Pulled(reference))?.is_some())
    }

    /// Forget that `reference` was pulled.
    pub fn unmark_pulled(&self, reference: &str) -> Result<(), StoreError> {
        self.delete_meta(MetaKey::Pulled(reference))
    }

    /// Sizes and counters.
    pub fn stats(&self) -> StoreStats {
        let lru = self.lru();
        StoreStats {
            chunks: lru.len() as u64,
            bytes: lru.used(),
            capacity: self.config.capacity,
            pinned_chunks: lru.pinned_chunks() as u64,
            pinned_bytes: lru.pinned_bytes(),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
        }
    }

    /// Decode and verify every chunk; drop the ones that fail.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let mut bad = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_CHUNKS), IteratorMode::Start) {
            let (k, v) = item?;
            report.checked += 1;
            let digest = match parse_digest_key(&k) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable chunk key");
                    continue;
                }
            };
            let outcome = parse_chunk_value(&k, &v)
                .map_err(|e| e.to_string())
                .and_then(|h| {
                    let file;
                    let data: &[u8] = match h.place {
                        ChunkPlace::Inline => &v[CHUNK_HEADER..],
                        ChunkPlace::File(len) => {
                            match self
                                .read_chunk_file(&digest, len)
                                .map_err(|e| e.to_string())?
                            {
                                ChunkFile::Read(b) => {
                                    file = b;
                                    &file
                                }
                                bad => return Err(format!("chunk file: {bad}")),
                            }
                        }
                    };
                    let (compression, uncompressed_size) = (h.compression, h.uncompressed_size);
                    let r = ChunkRef {
                        digest,
                        blob: BlobId::from_bytes([0; 32]),
                        compressed_offset: 0,
                        compressed_size: data.len() as u32,
                        uncompressed_size,
                        compression,
                    };
                    decode_chunk(&r, data)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = outcome {
                bad.push((digest, e));
            }
        }
        for (d, _) in &bad {
            self.reject(d)?;
        }
        report.removed = bad;
        Ok(report)
    }

    /// Remove every chunk no image pins.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let r = self.gc_locked();
        self.deliver_blob_events();
        r
    }

    fn gc_locked(&self) -> Result<GcReport, StoreError> {
        let _writer = self.writer();
        let victims = self.lru().unpinned();
        let mut report = GcReport::default();
        for d in victims {
            let size = self.lru().remove(&d).unwrap_or(0);
            let key = digest_key(&d);
            let mut b = WriteBatch::default();
            b.delete_cf(self.cf(CF_CHUNKS), key);
            b.delete_cf(self.cf(CF_ACCESS), key);
            self.db.write(b)?;
            self.unlink_chunk_files([&d]);
            report.chunks += 1;
            report.bytes += size;
        }
        Ok(report)
    }

    /// Remove everything: chunks, pins and metadata. Every blob held is announced gone.
    pub fn clear(&self) -> Result<(), StoreError> {
        let r = self.clear_locked();
        self.deliver_blob_events();
        r
    }

    fn clear_locked(&self) -> Result<(), StoreError> {
        let _writer = self.writer();
        for name in [CF_CHUNKS, CF_ACCESS, CF_PINS, CF_META] {
            let cf = self.cf(name);
            let mut b = WriteBatch::default();
            for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                let (k, _) = item?;
                b.delete_cf(cf, &k);
            }
            self.db.write(b)?;
        }
        lock(&self.touches).clear();
        self.lru().clear();
        // With no record left, every chunk file is an orphan.
        self.sweep_chunk_files()
    }

    /// Blobs of which the store holds at least one chunk (a chunk counts under the blob it first
    /// arrived from; chunks stored before blobs were recorded count under none), sorted.
    pub fn blobs(&self) -> Vec<BlobId> {
        self.lru().blobs()
    }

    /// Chunks held under `blob`.
    pub fn blob_chunks(&self, blob: &BlobId) -> u64 {
        self.lru().blob_chunks(blob)
    }

    /// Set (or with `None` remove) the function told when a blob's chunk count goes from 0 to 1
    /// ([`BlobEvent::Held`], a put) or from 1 to 0 ([`BlobEvent::Gone`]: eviction, remove,
    /// reject, gc, clear). It is called after the change committed, with no store lock held,
    /// one event at a time and in commit order, on the thread of the change that caused the
    /// event or of another change delivering at the same time.
    ///
    /// It must be cheap and must not panic: the next change waits for it. It may read the store
    /// (`get`, `contains`, `blobs`, `stats`, metadata reads) but must not change chunks from
    /// inside the call (`put`, `remove`, `reject`, `verify`, `gc`, `clear`): that would wait for
    /// its own delivery. To act on an event, hand it to a channel or a task.
    ///
    /// Chunks held when the listener is set are not announced: set the listener first, then
    /// read [`Store::blobs`] for the starting set (an event may repeat a blob that list has).
    pub fn set_blob_listener(&self, listener: Option<BlobListener>) {
        *lock(&self.listener) = listener;
    }

    /// Hand the queued blob events to the listener (dropped when there is none). Called with no
    /// other store lock held.
    fn deliver_blob_events(&self) {
        let _turn = lock(&self.delivering);
        let events = self.lru().take_events();
        if events.is_empty() {
            return;
        }
        let listener = lock(&self.listener).clone();
        if let Some(l) = listener {
            for e in events {
                tracing::debug!(event = ?e, "blob inventory changed");
                l(e);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfagent_core::DigestAlgo;

    fn file_chunk() -> (ChunkDigest, Vec<u8>) {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        (DigestAlgo::Blake3.digest(&data), data)
    }

    fn blob() -> BlobId {
        BlobId::from_bytes([9; 32])
    }

    /// Open a store in `dir`, put `c` there as a zstd chunk of 1 MiB (a made-up header: the
    /// store takes it on trust, callers verify, and it shows which header is read back), run
    /// `then` on it, close it.
    fn put_and_close(dir: &std::path::Path, c: &(ChunkDigest, Vec<u8>), then: impl FnOnce(&Store)) {
        let s = Store::open(dir, StoreConfig::default()).unwrap();
        s.put(&c.0, &blob(), Compression::Zstd, 1 << 20, &c.1)
            .unwrap();
        then(&s);
    }

    /// The header a get returns, and whether its bytes are the chunk's.
    fn got(s: &Store, c: &(ChunkDigest, Vec<u8>)) -> Option<(Compression, u32, bool)> {
        s.get(&c.0)
            .unwrap()
            .map(|v| (v.compression, v.uncompressed_size, v.data[..] == c.1[..]))
    }

    #[test]
    fn a_file_chunks_get_needs_only_its_access_record_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = file_chunk();
        put_and_close(dir.path(), &c, |_| {});
        let s = Store::open(dir.path(), StoreConfig::default()).unwrap();
        // The chunk record goes behind the store's back: the get never reads it.
        s.db.delete_cf(s.cf(CF_CHUNKS), digest_key(&c.0)).unwrap();
        assert_eq!(got(&s, &c), Some((Compression::Zstd, 1 << 20, true)));
        assert_eq!(s.stats().hits, 1);
    }

    #[test]
    fn a_file_chunk_without_a_header_in_its_access_record_reads_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let c = file_chunk();
        put_and_close(dir.path(), &c, |s| {
            // As stores before version 3 of access records wrote it.
            let old = Access {
                tick: 1,
                size: c.1.len() as u64,
                blob: Some(blob()),
                file: None,
            };
            s.db.put_cf(s.cf(CF_ACCESS), digest_key(&c.0), access_value(&old))
                .unwrap();
        });
        {
            let s = Store::open(dir.path(), StoreConfig::default()).unwrap();
            assert!(s.lru().file_of(&c.0).is_none());
            assert_eq!(got(&s, &c), Some((Compression::Zstd, 1 << 20, true)));
            // The record's header is now in the index, and the access record is rewritten
            // with it when the store closes.
            assert!(s.lru().file_of(&c.0).is_some());
        }
        let s = Store::open(dir.path(), StoreConfig::default()).unwrap();
        s.db.delete_cf(s.cf(CF_CHUNKS), digest_key(&c.0)).unwrap();
        assert_eq!(got(&s, &c), Some((Compression::Zstd, 1 << 20, true)));
    }

    #[test]
    fn a_cut_file_chunk_is_dropped_on_the_way_that_skips_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let c = file_chunk();
        let s = Store::open(dir.path(), StoreConfig::default()).unwrap();
        s.put(&c.0, &blob(), Compression::None, c.1.len() as u32, &c.1)
            .unwrap();
        // Cut short behind the index's back: the fast way hands over to the record's, which
        // drops the chunk.
        let p = s.chunk_file(&c.0);
        std::fs::write(&p, &c.1[..10]).unwrap();
        assert_eq!(got(&s, &c), None);
        assert!(!s.contains(&c.0));
        assert!(s.lru().file_of(&c.0).is_none());
        assert!(!p.exists());
    }
}
