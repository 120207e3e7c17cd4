//! [`Node`]: the subsystems of one node wired together — the chunk store, the registry client,
//! the resolver core every mount shares, and the runtime everything runs on.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dfagent_registry::{Registry, RegistryConfig};
use dfagent_resolver::{ResolverConfig, ResolverCore};
use dfagent_store::{Store, StoreConfig, StoreTier};

use crate::error::{NodeError, Result};
use crate::pins::Pins;

/// Where the node keeps its chunk store and how it behaves.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// Directory of the store (RocksDB).
    pub path: PathBuf,
    /// Capacity and eviction policy.
    pub config: StoreConfig,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/dfagent/store"),
            config: StoreConfig::default(),
        }
    }
}

/// Everything a node is configured with.
#[derive(Clone, Debug, Default)]
pub struct NodeConfig {
    /// The chunk store (`None`: a node without a store, which mounts local images only).
    pub store: Option<StoreSettings>,
    /// The registry client.
    pub registry: RegistryConfig,
    /// The resolver: decoded-chunk cache, tier concurrency, retries, write-back queue.
    pub resolver: ResolverConfig,
}

/// One node's subsystems. Cheap to share (`Arc`); every mount, pull and push of the node goes
/// through one.
pub struct Node {
    config: NodeConfig,
    store: Option<Arc<Store>>,
    core: Arc<ResolverCore>,
    /// Built on first use: loading TLS roots costs time a local mount should not pay.
    registry: Mutex<Option<Arc<Registry>>>,
    pins: Arc<Pins>,
    rt: tokio::runtime::Handle,
}

impl Node {
    /// Open the node's subsystems (the store, if configured, is opened and owned now), running
    /// async work on `rt`.
    pub fn open(config: NodeConfig, rt: tokio::runtime::Handle) -> Result<Arc<Self>> {
        let store = match &config.store {
            Some(s) => Some(Arc::new(Store::open(&s.path, s.config.clone())?)),
            None => None,
        };
        let core = match &store {
            Some(s) => ResolverCore::with_store(
                Arc::new(StoreTier::new(s.clone())),
                config.resolver.clone(),
            )
            .map_err(|e| NodeError::io("starting the store writer", e))?,
            None => ResolverCore::without_store(config.resolver.clone()),
        };
        Ok(Arc::new(Self {
            config,
            store,
            core,
            registry: Mutex::new(None),
            pins: Arc::new(Pins::default()),
            rt,
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The chunk store, if the node has one.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// The chunk store, or an error saying the node has none.
    pub fn require_store(&self) -> Result<&Arc<Store>> {
        self.store.as_ref().ok_or_else(|| {
            NodeError::Unsupported("this node has no chunk store (opened for local images)".into())
        })
    }

    /// The resolver core every mount of the node shares.
    pub fn resolver_core(&self) -> &Arc<ResolverCore> {
        &self.core
    }

    /// Pins of the images open on this node.
    pub fn pins(&self) -> &Arc<Pins> {
        &self.pins
    }

    /// The runtime the node's async work runs on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    /// The registry client (built on first use).
    pub fn registry(&self) -> Result<Arc<Registry>> {
        let mut r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reg) = &*r {
            return Ok(reg.clone());
        }
        let reg = Arc::new(Registry::new(self.config.registry.clone())?);
        *r = Some(reg.clone());
        Ok(reg)
    }

    /// Wait until every verified chunk queued for the store is written.
    pub async fn flush(&self) {
        self.core.flush().await;
    }
}

/// The multi-threaded runtime a node runs on (named `dfagent-io` threads).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("dfagent-io")
        .enable_all()
        .build()
}
