//! Origins by DNS name: resolved at load, then again in the background when the record's TTL
//! runs out (bounded by `dns.min_ttl` and `dns.max_ttl`).
//!
//! Every address a name resolves to is an origin (see `Pool::new`). The addresses are kept per
//! name in one table that outlives snapshots. A failed resolution keeps the last good addresses
//! and is counted (`onair_dns_failures_total`) and logged: DNS being down must not empty a
//! pool whose origins are fine, and a node must start (and serve what it has) while DNS is
//! down. When a name's addresses change, the caller rebuilds the snapshot with them, the same
//! build-then-swap a reload does; health state is per address, so it stays with the addresses
//! that stay.
//!
//! A resolver is built for each round rather than kept: rounds are seconds apart, a resolver
//! carries sockets tied to the runtime it first ran on (the first round runs before Pingora's
//! runtimes exist), and its own answer cache would only hide a changed record from us.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use crate::config;
use crate::metrics::METRICS;

/// Addresses used per name at most: a huge answer must not make a pool (and its metric labels)
/// unbounded.
pub const MAX_ADDRESSES: usize = 16;

/// The current addresses of every name, as snapshots are built from them.
pub type Addresses = HashMap<String, Vec<IpAddr>>;

struct Entry {
    addrs: Vec<IpAddr>,
    /// When to ask again.
    due: Instant,
}

/// The process-wide table of resolved names.
#[derive(Default)]
pub struct Resolved {
    names: Mutex<HashMap<String, Entry>>,
}

/// What one round changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Some name's addresses are not what they were: the snapshot needs rebuilding.
    pub changed: bool,
    /// Names that could not be resolved this round, with why.
    pub failed: Vec<(String, String)>,
}

impl Resolved {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        match self.names.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The addresses of every name known now.
    pub fn addresses(&self) -> Addresses {
        self.lock()
            .iter()
            .map(|(name, e)| (name.clone(), e.addrs.clone()))
            .collect()
    }

    /// When the next name is due, if any name is known.
    pub fn next_due(&self) -> Option<Instant> {
        self.lock().values().map(|e| e.due).min()
    }

    /// Resolves the config's names that are due (all of them with `all`, new ones always) and
    /// forgets names the config no longer has.
    pub async fn refresh(&self, config: &config::Config, all: bool) -> Round {
        let names = config.origin_names();
        let now = Instant::now();
        let wanted: Vec<String> = {
            let mut table = self.lock();
            table.retain(|name, _| names.contains(name));
            names
                .iter()
                .filter(|n| all || table.get(*n).is_none_or(|e| e.due <= now))
                .cloned()
                .collect()
        };
        if wanted.is_empty() {
            return Round::default();
        }
        let settings = &config.dns;
        // All at once: with DNS down, start-up waits one timeout, not one per name.
        let mut lookups = tokio::task::JoinSet::new();
        for name in wanted {
            let settings = settings.clone();
            lookups.spawn(async move {
                let found = resolve(&settings, &name).await;
                (name, found)
            });
        }
        let mut results = Vec::new();
        while let Some(done) = lookups.join_next().await {
            match done {
                Ok(result) => results.push(result),
                Err(e) => tracing::error!("origin name lookup task failed: {e}"),
            }
        }
        let mut round = Round::default();
        let mut table = self.lock();
        for (name, found) in results {
            let now = Instant::now();
            match found {
                Ok((mut addrs, ttl)) => {
                    addrs.sort();
                    addrs.dedup();
                    addrs.truncate(MAX_ADDRESSES);
                    let due = now + ttl.clamp(settings.min_ttl, settings.max_ttl);
                    let entry = table.entry(name.clone()).or_insert(Entry {
                        addrs: Vec::new(),
                        due,
                    });
                    if entry.addrs != addrs {
                        tracing::info!(name, from = ?entry.addrs, to = ?addrs, "origin name resolves to new addresses");
                        entry.addrs = addrs;
                        round.changed = true;
                    }
                    entry.due = due;
                }
                Err(why) => {
                    METRICS.dns_failure();
                    let entry = table.entry(name.clone()).or_insert(Entry {
                        addrs: Vec::new(),
                        due: now,
                    });
                    tracing::warn!(name, error = %why, kept = ?entry.addrs, "cannot resolve an origin name; keeping its last addresses");
                    // Asked again soon, not at the old TTL: the pool may have nothing.
                    entry.due = now + settings.min_ttl;
                    round.failed.push((name, why));
                }
            }
        }
        round
    }
}

/// For `onair check`: the config's origin names that do not resolve now, with why.
pub fn check_names(config: &config::Config) -> Vec<(String, String)> {
    if config.origin_names().is_empty() {
        return Vec::new();
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            rt.block_on(Resolved::default().refresh(config, true))
                .failed
        }
        Err(e) => vec![("*".to_owned(), format!("no runtime to resolve with: {e}"))],
    }
}

/// One name's addresses and how long they hold, from the configured servers (or the system's).
pub async fn resolve(
    settings: &config::Dns,
    name: &str,
) -> Result<(Vec<IpAddr>, Duration), String> {
    // Fully qualified: no search-domain guesses, one query.
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    // IPv4 addresses when the name has any; IPv6 only for a name that has no A record at all.
    // Not on any failure of the A query (hickory's Ipv4thenIpv6): one lost A answer must not
    // swap a pool to IPv6 addresses an edge may have no route to. Every address becomes an
    // origin, so mixing both families would also fail over through each unreachable one.
    // hickory has its own per-query timeout; this bounds the whole lookup (every server, the
    // retries, the second family).
    let lookup = async {
        match resolver(settings, LookupIpStrategy::Ipv4Only)?
            .lookup_ip(fqdn.as_str())
            .await
        {
            Err(e) if e.is_no_records_found() => resolver(settings, LookupIpStrategy::Ipv6Only)?
                .lookup_ip(fqdn.as_str())
                .await
                .map_err(|e| e.to_string()),
            other => other.map_err(|e| e.to_string()),
        }
    };
    let lookup = tokio::time::timeout(settings.timeout, lookup)
        .await
        .map_err(|_| format!("no answer within {:?}", settings.timeout))??;
    let addrs: Vec<IpAddr> = lookup.iter().collect();
    if addrs.is_empty() {
        return Err("no address in the answer".to_owned());
    }
    let ttl = lookup
        .valid_until()
        .saturating_duration_since(Instant::now());
    Ok((addrs, ttl))
}

fn resolver(settings: &config::Dns, family: LookupIpStrategy) -> Result<TokioResolver, String> {
    let mut builder = if settings.servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system DNS settings: {e}"))?
    } else {
        let servers = settings
            .servers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    // Half the whole lookup's bound per query: an A query that finds no record still leaves
    // time for the AAAA one, within `dns.timeout`.
    options.timeout = (settings.timeout / 2).max(Duration::from_millis(100));
    options.attempts = 1;
    options.ip_strategy = family;
    // Nothing to gain from its cache (see the module note): each resolver lives for one lookup.
    options.cache_size = 8;
    builder.build().map_err(|e| format!("resolver: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(servers: Vec<std::net::SocketAddr>) -> config::Dns {
        config::Dns {
            servers,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
            timeout: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_is_an_error_in_bounded_time() {
        // A UDP socket that reads nothing: queries go unanswered.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let started = Instant::now();
        let r = resolve(
            &settings(vec![silent.local_addr().unwrap()]),
            "origin.example",
        )
        .await;
        assert!(r.is_err(), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
