//! Signed origin content: the newsroom signs what it publishes, and the edge checks it before it
//! stores or serves it, so that a forged page (a taken-over CMS, origin or link) never spreads.
//!
//! - [`digest`]: `Content-Digest` (RFC 9530), checked over the body as it streams.
//! - [`signature`]: HTTP Message Signatures (RFC 9421) with Ed25519: the signature base built
//!   by the RFC from the response (and the request's `;req` components), verified with the
//!   site's keys (`crate::keys`), and made the same way by `onair sign`.
//! - [`tools`]: `onair keygen` and `onair sign`, for the newsroom.
//!
//! The checks name what failed ([`Failure`]), for `onair_integrity_failures_total{site,reason}`
//! and the log line.

pub mod digest;
pub mod signature;
pub mod tools;

/// Why a response's integrity does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No `Signature`/`Signature-Input` (or no `Content-Digest`): unsigned.
    NoSignature,
    /// Malformed, not covering what it must, or not verifying.
    BadSignature(String),
    /// Signed by a key the site does not list.
    UnknownKey(String),
    /// The body does not hash to its `Content-Digest`.
    DigestMismatch,
    /// `created` in the future or `expires` in the past.
    Expired,
}

impl Failure {
    /// The metric label (bounded).
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::NoSignature => "no_signature",
            Failure::BadSignature(_) => "bad_signature",
            Failure::UnknownKey(_) => "unknown_key",
            Failure::DigestMismatch => "digest_mismatch",
            Failure::Expired => "expired",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoSignature => write!(f, "no signature"),
            Failure::BadSignature(why) => write!(f, "bad signature: {why}"),
            Failure::UnknownKey(id) => write!(f, "signed by an unknown key {id:?}"),
            Failure::DigestMismatch => write!(f, "the body does not match its Content-Digest"),
            Failure::Expired => write!(f, "the signature is not valid now (created or expires)"),
        }
    }
}
