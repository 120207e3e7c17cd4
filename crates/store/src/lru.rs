//! The in-memory eviction index: every chunk's last use and size, ordered so that unpinned
//! chunks go first and, among them, the least recently used.

use std::collections::{BTreeSet, HashMap};

use dfagent_core::ChunkDigest;

#[derive(Clone, Copy, Debug)]
struct Entry {
    tick: u64,
    size: u64,
}

/// Recency, size and pin count of every stored chunk.
#[derive(Default)]
pub(crate) struct Lru {
    entries: HashMap<ChunkDigest, Entry>,
    /// (pinned, tick, digest): iteration order is eviction order.
    order: BTreeSet<(bool, u64, ChunkDigest)>,
    pins: HashMap<ChunkDigest, u32>,
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

    pub fn insert(&mut self, d: ChunkDigest, size: u64, tick: u64) {
        self.remove(&d);
        let pinned = self.pinned(&d);
        self.entries.insert(d, Entry { tick, size });
        self.order.insert((pinned, tick, d));
        self.used += size;
        if pinned {
            self.pinned_bytes += size;
        }
    }

    pub fn touch(&mut self, d: &ChunkDigest) -> Option<(u64, u64)> {
        let e = *self.entries.get(d)?;
        let pinned = self.pinned(d);
        let tick = self.next_tick();
        self.order.remove(&(pinned, e.tick, *d));
        self.order.insert((pinned, tick, *d));
        self.entries.insert(*d, Entry { tick, size: e.size });
        Some((tick, e.size))
    }

    pub fn remove(&mut self, d: &ChunkDigest) -> Option<u64> {
        let e = self.entries.remove(d)?;
        let pinned = self.pinned(d);
        self.order.remove(&(pinned, e.tick, *d));
        self.used -= e.size;
        if pinned {
            self.pinned_bytes -= e.size;
        }
        Some(e.size)
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

    #[test]
    fn evicts_unpinned_least_recent_first() {
        let mut l = Lru::default();
        for i in 0..4 {
            let t = l.next_tick();
            l.insert(d(i), 10, t);
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
}
