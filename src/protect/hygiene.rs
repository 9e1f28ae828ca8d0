//! Request hygiene: requests that are too large, ambiguous or malformed are refused before any
//! cache or origin work, with the status that says why.
//!
//! - 414 for a URI over `max_uri`, 431 for a head over `max_header` bytes or `max_headers`
//!   fields, 413 for a body whose `Content-Length` is over `max_body` (a chunked body is
//!   counted as it streams, see the proxy's `request_body_filter`);
//! - 400 and the connection closed for `Content-Length` together with `Transfer-Encoding`, or
//!   several differing `Content-Length` values: the framing two servers could read differently,
//!   which is how requests are smuggled past a proxy (RFC 9112 §6.3);
//! - 405 for methods outside the ones a public site serves (`TRACE`, `CONNECT`, inventions).

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::http::RequestHeader;

use crate::config::Protect;

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    /// The connection cannot be trusted to carry another request.
    pub close: bool,
}

const fn refuse(status: u16, reason: &'static str, close: bool) -> Option<Refusal> {
    Some(Refusal {
        status,
        reason,
        close,
    })
}

impl Refusal {
    /// The short text answer that goes with the status.
    pub fn text(&self) -> &'static str {
        match self.status {
            403 => "forbidden\n",
            405 => "method not allowed\n",
            413 => "request body too large\n",
            414 => "URI too long\n",
            431 => "request header fields too large\n",
            _ => "bad request\n",
        }
    }
}

/// The methods a site behind onair can be asked for; `PURGE` is onair's own.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "PURGE",
];

/// Checks a request head against the limits; None: it may go on.
pub fn check(req: &RequestHeader, limits: &Protect) -> Option<Refusal> {
    if !METHODS.contains(&req.method.as_str()) {
        return refuse(405, "method", false);
    }
    let uri_len = req.uri.path_and_query().map_or(1, |p| p.as_str().len());
    if uri_len as u64 > limits.max_uri {
        return refuse(414, "uri", false);
    }
    if req.headers.len() > limits.max_headers {
        return refuse(431, "header_count", false);
    }
    // Name, ": ", value and CRLF of each field, plus the request line.
    let head: u64 = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64)
        .sum::<u64>()
        + uri_len as u64
        + req.method.as_str().len() as u64
        + 11;
    if head > limits.max_header {
        return refuse(431, "header_size", false);
    }
    let lengths: Vec<&[u8]> = req
        .headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    if !lengths.is_empty() && req.headers.contains_key(TRANSFER_ENCODING) {
        return refuse(400, "smuggling", true);
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return refuse(400, "smuggling", true);
    }
    if let Some(first) = lengths.first() {
        // 1*DIGIT (RFC 9110 §8.6): no sign, no spaces inside, nothing else.
        let digits = !first.is_empty() && first.iter().all(u8::is_ascii_digit);
        let Some(len) = std::str::from_utf8(first)
            .ok()
            .filter(|_| digits)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return refuse(400, "content_length", true);
        };
        if len > limits.max_body {
            return refuse(413, "body", true);
        }
    }
    None
}

/// Whether a raw HTTP/1 request head has a `Content-Length` field. Pingora drops that field
/// when `Transfer-Encoding` is also present (RFC 9112 §6.3 lets it: the chunked framing wins),
/// so the parsed head no longer shows the ambiguity; the raw bytes still do.
pub fn raw_has_content_length(raw: &[u8]) -> bool {
    raw.split(|b| *b == b'\n')
        .skip(1)
        .any(|line| line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Protect {
        Protect {
            max_uri: 100,
            max_header: 400,
            max_headers: 10,
            max_body: 1000,
            ..Protect::default()
        }
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn status(r: &RequestHeader) -> Option<u16> {
        check(r, &limits()).map(|r| r.status)
    }

    #[test]
    fn sizes() {
        assert_eq!(status(&req("GET", "/", &[("Host", "a")])), None);
        assert_eq!(
            status(&req("GET", &format!("/{}", "a".repeat(100)), &[])),
            Some(414)
        );
        let many: Vec<(String, &str)> = (0..11).map(|i| (format!("x-h{i}"), "v")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(status(&req("GET", "/", &many)), Some(431));
        let big = "v".repeat(400);
        assert_eq!(status(&req("GET", "/", &[("Cookie", &big)])), Some(431));
        assert_eq!(
            status(&req("POST", "/", &[("Content-Length", "1000")])),
            None
        );
        assert_eq!(
            status(&req("POST", "/", &[("Content-Length", "1001")])),
            Some(413)
        );
    }

    #[test]
    fn ambiguous_framing_is_refused_and_closes() {
        let both = req(
            "POST",
            "/",
            &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
        );
        assert_eq!(
            check(&both, &limits()),
            Some(Refusal {
                status: 400,
                reason: "smuggling",
                close: true
            })
        );
        let twice = req(
            "POST",
            "/",
            &[("Content-Length", "5"), ("Content-Length", "6")],
        );
        assert_eq!(status(&twice), Some(400));
        let listed = req("POST", "/", &[("Content-Length", "5, 6")]);
        assert_eq!(status(&listed), Some(400));
        // The same value twice is only redundant (RFC 9110 §8.6 allows it).
        let same = req(
            "POST",
            "/",
            &[("Content-Length", "5"), ("Content-Length", "5")],
        );
        assert_eq!(status(&same), None);
        assert_eq!(
            status(&req("POST", "/", &[("Content-Length", "+5")])),
            Some(400)
        );
    }

    #[test]
    fn raw_heads() {
        assert!(raw_has_content_length(
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!raw_has_content_length(
            b"POST /content-length: HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }

    #[test]
    fn methods() {
        for m in ["TRACE", "CONNECT", "BREW"] {
            assert_eq!(status(&req(m, "/", &[])), Some(405), "{m}");
        }
        assert_eq!(status(&req("PURGE", "/", &[])), None);
    }
}
