//! dfagent-registry against a real `docker-registry` (distribution 2.8) on 127.0.0.1: push and
//! pull of the upstream-built fixture images, merged range reads counted through a recording
//! proxy, blob dedup on re-push, Basic (htpasswd) and Bearer (token server) authentication, and
//! retries of 503s. All traffic stays on loopback; every wait is bounded. (Expiring tokens and
//! `Retry-After` are in `resilience.rs`.)

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{anonymous_client, blob_bytes, client_with, fixture, write_docker_config};
use dfagent_core::{slots_for, Answer, BlobId, ChunkRef, ChunkTier, TierErrorKind};
use dfagent_registry::{NydusImage, Registry, RegistryError, RegistryTier};
use dfagent_test_support::fixtures::ALL_IMAGES;
use dfagent_test_support::proxy::{Action, Proxy, Request, Seen};
use dfagent_test_support::registry::Registry as RegistryProc;
use dfagent_test_support::token::TokenServer;
use dfagent_test_support::wait::within;

/// The chunks of the regular file with the most distinct chunk ranges in `bootstrap`.
fn chunks_of_biggest_file(bootstrap: &Path) -> (String, Vec<ChunkRef>) {
    let image = dfagent_rafs::Image::open(bootstrap).expect("open fixture bootstrap");
    let mut best: Option<(usize, String, Vec<ChunkRef>)> = None;
    image
        .walk(|e| {
            if e.inode.file_type == dfagent_rafs::FileType::File && e.inode.size > 0 {
                let chunks: Vec<ChunkRef> = image
                    .chunks(&e.inode, 0, e.inode.size)?
                    .into_iter()
                    .map(|c| c.chunk)
                    .collect();
                let n = distinct_ranges(&chunks).len();
                if best.as_ref().is_none_or(|(m, _, _)| n > *m) {
                    best = Some((n, String::from_utf8_lossy(&e.path).into_owned(), chunks));
                }
            }
            Ok(())
        })
        .expect("walk");
    let (_, path, chunks) = best.expect("a regular file");
    (path, chunks)
}

fn distinct_ranges(chunks: &[ChunkRef]) -> BTreeSet<(BlobId, u64, u32)> {
    chunks
        .iter()
        .map(|c| (c.blob, c.compressed_offset, c.compressed_size))
        .collect()
}

/// Fetch `chunks` through `source`, check every chunk's bytes against the blob files, and
/// return the number of blob GETs the proxy saw.
async fn fetch_and_check(
    source: &RegistryTier,
    proxy: &Proxy,
    name: &str,
    chunks: &[ChunkRef],
) -> usize {
    proxy.take_log();
    let mut slots = slots_for(chunks);
    within("fetch", source.fetch(&mut slots)).await;
    let requests = proxy.take_log().iter().filter(|r| r.is_blob_get()).count();
    for (i, slot) in slots.iter().enumerate() {
        let Answer::Found(sc) = slot.answer() else {
            panic!("{name}: chunk {i} not answered: {:?}", slot.answer());
        };
        let c = &chunks[i];
        assert_eq!(sc.compression, c.compression);
        let data = blob_bytes(name, &c.blob);
        let r = c.blob_range();
        assert_eq!(
            &sc.data[..],
            &data[r.start as usize..r.end as usize],
            "{name}: chunk {i}"
        );
    }
    requests
}

/// Pull checks shared by the tests: resolve, bootstrap bytes, a few range reads.
async fn check_pull(reg: &Registry, reference: &str, name: &str) -> NydusImage {
    let (bootstrap, _) = fixture(name);
    let img = within("resolve", reg.resolve(reference))
        .await
        .expect("resolve");
    let image = dfagent_rafs::Image::open(&bootstrap).expect("fixture bootstrap");
    let table: Vec<BlobId> = image.blobs().iter().map(|b| b.id).collect();
    let manifest_blobs: Vec<BlobId> = img.blobs.iter().map(|(b, _)| *b).collect();
    assert!(img.missing_blobs(&image).is_empty());
    assert_eq!(
        manifest_blobs, table,
        "{name}: manifest blobs follow the blob table"
    );
    let boot = within("fetch_bootstrap", reg.fetch_bootstrap(&img))
        .await
        .expect("fetch_bootstrap");
    assert_eq!(
        boot,
        std::fs::read(&bootstrap).expect("bootstrap"),
        "{name}: bootstrap bytes"
    );
    for (id, size) in &img.blobs {
        let data = blob_bytes(name, id);
        assert_eq!(*size, data.len() as u64);
        let s = *size;
        for range in [
            0..s.min(4096),
            s / 3..(s / 3 + 1000).min(s),
            s.saturating_sub(100)..s,
            1..2,
        ] {
            let got = within("read_range", reg.read_range(&img, id, range.clone()))
                .await
                .expect("read_range");
            assert_eq!(
                &got[..],
                &data[range.start as usize..range.end as usize],
                "{name}: blob {id} range {range:?}"
            );
        }
    }
    img
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_fixture_images_with_merged_range_reads() {
    let reg_proc = RegistryProc::start();
    let proxy = Proxy::forward(reg_proc.addr());
    let tmp = tempfile::tempdir().expect("tempdir");
    let reg = Arc::new(anonymous_client(tmp.path()));
    for name in ALL_IMAGES {
        let (bootstrap, blobs) = fixture(name);
        let reference = format!("{}/fixtures/{name}:v1", proxy.host());
        let digest = within("push", reg.push_nydus(&reference, &bootstrap, &blobs))
            .await
            .expect("push_nydus");
        assert!(digest.starts_with("sha256:"));
        let img = check_pull(&reg, &reference, name).await;
        assert_eq!(img.manifest_digest, digest);
        // By digest too.
        let by_digest = format!("{}/fixtures/{name}@{digest}", proxy.host());
        let img2 = within("resolve by digest", reg.resolve(&by_digest))
            .await
            .expect("resolve by digest");
        assert_eq!(img2.manifest_bytes, img.manifest_bytes);

        // All chunks of one file, through the ChunkSource: merged into fewer requests.
        let (path, chunks) = chunks_of_biggest_file(&bootstrap);
        let distinct = distinct_ranges(&chunks).len();
        let mut source = RegistryTier::new(reg.clone(), Arc::new(img));
        assert_eq!(source.name(), "registry");
        let requests = fetch_and_check(&source, &proxy, name, &chunks).await;
        eprintln!(
            "{name}: {path}: {} chunks ({distinct} distinct ranges) in {requests} range requests",
            chunks.len(),
        );
        assert!(requests >= 1);
        if distinct > 1 {
            assert!(
                requests < distinct,
                "{name}: {requests} requests for {distinct} distinct chunk ranges: no merging"
            );
        }
        // A small merge limit splits the batch, and the answers are still right.
        let total: u64 = chunks.iter().map(|c| u64::from(c.compressed_size)).sum();
        source.max_merge = (total / 3).max(1);
        let requests = fetch_and_check(&source, &proxy, name, &chunks).await;
        if distinct > 3 {
            assert!(
                (3..distinct).contains(&requests),
                "{name}: {requests} requests with max_merge {}",
                source.max_merge
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_twice_uploads_no_blob_the_second_time() {
    let reg_proc = RegistryProc::start();
    let proxy = Proxy::forward(reg_proc.addr());
    let tmp = tempfile::tempdir().expect("tempdir");
    let reg = anonymous_client(tmp.path());
    let (bootstrap, blobs) = fixture("v6-chunkdict");
    let reference = format!("{}/dedup/img:v1", proxy.host());
    let first = within("push", reg.push_nydus(&reference, &bootstrap, &blobs))
        .await
        .expect("first push");
    let log = proxy.take_log();
    let uploads = |log: &[Seen]| {
        log.iter()
            .filter(|r| {
                matches!(r.method.as_str(), "POST" | "PATCH")
                    || (r.method == "PUT" && r.path.contains("/blobs/"))
            })
            .count()
    };
    assert!(uploads(&log) > 0, "the first push uploads");
    let second = within("push", reg.push_nydus(&reference, &bootstrap, &blobs))
        .await
        .expect("second push");
    assert_eq!(first, second, "pushing is deterministic");
    let log = proxy.take_log();
    assert_eq!(uploads(&log), 0, "second push uploaded blobs: {log:#?}");
    assert_eq!(
        log.iter()
            .filter(|r| r.method == "PUT" && r.path.contains("/manifests/"))
            .count(),
        1
    );
    // Same image under another tag: still nothing uploaded.
    let other = format!("{}/dedup/img:v2", proxy.host());
    within("push", reg.push_nydus(&other, &bootstrap, &blobs))
        .await
        .expect("push v2");
    assert_eq!(uploads(&proxy.take_log()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_oci_images_are_refused_and_indexes_are_searched() {
    let reg_proc = RegistryProc::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let reg = anonymous_client(tmp.path());
    let (bootstrap, blobs) = fixture("v6-zstd-blake3");
    let nydus_ref = format!("{}/multi/app:nydus", reg_proc.host());
    let nydus_digest = within("push", reg.push_nydus(&nydus_ref, &bootstrap, &blobs))
        .await
        .expect("push");
    let nydus_manifest = reg.fetch_manifest_raw(&nydus_ref).await.expect("manifest");
    assert_eq!(nydus_manifest.digest, nydus_digest);

    // A plain OCI image next to it, pushed with oci-client itself.
    let oci = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let plain_ref: oci_client::Reference = format!("{}/multi/app:oci", reg_proc.host())
        .parse()
        .expect("reference");
    let layer = oci_client::client::ImageLayer::oci_v1_gzip(b"not really gzip".to_vec(), None);
    let config = oci_client::client::Config::oci_v1(
        br#"{"architecture":"amd64","os":"linux"}"#.to_vec(),
        None,
    );
    within(
        "oci push",
        oci.push(
            &plain_ref,
            &[layer],
            config,
            &oci_client::secrets::RegistryAuth::Anonymous,
            None,
        ),
    )
    .await
    .expect("oci-client push");
    let plain = reg
        .fetch_manifest_raw(&plain_ref.whole())
        .await
        .expect("plain manifest");
    let err = reg
        .resolve(&plain_ref.whole())
        .await
        .expect_err("plain image");
    assert!(matches!(err, RegistryError::NotNydus { .. }), "{err}");
    assert!(err.to_string().starts_with("not a Nydus image: "), "{err}");

    // An index as nydusify's --merge-platform writes it: OCI entry first, Nydus entry marked.
    let entry = |m: &dfagent_registry::RawManifest, features: Option<Vec<&str>>| {
        let mut platform = serde_json::json!({"os": "linux", "architecture": "amd64"});
        if let Some(f) = features {
            platform["os.features"] = serde_json::json!(f);
        }
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m.digest,
            "size": m.bytes.len(),
            "platform": platform,
        })
    };
    let push_index = |tag: &'static str, entries: Vec<serde_json::Value>| {
        let index: oci_client::manifest::OciImageIndex =
            serde_json::from_value(serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": entries,
            }))
            .expect("index");
        let r: oci_client::Reference = format!("{}/multi/app:{tag}", reg_proc.host())
            .parse()
            .expect("ref");
        let oci = oci.clone();
        async move {
            oci.push_manifest_list(&r, &oci_client::secrets::RegistryAuth::Anonymous, index)
                .await
                .expect("push index");
            r.whole()
        }
    };
    let marked = push_index(
        "index",
        vec![
            entry(&plain, None),
            entry(&nydus_manifest, Some(vec!["nydus.remoteimage.v1"])),
        ],
    )
    .await;
    let img = within("resolve index", reg.resolve(&marked))
        .await
        .expect("resolve index");
    assert_eq!(img.manifest_digest, nydus_digest);
    // Unmarked: found by its bootstrap layer.
    let unmarked = push_index(
        "unmarked",
        vec![entry(&plain, None), entry(&nydus_manifest, None)],
    )
    .await;
    let img = within("resolve index", reg.resolve(&unmarked))
        .await
        .expect("resolve unmarked");
    assert_eq!(img.manifest_digest, nydus_digest);
    // No Nydus manifest for the platform.
    let only_oci = push_index("only-oci", vec![entry(&plain, None)]).await;
    let err = reg.resolve(&only_oci).await.expect_err("no nydus entry");
    assert!(matches!(err, RegistryError::NotNydus { .. }), "{err}");
    // Unknown tag.
    let err = reg
        .resolve(&format!("{}/multi/app:missing", reg_proc.host()))
        .await
        .expect_err("missing tag");
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_docker_config_credentials() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reg_proc = RegistryProc::builder()
        .basic_auth("alice", "s3cret")
        .start();
    let (bootstrap, blobs) = fixture("v6-lz4-sha256");
    let reference = format!("{}/private/img:v1", reg_proc.host());

    let good_dir = tmp.path().join("good");
    std::fs::create_dir(&good_dir).expect("dir");
    let good = client_with(
        write_docker_config(&good_dir, &reg_proc.host(), "alice", "s3cret"),
        4,
    );
    within("push", good.push_nydus(&reference, &bootstrap, &blobs))
        .await
        .expect("push with good credentials");
    check_pull(&good, &reference, "v6-lz4-sha256").await;

    let bad_dir = tmp.path().join("bad");
    std::fs::create_dir(&bad_dir).expect("dir");
    let bad = client_with(
        write_docker_config(&bad_dir, &reg_proc.host(), "alice", "wrong"),
        4,
    );
    let started = Instant::now();
    let err = within("resolve", bad.resolve(&reference))
        .await
        .expect_err("wrong password");
    assert!(matches!(err, RegistryError::Auth { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("authentication to registry 127.0.0.1:"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let err = within("push", bad.push_nydus(&reference, &bootstrap, &blobs))
        .await
        .expect_err("push with wrong password");
    assert!(matches!(err, RegistryError::Auth { .. }), "{err:?}");

    let anon = anonymous_client(tmp.path());
    let err = within("resolve", anon.resolve(&reference))
        .await
        .expect_err("anonymous");
    assert!(matches!(err, RegistryError::Auth { .. }), "{err:?}");
    eprintln!("basic auth refusal: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_auth() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tokens = TokenServer::start("bob", "hunter2", Duration::from_secs(600));
    let reg_proc = RegistryProc::builder()
        .config_extra(&tokens.registry_config())
        .start();
    let (bootstrap, blobs) = fixture("v6-nydusify-2layer");
    let reference = format!("{}/team/app:v1", reg_proc.host());

    let good_dir = tmp.path().join("good");
    std::fs::create_dir(&good_dir).expect("dir");
    let good = client_with(
        write_docker_config(&good_dir, &reg_proc.host(), "bob", "hunter2"),
        4,
    );
    let pushed = within("push", good.push_nydus(&reference, &bootstrap, &blobs)).await;
    if pushed.is_err() {
        eprintln!("registry log:\n{}", reg_proc.log());
    }
    pushed.expect("push with a token");
    check_pull(&good, &reference, "v6-nydusify-2layer").await;
    assert!(tokens.issued() >= 2, "tokens were fetched");

    let bad_dir = tmp.path().join("bad");
    std::fs::create_dir(&bad_dir).expect("dir");
    let bad = client_with(
        write_docker_config(&bad_dir, &reg_proc.host(), "bob", "nope"),
        4,
    );
    let started = Instant::now();
    let err = within("resolve", bad.resolve(&reference))
        .await
        .expect_err("wrong password");
    assert!(matches!(err, RegistryError::Auth { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!err.to_string().contains("nope"), "{err}");
    assert!(
        tokens.refused() >= 1,
        "the token service refused the wrong password"
    );
    eprintln!("bearer auth refusal: {err}");
    let err = within("push", bad.push_nydus(&reference, &bootstrap, &blobs))
        .await
        .expect_err("push with wrong password");
    assert!(matches!(err, RegistryError::Auth { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_retry_503_and_follow_redirects() {
    let reg_proc = RegistryProc::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let name = "v6-none-64k";
    let (bootstrap, blobs) = fixture(name);
    let direct = anonymous_client(tmp.path());
    let reference = format!("{}/retry/img:v1", reg_proc.host());
    within("push", direct.push_nydus(&reference, &bootstrap, &blobs))
        .await
        .expect("push");

    // Fails the first two blob GETs with 503, then forwards.
    let failures = Arc::new(AtomicUsize::new(0));
    let f = failures.clone();
    let flaky = Proxy::builder()
        .upstream(reg_proc.addr())
        .policy(move |r: &Request| {
            if r.is_blob_get() && f.fetch_add(1, Ordering::SeqCst) < 2 {
                Action::Status(503)
            } else {
                Action::Forward
            }
        })
        .start();
    let reg = anonymous_client(tmp.path());
    let img = within(
        "resolve",
        reg.resolve(&format!("{}/retry/img:v1", flaky.host())),
    )
    .await
    .expect("resolve through the flaky proxy");
    let (id, _) = img.blobs[0];
    let data = blob_bytes(name, &id);
    let got = within("read_range", reg.read_range(&img, &id, 1000..70_000))
        .await
        .expect("read_range after two 503s");
    assert_eq!(&got[..], &data[1000..70_000]);
    let gets = flaky.take_log().iter().filter(|r| r.is_blob_get()).count();
    assert_eq!(gets, 3, "two 503s and one success");

    // Always 503: a clear error after retries + 1 attempts.
    let down = Proxy::builder()
        .upstream(reg_proc.addr())
        .policy(|r: &Request| {
            if r.is_blob_get() {
                Action::Status(503)
            } else {
                Action::Forward
            }
        })
        .start();
    let retries = 3;
    let reg = client_with(tmp.path().join("none.json"), retries);
    let img = within(
        "resolve",
        reg.resolve(&format!("{}/retry/img:v1", down.host())),
    )
    .await
    .expect("resolve through the failing proxy");
    let started = Instant::now();
    let err = within("read_range", reg.read_range(&img, &id, 0..100))
        .await
        .expect_err("always 503");
    eprintln!("always 503: {err} (after {:?})", started.elapsed());
    match &err {
        RegistryError::RetriesExhausted { attempts, .. } => assert_eq!(*attempts, retries + 1),
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(
        down.take_log().iter().filter(|r| r.is_blob_get()).count(),
        retries as usize + 1
    );
    // The tier answers each chunk of a failed range with the failure, as the client said it.
    let (_, chunks) = chunks_of_biggest_file(&bootstrap);
    let source = RegistryTier::new(Arc::new(reg), Arc::new(img));
    let mut slots = slots_for(&chunks[..2]);
    within("fetch", source.fetch(&mut slots)).await;
    for slot in &slots {
        match slot.answer() {
            Answer::Failed(e) => {
                assert_eq!(e.tier, "registry");
                assert_eq!(e.kind, TierErrorKind::Busy, "{e}");
                assert!(e.message.contains("503"), "{e}");
            }
            other => panic!("expected the range's failure, got {other:?}"),
        }
    }

    // A registry that redirects blob GETs elsewhere (as object-store backed ones do).
    let redirecting = Proxy::builder()
        .upstream(reg_proc.addr())
        .policy(|r: &Request| {
            if r.is_blob_get() {
                Action::Redirect
            } else {
                Action::Forward
            }
        })
        .start();
    let reg = anonymous_client(tmp.path());
    let img = within(
        "resolve",
        reg.resolve(&format!("{}/retry/img:v1", redirecting.host())),
    )
    .await
    .expect("resolve through the redirecting proxy");
    let got = within("read_range", reg.read_range(&img, &id, 5..70_005))
        .await
        .expect("read_range through a 307");
    assert_eq!(&got[..], &data[5..70_005]);
    let boot = within("bootstrap", reg.fetch_bootstrap(&img))
        .await
        .expect("bootstrap via 307");
    assert_eq!(boot, std::fs::read(&bootstrap).expect("bootstrap"));
    assert!(redirecting.take_log().iter().any(|r| r.is_blob_get()));

    // Out-of-range and foreign-blob reads are refused without a request.
    let err = reg
        .read_range(&img, &id, 0..data.len() as u64 + 1)
        .await
        .expect_err("past end");
    assert!(matches!(err, RegistryError::InvalidRequest(_)), "{err}");
    let err = reg
        .read_range(&img, &BlobId::from_bytes([9; 32]), 0..1)
        .await
        .expect_err("foreign blob");
    assert!(matches!(err, RegistryError::InvalidRequest(_)), "{err}");
}
