//! Pieces of the `dfagent-bench` harness that are worth testing on their own: the link-shaping
//! proxy, a minimal HTTP range client for the plain-HTTP baselines, and the report format.

pub mod http;
pub mod proxy;
pub mod report;
