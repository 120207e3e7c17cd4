//! Errors of the registry client, and the line between failures worth retrying (the network, a
//! busy or broken server) and those that are final (bad credentials, missing content, a registry
//! that breaks the protocol).

use oci_client::errors::{OciDistributionError, OciErrorCode};

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

    /// Transient failures (connection errors, 429, 5xx) went on after every retry. The message
    /// is the last failure's, which names the operation.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// The operation.
        what: String,
        /// Attempts made.
        attempts: u32,
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
                E::ServerError { .. } | E::RegistryError { .. } => K::Status,
                E::RequestError(e) if e.is_timeout() => K::Timeout,
                E::RequestError(e) if e.status().is_some() => K::Status,
                E::RequestError(_) | E::IoError(_) => K::Network,
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

/// One failed attempt of a retried operation: the error, and whether trying again may help.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: RegistryError,
    pub(crate) transient: bool,
}

impl Failure {
    /// A failure that retrying cannot fix.
    pub(crate) fn fatal(error: RegistryError) -> Self {
        Self {
            error,
            transient: false,
        }
    }

    /// A failure that may go away (network trouble, a busy server).
    pub(crate) fn transient(error: RegistryError) -> Self {
        Self {
            error,
            transient: true,
        }
    }
}

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Self {
        Failure::fatal(error)
    }
}

/// Whether an HTTP status is worth retrying: 429 and every 5xx but 501 (Not Implemented).
pub(crate) fn status_is_transient(code: u16) -> bool {
    code == 429 || code == 408 || ((500..600).contains(&code) && code != 501)
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
    let not_found = |detail: String| {
        Failure::fatal(RegistryError::NotFound {
            what: what.to_string(),
            detail,
        })
    };
    match err {
        E::UnauthorizedError { url } => auth(format!(
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
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
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
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                Failure::transient(RegistryError::Protocol(format!("{what}: rate limited: {detail}")))
            } else {
                Failure::fatal(RegistryError::Registry {
                    what: what.to_string(),
                    source: E::RegistryError { envelope, url },
                })
            }
        }
        E::ServerError { code, url, message } => match code {
            401 | 403 => auth(format!("{what}: the registry answered {code} for {url}")),
            404 => not_found(format!("{url}: {}", message.trim())),
            c => {
                let transient = status_is_transient(c);
                let error = RegistryError::Registry {
                    what: what.to_string(),
                    source: E::ServerError { code, url, message },
                };
                Failure { error, transient }
            }
        },
        E::RequestError(e) if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403)) => {
            auth(format!("{what}: {e}"))
        }
        E::RequestError(e) if e.status().map(|s| s.as_u16()) == Some(404) => {
            not_found(e.to_string())
        }
        E::RequestError(e) => {
            let transient = !e.is_builder()
                && !e.is_redirect()
                && e.status().is_none_or(|s| status_is_transient(s.as_u16()));
            Failure {
                error: RegistryError::Registry {
                    what: what.to_string(),
                    source: E::RequestError(e),
                },
                transient,
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
        assert!(matches!(f.error, RegistryError::Auth { .. }));
        assert!(f.error.to_string().contains("r:1"));
    }
}
