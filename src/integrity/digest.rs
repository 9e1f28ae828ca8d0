//! `Content-Digest` (RFC 9530): a dictionary of algorithm → `:base64:` digest of the content.
//! The edge hashes the body as it streams ([`Check::update`]) and compares at its end
//! ([`Check::finish`]); only `sha-256` and `sha-512` are taken (the RFC's "active" ones).
//! When the field names both, the stronger one is checked.

use base64::Engine;
use ring::digest::{Context, SHA256, SHA512};

use super::Failure;

/// A body being checked against its `Content-Digest`.
pub struct Check {
    context: Context,
    expected: Vec<u8>,
}

impl Check {
    /// From the field's value; `NoSignature` when absent or naming no usable algorithm (an
    /// unsigned response), `BadSignature` when it cannot be read.
    pub fn new(field: Option<&[u8]>) -> Result<Check, Failure> {
        let field = field.ok_or(Failure::NoSignature)?;
        let dict = sfv::Parser::parse_dictionary(field)
            .map_err(|e| Failure::BadSignature(format!("Content-Digest: {e}")))?;
        let digest_of = |name: &str| match dict.get(name) {
            Some(sfv::ListEntry::Item(item)) => item.bare_item.as_byte_seq().cloned(),
            _ => None,
        };
        let (algorithm, expected) = match (digest_of("sha-512"), digest_of("sha-256")) {
            (Some(d), _) => (&SHA512, d),
            (None, Some(d)) => (&SHA256, d),
            (None, None) => return Err(Failure::NoSignature),
        };
        Ok(Check {
            context: Context::new(algorithm),
            expected,
        })
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.context.update(chunk);
    }

    /// At the end of the body: whether it hashed to the digest.
    pub fn finish(self) -> Result<(), Failure> {
        let got = self.context.finish();
        // Not secret: a plain comparison is fine.
        if got.as_ref() == self.expected.as_slice() {
            Ok(())
        } else {
            Err(Failure::DigestMismatch)
        }
    }
}

/// The `Content-Digest` value (sha-256) of `body`, as an origin sends it.
pub fn of(body: &[u8]) -> String {
    let digest = ring::digest::digest(&SHA256, body);
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9530 §B.1 and §B.2: `{"hello": "world"}` and its digests.
    const BODY: &[u8] = b"{\"hello\": \"world\"}";
    const SHA256_FIELD: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
    const SHA512_FIELD: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

    fn checks(field: &str, chunks: &[&[u8]]) -> Result<(), Failure> {
        let mut check = Check::new(Some(field.as_bytes()))?;
        for chunk in chunks {
            check.update(chunk);
        }
        check.finish()
    }

    #[test]
    fn the_rfc_examples_hold_however_the_body_is_cut() {
        assert_eq!(of(BODY), SHA256_FIELD);
        assert_eq!(checks(SHA256_FIELD, &[BODY]), Ok(()));
        assert_eq!(checks(SHA512_FIELD, &[&BODY[..5], &BODY[5..]]), Ok(()));
        let both = format!("{SHA256_FIELD}, {SHA512_FIELD}");
        assert_eq!(checks(&both, &[BODY]), Ok(()));
    }

    #[test]
    fn an_altered_body_or_a_bad_field_fails_by_name() {
        assert_eq!(
            checks(SHA256_FIELD, &[b"{\"hello\": \"w0rld\"}"]),
            Err(Failure::DigestMismatch)
        );
        assert_eq!(checks(SHA256_FIELD, &[]), Err(Failure::DigestMismatch));
        assert_eq!(
            Check::new(None).err(),
            Some(Failure::NoSignature),
            "no field: unsigned"
        );
        assert_eq!(
            Check::new(Some(b"md5=:AAAA:")).err(),
            Some(Failure::NoSignature),
            "only an algorithm we do not take"
        );
        assert!(matches!(
            Check::new(Some(b"sha-256=X48E")).err(),
            Some(Failure::NoSignature | Failure::BadSignature(_))
        ));
        assert!(matches!(
            Check::new(Some(b"sha-256=:not base64!:")).err(),
            Some(Failure::BadSignature(_))
        ));
    }
}
