//! An HTTP/1.1 proxy in front of the test registry that records every request dfagent makes
//! and can flip one byte in blob range responses, as a faulty network path or cache would.
//! Each request is forwarded on its own upstream connection (HTTP/1.0, so the body ends at
//! EOF); the answer goes back to the client with an exact Content-Length on a kept-alive
//! connection.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// The `Range` header as `(first, last)` byte positions, inclusive.
    pub range: Option<(u64, u64)>,
    /// Upstream status code.
    pub status: u16,
    /// Body bytes sent to the client.
    pub body_len: u64,
    /// Whether the proxy flipped a byte of the body.
    pub corrupted: bool,
}

impl Seen {
    /// A GET of a blob (layer) by digest.
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.path.contains("/blobs/")
    }
}

/// When to flip a byte of a blob range response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corrupt {
    /// Never: a recording proxy.
    Never,
    /// The first answer for each distinct range (the path heals on retry).
    FirstOfEachRange,
    /// Every range answer (permanent corruption).
    Always,
}

struct Shared {
    log: Mutex<Vec<Seen>>,
    corrupt: Mutex<Corrupt>,
    stop: AtomicBool,
}

/// The running proxy; stops accepting on drop.
pub struct Proxy {
    /// Loopback port it listens on.
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `127.0.0.1:upstream`.
    pub fn start(upstream: u16, corrupt: Corrupt) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            log: Mutex::new(Vec::new()),
            corrupt: Mutex::new(corrupt),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            while !sh.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let sh = sh.clone();
                        std::thread::spawn(move || serve(client, upstream, &sh));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// Change the corruption policy for requests from now on.
    pub fn set_corrupt(&self, c: Corrupt) {
        *self.shared.corrupt.lock().unwrap() = c;
    }

    /// Everything recorded since the last call.
    pub fn take_log(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.shared.log.lock().unwrap())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Read from `s` until `buf` holds a full header block; returns its length (with the blank
/// line), or None at EOF before any byte.
fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut tmp = [0u8; 8192];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(p + 4);
        }
        if buf.len() > 1 << 16 {
            return None;
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn parse_range(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn serve(mut client: TcpStream, upstream: u16, sh: &Shared) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = Vec::new();
    // Bounded: one request per iteration, the client's idle timeout ends it.
    for _ in 0..100_000 {
        let Some(head_len) = read_head(&mut client, &mut buf) else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let body_len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_len + body_len {
            let mut tmp = vec![0u8; 65536];
            match client.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let body: Vec<u8> = buf[head_len..head_len + body_len].to_vec();
        buf.drain(..head_len + body_len);
        let mut first = head.lines().next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let range = header(&head, "range").and_then(parse_range);

        // Forward as HTTP/1.0 on a fresh connection.
        let mut up_req = format!("{method} {path} HTTP/1.0\r\n");
        for l in head.lines().skip(1) {
            let lower = l.to_ascii_lowercase();
            if l.is_empty() || lower.starts_with("connection:") || lower.starts_with("keep-alive:")
            {
                continue;
            }
            up_req.push_str(l);
            up_req.push_str("\r\n");
        }
        up_req.push_str("Connection: close\r\n\r\n");
        let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        let _ = up.set_read_timeout(Some(Duration::from_secs(60)));
        if up.write_all(up_req.as_bytes()).is_err() || up.write_all(&body).is_err() {
            return;
        }
        let mut resp = Vec::new();
        if up.read_to_end(&mut resp).is_err() {
            return;
        }
        let Some(rh) = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
        else {
            return;
        };
        let rhead = String::from_utf8_lossy(&resp[..rh]).into_owned();
        let mut rbody = resp[rh..].to_vec();
        let status: u16 = rhead
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let policy = *sh.corrupt.lock().unwrap();
        let mut corrupted = false;
        if status == 206 && !rbody.is_empty() && method == "GET" {
            let seen_before = sh
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|s| s.path == path && s.range == range && s.corrupted);
            corrupted = match policy {
                Corrupt::Never => false,
                Corrupt::FirstOfEachRange => !seen_before,
                Corrupt::Always => true,
            };
            if corrupted {
                let mid = rbody.len() / 2;
                rbody[mid] ^= 0x5a;
            }
        }
        let mut out = String::new();
        for (i, l) in rhead.lines().enumerate() {
            let lower = l.to_ascii_lowercase();
            if l.is_empty()
                || lower.starts_with("connection:")
                || lower.starts_with("keep-alive:")
                || lower.starts_with("transfer-encoding:")
                || (lower.starts_with("content-length:") && method != "HEAD")
            {
                continue;
            }
            if i == 0 {
                out.push_str(&l.replacen("HTTP/1.0", "HTTP/1.1", 1));
            } else {
                out.push_str(l);
            }
            out.push_str("\r\n");
        }
        if method != "HEAD" {
            out.push_str(&format!("Content-Length: {}\r\n", rbody.len()));
        }
        out.push_str("\r\n");
        sh.log.lock().unwrap().push(Seen {
            method: method.clone(),
            path,
            range,
            status,
            body_len: if method == "HEAD" {
                0
            } else {
                rbody.len() as u64
            },
            corrupted,
        });
        if client.write_all(out.as_bytes()).is_err()
            || (method != "HEAD" && client.write_all(&rbody).is_err())
        {
            return;
        }
    }
}
