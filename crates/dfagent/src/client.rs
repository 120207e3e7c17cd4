//! The CLI as a client of a running daemon: which socket, whether to use it, and the calls that
//! go through it (mount, umount, pull, cache, ps). With no daemon answering, commands run
//! in-process.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use dfagent_node::config::Overrides;
use dfagent_node::control::client::{self, Client};
use dfagent_node::control::proto;
use dfagent_node::ImageSource;
use dfagent_resolver::prefetch::PrefetchPolicy;

use crate::node_args::{load, ConfigArgs};

/// How the CLI finds the daemon.
#[derive(clap::Args, Clone, Debug)]
pub struct DaemonArgs {
    /// The daemon's control socket (`daemon.socket`, default /run/dfagent/dfagent.sock).
    #[arg(long, global = true, env = "DFAGENT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Run in this process even if a daemon answers on the socket.
    #[arg(long, global = true)]
    pub no_daemon: bool,
}

impl DaemonArgs {
    /// The configuration keys these flags set.
    pub fn overrides(&self, o: Overrides) -> Overrides {
        match &self.socket {
            Some(s) => o.set("--socket", "daemon.socket", s),
            None => o,
        }
    }

    /// The socket the configuration names (with `--socket` on top).
    pub fn socket(&self, config: &ConfigArgs) -> anyhow::Result<PathBuf> {
        Ok(load(config, self.overrides(Overrides::new()))?
            .daemon
            .socket)
    }

    /// A client of the daemon, or `None` to run in-process (no daemon, or --no-daemon).
    pub fn client(
        &self,
        rt: &tokio::runtime::Runtime,
        config: &ConfigArgs,
    ) -> anyhow::Result<Option<Client>> {
        if self.no_daemon {
            return Ok(None);
        }
        let socket = self.socket(config)?;
        Ok(rt.block_on(client::connect(&socket))?)
    }
}

/// A gRPC status as the user should read it: the daemon's message, with the code when it adds
/// something.
fn status(e: tonic::Status) -> anyhow::Error {
    match e.code() {
        tonic::Code::Unknown | tonic::Code::Internal => anyhow::anyhow!("daemon: {}", e.message()),
        code => anyhow::anyhow!("daemon: {} ({code:?})", e.message()),
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    let p = std::path::absolute(p).with_context(|| format!("{}", p.display()))?;
    Ok(p.canonicalize().unwrap_or(p))
}

fn prefetch(p: PrefetchPolicy) -> proto::Prefetch {
    match p {
        PrefetchPolicy::None => proto::Prefetch::None,
        PrefetchPolicy::Table => proto::Prefetch::Table,
        PrefetchPolicy::All => proto::Prefetch::All,
    }
}

/// Mount options the user gave on the command line (the daemon's defaults fill the rest).
pub struct MountFlags {
    /// `--prefetch`.
    pub prefetch: Option<PrefetchPolicy>,
    /// `--readahead-mib`.
    pub readahead_mib: Option<u64>,
    /// `--force`.
    pub force: bool,
    /// `--allow-other`.
    pub allow_other: bool,
    /// `--suid`.
    pub suid: bool,
    /// `--dev`.
    pub dev: bool,
    /// `--container-rootfs`.
    pub container_rootfs: bool,
}

/// Ask the daemon to mount `image` at `mp`; returns once the mount is ready.
pub fn mount(
    rt: &tokio::runtime::Runtime,
    mut c: Client,
    image: &ImageSource,
    mp: &Path,
    options: &MountFlags,
) -> anyhow::Result<ExitCode> {
    let image_field = match image {
        ImageSource::Registry(r) => proto::mount_request::Image::Registry(proto::RegistryImage {
            reference: r.clone(),
        }),
        ImageSource::Local {
            bootstrap,
            blob_dir,
        } => proto::mount_request::Image::Local(proto::LocalImage {
            bootstrap: absolute(bootstrap)?.display().to_string(),
            blob_dir: absolute(blob_dir)?.display().to_string(),
        }),
    };
    let mp = absolute(mp)?;
    let req = proto::MountRequest {
        mountpoint: mp.display().to_string(),
        image: Some(image_field),
        options: Some(proto::MountOptions {
            prefetch: options
                .prefetch
                .map(prefetch)
                .unwrap_or(proto::Prefetch::Unspecified) as i32,
            readahead_mib: options
                .readahead_mib
                .map(|m| m.min(u64::from(u32::MAX)) as u32),
            force: options.force,
            allow_other: options.allow_other,
            suid: options.suid,
            dev: options.dev,
            container_rootfs: options.container_rootfs,
        }),
    };
    let reply = rt.block_on(c.mount(req)).map_err(status)?.into_inner();
    let m = reply.mount.unwrap_or_default();
    if m.offline {
        eprintln!(
            "dfagent: registry unreachable; the daemon serves the stored copy of {}",
            m.image
        );
    }
    eprintln!(
        "dfagent: mounted {} at {} (served by the daemon)",
        m.image, m.mountpoint
    );
    Ok(ExitCode::SUCCESS)
}

/// Ask the daemon to unmount `mp`. `Ok(None)` when the daemon does not serve it.
pub fn umount(
    rt: &tokio::runtime::Runtime,
    mut c: Client,
    mp: &Path,
    lazy: bool,
) -> anyhow::Result<Option<ExitCode>> {
    let req = proto::UmountRequest {
        mountpoint: absolute(mp)?.display().to_string(),
        lazy,
    };
    match rt.block_on(c.umount(req)) {
        Ok(_) => Ok(Some(ExitCode::SUCCESS)),
        Err(e) if e.code() == tonic::Code::NotFound => Ok(None),
        Err(e) => Err(status(e)),
    }
}

/// Pull through the daemon, showing its progress.
pub fn pull(
    rt: &tokio::runtime::Runtime,
    mut c: Client,
    reference: &str,
) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let bar = crate::pull::progress_bar(false, crate::pull::PULL_BAR);
    let last = rt.block_on(async {
        let mut stream = c
            .pull(proto::PullRequest {
                reference: reference.to_string(),
            })
            .await
            .map_err(status)?
            .into_inner();
        let mut last = None;
        while let Some(p) = stream.message().await.map_err(status)? {
            bar.set_length(p.total_bytes);
            bar.set_position(p.done_bytes);
            let finished = p.finished;
            last = Some(p);
            if finished {
                break;
            }
        }
        anyhow::Ok(last)
    })?;
    bar.finish_and_clear();
    let Some(p) = last.filter(|p| p.finished) else {
        bail!("the daemon ended the pull of {reference} without finishing it");
    };
    Ok(crate::pull::finish(
        &format!(
            "dfagent: pulled {reference} through the daemon: {} chunks",
            p.total_chunks
        ),
        started,
        p.failed_chunks,
    ))
}

/// `dfagent ps`: the daemon's mounts.
pub fn ps(rt: &tokio::runtime::Runtime, mut c: Client, json: bool) -> anyhow::Result<ExitCode> {
    let mounts = rt
        .block_on(c.list_mounts(proto::ListMountsRequest {}))
        .map_err(status)?
        .into_inner()
        .mounts;
    if json {
        let list: Vec<serde_json::Value> = mounts
            .iter()
            .map(|m| {
                serde_json::json!({
                    "image": m.image,
                    "image_digest": m.image_digest,
                    "mountpoint": m.mountpoint,
                    "state": m.state,
                    "fetched": m.fetched.iter().map(|t| serde_json::json!({
                        "tier": t.tier, "bytes": t.bytes, "chunks": t.chunks,
                    })).collect::<Vec<_>>(),
                    "chunks_cached": m.chunks_cached,
                    "chunks_total": m.chunks_total,
                    "prefetch": {
                        "state": m.prefetch_state,
                        "done_bytes": m.prefetch_done_bytes,
                        "total_bytes": m.prefetch_total_bytes,
                    },
                    "mounted_at": m.mounted_at,
                    "offline": m.offline,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:<30} {:<9} {:<28} {:>15} PREFETCH",
        "IMAGE", "MOUNTPOINT", "STATE", "FETCHED", "CHUNKS CACHED"
    );
    for m in &mounts {
        let fetched: Vec<String> = m
            .fetched
            .iter()
            .filter(|t| t.bytes > 0)
            .map(|t| format!("{}={}", t.tier, t.bytes))
            .collect();
        let prefetch = if m.prefetch_total_bytes > 0 {
            format!(
                "{} {}/{}",
                m.prefetch_state, m.prefetch_done_bytes, m.prefetch_total_bytes
            )
        } else {
            m.prefetch_state.clone()
        };
        println!(
            "{:<40} {:<30} {:<9} {:<28} {:>15} {}",
            m.image,
            m.mountpoint,
            m.state,
            if fetched.is_empty() {
                "-".to_string()
            } else {
                fetched.join(",")
            },
            format!("{}/{}", m.chunks_cached, m.chunks_total),
            prefetch
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `dfagent peers`: the daemon's peer id, its listen and advertised addresses, and the peers it
/// knows, with bytes exchanged and ban state.
pub fn peers(rt: &tokio::runtime::Runtime, mut c: Client, json: bool) -> anyhow::Result<ExitCode> {
    let p = rt
        .block_on(c.peers(proto::PeersRequest {}))
        .map_err(status)?
        .into_inner();
    if json {
        let peers: Vec<serde_json::Value> = p
            .peers
            .iter()
            .map(|i| {
                serde_json::json!({
                    "peer_id": i.peer_id,
                    "addrs": i.addrs,
                    "connected": i.connected,
                    "bytes_in": i.bytes_in,
                    "bytes_out": i.bytes_out,
                    "chunks_in": i.chunks_in,
                    "chunks_out": i.chunks_out,
                    "banned_seconds": i.banned_seconds,
                })
            })
            .collect();
        let out = serde_json::json!({
            "enabled": p.enabled,
            "peer_id": p.peer_id,
            "private": p.private,
            "listen": p.listen,
            "advertised": p.advertised,
            "peers": peers,
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    if !p.enabled {
        println!(
            "the peer network is off (set [peer] enable = true in the daemon's configuration)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("peer id:    {}", p.peer_id);
    println!(
        "network:    {}",
        if p.private {
            "private (cluster secret)"
        } else {
            "open (no cluster secret)"
        }
    );
    println!("listen:     {}", p.listen.join(" "));
    println!("advertised: {}", p.advertised.join(" "));
    println!();
    println!(
        "{:<54} {:<9} {:>12} {:>12} {:>10} ADDRESSES",
        "PEER", "STATE", "BYTES IN", "BYTES OUT", "BANNED"
    );
    for i in &p.peers {
        println!(
            "{:<54} {:<9} {:>12} {:>12} {:>10} {}",
            i.peer_id,
            if i.connected { "connected" } else { "known" },
            i.bytes_in,
            i.bytes_out,
            if i.banned_seconds > 0 {
                format!("{}s", i.banned_seconds)
            } else {
                "-".into()
            },
            i.addrs.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
