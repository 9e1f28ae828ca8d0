//! Certificates and private keys from PEM files, checked before Pingora sees them; `store`
//! serves them on the HTTPS listeners.
//!
//! Pingora's `CertKey` and `WrappedX509` panic on DER they cannot parse, and its rustls
//! connector unwraps the key conversion, so every certificate and key is parsed here first, at
//! config load: a bad file is a `check` error naming the file, never a panic in a request.

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use rustls::pki_types::PrivateKeyDer;

pub mod store;

/// A private key in DER, kept out of `Debug` output (configs are logged).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub Vec<u8>);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Every certificate of a PEM file, in DER, leaf (or first CA) first.
pub fn load_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut text.as_slice()) {
        let der = item.map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("{}: a certificate cannot be parsed: {e}", path.display()))?;
        certs.push(der.to_vec());
    }
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1), in DER.
pub fn load_key(path: &Path) -> Result<SecretKey, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let key = rustls_pemfile::private_key(&mut text.as_slice())
        .map_err(|e| format!("{}: not a PEM private key: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no PEM private key in the file", path.display()))?;
    let der = key.secret_der().to_vec();
    // What Pingora will do with it (and unwrap): it must succeed here first.
    let again = PrivateKeyDer::try_from(der.clone())
        .map_err(|e| format!("{}: unsupported private key: {e}", path.display()))?;
    rustls::crypto::ring::sign::any_supported_type(&again)
        .map_err(|e| format!("{}: unsupported private key: {e}", path.display()))?;
    Ok(SecretKey(der))
}

/// Checks that `key` belongs to the leaf certificate and that the leaf is valid at `now`.
pub fn check_pair(certs: &[Vec<u8>], key: &SecretKey, now: SystemTime) -> Result<(), String> {
    let leaf = certs.first().ok_or("no certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let validity = cert.validity();
    if validity.not_after.timestamp() < now_s {
        return Err(format!("the certificate expired on {}", validity.not_after));
    }
    if validity.not_before.timestamp() > now_s {
        return Err(format!(
            "the certificate is not valid before {}",
            validity.not_before
        ));
    }
    let der = PrivateKeyDer::try_from(key.0.clone()).map_err(|e| e.to_string())?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    let certified = rustls::sign::CertifiedKey::new(
        certs
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.clone()))
            .collect(),
        signing,
    );
    certified
        .keys_match()
        .map_err(|_| "the private key does not match the certificate".to_owned())
}

/// The DNS names (subjectAltName, lowercase) and the end of validity (UNIX seconds) of a
/// certificate.
pub fn names_and_expiry(leaf: &[u8]) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|e| format!("its subjectAltName cannot be parsed: {e}"))?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((names, cert.validity().not_after.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn good_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        let cert = write(dir.path(), "a.pem", &a.cert.pem());
        let key = write(dir.path(), "a.key", &a.key_pair.serialize_pem());
        let other_key = write(dir.path(), "b.key", &b.key_pair.serialize_pem());
        let certs = load_certs(&cert).unwrap();
        let k = load_key(&key).unwrap();
        assert!(check_pair(&certs, &k, SystemTime::now()).is_ok());
        let wrong = load_key(&other_key).unwrap();
        assert!(check_pair(&certs, &wrong, SystemTime::now())
            .unwrap_err()
            .contains("does not match"));
        // Expired (rcgen's default validity ends in 4096, so look from later still).
        let far = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(4_200_000_000 * 32);
        assert!(check_pair(&certs, &k, far).unwrap_err().contains("expired"));
        assert!(format!("{k:?}").contains(".."), "keys stay out of logs");
        // Not PEM, empty, or missing.
        let junk = write(dir.path(), "junk.pem", "not a certificate");
        assert!(load_certs(&junk)
            .unwrap_err()
            .contains("no PEM certificate"));
        assert!(load_key(&junk).unwrap_err().contains("no PEM private key"));
        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        assert!(load_certs(&broken).is_err());
        assert!(load_certs(&dir.path().join("missing.pem"))
            .unwrap_err()
            .contains("cannot read"));
    }
}
