//! containerd's snapshots gRPC service (`containerd.services.snapshots.v1.Snapshots`, what a
//! `proxy_plugins` entry of type `snapshot` calls) over a [`Snapshotter`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use containerd_client::services::v1::snapshots as api;
use containerd_client::types::Mount;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::filter::Filters;
use crate::meta::Kind;
use crate::snapshotter::{Info, MountSpec, Snapshotter};

#[allow(missing_docs, clippy::all)]
mod generated {
    include!(concat!(
        env!("OUT_DIR"),
        "/containerd.services.snapshots.v1.Snapshots.rs"
    ));
}

pub use generated::snapshots_server::SnapshotsServer;

/// `google.protobuf.Empty` (prost's `()`), named so the generated server can use it.
pub(crate) type Empty = ();

/// Infos per streamed `List` answer.
const LIST_BATCH: usize = 100;

/// The service; one per daemon.
#[derive(Clone)]
pub struct SnapshotService {
    inner: Arc<Snapshotter>,
}

impl SnapshotService {
    /// The service over `snapshotter`.
    pub fn new(snapshotter: Arc<Snapshotter>) -> Self {
        Self { inner: snapshotter }
    }

    /// The tonic server to add to a router.
    pub fn server(self) -> SnapshotsServer<Self> {
        SnapshotsServer::new(self)
            .max_decoding_message_size(4 << 20)
            .max_encoding_message_size(16 << 20)
    }
}

fn mounts(m: Vec<MountSpec>) -> Vec<Mount> {
    m.into_iter()
        .map(|m| Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn sorted(l: HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

fn ts(nanos: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

fn to_api(i: Info) -> api::Info {
    api::Info {
        name: i.name,
        parent: i.parent,
        kind: match i.kind {
            Kind::Active => api::Kind::Active,
            Kind::View => api::Kind::View,
            Kind::Committed => api::Kind::Committed,
        } as i32,
        created_at: Some(ts(i.created)),
        updated_at: Some(ts(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

/// Runs a blocking snapshotter call (directory work, table sync) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("snapshotter task: {e}")))?
        .map_err(Status::from)
}

#[tonic::async_trait]
impl generated::snapshots_server::Snapshots for SnapshotService {
    async fn prepare(
        &self,
        r: Request<api::PrepareSnapshotRequest>,
    ) -> Result<Response<api::PrepareSnapshotResponse>, Status> {
        let r = r.into_inner();
        debug!(key = %r.key, parent = %r.parent, "Prepare");
        let m = self
            .inner
            .prepare(&r.key, &r.parent, sorted(r.labels), false)
            .await?;
        Ok(Response::new(api::PrepareSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn view(
        &self,
        r: Request<api::ViewSnapshotRequest>,
    ) -> Result<Response<api::ViewSnapshotResponse>, Status> {
        let r = r.into_inner();
        debug!(key = %r.key, parent = %r.parent, "View");
        let m = self
            .inner
            .prepare(&r.key, &r.parent, sorted(r.labels), true)
            .await?;
        Ok(Response::new(api::ViewSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn mounts(
        &self,
        r: Request<api::MountsRequest>,
    ) -> Result<Response<api::MountsResponse>, Status> {
        let m = self.inner.mounts(&r.into_inner().key).await?;
        Ok(Response::new(api::MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(&self, r: Request<api::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        debug!(name = %r.name, key = %r.key, "Commit");
        let s = Arc::clone(&self.inner);
        blocking(move || s.commit(&r.name, &r.key, sorted(r.labels))).await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, r: Request<api::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let key = r.into_inner().key;
        debug!(%key, "Remove");
        self.inner.remove(&key).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        r: Request<api::StatSnapshotRequest>,
    ) -> Result<Response<api::StatSnapshotResponse>, Status> {
        let info = self.inner.stat(&r.into_inner().key)?;
        Ok(Response::new(api::StatSnapshotResponse {
            info: Some(to_api(info)),
        }))
    }

    async fn update(
        &self,
        r: Request<api::UpdateSnapshotRequest>,
    ) -> Result<Response<api::UpdateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("Update without info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let s = Arc::clone(&self.inner);
        let updated = blocking(move || {
            s.update(
                Info {
                    name: info.name,
                    parent: info.parent,
                    kind: Kind::Committed,
                    created: 0,
                    updated: 0,
                    labels: sorted(info.labels),
                },
                &paths,
            )
        })
        .await?;
        Ok(Response::new(api::UpdateSnapshotResponse {
            info: Some(to_api(updated)),
        }))
    }

    type ListStream =
        futures::stream::Iter<std::vec::IntoIter<Result<api::ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        r: Request<api::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let filters = Filters::parse(&r.into_inner().filters)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let infos = self.inner.list(&filters);
        let batches: Vec<_> = infos
            .chunks(LIST_BATCH)
            .map(|c| {
                Ok(api::ListSnapshotsResponse {
                    info: c.iter().cloned().map(to_api).collect(),
                })
            })
            .collect();
        Ok(Response::new(futures::stream::iter(batches)))
    }

    async fn usage(
        &self,
        r: Request<api::UsageRequest>,
    ) -> Result<Response<api::UsageResponse>, Status> {
        let key = r.into_inner().key;
        let s = Arc::clone(&self.inner);
        let (size, inodes) = blocking(move || s.usage(&key)).await?;
        Ok(Response::new(api::UsageResponse { size, inodes }))
    }

    async fn cleanup(&self, _r: Request<api::CleanupRequest>) -> Result<Response<()>, Status> {
        self.inner.cleanup().await?;
        Ok(Response::new(()))
    }
}
