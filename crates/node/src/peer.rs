//! The node's place in the peer network: starting it on the daemon's runtime, serving from the
//! store, providing every blob the store holds (and withdrawing blobs it no longer holds), and
//! the peer tier in every registry image's chain between the store and the registry.

use std::sync::Arc;

use dfagent_core::{
    answer_all, Answer, BoxFuture, ChunkRef, ChunkStore, ChunkTier, Slot, StoredChunk, TierError,
    TierErrorKind,
};
use dfagent_peer::{Peer, PeerConfig};
use dfagent_store::{BlobEvent, Store, StoreTier};

use crate::error::{NodeError, Result};
use crate::node::Node;

impl Node {
    /// Start the peer network with `config` (once; the daemon does it when `[peer] enable` is
    /// set). The node serves peers from its store (nothing without one), provides every blob
    /// the store holds now, and from now on provides a blob when its first chunk is stored and
    /// withdraws it when its last chunk is gone.
    pub async fn start_peer(&self, config: PeerConfig) -> Result<()> {
        if self.peer().is_some() {
            return Err(NodeError::Unsupported(
                "the peer network is already running".into(),
            ));
        }
        let serve: Arc<dyn ChunkStore> = match self.store() {
            Some(store) => Arc::new(ServeFromStore(StoreTier::new(store.clone()))),
            None => Arc::new(NothingToServe),
        };
        let peer = Peer::start(config, serve).await?;
        if let Some(store) = self.store() {
            let announcer = peer.clone();
            store.set_blob_listener(Some(Arc::new(move |event| match event {
                BlobEvent::Held(blob) => announcer.provide(blob),
                BlobEvent::Gone(blob) => announcer.withdraw(blob),
            })));
            let blobs = store.blobs();
            tracing::info!(blobs = blobs.len(), "providing the store's blobs to peers");
            for blob in blobs {
                peer.provide(blob);
            }
        }
        let status = peer.status();
        tracing::info!(peer_id = %status.peer_id, listen = ?status.listen,
            advertised = ?status.advertised, "peer network started");
        if self.set_peer(peer).is_err() {
            return Err(NodeError::Unsupported(
                "the peer network is already running".into(),
            ));
        }
        Ok(())
    }

    /// Stop serving and asking peers (daemon shutdown).
    pub async fn stop_peer(&self) {
        if let Some(store) = self.store() {
            store.set_blob_listener(None);
        }
        if let Some(peer) = self.peer() {
            peer.shutdown().await;
        }
    }

    /// The tiers a registry image is read through before the registry itself: the peer tier
    /// when the peer network runs.
    pub(crate) fn tiers_before_registry(&self) -> Vec<Arc<dyn ChunkTier>> {
        self.peer().map(|p| p.tier()).into_iter().collect()
    }
}

/// What the peer network serves from: the store, read **inline** in `fetch`'s future. The peer
/// node polls that future on its serve threads (lowered CPU and I/O priority), so the RocksDB
/// reads for peers run there, below the node's own reads — which go through [`StoreTier`] and
/// tokio's blocking pool at normal priority. Not for use on the runtime's workers.
struct ServeFromStore(StoreTier);

impl ServeFromStore {
    fn store(&self) -> &Arc<Store> {
        self.0.store()
    }
}

impl ChunkTier for ServeFromStore {
    fn name(&self) -> &str {
        "store"
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let answers: Vec<Answer> = slots
                .iter()
                .map(|s| match self.store().get(&s.chunk().digest) {
                    Ok(Some(v)) => Answer::Found(StoredChunk {
                        data: v.data,
                        compression: v.compression,
                    }),
                    Ok(None) => Answer::Missing,
                    Err(e) => {
                        Answer::Failed(TierError::new("store", TierErrorKind::Io, e.to_string()))
                    }
                })
                .collect();
            answer_all(slots, answers);
        })
    }
}

impl ChunkStore for ServeFromStore {
    fn put(&self, chunk: &ChunkRef, stored: &StoredChunk) -> Result<(), TierError> {
        self.0.put(chunk, stored)
    }

    fn reject(&self, chunk: &ChunkRef, detail: &str) {
        self.0.reject(chunk, detail)
    }
}

/// What a node without a store serves to peers: nothing.
struct NothingToServe;

impl ChunkTier for NothingToServe {
    fn name(&self) -> &str {
        "store"
    }

    fn fetch<'a>(&'a self, _slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

impl ChunkStore for NothingToServe {
    fn put(&self, _chunk: &ChunkRef, _stored: &StoredChunk) -> Result<(), TierError> {
        Ok(())
    }

    fn reject(&self, _chunk: &ChunkRef, _detail: &str) {}
}
