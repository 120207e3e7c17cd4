//! Loopback addresses for test servers, and a plain HTTP GET for reading their pages.

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

/// The body of `GET path` from the HTTP server at `addr` (HTTP/1.0, so the server closes the
/// connection after the answer), with bounded connect and read times. Fails the test on a
/// network error.
pub fn http_get_body(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    use std::time::Duration;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"));
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"));
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A `reqwest` client builder that works in any test binary: one that also links the registry
/// crate unifies reqwest onto rustls without a crypto provider, and building a client then
/// panics unless one is installed (ring, as the registry installs it).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}
