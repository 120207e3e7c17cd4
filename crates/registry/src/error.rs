//! Errors of the registry client, and the line between failures worth retrying (the network, a
//! busy or broken server) and those that are final (bad credentials, missing content, a registry
//! that breaks the protocol). [`status_class`] is the one place that says what an HTTP status
//! means; [`classify`] turns every error of the OCI client, and [`classify_response`] every
//! failed answer of our own requests, into a [`Failure`] through it.

use std::time::{Duration, SystemTime};

use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};

/// Result of registry operations.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The configuration cannot be used (unreadable CA file, broken docker config.json, …).
    #[error("registry configuration: {0}")]
    Config(String),

    /// An image reference that does not parse.
    #[error("invalid image reference {reference:?}: {detail}")]
    Reference {
        /// The reference as given.
        reference: String,
        /// What the parser said.
        detail: String,
    },

    /// The registry refused our credentials (or wants some and we have none).
    #[error("authentication to registry {registry} failed: {detail}")]
    Auth {
        /// host[:port] of the registry.
        registry: String,
        /// What the registry or its token service said.
        detail: String,
    },

    /// The registry does not have the manifest or blob.
    #[error("not found in the registry: {what}: {detail}")]
    NotFound {
        /// What was asked for.
        what: String,
        /// What the registry said.
        detail: String,
    },

    /// The reference names an image that is not a Nydus image.
    #[error("not a Nydus image: {reference}: {detail}")]
    NotNydus {
        /// The reference as given.
        reference: String,
        /// Why it is not one.
        detail: String,
    },

    /// The registry answered something the distribution protocol or the Nydus layout does not
    /// allow (bad JSON, an unexpected media type, more bytes than asked for, …).
    #[error("protocol error: {0}")]
    Protocol(String),

    /// Content does not hash to the digest that names it.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    Digest {
        /// What was checked.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest of what we got.
        actual: String,
    },

    /// Content larger than the limit we accept for it.
    #[error("{what}: {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// A range read returned fewer bytes than asked for.
    #[error("{what}: got {got} bytes, expected {expected}")]
    ShortRead {
        /// What was read.
        what: String,
        /// Bytes received.
        got: u64,
        /// Bytes asked for.
        expected: u64,
    },

    /// A request was asked for something impossible (a range outside the blob, a blob that is
    /// not part of the image).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The bootstrap layer is not a tar (or tar.gz) holding `image/image.boot`.
    #[error("bootstrap layer {digest}: {detail}")]
    BootstrapLayer {
        /// Digest of the layer.
        digest: String,
        /// What is wrong with it.
        detail: String,
    },

    /// Transient failures (connection errors, 429, 5xx) went on after every retry, or the
    /// registry asked us (`Retry-After`) to wait longer than the retry budget has left. The
    /// message is the last failure's, which names the operation.
    #[error("gave up after {attempts} attempts{}: {last}", retry_after_note(.retry_after))]
    RetriesExhausted {
        /// The operation.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The wait the registry asked for with its last answer, when that was more than the
        /// retry budget had left (so no further attempt was made).
        retry_after: Option<Duration>,
        /// The last failure.
        last: Box<RegistryError>,
    },

    /// Any other failure reported by the OCI distribution client.
    #[error("{what}: {source}")]
    Registry {
        /// The operation.
        what: String,
        /// What the client said.
        #[source]
        source: OciDistributionError,
    },

    /// A local file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A local bootstrap that does not parse.
    #[error("bootstrap: {0}")]
    Rafs(#[from] dfagent_rafs::RafsError),
}

/// The part of [`RegistryError::RetriesExhausted`]'s message about a `Retry-After` we did not
/// wait for.
fn retry_after_note(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(
            " (the registry asked to retry after {:.1} s, beyond the retry budget)",
            d.as_secs_f64()
        ),
        None => String::new(),
    }
}

impl RegistryError {
    /// The broad kind of this failure, for the resolver's per-kind counters.
    pub fn tier_error_kind(&self) -> dfagent_core::TierErrorKind {
        use dfagent_core::TierErrorKind as K;
        use OciDistributionError as E;
        match self {
            RegistryError::Auth { .. } => K::Auth,
            RegistryError::NotFound { .. } => K::Status,
            RegistryError::Protocol(_)
            | RegistryError::Digest { .. }
            | RegistryError::ShortRead { .. }
            | RegistryError::BootstrapLayer { .. }
            | RegistryError::NotNydus { .. } => K::Protocol,
            RegistryError::RetriesExhausted { last, .. } => last.tier_error_kind(),
            RegistryError::Registry { source, .. } => match source {
                E::ServerError { code, .. } => status_kind(*code),
                E::RegistryError { envelope, .. } if is_rate_limited(envelope) => K::Busy,
                E::RegistryError { .. } => K::Status,
                E::RequestError(e) if e.is_timeout() => K::Timeout,
                E::RequestError(e) => match e.status() {
                    Some(s) => status_kind(s.as_u16()),
                    None => K::Network,
                },
                E::IoError(_) => K::Network,
                _ => K::Other,
            },
            RegistryError::Io { .. } => K::Io,
            RegistryError::Config(_)
            | RegistryError::Reference { .. }
            | RegistryError::TooLarge { .. }
            | RegistryError::InvalidRequest(_)
            | RegistryError::Rafs(_) => K::Other,
        }
    }
}

/// One failed attempt of a retried operation: the error, and whether and when trying again
/// may help.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: RegistryError,
    /// Trying again later may help (network trouble, a busy server).
    pub(crate) transient: bool,
    /// The registry said when to try again (`Retry-After` of a 429 or 503).
    pub(crate) retry_after: Option<Duration>,
    /// A 401 to a request that carried credentials: they may have gone stale (an expired
    /// token), so authenticating again and trying once more may help.
    pub(crate) reauth: bool,
}

impl Failure {
    /// A failure that retrying cannot fix.
    pub(crate) fn fatal(error: RegistryError) -> Self {
        Self {
            error,
            transient: false,
            retry_after: None,
            reauth: false,
        }
    }

    /// A failure that may go away (network trouble, a busy server).
    pub(crate) fn transient(error: RegistryError) -> Self {
        Self {
            transient: true,
            ..Self::fatal(error)
        }
    }
}

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Self {
        Failure::fatal(error)
    }
}

/// What an HTTP status means to the client. The one place that decides which statuses are
/// retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusClass {
    /// 2xx.
    Success,
    /// 401: missing or stale credentials; authenticate (again) and try once more.
    Unauthorized,
    /// 403: the credentials are good but not enough.
    Denied,
    /// 404.
    NotFound,
    /// 429 and 503: the registry is at its limit; retried, after its `Retry-After` if it sent
    /// one.
    Busy,
    /// 408 and every other 5xx but 501: retried with backoff.
    Transient,
    /// Anything else: retrying gets the same answer.
    Final,
}

/// What status `code` means (see [`StatusClass`]).
pub(crate) fn status_class(code: u16) -> StatusClass {
    match code {
        200..=299 => StatusClass::Success,
        401 => StatusClass::Unauthorized,
        403 => StatusClass::Denied,
        404 => StatusClass::NotFound,
        429 | 503 => StatusClass::Busy,
        408 => StatusClass::Transient,
        501 => StatusClass::Final,
        500..=599 => StatusClass::Transient,
        _ => StatusClass::Final,
    }
}

/// Whether an HTTP status is worth retrying: 408, 429 and every 5xx but 501 (Not Implemented).
pub(crate) fn status_is_transient(code: u16) -> bool {
    matches!(
        status_class(code),
        StatusClass::Busy | StatusClass::Transient
    )
}

/// The tier error kind of a failed status: busy for 429/503, auth for 401/403, else a status
/// error.
fn status_kind(code: u16) -> dfagent_core::TierErrorKind {
    match status_class(code) {
        StatusClass::Busy => dfagent_core::TierErrorKind::Busy,
        StatusClass::Unauthorized | StatusClass::Denied => dfagent_core::TierErrorKind::Auth,
        _ => dfagent_core::TierErrorKind::Status,
    }
}

/// Whether an error envelope says TOOMANYREQUESTS.
fn is_rate_limited(envelope: &OciEnvelope) -> bool {
    envelope
        .errors
        .iter()
        .any(|e| matches!(e.code, OciErrorCode::Toomanyrequests))
}

/// Longest piece of an error body quoted in a message.
const MAX_QUOTED_BODY: usize = 512;

/// The `Retry-After` of an answer: delta-seconds or an HTTP-date (relative to `now`; a date in
/// the past is no wait). `None` when absent or unreadable.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Turn a failed answer of our own request (status not 2xx) into a [`Failure`], the same way
/// the OCI client's errors are ([`classify`]): a 4xx with an OCI error envelope is a registry
/// error, any other failure a server error quoting (the start of) the body. A failure worth
/// retrying keeps the answer's `Retry-After`.
pub(crate) fn classify_response(
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
    url: &str,
    registry: &str,
    what: &str,
) -> Failure {
    use OciDistributionError as E;
    let url = url.to_string();
    let err = match status_class(status) {
        StatusClass::Unauthorized => E::UnauthorizedError { url },
        _ if (400..500).contains(&status) => match serde_json::from_slice::<OciEnvelope>(body) {
            Ok(envelope) if !envelope.errors.is_empty() => E::RegistryError { envelope, url },
            _ => E::ServerError {
                code: status,
                url,
                message: quote_body(body),
            },
        },
        _ => E::ServerError {
            code: status,
            url,
            message: quote_body(body),
        },
    };
    let mut f = classify(err, registry, what);
    if f.transient {
        f.retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
    }
    f
}

/// The start of an error body, as text, for a message.
fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_QUOTED_BODY)]);
    let text = text.trim();
    if body.len() > MAX_QUOTED_BODY {
        format!("{text}…")
    } else {
        text.to_string()
    }
}

/// Turn an error of the OCI client into ours, classified. `registry` is host[:port], `what`
/// names the operation for the message.
pub(crate) fn classify(err: OciDistributionError, registry: &str, what: &str) -> Failure {
    use OciDistributionError as E;
    let auth = |detail: String| {
        Failure::fatal(RegistryError::Auth {
            registry: registry.to_string(),
            detail,
        })
    };
    // A 401: the credentials may have gone stale; authenticating again may help, once.
    let unauthorized = |detail: String| Failure {
        reauth: true,
        ..auth(detail)
    };
    let not_found = |detail: String| {
        Failure::fatal(RegistryError::NotFound {
            what: what.to_string(),
            detail,
        })
    };
    match err {
        E::UnauthorizedError { url } => unauthorized(format!(
            "{what}: the registry answered 401 Unauthorized for {url} (wrong or missing credentials)"
        )),
        E::AuthenticationFailure(reason) => auth(format!(
            "{what}: the token service refused the credentials: {}",
            reason.trim()
        )),
        E::RegistryError { envelope, url } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let detail = format!("{url}: {envelope}");
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized))
            {
                unauthorized(format!("{what}: {detail}"))
            } else if codes.iter().any(|c| matches!(c, OciErrorCode::Denied)) {
                auth(format!("{what}: {detail}"))
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                not_found(detail)
            } else if is_rate_limited(&envelope) {
                Failure::transient(RegistryError::Registry {
                    what: what.to_string(),
                    source: E::RegistryError { envelope, url },
                })
            } else {
                Failure::fatal(RegistryError::Registry {
                    what: what.to_string(),
                    source: E::RegistryError { envelope, url },
                })
            }
        }
        E::ServerError { code, url, message } => match status_class(code) {
            StatusClass::Unauthorized => {
                unauthorized(format!("{what}: the registry answered {code} for {url}"))
            }
            StatusClass::Denied => auth(format!("{what}: the registry answered {code} for {url}")),
            StatusClass::NotFound => not_found(format!("{url}: {}", message.trim())),
            _ => {
                let error = RegistryError::Registry {
                    what: what.to_string(),
                    source: E::ServerError { code, url, message },
                };
                if status_is_transient(code) {
                    Failure::transient(error)
                } else {
                    Failure::fatal(error)
                }
            }
        },
        E::RequestError(e) => {
            let class = e.status().map(|s| status_class(s.as_u16()));
            match class {
                Some(StatusClass::Unauthorized) => unauthorized(format!("{what}: {e}")),
                Some(StatusClass::Denied) => auth(format!("{what}: {e}")),
                Some(StatusClass::NotFound) => not_found(e.to_string()),
                _ => {
                    let transient = !e.is_builder()
                        && !e.is_redirect()
                        && class.is_none_or(|c| matches!(c, StatusClass::Busy | StatusClass::Transient));
                    let error = RegistryError::Registry {
                        what: what.to_string(),
                        source: E::RequestError(e),
                    };
                    if transient {
                        Failure::transient(error)
                    } else {
                        Failure::fatal(error)
                    }
                }
            }
        }
        E::IoError(e) => Failure::transient(RegistryError::Registry {
            what: what.to_string(),
            source: E::IoError(e),
        }),
        E::DigestError(e) => Failure::fatal(RegistryError::Protocol(format!(
            "{what}: content does not match its digest: {e}"
        ))),
        other => Failure::fatal(RegistryError::Registry {
            what: what.to_string(),
            source: other,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_worth_retrying() {
        for c in [429, 500, 502, 503, 504, 408] {
            assert!(status_is_transient(c), "{c}");
        }
        for c in [400, 401, 403, 404, 416, 501] {
            assert!(!status_is_transient(c), "{c}");
        }
    }

    #[test]
    fn classifies_server_errors() {
        let f = classify(
            OciDistributionError::ServerError {
                code: 503,
                url: "u".into(),
                message: String::new(),
            },
            "r",
            "op",
        );
        assert!(f.transient);
        let f = classify(
            OciDistributionError::UnauthorizedError { url: "u".into() },
            "r:1",
            "op",
        );
        assert!(!f.transient);
        assert!(
            f.reauth,
            "a 401 may be a stale token: authenticate again once"
        );
        assert!(matches!(f.error, RegistryError::Auth { .. }));
        assert!(f.error.to_string().contains("r:1"));
        let f = classify(
            OciDistributionError::ServerError {
                code: 403,
                url: "u".into(),
                message: String::new(),
            },
            "r",
            "op",
        );
        assert!(!f.transient && !f.reauth, "403: more tokens will not help");
        let f = classify(
            OciDistributionError::AuthenticationFailure("no".into()),
            "r",
            "op",
        );
        assert!(
            !f.transient && !f.reauth,
            "refused credentials stay refused"
        );
    }

    #[test]
    fn status_classes_and_kinds() {
        use dfagent_core::TierErrorKind as K;
        assert_eq!(status_class(206), StatusClass::Success);
        assert_eq!(status_class(401), StatusClass::Unauthorized);
        assert_eq!(status_class(429), StatusClass::Busy);
        assert_eq!(status_class(503), StatusClass::Busy);
        assert_eq!(status_class(502), StatusClass::Transient);
        assert_eq!(status_class(501), StatusClass::Final);
        assert_eq!(status_class(416), StatusClass::Final);
        assert_eq!(status_kind(503), K::Busy);
        assert_eq!(status_kind(500), K::Status);
        assert_eq!(status_kind(401), K::Auth);
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(12));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(12))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(12));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        // RFC 850 and asctime forms are HTTP-dates too.
        assert!(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now).is_some());
        assert!(parse_retry_after("Sun Nov  6 08:49:37 1994", now).is_some());
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn failed_answers_are_classified_with_their_retry_after() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("3"),
        );
        let f = classify_response(503, &h, b"busy", "http://r/v2/x", "r", "op");
        assert!(f.transient);
        assert_eq!(f.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(f.error.tier_error_kind(), dfagent_core::TierErrorKind::Busy);
        let body = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
        let f = classify_response(429, &h, body, "http://r/v2/x", "r", "op");
        assert!(f.transient);
        assert_eq!(f.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(f.error.tier_error_kind(), dfagent_core::TierErrorKind::Busy);
        let f = classify_response(404, &h, b"", "http://r/v2/x", "r", "op");
        assert!(!f.transient && f.retry_after.is_none());
        assert!(matches!(f.error, RegistryError::NotFound { .. }));
        let f = classify_response(401, &h, b"", "http://r/v2/x", "r", "op");
        assert!(f.reauth && matches!(f.error, RegistryError::Auth { .. }));
        let long = vec![b'x'; 10_000];
        let f = classify_response(500, &http::HeaderMap::new(), &long, "u", "r", "op");
        assert!(f.transient && f.retry_after.is_none());
        assert!(
            f.error.to_string().len() < 1000,
            "bodies are quoted, not copied"
        );
    }
}
