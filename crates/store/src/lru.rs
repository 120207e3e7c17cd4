//! The in-memory eviction index: every chunk's last use and size, ordered so that unpinned
//! chunks go first and, among them, the least recently used. It also remembers which chunks
//! were used since their access record was last written (`dirty`), so those records can be
//! written later in batches instead of one write per read. And it counts the chunks held per
//! blob (a chunk counts under the blob it first arrived from), queueing a [`BlobEvent`] when a
//! blob's count leaves or reaches zero; the store delivers the queue once its locks are released.

use std::collections::{BTreeSet, HashMap, HashSet};

use dfagent_core::{BlobId, ChunkDigest};

use crate::layout::{Access, FileHeader};
use crate::store::BlobEvent;

#[derive(Clone, Copy, Debug)]
struct Entry {
    tick: u64,
    size: u64,
    blob: Option<BlobId>,
    file: Option<FileHeader>,
}

/// Recency, size and pin count of every stored chunk.
#[derive(Default)]
pub(crate) struct Lru {
    entries: HashMap<ChunkDigest, Entry>,
    /// (pinned, tick, digest): iteration order is eviction order.
    order: BTreeSet<(bool, u64, ChunkDigest)>,
    pins: HashMap<ChunkDigest, u32>,
    /// Chunks whose last use is newer than their access record on disk.
    dirty: HashSet<ChunkDigest>,
    /// Chunks held per blob (only blobs with at least one).
    blobs: HashMap<BlobId, u64>,
    /// Blob transitions not yet handed to the store's listener, in the order they happened.
    events: Vec<BlobEvent>,
    used: u64,
    pinned_bytes: u64,
    tick: u64,
}

impl Lru {
    pub fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    pub fn observe_tick(&mut self, tick: u64) {
        self.tick = self.tick.max(tick);
    }

    fn pinned(&self, d: &ChunkDigest) -> bool {
        self.pins.get(d).is_some_and(|&n| n > 0)
    }

    pub fn contains(&self, d: &ChunkDigest) -> bool {
        self.entries.contains_key(d)
    }

    /// Add a chunk whose access record `a` is being written with it (so it is not dirty),
    /// counting it under its blob.
    pub fn insert(&mut self, d: ChunkDigest, a: Access) {
        let Access {
            tick,
            size,
            blob,
            file,
        } = a;
        self.remove(&d);
        let pinned = self.pinned(&d);
        self.entries.insert(
            d,
            Entry {
                tick,
                size,
                blob,
                file,
            },
        );
        if let Some(b) = blob {
            let n = self.blobs.entry(b).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.events.push(BlobEvent::Held(b));
            }
        }
        self.order.insert((pinned, tick, d));
        self.used += size;
        if pinned {
            self.pinned_bytes += size;
        }
    }

    /// The header and length of a chunk held in a file of its own, when its access record
    /// carried them (see [`Access::file`]).
    pub fn file_of(&self, d: &ChunkDigest) -> Option<(FileHeader, u64)> {
        let e = self.entries.get(d)?;
        e.file.map(|f| (f, e.size))
    }

    /// Note the header of a file-backed chunk whose access record lacked it (written before
    /// version 3); the record is rewritten with it at the next recency write.
    pub fn set_file(&mut self, d: &ChunkDigest, file: FileHeader) {
        if let Some(e) = self.entries.get_mut(d) {
            if e.file.is_none() {
                e.file = Some(file);
                self.dirty.insert(*d);
            }
        }
    }

    /// Mark a chunk used now (a no-op for a chunk no longer held); its access record is dirty
    /// until [`Lru::take_dirty`] hands it out.
    pub fn touch(&mut self, d: &ChunkDigest) {
        let Some(e) = self.entries.get(d).copied() else {
            return;
        };
        let pinned = self.pinned(d);
        let tick = self.next_tick();
        self.order.remove(&(pinned, e.tick, *d));
        self.order.insert((pinned, tick, *d));
        self.entries.insert(*d, Entry { tick, ..e });
        self.dirty.insert(*d);
    }

    /// Up to `limit` dirty chunks that are not in `except`, with their access records; they are
    /// clean from now on (see [`Lru::mark_dirty`] if the write fails).
    pub fn take_dirty(
        &mut self,
        limit: usize,
        except: &[ChunkDigest],
    ) -> Vec<(ChunkDigest, Access)> {
        let picked: Vec<ChunkDigest> = self
            .dirty
            .iter()
            .filter(|d| !except.contains(d))
            .take(limit)
            .copied()
            .collect();
        picked
            .into_iter()
            .filter_map(|d| {
                self.dirty.remove(&d);
                self.entries.get(&d).map(|e| {
                    (
                        d,
                        Access {
                            tick: e.tick,
                            size: e.size,
                            blob: e.blob,
                            file: e.file,
                        },
                    )
                })
            })
            .collect()
    }

    /// Mark a chunk's access record dirty again (its write failed).
    pub fn mark_dirty(&mut self, d: &ChunkDigest) {
        if self.entries.contains_key(d) {
            self.dirty.insert(*d);
        }
    }

    /// Chunks whose access record is older than their last use.
    #[cfg(test)]
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    pub fn remove(&mut self, d: &ChunkDigest) -> Option<u64> {
        self.dirty.remove(d);
        let e = self.entries.remove(d)?;
        let pinned = self.pinned(d);
        self.order.remove(&(pinned, e.tick, *d));
        self.used -= e.size;
        if pinned {
            self.pinned_bytes -= e.size;
        }
        if let Some(b) = e.blob {
            if let Some(n) = self.blobs.get_mut(&b) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.blobs.remove(&b);
                    self.events.push(BlobEvent::Gone(b));
                }
            }
        }
        Some(e.size)
    }

    /// Forget every chunk and pin (the store was cleared): each blob held is gone. Events
    /// already queued are kept for delivery.
    pub fn clear(&mut self) {
        let mut gone: Vec<BlobId> = self.blobs.keys().copied().collect();
        gone.sort();
        let mut events = std::mem::take(&mut self.events);
        events.extend(gone.into_iter().map(BlobEvent::Gone));
        *self = Lru {
            events,
            ..Lru::default()
        };
    }

    /// Blobs with at least one chunk held.
    pub fn blobs(&self) -> Vec<BlobId> {
        let mut out: Vec<BlobId> = self.blobs.keys().copied().collect();
        out.sort();
        out
    }

    /// Chunks held under `blob`.
    pub fn blob_chunks(&self, blob: &BlobId) -> u64 {
        self.blobs.get(blob).copied().unwrap_or(0)
    }

    /// The blob transitions queued since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<BlobEvent> {
        std::mem::take(&mut self.events)
    }

    fn set_pin_count(&mut self, d: &ChunkDigest, count: u32) {
        let was = self.pinned(d);
        if count == 0 {
            self.pins.remove(d);
        } else {
            self.pins.insert(*d, count);
        }
        let now = count > 0;
        if was != now {
            if let Some(e) = self.entries.get(d).copied() {
                self.order.remove(&(was, e.tick, *d));
                self.order.insert((now, e.tick, *d));
                if now {
                    self.pinned_bytes += e.size;
                } else {
                    self.pinned_bytes -= e.size;
                }
            }
        }
    }

    pub fn pin(&mut self, d: &ChunkDigest) {
        let n = self.pins.get(d).copied().unwrap_or(0);
        self.set_pin_count(d, n.saturating_add(1));
    }

    pub fn unpin(&mut self, d: &ChunkDigest) {
        let n = self.pins.get(d).copied().unwrap_or(0);
        self.set_pin_count(d, n.saturating_sub(1));
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn pinned_bytes(&self) -> u64 {
        self.pinned_bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn pinned_chunks(&self) -> usize {
        self.entries.keys().filter(|d| self.pinned(d)).count()
    }

    /// Chunks to evict so that `incoming` more bytes fit in `capacity`, in eviction order, or
    /// `None` when that would take pinned chunks and `evict_pinned` is off.
    pub fn victims(
        &self,
        incoming: u64,
        capacity: u64,
        evict_pinned: bool,
    ) -> Option<Vec<ChunkDigest>> {
        let mut need = (self.used + incoming).saturating_sub(capacity);
        let mut out = Vec::new();
        for (pinned, _, d) in &self.order {
            if need == 0 {
                break;
            }
            if *pinned && !evict_pinned {
                return None;
            }
            let size = self.entries.get(d).map_or(0, |e| e.size);
            out.push(*d);
            need = need.saturating_sub(size);
        }
        (need == 0).then_some(out)
    }

    /// Every chunk no image pins.
    pub fn unpinned(&self) -> Vec<ChunkDigest> {
        self.order
            .iter()
            .filter(|(p, _, _)| !p)
            .map(|(_, _, d)| *d)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfagent_core::DigestAlgo;

    fn d(i: u8) -> ChunkDigest {
        DigestAlgo::Blake3.digest(&[i])
    }

    /// The access record of a 10-byte chunk last used at `tick`.
    fn access(tick: u64, blob: Option<BlobId>) -> Access {
        Access {
            tick,
            size: 10,
            blob,
            file: None,
        }
    }

    #[test]
    fn evicts_unpinned_least_recent_first() {
        let mut l = Lru::default();
        for i in 0..4 {
            let t = l.next_tick();
            l.insert(d(i), access(t, None));
        }
        l.pin(&d(0));
        l.touch(&d(1));
        // 40 used, capacity 40, 15 more: needs 15 → evicts 2 then 3 (0 pinned, 1 recent).
        assert_eq!(l.victims(15, 40, true), Some(vec![d(2), d(3)]));
        // Needing 35 takes every unpinned chunk and then the pinned one, or fails without it.
        assert_eq!(l.victims(35, 40, false), None);
        assert_eq!(l.victims(35, 40, true).map(|v| v.len()), Some(4));
        assert_eq!(l.pinned_bytes(), 10);
        l.unpin(&d(0));
        assert_eq!(l.pinned_bytes(), 0);
        assert_eq!(l.remove(&d(0)), Some(10));
        assert_eq!(l.used(), 30);
    }

    #[test]
    fn touched_chunks_are_dirty_until_taken() {
        let mut l = Lru::default();
        for i in 0..3 {
            let t = l.next_tick();
            l.insert(d(i), access(t, None));
        }
        assert_eq!(l.dirty_len(), 0, "a put writes its own access record");
        l.touch(&d(0));
        l.touch(&d(1));
        l.touch(&d(9)); // not held: nothing to record
        assert_eq!(l.dirty_len(), 2);
        // An excluded chunk (a victim of the same write) stays out and stays dirty.
        let taken = l.take_dirty(10, &[d(1)]);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, d(0));
        assert_eq!(taken[0].1.size, 10);
        assert_eq!(l.dirty_len(), 1);
        // A failed write puts it back; a removed chunk is never handed out.
        l.mark_dirty(&d(0));
        l.remove(&d(1));
        assert_eq!(
            l.take_dirty(10, &[])
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>(),
            vec![d(0)]
        );
        assert_eq!(l.dirty_len(), 0);
        // Re-inserting a chunk clears it: its record is written with it.
        l.touch(&d(2));
        let t = l.next_tick();
        l.insert(d(2), access(t, None));
        assert_eq!(l.dirty_len(), 0);
    }

    #[test]
    fn blobs_are_counted_and_their_transitions_queued_once() {
        let (x, y) = (BlobId::from_bytes([1; 32]), BlobId::from_bytes([2; 32]));
        let mut l = Lru::default();
        for (i, b) in [(0, Some(x)), (1, Some(x)), (2, Some(y)), (3, None)] {
            let t = l.next_tick();
            l.insert(d(i), access(t, b));
        }
        assert_eq!(l.blobs(), vec![x, y]);
        assert_eq!(l.blob_chunks(&x), 2);
        assert_eq!(
            l.take_events(),
            vec![BlobEvent::Held(x), BlobEvent::Held(y)]
        );
        l.remove(&d(0));
        assert!(l.take_events().is_empty(), "x still has a chunk");
        l.remove(&d(1));
        l.remove(&d(3));
        assert_eq!(l.take_events(), vec![BlobEvent::Gone(x)]);
        // Recency writes keep the blob in the record.
        l.touch(&d(2));
        assert_eq!(l.take_dirty(10, &[])[0].1.blob, Some(y));
        l.clear();
        assert_eq!(l.take_events(), vec![BlobEvent::Gone(y)]);
        assert!(l.blobs().is_empty() && l.len() == 0);
    }
}
