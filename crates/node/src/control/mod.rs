//! The control API of a daemon: the service (`proto/dfagent/control/v1/control.proto`), its
//! server on the daemon's unix socket, the client the CLI uses, and who may call it.

pub mod access;
pub mod client;
pub mod replies;
pub mod server;

/// Generated code of the control API (from `dfagent-control`).
pub use dfagent_control::proto;
