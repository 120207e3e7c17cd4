//! Any bytes as an image layer (gzip, zstd or plain tar, detected from the bytes): reading the
//! tar, applying it to the merged tree, reading file data, finishing the layer and making the
//! writer's tree must fail cleanly or succeed (an error is fine, a panic, a hang or a runaway
//! allocation is not). Decompressed output is capped so a small bomb stays small.
#![no_main]

use std::io::Read;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use dfagent_builder::layer::open_reader;
use dfagent_builder::overlay::{Applied, Overlay};
use dfagent_builder::tar::TarReader;
use libfuzzer_sys::fuzz_target;

/// Most decompressed bytes one input may produce.
const MAX_TAR: u64 = 32 << 20;
/// Most entries read from one input.
const MAX_ENTRIES: usize = 100_000;

fuzz_target!(|data: &[u8]| {
    let Ok(mut open) = open_reader(
        data,
        None,
        None,
        Arc::new(AtomicU64::new(0)),
        "fuzz".into(),
    ) else {
        return;
    };
    let mut overlay = Overlay::new();
    // Two "layers" from the same bytes: the second sees the first's tree (whiteouts, hard
    // links to lower files, directories over files).
    for layer in 0..2 {
        overlay.begin_layer(layer);
        let mut tr = TarReader::new((&mut open.stream).take(MAX_TAR));
        let mut buf = vec![0u8; 64 << 10];
        for _ in 0..MAX_ENTRIES {
            let e = match tr.next_entry() {
                Ok(Some(e)) => e,
                _ => break,
            };
            if let Ok(Applied::Data(_)) = overlay.apply(&e) {
                while let Ok(n) = tr.read_data(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        if layer == 0 {
            let _ = dfagent_builder::tar::parse_pax(data);
        }
    }
    let _ = overlay.into_tree(&[b"/".to_vec(), b"/a/b".to_vec()]);
    let _ = open.finish();
});
