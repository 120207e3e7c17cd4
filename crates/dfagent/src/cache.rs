//! `dfagent cache stat|gc|verify|clear`: look after the node's chunk store, through the daemon
//! when one runs (it owns the store), in-process otherwise.

use std::process::ExitCode;

use dfagent_node::control::client::Client;
use dfagent_node::control::{proto, replies};

use crate::node_args::{load, open_store, ConfigArgs, StoreArgs};

/// What to do to the store.
#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Show how much the store holds, what is pinned and the capacity.
    Stat {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove every chunk no image pins.
    Gc,
    /// Decode and verify every chunk; remove (and report) the ones that fail. Exits 1 if any did.
    Verify,
    /// Remove everything the store holds.
    Clear,
}

fn print_stat(s: &proto::CacheStatReply, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "store": s.path, "chunks": s.chunks, "bytes": s.bytes,
                "capacity": s.capacity_bytes, "pinned_chunks": s.pinned_chunks,
                "pinned_bytes": s.pinned_bytes, "images": s.image_names,
                "evictions": s.evictions,
            })
        );
    } else {
        println!("store       {}", s.path);
        println!("chunks      {}", s.chunks);
        println!("bytes       {} of {} capacity", s.bytes, s.capacity_bytes);
        println!(
            "pinned      {} chunks, {} bytes",
            s.pinned_chunks, s.pinned_bytes
        );
        println!("images      {}", s.image_names.join(", "));
    }
}

fn print_verify(r: &proto::CacheVerifyReply) -> ExitCode {
    println!("checked {} chunks, removed {} bad ones", r.checked, r.bad);
    for d in &r.bad_digests {
        eprintln!("removed {d}");
    }
    if r.bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Through the daemon.
pub fn run_remote(
    rt: &tokio::runtime::Runtime,
    mut c: Client,
    cmd: CacheCommand,
) -> anyhow::Result<ExitCode> {
    let err = |e: tonic::Status| anyhow::anyhow!("daemon: {}", e.message());
    match cmd {
        CacheCommand::Stat { json } => {
            let s = rt
                .block_on(c.cache_stat(proto::CacheStatRequest {}))
                .map_err(err)?
                .into_inner();
            print_stat(&s, json);
        }
        CacheCommand::Gc => {
            let r = rt
                .block_on(c.cache_gc(proto::CacheGcRequest {}))
                .map_err(err)?
                .into_inner();
            println!(
                "removed {} unpinned chunks, {} bytes",
                r.removed_chunks, r.removed_bytes
            );
        }
        CacheCommand::Verify => {
            let r = rt
                .block_on(c.cache_verify(proto::CacheVerifyRequest {}))
                .map_err(err)?
                .into_inner();
            return Ok(print_verify(&r));
        }
        CacheCommand::Clear => {
            let r = rt
                .block_on(c.cache_clear(proto::CacheClearRequest {}))
                .map_err(err)?
                .into_inner();
            println!("cleared the daemon's store ({} chunks)", r.removed_chunks);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// In this process.
pub fn run(cmd: CacheCommand, store: &StoreArgs, config: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let cfg = load(
        config,
        store.overrides(dfagent_node::config::Overrides::new()),
    )?;
    let s = open_store(&cfg)?;
    match cmd {
        CacheCommand::Stat { json } => print_stat(&replies::cache_stat(&s)?, json),
        CacheCommand::Gc => {
            let r = s.gc()?;
            println!("removed {} unpinned chunks, {} bytes", r.chunks, r.bytes);
        }
        CacheCommand::Verify => {
            let r = s.verify()?;
            return Ok(print_verify(&replies::cache_verify(&r)));
        }
        CacheCommand::Clear => {
            s.clear()?;
            println!("cleared {}", s.path().display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
