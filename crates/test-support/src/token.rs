//! A token server for a real `docker-registry` with Bearer authentication (distribution's token
//! auth): it hands ES256 JWTs, signed by a key made for this server, to whoever presents the
//! right Basic credentials, scoped as asked, living a chosen time. It counts what it is asked,
//! so a test can tell how often a client authenticated.
//!
//! **Lifetimes.** distribution accepts a token until 60 s after its `exp` claim (its leeway for
//! clock skew, [`REGISTRY_LEEWAY`]). So that a token really lives [`TokenServerBuilder::lifetime`]
//! as the registry sees it, `exp` is written that lifetime minus the leeway after issue (whole
//! seconds: a token lives between `lifetime - 1 s` and `lifetime`). What the server *announces*
//! in `expires_in` is chosen separately ([`ExpiresIn`]): the real lifetime (an honest server),
//! a longer one (a server whose tokens die before their announced time: revocation, a skewed
//! clock), or nothing (clients then assume 60 s).
//!
//! One thread accepts, one serves each connection (one request, then close); dropping the
//! server stops them. Listens on 127.0.0.1 only.

use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::proxy::{header, read_head};

/// How long distribution accepts a token past its `exp` claim.
pub const REGISTRY_LEEWAY: Duration = Duration::from_secs(60);
/// The `iss` of every token (the registry's `auth.token.issuer`).
pub const ISSUER: &str = "dfagent-test-issuer";
/// The `aud` of every token (the registry's `auth.token.service`).
pub const SERVICE: &str = "dfagent-test-registry";
/// How long a connection may stay silent.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Tokens remembered for [`TokenServer::issued_tokens`].
const REMEMBERED_TOKENS: usize = 1024;

/// What the server announces as a token's life in the `expires_in` field of its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiresIn {
    /// The real lifetime (an honest server).
    Lifetime,
    /// This many seconds, whatever the real lifetime (more than it: tokens die early).
    Seconds(u64),
    /// No `expires_in` at all (the token spec's default is 60 s).
    Omitted,
}

/// Signing material: an ECDSA P-256 key and its self-signed certificate (the registry's
/// `rootcertbundle`).
struct Signer {
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    cert_der: Vec<u8>,
    cert_pem: String,
}

impl Signer {
    fn new() -> Signer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generating the token signing key");
        let params = rcgen::CertificateParams::new(vec![ISSUER.to_string()])
            .expect("certificate parameters");
        let cert = params
            .self_signed(&key)
            .expect("self-signing the token certificate");
        let rng = ring::rand::SystemRandom::new();
        let ring_key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .expect("ring key from rcgen's PKCS#8");
        Signer {
            key: ring_key,
            rng,
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
        }
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `%XX` and `+` decoding of a query value.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `access` claim for `scopes` (`repository:<name>:<actions>`, several per parameter
/// allowed, space-separated): everything asked is granted.
fn access(scopes: &[String]) -> Vec<serde_json::Value> {
    scopes
        .iter()
        .flat_map(|s| s.split(' '))
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            // The name may hold ':' only before a port, never here; actions come last.
            let (name, actions) = rest.rsplit_once(':')?;
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect()
}

/// How to start a [`TokenServer`].
#[derive(Clone, Debug)]
pub struct TokenServerBuilder {
    credentials: Option<(String, String)>,
    lifetime: Duration,
    expires_in: ExpiresIn,
}

impl TokenServerBuilder {
    /// Hand tokens only to requests with Basic credentials `user`/`password` (default: to
    /// anyone, as for anonymous pulls of public images).
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.to_string(), password.to_string()));
        self
    }

    /// How long a token lives as the registry sees it, in whole seconds, at least 1 (default
    /// 600 s).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// What the answers announce in `expires_in` (default [`ExpiresIn::Lifetime`]).
    pub fn expires_in(mut self, e: ExpiresIn) -> Self {
        self.expires_in = e;
        self
    }

    /// Make the signing key, write its certificate, bind 127.0.0.1 and start serving.
    pub fn start(self) -> TokenServer {
        let dir = tempfile::Builder::new()
            .prefix("dfagent-token-")
            .tempdir()
            .expect("creating the token server's directory");
        let signer = Signer::new();
        let cert = dir.path().join("token-cert.pem");
        std::fs::write(&cert, &signer.cert_pem).expect("writing the token certificate");
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the token server");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("token server address");
        let expected = self
            .credentials
            .as_ref()
            .map(|(u, p)| format!("Basic {}", b64(format!("{u}:{p}").as_bytes())));
        let shared = Arc::new(Shared {
            signer,
            expected,
            lifetime: self.lifetime.as_secs().max(1),
            expires_in: self.expires_in,
            stop: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
            issued: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            next_jti: AtomicU64::new(0),
            tokens: Mutex::default(),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("token server {addr}"))
            .spawn(move || {
                while !sh.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let _ = conn.set_nonblocking(false);
                            let sh = sh.clone();
                            std::thread::spawn(move || {
                                serve(&conn, &sh);
                                let _ = conn.shutdown(Shutdown::Both);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .expect("spawning the token server's thread");
        TokenServer {
            addr,
            cert,
            shared,
            accept: Some(accept),
            _dir: dir,
        }
    }
}

struct Shared {
    signer: Signer,
    /// The `Authorization` header a token request must carry, if any.
    expected: Option<String>,
    /// Real lifetime in seconds.
    lifetime: u64,
    expires_in: ExpiresIn,
    stop: AtomicBool,
    requests: AtomicUsize,
    issued: AtomicUsize,
    refused: AtomicUsize,
    next_jti: AtomicU64,
    /// The first [`REMEMBERED_TOKENS`] tokens handed out.
    tokens: Mutex<Vec<String>>,
}

impl Shared {
    /// The JWT distribution expects: ES256, the signing certificate in `x5c`, claims iss, sub,
    /// aud, exp, nbf, iat, jti and access.
    fn token(&self, subject: &str, scopes: &[String]) -> String {
        let now = unix_now();
        let leeway = REGISTRY_LEEWAY.as_secs();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [b64(&self.signer.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            // The registry adds its leeway back: the token dies `lifetime` after issue.
            "exp": (now + self.lifetime).saturating_sub(leeway),
            "nbf": now.saturating_sub(leeway),
            "iat": now,
            "jti": format!("{now:x}-{:x}", self.next_jti.fetch_add(1, Ordering::SeqCst)),
            "access": access(scopes),
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self
            .signer
            .key
            .sign(&self.signer.rng, input.as_bytes())
            .expect("signing a token");
        format!("{input}.{}", b64url(sig.as_ref()))
    }
}

/// Write one answer and close.
fn respond(mut s: &TcpStream, status: &str, body: &str) {
    let out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(out.as_bytes());
}

fn serve(conn: &TcpStream, sh: &Shared) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf = Vec::new();
    let Some(head_len) = read_head(conn, &mut buf) else {
        return;
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    sh.requests.fetch_add(1, Ordering::SeqCst);
    let path = head
        .lines()
        .next()
        .unwrap_or("")
        .split(' ')
        .nth(1)
        .unwrap_or("");
    if let Some(expected) = &sh.expected {
        if header(&head, "authorization") != Some(expected.as_str()) {
            sh.refused.fetch_add(1, Ordering::SeqCst);
            respond(
                conn,
                "401 Unauthorized",
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
            );
            return;
        }
    }
    let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "scope")
        .map(|(_, v)| percent_decode(v))
        .collect();
    let subject = sh.expected.as_ref().map_or("anonymous", |_| "user");
    let token = sh.token(subject, &scopes);
    let mut body = serde_json::json!({"token": token, "access_token": token});
    match sh.expires_in {
        ExpiresIn::Lifetime => body["expires_in"] = sh.lifetime.into(),
        ExpiresIn::Seconds(s) => body["expires_in"] = s.into(),
        ExpiresIn::Omitted => {}
    }
    sh.issued.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut t) = sh.tokens.lock() {
        if t.len() < REMEMBERED_TOKENS {
            t.push(token);
        }
    }
    respond(conn, "200 OK", &body.to_string());
}

/// A running token server; stops on drop (its certificate's directory goes with it).
pub struct TokenServer {
    addr: SocketAddr,
    cert: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    /// Options: credentials, lifetime, what `expires_in` says. Defaults: tokens for anyone,
    /// living 600 s, announced honestly.
    pub fn builder() -> TokenServerBuilder {
        TokenServerBuilder {
            credentials: None,
            lifetime: Duration::from_secs(600),
            expires_in: ExpiresIn::Lifetime,
        }
    }

    /// A server handing tokens living `lifetime` to `user`/`password` only.
    pub fn start(user: &str, password: &str, lifetime: Duration) -> TokenServer {
        Self::builder()
            .credentials(user, password)
            .lifetime(lifetime)
            .start()
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The realm registries send clients to (`http://127.0.0.1:PORT/token`).
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The PEM certificate that verifies its tokens.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The registry configuration's `auth:` section that trusts this server (for
    /// [`crate::registry::RegistryBuilder::config_extra`]).
    pub fn registry_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    \
             rootcertbundle: {}\n",
            self.realm(),
            self.cert.display()
        )
    }

    /// Token requests received (answered or refused).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Tokens handed out.
    pub fn issued(&self) -> usize {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// The tokens handed out so far (the first 1024), e.g. to check that none shows up in a
    /// log.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared
            .tokens
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    /// Requests refused for wrong or missing credentials.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use std::io::Read;

    /// One request on a fresh connection; the status line's code and the body.
    fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).expect("write");
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp).into_owned();
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }

    /// A token for `scope` from `server`, with the right credentials.
    fn token(server: &TokenServer, scope: &str) -> (String, serde_json::Value) {
        let auth = format!("Basic {}", b64(b"u:p"));
        let (code, body) = get(
            server.addr(),
            &format!("/token?service={SERVICE}&scope={scope}"),
            &[("Authorization", &auth)],
        );
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("token JSON");
        (v["token"].as_str().expect("token").to_string(), v)
    }

    #[test]
    fn refuses_wrong_credentials_and_announces_as_told() {
        let server = TokenServer::builder()
            .credentials("u", "p")
            .lifetime(Duration::from_secs(5))
            .expires_in(ExpiresIn::Seconds(600))
            .start();
        let (code, _) = get(server.addr(), "/token?scope=repository:a:pull", &[]);
        assert_eq!(code, 401);
        let (_, answer) = token(&server, "repository:a/b:pull,push");
        assert_eq!(answer["expires_in"], 600);
        assert_eq!(
            (server.requests(), server.issued(), server.refused()),
            (2, 1, 1)
        );
        assert_eq!(
            server.issued_tokens(),
            vec![answer["token"].as_str().unwrap_or("")]
        );
        let t = answer["token"].as_str().expect("token");
        let claims = t.split('.').nth(1).expect("claims");
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .expect("base64"),
        )
        .expect("claims JSON");
        assert_eq!(claims["access"][0]["name"], "a/b");
        assert_eq!(claims["access"][0]["actions"][1], "push");
        let (exp, iat) = (claims["exp"].as_u64(), claims["iat"].as_u64());
        assert_eq!(exp.zip(iat).map(|(e, i)| e + 60 - i), Some(5));

        let honest = TokenServer::builder()
            .lifetime(Duration::from_secs(7))
            .start();
        let (code, body) = get(honest.addr(), "/token?scope=repository:a:pull", &[]);
        assert_eq!(code, 200, "anyone gets a token: {body}");
        assert!(body.contains(r#""expires_in":7"#), "{body}");
    }

    /// The registry takes the token while it lives and refuses it after `lifetime`: the
    /// leeway compensation is right for the installed distribution.
    #[test]
    fn the_registry_refuses_a_token_after_its_lifetime() {
        let server = TokenServer::builder()
            .credentials("u", "p")
            .lifetime(Duration::from_secs(2))
            .start();
        let reg = Registry::builder()
            .config_extra(&server.registry_config())
            .start();
        let (code, _) = get(reg.addr(), "/v2/team/app/tags/list", &[]);
        assert_eq!(code, 401, "the registry wants a token");
        let (t, _) = token(&server, "repository:team/app:pull");
        let bearer = format!("Bearer {t}");
        // A repository without tags answers 404 NAME_UNKNOWN once the token is accepted.
        let (code, body) = get(
            reg.addr(),
            "/v2/team/app/tags/list",
            &[("Authorization", &bearer)],
        );
        assert_eq!(code, 404, "a fresh token is accepted: {body}");
        std::thread::sleep(Duration::from_millis(2500));
        let (code, body) = get(
            reg.addr(),
            "/v2/team/app/tags/list",
            &[("Authorization", &bearer)],
        );
        assert_eq!(code, 401, "a token past its lifetime is refused: {body}");
    }
}
