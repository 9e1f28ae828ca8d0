//! Ed25519 keys, in the PEM forms OpenSSL writes them:
//! `openssl genpkey -algorithm ed25519 -out operator.key` (a PKCS#8 `PRIVATE KEY`) and
//! `openssl pkey -in operator.key -pubout -out operators.pub` (an SPKI `PUBLIC KEY`). The
//! fleet's operators sign operations with them, and the newsroom signs content
//! (`crate::integrity`); [`generate`] makes a pair (`onair keygen`).
//!
//! ring does the signing and verifying: it is already in the tree as rustls's provider, so
//! onair adds no crypto code.

use std::fmt;
use std::sync::Arc;

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) } around the 32-byte key.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The first PEM block of `pem` that `pick` takes; other blocks are skipped.
fn first_block<T>(
    pem: &[u8],
    pick: impl Fn(rustls_pemfile::Item) -> Option<T>,
    missing: &str,
) -> Result<T, String> {
    let mut reader = pem;
    loop {
        match rustls_pemfile::read_one(&mut reader) {
            Ok(Some(item)) => {
                if let Some(found) = pick(item) {
                    return Ok(found);
                }
            }
            Ok(None) => return Err(missing.to_owned()),
            Err(e) => return Err(format!("not PEM: {e:?}")),
        }
    }
}

/// A public key operations are verified with, and the short id that names it in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyKey {
    key: [u8; 32],
}

impl VerifyKey {
    /// From a PEM `PUBLIC KEY` (SPKI) holding an Ed25519 key.
    pub fn from_pem(pem: &[u8]) -> Result<VerifyKey, String> {
        let spki = first_block(
            pem,
            |item| match item {
                rustls_pemfile::Item::SubjectPublicKeyInfo(spki) => Some(spki),
                _ => None,
            },
            "no PEM PUBLIC KEY block (make one with `openssl pkey -in KEY -pubout`)",
        )?;
        let key = spki
            .as_ref()
            .strip_prefix(&SPKI_ED25519_PREFIX[..])
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or("the PUBLIC KEY is not an Ed25519 key")?;
        Ok(VerifyKey { key })
    }

    /// Whether `signature` signs `message` under this key.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.key)
            .verify(message, signature)
            .is_ok()
    }

    /// The first 8 bytes of the key, in hex: enough to tell an operator which key signed.
    pub fn id(&self) -> String {
        self.key[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyKey({})", self.id())
    }
}

/// A private key this node (or the CLI) signs operations with. Shared, never printed.
#[derive(Clone)]
pub struct SignKey(Arc<Ed25519KeyPair>);

impl SignKey {
    /// From a PEM `PRIVATE KEY` (PKCS#8) holding an Ed25519 key.
    pub fn from_pem(pem: &[u8]) -> Result<SignKey, String> {
        let der = first_block(
            pem,
            |item| match item {
                rustls_pemfile::Item::Pkcs8Key(der) => Some(der),
                _ => None,
            },
            "no PEM PRIVATE KEY block (make one with `openssl genpkey -algorithm ed25519`)",
        )?;
        // OpenSSL writes PKCS#8 v1 (no public key inside): ring checks the pair only for v2,
        // which is why the "maybe unchecked" form is the one to use.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|_| "the PRIVATE KEY is not an Ed25519 key")?;
        Ok(SignKey(Arc::new(pair)))
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).as_ref().to_vec()
    }

    /// The public half.
    pub fn verify_key(&self) -> VerifyKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.0.public_key().as_ref());
        VerifyKey { key }
    }
}

impl fmt::Debug for SignKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignKey(<redacted>, public {})", self.verify_key().id())
    }
}

impl PartialEq for SignKey {
    fn eq(&self, other: &Self) -> bool {
        self.verify_key() == other.verify_key()
    }
}

/// The DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410 §7), as OpenSSL writes it:
/// version 0, the algorithm, then the 32-byte seed in an OCTET STRING in an OCTET STRING.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A new key pair as PEM: (private `PRIVATE KEY`, public `PUBLIC KEY`), in the forms OpenSSL
/// writes and reads.
pub fn generate() -> Result<(String, String), String> {
    use base64::Engine;
    let rng = ring::rand::SystemRandom::new();
    // ring writes PKCS#8 v2 (the public key inside); OpenSSL's own form is v1: the same seed.
    let v2 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "no randomness for a key")?;
    let seed = v2
        .as_ref()
        .get(16..48)
        .ok_or("an unexpected PKCS#8 layout from ring")?;
    let mut v1 = PKCS8_ED25519_PREFIX.to_vec();
    v1.extend_from_slice(seed);
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&v1)
        .map_err(|_| "an unexpected PKCS#8 layout from ring")?;
    let from_v2 = Ed25519KeyPair::from_pkcs8(v2.as_ref()).map_err(|_| "a key ring refuses")?;
    if pair.public_key().as_ref() != from_v2.public_key().as_ref() {
        return Err("an unexpected PKCS#8 layout from ring".to_owned());
    }
    let mut spki = SPKI_ED25519_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok((
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            b64.encode(&v1)
        ),
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            b64.encode(&spki)
        ),
    ))
}

/// Writes a key pair next to `out`: `out` + `private.0` holding `private.1` (mode 0600, never
/// over an existing file, fsynced) and `out` + `public.0` holding `public.1`. Their paths.
pub fn write_pair(
    out: &std::path::Path,
    private: (&str, &str),
    public: (&str, &str),
) -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let with = |ext: &str| {
        let mut name = out.as_os_str().to_owned();
        name.push(ext);
        std::path::PathBuf::from(name)
    };
    let (private_path, public_path) = (with(private.0), with(public.0));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private_path)
        .map_err(|e| format!("{}: {e}", private_path.display()))?;
    file.write_all(private.1.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", private_path.display()))?;
    std::fs::write(&public_path, public.1)
        .map_err(|e| format!("{}: {e}", public_path.display()))?;
    Ok((private_path, public_path))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A key pair as OpenSSL 3 writes it (`openssl genpkey -algorithm ed25519`, then
    /// `openssl pkey -pubout`).
    pub const PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEID6vAVZ+XTg04VFCNLDkj7coIiTEo9OnafWfp1Jbvv25
-----END PRIVATE KEY-----
";
    pub const PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAmMF8Fe/utKBvvW7CPwS4KxM+WHCZeXoVJpzPnT22I+0=
-----END PUBLIC KEY-----
";

    #[test]
    fn openssl_keys_sign_and_verify() {
        let sign = SignKey::from_pem(PRIVATE_PEM.as_bytes()).unwrap();
        let verify = VerifyKey::from_pem(PUBLIC_PEM.as_bytes()).unwrap();
        assert_eq!(
            sign.verify_key(),
            verify,
            "the public file is the private key's half"
        );
        let sig = sign.sign(b"purge home");
        assert!(verify.verifies(b"purge home", &sig));
        assert!(!verify.verifies(b"purge sport", &sig));
        let mut bent = sig.clone();
        bent[0] ^= 1;
        assert!(!verify.verifies(b"purge home", &bent));
    }

    #[test]
    fn a_generated_pair_reads_back_in_openssls_forms() {
        let (private, public) = generate().unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI"));
        let sign = SignKey::from_pem(private.as_bytes()).unwrap();
        let verify = VerifyKey::from_pem(public.as_bytes()).unwrap();
        assert_eq!(sign.verify_key(), verify);
        assert!(verify.verifies(b"x", &sign.sign(b"x")));
        assert_ne!(generate().unwrap().0, private, "a new key each time");
    }

    #[test]
    fn wrong_or_broken_pem_is_a_clear_error() {
        assert!(VerifyKey::from_pem(PRIVATE_PEM.as_bytes())
            .unwrap_err()
            .contains("PUBLIC KEY"));
        assert!(SignKey::from_pem(PUBLIC_PEM.as_bytes())
            .unwrap_err()
            .contains("PRIVATE KEY"));
        assert!(VerifyKey::from_pem(b"hello").is_err());
        // An ECDSA P-256 public key: PEM, but not Ed25519.
        let p256 = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEt2P+XItfukSvk0MgYzV2YFRBkQnt
kATdd9A78JyHwPJGZacuF9n16rOW7KjGJhWOaqNuZBhpSYUmhzZtJ9mXMQ==
-----END PUBLIC KEY-----
";
        assert!(VerifyKey::from_pem(p256.as_bytes())
            .unwrap_err()
            .contains("Ed25519"));
    }
}
