//! A minimal blocking HTTP/1.1 client for range GETs of registry blobs: the "plain HTTP"
//! baseline, timed to the first body byte. Only what a registry blob answer needs: a status
//! line, headers, and a body of `Content-Length` bytes (keep-alive, so several ranges can share
//! one connection).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 << 10;

/// One connection to an HTTP server.
pub struct Conn {
    stream: TcpStream,
    host: String,
    /// Bytes read past the previous response (none with Content-Length bodies, kept for safety).
    leftover: Vec<u8>,
}

/// A range GET's answer.
pub struct RangeReply {
    /// The body.
    pub body: Vec<u8>,
    /// From sending the request to having the first body byte.
    pub first_byte: Duration,
    /// From sending the request to having the whole body.
    pub total: Duration,
}

impl Conn {
    /// Connect to `addr` (every read and write bounded by `timeout`).
    pub fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            host: addr.to_string(),
            leftover: Vec::new(),
        })
    }

    /// GET `path` bytes `start..end` (end exclusive); `start` is measured from when the request
    /// is sent. Fails unless the server answers 206 with exactly that many bytes.
    pub fn get_range(&mut self, path: &str, start: u64, end: u64) -> anyhow::Result<RangeReply> {
        ensure!(end > start, "empty range {start}..{end}");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nRange: bytes={start}-{}\r\nUser-Agent: dfagent-bench\r\n\r\n",
            self.host,
            end - 1
        );
        let t0 = Instant::now();
        self.stream.write_all(req.as_bytes())?;
        let mut buf = std::mem::take(&mut self.leftover);
        let mut chunk = vec![0u8; 64 << 10];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            ensure!(buf.len() <= MAX_HEAD, "response head over {MAX_HEAD} bytes");
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed before the response head ended");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .context("no status in the response")?;
        if status != "206" {
            bail!("GET {path} range {start}-{}: status {status}", end - 1);
        }
        let len: u64 = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .context("no Content-Length in the 206 answer")?;
        ensure!(
            len == end - start,
            "asked for {} bytes, the server sends {len}",
            end - start
        );
        let want = usize::try_from(len)?;
        let mut body = buf.split_off(head_end);
        if body.is_empty() {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed before the body");
            }
            body.extend_from_slice(&chunk[..n]);
        }
        let first_byte = t0.elapsed();
        while body.len() < want {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!(
                    "connection closed after {} of {want} body bytes",
                    body.len()
                );
            }
            body.extend_from_slice(&chunk[..n]);
        }
        if body.len() > want {
            self.leftover = body.split_off(want);
        }
        Ok(RangeReply {
            body,
            first_byte,
            total: t0.elapsed(),
        })
    }
}
