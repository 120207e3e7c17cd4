//! `dfagent push`, `mount IMAGE`, `pull` and an offline mount against a real `docker-registry`
//! on 127.0.0.1, through the binary.

use dfagent_test_support::dfagent_cli;
use dfagent_test_support::fixtures::{fixture, list_tree_without_root, listing_without_root};
use dfagent_test_support::registry::Registry;

#[test]
fn push_mount_pull_and_offline_mount() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let mp = work.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let reference = format!("{}/test/chunkdict:v1", reg.host());
    let img = fixture("v6-chunkdict");
    let cli = dfagent_cli!().with_store(&store);
    cli.push(&img, &reference);

    // A lazy mount from the registry shows exactly the image.
    let m = cli.mount(&reference, &mp, "none");
    assert_eq!(
        list_tree_without_root(&mp),
        listing_without_root("texture2.expected.jsonl")
    );
    m.stop();

    // Pull fills the store; then the registry goes away and a new mount still reads everything.
    let out = cli.run(&["pull", &reference]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = cli.cache_stat();
    let chunks = st["chunks"].as_u64().unwrap();
    assert_eq!(st["pinned_chunks"].as_u64().unwrap(), chunks);
    drop(reg);
    let m = cli.mount(&reference, &mp, "none");
    assert_eq!(
        list_tree_without_root(&mp),
        listing_without_root("texture2.expected.jsonl")
    );
    m.stop();
    cli.assert_store_verifies();
}

#[test]
fn chunks_shared_by_two_images_are_fetched_and_stored_once() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let cli = dfagent_cli!().with_store(&store);
    let mut refs = Vec::new();
    for name in ["v6-chunkdict", "v6-zstd-blake3"] {
        let img = fixture(name);
        let r = format!("{}/test/{name}:v1", reg.host());
        cli.push(&img, &r);
        refs.push(r);
    }
    let out = cli.run(&["pull", &refs[0]]);
    assert!(out.status.success());
    let after_first = cli.cache_stat()["chunks"].as_u64().unwrap();
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
    let out = cli.run(&["pull", &refs[1]]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(" {new_bytes} bytes from the registry")),
        "expected {new_bytes} bytes from the registry: {stderr}"
    );
    assert_eq!(
        cli.cache_stat()["chunks"].as_u64().unwrap(),
        after_first + new.len() as u64
    );
}
