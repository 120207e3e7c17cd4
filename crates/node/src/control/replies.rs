//! The store's answers in the control API's words, shared by the daemon's service and the CLI
//! when it works on a store in-process, so both print the same.

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
