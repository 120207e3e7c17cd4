//! containerd's snapshotter semantics through the gRPC service, as containerd's proxy plugin
//! calls it (containerd-client's `SnapshotsClient` over a unix socket): Prepare, View, Commit,
//! Mounts on active and view snapshots, Remove with children (FailedPrecondition), Stat of a
//! missing key (NotFound), Walk (List) with filters, Update with field paths, Usage, Cleanup of
//! orphaned directories, the remote (Nydus) layer protocol, and the table surviving a reopen.
//!
//! The image mounts of Nydus layers are recorded, not made: the real mounts (FUSE through the
//! daemon) are exercised by `crates/dfagent/tests/containerd.rs` with containerd itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_client::services::v1::snapshots as api;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use dfagent_containerd::{labels, ImageMounts, SnapshotService, Snapshotter};
use futures::future::BoxFuture;
use tonic::transport::Channel;
use tonic::Code;

/// Records image mounts (and makes the directory hold a file, as a mounted image would).
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl ImageMounts for Recorder {
    fn mount<'a>(&'a self, image: &'a str, dir: &'a Path) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0.lock().unwrap().push(format!("mount {image}"));
            std::fs::write(dir.join("image"), image).map_err(|e| e.to_string())
        })
    }
    fn unmount<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0.lock().unwrap().push("unmount".into());
            let _ = std::fs::remove_file(dir.join("image"));
            Ok(())
        })
    }
}

struct Harness {
    client: SnapshotsClient<Channel>,
    server: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn serve(root: &Path, socket: &Path, rec: Arc<Recorder>) -> Harness {
    let s = Snapshotter::open(root, rec).unwrap();
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SnapshotService::new(s).server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async {
                    let _ = rx.await;
                },
            )
            .await
            .unwrap();
    });
    let channel = containerd_client::connect(socket).await.unwrap();
    Harness {
        client: SnapshotsClient::new(channel),
        server,
        stop: Some(tx),
    }
}

/// A snapshotter under a new temporary directory (`root/`, socket `s.sock`), its image mounts
/// recorded.
async fn start() -> (tempfile::TempDir, Arc<Recorder>, Harness) {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    let h = serve(
        &dir.path().join("root"),
        &dir.path().join("s.sock"),
        rec.clone(),
    )
    .await;
    (dir, rec, h)
}

impl Harness {
    async fn close(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        drop(self.client);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.server).await;
    }
}

fn labels_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn prepare(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
    parent: &str,
    l: &[(&str, &str)],
) -> Result<Vec<containerd_client::types::Mount>, tonic::Status> {
    c.prepare(api::PrepareSnapshotRequest {
        snapshotter: "dfagent".into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels_of(l),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

async fn remove(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<(), tonic::Status> {
    let r = api::RemoveSnapshotRequest {
        snapshotter: "dfagent".into(),
        key: key.into(),
    };
    c.remove(r).await.map(|_| ())
}

async fn stat(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<api::Info, tonic::Status> {
    let r = api::StatSnapshotRequest {
        snapshotter: "dfagent".into(),
        key: key.into(),
    };
    c.stat(r)
        .await
        .map(|r| r.into_inner().info.unwrap_or_default())
}

async fn usage(c: &mut SnapshotsClient<Channel>, key: &str) -> api::UsageResponse {
    let r = api::UsageRequest {
        snapshotter: "dfagent".into(),
        key: key.into(),
    };
    c.usage(r).await.unwrap().into_inner()
}

async fn mounts(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
) -> Result<Vec<containerd_client::types::Mount>, tonic::Status> {
    let r = api::MountsRequest {
        snapshotter: "dfagent".into(),
        key: key.into(),
    };
    c.mounts(r).await.map(|r| r.into_inner().mounts)
}

async fn view(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
    parent: &str,
) -> Vec<containerd_client::types::Mount> {
    let r = api::ViewSnapshotRequest {
        snapshotter: "dfagent".into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    };
    c.view(r).await.unwrap().into_inner().mounts
}

async fn commit(c: &mut SnapshotsClient<Channel>, name: &str, key: &str) {
    c.commit(api::CommitSnapshotRequest {
        snapshotter: "dfagent".into(),
        name: name.into(),
        key: key.into(),
        labels: labels_of(&[("layer", name)]),
    })
    .await
    .unwrap();
}

async fn list(c: &mut SnapshotsClient<Channel>, filters: &[&str]) -> Vec<String> {
    let mut s = c
        .list(api::ListSnapshotsRequest {
            snapshotter: "dfagent".into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    while let Some(r) = s.message().await.unwrap() {
        names.extend(r.info.into_iter().map(|i| i.name));
    }
    names.sort();
    names
}

fn opt<'a>(m: &'a containerd_client::types::Mount, prefix: &str) -> Option<&'a str> {
    m.options.iter().find_map(|o| o.strip_prefix(prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_behave_as_containerd_expects() {
    let (dir, _rec, h) = start().await;
    let root = dir.path().join("root");
    let mut c = h.client.clone();

    // Prepare with no parent: a writable bind mount of an empty directory.
    let m = prepare(&mut c, "l1-extract", "", &[]).await.unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, "bind");
    assert!(m[0].options.contains(&"rw".to_string()));
    let l1_fs = PathBuf::from(&m[0].source);
    std::fs::write(l1_fs.join("a"), vec![7u8; 10_000]).unwrap();
    // Usage of an active snapshot: measured now.
    let u = usage(&mut c, "l1-extract").await;
    assert!(u.size >= 10_000 && u.inodes == 1, "{u:?}");
    commit(&mut c, "l1", "l1-extract").await;
    // The key is gone once committed; a second prepare of an existing key is refused.
    let e = stat(&mut c, "l1-extract").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    prepare(&mut c, "l2-extract", "l1", &[]).await.unwrap();
    let e = prepare(&mut c, "l2-extract", "l1", &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    commit(&mut c, "l2", "l2-extract").await;
    let e = prepare(&mut c, "x", "nope", &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Outside input is bounded: keys, label count and size.
    let long = "k".repeat(dfagent_containerd::MAX_KEY_LEN + 1);
    for (key, l) in [
        ("", vec![]),
        (long.as_str(), vec![]),
        ("ok", vec![("big".to_string(), "v".repeat(5000))]),
    ] {
        let pairs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let e = prepare(&mut c, key, "", &pairs).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    }
    let many: Vec<(String, String)> = (0..=dfagent_containerd::MAX_LABELS)
        .map(|i| (format!("l{i}"), String::new()))
        .collect();
    let pairs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let e = prepare(&mut c, "ok", "", &pairs).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // An active snapshot on two layers: an overlay, nearest parent first.
    let m = prepare(&mut c, "ctr1", "l2", &[]).await.unwrap();
    assert_eq!(m[0].r#type, "overlay");
    let lower = opt(&m[0], "lowerdir=").unwrap();
    assert_eq!(lower.split(':').count(), 2);
    assert!(lower.split(':').nth(1).unwrap() == l1_fs.to_str().unwrap());
    assert!(opt(&m[0], "upperdir=").is_some() && opt(&m[0], "workdir=").is_some());
    // Mounts of the active snapshot: the same; of a committed one: refused.
    let again = mounts(&mut c, "ctr1").await.unwrap();
    assert_eq!(again, m);
    let e = mounts(&mut c, "l1").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // A parent that is not committed is refused.
    let e = prepare(&mut c, "y", "ctr1", &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Views: one parent is a read-only bind of it, two an overlay without upper dir.
    let v1 = view(&mut c, "view1", "l1").await;
    assert_eq!(v1[0].r#type, "bind");
    assert_eq!(v1[0].source, l1_fs.to_str().unwrap());
    assert!(v1[0].options.contains(&"ro".to_string()));
    let v2 = view(&mut c, "view2", "l2").await;
    assert_eq!(v2[0].r#type, "overlay");
    assert!(opt(&v2[0], "upperdir=").is_none());
    // A view cannot be committed.
    let e = c
        .commit(api::CommitSnapshotRequest {
            snapshotter: "dfagent".into(),
            name: "v".into(),
            key: "view1".into(),
            labels: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Remove of a snapshot with children: FailedPrecondition; of a missing one: NotFound.
    for key in ["l1", "l2"] {
        let e = remove(&mut c, key).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{key}: {e}");
    }
    let e = remove(&mut c, "missing").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Stat and Update: labels only, by field path.
    let info = stat(&mut c, "l2").await.unwrap();
    assert_eq!(info.parent, "l1");
    assert_eq!(info.kind, api::Kind::Committed as i32);
    assert_eq!(info.labels.get("layer").map(String::as_str), Some("l2"));
    let upd = |info: api::Info, paths: &[&str]| api::UpdateSnapshotRequest {
        snapshotter: "dfagent".into(),
        info: Some(info),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    let mut new = info.clone();
    new.labels = labels_of(&[("a", "1"), ("b", "2")]);
    let after = c
        .update(upd(new.clone(), &["labels.a"]))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(after.labels, labels_of(&[("layer", "l2"), ("a", "1")]));
    new.labels = labels_of(&[("b", "2")]);
    let after = c
        .update(upd(new.clone(), &["labels.a", "labels.b"]))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(after.labels, labels_of(&[("layer", "l2"), ("b", "2")]));
    let after = c
        .update(upd(new.clone(), &[]))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(
        after.labels,
        labels_of(&[("b", "2")]),
        "no paths: all labels"
    );
    let e = c.update(upd(new.clone(), &["parent"])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Walk with filters: or across filters, and within one.
    assert_eq!(
        list(&mut c, &[]).await,
        ["ctr1", "l1", "l2", "view1", "view2"]
    );
    assert_eq!(list(&mut c, &["kind==committed"]).await, ["l1", "l2"]);
    assert_eq!(
        list(&mut c, &["kind==view", "labels.b==2"]).await,
        ["l2", "view1", "view2"]
    );
    assert_eq!(list(&mut c, &["kind==committed,parent==l1"]).await, ["l2"]);
    assert_eq!(list(&mut c, &[r#"labels."layer"~="^l1$""#]).await, ["l1"]);
    assert_eq!(list(&mut c, &["name~=^view"]).await, ["view1", "view2"]);
    let e = c
        .list(api::ListSnapshotsRequest {
            snapshotter: "dfagent".into(),
            filters: vec!["kind==".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Usage of a committed snapshot: recorded at commit.
    let u = usage(&mut c, "l1").await;
    assert!(u.size >= 10_000 && u.inodes == 1, "{u:?}");

    // Cleanup removes orphaned directories (a crash between mkdir and the table) only.
    let orphan = root.join("snapshots/999");
    std::fs::create_dir_all(orphan.join("fs")).unwrap();
    c.cleanup(api::CleanupRequest {
        snapshotter: "dfagent".into(),
    })
    .await
    .unwrap();
    assert!(!orphan.exists());
    assert!(l1_fs.join("a").exists());

    // Remove the leaves, then the layers: their directories go.
    for key in ["ctr1", "view1", "view2", "l2", "l1"] {
        remove(&mut c, key).await.unwrap();
    }
    assert!(!l1_fs.exists());
    assert!(list(&mut c, &[]).await.is_empty());
    h.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydus_layers_are_committed_remotely_and_survive_a_reopen() {
    let (dir, rec, h) = start().await;
    let (root, socket) = (dir.path().join("root"), dir.path().join("s.sock"));
    let mut c = h.client.clone();
    let digest = format!("sha256:{}", "c".repeat(64));
    let image_ref = "registry.test:5000/app:v1";
    let common = [
        (labels::IMAGE_REF, image_ref),
        (labels::MANIFEST_DIGEST, digest.as_str()),
    ];
    let layer = |target: &'static str, annotation: &'static str| {
        let mut l = common.to_vec();
        l.push((labels::TARGET_REF, target));
        l.push((annotation, "true"));
        l
    };
    // The data layer, then the bootstrap layer: committed under their targets, AlreadyExists.
    let e = prepare(
        &mut c,
        "extract-1",
        "",
        &layer("chain-1", dfagent_registry::ANNOTATION_NYDUS_BLOB),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    let e = prepare(
        &mut c,
        "extract-2",
        "chain-1",
        &layer("chain-2", dfagent_registry::ANNOTATION_NYDUS_BOOTSTRAP),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    // What containerd's metadata store asks next (its walk after AlreadyExists).
    assert_eq!(
        list(
            &mut c,
            &[r#"labels."containerd.io/snapshot.ref"==chain-2,parent=="chain-1""#]
        )
        .await,
        ["chain-2"]
    );
    assert!(rec.0.lock().unwrap().is_empty(), "nothing mounted at pull");
    // A Nydus layer without the image's labels cannot be served: a clear error.
    let e = prepare(
        &mut c,
        "extract-3",
        "",
        &[
            (labels::TARGET_REF, "chain-x"),
            (dfagent_registry::ANNOTATION_NYDUS_BLOB, "true"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("dfagent containerd pull"), "{e}");

    // Two containers on the image: one image mount as the only lower dir.
    let m1 = prepare(&mut c, "c1", "chain-2", &[]).await.unwrap();
    let m2 = prepare(&mut c, "c2", "chain-2", &[]).await.unwrap();
    let lower = opt(&m1[0], "lowerdir=").unwrap().to_string();
    assert_eq!(lower, opt(&m2[0], "lowerdir=").unwrap());
    assert!(!lower.contains(':'));
    let image = format!("registry.test:5000/app@{digest}");
    assert_eq!(
        std::fs::read_to_string(Path::new(&lower).join("image")).unwrap(),
        image
    );
    assert_eq!(*rec.0.lock().unwrap(), [format!("mount {image}")]);
    // A container on the data layer alone has no image to mount.
    let e = prepare(&mut c, "c3", "chain-1", &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    std::fs::write(Path::new(&opt(&m1[0], "upperdir=").unwrap()).join("w"), "x").unwrap();
    h.close().await;

    // Reopened (a restarted daemon): the same snapshots, the image mounted again for its
    // containers, the upper dir intact.
    let rec2 = Arc::new(Recorder::default());
    let h = serve(&root, &socket, rec2.clone()).await;
    let mut c = h.client.clone();
    assert_eq!(list(&mut c, &[]).await, ["c1", "c2", "chain-1", "chain-2"]);
    let m = mounts(&mut c, "c1").await.unwrap();
    assert_eq!(m, m1);
    assert!(Path::new(opt(&m[0], "upperdir=").unwrap())
        .join("w")
        .exists());
    assert_eq!(*rec2.0.lock().unwrap(), [format!("mount {image}")]);
    // The bootstrap layer goes last: then the image is unmounted.
    for key in ["c1", "c2", "chain-2"] {
        remove(&mut c, key).await.unwrap();
    }
    assert_eq!(
        rec2.0.lock().unwrap().last().map(String::as_str),
        Some("unmount")
    );
    h.close().await;
}
