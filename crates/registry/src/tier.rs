//! [`RegistryTier`]: the registry as a [`ChunkTier`]. A batch of chunks becomes few range
//! requests: chunks of one blob are sorted by offset and neighbours are merged into one
//! request, whose response is cut back into chunks without copying. A range that fails
//! answers each of its chunks with the failure, as the client said it.

use std::sync::Arc;

use dfagent_core::ranges::{plan_ranges, RangePlan, DEFAULT_MAX_MERGE};
use dfagent_core::{BoxFuture, ChunkRef, ChunkTier, Retry, Slot, TierError};
use futures::StreamExt;
use tracing::debug;

use crate::client::Registry;
use crate::image::NydusImage;

/// Range requests of one batch in flight at once.
const CONCURRENT_RANGES: usize = 8;

/// The registry as a chunk tier for one image: chunks are read from the image's data blobs
/// with merged HTTP range requests. Bytes are handed out as stored and not verified (the
/// resolver decodes and verifies them).
#[derive(Clone, Debug)]
pub struct RegistryTier {
    /// The client.
    pub registry: Arc<Registry>,
    /// The image whose blobs are read.
    pub image: Arc<NydusImage>,
    /// Largest merged range request in bytes (default [`DEFAULT_MAX_MERGE`]).
    pub max_merge: u64,
}

impl RegistryTier {
    /// A tier reading `image`'s blobs through `registry`, merging up to
    /// [`DEFAULT_MAX_MERGE`] bytes per request.
    pub fn new(registry: Arc<Registry>, image: Arc<NydusImage>) -> Self {
        Self {
            registry,
            image,
            max_merge: DEFAULT_MAX_MERGE,
        }
    }

    async fn fetch_all(&self, slots: &mut [Slot]) {
        // Plan over the chunks of blobs the image has; the rest are left to other tiers.
        let known: Vec<usize> = (0..slots.len())
            .filter(|&i| self.image.blob_size(&slots[i].chunk().blob).is_some())
            .collect();
        if known.len() < slots.len() {
            debug!(
                chunks = slots.len() - known.len(),
                image = %self.image.reference,
                "chunks of blobs the image does not have are left to other tiers"
            );
        }
        let chunks: Vec<ChunkRef> = known.iter().map(|&i| *slots[i].chunk()).collect();
        let plans = plan_ranges(&chunks, self.max_merge.max(1));
        debug!(
            chunks = chunks.len(),
            requests = plans.len(),
            "registry batch planned"
        );
        let results: Vec<(RangePlan, crate::Result<bytes::Bytes>)> = futures::stream::iter(plans)
            .map(|plan| async move {
                let res = self
                    .registry
                    .read_range(&self.image, &plan.blob, plan.range.clone())
                    .await;
                (plan, res)
            })
            .buffer_unordered(CONCURRENT_RANGES)
            .collect()
            .await;
        for (plan, res) in results {
            match res {
                Ok(data) => {
                    for (i, rel) in plan.members {
                        let slot = &mut slots[known[i]];
                        // Blob bytes are in the reference's encoding.
                        let compression = slot.chunk().compression;
                        slot.found(data.slice(rel), compression);
                    }
                }
                Err(e) => {
                    let err = TierError::new("registry", e.tier_error_kind(), e.to_string());
                    for (i, _) in plan.members {
                        slots[known[i]].failed(err.clone());
                    }
                }
            }
        }
    }
}

impl ChunkTier for RegistryTier {
    fn name(&self) -> &str {
        "registry"
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        Box::pin(self.fetch_all(slots))
    }

    /// A chunk that failed verification most likely had a byte flipped on the way: ask again
    /// (the resolver bounds how often).
    fn bad_answer(&self, chunk: &ChunkRef, detail: &str) -> Retry {
        debug!(chunk = %chunk.digest, blob = %chunk.blob, detail, "registry bytes failed verification; asking again");
        Retry::AskAgain
    }
}
