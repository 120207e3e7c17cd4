//! Authentication of our own requests to a registry (every read). What a registry wants is
//! learned from the challenge of its first 401 (`WWW-Authenticate`): nothing, Basic
//! credentials, or a Bearer token from a realm (distribution's token protocol, which Docker Hub,
//! GHCR, Harbor and `docker-registry` speak).
//!
//! Tokens are kept per repository and operation, renewed once three quarters of the lifetime
//! the token service announced (`expires_in`, 60 s when it says nothing, as the token spec
//! says) have passed, and renewed at once when the registry refuses one (a 401: the token
//! expired early, was revoked, or the clocks disagree). A token is opaque: its claims are not
//! read. Renewal is single flight: requests that find the token due, or were refused together,
//! wait for one renewal; a generation number tells a refused request whether the token it
//! carried has been replaced already, so a burst of 401s costs one trip to the token service.
//!
//! Neither credentials nor tokens are logged or put into an error: they live only in
//! header values marked sensitive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderValue;
use oci_client::errors::OciDistributionError;
use tracing::debug;

use crate::client::Op;
use crate::config::Secret;
use crate::error::{
    classify, classify_response, status_class, Failure, RegistryError, StatusClass,
};

/// Lifetime of a token whose answer does not say (the token spec's default).
pub(crate) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Longest lifetime believed, whatever a token service announces.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Largest token answer read.
const MAX_TOKEN_ANSWER: usize = 1 << 20;

/// What a registry asked for in a `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// HTTP Basic credentials with every request.
    Basic,
    /// A Bearer token from `realm` (a URL), for `service`.
    Bearer {
        /// Where tokens are handed out.
        realm: String,
        /// The `service` parameter to pass along.
        service: Option<String>,
    },
}

/// Parse a `WWW-Authenticate` value: `Basic realm="…"` or `Bearer realm="…",service="…",…`.
/// `None` for other schemes and for a Bearer challenge without a realm.
pub(crate) fn parse_challenge(value: &str) -> Option<Challenge> {
    let v = value.trim();
    let (scheme, rest) = v.split_once(char::is_whitespace).unwrap_or((v, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = parse_params(rest);
    let realm = params.remove("realm").filter(|r| !r.is_empty())?;
    Some(Challenge::Bearer {
        realm,
        service: params.remove("service"),
    })
}

/// `key=value` and `key="quoted \" value"` pairs separated by commas; keys lowercased.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    // Bounded by the input: every pass consumes at least one character or ends.
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ',') {
            key.push(c);
        }
        if chars.next_if_eq(&'=').is_none() {
            if chars.peek().is_none() {
                return out;
            }
            continue;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
            value = value.trim_end().to_string();
        }
        let key = key.trim().to_ascii_lowercase();
        if !key.is_empty() {
            out.insert(key, value);
        }
    }
}

/// What a request carried, so that a 401 to it can be told apart from one to a request that
/// already had the newest token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// No credentials.
    Nothing,
    /// Basic credentials.
    Basic,
    /// The token of this generation.
    Bearer(u64),
}

/// A token and when to renew it.
struct Token {
    /// `Bearer <token>`, marked sensitive.
    header: HeaderValue,
    /// After this, the token is renewed before it is used again.
    renew_at: Instant,
}

/// The token of one repository and operation. `generation` counts renewals.
#[derive(Default)]
struct Slot {
    generation: u64,
    token: Option<Token>,
}

/// Token slots by (repository, operation).
type Slots = HashMap<(String, Op), Arc<tokio::sync::Mutex<Slot>>>;

/// The token service's answer.
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
}

/// How one registry host authenticates our requests, and its tokens.
pub(crate) struct Auth {
    /// host[:port], for messages.
    registry: String,
    /// `(user, Basic header)` when we have credentials for the host.
    credentials: Option<(String, Secret, HeaderValue)>,
    /// The registry itself is spoken to over plain HTTP (credentials may go to a plain-HTTP
    /// realm then, as they go to the registry anyway).
    plain_http: bool,
    /// What the registry asked for, once a 401 said so.
    challenge: Mutex<Option<Challenge>>,
    /// Tokens by (repository, operation); each slot's lock is the single flight of its
    /// renewals.
    slots: Mutex<Slots>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("registry", &self.registry)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .finish_non_exhaustive()
    }
}

/// A header value that hyper and our `Debug` output will not show.
fn sensitive(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

impl Auth {
    /// Authentication of `registry` with `credentials` (user, password), if any.
    pub(crate) fn new(
        registry: &str,
        credentials: Option<(String, Secret)>,
        plain_http: bool,
    ) -> crate::Result<Self> {
        let credentials = match credentials {
            None => None,
            Some((user, password)) => {
                let raw = format!("{user}:{}", password.expose());
                let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
                let header = sensitive(&format!("Basic {encoded}")).ok_or_else(|| {
                    RegistryError::Config(format!(
                        "credentials of registry {registry}: not usable in an HTTP header"
                    ))
                })?;
                Some((user, password, header))
            }
        };
        Ok(Self {
            registry: registry.to_string(),
            credentials,
            plain_http,
            challenge: Mutex::new(None),
            slots: Mutex::new(HashMap::new()),
        })
    }

    fn challenge(&self) -> Option<Challenge> {
        self.challenge.lock().ok().and_then(|c| c.clone())
    }

    /// Whether a 401 has told what the registry wants.
    pub(crate) fn knows_challenge(&self) -> bool {
        self.challenge().is_some()
    }

    /// A request that carried `sent` for `repository`/`op` was refused elsewhere (by a proxy
    /// relaying the registry's 401): drop that token unless a newer one replaced it, so that the
    /// next [`Self::authorization`] fetches a new one. Nothing to drop for Basic credentials or
    /// none.
    pub(crate) async fn forget(&self, repository: &str, op: Op, sent: Sent) {
        let Sent::Bearer(generation) = sent else {
            return;
        };
        let slot = self.slot(repository, op);
        let mut s = slot.lock().await;
        if s.generation == generation && s.token.take().is_some() {
            debug!(registry = %self.registry, repository, ?op, generation,
                "token refused through a proxy; dropped");
        }
    }

    fn slot(&self, repository: &str, op: Op) -> Arc<tokio::sync::Mutex<Slot>> {
        match self.slots.lock() {
            Ok(mut m) => m.entry((repository.to_string(), op)).or_default().clone(),
            // A poisoned map only loses sharing: the request gets a slot of its own.
            Err(_) => Arc::default(),
        }
    }

    fn auth_error(&self, detail: String) -> Failure {
        Failure::fatal(RegistryError::Auth {
            registry: self.registry.clone(),
            detail,
        })
    }

    /// The `Authorization` header for a request to `repository` for `op`, and what it is. A
    /// token that is due is renewed first (single flight: other requests wait for it).
    pub(crate) async fn authorization(
        &self,
        http: &reqwest::Client,
        repository: &str,
        op: Op,
        what: &str,
    ) -> Result<(Option<HeaderValue>, Sent), Failure> {
        match self.challenge() {
            None => Ok((None, Sent::Nothing)),
            Some(Challenge::Basic) => Ok(match &self.credentials {
                Some((_, _, header)) => (Some(header.clone()), Sent::Basic),
                None => (None, Sent::Nothing),
            }),
            Some(Challenge::Bearer { realm, service }) => {
                let slot = self.slot(repository, op);
                let mut s = slot.lock().await;
                let due = s
                    .token
                    .as_ref()
                    .is_none_or(|t| Instant::now() >= t.renew_at);
                if due {
                    self.renew(
                        &mut s,
                        http,
                        &realm,
                        service.as_deref(),
                        repository,
                        op,
                        what,
                    )
                    .await?;
                }
                match &s.token {
                    Some(t) => Ok((Some(t.header.clone()), Sent::Bearer(s.generation))),
                    None => Err(self.auth_error(format!("{what}: no token after renewal"))),
                }
            }
        }
    }

    /// The registry answered 401 (with `challenge`) to a request that carried `sent`: learn
    /// what it wants and get new credentials if that can help — a new token unless another
    /// request got one since `sent`'s (single flight). An error when nothing can help (no
    /// credentials for a registry that wants some, Basic credentials refused, no challenge).
    pub(crate) async fn refused(
        &self,
        http: &reqwest::Client,
        repository: &str,
        op: Op,
        sent: Sent,
        challenge: Option<&str>,
        what: &str,
    ) -> Result<(), Failure> {
        let Some(parsed) = challenge.and_then(parse_challenge) else {
            return Err(self.auth_error(format!(
                "{what}: the registry answered 401 without a Basic or Bearer challenge"
            )));
        };
        if let Ok(mut c) = self.challenge.lock() {
            *c = Some(parsed.clone());
        }
        match parsed {
            Challenge::Basic => match (&self.credentials, sent) {
                (None, _) => Err(self.auth_error(format!(
                    "{what}: the registry wants credentials and none are configured for it"
                ))),
                (Some(_), Sent::Basic) => Err(self.auth_error(format!(
                    "{what}: the registry refused the credentials (401 Unauthorized)"
                ))),
                (Some(_), _) => Ok(()),
            },
            Challenge::Bearer { realm, service } => {
                let slot = self.slot(repository, op);
                let mut s = slot.lock().await;
                let replaced = match sent {
                    Sent::Bearer(g) => s.generation != g,
                    // Sent before anyone knew a token was wanted: one may have come since.
                    Sent::Nothing | Sent::Basic => s.token.is_some(),
                };
                if replaced {
                    debug!(registry = %self.registry, repository, ?op, generation = s.generation,
                        "token renewed by another request meanwhile");
                    return Ok(());
                }
                self.renew(
                    &mut s,
                    http,
                    &realm,
                    service.as_deref(),
                    repository,
                    op,
                    what,
                )
                .await
            }
        }
    }

    /// Fetch a new token for `repository`/`op` from `realm` into `slot` (whose lock the caller
    /// holds).
    #[allow(clippy::too_many_arguments)]
    async fn renew(
        &self,
        slot: &mut Slot,
        http: &reqwest::Client,
        realm: &str,
        service: Option<&str>,
        repository: &str,
        op: Op,
        what: &str,
    ) -> Result<(), Failure> {
        let (header, lifetime) = self
            .fetch_token(http, realm, service, repository, op, what)
            .await?;
        slot.generation += 1;
        slot.token = Some(Token {
            header,
            renew_at: Instant::now() + lifetime.mul_f64(0.75),
        });
        debug!(registry = %self.registry, repository, ?op, generation = slot.generation,
            lifetime_s = lifetime.as_secs(), "new registry token");
        Ok(())
    }

    /// Ask `realm` for a token with our credentials (if any). Returns the `Authorization`
    /// header and the token's announced lifetime.
    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        realm: &str,
        service: Option<&str>,
        repository: &str,
        op: Op,
        what: &str,
    ) -> Result<(HeaderValue, Duration), Failure> {
        let what = format!("{what}: token from {realm}");
        let mut url = reqwest::Url::parse(realm)
            .map_err(|_| self.auth_error(format!("{what}: the token realm is not a URL")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.plain_http || self.credentials.is_none() => {}
            "http" => {
                return Err(self.auth_error(format!(
                    "{what}: credentials of an HTTPS registry are not sent to a plain-HTTP realm"
                )))
            }
            _ => return Err(self.auth_error(format!("{what}: the token realm is not HTTP(S)"))),
        }
        let actions = match op {
            Op::Pull => "pull",
            Op::Push => "pull,push",
        };
        url.query_pairs_mut()
            .append_pair("scope", &format!("repository:{repository}:{actions}"));
        if let Some(s) = service {
            url.query_pairs_mut().append_pair("service", s);
        }
        let mut req = http.get(url);
        if let Some((_, _, header)) = &self.credentials {
            req = req.header(http::header::AUTHORIZATION, header.clone());
        }
        let resp = req.send().await.map_err(|e| {
            classify(
                OciDistributionError::RequestError(scrub(e)),
                &self.registry,
                &what,
            )
        })?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = read_limited(resp, MAX_TOKEN_ANSWER).await.map_err(|e| {
            classify(
                OciDistributionError::RequestError(scrub(e)),
                &self.registry,
                &what,
            )
        })?;
        match status_class(status) {
            StatusClass::Success => {}
            StatusClass::Busy | StatusClass::Transient => {
                return Err(classify_response(
                    status,
                    &headers,
                    &body,
                    realm,
                    &self.registry,
                    &what,
                ))
            }
            _ => {
                let reason = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Err(classify(
                    OciDistributionError::AuthenticationFailure(format!("{status} {reason}")),
                    &self.registry,
                    &what,
                ));
            }
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            Failure::fatal(RegistryError::Protocol(format!(
                "{what}: not a token answer: {e}"
            )))
        })?;
        let token = answer
            .token
            .filter(|t| !t.is_empty())
            .or(answer.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| {
                Failure::fatal(RegistryError::Protocol(format!(
                    "{what}: the answer has no token"
                )))
            })?;
        let header = sensitive(&format!("Bearer {token}")).ok_or_else(|| {
            Failure::fatal(RegistryError::Protocol(format!(
                "{what}: the token is not usable in an HTTP header"
            )))
        })?;
        let lifetime = match answer.expires_in {
            Some(s) if s > 0 => Duration::from_secs(s.unsigned_abs()).min(MAX_TOKEN_LIFETIME),
            _ => DEFAULT_TOKEN_LIFETIME,
        };
        Ok((header, lifetime))
    }
}

/// A request error without the query of its URL (a redirect target's query may be a signed
/// URL's signature).
pub(crate) fn scrub(mut e: reqwest::Error) -> reqwest::Error {
    if let Some(u) = e.url_mut() {
        u.set_query(None);
    }
    e
}

/// The body of `resp`, at most `limit` bytes of it (the rest is not read).
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(piece) = resp.chunk().await? {
        let room = limit - out.len();
        out.extend_from_slice(&piece[..piece.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer  Service = plain , realm="http://a/t?x=\"y\"""#),
            Some(Challenge::Bearer {
                realm: r#"http://a/t?x="y""#.into(),
                service: Some("plain".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Bearer service="s""#), None, "no realm");
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(""), None);
        assert_eq!(
            parse_challenge(r#"Bearer realm="unterminated"#).map(|_| ()),
            Some(())
        );
    }

    #[test]
    fn credentials_never_print() {
        let auth = Auth::new(
            "reg:5000",
            Some(("alice".into(), Secret::new("hunter2"))),
            true,
        )
        .unwrap();
        let shown = format!("{auth:?} {:?}", auth.credentials.as_ref().map(|c| &c.2));
        assert!(shown.contains("alice"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("aHVudGVyMg"),
            "{shown}"
        );
    }
}
