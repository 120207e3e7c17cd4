//! Pull: every chunk of a registry image into the store, so it mounts and reads with the
//! registry unreachable; and push: a local Nydus image published in nydusify's layout.

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::image::ImageSource;
use crate::mount::PREFETCH_BATCH;
use crate::node::Node;

/// Where a pull stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PullProgress {
    /// Stored bytes of the chunks done (fetched or found in the store) and of all chunks.
    pub done_bytes: u64,
    /// Stored bytes of all the image's chunks.
    pub total_bytes: u64,
    /// Chunks done.
    pub done_chunks: u64,
    /// Chunks of the image.
    pub total_chunks: u64,
    /// Chunks no tier could supply.
    pub failed_chunks: u64,
}

/// What a pull did.
#[derive(Clone, Debug, Default)]
pub struct PullReport {
    /// The image's manifest digest.
    pub digest: String,
    /// Final progress.
    pub progress: PullProgress,
    /// Stored bytes fetched from tiers other than the store.
    pub fetched_bytes: u64,
    /// Whether the registry was unreachable and the store's record was used.
    pub offline: bool,
}

impl Node {
    /// Fill the store with every chunk of `reference` and keep it pinned (a pulled image's pin
    /// outlives its mounts). `progress` is called after every batch.
    pub async fn pull(
        self: &Arc<Self>,
        reference: &str,
        mut progress: impl FnMut(&PullProgress),
    ) -> Result<PullReport> {
        let store = self.require_store()?.clone();
        let opened = self
            .open_image(&ImageSource::Registry(reference.to_string()))
            .await?;
        store.mark_pulled(reference)?;
        let chunks = opened.image.all_chunks()?;
        let mut p = PullProgress {
            total_bytes: chunks.iter().map(|c| u64::from(c.compressed_size)).sum(),
            total_chunks: chunks.len() as u64,
            ..PullProgress::default()
        };
        progress(&p);
        for range in dfagent_resolver::prefetch::batches(&chunks, PREFETCH_BATCH) {
            let batch = &chunks[range];
            for (c, r) in batch
                .iter()
                .zip(opened.resolver.read_batch_background(batch).await)
            {
                match r {
                    Ok(_) => {
                        p.done_chunks += 1;
                        p.done_bytes += u64::from(c.compressed_size);
                    }
                    Err(e) => {
                        p.failed_chunks += 1;
                        tracing::error!(reference, error = %e, "pull: chunk failed");
                    }
                }
            }
            progress(&p);
        }
        opened.resolver.flush().await;
        let st = opened.resolver.metrics().snapshot();
        let fetched_bytes = st
            .tiers
            .iter()
            .filter(|t| t.name != "store")
            .map(|t| t.bytes)
            .sum();
        Ok(PullReport {
            digest: opened.digest().to_string(),
            progress: p,
            fetched_bytes,
            offline: opened.offline,
        })
    }

    /// Publish the local Nydus image `bootstrap` + `blob_dir` as `reference` in nydusify's
    /// layout; returns the manifest digest.
    pub async fn push(&self, bootstrap: &Path, blob_dir: &Path, reference: &str) -> Result<String> {
        Ok(self
            .registry()?
            .push_nydus(reference, bootstrap, blob_dir)
            .await?)
    }
}
