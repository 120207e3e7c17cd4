//! Every fixture image, mounted in-process over its blob directory, shows exactly the tree of
//! its expected listing, as `tools/list-tree.py` prints it (the root's mtime aside).

pub mod common;

use common::TestMount;
use dfagent_test_support::fixtures::{
    expected_lines, fixtures_dir, list_tree, without_mtime, ALL_IMAGES,
};

fn check_listing(image: &str) {
    let m = TestMount::fixture(image);
    let listed = list_tree(m.path());
    let actual: Vec<&str> = listed.iter().map(String::as_str).collect();
    let expected = expected_lines(image);

    assert!(!actual.is_empty(), "{image}: empty listing");
    assert_eq!(
        without_mtime(actual[0]),
        without_mtime(&expected[0]),
        "{image}: root entry differs (mtime ignored)"
    );
    let (a, e): (Vec<&str>, Vec<&str>) = (
        actual[1..].to_vec(),
        expected[1..].iter().map(String::as_str).collect(),
    );
    if a != e {
        let missing: Vec<_> = e.iter().filter(|l| !a.contains(l)).take(10).collect();
        let extra: Vec<_> = a.iter().filter(|l| !e.contains(l)).take(10).collect();
        panic!(
            "{image}: listing differs ({} lines shown, {} expected)\nmissing (first 10):\n{}\nunexpected (first 10):\n{}",
            a.len() + 1,
            e.len() + 1,
            missing.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n"),
            extra.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n"),
        );
    }
    m.unmount();
}

#[test]
fn v6_zstd_blake3_matches_listing() {
    check_listing("v6-zstd-blake3");
}

#[test]
fn v6_lz4_sha256_matches_listing() {
    check_listing("v6-lz4-sha256");
}

#[test]
fn v6_none_64k_matches_listing() {
    check_listing("v6-none-64k");
}

#[test]
fn v6_chunkdict_matches_listing() {
    check_listing("v6-chunkdict");
}

#[test]
fn v6_nydusify_2layer_matches_listing() {
    check_listing("v6-nydusify-2layer");
}

#[test]
fn every_fixture_is_covered() {
    // Guards against a fixture added to the shared folder without a listing test here.
    let mut found: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("bootstrap").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut known: Vec<String> = ALL_IMAGES.iter().map(|s| s.to_string()).collect();
    known.sort();
    assert_eq!(found, known);
}
