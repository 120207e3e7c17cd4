//! Dragonfly scheduler messages as the node receives them: arbitrary bytes decoded as a
//! `ListHostsResponse` and checked into seeds (`seeds_from_hosts`), and as a `StatImageResponse`
//! checked into an `ImageStatus` (`dfagent_scheduler_client::messages`, built without the network
//! stack). None may panic, and whatever is kept must keep the checks' promises.
#![no_main]

use std::collections::HashSet;

use dfagent_scheduler_client::dragonfly_api::scheduler::v2::{
    ListHostsResponse, StatImageResponse,
};
use dfagent_scheduler_client::messages::{MAX_HOSTS, MAX_ID_LEN, SEED_HOST_TYPES};
use dfagent_scheduler_client::{seeds_from_hosts, ImageStatus};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = ListHostsResponse::decode(data) {
        let (seeds, rejected) = seeds_from_hosts(&resp);
        assert!(seeds.len() <= MAX_HOSTS);
        assert!(seeds.len() + rejected.len() <= resp.hosts.len());
        let mut ids = HashSet::new();
        let mut keys = HashSet::new();
        for s in &seeds {
            assert!(!s.id.is_empty() && s.id.len() <= MAX_ID_LEN);
            assert!(s.port != 0 && s.proxy_port != 0);
            assert!(SEED_HOST_TYPES.contains(&s.host_type));
            assert!(!s.ip.is_unspecified());
            assert!(ids.insert(s.id.clone()), "duplicate id kept");
            assert!(keys.insert(s.ring_key.clone()), "duplicate ring key");
            assert!(!s.ring_key.is_empty());
        }
        for r in &rejected {
            assert!(r.id.len() <= MAX_ID_LEN);
            let _ = r.reason.to_string();
        }
    }
    if let Ok(resp) = StatImageResponse::decode(data) {
        if let Ok(status) = ImageStatus::from_response(&resp) {
            let done = status.layers_done();
            assert!(done <= status.layers.len());
            assert_eq!(
                status.complete(),
                !status.layers.is_empty() && done == status.layers.len()
            );
        }
    }
});
