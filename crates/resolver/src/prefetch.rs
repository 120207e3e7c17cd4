//! Prefetch: after a mount, fetch what the image's builder listed in its prefetch table, then
//! (by option) the rest of the image, in the background and in batches, so that the node keeps
//! working when the network goes away. Foreground reads are not queued behind it: it sends one
//! batch at a time while every tier admits several requests at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dfagent_core::ChunkRef;
use dfagent_rafs::{FileType, Image};

use crate::Resolver;

/// What to prefetch after a mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefetchPolicy {
    /// Nothing: every chunk is fetched when read.
    None,
    /// The files and directories in the image's prefetch table.
    Table,
    /// The prefetch table, then every other chunk of the image.
    All,
}

impl PrefetchPolicy {
    /// The policy's name (as `FromStr` reads it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Table => "table",
            Self::All => "all",
        }
    }
}

impl std::str::FromStr for PrefetchPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "table" => Ok(Self::Table),
            "all" => Ok(Self::All),
            _ => Err(format!(
                "unknown prefetch policy {s:?}: use none, table or all"
            )),
        }
    }
}

/// Progress of a background prefetch.
#[derive(Debug, Default)]
pub struct PrefetchProgress {
    /// Chunks it set out to fetch.
    pub total: AtomicU64,
    /// Chunks verified so far (fetched or already present).
    pub done: AtomicU64,
    /// Chunks no tier could supply.
    pub failed: AtomicU64,
    /// Stored bytes of the chunks it set out to fetch.
    pub total_bytes: AtomicU64,
    /// Stored bytes of the chunks verified so far.
    pub done_bytes: AtomicU64,
    /// Set when it finished or stopped.
    pub finished: AtomicBool,
}

/// Chunks of the prefetch table's entries (files, and every file under listed directories).
pub fn table_chunks(img: &Image) -> Vec<ChunkRef> {
    let mut out = Vec::new();
    let Ok(nids) = img.prefetch_nids() else {
        return out;
    };
    for nid in nids {
        let r = img.walk_from(nid, |e| {
            if e.inode.file_type == FileType::File {
                for c in img.chunks(&e.inode, 0, e.inode.size)? {
                    out.push(c.chunk);
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::warn!(nid, error = %e, "skipping a bad prefetch table entry");
        }
    }
    out
}

/// The chunks `policy` asks for, table entries first, each chunk once.
pub fn plan(img: &Image, policy: PrefetchPolicy) -> Vec<ChunkRef> {
    let mut chunks = match policy {
        PrefetchPolicy::None => Vec::new(),
        _ => table_chunks(img),
    };
    if policy == PrefetchPolicy::All {
        match img.all_chunks() {
            Ok(all) => chunks.extend(all),
            Err(e) => tracing::warn!(error = %e, "cannot list the image's chunks for prefetch"),
        }
    }
    let mut seen = HashSet::new();
    chunks.retain(|c| seen.insert(c.digest));
    chunks
}

/// Cut `chunks` into consecutive batches of at most `batch_bytes` stored bytes (a chunk larger
/// than that makes a batch of its own).
pub fn batches(chunks: &[ChunkRef], batch_bytes: u64) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < chunks.len() {
        let mut end = start;
        let mut bytes = 0u64;
        while end < chunks.len()
            && (end == start || bytes + u64::from(chunks[end].compressed_size) <= batch_bytes)
        {
            bytes += u64::from(chunks[end].compressed_size);
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// Fetch `chunks` through `resolver` in batches of up to `batch_bytes` stored bytes, stopping
/// (and saying so once) when `may_continue`, given the next batch's stored size, refuses.
/// Chunks `present` says the node already keeps are counted done without being read: prefetch
/// exists to bring chunks onto the node, and a warm node should not decode its whole store at
/// every mount (a stored chunk is still verified whenever it is read).
pub async fn run(
    resolver: Arc<Resolver>,
    chunks: Vec<ChunkRef>,
    batch_bytes: u64,
    progress: Arc<PrefetchProgress>,
    present: impl Fn(&ChunkRef) -> bool,
    may_continue: impl Fn(u64) -> Result<(), String>,
) {
    progress.total.store(chunks.len() as u64, Ordering::Relaxed);
    progress.total_bytes.store(
        chunks.iter().map(|c| u64::from(c.compressed_size)).sum(),
        Ordering::Relaxed,
    );
    let (here, chunks): (Vec<ChunkRef>, Vec<ChunkRef>) = chunks.into_iter().partition(present);
    progress
        .done
        .fetch_add(here.len() as u64, Ordering::Relaxed);
    progress.done_bytes.fetch_add(
        here.iter().map(|c| u64::from(c.compressed_size)).sum(),
        Ordering::Relaxed,
    );
    for range in batches(&chunks, batch_bytes) {
        let bytes: u64 = chunks[range.clone()]
            .iter()
            .map(|c| u64::from(c.compressed_size))
            .sum();
        if let Err(why) = may_continue(bytes) {
            tracing::warn!(
                done = progress.done.load(Ordering::Relaxed),
                total = progress.total.load(Ordering::Relaxed),
                "background prefetch stopped: {why}"
            );
            break;
        }
        let batch = &chunks[range];
        for (c, r) in batch
            .iter()
            .zip(resolver.read_batch_background(batch).await)
        {
            match r {
                Ok(_) => {
                    progress.done.fetch_add(1, Ordering::Relaxed);
                    progress
                        .done_bytes
                        .fetch_add(u64::from(c.compressed_size), Ordering::Relaxed);
                }
                Err(_) => {
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    progress.finished.store(true, Ordering::Relaxed);
}
