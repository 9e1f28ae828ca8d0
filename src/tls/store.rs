//! The certificates the HTTPS listeners serve, and the SNI resolver that picks one per
//! handshake.
//!
//! The certificates belong to the config snapshot: a reload that brings renewed files builds a
//! new snapshot with new keys, and the next handshake sees them (connections already open keep
//! theirs). A file that does not load fails the reload and the old certificates keep serving.
//! The resolver holds the live handle, not the certificates, so nothing else needs telling.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsCert;
use crate::snapshot::Live;

/// One certificate as the listeners serve it.
pub struct Served {
    /// Its DNS names, lowercase: `a.example` or `*.example`.
    pub names: Vec<String>,
    pub key: Arc<CertifiedKey>,
    /// The file it came from, for logs and the expiry metric.
    pub label: String,
    /// UNIX seconds.
    pub not_after: i64,
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served")
            .field("names", &self.names)
            .field("label", &self.label)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Builds the served form of the configured certificates (already checked at config load).
pub fn build(certs: &[TlsCert]) -> Vec<Served> {
    certs
        .iter()
        .filter_map(|c| {
            let key = PrivateKeyDer::try_from(c.key.0.clone())
                .ok()
                .and_then(|k| rustls::crypto::ring::sign::any_supported_type(&k).ok());
            let Some(key) = key else {
                // check_pair accepted this key at load; failing now would be a rustls change.
                tracing::error!(cert = %c.cert.display(), "TLS key no longer loads: skipped");
                return None;
            };
            let chain = c
                .chain
                .iter()
                .map(|d| CertificateDer::from(d.clone()))
                .collect();
            Some(Served {
                names: c.names.clone(),
                key: Arc::new(CertifiedKey::new(chain, key)),
                label: c.cert.display().to_string(),
                not_after: c.not_after,
            })
        })
        .collect()
}

/// Logs a warning for each certificate within 14 days of its end (at start and each reload;
/// the expiry metric is what alerts should watch).
pub fn warn_expiring(served: &[Served], now: std::time::SystemTime) {
    const SOON: i64 = 14 * 86_400;
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for s in served.iter().filter(|s| s.not_after - now < SOON) {
        let days = (s.not_after - now) / 86_400;
        if s.not_after <= now {
            tracing::error!(cert = %s.label, names = ?s.names, "TLS certificate has expired");
        } else {
            tracing::warn!(cert = %s.label, names = ?s.names, days, "TLS certificate expires within 14 days");
        }
    }
}

/// The certificate for `sni`: an exact name, else a wildcard covering it (one label deep),
/// else the first certificate (clients without SNI, or names nothing covers).
pub fn pick<'a>(served: &'a [Served], sni: Option<&str>) -> Option<&'a Served> {
    if let Some(name) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) {
        if let Some(exact) = served.iter().find(|s| s.names.contains(&name)) {
            return Some(exact);
        }
        if let Some((_, parent)) = name.split_once('.') {
            let wildcard = format!("*.{parent}");
            if let Some(w) = served.iter().find(|s| s.names.contains(&wildcard)) {
                return Some(w);
            }
        }
    }
    served.first()
}

/// Whether some certificate names `host` (exactly or by wildcard): the site is served over
/// HTTPS, so plain HTTP may be redirected.
pub fn covers(served: &[Served], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let wildcard = host.split_once('.').map(|(_, p)| format!("*.{p}"));
    served.iter().any(|s| {
        s.names
            .iter()
            .any(|n| *n == host || Some(n) == wildcard.as_ref())
    })
}

/// rustls asks this for a certificate on every handshake.
pub struct SniResolver {
    live: Arc<Live>,
}

impl SniResolver {
    pub fn new(live: Arc<Live>) -> SniResolver {
        SniResolver { live }
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.live.current();
        pick(&snapshot.certs, hello.server_name()).map(|s| s.key.clone())
    }
}

/// TLS sessions remembered for resumption: TLS 1.2 session IDs and TLS 1.3 tickets alike take
/// an entry (rustls sends two tickets per TLS 1.3 handshake).
const SESSION_CACHE: usize = 20_000;

/// The rustls configuration of the HTTPS listeners. onair makes it rather than Pingora's
/// `TlsSettings`, which offers no way to set the server's cipher preference, the session cache
/// or tickets:
/// - TLS 1.3 and 1.2 only, ring's cipher suites (all AEAD with forward secrecy), the server's
///   order (strongest first) rather than whatever the client lists first;
/// - ALPN h2, then http/1.1;
/// - resumption from a session cache of this process (TLS 1.2 IDs, TLS 1.3 tickets);
/// - the certificate chosen per handshake by [`SniResolver`].
pub fn server_config(live: Arc<Live>) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(live)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    // Stateful resumption: TLS 1.2 session IDs, and TLS 1.3 tickets that name a cache entry.
    // (rustls's stateless ticketer made testssl's resumption checks fail; kept out until that
    // is understood.)
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(Arc::new(config))
}

/// The reason label of a failed handshake (a bounded set for the metric).
pub fn failure_reason(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("incompatible") || e.contains("version") {
        "protocol"
    } else if e.contains("alert") {
        "client_alert"
    } else if e.contains("certificate") {
        "no_certificate"
    } else if e.contains("eof") || e.contains("reset") || e.contains("closed") {
        "closed"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(names: &[&str]) -> Served {
        let c = rcgen::generate_simple_self_signed(vec!["x.test".into()]).unwrap();
        let der = c.key_pair.serialize_der();
        let key =
            rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::try_from(der).unwrap())
                .unwrap();
        Served {
            names: names.iter().map(|n| n.to_string()).collect(),
            key: Arc::new(CertifiedKey::new(vec![c.cert.der().clone()], key)),
            label: names.join(","),
            not_after: 0,
        }
    }

    #[test]
    fn exact_then_wildcard_then_the_first() {
        let all = vec![
            served(&["portal.test", "www.portal.test"]),
            served(&["*.news.test"]),
            served(&["live.news.test"]),
        ];
        let label = |sni| pick(&all, sni).map(|s| s.label.as_str());
        assert_eq!(
            label(Some("www.portal.test")),
            Some("portal.test,www.portal.test")
        );
        assert_eq!(
            label(Some("live.news.test")),
            Some("live.news.test"),
            "exact first"
        );
        assert_eq!(label(Some("Sport.News.Test.")), Some("*.news.test"));
        assert_eq!(
            label(Some("a.b.news.test")),
            Some("portal.test,www.portal.test"),
            "a wildcard covers one label"
        );
        assert_eq!(
            label(Some("news.test")),
            Some("portal.test,www.portal.test")
        );
        assert_eq!(label(None), Some("portal.test,www.portal.test"));
        assert!(pick(&[], Some("x")).is_none());
        assert!(covers(&all, "sport.news.test"));
        assert!(covers(&all, "PORTAL.test"));
        assert!(!covers(&all, "other.test"));
    }
}
