//! `dfagent mount` and `dfagent umount`: wire an image, a resolver and nydusfs together, serve
//! until told to stop, and clean up the mount on the way out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use dfagent_nydusfs::{mount_state, unmount, FsConfig, MountState, NydusFs};
use dfagent_rafs::Image;
use dfagent_resolver::{BlobDirSource, Resolver, ResolverConfig};

/// Arguments of `dfagent mount`.
#[derive(clap::Args)]
pub struct MountArgs {
    /// `IMAGE MOUNTPOINT` (IMAGE is a registry reference such as localhost:5000/app:v1), or just
    /// `MOUNTPOINT` with --bootstrap and --blob-dir for a local image.
    #[arg(num_args = 1..=2, value_names = ["IMAGE", "MOUNTPOINT"], required = true)]
    pub targets: Vec<String>,
    /// A local image's bootstrap (RAFS v6 metadata); needs --blob-dir.
    #[arg(long, requires = "blob_dir")]
    pub bootstrap: Option<PathBuf>,
    /// Directory holding the local image's data blobs, each named by its sha256.
    #[arg(long, requires = "bootstrap")]
    pub blob_dir: Option<PathBuf>,
    /// Replace whatever is mounted at MOUNTPOINT, including a stale mount left by a killed
    /// dfagent ("transport endpoint is not connected").
    #[arg(long)]
    pub force: bool,
    /// Size of the in-memory cache of decoded, verified chunks, in MiB.
    #[arg(long, default_value_t = 256)]
    pub cache_mib: u64,
    /// File data fetched ahead of a sequential reader, in MiB (0: only what is read).
    #[arg(long, env = "DFAGENT_READAHEAD_MIB", default_value_t = 16)]
    pub readahead_mib: u64,
    /// What a registry mount fetches in the background: `none`, `table` (the image's prefetch
    /// table) or `all` (the table, then the whole image, so the node keeps working offline).
    #[arg(long, default_value = "all")]
    pub prefetch: dfagent_resolver::prefetch::PrefetchPolicy,
    #[command(flatten)]
    pub store: crate::store_args::StoreArgs,
    #[command(flatten)]
    pub registry: crate::remote::RegistryArgs,
}

fn prepare_mountpoint(mp: &Path, force: bool) -> anyhow::Result<()> {
    match mount_state(mp) {
        Ok(MountState::NotMounted) => {}
        Ok(MountState::Stale) if force => {
            tracing::info!(mountpoint = %mp.display(), "detaching stale mount");
            unmount(mp, true).with_context(|| format!("detaching stale mount {}", mp.display()))?;
        }
        Ok(MountState::Stale) => bail!(
            "{} is a stale FUSE mount (transport endpoint is not connected), probably left by a \
             killed dfagent; run again with --force to replace it, or `dfagent umount {}`",
            mp.display(),
            mp.display()
        ),
        Ok(MountState::Live) if force => {
            unmount(mp, true).with_context(|| format!("unmounting {}", mp.display()))?;
        }
        Ok(MountState::Live) => bail!(
            "something is already mounted at {}; unmount it first or pass --force",
            mp.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("mount point {}", mp.display())),
    }
    if !mp.is_dir() {
        bail!("mount point {} is not a directory", mp.display());
    }
    Ok(())
}

pub fn run(args: MountArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("dfagent-io")
        .enable_all()
        .build()?;
    let (image, resolver, mp, fsname, pinned) = match (&args.bootstrap, &args.blob_dir) {
        (Some(bootstrap), Some(blob_dir)) => {
            let [mp] = args.targets.as_slice() else {
                bail!("with --bootstrap, give only the MOUNTPOINT (not an IMAGE)");
            };
            let mp = PathBuf::from(mp);
            prepare_mountpoint(&mp, args.force)?;
            let image = Arc::new(
                Image::open(bootstrap)
                    .with_context(|| format!("opening {}", bootstrap.display()))?,
            );
            let resolver = Arc::new(Resolver::new(
                vec![Arc::new(BlobDirSource::new(blob_dir))],
                ResolverConfig {
                    cache_bytes: args.cache_mib << 20,
                    ..ResolverConfig::default()
                },
            ));
            (
                image,
                resolver,
                mp,
                format!("dfagent:{}", bootstrap.display()),
                None,
            )
        }
        _ => {
            let [reference, mp] = args.targets.as_slice() else {
                bail!("give IMAGE and MOUNTPOINT (or --bootstrap and --blob-dir with MOUNTPOINT)");
            };
            let mp = PathBuf::from(mp);
            prepare_mountpoint(&mp, args.force)?;
            let store = Arc::new(args.store.open()?);
            let registry = args.registry.registry()?;
            let opened = rt.block_on(crate::remote::open(
                reference,
                store.clone(),
                registry,
                args.cache_mib << 20,
            ))?;
            crate::remote::start_prefetch(&rt, &opened, args.prefetch);
            let fsname = format!("dfagent:{reference}");
            (
                opened.image,
                opened.resolver,
                mp,
                fsname,
                Some((store, reference.clone())),
            )
        }
    };
    let mp = &mp;
    let fs = NydusFs::new(
        image,
        resolver.clone(),
        rt.handle().clone(),
        FsConfig {
            readahead: args.readahead_mib << 20,
            ..FsConfig::default()
        },
    );
    let fs_metrics = fs.metrics();
    let mut mounted = dfagent_nydusfs::mount(fs, mp, &fsname)
        .with_context(|| format!("mounting at {}", mp.display()))?;
    eprintln!(
        "dfagent: mounted {} at {}",
        fsname.trim_start_matches("dfagent:"),
        mp.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        rt.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    // Serve until a signal arrives or someone unmounts us.
    let external_end = loop {
        if let Some(r) = mounted.wait_timeout(Duration::from_millis(200)) {
            break Some(r);
        }
        if stop.load(Ordering::SeqCst) {
            break None;
        }
    };
    match external_end {
        Some(r) => r.context("FUSE session ended with an error")?,
        None => mounted
            .unmount()
            .with_context(|| format!("unmounting {}", mp.display()))?,
    }
    eprintln!("dfagent: unmounted {}", mp.display());
    if verbose {
        for t in resolver.metrics().snapshot().tiers {
            eprintln!(
                "dfagent: tier {}: requests {}, chunks {}, bytes {}, errors {}, verification failures {}, time {} ms",
                t.name, t.requests, t.chunks, t.bytes, t.errors, t.verify_failures, t.latency_us / 1000
            );
        }
        let f = fs_metrics.snapshot();
        let r = resolver.metrics().snapshot();
        eprintln!(
            "dfagent: requests {}, reads {}, bytes served {}, read errors {}, read-ahead chunks {}, read latency buckets (<=50us,200us,1ms,5ms,20ms,100ms,1s,>1s) {:?}",
            f.requests, f.reads, f.bytes_served, f.read_errors, f.readahead_chunks, f.read_latency
        );
        eprintln!(
            "dfagent: chunk fetches {}, cache hits {}, coalesced {}, bytes fetched {}, verification failures {}, unavailable {}",
            r.fetches, r.cache_hits, r.coalesced, r.bytes_fetched, r.verify_failures, r.unavailable
        );
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    if let (true, Some((store, _))) = (verbose, &pinned) {
        let s = store.stats();
        eprintln!(
            "dfagent: store: chunks {}, bytes {}, capacity {}, evictions {}, rejected {}, hits {}, misses {}",
            s.chunks, s.bytes, s.capacity, s.evictions, s.rejected, s.hits, s.misses
        );
    }
    if let Some((store, reference)) = pinned {
        // A mounted image's chunks are evicted last only while it is mounted; a pulled one
        // stays pinned.
        if store.get_meta(&format!("pulled/{reference}"))?.is_none() {
            store.unpin(&reference)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn umount(mp: &Path, lazy: bool) -> anyhow::Result<ExitCode> {
    match mount_state(mp).with_context(|| format!("mount point {}", mp.display()))? {
        MountState::NotMounted => bail!("nothing is mounted at {}", mp.display()),
        MountState::Stale => unmount(mp, true),
        MountState::Live => unmount(mp, lazy),
    }
    .with_context(|| {
        format!(
            "unmounting {} (if it is busy, retry with --lazy)",
            mp.display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
