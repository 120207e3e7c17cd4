//! [`Node`]: the subsystems of one node wired together — the chunk store, the registry client,
//! the resolver core every mount shares, and the runtime everything runs on.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use dfagent_registry::{Registry, RegistryConfig};
use dfagent_resolver::{ResolverConfig, ResolverCore};
use dfagent_store::{Store, StoreConfig, StoreError, StoreTier};

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

impl NodeConfig {
    /// Defaults everywhere, with a store at `path` (its defaults too).
    pub fn with_store_at(path: PathBuf) -> Self {
        Self {
            store: Some(StoreSettings {
                path,
                ..StoreSettings::default()
            }),
            ..Self::default()
        }
    }
}

/// One node's subsystems. Cheap to share (`Arc`); every mount, pull and push of the node goes
/// through one.
pub struct Node {
    config: NodeConfig,
    store: Option<Arc<Store>>,
    /// Why the configured store could not be opened (the node then runs without one).
    store_unavailable: Option<String>,
    core: Arc<ResolverCore>,
    /// Built on first use: loading TLS roots costs time a local mount should not pay.
    registry: Mutex<Option<Arc<Registry>>>,
    pins: Arc<Pins>,
    rt: tokio::runtime::Handle,
    /// The peer network, once started (the daemon's).
    peer: OnceLock<dfagent_peer::Peer>,
    /// The Dragonfly client, once started.
    dragonfly: OnceLock<Arc<dfagent_scheduler_client::Dragonfly>>,
}

impl Node {
    /// Open the node's subsystems (the store, if configured, is opened and owned now), running
    /// async work on `rt`.
    ///
    /// A store that cannot be used does not stop the node, as a cache must not: a corrupt
    /// database is set aside (renamed `<dir>.corrupt-<unix time>`, logged) and an empty one
    /// opened; a store that still cannot be opened (a full disk, a permission) leaves the node
    /// without one, logged, serving every read from the registry. Only a store owned by
    /// another process is an error (two owners would corrupt it).
    pub fn open(config: NodeConfig, rt: tokio::runtime::Handle) -> Result<Arc<Self>> {
        let (store, store_unavailable) = match &config.store {
            Some(s) => match open_store(s)? {
                Ok(store) => (Some(Arc::new(store)), None),
                Err(reason) => (None, Some(reason)),
            },
            None => (None, None),
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
            store_unavailable,
            core,
            registry: Mutex::new(None),
            pins: Arc::new(Pins::default()),
            rt,
            peer: OnceLock::new(),
            dragonfly: OnceLock::new(),
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
        self.store
            .as_ref()
            .ok_or_else(|| match &self.store_unavailable {
                Some(reason) => NodeError::Unsupported(format!(
                    "the node runs without its chunk store, which could not be opened: {reason}"
                )),
                None => NodeError::Unsupported(
                    "this node has no chunk store (opened for local images)".into(),
                ),
            })
    }

    /// Why the configured chunk store could not be opened, if it could not (the node serves
    /// without it).
    pub fn store_unavailable(&self) -> Option<&str> {
        self.store_unavailable.as_deref()
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

    /// The peer network, if it runs.
    pub fn peer(&self) -> Option<&dfagent_peer::Peer> {
        self.peer.get()
    }

    /// The Dragonfly client, if it runs.
    pub fn dragonfly(&self) -> Option<&Arc<dfagent_scheduler_client::Dragonfly>> {
        self.dragonfly.get()
    }

    /// Keep the started Dragonfly client (`Err` gives it back if one is kept already).
    pub(crate) fn set_dragonfly(
        &self,
        d: Arc<dfagent_scheduler_client::Dragonfly>,
    ) -> std::result::Result<(), Arc<dfagent_scheduler_client::Dragonfly>> {
        self.dragonfly.set(d)
    }

    /// Keep the started peer network (`Err` gives it back if one is kept already).
    pub(crate) fn set_peer(&self, peer: dfagent_peer::Peer) -> Result<(), dfagent_peer::Peer> {
        self.peer.set(peer)
    }

    /// Wait until every verified chunk queued for the store is written.
    pub async fn flush(&self) {
        self.core.flush().await;
    }
}

/// Most threads of the runtime's blocking pool (store reads, file I/O, peer-side verification).
/// Tokio's default of 512 lets 64 concurrent readers spread store reads over dozens of threads,
/// each with its own stack and malloc cache, for no gain on a 2–8 core node.
pub const MAX_BLOCKING_THREADS: usize = 32;

/// The multi-threaded runtime a node runs on (named `dfagent-io` threads).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_name("dfagent-io")
        .enable_all()
        .build()
}

/// Open the configured store: `Ok(Ok(store))`, `Ok(Err(reason))` when the node must run
/// without one, `Err` when another process owns it.
fn open_store(s: &StoreSettings) -> Result<std::result::Result<Store, String>> {
    let first = match Store::open(&s.path, s.config.clone()) {
        Ok(store) => return Ok(Ok(store)),
        Err(e @ StoreError::Locked { .. }) => return Err(e.into()),
        Err(e) => e,
    };
    if first.is_corruption() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut aside = s.path.clone().into_os_string();
        aside.push(format!(".corrupt-{secs}"));
        let aside = PathBuf::from(aside);
        match std::fs::rename(&s.path, &aside) {
            Ok(()) => {
                tracing::error!(
                    store = %s.path.display(),
                    set_aside = %aside.display(),
                    error = %first,
                    "the chunk store's database is corrupt: set aside (delete it when done \
                     looking), starting an empty store; chunks will be fetched again"
                );
                match Store::open(&s.path, s.config.clone()) {
                    Ok(store) => return Ok(Ok(store)),
                    Err(e @ StoreError::Locked { .. }) => return Err(e.into()),
                    Err(e) => return Ok(Err(unusable(s, &e))),
                }
            }
            Err(e) => {
                tracing::error!(store = %s.path.display(), error = %e, "cannot set the corrupt chunk store aside");
            }
        }
    }
    Ok(Err(unusable(s, &first)))
}

/// Log that the node runs without its store, and say why.
fn unusable(s: &StoreSettings, e: &StoreError) -> String {
    tracing::error!(
        store = %s.path.display(),
        error = %e,
        "the chunk store cannot be opened: serving without it (every read goes to the \
         registry, nothing is stored, pulls fail) until it can"
    );
    format!("{}: {e}", s.path.display())
}
