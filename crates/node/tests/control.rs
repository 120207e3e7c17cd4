//! The control API against bad input and faults, with the daemon in this process: oversized
//! and malformed requests, garbage on the socket, a client that leaves in the middle of a pull.
//! Each gets a typed status (or a closed connection) and the daemon keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dfagent_node::control::client;
use dfagent_node::control::proto;
use dfagent_node::daemon::{self, Daemon, DaemonSettings};
use dfagent_node::{MountOptions, Node, NodeConfig};
use dfagent_test_support::fixtures::fixture;
use dfagent_test_support::registry::Registry;
use tonic::Code;

struct Running {
    socket: std::path::PathBuf,
    node: Arc<Node>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<dfagent_node::Result<()>>,
}

async fn start(dir: &Path) -> Running {
    let node = Node::open(
        NodeConfig::with_store_at(dir.join("store")),
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    let daemon = Daemon::new(node.clone(), MountOptions::default());
    let socket = dir.join("dfagent.sock");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(daemon::serve(
        daemon,
        DaemonSettings {
            socket: socket.clone(),
            socket_group: None,
            metrics_addr: None,
            shutdown_limit: Duration::from_secs(10),
            snapshotter: None,
        },
        move |_| {
            let _ = ready_tx.send(());
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("the daemon became ready")
        .unwrap();
    Running {
        socket,
        node,
        stop,
        task,
    }
}

impl Running {
    async fn client(&self) -> client::Client {
        client::connect(&self.socket)
            .await
            .unwrap()
            .expect("a daemon answers")
    }

    async fn alive(&self) {
        let mut c = self.client().await;
        let st = c
            .status(proto::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.pid, std::process::id());
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the daemon stopped")
            .unwrap()
            .unwrap();
        assert!(!self.socket.exists(), "the socket file is removed at exit");
    }
}

fn mount_request(mp: &str, reference: &str) -> proto::MountRequest {
    proto::MountRequest {
        mountpoint: mp.to_string(),
        image: Some(proto::mount_request::Image::Registry(
            proto::RegistryImage {
                reference: reference.to_string(),
            },
        )),
        options: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_typed_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let mut c = d.client().await;

    // Oversized: a request beyond the 64 KiB limit is refused before it is looked at.
    let huge = format!("/{}", "a".repeat(100 << 10));
    let e = c.mount(mount_request(&huge, "x/y:z")).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e:?}"
    );

    // Malformed fields.
    let e = c
        .mount(mount_request("relative/path", "x/y:z"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not absolute"), "{}", e.message());
    let e = c
        .mount(proto::MountRequest {
            mountpoint: "/tmp".into(),
            image: None,
            options: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut bad_prefetch = mount_request(dir.path().to_str().unwrap(), "x/y:z");
    bad_prefetch.options = Some(proto::MountOptions {
        prefetch: 99,
        ..Default::default()
    });
    let e = c.mount(bad_prefetch).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c
        .umount(proto::UmountRequest {
            mountpoint: dir.path().to_str().unwrap().into(),
            lazy: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c
        .pull(proto::PullRequest {
            reference: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Garbage on the socket: the connection is dropped, the daemon is not.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        let _ = s
            .write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff\xfe garbage")
            .await;
        let mut buf = vec![0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    }
    {
        use tokio::io::AsyncWriteExt;
        // An HTTP/2 preface followed by a frame header announcing 16 MiB that never comes.
        let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        let _ = s
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\x00\x00\x00\x00\x00\x01")
            .await;
        drop(s);
    }
    d.alive().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_leaves_mid_pull_does_not_stop_the_daemon_or_the_pull() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let d = start(dir.path()).await;
    let img = fixture("v6-zstd-blake3");
    let reference = format!("{}/fixtures/v6-zstd-blake3:v1", reg.host());
    d.node
        .push(&img.join("bootstrap"), &img.join("blobs"), &reference)
        .await
        .unwrap();
    let mut c = d.client().await;
    let mut stream = c
        .pull(proto::PullRequest {
            reference: reference.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .unwrap()
        .unwrap()
        .expect("a progress message");
    assert!(first.total_chunks > 0);
    // The client goes away.
    drop(stream);
    drop(c);
    d.alive().await;
    // The pull goes on to the end: every chunk ends up in the store (bounded wait).
    let store = d.node.store().unwrap().clone();
    let image = dfagent_rafs::Image::open(img.join("bootstrap")).unwrap();
    let mut digests: Vec<_> = image
        .all_chunks()
        .unwrap()
        .iter()
        .map(|c| c.digest)
        .collect();
    digests.sort();
    digests.dedup();
    let want = digests.len() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while store.stats().chunks < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pull stopped at {} of {want} chunks",
            store.stats().chunks
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.is_pulled(&reference).unwrap());
    d.stop().await;
}
