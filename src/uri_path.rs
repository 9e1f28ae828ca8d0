//! Request-path normalization (RFC 3986 §6.2.2) for route matching and the cache key.
//!
//! Routes carry policy: a rate limit, `cache = false`, a dedicated pool. Matched on the raw
//! path, `//login`, `/%6cogin` and `/x/../login` all miss the `/login` route and its policy,
//! while the origin happily serves them as `/login`. The cache has the mirror problem: two
//! spellings of one URL must share one cache key, or an attacker can bypass (or poison) an
//! entry by re-spelling it.
//!
//! So both consume the path in one canonical spelling. Ambiguous input that origins disagree
//! about (a raw `\`, control bytes, broken `%`) is refused rather than guessed at, because any
//! guess that differs from the origin's reopens the bypass.

use std::borrow::Cow;
use std::fmt;

/// Why a path was refused; each maps to a 400 answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A `%` not followed by two hex digits.
    BadPercent,
    /// A `\`, raw or percent-encoded: some origins treat it as `/`, others as data.
    Backslash,
    /// A dot segment that origins resolve in ways the normal form does not: `..;` / `.;`
    /// (Tomcat, Jetty drop path parameters first), or `..` next to an encoded slash (origins
    /// that decode `%2F` before they resolve).
    Ambiguous,
    /// A byte outside ASCII, sent raw instead of percent-encoded.
    NotAscii,
    /// A NUL or other ASCII control byte, raw or percent-encoded.
    Control,
    /// The path does not start with `/` (`*`, `a/b`).
    NotAbsolute,
}

impl Refused {
    /// Short human text for the body of a 400 answer.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::BadPercent => "malformed percent-encoding in the path",
            Refused::Backslash => "backslash in the path",
            Refused::Ambiguous => "a dot segment origins read differently (..; or ..%2F)",
            Refused::NotAscii => "raw non-ASCII bytes in the path",
            Refused::Control => "control character in the path",
            Refused::NotAbsolute => "the path must start with /",
        }
    }
}

impl Refused {
    /// The body of the 400 answer: the reason on a line.
    pub fn text(self) -> &'static str {
        match self {
            Refused::BadPercent => "malformed percent-encoding in the path\n",
            Refused::Backslash => "backslash in the path\n",
            Refused::Ambiguous => "a dot segment origins read differently (..; or ..%2F)\n",
            Refused::NotAscii => "raw non-ASCII bytes in the path\n",
            Refused::Control => "control character in the path\n",
            Refused::NotAbsolute => "the path must start with /\n",
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for Refused {}

/// Refuses what no one normal form can stand for: an encoded backslash, and dot segments that
/// origins resolve after steps the normal form does not take. Cheap for the common path with
/// no `%` or `;` in it.
fn screen(path: &str) -> Result<(), Refused> {
    let bytes = path.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'%' | b';')) {
        return Ok(());
    }
    let lowered = path.to_ascii_lowercase().replace("%2e", ".");
    if lowered.contains("%5c") {
        return Err(Refused::Backslash);
    }
    let dot_with_params = lowered
        .split('/')
        .any(|segment| segment.starts_with(".;") || segment.starts_with("..;"));
    if dot_with_params || lowered.contains("..%2f") || lowered.contains("%2f..") {
        return Err(Refused::Ambiguous);
    }
    Ok(())
}

/// The canonical spelling of `path` (the path only, without `?query`).
///
/// Borrowed when `path` is already canonical, which is nearly every real request: the hot
/// path must not allocate just to learn that nothing changes.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Refused> {
    if path.is_empty() {
        return Ok(Cow::Borrowed("/"));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(Refused::NotAbsolute);
    };
    screen(path)?;
    if is_canonical(rest)? {
        return Ok(Cow::Borrowed(path));
    }
    rebuild(rest, path.len()).map(Cow::Owned)
}

/// [`normalize`] for a request target's `path?query`. The query is kept byte for byte:
/// its meaning belongs to the origin, and `%2e` or `//` there are data, not structure.
pub fn normalize_path_and_query(pq: &str) -> Result<Cow<'_, str>, Refused> {
    let (path, query) = match pq.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (pq, None),
    };
    match (normalize(path)?, query) {
        (Cow::Borrowed(p), None) => Ok(Cow::Borrowed(p)),
        // Borrowed can still differ from `path`: an empty path becomes "/".
        (Cow::Borrowed(p), Some(_)) if p == path => Ok(Cow::Borrowed(pq)),
        (p, query) => {
            let mut out = p.into_owned();
            if let Some(query) = query {
                out.reserve(query.len() + 1);
                out.push('?');
                out.push_str(query);
            }
            Ok(Cow::Owned(out))
        }
    }
}

/// Validates `rest` (the path after its leading `/`) and says whether it is already
/// canonical. Every refusal happens here, so `rebuild` only runs on input known to be good.
fn is_canonical(rest: &str) -> Result<bool, Refused> {
    let mut canonical = true;
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        // An empty last segment is a trailing slash, which is meaningful and kept.
        if (seg.is_empty() && !last) || seg == "." || seg == ".." {
            canonical = false;
        }
        let mut pieces = seg.split('%');
        if let Some(head) = pieces.next() {
            check_raw(head)?;
        }
        for piece in pieces {
            let t = triplet(piece)?;
            let lowercase = t.high.is_ascii_lowercase() || t.low.is_ascii_lowercase();
            if is_unreserved(t.value) || lowercase {
                canonical = false;
            }
            check_raw(t.tail)?;
        }
    }
    Ok(canonical)
}

/// Builds the canonical path: decode, merge slashes, resolve dot segments (RFC 3986 §5.2.4).
/// Invariant: before each segment is written, `out` ends with `/`.
fn rebuild(rest: &str, capacity: usize) -> Result<String, Refused> {
    let mut out = String::with_capacity(capacity.max(1));
    out.push('/');
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg.is_empty() {
            // Inner: a doubled slash, merged. Last: the trailing slash `out` already ends with.
            continue;
        }
        let start = out.len();
        // Decode before comparing, so `%2e%2e` is the `..` the origin will see.
        push_decoded(seg, &mut out)?;
        let written = out.get(start..);
        let (dot, dot_dot) = (written == Some("."), written == Some(".."));
        if dot {
            out.truncate(start);
        } else if dot_dot {
            out.truncate(start);
            pop_segment(&mut out);
        } else if !last {
            out.push('/');
        }
    }
    Ok(out)
}

/// Drops the last segment of `out` (which ends with `/`). At the root this does nothing:
/// `..` above the root clamps to `/`, as nginx does, instead of refusing the request.
fn pop_segment(out: &mut String) {
    if out.len() <= 1 {
        return;
    }
    // Cutting just after an ASCII `/` is always on a char boundary, so truncate cannot panic.
    let cut = out
        .strip_suffix('/')
        .and_then(|parent| parent.rfind('/'))
        .map_or(0, |i| i + 1);
    out.truncate(cut);
    if out.is_empty() {
        out.push('/');
    }
}

/// Appends `seg` to `out` with unreserved triplets decoded and other triplets uppercased.
fn push_decoded(seg: &str, out: &mut String) -> Result<(), Refused> {
    let mut pieces = seg.split('%');
    if let Some(head) = pieces.next() {
        check_raw(head)?;
        // Raw bytes >= 0x80 cannot come from `http::Uri`, but if they do they stay verbatim:
        // they are whole UTF-8 sequences inside a `&str`, so copying keeps `out` valid.
        out.push_str(head);
    }
    for piece in pieces {
        let t = triplet(piece)?;
        if is_unreserved(t.value) {
            out.push(char::from(t.value));
        } else {
            out.push('%');
            out.push(char::from(t.high.to_ascii_uppercase()));
            out.push(char::from(t.low.to_ascii_uppercase()));
        }
        check_raw(t.tail)?;
        out.push_str(t.tail);
    }
    Ok(())
}

/// One `%XX` triplet, as the piece of a segment that followed a `%`.
struct Triplet<'a> {
    value: u8,
    high: u8,
    low: u8,
    /// What follows the two hex digits, up to the next `%`.
    tail: &'a str,
}

fn triplet(piece: &str) -> Result<Triplet<'_>, Refused> {
    let bytes = piece.as_bytes();
    let (Some(&high), Some(&low)) = (bytes.first(), bytes.get(1)) else {
        return Err(Refused::BadPercent);
    };
    let (Some(h), Some(l)) = (hex(high), hex(low)) else {
        return Err(Refused::BadPercent);
    };
    let value = (h << 4) | l;
    // An encoded control byte is refused like a raw one: origins that decode it would see a
    // NUL or CR/LF that the proxy never checked.
    if is_control(value) {
        return Err(Refused::Control);
    }
    // Both hex digits are ASCII, so byte 2 is a char boundary; `get` just avoids a panic path.
    let tail = piece.get(2..).ok_or(Refused::BadPercent)?;
    Ok(Triplet {
        value,
        high,
        low,
        tail,
    })
}

/// Refusals for bytes outside triplets.
fn check_raw(text: &str) -> Result<(), Refused> {
    for &b in text.as_bytes() {
        if b == b'\\' {
            return Err(Refused::Backslash);
        }
        if is_control(b) {
            return Err(Refused::Control);
        }
    }
    Ok(())
}

/// `s` with every `%XX` decoded, whatever it encodes (invalid UTF-8 replaced, a stray `%`
/// kept): for matching the way a lenient origin would read a URL, never for forwarding it.
pub fn decode_lossy(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let pair = (bytes[i] == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        match pair {
            Some((high, low)) => {
                out.push((high << 4) | low);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7F
}

/// RFC 3986 §2.3: encoding these changes nothing, so their encoded form is an alias.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(path: &str) -> Result<String, Refused> {
        normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn canonical_input_is_borrowed() {
        for path in [
            "/",
            "/login",
            "/a/b/",
            "/a%2Fb",
            "/caf%C3%A9",
            "/a.b/..c/.d",
            "/é",
        ] {
            let got = normalize(path);
            assert!(matches!(got, Ok(Cow::Borrowed(_))), "{path}: {got:?}");
            assert_eq!(got.as_deref(), Ok(path));
        }
        let got = normalize_path_and_query("/a?b=1");
        assert!(matches!(got, Ok(Cow::Borrowed("/a?b=1"))), "{got:?}");
    }

    #[test]
    fn aliases_of_login() {
        let aliases = [
            "//login",
            "/%6cogin",
            "/%6Cogin",
            "/x/../login",
            "/x/%2e%2e/login",
        ];
        for path in aliases
            .into_iter()
            .chain(["/x/%2E./login", "/../login", "///x//..//login"])
        {
            assert_eq!(n(path).as_deref(), Ok("/login"), "{path}");
        }
    }

    #[test]
    fn rewrites() {
        let cases = [
            ("", "/"),
            ("/./a", "/a"),
            ("//a///b", "/a/b"),
            ("/a/b/../../..", "/"),
            ("/a/", "/a/"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/./b/", "/a/b/"),
            ("/a//", "/a/"),
            ("/%2e", "/"),
            ("/.../a", "/.../a"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb/..", "/"),
            ("/a%7cb", "/a%7Cb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/%7e", "/~"),
            ("/%41%2d%5F%30", "/A-_0"),
            ("/%25", "/%25"),
        ];
        for (path, want) in cases {
            assert_eq!(n(path).as_deref(), Ok(want), "{path}");
        }
    }

    #[test]
    fn refusals() {
        use Refused::*;
        let cases = [
            ("/a\\b", Backslash),
            ("/a%00", Control),
            ("/a%1f", Control),
            ("/a%7F", Control),
            ("/a\tb", Control),
            ("/a\u{7f}", Control),
            ("/%", BadPercent),
            ("/%4", BadPercent),
            ("/%zz", BadPercent),
            ("/%G1", BadPercent),
            ("/%%41", BadPercent),
            ("*", NotAbsolute),
            ("a/b", NotAbsolute),
        ];
        for (path, want) in cases {
            assert_eq!(n(path), Err(want), "{path}");
            assert!(!want.reason().is_empty());
        }
        assert_eq!(normalize_path_and_query("/%?a"), Err(BadPercent));
    }

    #[test]
    fn query_is_kept_verbatim() {
        let got = normalize_path_and_query("//x/../a%6c?a=%2e&b=//");
        assert_eq!(got.as_deref(), Ok("/al?a=%2e&b=//"));
        assert_eq!(normalize_path_and_query("?q").as_deref(), Ok("/?q"));
        assert_eq!(normalize_path_and_query("//a?").as_deref(), Ok("/a?"));
        assert_eq!(
            normalize_path_and_query("/a?b?/../c").as_deref(),
            Ok("/a?b?/../c")
        );
    }

    #[test]
    fn hostile_lengths() {
        assert_eq!(n(&"/..".repeat(100_000)).as_deref(), Ok("/"));
        assert_eq!(n(&"/".repeat(100_000)).as_deref(), Ok("/"));
        let long = format!("/{}", "a%2f".repeat(50_000));
        assert_eq!(n(&long).map(|s| s.len()), Ok(long.len()));
    }

    #[test]
    fn random_input_never_panics_and_is_idempotent() {
        const ALPHABET: &[u8] = b"/.%2eEfF6c\\a?0";
        // xorshift64: deterministic, so a failure reproduces.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % 1024).unwrap_or(0)
        };
        for _ in 0..10_000 {
            let mut input = String::new();
            if next() % 4 != 0 {
                input.push('/');
            }
            for _ in 0..next() % 12 {
                input.push(char::from(ALPHABET[next() % ALPHABET.len()]));
            }
            if let Ok(once) = normalize(&input) {
                let twice = normalize(&once);
                assert!(
                    matches!(twice, Ok(Cow::Borrowed(_))),
                    "{input:?} -> {once:?}"
                );
                assert_eq!(twice.as_deref(), Ok(&*once), "{input:?}");
                // The borrowed fast path must agree with the slow path.
                let slow = rebuild(once.get(1..).unwrap_or(""), once.len());
                assert_eq!(slow.as_deref(), Ok(&*once), "{input:?}");
            }
            if let Ok(once) = normalize_path_and_query(&input) {
                let twice = normalize_path_and_query(&once);
                assert_eq!(twice.as_deref(), Ok(&*once), "{input:?}");
            }
        }
    }

    #[test]
    fn spellings_origins_resolve_differently_are_refused() {
        for path in [
            "/x/..;/login",
            "/x/.;/login",
            "/x/%2e%2e;/login",
            "/x/..%2Flogin",
            "/x/%2e%2e%2flogin",
            "/x%2F../login",
        ] {
            assert_eq!(normalize(path), Err(Refused::Ambiguous), "{path}");
        }
        assert_eq!(normalize("/a%5Cb"), Err(Refused::Backslash));
        assert_eq!(normalize("/a%5cb"), Err(Refused::Backslash));
        // Path parameters and encoded slashes elsewhere are data.
        assert_eq!(normalize("/a;v=1/b").unwrap(), "/a;v=1/b");
        assert_eq!(normalize("/a%2Fb").unwrap(), "/a%2Fb");
    }
}
