//! Chunk read-ahead for sequential readers. The kernel asks for a file 128 KiB–1 MiB at a time;
//! fetching only the chunk each request touches makes a cold sequential read pay one tier round
//! trip per chunk, strictly one after another. When a file is read sequentially, the chunks
//! after the ones a read touches are fetched in the background, a window ahead of the reader,
//! so the next requests find them fetched (or in flight, and wait on that single fetch). Random
//! readers get no read-ahead: it would only waste bandwidth and decode work on them.

use std::collections::HashMap;
use std::sync::Mutex;

/// Files tracked at once; past this the table starts over (only read-ahead hints are lost).
const MAX_TRACKED: usize = 4096;

#[derive(Default)]
struct Stream {
    /// Where the last read of the file ended.
    next: u64,
    /// File offset up to which chunks have been asked for ahead of the reader.
    frontier: u64,
}

/// Per-file sequential-read tracking; decides what to fetch ahead.
pub(crate) struct ReadAhead {
    window: u64,
    files: Mutex<HashMap<u64, Stream>>,
}

impl ReadAhead {
    /// Read-ahead of up to `window` bytes of file data past each sequential read (0: off).
    pub(crate) fn new(window: u64) -> Self {
        Self {
            window,
            files: Mutex::new(HashMap::new()),
        }
    }

    /// Note a read of `[offset, end)` of file `nid` (of `size` bytes) whose chunks end at
    /// `chunks_end`; returns the file range to fetch ahead, if any.
    pub(crate) fn after_read(
        &self,
        nid: u64,
        offset: u64,
        end: u64,
        chunks_end: u64,
        size: u64,
    ) -> Option<(u64, u64)> {
        if self.window == 0 {
            return None;
        }
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if files.len() >= MAX_TRACKED && !files.contains_key(&nid) {
            files.clear();
        }
        // A file's first read is sequential when it starts the file; later ones when they
        // start where the last one ended, give or take a few requests of their own size (the
        // kernel's read-ahead requests may arrive slightly out of order; a 4 KiB random reader
        // gets a 16 KiB tolerance and so almost never looks sequential).
        let known = files.contains_key(&nid);
        let st = files.entry(nid).or_default();
        let slack = end.saturating_sub(offset).saturating_mul(4);
        let sequential = if known {
            offset.abs_diff(st.next) <= slack
        } else {
            offset == 0
        };
        st.next = end;
        if !sequential {
            return None;
        }
        if st.frontier >= chunks_end.saturating_add(self.window / 2) {
            return None;
        }
        let from = chunks_end.max(st.frontier);
        let to = chunks_end.saturating_add(self.window).min(size);
        if from >= to {
            return None;
        }
        st.frontier = to;
        Some((from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::ReadAhead;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_sequential_reader_stays_a_window_ahead() {
        let ra = ReadAhead::new(4 * MIB);
        let size = 64 * MIB;
        // First read at 0 touches chunk 0: fetch [1 MiB, 5 MiB).
        assert_eq!(
            ra.after_read(7, 0, 128 << 10, MIB, size),
            Some((MIB, 5 * MIB))
        );
        // Reads inside what is already ahead ask for nothing more.
        assert_eq!(ra.after_read(7, 128 << 10, 256 << 10, MIB, size), None);
        assert_eq!(ra.after_read(7, 256 << 10, 2 * MIB, 2 * MIB, size), None);
        // Once the reader is within half a window of the frontier, the window moves on.
        assert_eq!(
            ra.after_read(7, 2 * MIB, 3 * MIB + 1, 4 * MIB, size),
            Some((5 * MIB, 8 * MIB))
        );
    }

    #[test]
    fn offsets_and_sizes_at_the_top_of_the_range_saturate() {
        let ra = ReadAhead::new(u64::MAX);
        // A window past the end of u64 ends at the file's size.
        assert_eq!(
            ra.after_read(1, 0, 10, 4096, u64::MAX),
            Some((4096, u64::MAX))
        );
        assert_eq!(ra.after_read(1, 10, u64::MAX, u64::MAX, u64::MAX), None);
        assert_eq!(ra.after_read(2, 0, u64::MAX, u64::MAX, u64::MAX), None);
        let ra = ReadAhead::new(4 * MIB);
        assert_eq!(
            ra.after_read(3, 0, u64::MAX, u64::MAX - 1, u64::MAX),
            Some((u64::MAX - 1, u64::MAX))
        );
        assert_eq!(
            ra.after_read(3, u64::MAX, u64::MAX, u64::MAX, u64::MAX),
            None
        );
    }

    #[test]
    fn random_reads_and_file_ends_get_nothing() {
        let ra = ReadAhead::new(4 * MIB);
        let size = 64 * MIB;
        // A first read that does not start the file, then 4 KiB reads jumping around.
        assert!(ra
            .after_read(1, 40 * MIB, 40 * MIB + 4096, 41 * MIB, size)
            .is_none());
        assert!(ra
            .after_read(1, 9 * MIB, 9 * MIB + 4096, 10 * MIB, size)
            .is_none());
        assert!(ra
            .after_read(1, 9 * MIB + 65536, 9 * MIB + 69632, 10 * MIB, size)
            .is_none());
        // Picking up where the last read ended is sequential again.
        assert_eq!(
            ra.after_read(1, 9 * MIB + 69632, 9 * MIB + 200_000, 10 * MIB, size),
            Some((10 * MIB, 14 * MIB))
        );
        // The last chunk of a file: nothing after it.
        assert!(ra.after_read(2, 0, 4096, 4096, 4096).is_none());
        // Off.
        assert!(ReadAhead::new(0)
            .after_read(3, 0, 4096, MIB, size)
            .is_none());
    }
}
