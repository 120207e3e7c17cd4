//! [`DragonflyError`]: what can go wrong talking to the scheduler and the seeds. Messages carry
//! addresses, seed ids, statuses and header *names*, never header values or passwords.

use dfagent_core::TierErrorKind;

/// An error of the Dragonfly client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DragonflyError {
    /// The configuration cannot work.
    #[error("dragonfly config: {0}")]
    Config(String),
    /// No scheduler answered (each address with why).
    #[error("no scheduler reachable: {0}")]
    NoScheduler(String),
    /// A scheduler answered a call with an error status.
    #[error("scheduler {addr}: {call}: {code}: {message}")]
    Scheduler {
        /// The scheduler's address.
        addr: String,
        /// The RPC.
        call: &'static str,
        /// The gRPC code's name (`NotFound`, `InvalidArgument`, ...).
        code: String,
        /// The scheduler's message (printable ASCII, cut to 256 bytes).
        message: String,
    },
    /// A scheduler's answer failed our checks.
    #[error("scheduler {addr}: bad answer: {detail}")]
    BadAnswer {
        /// The scheduler's address.
        addr: String,
        /// What was wrong.
        detail: String,
    },
    /// A request header (from the origin or a preheat) has a name or value HTTP cannot carry.
    /// Only the name is said.
    #[error("header {name:?} cannot be sent (not a valid HTTP header name or value)")]
    InvalidHeader {
        /// The header's name (printable part).
        name: String,
    },
    /// The blob URL cannot be fetched through a seed.
    #[error("blob url cannot be proxied: {0}")]
    BadUrl(String),
    /// No healthy, non-avoided seed.
    #[error("no usable seed peer")]
    NoSeed,
    /// A connection to a seed failed or broke.
    #[error("seed {seed}: network: {detail}")]
    Network {
        /// Seed id.
        seed: String,
        /// What failed.
        detail: String,
    },
    /// A seed did not answer in time.
    #[error("seed {seed}: no answer in time")]
    Timeout {
        /// Seed id.
        seed: String,
    },
    /// A seed answered with an error status. `origin` is dfdaemon's `X-Dragonfly-Error-Type`
    /// (`backend`: the registry's status relayed; `proxy`, `dfdaemon`: the seed's own).
    #[error("seed {seed}: HTTP {status} ({origin})")]
    Status {
        /// Seed id.
        seed: String,
        /// The HTTP status.
        status: u16,
        /// Who said it (`backend`, `proxy`, `dfdaemon`, or `unknown`).
        origin: String,
    },
    /// The registry refused the credentials (a 401 relayed by the seed).
    #[error("seed {seed}: the registry refused the credentials (HTTP 401)")]
    Unauthorized {
        /// Seed id.
        seed: String,
    },
    /// A seed broke the protocol (a wrong status, a wrong or missing Content-Range, a body
    /// shorter or longer than asked).
    #[error("seed {seed}: {detail}")]
    Protocol {
        /// Seed id.
        seed: String,
        /// What was wrong.
        detail: String,
    },
    /// The client was shut down.
    #[error("dragonfly client shut down")]
    Shutdown,
}

impl DragonflyError {
    /// The tier error kind for metrics.
    pub fn kind(&self) -> TierErrorKind {
        match self {
            DragonflyError::Config(_) | DragonflyError::BadUrl(_) => TierErrorKind::Other,
            DragonflyError::InvalidHeader { .. } => TierErrorKind::Other,
            DragonflyError::NoScheduler(_) | DragonflyError::Network { .. } => {
                TierErrorKind::Network
            }
            DragonflyError::NoSeed | DragonflyError::Shutdown => TierErrorKind::Other,
            DragonflyError::Scheduler { .. } => TierErrorKind::Status,
            DragonflyError::BadAnswer { .. } | DragonflyError::Protocol { .. } => {
                TierErrorKind::Protocol
            }
            DragonflyError::Timeout { .. } => TierErrorKind::Timeout,
            DragonflyError::Status { status, .. } => {
                if *status == 429 || *status == 503 {
                    TierErrorKind::Busy
                } else {
                    TierErrorKind::Status
                }
            }
            DragonflyError::Unauthorized { .. } => TierErrorKind::Auth,
        }
    }

    /// Whether the scheduler refused the request for good (gRPC `NotFound`, `InvalidArgument`,
    /// `FailedPrecondition` (the test scheduler's answer to a registry 404 or 401),
    /// `PermissionDenied`, `Unauthenticated`): an unknown image or a registry that refuses;
    /// retrying will not help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, DragonflyError::Scheduler { code, .. } if matches!(code.as_str(),
            "NotFound" | "InvalidArgument" | "FailedPrecondition" | "PermissionDenied" | "Unauthenticated"))
    }

    /// Whether the seed is to blame (so it is avoided for a while): not for a registry status
    /// relayed by the seed, nor for our own bad input.
    pub(crate) fn blames_seed(&self) -> bool {
        match self {
            DragonflyError::Network { .. }
            | DragonflyError::Timeout { .. }
            | DragonflyError::Protocol { .. } => true,
            DragonflyError::Status { origin, status, .. } => origin != "backend" && *status != 429,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_blame() {
        let sched = |code: &str| DragonflyError::Scheduler {
            addr: "s:1".into(),
            call: "PreheatImage",
            code: code.into(),
            message: "m".into(),
        };
        assert!(sched("NotFound").is_permanent());
        assert!(sched("FailedPrecondition").is_permanent());
        assert!(!sched("Unavailable").is_permanent());
        let status = |status: u16, origin: &str| DragonflyError::Status {
            seed: "a".into(),
            status,
            origin: origin.into(),
        };
        assert!(!status(404, "backend").blames_seed());
        assert!(status(500, "dfdaemon").blames_seed());
        assert_eq!(status(503, "proxy").kind(), TierErrorKind::Busy);
        assert_eq!(
            DragonflyError::Unauthorized { seed: "a".into() }.kind(),
            TierErrorKind::Auth
        );
        assert!(!DragonflyError::Unauthorized { seed: "a".into() }.blames_seed());
    }
}
