//! Loopback addresses for test servers.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// A loopback port nothing listens on right now (bound and released: another process may take
/// it, which for a test means a spurious failure, never a wrong pass).
pub fn free_port() -> u16 {
    free_addr().port()
}

/// `127.0.0.1:PORT` with a [`free_port`].
pub fn free_addr() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
}
