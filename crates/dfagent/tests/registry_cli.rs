//! `dfagent push`, `mount IMAGE`, `pull` and an offline mount against a real `docker-registry`
//! on 127.0.0.1, through the binary.

mod common;

use common::{
    assert_store_verifies, dfagent, expected, fixture, listing, push, stat_json, Mount, Registry,
};

#[test]
fn push_mount_pull_and_offline_mount() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let mp = work.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let reference = format!("127.0.0.1:{}/test/chunkdict:v1", reg.port);
    let img = fixture("v6-chunkdict");
    push(&img, &reference, &store);

    // A lazy mount from the registry shows exactly the image.
    let m = Mount::start(&reference, &mp, &store, "none");
    assert_eq!(listing(&mp), expected("texture2.expected.jsonl"));
    m.stop();

    // Pull fills the store; then the registry goes away and a new mount still reads everything.
    let out = dfagent(&["pull", &reference], &store);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = stat_json(&store);
    let chunks = st["chunks"].as_u64().unwrap();
    assert_eq!(st["pinned_chunks"].as_u64().unwrap(), chunks);
    drop(reg);
    let m = Mount::start(&reference, &mp, &store, "none");
    assert_eq!(listing(&mp), expected("texture2.expected.jsonl"));
    m.stop();
    assert_store_verifies(&store);
}

#[test]
fn chunks_shared_by_two_images_are_fetched_and_stored_once() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let mut refs = Vec::new();
    for name in ["v6-chunkdict", "v6-zstd-blake3"] {
        let img = fixture(name);
        let r = format!("127.0.0.1:{}/test/{name}:v1", reg.port);
        push(&img, &r, &store);
        refs.push(r);
    }
    let out = dfagent(&["pull", &refs[0]], &store);
    assert!(out.status.success());
    let after_first = stat_json(&store)["chunks"].as_u64().unwrap();
    // v6-chunkdict was built with v6-zstd-blake3 as its chunk dictionary: pulling the second
    // image must fetch and store only the chunks the first lacks.
    let chunks = |name: &str| {
        dfagent_rafs::Image::open(fixture(name).join("bootstrap"))
            .unwrap()
            .all_chunks()
            .unwrap()
    };
    let have: std::collections::HashSet<_> =
        chunks("v6-chunkdict").iter().map(|c| c.digest).collect();
    let new: Vec<_> = chunks("v6-zstd-blake3")
        .into_iter()
        .filter(|c| !have.contains(&c.digest))
        .collect();
    assert!(new.len() < 10, "the fixtures share almost every chunk");
    let new_bytes: u64 = new.iter().map(|c| u64::from(c.compressed_size)).sum();
    let out = dfagent(&["pull", &refs[1]], &store);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(" {new_bytes} bytes from the registry")),
        "expected {new_bytes} bytes from the registry: {stderr}"
    );
    assert_eq!(
        stat_json(&store)["chunks"].as_u64().unwrap(),
        after_first + new.len() as u64
    );
}
