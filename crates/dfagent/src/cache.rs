//! `dfagent cache stat|gc|verify|clear`: look after the node's chunk store.

use std::process::ExitCode;

use crate::store_args::StoreArgs;

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

pub fn run(cmd: CacheCommand, store: &StoreArgs) -> anyhow::Result<ExitCode> {
    let s = store.open()?;
    match cmd {
        CacheCommand::Stat { json } => {
            let st = s.stats();
            let images = s.pinned_images()?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "store": s.path(), "chunks": st.chunks, "bytes": st.bytes,
                        "capacity": st.capacity, "pinned_chunks": st.pinned_chunks,
                        "pinned_bytes": st.pinned_bytes, "images": images,
                    })
                );
            } else {
                println!("store       {}", s.path().display());
                println!("chunks      {}", st.chunks);
                println!("bytes       {} of {} capacity", st.bytes, st.capacity);
                println!(
                    "pinned      {} chunks, {} bytes",
                    st.pinned_chunks, st.pinned_bytes
                );
                println!("images      {}", images.join(", "));
            }
        }
        CacheCommand::Gc => {
            let (chunks, bytes) = s.gc()?;
            println!("removed {chunks} unpinned chunks, {bytes} bytes");
        }
        CacheCommand::Verify => {
            let r = s.verify()?;
            println!(
                "checked {} chunks, removed {} bad ones",
                r.checked,
                r.removed.len()
            );
            for (d, why) in &r.removed {
                eprintln!("removed {d}: {why}");
            }
            if !r.removed.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        CacheCommand::Clear => {
            s.clear()?;
            println!("cleared {}", s.path().display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
