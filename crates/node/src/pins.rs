//! Pins of open images: while an image is open its chunks are evicted last. Several mounts of
//! one reference share one pin; the last to close releases it (unless the image was pulled,
//! whose pin outlives its mounts). The release is a guard's drop, so it happens on every path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dfagent_core::ChunkDigest;
use dfagent_store::Store;

use crate::error::Result;

/// Open images per reference.
#[derive(Default)]
pub struct Pins {
    open: Mutex<HashMap<String, usize>>,
}

impl Pins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pin `digests` for `reference` in `store` and count one more user of the pin.
    pub(crate) fn pin(
        self: &Arc<Self>,
        store: &Arc<Store>,
        reference: &str,
        digests: &[ChunkDigest],
    ) -> Result<PinGuard> {
        // Count the user first, so a concurrent last release cannot unpin under us; write the
        // pins outside the lock (thousands of keys), so mounts of other images go on meanwhile.
        // A reference already pinned keeps its pins: its open images name the same chunks.
        let first = {
            let mut open = self.lock();
            let n = open.entry(reference.to_string()).or_default();
            *n += 1;
            *n == 1
        };
        let guard = PinGuard {
            pins: self.clone(),
            store: store.clone(),
            reference: reference.to_string(),
        };
        if first {
            // On failure the guard's drop takes the count back.
            store.pin(reference, digests)?;
        }
        Ok(guard)
    }

    /// How many open images hold a pin on `reference`.
    pub fn users(&self, reference: &str) -> usize {
        self.lock().get(reference).copied().unwrap_or(0)
    }
}

/// One user of an image's pin; dropping it releases that use.
pub struct PinGuard {
    pins: Arc<Pins>,
    store: Arc<Store>,
    reference: String,
}

impl PinGuard {
    /// The pinned reference.
    pub fn reference(&self) -> &str {
        &self.reference
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut open = self.pins.lock();
        let left = match open.get_mut(&self.reference) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left > 0 {
            return;
        }
        open.remove(&self.reference);
        let pulled = self.store.is_pulled(&self.reference).unwrap_or_else(|e| {
            tracing::warn!(reference = %self.reference, error = %e, "cannot tell whether the image was pulled; keeping its pin");
            true
        });
        if !pulled {
            if let Err(e) = self.store.unpin(&self.reference) {
                tracing::warn!(reference = %self.reference, error = %e, "could not unpin the image");
            }
        }
    }
}
