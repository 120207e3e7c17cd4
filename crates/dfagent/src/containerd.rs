//! `dfagent containerd ...`: containerd helpers for the dfagent snapshotter.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dfagent_node::snapshotter::{pull, PullOptions, DEFAULT_NAMESPACE, DEFAULT_SNAPSHOTTER};

use crate::node_args::{ConfigArgs, RegistryArgs};

/// containerd commands.
#[derive(clap::Subcommand)]
pub enum ContainerdCmd {
    /// Pull a Nydus image for the dfagent snapshotter through containerd's API, labelling its
    /// layers as containerd's CRI plugin does for remote snapshotters (Debian's `ctr image pull`
    /// does not), so that `ctr -n NS run --snapshotter dfagent REF ...` starts it lazily: only
    /// the manifest and config are downloaded. Ordinary OCI images are pulled with
    /// `ctr image pull --snapshotter dfagent`.
    Pull {
        /// The image reference, e.g. localhost:5000/app:v1.
        image: String,
        /// containerd's socket.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        address: PathBuf,
        /// containerd namespace (Kubernetes' is k8s.io).
        #[arg(long, short = 'n', default_value = DEFAULT_NAMESPACE)]
        namespace: String,
        /// The snapshotter's name in containerd's proxy_plugins.
        #[arg(long, default_value = DEFAULT_SNAPSHOTTER)]
        snapshotter: String,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ContainerdCmd, config: &ConfigArgs) -> anyhow::Result<ExitCode> {
    match cmd {
        ContainerdCmd::Pull {
            image,
            address,
            namespace,
            snapshotter,
            registry,
            json,
        } => {
            let reg = registry.registry(config)?;
            let rt = dfagent_node::runtime()?;
            let opts = PullOptions {
                address,
                namespace,
                snapshotter,
            };
            let r = rt.block_on(pull(&reg, &image, &opts)).with_context(|| {
                format!("pulling {image} for the {} snapshotter", opts.snapshotter)
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "image": r.name,
                        "manifest_digest": r.manifest_digest,
                        "namespace": opts.namespace,
                        "snapshotter": opts.snapshotter,
                        "layers": r.layers,
                        "prepared": r.prepared,
                        "chain_id": r.chain_id,
                        "seconds": r.elapsed.as_secs_f64(),
                    })
                );
            } else {
                println!(
                    "pulled {} ({}) for the {} snapshotter in namespace {}: {} layers, {} new, \
                     {:.2} s; no layer was downloaded",
                    r.name,
                    r.manifest_digest,
                    opts.snapshotter,
                    opts.namespace,
                    r.layers,
                    r.prepared,
                    r.elapsed.as_secs_f64()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
