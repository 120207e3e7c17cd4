//! An HTTP/1.1 proxy in front of a test registry that records every request (with the client's
//! address), and on the test's word injects faults: a status of its own (with a `Retry-After`
//! if asked: 429 and 503 storms), a redirect to the registry, a body cut short, a body trickled
//! slowly, a byte flipped, a connection closed without an answer — as a faulty network path,
//! cache or overloaded registry would. A [`Policy`] decides per request ([`Action`]);
//! [`first_n`] makes the common "fail the first few, then behave" one. Adding a fault is adding
//! an [`Action`] and its arm in `serve`/`forward`.
//!
//! Each request is forwarded on its own upstream connection (HTTP/1.0, so the body ends at
//! EOF); the answer goes back to the client with an exact `Content-Length` on a kept-alive
//! connection. Request bodies must carry a `Content-Length` (chunked ones are refused with
//! 501). One thread accepts, one serves each client connection; dropping the proxy stops the
//! accepting thread and shuts every client connection down.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a client or upstream connection may stay silent.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted.
const MAX_HEAD: usize = 64 << 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request as the proxy's policy sees it, before it is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The client's address.
    pub client: SocketAddr,
    /// HTTP method.
    pub method: String,
    /// Request target (path and query).
    pub path: String,
    /// The `Range` header as `(first, last)` byte positions, inclusive.
    pub range: Option<(u64, u64)>,
}

impl Request {
    /// A GET of a blob (layer) by digest.
    pub fn is_blob_get(&self) -> bool {
        is_blob_get(&self.method, &self.path)
    }
}

fn is_blob_get(method: &str, path: &str) -> bool {
    method == "GET" && path.contains("/blobs/") && !path.contains("/blobs/uploads/")
}

/// One request as the proxy saw and answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The client's address (which node asked).
    pub client: SocketAddr,
    /// HTTP method.
    pub method: String,
    /// Request target (path and query).
    pub path: String,
    /// The `Range` header as `(first, last)` byte positions, inclusive.
    pub range: Option<(u64, u64)>,
    /// Status sent to the client (the upstream's, or the proxy's own).
    pub status: u16,
    /// Body bytes sent to the client (0 for HEAD).
    pub body_len: u64,
    /// Whether the proxy flipped a byte of the body.
    pub corrupted: bool,
}

impl Seen {
    /// A GET of a blob (layer) by digest.
    pub fn is_blob_get(&self) -> bool {
        is_blob_get(&self.method, &self.path)
    }

    fn answered(req: &Request, status: u16, body_len: u64, corrupted: bool) -> Seen {
        Seen {
            client: req.client,
            method: req.method.clone(),
            path: req.path.clone(),
            range: req.range,
            status,
            body_len,
            corrupted,
        }
    }
}

/// When to flip a byte of a blob range (206) response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corrupt {
    /// Never: a recording proxy.
    Never,
    /// The first answer for each distinct path and range (the path heals on retry).
    FirstOfEachRange,
    /// Every range answer (permanent corruption).
    Always,
}

/// A `Retry-After` header the proxy sends with a status of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: N` (delta-seconds).
    Seconds(u64),
    /// `Retry-After: <HTTP-date>` at least this many seconds from now (HTTP-dates have whole
    /// seconds: the date is the next whole second plus N).
    DateIn(u64),
}

impl RetryAfter {
    /// The header's value as of now.
    pub fn header_value(self) -> String {
        match self {
            RetryAfter::Seconds(s) => s.to_string(),
            RetryAfter::DateIn(s) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(now + 1 + s))
            }
        }
    }
}

/// What the proxy does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward it upstream (502 when there is no upstream).
    Forward,
    /// Answer with this status and an empty body.
    Status(u16),
    /// Answer with this status, an empty body and a `Retry-After` header (429, 503).
    StatusRetryAfter(u16, RetryAfter),
    /// Answer 307 to the same path on the upstream itself (as object-store backed registries
    /// redirect blob GETs).
    Redirect,
    /// Forward, but send only the first N bytes of the body (the head still announces the
    /// whole length), then close the connection: a body cut short by the network.
    Truncate(u64),
    /// Forward, sending the body `chunk` bytes at a time with `pause_ms` between pieces: a
    /// slow link. Keep `chunk × pause` well under the client's read timeout per piece.
    Trickle {
        /// Bytes per piece (at least 1).
        chunk: usize,
        /// Pause after each piece.
        pause_ms: u64,
    },
    /// Forward, flipping one byte in the middle of the body (any answer with a body), as
    /// corruption on the way would.
    FlipByte,
    /// Close the connection without answering.
    Close,
}

/// A policy: the first `n` requests that `matching` picks get `action`; every other request is
/// forwarded. (`usize::MAX` for "always".)
pub fn first_n(
    n: usize,
    matching: impl Fn(&Request) -> bool + Send + Sync + 'static,
    action: Action,
) -> impl Fn(&Request) -> Action + Send + Sync + 'static {
    let picked = AtomicUsize::new(0);
    move |r: &Request| {
        if matching(r) && picked.fetch_add(1, Ordering::SeqCst) < n {
            action
        } else {
            Action::Forward
        }
    }
}

/// Decides each request's [`Action`].
pub type Policy = Arc<dyn Fn(&Request) -> Action + Send + Sync>;

struct Shared {
    upstream: Option<SocketAddr>,
    policy: Option<Policy>,
    log: Mutex<Vec<Seen>>,
    corrupt: Mutex<Corrupt>,
    stop: AtomicBool,
    /// Clones of the open client connections, to shut them down on drop.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

/// How to start a [`Proxy`].
pub struct ProxyBuilder {
    listen: SocketAddr,
    upstream: Option<SocketAddr>,
    corrupt: Corrupt,
    policy: Option<Policy>,
}

impl ProxyBuilder {
    /// Listen on `addr` (default: a free 127.0.0.1 port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Forward to `addr` (default: none, so forwarded requests get 502).
    pub fn upstream(mut self, addr: SocketAddr) -> Self {
        self.upstream = Some(addr);
        self
    }

    /// The corruption policy to start with (default [`Corrupt::Never`]).
    pub fn corrupt(mut self, c: Corrupt) -> Self {
        self.corrupt = c;
        self
    }

    /// Decide each request's fate with `f` (default: forward everything).
    pub fn policy(mut self, f: impl Fn(&Request) -> Action + Send + Sync + 'static) -> Self {
        self.policy = Some(Arc::new(f));
        self
    }

    /// Bind and start serving.
    pub fn start(self) -> Proxy {
        let listener = TcpListener::bind(self.listen)
            .unwrap_or_else(|e| panic!("binding the proxy to {}: {e}", self.listen));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream: self.upstream,
            policy: self.policy,
            log: Mutex::default(),
            corrupt: Mutex::new(self.corrupt),
            stop: AtomicBool::new(false),
            conns: Mutex::default(),
            next_conn: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("proxy {addr}"))
            .spawn(move || {
                while !sh.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, peer)) => {
                            // Accepted sockets may inherit non-blocking mode on some systems.
                            let _ = client.set_nonblocking(false);
                            let id = sh.next_conn.fetch_add(1, Ordering::SeqCst);
                            if let Ok(c) = client.try_clone() {
                                lock(&sh.conns).insert(id, c);
                            }
                            let sh = sh.clone();
                            std::thread::spawn(move || {
                                serve(&client, peer, &sh);
                                let _ = client.shutdown(Shutdown::Both);
                                lock(&sh.conns).remove(&id);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .expect("spawning the proxy's thread");
        Proxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }
}

/// The running proxy; stops on drop.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Options: listening address, upstream, corruption, policy.
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            upstream: None,
            corrupt: Corrupt::Never,
            policy: None,
        }
    }

    /// A proxy on a free 127.0.0.1 port forwarding everything to `upstream`, corrupting range
    /// answers per `corrupt`.
    pub fn start(upstream: SocketAddr, corrupt: Corrupt) -> Proxy {
        Self::builder().upstream(upstream).corrupt(corrupt).start()
    }

    /// A recording proxy on a free 127.0.0.1 port forwarding everything to `upstream`.
    pub fn forward(upstream: SocketAddr) -> Proxy {
        Self::start(upstream, Corrupt::Never)
    }

    /// A proxy on a free 127.0.0.1 port answering every request with `status` (a failing
    /// registry mirror).
    pub fn failing(status: u16) -> Proxy {
        Self::builder()
            .policy(move |_| Action::Status(status))
            .start()
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `HOST:PORT`, the registry part of an image reference through the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Change the corruption policy for requests from now on.
    pub fn set_corrupt(&self, c: Corrupt) {
        *lock(&self.shared.corrupt) = c;
    }

    /// Everything recorded since the last call.
    pub fn take_log(&self) -> Vec<Seen> {
        std::mem::take(&mut *lock(&self.shared.log))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for (_, c) in lock(&self.shared.conns).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Read from `s` until `buf` holds a full header block; returns its length (with the blank
/// line), or None at EOF, on an error or on an oversized head.
pub(crate) fn read_head(mut s: &TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut tmp = [0u8; 8192];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(p + 4);
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// The value of header `name` (case-insensitive) in a request or response head.
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn parse_range(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// An empty answer of the proxy's own.
fn own_answer(status: u16, reason: &str, extra: &str) -> String {
    format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n{extra}\r\n")
}

fn serve(mut client: &TcpStream, peer: SocketAddr, sh: &Shared) {
    let _ = client.set_read_timeout(Some(IO_TIMEOUT));
    let _ = client.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf = Vec::new();
    // Bounded: one request per iteration; the client's idle timeout or the proxy's drop ends it.
    for _ in 0..100_000 {
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let Some(head_len) = read_head(client, &mut buf) else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let mut first = head.lines().next().unwrap_or("").split(' ');
        let req = Request {
            client: peer,
            method: first.next().unwrap_or("").to_string(),
            path: first.next().unwrap_or("").to_string(),
            range: header(&head, "range").and_then(parse_range),
        };
        let version = first.next().unwrap_or("");
        let keep_alive = version == "HTTP/1.1"
            && !header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            lock(&sh.log).push(Seen::answered(&req, 501, 0, false));
            let _ = client.write_all(
                own_answer(501, "Chunked Bodies Not Supported", "Connection: close\r\n").as_bytes(),
            );
            return;
        }
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

        let action = sh.policy.as_ref().map_or(Action::Forward, |p| p(&req));
        let answer = match (action, sh.upstream) {
            (Action::Status(code), _) => {
                lock(&sh.log).push(Seen::answered(&req, code, 0, false));
                client.write_all(own_answer(code, "Injected", "").as_bytes())
            }
            (Action::StatusRetryAfter(code, after), _) => {
                lock(&sh.log).push(Seen::answered(&req, code, 0, false));
                let extra = format!("Retry-After: {}\r\n", after.header_value());
                client.write_all(own_answer(code, "Injected", &extra).as_bytes())
            }
            (Action::Close, _) => {
                lock(&sh.log).push(Seen::answered(&req, 0, 0, false));
                return;
            }
            (Action::Redirect, Some(up)) => {
                lock(&sh.log).push(Seen::answered(&req, 307, 0, false));
                let location = format!("Location: http://{up}{}\r\n", req.path);
                client.write_all(own_answer(307, "Temporary Redirect", &location).as_bytes())
            }
            (_, None) => {
                lock(&sh.log).push(Seen::answered(&req, 502, 0, false));
                client.write_all(own_answer(502, "Bad Gateway", "").as_bytes())
            }
            (
                Action::Forward | Action::Truncate(_) | Action::Trickle { .. } | Action::FlipByte,
                Some(up),
            ) => forward(client, &req, &head, &body, up, sh, action),
        };
        if answer.is_err() || !keep_alive {
            return;
        }
    }
}

/// Forward one request to `upstream` (HTTP/1.0, fresh connection), record it, and write the
/// answer to the client: corrupted per the corruption policy, and cut, trickled or flipped per
/// `action`. A cut answer ends with an error, so the connection is closed.
fn forward(
    mut client: &TcpStream,
    req: &Request,
    head: &str,
    body: &[u8],
    upstream: SocketAddr,
    sh: &Shared,
    action: Action,
) -> std::io::Result<()> {
    let method = req.method.as_str();
    let mut up_req = format!("{method} {} HTTP/1.0\r\n", req.path);
    for l in head.lines().skip(1) {
        let lower = l.to_ascii_lowercase();
        if l.is_empty() || lower.starts_with("connection:") || lower.starts_with("keep-alive:") {
            continue;
        }
        up_req.push_str(l);
        up_req.push_str("\r\n");
    }
    up_req.push_str("Connection: close\r\n\r\n");
    let resp = (|| {
        let mut up = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT)?;
        up.set_read_timeout(Some(IO_TIMEOUT))?;
        up.set_write_timeout(Some(IO_TIMEOUT))?;
        up.write_all(up_req.as_bytes())?;
        up.write_all(body)?;
        let mut resp = Vec::new();
        up.read_to_end(&mut resp)?;
        Ok::<_, std::io::Error>(resp)
    })();
    let split = resp.as_ref().ok().and_then(|r| {
        r.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| (p + 4, r))
    });
    let Some((rh, resp)) = split else {
        lock(&sh.log).push(Seen::answered(req, 502, 0, false));
        return client.write_all(own_answer(502, "Bad Gateway", "").as_bytes());
    };
    let rhead = String::from_utf8_lossy(&resp[..rh]).into_owned();
    let mut rbody = resp[rh..].to_vec();
    let status: u16 = rhead
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let policy = *lock(&sh.corrupt);
    let mut corrupted = false;
    if status == 206 && !rbody.is_empty() && method == "GET" {
        let seen_before = lock(&sh.log)
            .iter()
            .any(|s| s.path == req.path && s.range == req.range && s.corrupted);
        corrupted = match policy {
            Corrupt::Never => false,
            Corrupt::FirstOfEachRange => !seen_before,
            Corrupt::Always => true,
        };
    }
    // No body and no Content-Length for HEAD answers' own length, 1xx, 204 and 304.
    let bodyless = method == "HEAD" || status < 200 || status == 204 || status == 304;
    if action == Action::FlipByte && !bodyless && !rbody.is_empty() {
        corrupted = true;
    }
    if corrupted {
        let mid = rbody.len() / 2;
        rbody[mid] ^= 0x5a;
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
    if !bodyless {
        out.push_str(&format!("Content-Length: {}\r\n", rbody.len()));
    }
    out.push_str("\r\n");
    let body_out: &[u8] = if bodyless { &[] } else { &rbody };
    let (body_out, cut) = match action {
        Action::Truncate(n) if (n as usize) < body_out.len() => (&body_out[..n as usize], true),
        _ => (body_out, false),
    };
    lock(&sh.log).push(Seen::answered(
        req,
        status,
        body_out.len() as u64,
        corrupted,
    ));
    client.write_all(out.as_bytes())?;
    match action {
        Action::Trickle { chunk, pause_ms } => {
            for piece in body_out.chunks(chunk.max(1)) {
                client.write_all(piece)?;
                client.flush()?;
                std::thread::sleep(Duration::from_millis(pause_ms));
            }
        }
        _ => client.write_all(body_out)?,
    }
    if cut {
        client.flush()?;
        return Err(std::io::Error::other("answer cut short on purpose"));
    }
    Ok(())
}
