//! The attack-mode challenge and the clearance cookie.
//!
//! Stateless on every node: a challenge is `issued.bits.nonce.mac` and a clearance cookie is
//! `expires.mac`, both HMAC-SHA256 signed with the key of `protect.attack.key_file` and bound
//! to the client's address prefix (IPv4 /24, IPv6 /64: a reader whose address moves inside its
//! provider's block keeps its clearance). Any node with the same key file accepts a cookie any
//! other issued; MACs are checked in constant time by `ring::hmac::verify`.
//!
//! The page asks the browser for a proof of work: a counter `n` such that
//! SHA-256(`challenge:n`) starts with `bits` zero bits. The SHA-256 is plain JavaScript, since
//! `crypto.subtle` is missing outside secure contexts (plain HTTP). A site may also opt in to a
//! no-JavaScript path (`nojs_challenge`): a meta-refresh asks again after `nojs_wait` with
//! `n=wait`, accepted once that much time has passed since the challenge was issued. That costs
//! a bot only time, so it clears for less long (`nojs_clearance`), and each address block
//! (IPv4 /24, IPv6 /48) may redeem it only `nojs_per_block` times per clearance window
//! ([`NoJsBudget`]). Either way the answer comes back to [`PATH`], which sets the cookie and
//! redirects to the page the reader asked for.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::AttackKey;

/// Where solutions come back (reserved on every site while onair fronts it).
pub const PATH: &str = "/.onair/challenge";
/// The clearance cookie's name.
pub const COOKIE: &str = "onair_clearance";
/// Seconds a challenge stays answerable.
const CHALLENGE_TTL: u64 = 300;
/// Address blocks whose no-JavaScript redemptions are counted at once; past it, the blocks
/// whose windows began first are forgotten.
const NOJS_BLOCKS: usize = 65_536;

/// How a challenge was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Solved {
    Work,
    Waited,
}

/// Signs and checks challenges and cookies with one key.
pub struct Signer {
    key: hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<key>)")
    }
}

/// Why an answer was not accepted (logged at debug level, counted as `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    Malformed,
    Forged,
    Expired,
    TooEarly,
    NotSolved,
    /// A no-JavaScript answer on a site without that path.
    NoJsOff,
    /// A no-JavaScript answer from an address block that used its budget.
    NoJsBudget,
}

impl Signer {
    /// A signer with the fleet's key, or with this process's own random key when none is
    /// configured.
    pub fn new(key: Option<&AttackKey>) -> Signer {
        let bytes: &[u8] = match key {
            Some(k) => &k.0,
            None => process_key(),
        };
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    fn sign(&self, domain: &str, fields: &[&str]) -> String {
        let tag = hmac::sign(&self.key, &message(domain, fields));
        hex(tag.as_ref())
    }

    fn verify(&self, domain: &str, fields: &[&str], mac_hex: &str) -> bool {
        let Some(mac) = unhex(mac_hex) else {
            return false;
        };
        hmac::verify(&self.key, &message(domain, fields), &mac).is_ok()
    }

    /// A fresh challenge for `client`.
    pub fn challenge(&self, client: IpAddr, bits: u8, now: u64) -> String {
        let mut nonce = [0u8; 8];
        // The nonce only makes two challenges differ; a failed RNG leaves it zero, still safe
        // (the MAC binds time and client).
        let _ = SystemRandom::new().fill(&mut nonce);
        let (issued, bits, nonce) = (now.to_string(), bits.to_string(), hex(&nonce));
        let mac = self.sign("challenge", &[&issued, &bits, &nonce, &prefix(client)]);
        format!("{issued}.{bits}.{nonce}.{mac}")
    }

    /// Checks an answer to a challenge: `answer` is the proof-of-work counter, or `wait`.
    /// `nojs_wait`: how long a no-JavaScript answer must wait (None: that path is off).
    pub fn check(
        &self,
        token: &str,
        answer: &str,
        client: IpAddr,
        now: u64,
        nojs_wait: Option<u64>,
    ) -> Result<Solved, Failed> {
        let mut parts = token.split('.');
        let (Some(issued), Some(bits), Some(nonce), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Failed::Malformed);
        };
        if !self.verify("challenge", &[issued, bits, nonce, &prefix(client)], mac) {
            return Err(Failed::Forged);
        }
        let issued: u64 = issued.parse().map_err(|_| Failed::Malformed)?;
        let bits: u32 = bits.parse().map_err(|_| Failed::Malformed)?;
        if now > issued.saturating_add(CHALLENGE_TTL) {
            return Err(Failed::Expired);
        }
        if answer == "wait" {
            return match nojs_wait {
                None => Err(Failed::NoJsOff),
                Some(wait) if now >= issued.saturating_add(wait) => Ok(Solved::Waited),
                Some(_) => Err(Failed::TooEarly),
            };
        }
        if answer.is_empty() || answer.len() > 20 || !answer.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Failed::Malformed);
        }
        let hash = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{token}:{answer}").as_bytes(),
        );
        if leading_zero_bits(hash.as_ref()) >= bits {
            Ok(Solved::Work)
        } else {
            Err(Failed::NotSolved)
        }
    }

    /// The clearance cookie's value for `client`, good until `expires` (UNIX seconds).
    pub fn clearance(&self, client: IpAddr, expires: u64) -> String {
        let expires = expires.to_string();
        let mac = self.sign("clearance", &[&expires, &prefix(client)]);
        format!("{expires}.{mac}")
    }

    /// Whether the request's `Cookie` lines carry a valid clearance for `client`.
    pub fn cleared<'a>(
        &self,
        cookie_lines: impl Iterator<Item = &'a [u8]>,
        client: IpAddr,
        now: u64,
    ) -> bool {
        // Only the first: a request stuffed with cookies must not buy one MAC check each.
        let Some(value) = cookie_lines
            .flat_map(|line| line.split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = std::str::from_utf8(pair).ok()?.trim();
                pair.strip_prefix(COOKIE)?.strip_prefix('=')
            })
        else {
            return false;
        };
        let Some((expires, mac)) = value.split_once('.') else {
            return false;
        };
        expires.parse::<u64>().is_ok_and(|e| e > now)
            && self.verify("clearance", &[expires, &prefix(client)], mac)
    }
}

/// How many no-JavaScript redemptions each address block has made in its current window.
/// Per node: with a fleet, each node grants its own budget, which bounds the total by the
/// node count.
#[derive(Default)]
pub struct NoJsBudget {
    blocks: std::sync::Mutex<std::collections::HashMap<u128, (u64, u32)>>,
}

impl NoJsBudget {
    /// Counts one redemption for `block` at `now` if the block has budget left in its window
    /// of `window` seconds; false: refused.
    pub fn take(&self, block: u128, now: u64, window: u64, per_window: u32) -> bool {
        let mut blocks = match self.blocks.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if blocks.len() >= NOJS_BLOCKS && !blocks.contains_key(&block) {
            blocks.retain(|_, (start, _)| now < start.saturating_add(window));
            if blocks.len() >= NOJS_BLOCKS {
                // Full of live windows (many blocks at once, an attack spread wide): forget
                // the oldest eighth rather than refuse every new block's readers. Each block
                // stays bounded per window it is remembered in.
                let mut starts: Vec<u64> = blocks.values().map(|(start, _)| *start).collect();
                let (_, cut, _) = starts.select_nth_unstable(NOJS_BLOCKS / 8);
                let cut = *cut;
                blocks.retain(|_, (start, _)| *start > cut);
            }
        }
        let entry = blocks.entry(block).or_insert((now, 0));
        if now >= entry.0.saturating_add(window) {
            *entry = (now, 0);
        }
        if entry.1 >= per_window {
            return false;
        }
        entry.1 += 1;
        true
    }
}

/// Domain-separated, unambiguous: fields never contain a newline.
fn message(domain: &str, fields: &[&str]) -> Vec<u8> {
    let mut m = format!("onair-{domain}-v1");
    for f in fields {
        m.push('\n');
        m.push_str(f);
    }
    m.into_bytes()
}

/// The key used when no key file is configured: random, for the life of this process.
fn process_key() -> &'static [u8] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        if SystemRandom::new().fill(&mut key).is_err() {
            // No system randomness is a broken machine; a per-process fallback still keeps
            // outsiders from predicting it (they cannot read our memory or pid and time).
            let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
            let d = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
            key.copy_from_slice(d.as_ref());
        }
        key
    })
}

/// The address block a clearance is bound to.
pub fn prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => prefix(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

pub fn leading_zero_bits(bytes: &[u8]) -> u32 {
    let mut bits = 0;
    for &b in bytes {
        if b == 0 {
            bits += 8;
        } else {
            return bits + b.leading_zeros();
        }
    }
    bits
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The parts of an answer at [`PATH`]: `c` (challenge), `n` (answer), `r` (where to go back).
#[derive(Debug, Default, PartialEq)]
pub struct Answer {
    pub challenge: String,
    pub answer: String,
    pub return_to: String,
}

impl Answer {
    pub fn parse(query: &str) -> Answer {
        let mut a = Answer::default();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "c" => a.challenge = v,
                "n" => a.answer = v,
                "r" => a.return_to = v,
                _ => {}
            }
        }
        a.return_to = local_path(&a.return_to);
        a
    }
}

/// `path` if it is a path on this site, else `/`: the redirect after a challenge must never
/// lead elsewhere (`//evil.example`, `https://...`, control characters).
pub fn local_path(path: &str) -> String {
    let ok = path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        && path.len() <= 8192
        && path.bytes().all(|b| (0x21..0x7f).contains(&b));
    if ok {
        path.to_owned()
    } else {
        "/".to_owned()
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters: safe in a URL, an HTML attribute
/// and a JavaScript string alike.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The challenge page for `challenge` (made by [`Signer::challenge`], so only digits, hex and
/// dots), returning to `return_to` once solved.
/// `nojs_wait`: the no-JavaScript path's wait in seconds, None when the site has it off.
pub fn page(challenge: &str, bits: u8, return_to: &str, nojs_wait: Option<u64>) -> Bytes {
    let r = percent_encode(&local_path(return_to));
    let nojs = match nojs_wait {
        Some(wait) => {
            let wait_url = format!("{PATH}?c={challenge}&amp;n=wait&amp;r={r}");
            NOJS_ON
                .replace("{WAIT}", &wait.to_string())
                .replace("{WAIT_URL}", &wait_url)
        }
        None => NOJS_OFF.to_owned(),
    };
    let html = PAGE
        .replace("{NOSCRIPT}", &nojs)
        .replace("{CHALLENGE}", challenge)
        .replace("{BITS}", &bits.to_string())
        .replace("{RETURN}", &r)
        .replace("{PATH}", PATH);
    Bytes::from(html)
}

/// The no-JavaScript path, where the site offers it (a `<noscript>` refresh is valid in the
/// body in every browser that matters).
const NOJS_ON: &str = r#"<noscript><meta http-equiv="refresh" content="{WAIT};url={WAIT_URL}"><p>JavaScript is off, so the check is a wait instead: the page opens by itself in {WAIT} seconds. If it does not, <a href="{WAIT_URL}">continue to the page</a>.</p></noscript>"#;

/// Where it does not.
const NOJS_OFF: &str = "<noscript><p>This check needs JavaScript, which is off in this browser. Turn it on and reload the page, or come back later: the check is only on while the site is under heavy load.</p></noscript>";

/// The page: readable text first (screen readers announce the status line), the work in a
/// script at the end, and a no-JavaScript fallback.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>One moment, please</title>
<style>body{font:1.125rem/1.5 system-ui,sans-serif;max-width:36rem;margin:10vh auto;padding:0 1rem;color:#1a1a1a;background:#fff}</style>
</head>
<body>
<main>
<h1>Checking your browser</h1>
<p id="status" role="status" aria-live="polite">This site is under unusually heavy traffic. Your browser is doing a short check before the page opens; it takes a few seconds and needs nothing from you.</p>
{NOSCRIPT}
</main>
<script>
(function () {
  "use strict";
  var challenge = "{CHALLENGE}", bits = {BITS}, back = "{RETURN}";
  var K = [0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,
    0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,
    0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,
    0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,
    0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,
    0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,
    0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,
    0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2];
  var W = new Array(64);
  function rotr(x, n) { return (x >>> n) | (x << (32 - n)); }
  // SHA-256 of an ASCII string; returns the first two words of the digest, which is all the
  // leading-zero test needs (difficulty is at most 28 bits).
  function sha256head(s) {
    var len = s.length, blocks = ((len + 8) >> 6) + 1, m = new Array(blocks * 16), i;
    for (i = 0; i < m.length; i++) m[i] = 0;
    for (i = 0; i < len; i++) m[i >> 2] |= s.charCodeAt(i) << (24 - (i & 3) * 8);
    m[len >> 2] |= 0x80 << (24 - (len & 3) * 8);
    m[m.length - 1] = len * 8;
    var h0 = 0x6a09e667, h1 = 0xbb67ae85, h2 = 0x3c6ef372, h3 = 0xa54ff53a,
        h4 = 0x510e527f, h5 = 0x9b05688c, h6 = 0x1f83d9ab, h7 = 0x5be0cd19;
    for (var b = 0; b < m.length; b += 16) {
      var a = h0, bb = h1, c = h2, d = h3, e = h4, f = h5, g = h6, h = h7, t;
      for (t = 0; t < 64; t++) {
        if (t < 16) W[t] = m[b + t] | 0;
        else {
          var x = W[t - 15], y = W[t - 2];
          W[t] = (W[t - 16] + (rotr(x, 7) ^ rotr(x, 18) ^ (x >>> 3)) + W[t - 7] +
                  (rotr(y, 17) ^ rotr(y, 19) ^ (y >>> 10))) | 0;
        }
        var t1 = (h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[t] + W[t]) | 0;
        var t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & bb) ^ (a & c) ^ (bb & c))) | 0;
        h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = bb; bb = a; a = (t1 + t2) | 0;
      }
      h0 = (h0 + a) | 0; h1 = (h1 + bb) | 0; h2 = (h2 + c) | 0; h3 = (h3 + d) | 0;
      h4 = (h4 + e) | 0; h5 = (h5 + f) | 0; h6 = (h6 + g) | 0; h7 = (h7 + h) | 0;
    }
    return [h0 >>> 0, h1 >>> 0];
  }
  function solved(head) {
    if (bits <= 32) return bits === 0 || (head[0] >>> (32 - bits)) === 0;
    return head[0] === 0 && (head[1] >>> (64 - bits)) === 0;
  }
  var n = 0, prefix = challenge + ":";
  function work() {
    for (var end = n + 20000; n < end; n++) {
      if (solved(sha256head(prefix + n))) {
        document.getElementById("status").textContent = "Done. Opening the page\u2026";
        location.replace("{PATH}?c=" + challenge + "&n=" + n + "&r=" + back);
        return;
      }
    }
    setTimeout(work, 0);
  }
  setTimeout(work, 0);
})();
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(key: &str) -> Signer {
        Signer::new(Some(&AttackKey(std::sync::Arc::from(key.as_bytes()))))
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The proof of work, as the page computes it.
    fn solve(challenge: &str, bits: u32) -> u64 {
        (0u64..)
            .find(|n| {
                let h = ring::digest::digest(
                    &ring::digest::SHA256,
                    format!("{challenge}:{n}").as_bytes(),
                );
                leading_zero_bits(h.as_ref()) >= bits
            })
            .unwrap_or(0)
    }

    #[test]
    fn a_solved_challenge_is_accepted_only_for_its_client_block_and_time() {
        let s = signer(KEY);
        let client = ip("198.51.100.7");
        let c = s.challenge(client, 12, 1000);
        let n = solve(&c, 12).to_string();
        assert_eq!(s.check(&c, &n, client, 1010, Some(5)), Ok(Solved::Work));
        // A neighbour in the same /24 shares the clearance block; another block does not.
        assert_eq!(
            s.check(&c, &n, ip("198.51.100.200"), 1010, Some(5)),
            Ok(Solved::Work)
        );
        assert_eq!(
            s.check(&c, &n, ip("198.51.101.7"), 1010, Some(5)),
            Err(Failed::Forged)
        );
        assert_eq!(
            s.check(&c, &n, client, 1000 + 301, Some(5)),
            Err(Failed::Expired)
        );
        // Another node's key does not know it.
        let other = signer("fedcba9876543210fedcba9876543210");
        assert_eq!(
            other.check(&c, &n, client, 1010, Some(5)),
            Err(Failed::Forged)
        );
        // A raised difficulty field breaks the MAC.
        let parts: Vec<&str> = c.split('.').collect();
        let easier = format!("{}.1.{}.{}", parts[0], parts[2], parts[3]);
        assert_eq!(
            s.check(&easier, "0", client, 1010, Some(5)),
            Err(Failed::Forged)
        );
    }

    #[test]
    fn wrong_answers_and_early_waits_are_refused() {
        let s = signer(KEY);
        let client = ip("2001:db8:1:2:3::9");
        let c = s.challenge(client, 20, 1000);
        let n = solve(&c, 20);
        // The next counter is almost surely not a solution (2^-20).
        assert_eq!(
            s.check(&c, &(n + 1).to_string(), client, 1001, Some(5)),
            Err(Failed::NotSolved)
        );
        assert_eq!(
            s.check(&c, "wait", client, 1004, Some(5)),
            Err(Failed::TooEarly)
        );
        assert_eq!(
            s.check(&c, "wait", client, 1005, Some(5)),
            Ok(Solved::Waited)
        );
        assert_eq!(
            s.check(&c, "12a", client, 1005, Some(5)),
            Err(Failed::Malformed)
        );
        assert_eq!(
            s.check("junk", "1", client, 1005, Some(5)),
            Err(Failed::Malformed)
        );
        assert_eq!(
            s.check(
                &c,
                &n.to_string(),
                ip("2001:db8:1:2:ffff::1"),
                1001,
                Some(5)
            ),
            Ok(Solved::Work),
            "same /64"
        );
    }

    #[test]
    fn clearance_cookies_are_bound_to_key_block_and_expiry() {
        let s = signer(KEY);
        let client = ip("203.0.113.5");
        let value = s.clearance(client, 5000);
        let line = format!("theme=dark; {COOKIE}={value}; other=1");
        let lines = || std::iter::once(line.as_bytes());
        assert!(s.cleared(lines(), client, 4999));
        assert!(!s.cleared(lines(), client, 5000), "expired");
        assert!(
            !s.cleared(lines(), ip("203.0.114.5"), 4000),
            "foreign block"
        );
        assert!(!signer("another key, another fleet......").cleared(lines(), client, 4000));
        // A forged expiry breaks the MAC.
        let (_, mac) = value.split_once('.').unwrap();
        let forged = format!("{COOKIE}=99999.{mac}");
        assert!(!s.cleared(std::iter::once(forged.as_bytes()), client, 4000));
        assert!(!s.cleared(std::iter::once(b"onair_clearance=".as_slice()), client, 1));
        assert!(!s.cleared(std::iter::empty(), client, 1));
    }

    #[test]
    fn redirects_stay_on_the_site() {
        assert_eq!(local_path("/news/today?x=1"), "/news/today?x=1");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/a\r\nSet-Cookie: x",
            "",
            "/\\evil",
        ] {
            assert_eq!(local_path(bad), "/", "{bad:?}");
        }
        let a = Answer::parse("c=1.2.3.4&n=42&r=%2Fnews%2Fa%3Fb%3D1");
        assert_eq!(a.challenge, "1.2.3.4");
        assert_eq!(a.answer, "42");
        assert_eq!(a.return_to, "/news/a?b=1");
        assert_eq!(Answer::parse("r=%2F%2Fevil").return_to, "/");
    }

    #[test]
    fn the_page_escapes_the_return_path() {
        let page = page("1.2.3.4", 16, "/a\"><script>x</script>", Some(5));
        let text = std::str::from_utf8(&page).unwrap();
        assert!(!text.contains("<script>x"));
        let page = page_text("/news/a?c=\"d\"");
        assert!(page.contains("r=%2Fnews%2Fa%3Fc%3D%22d%22"), "{page}");
        assert!(page.contains("role=\"status\""));
        assert!(page.contains("http-equiv=\"refresh\""));
    }

    fn page_text(back: &str) -> String {
        String::from_utf8(page("1.2.3.4", 16, back, Some(5)).to_vec()).unwrap()
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefix(ip("192.0.2.77")), "192.0.2.0/24");
        assert_eq!(prefix(ip("::ffff:192.0.2.77")), "192.0.2.0/24");
        assert_eq!(prefix(ip("2001:db8:a:b:c:d:e:f")), "2001:db8:a:b::/64");
        assert_eq!(leading_zero_bits(&[0, 0, 0x10, 0xff]), 19);
    }

    #[test]
    fn the_nojs_budget_is_per_block_and_never_closes_on_new_blocks() {
        let budget = NoJsBudget::default();
        assert!(budget.take(1, 1000, 300, 2));
        assert!(budget.take(1, 1000, 300, 2));
        assert!(!budget.take(1, 1001, 300, 2), "over the block's budget");
        assert!(budget.take(1, 1300, 300, 2), "a new window");
        // A table full of live windows still takes a new block.
        for block in 10..(10 + NOJS_BLOCKS as u128) {
            budget.take(block, 1400, 300, 2);
        }
        assert!(budget.take(u128::MAX, 1401, 300, 2));
    }
}
