//! Images from a registry: resolve a reference (or fall back to the store's copy when the
//! registry is unreachable), get the bootstrap, pin the image's chunks, and build the resolver
//! chain `store → registry`. Used by `mount IMAGE`, `pull` and `push`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dfagent_rafs::Image;
use dfagent_registry::{NydusImage, Registry, RegistryConfig, RegistrySource};
use dfagent_resolver::prefetch::{self, PrefetchProgress};
use dfagent_resolver::{Resolver, ResolverConfig, StoreTier as ResolverStore};
use dfagent_store::{Store, StoreTier};

use crate::store_args::StoreArgs;

/// How long resolving a reference may take when the store has no copy of the image.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long it may take before a mount falls back to the store's copy: a node with the image
/// should start it promptly when its registry is down.
const RESOLVE_TIMEOUT_WITH_COPY: Duration = Duration::from_secs(1);
/// Stored bytes per prefetch batch (one range request per blob region).
const PREFETCH_BATCH: u64 = 4 << 20;

/// Options of every command that talks to a registry.
#[derive(clap::Args, Clone, Debug)]
pub struct RegistryArgs {
    /// Registry (HOST[:PORT]) to reach over plain HTTP; localhost and 127.0.0.0/8 always are.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure: Vec<String>,
    /// PEM file of extra CA certificates for HTTPS registries.
    #[arg(long)]
    pub registry_ca: Option<PathBuf>,
    /// Docker config.json with registry credentials (default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json).
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
}

impl RegistryArgs {
    pub fn registry(&self) -> anyhow::Result<Arc<Registry>> {
        Ok(Arc::new(Registry::new(RegistryConfig {
            insecure: self.insecure.clone(),
            extra_ca: self.registry_ca.clone(),
            docker_config: self.docker_config.clone(),
            ..RegistryConfig::default()
        })?))
    }
}

/// An image ready to serve: its metadata, and a resolver chain over the store and the registry.
pub struct Opened {
    pub image: Arc<Image>,
    pub resolver: Arc<Resolver>,
    pub store: Arc<Store>,
}

fn record_key(reference: &str) -> String {
    format!("image/{reference}")
}

/// Resolve `reference`, preferring the registry and falling back to the store's record.
async fn resolve(
    registry: &Registry,
    store: &Store,
    reference: &str,
) -> anyhow::Result<NydusImage> {
    let stored = store.get_meta(&record_key(reference))?;
    let limit = if stored.is_some() {
        RESOLVE_TIMEOUT_WITH_COPY
    } else {
        RESOLVE_TIMEOUT
    };
    let online = tokio::time::timeout(limit, registry.resolve(reference)).await;
    let err = match online {
        Ok(Ok(img)) => {
            store.put_meta(&record_key(reference), &img.to_record())?;
            return Ok(img);
        }
        Ok(Err(e)) => anyhow::Error::new(e),
        Err(_) => anyhow::anyhow!("no answer within {limit:?}"),
    };
    match stored {
        Some(rec) => {
            let img = NydusImage::from_record(&rec)
                .with_context(|| format!("the store's record of {reference} is unreadable"))?;
            tracing::warn!(reference, error = %err, "registry unreachable; using the image as the store last saw it");
            eprintln!(
                "dfagent: registry unreachable ({err:#}); using the stored copy of {reference}"
            );
            Ok(img)
        }
        None => Err(err.context(format!("resolving {reference}"))),
    }
}

/// Resolve `reference`, load its bootstrap (from the store or the registry), pin its chunks and
/// build the resolver chain.
pub async fn open(
    reference: &str,
    store: Arc<Store>,
    registry: Arc<Registry>,
    cache_bytes: u64,
) -> anyhow::Result<Opened> {
    let img = resolve(&registry, &store, reference).await?;
    let boot_key = format!("bootstrap/{}", img.bootstrap.digest);
    let bootstrap = match store.get_meta(&boot_key)? {
        Some(b) => b,
        None => {
            let b = registry
                .fetch_bootstrap(&img)
                .await
                .with_context(|| format!("fetching the bootstrap of {reference}"))?;
            store.put_meta(&boot_key, &b)?;
            b
        }
    };
    let image = Arc::new(Image::from_bytes(bootstrap).context("reading the bootstrap")?);
    let missing = img.missing_blobs(&image);
    if !missing.is_empty() {
        bail!(
            "{reference}: the bootstrap references blobs the manifest does not list: {missing:?}"
        );
    }
    let digests: Vec<_> = image.all_chunks()?.iter().map(|c| c.digest).collect();
    store.pin(reference, &digests)?;
    let tier = StoreTier::new(store.clone());
    let resolver = Arc::new(Resolver::with_store(
        Some(ResolverStore {
            source: Arc::new(tier.clone()),
            sink: Arc::new(tier),
        }),
        vec![Arc::new(RegistrySource::new(registry, Arc::new(img)))],
        ResolverConfig {
            cache_bytes,
            ..ResolverConfig::default()
        },
    ));
    Ok(Opened {
        image,
        resolver,
        store,
    })
}

/// Start the background prefetch of `policy` for an opened image.
pub fn start_prefetch(
    rt: &tokio::runtime::Runtime,
    opened: &Opened,
    policy: prefetch::PrefetchPolicy,
) -> Arc<PrefetchProgress> {
    let progress = Arc::new(PrefetchProgress::default());
    let chunks = prefetch::plan(&opened.image, policy);
    let (resolver, store, p) = (
        opened.resolver.clone(),
        opened.store.clone(),
        progress.clone(),
    );
    rt.spawn(async move {
        prefetch::run(resolver, chunks, PREFETCH_BATCH, p, move |bytes| {
            let st = store.stats();
            if st.pinned_bytes + bytes > st.capacity {
                Err(format!(
                    "the store's capacity ({} bytes) would force evicting chunks of the image being filled",
                    st.capacity
                ))
            } else {
                Ok(())
            }
        })
        .await;
    });
    progress
}

/// `dfagent pull`: fill the store with every chunk of an image, with a progress bar.
pub fn pull(reference: &str, store: &StoreArgs, reg: &RegistryArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    let store = Arc::new(store.open()?);
    let registry = reg.registry()?;
    let started = Instant::now();
    let opened = rt.block_on(open(reference, store.clone(), registry, 64 << 20))?;
    store.put_meta(&format!("pulled/{reference}"), b"1")?;
    let chunks = opened.image.all_chunks()?;
    let total: u64 = chunks.iter().map(|c| u64::from(c.compressed_size)).sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} pulling [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut failed = 0u64;
    for range in prefetch::batches(&chunks, PREFETCH_BATCH) {
        let bytes: u64 = chunks[range.clone()]
            .iter()
            .map(|c| u64::from(c.compressed_size))
            .sum();
        for r in rt.block_on(opened.resolver.read_batch(&chunks[range])) {
            if let Err(e) = r {
                failed += 1;
                tracing::error!(error = %e, "pull: chunk failed");
            }
        }
        bar.inc(bytes);
    }
    bar.finish_and_clear();
    let st = opened.resolver.metrics().snapshot();
    let remote: u64 = st
        .tiers
        .iter()
        .filter(|t| t.name != "store")
        .map(|t| t.bytes)
        .sum();
    eprintln!(
        "dfagent: pulled {reference}: {} chunks, {remote} bytes from the registry, in {:.1} s{}",
        chunks.len(),
        started.elapsed().as_secs_f64(),
        if failed > 0 {
            format!(", {failed} chunks FAILED")
        } else {
            String::new()
        }
    );
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `dfagent push`: publish a local Nydus image in nydusify's layout.
pub fn push(
    bootstrap: &Path,
    blob_dir: &Path,
    reference: &str,
    reg: &RegistryArgs,
) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    let registry = reg.registry()?;
    let digest = rt
        .block_on(registry.push_nydus(reference, bootstrap, blob_dir))
        .with_context(|| format!("pushing {} to {reference}", bootstrap.display()))?;
    println!("{reference}@{digest}");
    Ok(ExitCode::SUCCESS)
}
