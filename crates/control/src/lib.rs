//! The control API of a dfagent daemon, as bytes on its socket meet the daemon: the wire
//! messages and gRPC stubs ([`proto`], generated at build time from
//! `proto/dfagent/control/v1/control.proto`), and [`requests`], the checks every request passes
//! before the daemon acts on it (sizes, absolute paths, known enum values), turning wire
//! messages into typed requests.
//!
//! This crate must not know the node, the store, FUSE or who is calling (access checks live
//! with the server); it does no I/O. It is small and free of RocksDB so the fuzz target of the
//! request checks can link it.

pub mod requests;

/// Generated code of the control API.
pub mod proto {
    tonic::include_proto!("dfagent.control.v1");
}

pub use requests::{Invalid, MAX_PATH, MAX_REFERENCE, MAX_REQUEST_BYTES};
