//! containerd's filter syntax, as its clients send it in `List` (Walk) requests: a filter is
//! `selector(,selector)*`, every selector must match; a request's several filters match when any
//! one does. A selector is `fieldpath [op value]` with `op` one of `==`, `!=`, `~=` (regular
//! expression); without an operator it tests that the field is present. Field path elements and
//! values may be quoted (`"..."` with Go escapes, or `/.../`, `|...|` for expressions).
//!
//! Input comes from containerd's clients: every length is bounded, every error is a
//! [`FilterError`] naming the byte offset, nothing panics.

use regex::Regex;

/// The longest filter accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 4096;
/// The most selectors in one filter.
pub const MAX_SELECTORS: usize = 64;
/// The most filters in one request.
pub const MAX_FILTERS: usize = 64;
/// Compiled size limit of one regular expression.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Why a filter does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {filter:?}: {detail} at byte {offset}")]
pub struct FilterError {
    /// The filter (cut to 200 bytes).
    pub filter: String,
    /// Where in it.
    pub offset: usize,
    /// What is wrong.
    pub detail: String,
}

/// A comparison.
#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

/// One `fieldpath op value`.
#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// A parsed filter: all of its selectors must match.
#[derive(Debug, Clone)]
pub struct Filter {
    selectors: Vec<Selector>,
}

/// The filters of a request: any one matching is a match; none at all matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filters(Vec<Filter>);

/// What a filter looks at: a field path's value, if the object has one.
pub trait Fields {
    /// The value at `path` (`["name"]`, `["labels", "a.b"]`...), `None` when absent.
    fn field(&self, path: &[String]) -> Option<String>;
}

impl Filters {
    /// Parse a request's filters (an empty string matches everything, as containerd's does).
    pub fn parse<S: AsRef<str>>(filters: &[S]) -> Result<Self, FilterError> {
        if filters.len() > MAX_FILTERS {
            return Err(FilterError {
                filter: String::new(),
                offset: 0,
                detail: format!("{} filters (at most {MAX_FILTERS})", filters.len()),
            });
        }
        let mut out = Vec::with_capacity(filters.len());
        for f in filters {
            match Filter::parse(f.as_ref())? {
                Some(f) => out.push(f),
                // An empty filter matches everything: so does the whole request.
                None => return Ok(Self(Vec::new())),
            }
        }
        Ok(Self(out))
    }

    /// Whether `object` passes.
    pub fn matches(&self, object: &impl Fields) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.matches(object))
    }
}

impl Filter {
    /// Parse one filter; `None` for the empty filter (matches everything).
    pub fn parse(input: &str) -> Result<Option<Self>, FilterError> {
        if input.len() > MAX_FILTER_LEN {
            return Err(error(
                input,
                MAX_FILTER_LEN,
                format!("{} bytes (at most {MAX_FILTER_LEN})", input.len()),
            ));
        }
        if input.trim().is_empty() {
            return Ok(None);
        }
        let mut p = Parser { input, pos: 0 };
        let mut selectors = Vec::new();
        loop {
            if selectors.len() == MAX_SELECTORS {
                return Err(p.error(format!("more than {MAX_SELECTORS} selectors")));
            }
            selectors.push(p.selector()?);
            p.skip_space();
            match p.peek() {
                None => break,
                Some(',') => p.pos += 1,
                Some(c) => return Err(p.error(format!("expected ',' or the end, found {c:?}"))),
            }
        }
        Ok(Some(Self { selectors }))
    }

    /// Whether every selector matches `object`.
    pub fn matches(&self, object: &impl Fields) -> bool {
        self.selectors.iter().all(|s| {
            let value = object.field(&s.path);
            match (&s.op, value) {
                (Op::Present, v) => v.is_some_and(|v| !v.is_empty()),
                (Op::Equal(want), Some(v)) => &v == want,
                (Op::Equal(_), None) => false,
                (Op::NotEqual(want), Some(v)) => &v != want,
                (Op::NotEqual(_), None) => true,
                (Op::Matches(re), Some(v)) => re.is_match(&v),
                (Op::Matches(_), None) => false,
            }
        })
    }
}

fn error(input: &str, offset: usize, detail: String) -> FilterError {
    let mut cut = input.len().min(200);
    while !input.is_char_boundary(cut) {
        cut -= 1;
    }
    FilterError {
        filter: input[..cut].to_string(),
        offset,
        detail,
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, detail: String) -> FilterError {
        error(self.input, self.pos, detail)
    }

    fn peek(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
            self.pos += c.len_utf8();
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let mut path = vec![self.field()?];
        loop {
            self.skip_space();
            if self.peek() != Some('.') {
                break;
            }
            self.pos += 1;
            path.push(self.field()?);
        }
        self.skip_space();
        let rest = &self.input[self.pos..];
        let op = if rest.starts_with("==") || rest.starts_with("!=") || rest.starts_with("~=") {
            let kind = &rest[..2];
            self.pos += 2;
            let value = self.value()?;
            match kind {
                "==" => Op::Equal(value),
                "!=" => Op::NotEqual(value),
                _ => Op::Matches(
                    regex::RegexBuilder::new(&value)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                        .map_err(|e| self.error(format!("bad regular expression: {e}")))?,
                ),
            }
        } else {
            match self.peek() {
                None | Some(',') => Op::Present,
                Some(c) => {
                    return Err(self.error(format!(
                        "expected an operator (==, !=, ~=), ',' or the end, found {c:?}"
                    )))
                }
            }
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String, FilterError> {
        self.skip_space();
        match self.peek() {
            Some(q) if is_quote(q) => self.quoted(q),
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    self.pos += 1;
                }
                Ok(self.input[start..self.pos].to_string())
            }
            Some(c) => Err(self.error(format!("expected a field name, found {c:?}"))),
            None => Err(self.error("expected a field name, found the end".into())),
        }
    }

    fn value(&mut self) -> Result<String, FilterError> {
        self.skip_space();
        match self.peek() {
            Some(q) if is_quote(q) => self.quoted(q),
            Some(c) if !c.is_whitespace() && c != ',' => {
                let start = self.pos;
                while let Some(c) = self.peek().filter(|c| !c.is_whitespace() && *c != ',') {
                    self.pos += c.len_utf8();
                }
                Ok(self.input[start..self.pos].to_string())
            }
            _ => Err(self.error("expected a value".into())),
        }
    }

    /// A quoted string starting at the quote `q`: Go escapes inside `"`; inside `/` or `|` only
    /// the delimiter is escaped (`\/`), everything else is kept for the regular expression.
    fn quoted(&mut self, q: char) -> Result<String, FilterError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                self.pos = open;
                return Err(self.error(format!("quote {q:?} is never closed")));
            };
            self.pos += c.len_utf8();
            if c == q {
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.peek() else {
                return Err(self.error("a '\\' ends the filter".into()));
            };
            self.pos += e.len_utf8();
            if q != '"' {
                if e != q {
                    out.push('\\');
                }
                out.push(e);
                continue;
            }
            let ch = match e {
                'a' => '\u{7}',
                'b' => '\u{8}',
                'f' => '\u{c}',
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                'v' => '\u{b}',
                '\\' => '\\',
                '"' => '"',
                '0'..='7' => {
                    self.pos -= 1;
                    self.digits(8, 3)?
                }
                'x' => self.digits(16, 2)?,
                'u' => self.digits(16, 4)?,
                'U' => self.digits(16, 8)?,
                other => return Err(self.error(format!("unknown escape '\\{other}'"))),
            };
            out.push(ch);
        }
    }

    fn digits(&mut self, radix: u32, n: usize) -> Result<char, FilterError> {
        let mut v: u32 = 0;
        for _ in 0..n {
            let d = self
                .peek()
                .and_then(|c| c.to_digit(radix))
                .ok_or_else(|| self.error(format!("escape needs {n} base-{radix} digits")))?;
            self.pos += 1;
            v = v.saturating_mul(radix).saturating_add(d);
        }
        char::from_u32(v).ok_or_else(|| self.error(format!("escape {v:#x} is not a character")))
    }
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '/' | '|')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Obj(
        BTreeMap<&'static str, &'static str>,
        BTreeMap<String, String>,
    );

    impl Fields for Obj {
        fn field(&self, path: &[String]) -> Option<String> {
            match path.first().map(String::as_str) {
                Some("labels") if path.len() > 1 => self.1.get(&path[1..].join(".")).cloned(),
                Some(f) if path.len() == 1 => self.0.get(f).map(|v| v.to_string()),
                _ => None,
            }
        }
    }

    fn obj() -> Obj {
        Obj(
            [
                ("name", "default/3/sha256:ab"),
                ("parent", ""),
                ("kind", "committed"),
            ]
            .into(),
            [
                (
                    "containerd.io/snapshot.ref".to_string(),
                    "sha256:ab".to_string(),
                ),
                ("x".to_string(), "1".to_string()),
            ]
            .into(),
        )
    }

    fn m(filters: &[&str]) -> bool {
        Filters::parse(filters).unwrap().matches(&obj())
    }

    #[test]
    fn what_containerd_sends_matches() {
        // The filter containerd's metadata store sends after a remote snapshotter answers
        // AlreadyExists (Go's %q quoting).
        assert!(m(&[
            r#"labels."containerd.io/snapshot.ref"==sha256:ab,parent=="""#
        ]));
        assert!(!m(&[
            r#"labels."containerd.io/snapshot.ref"==sha256:cd,parent=="""#
        ]));
        assert!(m(&["kind==committed"]));
        assert!(m(&["kind==active", "labels.x==1"]), "filters are or'ed");
        assert!(!m(&["kind==active,labels.x==1"]), "selectors are and'ed");
        assert!(m(&["labels.x"]) && !m(&["labels.y"]) && !m(&["parent"]));
        assert!(m(&["name~=/^default\\/3\\//"]) && m(&[r#"name~="sha256:[a-f]+$""#]));
        assert!(m(&["labels.y!=2"]) && !m(&["labels.x!=1"]));
        assert!(m(&[]) && m(&[""]) && m(&["  "]));
        assert!(m(&[r#"name=="default\x2f3\u002fsha256:ab""#]));
    }

    #[test]
    fn malformed_filters_are_errors_with_an_offset() {
        for (f, at) in [
            ("==x", 0),
            ("name==", 6),
            ("name==\"open", 6),
            ("labels.", 7),
            ("name x", 5),
            ("name==a b", 8),
            ("name~=(", 0),
            ("name==\"\\q\"", 9),
            ("name==\"\\u12\"", 11),
            ("name==\"\\", 8),
            (",", 0),
            ("name==a,", 8),
            ("9name", 0),
        ] {
            let e = Filters::parse(&[f]).unwrap_err();
            if f != "name~=(" {
                assert_eq!(e.offset, at, "{f}: {e}");
            }
            assert!(e.to_string().contains("filter"), "{e}");
        }
        let long = "a".repeat(MAX_FILTER_LEN + 1);
        assert!(Filters::parse(&[long]).is_err());
        let many = vec!["a"; MAX_SELECTORS + 1].join(",");
        assert!(Filters::parse(&[many]).is_err());
        assert!(Filters::parse(&vec!["a"; MAX_FILTERS + 1]).is_err());
        // Multi-byte characters never split.
        assert!(Filters::parse(&["name==é,ü"]).is_err());
        assert!(Filters::parse(&["ü"]).is_err());
    }
}
