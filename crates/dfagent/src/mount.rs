//! `dfagent mount` and `dfagent umount`: arguments in, a mount served in the foreground by the
//! node library, counters out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use dfagent_node::config::Overrides;
use dfagent_node::{ImageSource, MountSpec};
use dfagent_resolver::prefetch::PrefetchPolicy;

use crate::client::DaemonArgs;
use crate::node_args::{load, open_node, ConfigArgs, RegistryArgs, StoreArgs};

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
    /// Replace a dfagent mount at MOUNTPOINT, including a stale one left by a killed dfagent
    /// ("transport endpoint is not connected"). Anything else mounted there is never replaced.
    #[arg(long)]
    pub force: bool,
    /// Let every user use the mount, as the files' modes allow (FUSE allow_other;
    /// `mount.allow_other`). Without it only the user who mounted it may (root, for the daemon).
    /// Containers running as a non-root user need it.
    #[arg(long)]
    pub allow_other: bool,
    /// Honour the image's set-user-id and set-group-id bits (`mount.suid`; default nosuid).
    /// Images are untrusted: a setuid-root binary in one runs as root.
    #[arg(long)]
    pub suid: bool,
    /// Honour the image's device files (`mount.dev`; default nodev).
    #[arg(long)]
    pub dev: bool,
    /// Mount a container's root file system: suid, dev and allow_other, accepted only when
    /// every directory above MOUNTPOINT is owned by root and writable by no one else.
    #[arg(long)]
    pub container_rootfs: bool,
    /// Size of the in-memory cache of decoded, verified chunks, in MiB (`cache.decoded_mib`,
    /// default 256; a daemon's cache is set when it starts).
    #[arg(long)]
    pub cache_mib: Option<u64>,
    /// File data fetched ahead of a sequential reader, in MiB; 0: only what is read
    /// (`mount.readahead_mib`, default 16).
    #[arg(long, env = "DFAGENT_READAHEAD_MIB")]
    pub readahead_mib: Option<u64>,
    /// What a registry mount fetches in the background: `none`, `table` (the image's prefetch
    /// table) or `all` (the table, then the whole image, so the node keeps working offline)
    /// (`mount.prefetch`, default all).
    #[arg(long)]
    pub prefetch: Option<PrefetchPolicy>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

impl MountArgs {
    /// The image and mount point the arguments name.
    fn image(&self) -> anyhow::Result<(ImageSource, PathBuf)> {
        Ok(match (&self.bootstrap, &self.blob_dir) {
            (Some(bootstrap), Some(blob_dir)) => {
                let [mp] = self.targets.as_slice() else {
                    bail!("with --bootstrap, give only the MOUNTPOINT (not an IMAGE)");
                };
                let image = ImageSource::Local {
                    bootstrap: bootstrap.clone(),
                    blob_dir: blob_dir.clone(),
                };
                (image, PathBuf::from(mp))
            }
            _ => {
                let [reference, mp] = self.targets.as_slice() else {
                    bail!(
                        "give IMAGE and MOUNTPOINT (or --bootstrap and --blob-dir with MOUNTPOINT)"
                    );
                };
                (ImageSource::Registry(reference.clone()), PathBuf::from(mp))
            }
        })
    }

    /// The configuration keys these flags set.
    fn overrides(&self) -> Overrides {
        let mut o = self
            .registry
            .overrides(self.store.overrides(Overrides::new()));
        if let Some(m) = self.cache_mib {
            o = o.set("--cache-mib", "cache.decoded_mib", m);
        }
        if let Some(m) = self.readahead_mib {
            o = o.set("--readahead-mib", "mount.readahead_mib", m);
        }
        if let Some(p) = self.prefetch {
            o = o.set("--prefetch", "mount.prefetch", p.as_str());
        }
        // Flags only switch on: off is the default, or what the configuration says.
        for (on, flag, key) in [
            (self.allow_other, "--allow-other", "mount.allow_other"),
            (self.suid, "--suid", "mount.suid"),
            (self.dev, "--dev", "mount.dev"),
        ] {
            if on {
                o = o.set(flag, key, true);
            }
        }
        o
    }
}

/// Mount through the daemon when one answers (returning once the mount is ready); otherwise
/// serve the mount in the foreground until a signal or an unmount from elsewhere ends it.
pub fn run(
    args: MountArgs,
    daemon: &DaemonArgs,
    config: &ConfigArgs,
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    let (image, mountpoint) = args.image()?;
    let rt = dfagent_node::runtime()?;
    if let Some(c) = daemon.client(&rt, config)? {
        // The daemon applies its own defaults to what the command line leaves unset.
        let options = crate::client::MountFlags {
            prefetch: args.prefetch,
            readahead_mib: args.readahead_mib,
            force: args.force,
            allow_other: args.allow_other,
            suid: args.suid,
            dev: args.dev,
            container_rootfs: args.container_rootfs,
        };
        return crate::client::mount(&rt, c, &image, &mountpoint, &options);
    }
    let cfg = load(config, args.overrides())?;
    let mut options = cfg.mount_options();
    options.force = args.force;
    options.container_rootfs = args.container_rootfs;
    let spec = MountSpec {
        image,
        mountpoint,
        options,
    };
    let local = matches!(spec.image, ImageSource::Local { .. });
    let node = open_node(&rt, &cfg, !local)?;
    // Listen for SIGINT/SIGTERM before mounting: a signal that arrives while the mount is being
    // set up must unmount it, not kill the process and leave a dead mount behind.
    let stop = Arc::new(AtomicBool::new(false));
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered now, on this thread: the handlers are in place before the mount exists.
        let (mut int, mut term) = {
            let _rt = rt.enter();
            (
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            )
        };
        let stop = stop.clone();
        rt.spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    let mp = spec.mountpoint.clone();
    let name = spec.image.name();
    let mut mount = rt
        .block_on(node.mount(spec))
        .with_context(|| format!("mounting {name} at {}", mp.display()))?;
    if mount.image().offline {
        eprintln!("dfagent: registry unreachable; serving the stored copy of {name}");
    }
    eprintln!("dfagent: mounted {name} at {}", mp.display());

    // Serve until a signal arrives or someone unmounts us.
    let external_end = loop {
        if let Some(r) = mount.wait_timeout(Duration::from_millis(200)) {
            break Some(r);
        }
        if stop.load(Ordering::SeqCst) {
            break None;
        }
    };
    let stats = mount.stats(node.store().map(|s| &**s));
    match external_end {
        Some(r) => {
            drop(mount);
            r.context("FUSE session ended with an error")?
        }
        None => mount.unmount()?,
    }
    eprintln!("dfagent: unmounted {}", mp.display());
    if verbose {
        print_stats(&stats);
    }
    rt.block_on(node.flush());
    if let (true, Some(store)) = (verbose, node.store()) {
        let s = store.stats();
        eprintln!(
            "dfagent: store: chunks {}, bytes {}, capacity {}, evictions {}, rejected {}, hits {}, misses {}",
            s.chunks, s.bytes, s.capacity, s.evictions, s.rejected, s.hits, s.misses
        );
    }
    drop(node);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(ExitCode::SUCCESS)
}

fn print_stats(stats: &dfagent_node::MountStats) {
    for t in &stats.resolver.tiers {
        eprintln!(
            "dfagent: tier {}: requests {}, chunks {}, bytes {}, errors {}, verification failures {}, time {} ms",
            t.name, t.requests, t.chunks, t.bytes, t.errors, t.verify_failures, t.latency_us / 1000
        );
    }
    let f = &stats.fs;
    let r = &stats.resolver;
    eprintln!(
        "dfagent: requests {}, reads {}, bytes served {}, read errors {}, read-ahead chunks {}, read latency buckets (<=50us,200us,1ms,5ms,20ms,100ms,1s,>1s) {:?}",
        f.requests, f.reads, f.bytes_served, f.read_errors, f.readahead_chunks, f.read_latency
    );
    let ops: Vec<String> = f
        .ops
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    eprintln!("dfagent: requests by operation: {}", ops.join(", "));
    eprintln!(
        "dfagent: chunk fetches {}, cache hits {}, coalesced {}, bytes fetched {}, verification failures {}, unavailable {}, store writes dropped {}",
        r.fetches, r.cache_hits, r.coalesced, r.bytes_fetched, r.verify_failures, r.unavailable, r.writes_dropped
    );
}

/// `dfagent umount`: through the daemon when it serves the mount, else directly (an
/// in-process mount, or a stale one).
pub fn umount(
    mp: &Path,
    lazy: bool,
    daemon: &DaemonArgs,
    config: &ConfigArgs,
) -> anyhow::Result<ExitCode> {
    let rt = dfagent_node::runtime()?;
    if let Some(c) = daemon.client(&rt, config)? {
        if let Some(code) = crate::client::umount(&rt, c, mp, lazy)? {
            return Ok(code);
        }
    }
    dfagent_node::unmount_path(mp, lazy)?;
    Ok(ExitCode::SUCCESS)
}
