//! `dfagent`: the command line. Parses arguments, sets up logging, and hands each command to the
//! module named after it; the work itself lives in the library crates (the node library for
//! mounts, pulls and pushes). It must hold no logic of its own beyond arguments and output.

mod build;
mod cache;
mod check;
mod client;
mod containerd;
mod daemon;
mod inspect;
mod listing;
mod mount;
mod node_args;
mod pull;
mod seed;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Lazy Nydus image mounts, with every chunk verified against its digest.
#[derive(Parser)]
#[command(name = "dfagent", version, about, long_about = None)]
struct Cli {
    /// More log output (-v info, -vv debug). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(flatten)]
    daemon: client::DaemonArgs,
    #[command(flatten)]
    config: node_args::ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the tree of a Nydus (RAFS v6) bootstrap.
    ///
    /// With --blob-dir, every regular file is read through the chunk path and its sha256 shown;
    /// each chunk is verified against its digest and a mismatch fails the command, naming the
    /// file, chunk and blob offset.
    Inspect {
        /// The bootstrap file (RAFS v6 metadata, e.g. `image.boot` or a build's `bootstrap`).
        bootstrap: PathBuf,
        /// Directory holding the data blobs, each named by its sha256.
        #[arg(long)]
        blob_dir: Option<PathBuf>,
        /// One JSON object per line, sorted by path (the root is "."), in the schema of the
        /// fixtures' *.expected.jsonl listings.
        #[arg(long)]
        json: bool,
    },
    /// Verify an image: metadata structure, every blob file's sha256, every blob's chunk-info
    /// array and TOC, and every chunk's digest. Exits non-zero on any problem, naming the file,
    /// chunk and blob offset.
    Check {
        /// The bootstrap file.
        bootstrap: PathBuf,
        /// Directory holding the data blobs, each named by its sha256.
        #[arg(long)]
        blob_dir: PathBuf,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Mount an image read-only with FUSE and serve it in the foreground.
    ///
    /// File data is read lazily: only the chunks a reader touches are read from the blobs, each
    /// verified against its digest before any byte is returned (a chunk that fails gives EIO).
    /// Serves until `dfagent umount MOUNTPOINT`, SIGINT or SIGTERM, then unmounts and exits.
    ///
    /// Images are untrusted: the mount is nosuid and nodev, and only its owner may use it,
    /// unless --suid, --dev, --allow-other or --container-rootfs say otherwise. Its source in
    /// /proc/self/mountinfo is `dfagent:<image digest>`.
    Mount(mount::MountArgs),
    /// Fill the chunk store with a whole image from a registry (with a progress bar), so that
    /// it mounts and reads with the registry unreachable. The image stays pinned.
    Pull {
        /// The image reference, e.g. localhost:5000/app:v1.
        image: String,
        #[command(flatten)]
        store: node_args::StoreArgs,
        #[command(flatten)]
        registry: node_args::RegistryArgs,
    },
    /// Warm the cluster before a rollout: preheat images on the Dragonfly seed peers (when a
    /// scheduler is configured, or --scheduler), waiting until they hold every layer, then pull
    /// each image into this node's store — through the daemon when one runs, which serves it to
    /// the peer network. Exit codes: 0 seeded, 1 failed, 2 usage or configuration, 3 unknown
    /// image, 4 registry refused the credentials, 5 scheduler or registry unreachable (retry),
    /// 6 not done within --timeout (retry).
    Seed(Box<seed::SeedArgs>),
    /// containerd helpers for the dfagent snapshotter (`dfagent daemon` serves it).
    #[command(subcommand)]
    Containerd(containerd::ContainerdCmd),
    /// Publish a local Nydus image (e.g. built by upstream nydus-image) to a registry in
    /// nydusify's layout: one layer per data blob, then the bootstrap layer.
    Push {
        /// The image's bootstrap.
        #[arg(long)]
        bootstrap: PathBuf,
        /// Directory holding its data blobs, each named by its sha256.
        #[arg(long)]
        blob_dir: PathBuf,
        /// Where to push, e.g. localhost:5000/app:v1.
        image: String,
        #[command(flatten)]
        registry: node_args::RegistryArgs,
    },
    /// Convert an OCI image (OCI layout, docker archive or registry image) into a Nydus image:
    /// one RAFS v6 bootstrap and a data blob per layer with new data, chunks deduplicated
    /// across layers (and against --chunk-dict). Writes --output-dir, --oci-layout and/or
    /// pushes (--push), in nydusify's layout. Same input and options, same bytes.
    Build(Box<build::BuildArgs>),
    /// Look after the node's chunk store.
    Cache {
        #[command(subcommand)]
        command: cache::CacheCommand,
        #[command(flatten)]
        store: node_args::StoreArgs,
    },
    /// Run the node agent in the foreground: one process that owns the store and serves every
    /// mount of the node (the CLI's mount, umount, pull and cache go through it), with a
    /// control API on a unix socket and Prometheus metrics. Stops on SIGTERM or SIGINT,
    /// unmounting everything.
    Daemon(Box<daemon::DaemonCmd>),
    /// Print the effective configuration (file, then DFAGENT_<SECTION>__<KEY> variables, then
    /// flags, over the defaults) as TOML, secrets redacted; with --default, a commented
    /// default file documenting every key.
    Config {
        /// Print the commented default file instead.
        #[arg(long)]
        default: bool,
        #[command(flatten)]
        store: node_args::StoreArgs,
        #[command(flatten)]
        registry: node_args::RegistryArgs,
    },
    /// The daemon's peer network: its peer id, listen and advertised addresses, and the peers it
    /// knows with bytes exchanged and ban state.
    Peers {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the daemon's mounts: image, mount point, state, bytes fetched per tier, chunks
    /// cached, prefetch progress.
    Ps {
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Unmount a dfagent mount (also recovers a stale mount left by a killed process). Anything
    /// else mounted at the path (its source is not `dfagent:<image digest>`) is left alone.
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Detach even if busy (MNT_DETACH); stale mounts are always detached.
        #[arg(long)]
        lazy: bool,
    },
}

/// Log to stderr: `-v`/`-vv` or RUST_LOG set the level, else the configuration's `log.level`
/// (warnings only for one-shot commands); `log.format` picks text or JSON lines.
fn init_logging(verbose: u8, config: Option<&dfagent_node::config::Config>, daemon: bool) {
    use dfagent_node::config::LogFormat;
    // fuser logs an expected failure when the kernel already dropped the mount: keep it quiet.
    let default = match (verbose, config) {
        (0, Some(c)) if daemon => format!("{},fuser=error", c.log.level),
        (0, _) => "warn,fuser=error".to_string(),
        (1, _) => "info,fuser=error".to_string(),
        _ => "debug".to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.is_some_and(|c| c.log.format == LogFormat::Json) {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let verbose = cli.verbose > 0;
    let d = &cli.daemon;
    let c = &cli.config;
    match cli.command {
        Command::Inspect {
            bootstrap,
            blob_dir,
            json,
        } => inspect::run(&bootstrap, blob_dir.as_deref(), json),
        Command::Check {
            bootstrap,
            blob_dir,
            json,
        } => check::run(&bootstrap, &blob_dir, json),
        Command::Mount(args) => mount::run(args, d, c, verbose),
        Command::Umount { mountpoint, lazy } => mount::umount(&mountpoint, lazy, d, c),
        Command::Build(args) => build::run(*args, c),
        Command::Daemon(cmd) => daemon::run(*cmd, d, c),
        Command::Config {
            default,
            store,
            registry,
        } => {
            if default {
                print!("{}", dfagent_node::config::Config::default_commented());
            } else {
                let o = d.overrides(registry.overrides(store.overrides(Default::default())));
                print!("{}", node_args::load(c, o)?.to_toml_redacted());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ps { json } => {
            let rt = dfagent_node::runtime()?;
            match d.client(&rt, c)? {
                Some(client) => client::ps(&rt, client, json),
                None => anyhow::bail!(
                    "no dfagent daemon answers on {} (start one with `dfagent daemon`)",
                    d.socket(c)?.display()
                ),
            }
        }
        Command::Peers { json } => {
            let rt = dfagent_node::runtime()?;
            match d.client(&rt, c)? {
                Some(client) => client::peers(&rt, client, json),
                None => anyhow::bail!(
                    "no dfagent daemon answers on {} (start one with `dfagent daemon`)",
                    d.socket(c)?.display()
                ),
            }
        }
        Command::Cache { command, store } => {
            let rt = dfagent_node::runtime()?;
            match d.client(&rt, c)? {
                Some(client) => cache::run_remote(&rt, client, command),
                None => cache::run(command, &store, c),
            }
        }
        Command::Pull {
            image,
            store,
            registry,
        } => {
            let rt = dfagent_node::runtime()?;
            match d.client(&rt, c)? {
                Some(client) => client::pull(&rt, client, &image),
                None => {
                    drop(rt);
                    pull::pull(&image, &store, &registry, c)
                }
            }
        }
        Command::Seed(args) => seed::run(*args, d, c),
        Command::Containerd(cmd) => containerd::run(cmd, c),
        Command::Push {
            bootstrap,
            blob_dir,
            image,
            registry,
        } => pull::push(&bootstrap, &blob_dir, &image, &registry, c),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logging follows the configuration where the command reads one; a configuration that does
    // not load is reported by the command itself.
    let uses_config = !matches!(
        cli.command,
        Command::Inspect { .. } | Command::Check { .. } | Command::Config { .. }
    );
    let config = uses_config
        .then(|| node_args::load(&cli.config, Default::default()).ok())
        .flatten();
    init_logging(
        cli.verbose,
        config.as_ref(),
        matches!(cli.command, Command::Daemon(_)),
    );
    let result = run(cli);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dfagent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
