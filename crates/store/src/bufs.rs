//! Buffers that chunk-file reads fill, kept for the next read once the chunk's bytes are
//! dropped. A fresh buffer of a chunk's size is fresh memory: glibc hands buffers this large
//! back to the kernel when they are freed, so every read faulted in and zeroed its pages again
//! (the kernel's anonymous-page faults were a third of the reading threads' samples in a cold
//! sequential pass through a mount).

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Most idle buffers kept (each about a chunk's stored size).
const IDLE_MAX: usize = 4;
/// Buffers of more capacity than this are not kept: a rare huge chunk would pin its memory.
const KEEP_MAX: usize = 4 << 20;

/// The store's idle read buffers.
#[derive(Clone, Default)]
pub(crate) struct ReadBufs(Arc<Mutex<Vec<Vec<u8>>>>);

impl ReadBufs {
    /// An empty buffer, reused when one is idle.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// `buf` as bytes that bring it back here when the last of them is dropped.
    pub(crate) fn bytes(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            home: self.clone(),
        })
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() > KEEP_MAX {
            return;
        }
        buf.clear();
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_MAX {
            idle.push(buf);
        }
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A read buffer lent out as [`Bytes`].
struct Pooled {
    buf: Vec<u8>,
    home: ReadBufs,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_their_bytes_go_and_only_so_many() {
        let bufs = ReadBufs::default();
        let mut v = bufs.take();
        v.extend_from_slice(&[7; 1000]);
        let b = bufs.bytes(v);
        let part = b.slice(10..20);
        drop(b);
        assert_eq!(bufs.idle(), 0, "a slice still holds it");
        assert_eq!(&part[..], &[7; 10]);
        drop(part);
        assert_eq!(bufs.idle(), 1);
        // Reused empty, with its capacity.
        let again = bufs.take();
        assert!(again.is_empty() && again.capacity() >= 1000);
        let many: Vec<Bytes> = (0..IDLE_MAX + 3).map(|_| bufs.bytes(vec![1; 10])).collect();
        drop(many);
        assert_eq!(bufs.idle(), IDLE_MAX);
        // With room for one more, a huge one is still let go.
        let _out = bufs.take();
        drop(bufs.bytes(Vec::with_capacity(KEEP_MAX + 1)));
        assert_eq!(bufs.idle(), IDLE_MAX - 1);
    }
}
