//! The node's Dragonfly client: started by the daemon when `[dragonfly] enable` is set (and by
//! `dfagent seed` for preheats), it keeps the scheduler's seed peers and puts a Dragonfly tier in
//! every registry image's chain, after the peers and before the registry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dfagent_core::ChunkTier;
use dfagent_registry::{NydusImage, RegistryOrigin};
use dfagent_scheduler_client::{
    Dragonfly, DragonflyConfig, DragonflyError, ImageStatus, PreheatImage, PreheatScope,
};

use crate::error::{NodeError, Result};
use crate::node::Node;

impl Node {
    /// Start the Dragonfly client with `config` (once). It asks the scheduler for its seed
    /// peers in the background: a scheduler that is down at start is retried, not an error.
    pub fn start_dragonfly(&self, config: DragonflyConfig) -> Result<()> {
        if self.dragonfly().is_some() {
            return Err(NodeError::Unsupported(
                "the Dragonfly client is already running".into(),
            ));
        }
        let dragonfly = {
            let _guard = self.runtime().enter();
            Dragonfly::start(config)?
        };
        if self.set_dragonfly(dragonfly).is_err() {
            return Err(NodeError::Unsupported(
                "the Dragonfly client is already running".into(),
            ));
        }
        tracing::info!("Dragonfly client started");
        Ok(())
    }

    /// Stop the Dragonfly client's background work (daemon shutdown).
    pub fn stop_dragonfly(&self) {
        if let Some(d) = self.dragonfly() {
            d.shutdown();
        }
    }

    /// The Dragonfly tier for `image`'s blobs, when the client runs.
    pub(crate) fn dragonfly_tier(
        &self,
        image: &Arc<NydusImage>,
    ) -> Result<Option<Arc<dyn ChunkTier>>> {
        let Some(d) = self.dragonfly() else {
            return Ok(None);
        };
        let origin = Arc::new(RegistryOrigin::new(self.registry()?, image.clone()));
        Ok(Some(d.tier(origin)))
    }
}

/// How `dfagent seed` preheats one image.
#[derive(Clone, Debug)]
pub struct PreheatOptions {
    /// Which peers download the image.
    pub scope: PreheatScope,
    /// How long to wait for the seed peers to hold every layer.
    pub timeout: Duration,
    /// Calls to the scheduler retried this many times when it cannot be reached.
    pub retries: u32,
}

impl Default for PreheatOptions {
    fn default() -> Self {
        Self {
            scope: PreheatScope::AllSeedPeers,
            timeout: Duration::from_secs(30 * 60),
            retries: 3,
        }
    }
}

/// How often a preheat's progress is asked for.
const STAT_INTERVAL: Duration = Duration::from_millis(500);

impl Node {
    /// Preheat `reference` through the scheduler: resolve it at its registry, ask the
    /// scheduler to have the seed peers download every layer (task ids from the blob digests,
    /// so the chunk reads of every node find them), and wait until they hold them all, calling
    /// `progress` with each answer. Errors: no Dragonfly client, the image does not resolve,
    /// the scheduler unreachable after `retries`, or not done within `timeout`.
    pub async fn preheat(
        &self,
        reference: &str,
        options: &PreheatOptions,
        mut progress: impl FnMut(&ImageStatus),
    ) -> Result<ImageStatus> {
        let Some(dragonfly) = self.dragonfly().cloned() else {
            return Err(NodeError::Unsupported(
                "no Dragonfly scheduler is configured ([dragonfly] enable and schedulers)".into(),
            ));
        };
        let image = Arc::new(self.registry()?.resolve(reference).await?);
        let manifest = RegistryOrigin::new(self.registry()?, image)
            .manifest_request()
            .await?;
        let request = PreheatImage {
            url: manifest.url,
            headers: manifest.headers,
            scope: options.scope,
            timeout: options.timeout,
            ..PreheatImage::default()
        };
        let deadline = Instant::now() + options.timeout;
        with_retries(options.retries, deadline, || {
            dragonfly.preheat_image(&request)
        })
        .await?;
        tracing::info!(
            reference,
            scope = options.scope.as_str(),
            "preheat accepted by the scheduler"
        );
        let mut stat = PreheatImage {
            timeout: Duration::ZERO,
            ..request
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            stat.timeout = left.min(Duration::from_secs(30));
            let status =
                with_retries(options.retries, deadline, || dragonfly.stat_image(&stat)).await?;
            progress(&status);
            if status.complete() {
                return Ok(status);
            }
            if Instant::now() + STAT_INTERVAL >= deadline {
                return Err(NodeError::Timeout {
                    what: format!("preheat of {reference}"),
                    limit: options.timeout,
                    detail: format!(
                        "the seed peers hold {} of {} layers",
                        status.layers_done(),
                        status.layers.len()
                    ),
                });
            }
            tokio::time::sleep(STAT_INTERVAL).await;
        }
    }
}

/// Run `call` until it succeeds, an error other than "scheduler unreachable" comes, `retries`
/// retries are spent, or `deadline` passes; backoff 1 s, 2 s, 4 s, … capped at 10 s.
async fn with_retries<T, F, Fut>(retries: u32, deadline: Instant, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, DragonflyError>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if unreachable(&e) && attempt < retries => {
                let wait = Duration::from_secs(1u64 << attempt.min(3)).min(Duration::from_secs(10));
                if Instant::now() + wait >= deadline {
                    return Err(e.into());
                }
                attempt += 1;
                tracing::warn!(attempt, error = %e, "scheduler unreachable; trying again");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `e` says the scheduler could not be reached (worth another try), not that it refused.
fn unreachable(e: &DragonflyError) -> bool {
    match e {
        DragonflyError::NoScheduler(_) => true,
        DragonflyError::Scheduler { code, .. } => {
            code == "Unavailable" || code == "DeadlineExceeded"
        }
        _ => false,
    }
}
