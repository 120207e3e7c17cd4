//! containerd filters as the snapshotter receives them in List (Walk) requests: arbitrary bytes,
//! split at newlines into a request's filters, parsed (`dfagent_containerd::filter`, built
//! without the server) and, when they parse, evaluated against a snapshot's fields. Neither may
//! panic or hang; a parsed filter keeps the parser's bounds.
#![no_main]

use dfagent_containerd::filter::{Fields, Filters, MAX_FILTERS, MAX_FILTER_LEN};
use libfuzzer_sys::fuzz_target;

struct Snapshot;

impl Fields for Snapshot {
    fn field(&self, path: &[String]) -> Option<String> {
        match (path.first().map(String::as_str), path.len()) {
            (Some("name"), 1) => Some("default/3/sha256:abc".into()),
            (Some("parent"), 1) => Some(String::new()),
            (Some("kind"), 1) => Some("committed".into()),
            (Some("labels"), n) if n > 1 => {
                let key = path[1..].join(".");
                (key == "containerd.io/snapshot.ref").then(|| "sha256:abc".into())
            }
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let filters: Vec<&str> = text.split('\n').collect();
    match Filters::parse(&filters) {
        Ok(f) => {
            assert!(filters.len() <= MAX_FILTERS);
            assert!(filters.iter().all(|f| f.len() <= MAX_FILTER_LEN));
            let _ = f.matches(&Snapshot);
        }
        Err(e) => {
            assert!(e.filter.len() <= 200 + 4);
            let _ = e.to_string();
        }
    }
});
