//! Range requests to a seed's proxy port and the checks on their answers.
//!
//! How dfdaemon 1.5.10's proxy (`src/proxy/mod.rs`) takes a request decides the form:
//! - **`http://` origin: forward proxy.** The request goes to the seed's proxy port with the
//!   absolute blob URL (`GET http://registry/v2/.../blobs/sha256:HEX`, reqwest's
//!   `Proxy::http`); the proxy sees a host in the URI, and `X-Dragonfly-Use-P2P: true` sends
//!   the GET through dfdaemon's task manager.
//! - **`https://` origin: registry-mirror form.** A forward proxy would get a `CONNECT`, which
//!   dfdaemon only intercepts with a CA certificate of its own configured; without one it tunnels
//!   TLS straight to the registry (no P2P). So the request is
//!   `GET http://SEED:PROXY_PORT/v2/.../blobs/sha256:HEX` (no host in the URI) with
//!   `X-Dragonfly-Registry: https://registry[:port]`: the proxy rebuilds the URL from that header
//!   (`make_registry_mirror_request`, which takes precedence over the `ns` query and its static
//!   mirror address), and then handles it as above. The seed fetches from the registry over TLS.
//!
//! Both forms carry the origin's headers (credentials; dfdaemon passes them on to the registry
//! when it goes back to source), `Range`, `X-Dragonfly-Enable-Task-ID-Based-Blob-Digest: true`
//! (task id = the blob digest's hex, shared by every repository and registry holding the blob),
//! `X-Dragonfly-Prefetch: true` (the seed downloads the whole blob once, after answering the
//! range), and priority, application and tag.

use std::net::SocketAddr;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use dfagent_core::OriginRequest;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::messages::printable;
use crate::{DragonflyConfig, DragonflyError};

/// `X-Dragonfly-*` header names (dfdaemon `src/proxy/header.rs`).
pub mod headers {
    /// Registry address for the registry-mirror form.
    pub const REGISTRY: &str = "x-dragonfly-registry";
    /// Route the GET through dfdaemon's P2P task manager.
    pub const USE_P2P: &str = "x-dragonfly-use-p2p";
    /// After a range, download the whole task.
    pub const PREFETCH: &str = "x-dragonfly-prefetch";
    /// Task id from the blob digest of a `/v2/.../blobs/sha256:HEX` URL.
    pub const BLOB_DIGEST_TASK_ID: &str = "x-dragonfly-enable-task-id-based-blob-digest";
    /// `common.v2.Priority` number.
    pub const PRIORITY: &str = "x-dragonfly-priority";
    /// Application label.
    pub const APPLICATION: &str = "x-dragonfly-application";
    /// Tag label.
    pub const TAG: &str = "x-dragonfly-tag";
    /// (Response) who failed: `backend`, `proxy`, `dfdaemon`.
    pub const ERROR_TYPE: &str = "x-dragonfly-error-type";
}

/// Headers of the origin never passed on (hop-by-hop, or set here).
const DROPPED: [&str; 9] = [
    "host",
    "range",
    "connection",
    "proxy-connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-authorization",
];

/// How a request reaches the seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    /// Through the seed as an HTTP forward proxy, to `url`.
    Forward,
    /// Straight to the seed's proxy port, registry-mirror style.
    Mirror,
}

/// One range request, ready to send. `Debug` shows header values marked sensitive (the
/// origin's) as `Sensitive`.
#[derive(Clone, Debug)]
pub(crate) struct SeedRequest {
    pub form: Form,
    pub url: String,
    pub headers: HeaderMap,
}

/// Build the request for `range` of the blob at `origin`, sent to the seed at `proxy`.
pub(crate) fn build_request(
    origin: &OriginRequest,
    range: &Range<u64>,
    config: &DragonflyConfig,
    priority: i32,
    proxy: SocketAddr,
) -> Result<SeedRequest, DragonflyError> {
    if range.end <= range.start {
        return Err(DragonflyError::BadUrl("empty range".into()));
    }
    let uri: http::Uri = origin
        .url
        .parse()
        .map_err(|_| DragonflyError::BadUrl("blob url does not parse".into()))?;
    let authority = uri
        .authority()
        .ok_or_else(|| DragonflyError::BadUrl("blob url has no host".into()))?
        .as_str()
        .to_string();
    if authority.contains('@') {
        return Err(DragonflyError::BadUrl(
            "blob url carries user info; pass credentials as headers".into(),
        ));
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut headers = HeaderMap::new();
    let (form, url) = match uri.scheme_str() {
        Some("http") => (Form::Forward, origin.url.clone()),
        Some("https") => {
            headers.insert(
                HeaderName::from_static(headers::REGISTRY),
                HeaderValue::from_str(&format!("https://{authority}"))
                    .map_err(|_| DragonflyError::BadUrl("registry host".into()))?,
            );
            (Form::Mirror, format!("http://{proxy}{path}"))
        }
        other => {
            return Err(DragonflyError::BadUrl(format!(
                "scheme {:?} is neither http nor https",
                other.map(printable)
            )))
        }
    };
    for (name, value) in &origin.headers {
        let bad = || DragonflyError::InvalidHeader {
            name: printable(name),
        };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        if DROPPED.contains(&n.as_str()) {
            continue;
        }
        let mut v = HeaderValue::from_str(value).map_err(|_| bad())?;
        v.set_sensitive(true);
        headers.append(n, v);
    }
    let stat = |s: &'static str| HeaderValue::from_static(s);
    headers.insert(
        http::header::RANGE,
        HeaderValue::from_str(&format!("bytes={}-{}", range.start, range.end - 1))
            .map_err(|_| DragonflyError::BadUrl("range".into()))?,
    );
    headers.insert(HeaderName::from_static(headers::USE_P2P), stat("true"));
    headers.insert(HeaderName::from_static(headers::PREFETCH), stat("true"));
    headers.insert(
        HeaderName::from_static(headers::BLOB_DIGEST_TASK_ID),
        stat("true"),
    );
    headers.insert(
        HeaderName::from_static(headers::PRIORITY),
        HeaderValue::from(priority),
    );
    for (name, value) in [
        (headers::APPLICATION, &config.application),
        (headers::TAG, &config.tag),
    ] {
        if let Some(v) = value {
            let v = HeaderValue::from_str(v).map_err(|_| DragonflyError::InvalidHeader {
                name: name.to_string(),
            })?;
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    Ok(SeedRequest { form, url, headers })
}

/// `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`) as `START..END+1`.
pub(crate) fn parse_content_range(v: &str) -> Option<Range<u64>> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.trim().split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b: u64 = b.trim().parse().ok()?;
    if b < a {
        return None;
    }
    let total = total.trim();
    if total != "*" {
        let t: u64 = total.parse().ok()?;
        if b >= t {
            return None;
        }
    }
    Some(a..b.checked_add(1)?)
}

/// Check a seed's answer to a request for `range` and read its body: 206, a `Content-Range`
/// naming exactly `range`, a `Content-Length` (if any) of its length, and a body of exactly that
/// many bytes (reading stops as soon as it goes beyond).
pub(crate) async fn read_range(
    mut resp: reqwest::Response,
    range: &Range<u64>,
    seed: &str,
) -> Result<Bytes, DragonflyError> {
    let proto = |detail: String| DragonflyError::Protocol {
        seed: seed.to_string(),
        detail,
    };
    let status = resp.status().as_u16();
    if status == 401 {
        return Err(DragonflyError::Unauthorized {
            seed: seed.to_string(),
        });
    }
    if status != 206 {
        if (200..300).contains(&status) {
            return Err(proto(format!(
                "HTTP {status} instead of 206 to a range request"
            )));
        }
        let origin = resp
            .headers()
            .get(headers::ERROR_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| printable(&v[..v.len().min(32)]))
            .unwrap_or_else(|| "unknown".to_string());
        return Err(DragonflyError::Status {
            seed: seed.to_string(),
            status,
            origin,
        });
    }
    let want = range.end - range.start;
    let got = resp
        .headers()
        .get(http::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_content_range);
    match got {
        Some(r) if r == *range => {}
        Some(r) => {
            return Err(proto(format!(
                "Content-Range {}-{} for asked {}-{}",
                r.start,
                r.end - 1,
                range.start,
                range.end - 1
            )))
        }
        None => return Err(proto("206 without a valid Content-Range".into())),
    }
    if let Some(len) = resp.content_length() {
        if len != want {
            return Err(proto(format!(
                "Content-Length {len} for {want} bytes asked"
            )));
        }
    }
    let cap = usize::try_from(want).map_err(|_| proto("range too large".into()))?;
    let mut body = BytesMut::with_capacity(cap);
    // Bounded: every chunk adds bytes, and reading stops once more than asked arrived; the
    // caller bounds the time.
    loop {
        let chunk = resp.chunk().await.map_err(|e| DragonflyError::Network {
            seed: seed.to_string(),
            detail: format!("body cut short after {} of {want} bytes: {e}", body.len()),
        })?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > cap {
            return Err(proto(format!("body longer than the {want} bytes asked")));
        }
        body.extend_from_slice(&chunk);
    }
    if body.len() != cap {
        return Err(proto(format!("short body: {} of {want} bytes", body.len())));
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(url: &str) -> OriginRequest {
        OriginRequest {
            url: url.to_string(),
            headers: vec![
                ("Authorization".into(), "Bearer s3cr3t-token".into()),
                ("Host".into(), "ignored".into()),
            ],
        }
    }

    #[test]
    fn forward_form_for_http() {
        let cfg = DragonflyConfig {
            application: Some("dfagent".into()),
            ..Default::default()
        };
        let blob = format!("http://reg:5000/v2/app/blobs/sha256:{}", "a".repeat(64));
        let r = build_request(
            &origin(&blob),
            &(10..20),
            &cfg,
            6,
            "10.0.0.1:4001".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(r.form, Form::Forward);
        assert_eq!(r.url, blob);
        assert_eq!(r.headers["range"], "bytes=10-19");
        assert_eq!(r.headers[headers::USE_P2P], "true");
        assert_eq!(r.headers[headers::PREFETCH], "true");
        assert_eq!(r.headers[headers::BLOB_DIGEST_TASK_ID], "true");
        assert_eq!(r.headers[headers::PRIORITY], "6");
        assert_eq!(r.headers[headers::APPLICATION], "dfagent");
        assert!(r.headers.get("host").is_none());
        assert!(r.headers.get(headers::REGISTRY).is_none());
        // The credential travels, but Debug does not show it.
        assert_eq!(r.headers["authorization"], "Bearer s3cr3t-token");
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
    }

    #[test]
    fn mirror_form_for_https() {
        let cfg = DragonflyConfig::default();
        let blob = format!(
            "https://reg.example:8443/v2/a/b/blobs/sha256:{}",
            "b".repeat(64)
        );
        let r = build_request(
            &origin(&blob),
            &(0..1),
            &cfg,
            5,
            "[::1]:4001".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(r.form, Form::Mirror);
        assert_eq!(
            r.url,
            format!("http://[::1]:4001/v2/a/b/blobs/sha256:{}", "b".repeat(64))
        );
        assert_eq!(r.headers[headers::REGISTRY], "https://reg.example:8443");
        assert_eq!(r.headers["range"], "bytes=0-0");
    }

    #[test]
    fn bad_header_values_are_errors_without_the_value() {
        let cfg = DragonflyConfig::default();
        let mut o = origin("http://reg/v2/x/blobs/sha256:00");
        o.headers.push(("X-Secret".into(), "top\nsecret".into()));
        let e = build_request(&o, &(0..10), &cfg, 6, "10.0.0.1:4001".parse().unwrap()).unwrap_err();
        assert!(matches!(e, DragonflyError::InvalidHeader { .. }));
        let msg = format!("{e} {e:?}");
        assert!(
            msg.contains("X-Secret") && !msg.contains("secret\""),
            "{msg}"
        );
        assert!(!msg.contains("top"), "{msg}");
        let mut o = origin("http://reg/v2/x/blobs/sha256:00");
        o.headers.push(("bad name".into(), "v".into()));
        assert!(build_request(&o, &(0..10), &cfg, 6, "10.0.0.1:4001".parse().unwrap()).is_err());
        let o = origin("ftp://reg/x");
        assert!(matches!(
            build_request(&o, &(0..10), &cfg, 6, "10.0.0.1:4001".parse().unwrap()),
            Err(DragonflyError::BadUrl(_))
        ));
        let o = origin("http://user:pw@reg/x");
        let e = build_request(&o, &(0..10), &cfg, 6, "10.0.0.1:4001".parse().unwrap()).unwrap_err();
        assert!(!e.to_string().contains("pw"));
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some(0..10));
        assert_eq!(parse_content_range("bytes 5-5/*"), Some(5..6));
        assert_eq!(parse_content_range("bytes 9-0/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("items 0-9/100"), None);
        assert_eq!(parse_content_range("bytes 0-18446744073709551615/*"), None);
    }
}
