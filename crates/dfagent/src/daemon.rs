//! `dfagent daemon`: run the node agent in the foreground — one process serving every mount of
//! the node over its control socket, with metrics — until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dfagent_node::config::{Overrides, SocketGroup};
use dfagent_node::control::access::resolve_group;
use dfagent_node::daemon::{self, Daemon, DaemonSettings};
use dfagent_node::snapshotter::SnapshotterSettings;

use crate::client::DaemonArgs;
use crate::node_args::{load, open_node, ConfigArgs, RegistryArgs, StoreArgs};

/// How long shutdown may spend unmounting and flushing.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(20);

/// Arguments of `dfagent daemon` (each sets the configuration key it names).
#[derive(clap::Args)]
pub struct DaemonCmd {
    /// Group (name or gid) whose members may use the control socket besides root
    /// (`daemon.socket_group`; default: root only).
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Where to serve /metrics, /healthz and /readyz, `IP:PORT`, or `none`
    /// (`daemon.metrics_addr`, default 127.0.0.1:9464).
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Size of the in-memory cache of decoded, verified chunks shared by every mount, in MiB
    /// (`cache.decoded_mib`, default 256).
    #[arg(long)]
    pub cache_mib: Option<u64>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

impl DaemonCmd {
    fn overrides(&self, daemon: &DaemonArgs) -> Overrides {
        let mut o = daemon.overrides(
            self.registry
                .overrides(self.store.overrides(Overrides::new())),
        );
        if let Some(g) = &self.socket_group {
            o = o.set("--socket-group", "daemon.socket_group", g);
        }
        if let Some(a) = &self.metrics_addr {
            let a = if a == "none" { "" } else { a.as_str() };
            o = o.set("--metrics-addr", "daemon.metrics_addr", a);
        }
        if let Some(m) = self.cache_mib {
            o = o.set("--cache-mib", "cache.decoded_mib", m);
        }
        o
    }
}

pub fn run(
    cmd: DaemonCmd,
    daemon_args: &DaemonArgs,
    config: &ConfigArgs,
) -> anyhow::Result<ExitCode> {
    let cfg = load(config, cmd.overrides(daemon_args))?;
    daemon::tune_allocator();
    let rt = dfagent_node::runtime()?;
    // SIGINT/SIGTERM handlers in place before the socket answers, so a stop request right after
    // "ready" is a clean shutdown.
    let (mut int, mut term) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _rt = rt.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    let group = match cfg.daemon.group() {
        None => None,
        Some(SocketGroup::Id(g)) => Some(g),
        Some(SocketGroup::Name(n)) => resolve_group(&n)?,
    };
    let node = open_node(&rt, &cfg, true)?;
    if let Some(peer) = cfg.peer_config()? {
        rt.block_on(node.start_peer(peer))
            .context("starting the peer network")?;
    }
    if let Some(dragonfly) = cfg.dragonfly_config()? {
        node.start_dragonfly(dragonfly)
            .context("starting the Dragonfly client")?;
    }
    let daemon = Daemon::new(node, cfg.mount_options());
    let settings = DaemonSettings {
        socket: cfg.daemon.socket.clone(),
        socket_group: group,
        metrics_addr: cfg.daemon.metrics_addr,
        shutdown_limit: SHUTDOWN_LIMIT,
        snapshotter: cfg
            .snapshotter_paths()
            .map(|(socket, root)| SnapshotterSettings { socket, root }),
    };
    tracing::info!(
        socket = %settings.socket.display(),
        store = %cfg.store.path.display(),
        capacity = cfg.store.capacity,
        metrics = ?settings.metrics_addr,
        "daemon starting"
    );
    let socket = settings.socket.clone();
    let json_logs = cfg.log.format == dfagent_node::config::LogFormat::Json;
    let result = rt.block_on(daemon::serve(
        Arc::clone(&daemon),
        settings,
        move |metrics| {
            if json_logs {
                // Every stderr line stays a JSON object for log collectors.
                tracing::info!(socket = %socket.display(), metrics = ?metrics, "daemon ready");
            } else {
                eprintln!(
                    "dfagent: daemon ready: control socket {}{}",
                    socket.display(),
                    metrics
                        .map(|a| format!(", metrics http://{a}/metrics"))
                        .unwrap_or_default()
                );
            }
        },
        async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        },
    ));
    drop(daemon);
    rt.shutdown_timeout(Duration::from_secs(2));
    result.context("daemon")?;
    // The node library logs "daemon stopped" itself; the plain line is for terminals.
    if !json_logs {
        eprintln!("dfagent: daemon stopped");
    }
    Ok(ExitCode::SUCCESS)
}
