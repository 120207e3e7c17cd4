//! Image references (`[host[:port]/]path[:tag][@algo:hex]`) parsed by hand.
//!
//! `oci_client::Reference`'s `FromStr` compiles oci-spec's reference regex, which keeps about
//! 7 MiB for the life of the process; this parser accepts the same grammar (the
//! docker/distribution one) with a few loops over bytes and builds the same [`Reference`]:
//!
//! - name: an optional domain (host components of ASCII alphanumerics and inner `-`, joined by
//!   `.`, with an optional `:port`) followed by `/`, then path components of lower-case
//!   alphanumerics separated by `.`, `_`, `__` or a run of `-`, joined by `/`;
//! - the first component is the registry only if it has a `.` or a `:` or is `localhost`,
//!   otherwise the registry is Docker Hub (`docker.io`, also for `index.docker.io`), where a
//!   name without `/` gets `library/`;
//! - the repository (after that) is at most 255 bytes;
//! - tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; `latest` when there is neither tag nor digest;
//! - digest: `algo:hex`, algorithm components of letters and digits (starting with a letter)
//!   joined by `-`, `_`, `+` or `.`, and then only `sha256`/`sha384`/`sha512` with exactly
//!   64/96/128 hex digits.
//!
//! Two deliberate differences from oci-spec: a tag is ASCII only (oci-spec's `\w` is Unicode,
//! docker/distribution's and the OCI distribution spec's are ASCII, and registries refuse
//! such tags anyway), and input longer than [`MAX_REFERENCE_LEN`] is refused.

use oci_client::Reference;

use crate::error::{RegistryError, Result};

/// Longest reference we look at, in bytes (a valid one is far shorter; this bounds the work).
pub(crate) const MAX_REFERENCE_LEN: usize = 4096;
/// Longest repository path (after the Docker Hub `library/` prefix), as in docker/distribution.
const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// Longest tag.
const TAG_LENGTH_MAX: usize = 128;
/// Fewest hex digits the digest grammar accepts (before the per-algorithm length check).
const DIGEST_HEX_MIN: usize = 32;
/// How much of an over-long reference an error repeats.
const ERROR_ECHO_CHARS: usize = 256;

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const DOCKER_HUB_OFFICIAL: &str = "library";
const DEFAULT_TAG: &str = "latest";

/// Parse an image reference (`[host[:port]/]repo[:tag][@digest]`) the way oci-spec's
/// `Reference::from_str` does, without compiling its regex.
pub(crate) fn parse_reference(s: &str) -> Result<Reference> {
    parse(s).map_err(|detail| RegistryError::Reference {
        reference: echo(s),
        detail,
    })
}

/// The reference for an error message: whole, or its start when it is over-long.
fn echo(s: &str) -> String {
    if s.len() <= ERROR_ECHO_CHARS {
        return s.to_string();
    }
    let mut out: String = s.chars().take(ERROR_ECHO_CHARS).collect();
    out.push('…');
    out
}

fn parse(s: &str) -> std::result::Result<Reference, String> {
    if s.is_empty() {
        return Err("empty reference".into());
    }
    if s.len() > MAX_REFERENCE_LEN {
        return Err(format!(
            "{} bytes long, at most {MAX_REFERENCE_LEN} allowed",
            s.len()
        ));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (s, None),
    };
    // A tag follows the last `:` unless a `/` comes after it (then that `:` is a port).
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if name.is_empty() {
        return Err("no repository name".into());
    }
    check_name(name)?;
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(format!(
            "repository name {} bytes long, at most {NAME_TOTAL_LENGTH_MAX} allowed",
            repository.len()
        ));
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or(DEFAULT_TAG).into()),
    })
}

/// The name is `domain/path` (the domain checked as a host) or a bare `path`.
fn check_name(name: &str) -> std::result::Result<(), String> {
    if let Some((first, remainder)) = name.split_once('/') {
        if is_domain(first) && is_path(remainder) {
            return Ok(());
        }
    }
    if is_path(name) {
        return Ok(());
    }
    // Say which part is wrong.
    let (first, remainder) = match name.split_once('/') {
        Some((first, remainder)) => (first, Some(remainder)),
        None => (name, None),
    };
    let path = match remainder {
        Some(remainder) if is_domain(first) => remainder,
        Some(_) if !is_path_component(first) && looks_like_domain(first) => {
            return Err(format!("invalid registry host {first:?}"));
        }
        _ => name,
    };
    let bad = path
        .split('/')
        .find(|c| !is_path_component(c))
        .unwrap_or(path);
    if bad.is_empty() {
        return Err("empty path component in repository name (`//` or a `/` at an end)".into());
    }
    if bad.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "repository path component {bad:?} must be lower case"
        ));
    }
    Err(format!(
        "invalid repository path component {bad:?}: expected lower-case letters and digits \
         separated by `.`, `_`, `__` or dashes"
    ))
}

/// Whether `s` is meant as a registry host (for error messages only).
fn looks_like_domain(s: &str) -> bool {
    s.contains('.') || s.contains(':') || s == "localhost"
}

/// `host(.host)*(:port)?`: host components of ASCII letters and digits with inner dashes.
fn is_domain(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    host.split('.').all(is_host_component)
}

fn is_host_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

/// Path components joined by single `/`.
fn is_path(s: &str) -> bool {
    s.split('/').all(is_path_component)
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Runs of lower-case letters and digits separated by `.`, `_`, `__` or one or more `-`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) if is_lower_alnum(*first) && is_lower_alnum(*last) => {}
        _ => return false,
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|x| *x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> std::result::Result<(), String> {
    let b = tag.as_bytes();
    let Some(first) = b.first() else {
        return Err("empty tag after `:`".into());
    };
    if b.len() > TAG_LENGTH_MAX {
        return Err(format!(
            "tag {} bytes long, at most {TAG_LENGTH_MAX} allowed",
            b.len()
        ));
    }
    if !is_word(*first) {
        return Err(format!(
            "tag {tag:?} must start with an ASCII letter, digit or `_`"
        ));
    }
    if !b.iter().all(|x| is_word(*x) || *x == b'.' || *x == b'-') {
        return Err(format!(
            "tag {tag:?} may only hold ASCII letters, digits, `_`, `.` and `-`"
        ));
    }
    Ok(())
}

/// `algo:hex` in the digest grammar, then a supported algorithm with its exact length.
fn check_digest(digest: &str) -> std::result::Result<(), String> {
    let Some((algo, hex)) = digest.split_once(':') else {
        return Err(format!("digest {digest:?} is not `algorithm:hex`"));
    };
    let algo_ok = !algo.is_empty()
        && algo.split(['-', '_', '+', '.']).all(|c| {
            let b = c.as_bytes();
            b.first().is_some_and(|x| x.is_ascii_alphabetic())
                && b.iter().all(|x| x.is_ascii_alphanumeric())
        });
    if !algo_ok {
        return Err(format!("invalid digest algorithm {algo:?}"));
    }
    if hex.len() < DIGEST_HEX_MIN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "digest {digest:?}: expected at least {DIGEST_HEX_MIN} hex digits after the algorithm"
        ));
    }
    let want = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            return Err(format!(
                "unsupported digest algorithm {algo:?} (sha256, sha384 or sha512)"
            ))
        }
    };
    if hex.len() != want {
        return Err(format!(
            "{algo} digest has {} hex digits, expected {want}",
            hex.len()
        ));
    }
    Ok(())
}

/// Registry and repository of a valid name: the first component is the registry only if it
/// looks like a host (`.` or `:`, or `localhost`); Docker Hub names get their canonical host and
/// the `library/` namespace.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, remainder) = match name.split_once('/') {
        Some((first, rest)) if looks_like_domain(first) => (first, rest),
        _ => (DOCKER_HUB, name),
    };
    if domain == DOCKER_HUB_LEGACY {
        domain = DOCKER_HUB;
    }
    let repository = if domain == DOCKER_HUB && !remainder.contains('/') {
        format!("{DOCKER_HUB_OFFICIAL}/{remainder}")
    } else {
        remainder.to_string()
    };
    (domain.to_string(), repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H64: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    /// What a case should give: both parsers accept, both refuse, or the one known difference
    /// (a tag with non-ASCII word characters: oci-spec's `\w` is Unicode, ours is ASCII).
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Want {
        Ok,
        Err,
        UnicodeTag,
    }

    /// Compare our parse of `s` with oci-spec's; panics with the input on any difference.
    /// Returns whether ours accepted it.
    fn agree(s: &str) -> bool {
        let ours = parse_reference(s);
        let theirs = s.parse::<Reference>();
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.registry(), b.registry(), "registry of {s:?}");
                assert_eq!(a.repository(), b.repository(), "repository of {s:?}");
                assert_eq!(a.tag(), b.tag(), "tag of {s:?}");
                assert_eq!(a.digest(), b.digest(), "digest of {s:?}");
                assert_eq!(a.whole(), b.whole(), "whole of {s:?}");
                assert_eq!(a, b, "reference of {s:?}");
                true
            }
            (Err(RegistryError::Reference { reference, detail }), Err(_)) => {
                assert!(!detail.is_empty());
                assert!(s.starts_with(reference.trim_end_matches('…')));
                false
            }
            (Err(e), Ok(b)) if !b.tag().unwrap_or("").is_ascii() => {
                // The one accepted difference: oci-spec takes Unicode word characters in tags.
                assert!(e.to_string().contains("tag"), "{s:?}: {e}");
                false
            }
            _ => panic!("{s:?}: ours {ours:?}, oci-spec {theirs:?}"),
        }
    }

    #[test]
    fn table_agrees_with_oci_spec() {
        let long_tag = "t".repeat(128);
        let too_long_tag = "t".repeat(129);
        let name_255 = format!("example.com/{}", "a".repeat(255));
        let name_256 = format!("example.com/{}", "a".repeat(256));
        // Docker Hub: `library/` counts toward the 255.
        let hub_247 = "b".repeat(247);
        let hub_248 = "b".repeat(248);
        let sha384 = format!("sha384:{}", "a".repeat(96));
        let sha512 = format!("sha512:{}", "A".repeat(128));
        let cases: Vec<(String, Want)> = [
            // Docker Hub names and the default tag.
            ("busybox", Want::Ok),
            ("library/busybox", Want::Ok),
            ("docker.io/busybox", Want::Ok),
            ("index.docker.io/busybox", Want::Ok),
            ("index.docker.io/foo/bar:1", Want::Ok),
            ("docker.io/library/hello-world:latest", Want::Ok),
            ("opensuse/leap:15.3", Want::Ok),
            ("foo/bar/baz", Want::Ok),
            // Domains: `.`, `:` (ports), localhost, IPs.
            ("test.com:tag", Want::Ok),
            ("test.com:5000", Want::Ok),
            ("test.com/repo:tag", Want::Ok),
            ("test:5000/repo", Want::Ok),
            ("test:5000/repo:tag", Want::Ok),
            ("localhost/repo", Want::Ok),
            ("localhost:5000/a/b:t", Want::Ok),
            ("localhost", Want::Ok),
            ("localhostx/repo", Want::Ok),
            ("127.0.0.1:5000/repo:tag", Want::Ok),
            ("10.0.0.1/ns/repo", Want::Ok),
            ("[::1]:5000/repo", Want::Err),
            ("host:/repo", Want::Err),
            ("host:50a0/repo", Want::Err),
            ("-host.com/repo", Want::Err),
            ("host-.com/repo", Want::Err),
            ("host..com/repo", Want::Err),
            ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", Want::Ok),
            (
                "b.gcr.io/test.example.com/my-app:test.example.com",
                Want::Ok,
            ),
            ("xn--n3h.com/myimage:xn--n3h.com", Want::Ok),
            ("foo_bar.com:8080", Want::Ok),
            ("foo/foo_bar.com:8080", Want::Ok),
            // Not a host, but a valid path, whose `.` still makes it the registry.
            ("foo_bar.com/repo", Want::Ok),
            // Upper case: refused in the path, allowed in a host and in tags.
            ("Uppercase:tag", Want::Err),
            ("test:5000/Uppercase/lowercase:tag", Want::Err),
            ("Uppercase/lowercase:tag", Want::Ok), // a valid host, then Docker Hub by the split rule
            ("EXAMPLE.COM/repo", Want::Ok),
            ("example.com/Repo", Want::Err),
            ("lowercase:Uppercase", Want::Ok),
            // Separators.
            ("a__b", Want::Ok),
            ("a___b", Want::Err),
            ("a---b", Want::Ok),
            ("a.b_c-d", Want::Ok),
            ("a._b", Want::Err),
            ("a..b", Want::Err),
            ("a-_b", Want::Err),
            ("repo-", Want::Err),
            ("repo.", Want::Err),
            ("_repo", Want::Err),
            ("repo/", Want::Err),
            ("/repo", Want::Err),
            ("a//b", Want::Err),
            ("example.com/", Want::Err),
            // Tags.
            ("repo:", Want::Err),
            (":justtag", Want::Err),
            ("repo:_t", Want::Ok),
            ("repo:.t", Want::Err),
            ("repo:-t", Want::Err),
            ("repo:t.-_T9", Want::Ok),
            ("repo:a:b", Want::Err),
            ("repo:t/x", Want::Err),
            ("repo:tag with space", Want::Err),
            // Digests.
            (&format!("test:5000/repo@sha256:{H64}"), Want::Ok),
            (&format!("test:5000/repo:tag@sha256:{H64}"), Want::Ok),
            (&format!("repo@{sha384}"), Want::Ok),
            (
                &format!("xn--7o8h.com/myimage:xn--7o8h.com@{sha512}"),
                Want::Ok,
            ),
            (&format!("@sha256:{H64}"), Want::Err),
            ("repo@sha256:ffffffffffffffffffffffffffffffffff", Want::Err),
            (&format!("repo@sha256:{H64}f"), Want::Err),
            (&format!("repo@sha256:{}", "g".repeat(64)), Want::Err),
            (&format!("validname@invaliddigest:{H64}"), Want::Err),
            (&format!("repo@sha256+b64:{H64}"), Want::Err),
            (&format!("repo@sha256{H64}"), Want::Err),
            (&format!("repo@sha256:{H64}@sha256:{H64}"), Want::Err),
            ("repo@", Want::Err),
            (&format!("repo:@sha256:{H64}"), Want::Err),
            // Lengths.
            (&format!("repo:{long_tag}"), Want::Ok),
            (&format!("repo:{too_long_tag}"), Want::Err),
            (&name_255, Want::Ok),
            (&name_256, Want::Err),
            (&hub_247, Want::Ok),
            (&hub_248, Want::Err),
            // Empty, whitespace, control characters, Unicode.
            ("", Want::Err),
            (" ", Want::Err),
            (" repo", Want::Err),
            ("repo ", Want::Err),
            ("repo\n", Want::Err),
            ("re\tpo", Want::Err),
            ("répo", Want::Err),
            ("☃.com/repo", Want::Err),
            ("repo:☃", Want::Err),
            ("repo:é", Want::UnicodeTag),
            ("repo:tagé", Want::UnicodeTag),
            ("aa/asdf$$^/aa", Want::Err),
        ]
        .into_iter()
        .map(|(s, w)| (s.to_string(), w))
        .collect();
        assert!(cases.len() >= 40);
        for (s, want) in &cases {
            let ok = agree(s);
            let theirs_ok = s.parse::<Reference>().is_ok();
            match want {
                Want::Ok => assert!(ok, "{s:?} should parse"),
                Want::Err => assert!(!ok && !theirs_ok, "{s:?} should not parse"),
                Want::UnicodeTag => assert!(!ok && theirs_ok, "{s:?}: the Unicode-tag difference"),
            }
        }
    }

    #[test]
    fn fields_are_what_docker_gives() {
        let r = parse_reference("busybox").expect("parses");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.whole(), "docker.io/library/busybox:latest");

        let r = parse_reference(&format!("localhost:5000/a/b@sha256:{H64}")).expect("parses");
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(format!("sha256:{H64}").as_str()));
    }

    #[test]
    fn errors_name_the_bad_part() {
        let detail = |s: &str| match parse_reference(s) {
            Err(RegistryError::Reference { detail, .. }) => detail,
            other => panic!("{s:?}: {other:?}"),
        };
        assert!(detail("").contains("empty"));
        assert!(detail("example.com/Repo").contains("lower case"));
        assert!(detail("repo:.x").contains("tag"));
        assert!(detail("repo@md5:0123456789abcdef0123456789abcdef").contains("unsupported"));
        assert!(detail("repo@sha256:0123456789abcdef0123456789abcdef").contains("64"));
        assert!(detail(&"a".repeat(300)).contains("255"));
        assert!(detail("a//b").contains("empty path component"));
        let huge = "a".repeat(MAX_REFERENCE_LEN + 1);
        match parse_reference(&huge) {
            Err(RegistryError::Reference { reference, detail }) => {
                assert!(detail.contains("4096"), "{detail}");
                assert!(reference.len() < 300);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Pieces that hit the grammar's edges; strings are glued from them at random.
    const PIECES: &[&str] = &[
        "a",
        "b",
        "z",
        "0",
        "9",
        "A",
        "Z",
        "_",
        "__",
        "___",
        ".",
        "..",
        "-",
        "---",
        "/",
        "//",
        ":",
        "@",
        "+",
        " ",
        "\t",
        "é",
        "☃",
        "ß",
        "$",
        "localhost",
        "example.com",
        "5000",
        "index.docker.io",
        "docker.io",
        "library",
        "sha256:",
        "sha384:",
        "sha512:",
        "md5:",
        "latest",
        "Tag",
        "[::1]",
        "x-y",
        "1.2.3",
        "ffffffff",
    ];

    fn piece(rng: &mut fastrand::Rng) -> &'static str {
        PIECES[rng.usize(..PIECES.len())]
    }

    fn random_soup(rng: &mut fastrand::Rng) -> String {
        let n = rng.usize(1..12);
        (0..n).map(|_| piece(rng)).collect()
    }

    /// Mostly well-formed references with a random flaw here and there.
    fn random_structured(rng: &mut fastrand::Rng) -> String {
        let mut s = String::new();
        match rng.u8(..5) {
            0 => s.push_str("localhost:5000/"),
            1 => s.push_str("example.com/"),
            2 => {
                s.push_str(piece(rng));
                s.push('/');
            }
            _ => {}
        }
        for i in 0..rng.usize(1..4) {
            if i > 0 {
                s.push('/');
            }
            let comp: String = (0..rng.usize(1..4))
                .map(|_| if rng.bool() { piece(rng) } else { "ab" })
                .collect();
            s.push_str(&comp);
        }
        if rng.u8(..3) == 0 {
            // Near the 255-byte name limit.
            let n = rng.usize(230..270);
            s.push_str(&"c".repeat(n));
        }
        if rng.bool() {
            s.push(':');
            let n = if rng.u8(..4) == 0 {
                rng.usize(120..135)
            } else {
                rng.usize(0..6)
            };
            for _ in 0..n {
                s.push(if rng.u8(..10) == 0 {
                    piece(rng).chars().next().unwrap_or('x')
                } else {
                    rng.alphanumeric()
                });
            }
        }
        if rng.bool() {
            s.push('@');
            s.push_str(["sha256", "sha384", "sha512", "md5", "sha256+x", "Sha256"][rng.usize(..6)]);
            s.push(':');
            let len = [64, 96, 128, 32, 63, 65][rng.usize(..6)];
            for _ in 0..len {
                s.push(if rng.u16(..500) == 0 {
                    'g'
                } else {
                    char::from(b"0123456789abcdefABCDEF"[rng.usize(..22)])
                });
            }
        }
        s
    }

    #[test]
    fn generated_strings_agree_with_oci_spec() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_d0c4);
        let (mut ok, mut err) = (0, 0);
        for i in 0..6000 {
            let s = if i % 2 == 0 {
                random_soup(&mut rng)
            } else {
                random_structured(&mut rng)
            };
            assert!(s.len() <= MAX_REFERENCE_LEN);
            if agree(&s) {
                ok += 1;
            } else {
                err += 1;
            }
        }
        // The generator must reach both sides of the grammar.
        assert!(ok > 300 && err > 300, "ok {ok}, err {err}");
    }
}
