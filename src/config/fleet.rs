//! `[fleet]` validation: the bus, its credentials, the operators' keys (read and parsed here,
//! so a wrong key is a config error, not a refused purge during an incident).

use std::path::Path;
use std::time::Duration;

use super::schema::RawFleet;
use super::validate::{resolve, Errors};
use super::{Cache, Fleet, FleetAuth};
use crate::fleet::keys::{SignKey, VerifyKey};

/// Largest key, token or credentials file read.
const MAX_SECRET: u64 = 64 << 10;

pub(super) fn validate(f: RawFleet, base: &Path, cache: &Cache, e: &mut Errors<'_>) -> Fleet {
    let servers = f.servers.unwrap_or_default();
    if servers.is_empty() {
        e.push(
            "fleet.servers",
            "is required: the NATS URLs, e.g. [\"nats://10.0.0.5:4222\"]",
        );
    }
    for (i, url) in servers.iter().enumerate() {
        let scheme_ok = ["nats://", "tls://"].iter().any(|s| url.starts_with(s));
        let has_host = url
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty());
        if !scheme_ok || !has_host {
            e.push(
                format!("fleet.servers[{i}]"),
                format!("{url:?} is not a NATS URL (nats://host:port or tls://host:port)"),
            );
        }
    }
    let given: Vec<&str> = [
        ("token_file", &f.token_file),
        ("creds_file", &f.creds_file),
        ("nkey_file", &f.nkey_file),
    ]
    .iter()
    .filter(|(_, v)| v.is_some())
    .map(|(k, _)| *k)
    .collect();
    if given.len() > 1 {
        e.push(
            format!("fleet.{}", given[1]),
            format!(
                "give one of token_file, creds_file and nkey_file, not {}",
                given.join(" and ")
            ),
        );
    }
    let auth = if given.len() > 1 {
        FleetAuth::None
    } else if let Some(file) = &f.token_file {
        e.file("fleet.token_file", base, file, MAX_SECRET)
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .filter(|t| {
                let ok = !t.is_empty();
                if !ok {
                    e.push("fleet.token_file", "the token file is empty");
                }
                ok
            })
            .map_or(FleetAuth::None, FleetAuth::Token)
    } else if let Some(file) = &f.creds_file {
        e.file("fleet.creds_file", base, file, MAX_SECRET)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_or(FleetAuth::None, FleetAuth::Creds)
    } else if let Some(file) = &f.nkey_file {
        e.file("fleet.nkey_file", base, file, MAX_SECRET)
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .filter(|seed| {
                // A user seed: the server checks a user's signature with its public key.
                let ok = seed.starts_with("SU") && nkeys::KeyPair::from_seed(seed).is_ok();
                if !ok {
                    e.push(
                        "fleet.nkey_file",
                        "is not an NKey user seed (SU..., as `onair fleet nkey` writes it)",
                    );
                }
                ok
            })
            .map_or(FleetAuth::None, FleetAuth::NKey)
    } else {
        FleetAuth::None
    };
    let ca_file = f.ca_file.map(|file| {
        let path = resolve(base, &file);
        if let Some(pem) = e.file("fleet.ca_file", base, &file, 1 << 20) {
            let mut reader = pem.as_slice();
            let certs = rustls_pemfile::certs(&mut reader)
                .filter(|c| c.is_ok())
                .count();
            if certs == 0 {
                e.push("fleet.ca_file", "holds no PEM CERTIFICATE");
            }
        }
        path
    });
    let name = |e: &mut Errors<'_>, key: &str, value: Option<String>, default: &str| {
        let v = value.unwrap_or_else(|| default.to_owned());
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            e.push(
                format!("fleet.{key}"),
                format!("{v:?} may only use letters, digits, '_' and '-' (at most 64)"),
            );
        }
        v
    };
    let stream = name(e, "stream", f.stream, Fleet::DEFAULT_STREAM);
    let subject = name(e, "subject", f.subject, Fleet::DEFAULT_SUBJECT);
    let verify_keys: Vec<VerifyKey> = f
        .verify_key
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, file)| {
            let path = format!("fleet.verify_key[{i}]");
            let pem = e.file(&path, base, file, MAX_SECRET)?;
            VerifyKey::from_pem(&pem)
                .map_err(|err| e.push(path, err))
                .ok()
        })
        .collect();
    if verify_keys.is_empty() {
        e.push(
            "fleet.verify_key",
            "needs at least one operators' public key (PEM): without it no operation is applied",
        );
    }
    let sign_key = f.sign_key.and_then(|file| {
        let pem = e.file("fleet.sign_key", base, &file, MAX_SECRET)?;
        SignKey::from_pem(&pem)
            .map_err(|err| e.push("fleet.sign_key", err))
            .ok()
    });
    if let Some(key) = &sign_key {
        if !verify_keys.is_empty() && !verify_keys.contains(&key.verify_key()) {
            e.push(
                "fleet.sign_key",
                "its public half is not among fleet.verify_key: every node would refuse what \
                 this one signs",
            );
        }
    }
    let max_skew = e.duration("fleet.max_skew", &f.max_skew, Fleet::DEFAULT_MAX_SKEW);
    if max_skew < Duration::from_secs(1) || max_skew > Duration::from_secs(86_400) {
        e.push("fleet.max_skew", "must be between 1s and 1d");
    }
    // A node must be able to learn every purge it missed for as long as it may serve a copy
    // stale: the stream keeps operations at least that long.
    let floor = cache.stale_if_error.max(Duration::from_secs(3600));
    let retention = e.duration("fleet.retention", &f.retention, floor);
    if retention < floor {
        e.push(
            "fleet.retention",
            format!(
                "must be at least cache.stale_if_error (and 1h): {floor:?}; a node away longer \
                 than the stream keeps operations could serve what was purged meanwhile"
            ),
        );
    }
    let replicas = match f.replicas {
        None => 1,
        Some(n @ (1 | 3 | 5)) => n as usize,
        Some(n) => {
            e.push(
                "fleet.replicas",
                format!(
                    "{n} is not 1, 3 or 5 (JetStream replicates over an odd number of servers)"
                ),
            );
            1
        }
    };
    Fleet {
        servers,
        auth,
        ca_file,
        stream,
        subject,
        verify_keys,
        sign_key,
        max_skew,
        retention,
        replicas,
    }
}
