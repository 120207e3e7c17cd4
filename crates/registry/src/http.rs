//! Our own HTTP requests to a registry: every read (manifests, whole blobs, blob ranges) goes
//! through [`HostHttp::get`] rather than the OCI client, so that we see what the OCI client
//! hides — the `Retry-After` of a busy registry, and a 401 we can answer by authenticating
//! again (an expired token) and retrying once. Pushes stay with the OCI client.
//!
//! Redirects are followed (up to 10; object-store backed registries answer blob GETs with 307);
//! the `Authorization` header is dropped when a redirect leaves the registry's host, so neither
//! credentials nor tokens reach a storage URL. URLs in errors lose their query (a signed
//! storage URL's signature).

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use oci_client::errors::OciDistributionError;
use oci_client::Reference;
use tracing::debug;

use std::sync::OnceLock;

use reqwest::Method;

use crate::auth::{read_limited, scrub, Auth, Sent};
use crate::client::Op;
use crate::config::{RegistryConfig, Secret};
use crate::error::{
    classify, classify_response, status_class, Failure, RegistryError, StatusClass,
};

/// Largest error body read (for its message).
const MAX_ERROR_BODY: usize = 64 << 10;
/// Redirects followed per request.
const MAX_REDIRECTS: usize = 10;
/// Our `User-Agent`.
const USER_AGENT: &str = concat!("dfagent-registry/", env!("CARGO_PKG_VERSION"));

/// The HTTP client of one registry host and its authentication.
#[derive(Debug)]
pub(crate) struct HostHttp {
    /// host[:port].
    registry: String,
    scheme: &'static str,
    /// The client of the host's own requests. For a plain-HTTP host it trusts only the
    /// configured extra CAs: loading the system's roots costs a mount tens of milliseconds
    /// (145 certificates read and parsed, from a cold page cache) that plain HTTP never needs.
    client: reqwest::Client,
    /// For a plain-HTTP host, the client with the system's roots too, made when a request
    /// first needs TLS (a redirect to https storage, an https token realm).
    tls: OnceLock<reqwest::Client>,
    /// What `tls` is made from.
    timeouts: (std::time::Duration, std::time::Duration),
    roots: Vec<reqwest::Certificate>,
    auth: Auth,
}

/// A client with `timeouts` (connect, read) that trusts `roots` and, if `system_roots`, the
/// system's roots as well.
fn build_client(
    registry: &str,
    timeouts: (std::time::Duration, std::time::Duration),
    roots: &[reqwest::Certificate],
    system_roots: bool,
) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .connect_timeout(timeouts.0)
        .read_timeout(timeouts.1)
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS));
    let builder = if system_roots {
        builder.tls_certs_merge(roots.iter().cloned())
    } else {
        builder.tls_certs_only(roots.iter().cloned())
    };
    debug!(registry, system_roots, "HTTP client made");
    builder.build()
}

impl HostHttp {
    /// The client of `registry` (host[:port]) with `config`'s timeouts, the extra CA `roots`,
    /// and `credentials` (user, password) if any.
    pub(crate) fn new(
        config: &RegistryConfig,
        registry: &str,
        roots: &[reqwest::Certificate],
        credentials: Option<(String, Secret)>,
    ) -> crate::Result<Self> {
        let plain_http = config.is_plain_http(registry);
        let timeouts = (config.connect_timeout, config.read_timeout);
        let client = build_client(registry, timeouts, roots, !plain_http).map_err(|e| {
            RegistryError::Config(format!("cannot build an HTTP client for {registry}: {e}"))
        })?;
        Ok(Self {
            registry: registry.to_string(),
            scheme: if plain_http { "http" } else { "https" },
            client,
            tls: OnceLock::new(),
            timeouts,
            roots: roots.to_vec(),
            auth: Auth::new(registry, credentials, plain_http)?,
        })
    }

    fn plain_http(&self) -> bool {
        self.scheme == "http"
    }

    /// The client that trusts the system's roots (for a plain-HTTP host, made now if needed).
    fn tls_client(&self, what: &str) -> Result<&reqwest::Client, Failure> {
        if !self.plain_http() {
            return Ok(&self.client);
        }
        if let Some(c) = self.tls.get() {
            return Ok(c);
        }
        let made = build_client(&self.registry, self.timeouts, &self.roots, true)
            .map_err(|e| self.request_failure(e, what))?;
        // Another request may have made one meanwhile: either will do.
        let _ = self.tls.set(made);
        Ok(self.tls.get().unwrap_or(&self.client))
    }

    /// The client for authentication: tokens come from a realm that may be https even for a
    /// plain-HTTP registry, and nothing is requested before a 401 told the scheme.
    fn auth_client(&self, what: &str) -> Result<&reqwest::Client, Failure> {
        if self.auth.knows_challenge() {
            self.tls_client(what)
        } else {
            Ok(&self.client)
        }
    }

    /// `<scheme>://<registry>/v2/<repository>/<tail>` for `r`.
    fn url(&self, r: &Reference, tail: &str) -> String {
        let ns = r
            .namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default();
        format!(
            "{}://{}/v2/{}/{tail}{ns}",
            self.scheme,
            r.resolve_registry(),
            r.repository()
        )
    }

    /// `GET /v2/<repository>/<tail>` of `r` with `headers`, authenticated as the registry
    /// wants. A 401 is answered once: learn the challenge, get new credentials (a new token
    /// unless another request just got one), send again. Returns a 2xx answer, or the failure
    /// classified (a busy registry's `Retry-After` kept).
    pub(crate) async fn get(
        &self,
        r: &Reference,
        tail: &str,
        headers: &[(HeaderName, HeaderValue)],
        what: &str,
    ) -> Result<reqwest::Response, Failure> {
        self.request(Method::GET, r, tail, headers, what).await
    }

    /// `HEAD /v2/<repository>/<tail>` of `r`, authenticated and answered like [`Self::get`]:
    /// what a request someone else sends will meet (the challenge is learned, a token fetched).
    pub(crate) async fn head(&self, r: &Reference, tail: &str, what: &str) -> Result<(), Failure> {
        self.request(Method::HEAD, r, tail, &[], what)
            .await
            .map(drop)
    }

    /// The absolute URL of `/v2/<repository>/<tail>` of `r` on this host (not a mirror).
    pub(crate) fn url_of(&self, r: &Reference, tail: &str) -> String {
        self.url(r, tail)
    }

    /// The `Authorization` header (if any) a pull of `repository` carries now, and what it is:
    /// nothing until a 401 has told what the registry wants.
    pub(crate) async fn pull_authorization(
        &self,
        repository: &str,
        what: &str,
    ) -> Result<(Option<HeaderValue>, Sent), Failure> {
        self.auth
            .authorization(self.auth_client(what)?, repository, Op::Pull, what)
            .await
    }

    /// Whether the registry's authentication scheme is known (a 401 has told it).
    pub(crate) fn knows_challenge(&self) -> bool {
        self.auth.knows_challenge()
    }

    /// Someone else's request to `repository` that carried `sent` was refused: drop that token
    /// (unless it has been replaced already), so the next authorization fetches a new one.
    pub(crate) async fn forget(&self, repository: &str, sent: Sent) {
        self.auth.forget(repository, Op::Pull, sent).await;
    }

    async fn request(
        &self,
        method: Method,
        r: &Reference,
        tail: &str,
        headers: &[(HeaderName, HeaderValue)],
        what: &str,
    ) -> Result<reqwest::Response, Failure> {
        let url = self.url(r, tail);
        let repository = r.repository();
        let (authorization, sent) = self
            .auth
            .authorization(self.auth_client(what)?, repository, Op::Pull, what)
            .await?;
        let resp = self
            .send(method.clone(), &url, headers, authorization, what)
            .await?;
        if status_class(resp.status().as_u16()) != StatusClass::Unauthorized {
            return self.checked(resp, what).await;
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        drop(resp);
        debug!(registry = %self.registry, repository, ?sent, what,
            "401 Unauthorized: authenticating again, then retrying once");
        self.auth
            .refused(
                self.tls_client(what)?,
                repository,
                Op::Pull,
                sent,
                challenge.as_deref(),
                what,
            )
            .await?;
        let (authorization, _) = self
            .auth
            .authorization(self.auth_client(what)?, repository, Op::Pull, what)
            .await?;
        let resp = self
            .send(method, &url, headers, authorization, what)
            .await?;
        self.checked(resp, what).await.map_err(|mut f| {
            // Authenticated afresh and still refused: another round will not help.
            f.reauth = false;
            f
        })
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        authorization: Option<HeaderValue>,
        what: &str,
    ) -> Result<reqwest::Response, Failure> {
        let build = |client: &reqwest::Client| {
            let mut req = client.request(method.clone(), url);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            if let Some(a) = &authorization {
                req = req.header(AUTHORIZATION, a.clone());
            }
            req
        };
        match build(&self.client).send().await {
            Ok(r) => Ok(r),
            // A plain-HTTP registry redirected to https (object storage): again with the
            // system's roots.
            Err(e)
                if self.plain_http()
                    && !e.is_timeout()
                    && e.url().is_some_and(|u| u.scheme() == "https") =>
            {
                debug!(registry = %self.registry, what, "redirected to https: again with the system's TLS roots");
                build(self.tls_client(what)?)
                    .send()
                    .await
                    .map_err(|e| self.request_failure(e, what))
            }
            Err(e) => Err(self.request_failure(e, what)),
        }
    }

    /// `resp` if it is a 2xx, else its failure (body read for the message, bounded).
    async fn checked(
        &self,
        resp: reqwest::Response,
        what: &str,
    ) -> Result<reqwest::Response, Failure> {
        let status = resp.status().as_u16();
        if status_class(status) == StatusClass::Success {
            return Ok(resp);
        }
        let headers = resp.headers().clone();
        let mut url = resp.url().clone();
        url.set_query(None);
        let body = read_limited(resp, MAX_ERROR_BODY).await.unwrap_or_default();
        Err(classify_response(
            status,
            &headers,
            &body,
            url.as_str(),
            &self.registry,
            what,
        ))
    }

    /// A failed request or body read (the network), classified.
    pub(crate) fn request_failure(&self, e: reqwest::Error, what: &str) -> Failure {
        classify(
            OciDistributionError::RequestError(scrub(e)),
            &self.registry,
            what,
        )
    }
}
