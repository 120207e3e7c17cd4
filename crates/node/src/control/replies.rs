//! The store's and the peer network's answers in the control API's words, shared by the daemon's
//! service and the CLI when it works on a store in-process, so both print the same.

use dfagent_store::{Store, StoreError, VerifyReport};

use super::proto;

/// What `cache stat` shows of `store`.
pub fn cache_stat(store: &Store) -> Result<proto::CacheStatReply, StoreError> {
    let st = store.stats();
    let images = store.pinned_images()?;
    Ok(proto::CacheStatReply {
        path: store.path().display().to_string(),
        chunks: st.chunks,
        bytes: st.bytes,
        capacity_bytes: st.capacity,
        pinned_images: images.len() as u64,
        pinned_chunks: st.pinned_chunks,
        evictions: st.evictions,
        images: images.len() as u64,
        pinned_bytes: st.pinned_bytes,
        image_names: images,
    })
}

/// What `cache verify` shows of a verification.
pub fn cache_verify(r: &VerifyReport) -> proto::CacheVerifyReply {
    proto::CacheVerifyReply {
        checked: r.checked,
        bad: r.removed.len() as u64,
        bad_digests: r
            .removed
            .iter()
            .map(|(d, why)| format!("{d}: {why}"))
            .collect(),
    }
}

/// What `dfagent peers` shows of a running peer network.
pub fn peers(s: &dfagent_peer::PeerStatus) -> proto::PeersReply {
    proto::PeersReply {
        enabled: true,
        peer_id: s.peer_id.clone(),
        listen: s.listen.clone(),
        advertised: s.advertised.clone(),
        private: s.private,
        peers: s
            .peers
            .iter()
            .map(|p| proto::PeerInfo {
                peer_id: p.id.clone(),
                addrs: p.addrs.clone(),
                connected: p.connected,
                bytes_in: p.bytes_in,
                bytes_out: p.bytes_out,
                chunks_in: p.chunks_in,
                chunks_out: p.chunks_out,
                banned_seconds: p.banned_for.map(|d| d.as_secs().max(1)).unwrap_or(0),
            })
            .collect(),
    }
}
