//! The Dragonfly fixtures: the test scheduler through a real gRPC client (no dfdaemon needed),
//! then a real dfdaemon 1.5.10 seed peer attached to it serving blob ranges from a real
//! registry through its proxy, and a preheat through the scheduler. The registry sits behind a
//! counting proxy so the tests can tell how many blob bytes it served. The seed tests need the
//! dfdaemon binary (`scripts/setup.sh`) and fail without it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dfagent_test_support::dragonfly::{DfdaemonSeed, PeerState, SeedOptions, TestScheduler};
use dfagent_test_support::proxy::{Proxy, Seen};
use dfagent_test_support::registry::Registry;
use dfagent_test_support::wait::wait_until;
use dragonfly_api::common::v2::{Download, Host, Piece};
use dragonfly_api::scheduler::v2::scheduler_client::SchedulerClient;
use dragonfly_api::scheduler::v2::*;
use sha2::{Digest as _, Sha256};
use tokio::runtime::Runtime;
use tokio_stream::StreamExt as _;

/// Bound of every wait on a seed (a download, a preheat).
const WAIT: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `len` deterministic pseudo-random bytes (incompressible, different per `seed`).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

async fn client(s: &TestScheduler) -> SchedulerClient<tonic::transport::Channel> {
    SchedulerClient::connect(s.endpoint())
        .await
        .expect("connecting to the test scheduler")
}

fn http() -> reqwest::Client {
    dfagent_test_support::net::http_client_builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("http client")
}

/// Upload `blob` to `repo` on the registry at `host` (POST then PUT with the digest).
async fn push_blob(host: &str, repo: &str, blob: &[u8]) -> String {
    let digest = sha256_digest(blob);
    let c = http();
    let r = c
        .post(format!("http://{host}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("starting an upload");
    assert_eq!(r.status().as_u16(), 202, "starting an upload");
    let loc = r
        .headers()
        .get("location")
        .expect("upload location")
        .to_str()
        .expect("location")
        .to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{host}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{loc}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(blob.to_vec())
        .send()
        .await
        .expect("uploading a blob");
    assert_eq!(r.status().as_u16(), 201, "uploading a blob");
    digest
}

/// Push an OCI image of `layers` as `repo:tag`; the layers' digests.
async fn push_image(host: &str, repo: &str, tag: &str, layers: &[Vec<u8>]) -> Vec<String> {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = push_blob(host, repo, config).await;
    let mut digests = Vec::new();
    let mut descs = Vec::new();
    for l in layers {
        let d = push_blob(host, repo, l).await;
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d, "size": l.len(),
        }));
        digests.push(d);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": descs,
    });
    let r = http()
        .put(format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).expect("manifest"))
        .send()
        .await
        .expect("pushing the manifest");
    assert_eq!(r.status().as_u16(), 201, "pushing the manifest");
    digests
}

/// GET `url` through the seed's proxy with `Range: bytes=first-last` and the Dragonfly headers
/// the Dragonfly tier sends; the status, headers and body.
async fn range_via_seed(
    seed: &DfdaemonSeed,
    url: &str,
    first: u64,
    last: u64,
    prefetch: bool,
) -> (u16, HashMap<String, String>, Vec<u8>) {
    let c = dfagent_test_support::net::http_client_builder()
        .proxy(reqwest::Proxy::http(format!("http://{}", seed.proxy_addr())).expect("proxy"))
        .timeout(WAIT)
        .build()
        .expect("client");
    let mut req = c
        .get(url)
        .header("Range", format!("bytes={first}-{last}"))
        .header("X-Dragonfly-Enable-Task-ID-Based-Blob-Digest", "true")
        .header("X-Dragonfly-Use-P2P", "true");
    if prefetch {
        req = req.header("X-Dragonfly-Prefetch", "true");
    }
    let r = req.send().await.expect("GET through the seed's proxy");
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = r.bytes().await.expect("body").to_vec();
    (status, headers, body)
}

/// Blob body bytes the registry (behind `log`'s proxy) sent for `digest`.
fn blob_bytes(log: &[Seen], digest: &str) -> u64 {
    log.iter()
        .filter(|s| s.is_blob_get() && s.path.ends_with(digest))
        .map(|s| s.body_len)
        .sum()
}

#[test]
fn scheduler_answers_health_hosts_and_peer_streams() {
    let s = TestScheduler::start();
    let rt = runtime();
    rt.block_on(async {
        // Health: "" and the scheduler service are SERVING.
        let ch = tonic::transport::Endpoint::from_shared(s.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
        for service in ["", "scheduler.v2.Scheduler"] {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.to_string(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.status, 1, "health of {service:?}");
        }

        let mut c = client(&s).await;
        let seed = Host {
            id: "127.0.0.1-a-seed".into(),
            r#type: 1,
            hostname: "a".into(),
            ip: "127.0.0.1".into(),
            port: 4000,
            download_port: 4000,
            proxy_port: 4001,
            ..Default::default()
        };
        let normal = Host {
            id: "127.0.0.1-b".into(),
            r#type: 0,
            ip: "127.0.0.1".into(),
            port: 5000,
            proxy_port: 5001,
            ..Default::default()
        };
        for h in [&seed, &normal] {
            c.announce_host(AnnounceHostRequest {
                host: Some(h.clone()),
                interval: None,
            })
            .await
            .unwrap();
        }
        let all = c
            .list_hosts(ListHostsRequest { r#type: None })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.hosts.len(), 2);
        let seeds = c
            .list_hosts(ListHostsRequest { r#type: Some(1) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(seeds.hosts.len(), 1);
        assert_eq!(seeds.hosts[0].proxy_port, 4001);
        s.set_proxy_port_override("127.0.0.1:4001", 6001);
        let seeds = c
            .list_hosts(ListHostsRequest { r#type: Some(1) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            seeds.hosts[0].proxy_port, 6001,
            "the override is advertised"
        );
        assert_eq!(
            s.host(&seed.id).unwrap().proxy_port,
            4001,
            "hosts() keeps the announced port"
        );
        c.delete_host(DeleteHostRequest {
            host_id: normal.id.clone(),
        })
        .await
        .unwrap();
        assert_eq!(s.hosts().len(), 1);

        // StatTask of an unknown task: NotFound.
        let e = c
            .stat_task(StatTaskRequest {
                host_id: seed.id.clone(),
                task_id: "ab".repeat(32),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);

        // AnnouncePeer as a seed uses it: register -> NeedBackToSource, back-to-source
        // started, pieces, finished -> the scheduler ends the stream.
        let task_id = "cd".repeat(32);
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let req = |r| AnnouncePeerRequest {
            host_id: seed.id.clone(),
            task_id: task_id.clone(),
            peer_id: "peer-1".into(),
            request: Some(r),
        };
        use announce_peer_request::Request as R;
        tx.send(req(R::RegisterPeerRequest(RegisterPeerRequest {
            download: Some(Download {
                url: "http://127.0.0.1:1/v2/x/blobs/sha256:cdcd".into(),
                actual_content_length: Some(8 << 20),
                actual_piece_length: Some(4 << 20),
                ..Default::default()
            }),
        })))
        .await
        .unwrap();
        let mut out = c
            .announce_peer(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(WAIT, out.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                first.response,
                Some(announce_peer_response::Response::NeedBackToSourceResponse(
                    _
                ))
            ),
            "a seed is sent back to source: {first:?}"
        );
        tx.send(req(R::DownloadPeerBackToSourceStartedRequest(
            DownloadPeerBackToSourceStartedRequest { description: None },
        )))
        .await
        .unwrap();
        for n in 0..2u32 {
            tx.send(req(R::DownloadPieceBackToSourceFinishedRequest(
                DownloadPieceBackToSourceFinishedRequest {
                    piece: Some(Piece {
                        number: n,
                        offset: u64::from(n) * (4 << 20),
                        length: 4 << 20,
                        digest: format!("crc32:{n}"),
                        ..Default::default()
                    }),
                },
            )))
            .await
            .unwrap();
        }
        tx.send(req(R::DownloadPeerBackToSourceFinishedRequest(
            DownloadPeerBackToSourceFinishedRequest {},
        )))
        .await
        .unwrap();
        let end = tokio::time::timeout(WAIT, out.next())
            .await
            .expect("stream end");
        assert!(end.is_none(), "the stream ends after finished: {end:?}");
        // What dfdaemon waits for before it returns (`in_stream_tx.closed()`).
        assert!(
            tokio::time::timeout(WAIT, tx.closed()).await.is_ok(),
            "the request side of the stream is closed after finished"
        );

        let t = c
            .stat_task(StatTaskRequest {
                host_id: seed.id.clone(),
                task_id: task_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.state, "Succeeded");
        assert_eq!(t.content_length, 8 << 20);
        assert_eq!(t.piece_count, 2);
        let snap = s.task(&task_id).unwrap();
        assert_eq!(snap.holders(), std::slice::from_ref(&seed.id));
        assert_eq!(snap.peers["peer-1"].state, PeerState::Succeeded);
        assert!(snap.peers["peer-1"].back_to_source);

        c.delete_task(DeleteTaskRequest {
            host_id: seed.id.clone(),
            task_id: task_id.clone(),
        })
        .await
        .unwrap();
        assert!(s.task(&task_id).is_none());

        // Calls the fixtures do not serve.
        let e = c
            .preheat_file(PreheatFileRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
    });
}

/// Push an OCI index pointing at `amd64` (and a bogus arm64 entry) as `repo:tag`.
async fn push_index(host: &str, repo: &str, tag: &str, amd64_tag: &str) {
    let c = http();
    let m = c
        .get(format!("http://{host}/v2/{repo}/manifests/{amd64_tag}"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    let digest = m
        .headers()
        .get("docker-content-digest")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let size = m.bytes().await.unwrap().len();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
             "size": size, "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    });
    let r = c
        .put(format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(serde_json::to_vec(&index).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "pushing the index");
}

#[test]
fn scheduler_resolves_images_from_a_registry() {
    let registry = Registry::start();
    let s = TestScheduler::start();
    let rt = runtime();
    rt.block_on(async {
        let layers = vec![data(1000, 7), data(2000, 8)];
        let digests = push_image(&registry.host(), "dfagent/small", "v1", &layers).await;
        push_index(&registry.host(), "dfagent/small", "multi", "v1").await;
        let mut c = client(&s).await;
        for tag in ["v1", "multi"] {
            let url = format!(
                "http://{}/v2/dfagent/small/manifests/{tag}",
                registry.host()
            );
            let r = c
                .stat_image(StatImageRequest {
                    url: url.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let got: Vec<String> = r.image.unwrap().layers.into_iter().map(|l| l.url).collect();
            let want: Vec<String> = digests
                .iter()
                .map(|d| format!("http://{}/v2/dfagent/small/blobs/{d}", registry.host()))
                .collect();
            assert_eq!(got, want, "layers of {tag}");
            assert!(r.peers.is_empty());
            // No seed peer announced: a preheat has nowhere to run.
            let e = c
                .preheat_image(PreheatImageRequest {
                    url,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        }
        let e = c
            .stat_image(StatImageRequest {
                url: format!("http://{}/v2/dfagent/small/manifests/nope", registry.host()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::FailedPrecondition,
            "unknown tag: {e:?}"
        );
    });
}

/// The tests that run real dfdaemon processes: `scripts/test.sh` runs them after the rest of
/// the suite (`--skip with_dfdaemon::`), once the dfdaemon install that a fresh machine starts
/// in the background has finished.
mod with_dfdaemon {
    use super::*;

    #[test]
    fn seed_registers_and_is_listed_with_its_proxy_port() {
        let s = TestScheduler::start();
        let started = Instant::now();
        let seed = DfdaemonSeed::start(&s);
        eprintln!("dfdaemon seed ready after {:?}", started.elapsed());
        let rt = runtime();
        rt.block_on(async {
            let mut c = client(&s).await;
            let hosts = c
                .list_hosts(ListHostsRequest { r#type: None })
                .await
                .unwrap()
                .into_inner()
                .hosts;
            let h = hosts
                .iter()
                .find(|h| h.id == seed.host_id())
                .unwrap_or_else(|| panic!("{} not in {hosts:?}", seed.host_id()));
            assert_eq!(h.r#type, 1, "a super seed");
            assert_eq!(h.ip, "127.0.0.1");
            assert_eq!(h.hostname, seed.hostname());
            assert_eq!(h.proxy_port, i32::from(seed.proxy_addr().port()));
            assert_eq!(h.port, i32::from(seed.upload_addr().port()));
        });
    }

    #[test]
    fn ranges_through_the_seed_proxy_fetch_the_blob_once() {
        let registry = Registry::start();
        let counting = Proxy::forward(registry.addr());
        let s = TestScheduler::start();
        let seed = DfdaemonSeed::start_with(&s, SeedOptions::default());
        let rt = runtime();
        let blob = data(9 * MIB + 12345, 1);
        let digest = rt.block_on(push_blob(&registry.host(), "dfagent/big", &blob));
        let hex = digest.trim_start_matches("sha256:").to_string();
        let url = format!("http://{}/v2/dfagent/big/blobs/{digest}", counting.host());
        let _ = counting.take_log();

        let (a, b) = (1_000_000u64, 1_999_999u64);
        let (status, headers, body) = rt.block_on(range_via_seed(&seed, &url, a, b, true));
        assert_eq!(status, 206, "headers {headers:?}\n{}", seed.log());
        assert_eq!(body.len() as u64, b - a + 1);
        assert!(
            body == blob[a as usize..=b as usize],
            "the first range's bytes"
        );
        eprintln!("first range answer headers: {headers:?}");
        if let Some(id) = headers.get("x-dragonfly-task-id") {
            assert_eq!(id, &hex, "blob-digest task id");
        }

        // The prefetch fetches the whole blob: wait until the scheduler hears it finished.
        assert!(
            wait_until(WAIT, || s.task(&hex).is_some_and(|t| t.is_finished())),
            "the seed did not finish the blob task: {:?}\n{}",
            s.task(&hex),
            seed.log()
        );
        let t = s.task(&hex).unwrap();
        eprintln!("scheduler's view of the blob task: {:?}", t.peers);
        assert_eq!(t.content_length, Some(blob.len() as u64));
        assert_eq!(t.holders(), [seed.host_id()]);

        let (c, d) = (5_000_000u64, 8_999_999u64);
        let (status, _, body) = rt.block_on(range_via_seed(&seed, &url, c, d, true));
        assert_eq!(status, 206);
        assert!(
            body == blob[c as usize..=d as usize],
            "the second range's bytes"
        );
        let (status, _, body) = rt.block_on(range_via_seed(&seed, &url, 0, 99, true));
        assert_eq!(status, 206);
        assert!(body == blob[..100], "a small range's bytes");

        let log = counting.take_log();
        let served = blob_bytes(&log, &digest);
        eprintln!(
            "registry blob bytes for a {} byte blob: {served} in {} requests: {:?}",
            blob.len(),
            log.iter().filter(|s| s.is_blob_get()).count(),
            log.iter()
                .map(|s| (s.method.clone(), s.range, s.status, s.body_len))
                .collect::<Vec<_>>()
        );
        assert!(
            served >= blob.len() as u64,
            "the whole blob came from the registry once"
        );
        assert!(
            served <= blob.len() as u64 + 1024,
            "the registry served {served} bytes for a {} byte blob",
            blob.len()
        );
    }

    #[test]
    fn preheat_fills_the_seed_and_ranges_need_no_registry() {
        let registry = Registry::start();
        let counting = Proxy::forward(registry.addr());
        let s = TestScheduler::start();
        let seed = DfdaemonSeed::start(&s);
        let rt = runtime();
        let layers = vec![data(5 * MIB + 7, 2), data(6 * MIB + 3, 3)];
        let digests = rt.block_on(push_image(&registry.host(), "dfagent/img", "v1", &layers));
        let manifest_url = format!("http://{}/v2/dfagent/img/manifests/v1", counting.host());

        rt.block_on(async {
            let mut c = client(&s).await;
            c.preheat_image(PreheatImageRequest {
                url: manifest_url.clone(),
                scope: "single_seed_peer".into(),
                enable_task_id_based_blob_digest: true,
                ..Default::default()
            })
            .await
            .expect("PreheatImage");
            let deadline = Instant::now() + WAIT;
            loop {
                let r = c
                    .stat_image(StatImageRequest {
                        url: manifest_url.clone(),
                        scope: "all_seed_peers".into(),
                        enable_task_id_based_blob_digest: true,
                        ..Default::default()
                    })
                    .await
                    .expect("StatImage")
                    .into_inner();
                assert_eq!(r.image.as_ref().map(|i| i.layers.len()), Some(2));
                let cached = r
                    .peers
                    .iter()
                    .find(|p| p.hostname == seed.hostname())
                    .map(|p| p.cached_layers.len());
                if cached == Some(2) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "preheat not done: {r:?}\njobs {:?}\n{}",
                    s.preheat_jobs(),
                    seed.log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let preheat_log = counting.take_log();
        for (d, l) in digests.iter().zip(&layers) {
            eprintln!(
                "preheat: registry sent {} bytes for a {} byte layer",
                blob_bytes(&preheat_log, d),
                l.len()
            );
        }

        let url = format!(
            "http://{}/v2/dfagent/img/blobs/{}",
            counting.host(),
            digests[1]
        );
        let (a, b) = (4_500_000u64, 5_499_999u64);
        let (status, _, body) = rt.block_on(range_via_seed(&seed, &url, a, b, false));
        assert_eq!(status, 206, "{}", seed.log());
        assert!(
            body == layers[1][a as usize..=b as usize],
            "the preheated layer's bytes"
        );
        let after = counting.take_log();
        let blob_after: u64 = after
            .iter()
            .filter(|s| s.is_blob_get())
            .map(|s| s.body_len)
            .sum();
        eprintln!(
            "after the preheat: {} registry requests, {blob_after} blob bytes: {after:?}",
            after.len()
        );
        assert_eq!(
            blob_after, 0,
            "the seed served the range without the registry"
        );
    }
}
