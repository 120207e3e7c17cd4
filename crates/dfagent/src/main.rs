//! `dfagent`: the command line. Parses arguments, sets up logging, and hands each command to the
//! module named after it; the work itself lives in the library crates.

mod build;
mod cache;
mod check;
mod inspect;
mod listing;
mod mount;
mod remote;
mod store_args;

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
    Mount(mount::MountArgs),
    /// Fill the chunk store with a whole image from a registry (with a progress bar), so that
    /// it mounts and reads with the registry unreachable. The image stays pinned.
    Pull {
        /// The image reference, e.g. localhost:5000/app:v1.
        image: String,
        #[command(flatten)]
        store: store_args::StoreArgs,
        #[command(flatten)]
        registry: remote::RegistryArgs,
    },
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
        registry: remote::RegistryArgs,
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
        store: store_args::StoreArgs,
    },
    /// Unmount a dfagent mount (also recovers a stale mount left by a killed process).
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Detach even if busy (MNT_DETACH); stale mounts are always detached.
        #[arg(long)]
        lazy: bool,
    },
}

fn init_logging(verbose: u8) {
    // fuser logs an expected failure when the kernel already dropped the mount: keep it quiet.
    let default = match verbose {
        0 => "warn,fuser=error",
        1 => "info,fuser=error",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
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
        Command::Mount(args) => mount::run(args, cli.verbose > 0),
        Command::Umount { mountpoint, lazy } => mount::umount(&mountpoint, lazy),
        Command::Build(args) => build::run(*args),
        Command::Cache { command, store } => cache::run(command, &store),
        Command::Pull {
            image,
            store,
            registry,
        } => remote::pull(&image, &store, &registry),
        Command::Push {
            bootstrap,
            blob_dir,
            image,
            registry,
        } => remote::push(&bootstrap, &blob_dir, &image, &registry),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dfagent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
