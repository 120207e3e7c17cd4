//! A link-shaping TCP proxy: a user-space stand-in for `tc netem` (which these machines lack).
//!
//! Every byte between a client and the upstream (the registry) goes through a delay line and a
//! pacer per direction:
//! - **latency**: each direction adds half the configured round-trip time, and a new
//!   connection's first byte towards the upstream waits one extra round trip (the TCP
//!   handshake a real link would cost);
//! - **bandwidth**: each direction is paced to the configured rate, so `n` bytes take at least
//!   `n / rate` seconds. The pacer is shared by all connections (one link of the node) unless
//!   [`ShapeConfig::per_connection`] is set.
//!
//! Counters record the bytes actually written to each side, so a benchmark can say how much a
//! side fetched from the registry. A proxy started with recording on ([`Proxy::start_on`]) also
//! keeps one [`Exchange`] per HTTP request: which client asked for which path and how many answer
//! bytes it got, so that a benchmark with several nodes can say which node fetched what. It reads
//! HTTP/1.1 without pipelining (what registry clients send): a client sends its next request
//! only after the whole answer to the previous one, so every answer byte belongs to the last
//! request seen on its connection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest piece read from a socket and sent on as one unit.
const PIECE: usize = 64 << 10;
/// Pieces in flight per direction (delay line depth); beyond it the reader waits (backpressure).
const DEPTH: usize = 256;
/// How far the pacer lets a sender run ahead of the link before it waits: timers tick in
/// milliseconds, so waiting out every small piece would cap the rate far below the setting.
const PACER_SLACK: Duration = Duration::from_millis(2);
/// How far the link's clock may lag behind now and still be continued (a late timer on a busy
/// machine is made up); a longer gap counts as idle. Hence `n` bytes never take less than
/// `n / rate - PACER_SLACK - PACER_CATCH_UP`.
const PACER_CATCH_UP: Duration = Duration::from_millis(10);
/// How long connecting to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the link is shaped.
#[derive(Clone, Copy, Debug)]
pub struct ShapeConfig {
    /// Bytes per second in each direction.
    pub bytes_per_sec: f64,
    /// Added round-trip time (half each way).
    pub rtt: Duration,
    /// Pace each connection on its own instead of all connections sharing one link.
    pub per_connection: bool,
}

/// Bytes the proxy has written to each side, and connections accepted.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes written to clients (what clients fetched from the upstream).
    pub to_client: AtomicU64,
    /// Bytes written to the upstream (requests, uploads).
    pub to_upstream: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Bytes written to clients.
    pub to_client: u64,
    /// Bytes written to the upstream.
    pub to_upstream: u64,
    /// Connections accepted.
    pub connections: u64,
}

impl CounterSnapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &CounterSnapshot) -> CounterSnapshot {
        CounterSnapshot {
            to_client: self.to_client - earlier.to_client,
            to_upstream: self.to_upstream - earlier.to_upstream,
            connections: self.connections - earlier.connections,
        }
    }
}

impl Counters {
    /// The current values.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            to_client: self.to_client.load(Relaxed),
            to_upstream: self.to_upstream.load(Relaxed),
            connections: self.connections.load(Relaxed),
        }
    }
}

/// Paces bytes to a rate: `take(n)` returns when the link would have finished sending them.
#[derive(Debug)]
pub struct Pacer {
    bytes_per_sec: f64,
    next_free: Mutex<Option<Instant>>,
}

impl Pacer {
    /// A pacer of `bytes_per_sec`.
    pub fn new(bytes_per_sec: f64) -> Self {
        Pacer {
            bytes_per_sec,
            next_free: Mutex::new(None),
        }
    }

    /// Wait until `n` more bytes have (nearly, see [`PACER_SLACK`]) gone through the link.
    pub async fn take(&self, n: usize) {
        let done = {
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Continue from the link's clock while it is busy (even a little behind now: a late
            // timer is made up); after an idle gap, start now (no burst credit).
            let start = match *next {
                Some(t) if t + PACER_CATCH_UP >= now => t,
                _ => now,
            };
            let end = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
            *next = Some(end);
            end
        };
        if let Some(wait_until) = done.checked_sub(PACER_SLACK) {
            if wait_until > Instant::now() {
                tokio::time::sleep_until(wait_until).await;
            }
        }
    }
}

/// One HTTP request a recording proxy forwarded, and the bytes of its answer so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// The client's address (which node asked).
    pub client: SocketAddr,
    /// HTTP method.
    pub method: String,
    /// Request target (path and query).
    pub path: String,
    /// Bytes of the answer's head (status line and headers) written to the client.
    pub head_bytes: u64,
    /// Bytes of the answer after its head (the body) written to the client.
    pub body_bytes: u64,
}

impl Exchange {
    /// The digest hex of the blob this request GETs (`GET /v2/NAME/blobs/sha256:HEX`), if it
    /// is one (uploads are not).
    pub fn blob_get(&self) -> Option<&str> {
        if self.method != "GET" || self.path.contains("/blobs/uploads/") {
            return None;
        }
        let path = self.path.split('?').next().unwrap_or_default();
        let (_, digest) = path.rsplit_once("/blobs/")?;
        digest.strip_prefix("sha256:")
    }
}

/// Every exchange a recording proxy saw, in the order the requests came.
type Log = Arc<Mutex<Vec<Exchange>>>;

/// Longest request head the recorder parses; a longer one stops recording on its connection.
const MAX_HEAD: usize = 64 << 10;
/// End of an HTTP head.
const HEAD_END: &[u8] = b"\r\n\r\n";

/// Where a connection's request stream is.
enum ReqState {
    /// Reading a request head (the bytes so far).
    Head(Vec<u8>),
    /// Skipping a request body of this many more bytes.
    Body(u64),
    /// Lost track (a chunked request body, an oversized head): nothing more is recorded.
    Lost,
}

/// One connection's recording state.
struct ConnRecorder {
    client: SocketAddr,
    log: Log,
    state: Mutex<ConnState>,
}

struct ConnState {
    req: ReqState,
    /// The log index of the last request seen (answer bytes go to it).
    current: Option<usize>,
    /// How many bytes of [`HEAD_END`] the answer matched so far; 4 = in the body.
    head_matched: usize,
}

impl ConnRecorder {
    fn new(client: SocketAddr, log: Log) -> Self {
        ConnRecorder {
            client,
            log,
            state: Mutex::new(ConnState {
                req: ReqState::Head(Vec::new()),
                current: None,
                head_matched: 0,
            }),
        }
    }

    /// Bytes forwarded from the client to the upstream.
    fn on_request_bytes(&self, mut data: &[u8]) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *guard;
        // Each pass consumes at least one byte or returns, so this ends.
        while !data.is_empty() {
            match &mut st.req {
                ReqState::Lost => return,
                ReqState::Body(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0 {
                        st.req = ReqState::Head(Vec::new());
                    }
                }
                ReqState::Head(buf) => {
                    let from = buf.len().saturating_sub(HEAD_END.len() - 1);
                    buf.extend_from_slice(data);
                    let Some(end) = find(&buf[from..], HEAD_END).map(|i| from + i + HEAD_END.len())
                    else {
                        if buf.len() > MAX_HEAD {
                            st.req = ReqState::Lost;
                        }
                        return;
                    };
                    // What came after the head is the body or the next request.
                    let taken = data.len() - (buf.len() - end);
                    data = &data[taken..];
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let (method, path, body) = parse_request_head(&head);
                    let index = {
                        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
                        log.push(Exchange {
                            client: self.client,
                            method,
                            path,
                            head_bytes: 0,
                            body_bytes: 0,
                        });
                        log.len() - 1
                    };
                    st.current = Some(index);
                    st.head_matched = 0;
                    st.req = match body {
                        Some(0) => ReqState::Head(Vec::new()),
                        Some(n) => ReqState::Body(n),
                        None => ReqState::Lost,
                    };
                }
            }
        }
    }

    /// Bytes written from the upstream to the client.
    fn on_answer_bytes(&self, data: &[u8]) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(index) = st.current else { return };
        let mut head = 0u64;
        let mut i = 0;
        while st.head_matched < HEAD_END.len() && i < data.len() {
            st.head_matched = if data[i] == HEAD_END[st.head_matched] {
                st.head_matched + 1
            } else if data[i] == HEAD_END[0] {
                1
            } else {
                0
            };
            i += 1;
            head += 1;
        }
        let body = (data.len() - i) as u64;
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = log.get_mut(index) {
            e.head_bytes += head;
            e.body_bytes += body;
        }
    }
}

/// The first position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Method, target and body length of a request head (`None`: a chunked body, not followed).
fn parse_request_head(head: &str) -> (String, String, Option<u64>) {
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let mut body = Some(0);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            body = value.parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            body = None;
        }
    }
    (method, path, body)
}

/// A running proxy; dropping it stops accepting and ends every connection.
pub struct Proxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    log: Option<Log>,
    accept: JoinHandle<()>,
}

struct Link {
    shape: ShapeConfig,
    down: Arc<Pacer>,
    up: Arc<Pacer>,
}

impl Proxy {
    /// Listen on 127.0.0.1 (a free port) and forward to `upstream`, shaped by `shape`. Must be
    /// called within a tokio runtime, which then runs the proxy.
    pub async fn start(upstream: SocketAddr, shape: ShapeConfig) -> io::Result<Proxy> {
        Self::start_on(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream,
            shape,
            false,
        )
        .await
    }

    /// Listen on `listen` (port 0: a free one) and forward to `upstream`, shaped by `shape`;
    /// with `record`, keep an [`Exchange`] per request (see [`Proxy::exchanges`]). Must be
    /// called within a tokio runtime, which then runs the proxy.
    pub async fn start_on(
        listen: SocketAddr,
        upstream: SocketAddr,
        shape: ShapeConfig,
        record: bool,
    ) -> io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let log: Option<Log> = record.then(Log::default);
        let link = Arc::new(Link {
            shape,
            down: Arc::new(Pacer::new(shape.bytes_per_sec)),
            up: Arc::new(Pacer::new(shape.bytes_per_sec)),
        });
        let c = counters.clone();
        let conn_log = log.clone();
        let accept = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, peer)) = accepted else { continue };
                        c.connections.fetch_add(1, Relaxed);
                        let rec = conn_log
                            .as_ref()
                            .map(|l| Arc::new(ConnRecorder::new(peer, l.clone())));
                        conns.spawn(serve(client, upstream, link.clone(), c.clone(), rec));
                    }
                    // Reap finished connections so the set stays small.
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            // Dropping `conns` (when this task is aborted) aborts every connection.
        });
        Ok(Proxy {
            addr,
            counters,
            log,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The byte counters.
    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// Every request seen so far with its answer's bytes (answers still running included);
    /// empty unless started with recording on.
    pub fn exchanges(&self) -> Vec<Exchange> {
        match &self.log {
            Some(l) => l.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            None => Vec::new(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    link: Arc<Link>,
    counters: Arc<Counters>,
    rec: Option<Arc<ConnRecorder>>,
) {
    let accepted = Instant::now();
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        _ => return,
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (down, up) = if link.shape.per_connection {
        (
            Arc::new(Pacer::new(link.shape.bytes_per_sec)),
            Arc::new(Pacer::new(link.shape.bytes_per_sec)),
        )
    } else {
        (link.down.clone(), link.up.clone())
    };
    let one_way = link.shape.rtt / 2;
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let counters_up = counters.clone();
    let rec_up = rec.clone();
    // Client → upstream: nothing arrives before the handshake's round trip.
    let to_upstream = pipe(cr, uw, accepted + link.shape.rtt, one_way, up, move |b| {
        counters_up.to_upstream.fetch_add(b.len() as u64, Relaxed);
        if let Some(r) = &rec_up {
            r.on_request_bytes(b);
        }
    });
    let to_client = pipe(ur, cw, accepted, one_way, down, move |b| {
        counters.to_client.fetch_add(b.len() as u64, Relaxed);
        if let Some(r) = &rec {
            r.on_answer_bytes(b);
        }
    });
    tokio::join!(to_upstream, to_client);
}

/// Copy `from` to `to` through a delay line (`one_way` after arrival, never before `gate`) and
/// the pacer, calling `observe` with each piece just before it is written. Ends at EOF or an
/// error on either side.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    gate: Instant,
    one_way: Duration,
    pacer: Arc<Pacer>,
    observe: impl Fn(&[u8]),
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(DEPTH);
    let reader = async move {
        loop {
            let mut buf = vec![0u8; PIECE];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.truncate(n);
            let due = Instant::now().max(gate) + one_way;
            if tx.send((due, buf)).await.is_err() {
                break;
            }
        }
        // Dropping `tx` tells the writer the stream ended.
    };
    let writer = async move {
        while let Some((due, piece)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            pacer.take(piece.len()).await;
            // Counted before the write, so a reader never holds bytes the counter lacks.
            observe(&piece);
            if to.write_all(&piece).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn upstream_sending(total: usize) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Made before any request, so that building it is not part of a timed transfer.
        let data = Arc::new(vec![7u8; total]);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let data = data.clone();
                tokio::spawn(async move {
                    // Wait for a one-byte request, then send `total` bytes and close.
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    let _ = s.write_all(&data).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        addr
    }

    /// Request and read everything; the bytes and when the last one arrived.
    async fn fetch(addr: SocketAddr) -> (Vec<u8>, Instant) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        (got, Instant::now())
    }

    fn all_sevens(v: &[u8]) -> usize {
        assert!(v.iter().all(|&b| b == 7));
        v.len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shapes_bandwidth_and_counts_bytes() {
        let total = 10_000_000;
        let up = upstream_sending(total).await;
        let proxy = Proxy::start(
            up,
            ShapeConfig {
                bytes_per_sec: 20e6,
                rtt: Duration::from_millis(2),
                per_connection: false,
            },
        )
        .await
        .unwrap();
        let t = Instant::now();
        let (got, done) = fetch(proxy.addr()).await;
        let took = done - t;
        assert_eq!(all_sevens(&got), total);
        eprintln!("10 MB at 20 MB/s took {took:?}");
        // 10 MB at 20 MB/s cannot take less than 0.5 s (less the pacer's 2 ms slack and 10 ms
        // catch-up): a lower bound the shaper guarantees, not a timing guess.
        assert!(took >= Duration::from_millis(488), "took {took:?}");
        let c = proxy.counters();
        assert_eq!(c.to_client, total as u64);
        assert_eq!(c.to_upstream, 1);
        assert_eq!(c.connections, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn adds_round_trips_and_shares_the_link() {
        let up = upstream_sending(1_000_000).await;
        let proxy = Proxy::start(
            up,
            ShapeConfig {
                bytes_per_sec: 10e6,
                rtt: Duration::from_millis(100),
                per_connection: false,
            },
        )
        .await
        .unwrap();
        let t = Instant::now();
        // Two connections at once share 10 MB/s: 2 MB need 0.2 s, plus handshake and request
        // (1.5 round trips before the upstream sees the request) and the reply's half trip.
        let ((a, ta), (b, tb)) = tokio::join!(fetch(proxy.addr()), fetch(proxy.addr()));
        assert_eq!((all_sevens(&a), all_sevens(&b)), (1_000_000, 1_000_000));
        assert!(ta.max(tb) - t >= Duration::from_millis(188 + 200));
        assert_eq!(proxy.counters().to_client, 2_000_000);
        assert_eq!(proxy.counters().connections, 2);
    }

    /// An HTTP upstream: answers each request head with `Content-Length: N` and N bytes,
    /// where N is the number after the last `/` of the path; HEAD gets the head only.
    async fn http_upstream() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut b = [0u8; 4096];
                    loop {
                        let Some(end) = find(&buf, HEAD_END) else {
                            match s.read(&mut b).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&b[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let (method, path, body) = parse_request_head(&head);
                        // The request's body is not an answer's business: skip it.
                        let skip = end + HEAD_END.len() + body.unwrap() as usize;
                        while buf.len() < skip {
                            match s.read(&mut b).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&b[..n]),
                            }
                        }
                        buf.drain(..skip);
                        let n: usize = path.rsplit('/').next().unwrap().parse().unwrap();
                        let mut answer =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").into_bytes();
                        if method != "HEAD" {
                            answer.extend(std::iter::repeat_n(b'\r', n));
                        }
                        if s.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Send `req` and read an answer of `len` bytes in all.
    async fn exchange(s: &mut TcpStream, req: &str, len: usize) {
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = vec![0u8; len];
        s.read_exact(&mut got).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_each_request_with_its_client_and_body_bytes() {
        let up = http_upstream().await;
        let proxy = Proxy::start_on(
            "127.0.0.1:0".parse().unwrap(),
            up,
            ShapeConfig {
                bytes_per_sec: 1e9,
                rtt: Duration::from_millis(1),
                per_connection: false,
            },
            true,
        )
        .await
        .unwrap();
        let head = |n: usize| format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").len();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let me = s.local_addr().unwrap();
        // Three requests on one connection; the second has a body the recorder must skip, and
        // the answer bodies are all `\r` (they must not be taken for a head's end).
        exchange(
            &mut s,
            "GET /v2/a/blobs/sha256:ab12/300000 HTTP/1.1\r\nHost: x\r\n\r\n",
            head(300000) + 300000,
        )
        .await;
        exchange(
            &mut s,
            "PUT /v2/a/blobs/uploads/u/5 HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz",
            head(5) + 5,
        )
        .await;
        exchange(&mut s, "HEAD /v2/a/manifests/7 HTTP/1.1\r\n\r\n", head(7)).await;
        let log = proxy.exchanges();
        assert_eq!(log.len(), 3, "{log:?}");
        assert!(log.iter().all(|e| e.client == me));
        assert_eq!(
            (log[0].method.as_str(), log[0].blob_get(), log[0].body_bytes),
            ("GET", Some("ab12/300000"), 300000)
        );
        assert_eq!(log[0].head_bytes, head(300000) as u64);
        assert_eq!(
            (log[1].method.as_str(), log[1].blob_get(), log[1].body_bytes),
            ("PUT", None, 5)
        );
        assert_eq!((log[2].method.as_str(), log[2].body_bytes), ("HEAD", 0));
        assert_eq!(log[2].head_bytes, head(7) as u64);
        // Without recording, nothing is kept.
        let plain = Proxy::start(
            up,
            ShapeConfig {
                bytes_per_sec: 1e9,
                rtt: Duration::ZERO,
                per_connection: false,
            },
        )
        .await
        .unwrap();
        let mut s = TcpStream::connect(plain.addr()).await.unwrap();
        exchange(&mut s, "HEAD /v2/a/manifests/7 HTTP/1.1\r\n\r\n", head(7)).await;
        assert!(plain.exchanges().is_empty());
    }

    /// Large transfers never beat the configured rate (the shaper's correctness); how close
    /// they come is printed (`--nocapture`) but not asserted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn achieved_rate() {
        for (total, rate) in [(50_000_000usize, 100e6), (10_000_000, 20e6)] {
            let up = upstream_sending(total).await;
            let proxy = Proxy::start(
                up,
                ShapeConfig {
                    bytes_per_sec: rate,
                    rtt: Duration::from_millis(2),
                    per_connection: false,
                },
            )
            .await
            .unwrap();
            let t = Instant::now();
            let (got, done) = fetch(proxy.addr()).await;
            let secs = (done - t).as_secs_f64();
            assert_eq!(all_sevens(&got), total);
            eprintln!(
                "{total} bytes at {} MB/s: {secs:.3} s, {:.1} MB/s achieved",
                rate / 1e6,
                total as f64 / secs / 1e6
            );
            assert!(secs >= total as f64 / rate - 0.012);
        }
    }
}
