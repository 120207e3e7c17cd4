//! Control API requests as a daemon receives them: arbitrary bytes decoded as each request
//! message (prost) and, when they decode, put through the checks the server runs before acting
//! (`dfagent_control::requests`). Neither may panic, hang or allocate without bound.
#![no_main]

use dfagent_control::proto;
use dfagent_control::requests;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // The server refuses larger requests before decoding them.
    if data.len() > dfagent_control::MAX_REQUEST_BYTES {
        return;
    }
    if let Ok(r) = proto::MountRequest::decode(data) {
        if let Ok(m) = requests::mount(&r) {
            assert!(m.mountpoint.is_absolute());
            assert!(m.mountpoint.as_os_str().len() <= dfagent_control::MAX_PATH);
        }
    }
    if let Ok(r) = proto::UmountRequest::decode(data) {
        let _ = requests::umount(&r);
    }
    if let Ok(r) = proto::PullRequest::decode(data) {
        if let Ok(reference) = requests::pull(&r) {
            assert!(!reference.is_empty() && reference.len() <= dfagent_control::MAX_REFERENCE);
        }
    }
    let _ = proto::ListMountsRequest::decode(data);
    let _ = proto::StatusRequest::decode(data);
});
