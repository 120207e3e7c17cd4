//! Command-line options that set configuration keys, and the configuration they make: the
//! file (`--config`, default /etc/dfagent/config.toml), then `DFAGENT_<SECTION>__<KEY>`
//! variables, then these flags, over the built-in defaults.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use dfagent_node::config::{Config, Overrides};
use dfagent_node::{Node, NodeConfig};
use dfagent_store::Store;

/// Options every command that reads the configuration shares.
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigArgs {
    /// The configuration file (default /etc/dfagent/config.toml; a missing default file means
    /// the built-in defaults).
    #[arg(long, global = true, env = "DFAGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log line format: `text` or `json` (the `log.format` key).
    #[arg(long, global = true, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

/// Where the chunk store lives and how big it may grow.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// Directory of the node's chunk store (`store.path`, default /var/lib/dfagent/store).
    #[arg(long, env = "DFAGENT_STORE")]
    pub store: Option<PathBuf>,
    /// Most chunk data the store keeps (e.g. 500M, 20G; `store.capacity`, default 10G); least
    /// recently used chunks are evicted, chunks of mounted images last.
    #[arg(long)]
    pub cache_capacity: Option<String>,
    /// Never evict chunks of pinned (mounted or pulled) images; fail to store new chunks
    /// instead (`store.evict_pinned = false`).
    #[arg(long)]
    pub never_evict_pinned: bool,
}

impl StoreArgs {
    /// The configuration keys these flags set.
    pub fn overrides(&self, mut o: Overrides) -> Overrides {
        if let Some(p) = &self.store {
            o = o.set("--store", "store.path", p);
        }
        if let Some(c) = &self.cache_capacity {
            o = o.set("--cache-capacity", "store.capacity", c);
        }
        if self.never_evict_pinned {
            o = o.set("--never-evict-pinned", "store.evict_pinned", false);
        }
        o
    }
}

/// Options of every command that talks to a registry.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// Registry (HOST[:PORT]) to reach over plain HTTP (`registry.hosts."HOST".plain_http`);
    /// localhost and 127.0.0.0/8 always are.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure: Vec<String>,
    /// PEM file of extra CA certificates for HTTPS registries (`registry.ca_file`).
    #[arg(long)]
    pub registry_ca: Option<PathBuf>,
    /// Docker config.json with registry credentials (`registry.docker_config`; default:
    /// $DOCKER_CONFIG/config.json or ~/.docker/config.json).
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
}

impl RegistryArgs {
    /// The configuration keys these flags set.
    pub fn overrides(&self, mut o: Overrides) -> Overrides {
        for host in &self.insecure {
            o = o.set_path(
                "--insecure-registry",
                &["registry", "hosts", host, "plain_http"],
                true,
            );
        }
        if let Some(p) = &self.registry_ca {
            o = o.set("--registry-ca", "registry.ca_file", p);
        }
        if let Some(p) = &self.docker_config {
            o = o.set("--docker-config", "registry.docker_config", p);
        }
        o
    }

    /// A registry client with the configuration these flags complete.
    pub fn registry(&self, config: &ConfigArgs) -> anyhow::Result<Arc<dfagent_registry::Registry>> {
        let c = load(config, self.overrides(Overrides::new()))?;
        Ok(Arc::new(dfagent_registry::Registry::new(
            c.registry_config(),
        )?))
    }
}

/// Load the configuration with `overrides` (the command's flags) on top.
pub fn load(args: &ConfigArgs, overrides: Overrides) -> anyhow::Result<Config> {
    let overrides = match &args.log_format {
        Some(f) => overrides.set("--log-format", "log.format", f),
        None => overrides,
    };
    Ok(Config::load(args.config.as_deref(), &overrides)?)
}

/// Open the store of `config`, naming the owner if another process holds it.
pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    let settings = config.to_node_config().store.unwrap_or_default();
    Store::open(&settings.path, settings.config)
        .with_context(|| format!("opening the chunk store {}", settings.path.display()))
}

/// Open a node of `config` on `rt`; `with_store: false` leaves the store alone (a local
/// image needs none, and must not take the store from its owner).
pub fn open_node(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    with_store: bool,
) -> anyhow::Result<Arc<Node>> {
    let mut nc: NodeConfig = config.to_node_config();
    if !with_store {
        nc.store = None;
    }
    let path = nc.store.as_ref().map(|s| s.path.display().to_string());
    Node::open(nc, rt.handle().clone()).with_context(|| match path {
        Some(p) => format!("opening the node (chunk store {p})"),
        None => "opening the node".to_string(),
    })
}
