//! The runtime snapshot built from a config, and the live handle that swaps it on reload.
//!
//! A [`Snapshot`] is immutable: routing tables, pools with their origins, the maintenance
//! pages. Each request loads the current snapshot once (in `new_ctx`) and finishes on it, so a
//! reload never changes the rules under a request in flight. Reload = load and validate the
//! file, build a whole new snapshot, then swap it in with one atomic store; a bad file changes
//! nothing.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::watch;

use crate::config::{Config, ConfigErrors, Overrides};
use crate::metrics::{SiteSeries, METRICS};
use crate::origin::dns::{Addresses, Resolved};
use crate::origin::health::HealthRegistry;
use crate::origin::Pool;
use crate::router::{self, HostTable, SiteRoutes};

/// A site as the proxy uses it.
#[derive(Debug)]
pub struct SiteRuntime {
    pub name: String,
    pub routes: SiteRoutes,
    /// The page served with 503 when nothing can answer.
    pub maintenance_page: Bytes,
    pub metrics: SiteSeries,
}

/// Everything a request needs from the config, built once per reload.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub config: Config,
    /// `1.1 <node id>`, the value this node adds to `Via`.
    pub via: String,
    pub hosts: HostTable,
    pub sites: Vec<SiteRuntime>,
    pub pools: Vec<Arc<Pool>>,
    /// The certificates the HTTPS listeners serve (see `tls::store`).
    pub certs: Vec<crate::tls::store::Served>,
    /// Signs and checks attack-mode challenges and clearance cookies.
    pub signer: crate::protect::challenge::Signer,
    /// Series for requests that matched no site.
    pub unrouted: SiteSeries,
}

impl Snapshot {
    /// What a purge request selects, its URLs matched the way their route keys them
    /// (`query = "sort" | "drop"`): the admin API's and the fleet's purges alike.
    pub fn purge_selector(
        &self,
        request: &crate::cache::purge::PurgeRequest,
    ) -> Result<crate::cache::purge::Selector, String> {
        let shape = |host: &str, path_and_query: &str| -> String {
            let path = path_and_query.split('?').next().unwrap_or("/");
            let mode = self
                .hosts
                .site_for(host)
                .and_then(|i| self.sites.get(i))
                .map_or(crate::config::QueryKey::Keep, |s| {
                    s.routes.route_for(path).query
                });
            crate::cache::key::keyed_target(path_and_query, mode).into_owned()
        };
        request.selector_shaped(&shape)
    }

    /// Builds a snapshot; the config is already validated, so every name resolves.
    /// Origins given by DNS name take the addresses in `resolved`.
    pub fn build(
        config: Config,
        version: u64,
        registry: &HealthRegistry,
        resolved: &Addresses,
    ) -> Snapshot {
        let mut built: Vec<Pool> = config
            .pools
            .iter()
            .map(|p| Pool::new(p, registry, config.admin.origin_addresses, resolved))
            .collect();
        let fallbacks: Vec<Option<usize>> = built
            .iter()
            .map(|p| {
                let name = p.config.fallback.as_deref()?;
                built.iter().position(|q| q.name() == name)
            })
            .collect();
        for (pool, fallback) in built.iter_mut().zip(fallbacks) {
            pool.fallback = fallback;
        }
        let pools: Vec<Arc<Pool>> = built.into_iter().map(Arc::new).collect();
        let index = |name: &str| pools.iter().position(|p| p.name() == name).unwrap_or(0);
        let sites = config
            .sites
            .iter()
            .map(|s| SiteRuntime {
                name: s.name.clone(),
                metrics: METRICS.site_series(&s.name),
                routes: router::site_routes(s, &index),
                maintenance_page: s.maintenance_page.clone().unwrap_or_else(|| {
                    Bytes::from_static(crate::proxy::respond::BUILTIN_MAINTENANCE)
                }),
            })
            .collect();
        Snapshot {
            version,
            via: format!("1.1 {}", config.node.id),
            hosts: HostTable::new(&config.sites),
            sites,
            pools,
            signer: crate::protect::challenge::Signer::new(config.protect.attack.key.as_ref()),
            certs: {
                let certs = crate::tls::store::build(&config.tls.certs);
                crate::tls::store::warn_expiring(&certs, std::time::SystemTime::now());
                METRICS.tls_certs(certs.iter().map(|c| {
                    let name = c.names.first().unwrap_or(&c.label);
                    (name.as_str(), c.not_after)
                }));
                certs
            },
            unrouted: METRICS.site_series("-"),
            config,
        }
    }
}

/// The live snapshot plus what is needed to rebuild it.
pub struct Live {
    current: ArcSwap<Snapshot>,
    source: Option<PathBuf>,
    overrides: Overrides,
    registry: HealthRegistry,
    /// The addresses of origins given by DNS name (see `origin::dns`).
    resolved: Resolved,
    /// Attack mode, which outlives snapshots (an admin override, the measured rate).
    attack: crate::protect::attack::AttackState,
    /// Serializes reloads so two concurrent ones cannot interleave build and swap.
    reload_lock: tokio::sync::Mutex<()>,
    changed: watch::Sender<u64>,
}

impl Live {
    /// Wraps an already validated config as version 1. `source` is the file reloads re-read.
    /// `resolved` holds the origin names resolved so far (see [`Live::resolve_first`]).
    pub fn new(
        config: Config,
        source: Option<PathBuf>,
        overrides: Overrides,
        resolved: Resolved,
    ) -> Arc<Live> {
        let registry = HealthRegistry::default();
        let snapshot = Snapshot::build(config, 1, &registry, &resolved.addresses());
        publish_origin_gauges(None, &snapshot);
        METRICS.initial_config(1);
        let (changed, _) = watch::channel(1);
        let attack = crate::protect::attack::AttackState::default();
        attack.tick(
            &snapshot.config.protect.attack,
            std::time::Instant::now(),
            false,
        );
        Arc::new(Live {
            attack,
            current: ArcSwap::from_pointee(snapshot),
            source,
            overrides,
            registry,
            resolved,
            reload_lock: tokio::sync::Mutex::new(()),
            changed,
        })
    }

    /// The node's attack-mode state.
    pub fn attack(&self) -> &crate::protect::attack::AttackState {
        &self.attack
    }

    /// The snapshot in use now.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A receiver told about every new snapshot version.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Re-reads the config file and swaps in a new snapshot. On any error nothing changes; the
    /// error is logged and counted, and returned for the admin API to show.
    pub async fn reload(&self) -> Result<u64, ConfigErrors> {
        let _guard = self.reload_lock.lock().await;
        let old = self.current();
        let result = match &self.source {
            None => Err(ConfigErrors(vec![crate::config::ConfigError {
                path: String::new(),
                message: "this node was started without a config file".to_owned(),
            }])),
            Some(path) => Config::load(path, &self.overrides),
        };
        match result {
            Ok(config) => {
                // Names the new config adds are resolved before it goes live (the others keep
                // their addresses and their schedule).
                self.resolved.refresh(&config, false).await;
                warn_restart_only_changes(&old.config, &config);
                let version = self.swap(&old, config);
                METRICS.reload(true, version);
                tracing::info!(version, "config reloaded");
                Ok(version)
            }
            Err(errors) => {
                METRICS.reload(false, old.version);
                tracing::error!(errors = %errors, "config reload failed; keeping version {}", old.version);
                Err(errors)
            }
        }
    }
}

impl Live {
    /// Resolves every origin name of a config before the first snapshot: run once, before the
    /// node serves. Names that do not resolve now are logged and retried in the background;
    /// the node starts anyway.
    pub fn resolve_first(config: &Config) -> Resolved {
        let resolved = Resolved::default();
        if config.origin_names().is_empty() {
            return resolved;
        }
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => {
                rt.block_on(resolved.refresh(config, true));
            }
            Err(e) => tracing::error!("cannot resolve origin names at start: {e}"),
        }
        resolved
    }

    /// Re-resolves the origin names that are due; when an address changed, rebuilds the
    /// snapshot with the same config (a reload in all but the file). Returns when the next
    /// name is due.
    pub async fn refresh_names(&self) -> Option<std::time::Instant> {
        let _guard = self.reload_lock.lock().await;
        let old = self.current();
        let round = self.resolved.refresh(&old.config, false).await;
        if round.changed {
            let version = self.swap(&old, old.config.clone());
            tracing::info!(version, "origin addresses changed: pools rebuilt");
        }
        self.resolved.next_due()
    }

    /// Builds a snapshot of `config` with the current addresses and swaps it in, as the next
    /// version after `old`; the caller holds the reload lock.
    fn swap(&self, old: &Snapshot, config: Config) -> u64 {
        let version = old.version + 1;
        let snapshot = Snapshot::build(config, version, &self.registry, &self.resolved.addresses());
        let keep: Vec<_> = snapshot
            .pools
            .iter()
            .flat_map(|p| p.origins.iter().map(|o| (p.name().to_owned(), o.addr)))
            .collect();
        self.registry.retain(&keep);
        publish_origin_gauges(Some(old), &snapshot);
        self.current.store(Arc::new(snapshot));
        self.changed.send_replace(version);
        version
    }
}

/// Sets `onair_origin_up` for the new snapshot's origins and removes the ones that left.
fn publish_origin_gauges(old: Option<&Snapshot>, new: &Snapshot) {
    for pool in &new.pools {
        METRICS.init_pool(pool.name());
        for o in &pool.origins {
            METRICS.set_origin_up(pool.name(), &o.label, o.health.is_up());
        }
    }
    let Some(old) = old else { return };
    for pool in &old.pools {
        for o in &pool.origins {
            // By label, as the series are named: an origin whose address changed under the
            // same name keeps its series (the new one's handles are the same label set).
            let still = new
                .pools
                .iter()
                .any(|p| p.name() == pool.name() && p.origins.iter().any(|n| n.label == o.label));
            if !still {
                METRICS.forget_origin(pool.name(), &o.label);
            }
        }
    }
}

/// Some settings are bound at startup (listeners, threads, state dir, log destination). A
/// reload that changes them still applies everything else; say clearly what did not apply.
fn warn_restart_only_changes(old: &Config, new: &Config) {
    let mut ignored = Vec::new();
    if old.listen.http != new.listen.http
        || old.listen.https != new.listen.https
        || old.listen.proxy_protocol != new.listen.proxy_protocol
        || old.listen.metrics != new.listen.metrics
        || old.listen.admin != new.listen.admin
    {
        ignored.push("listen");
    }
    if old.node.threads != new.node.threads {
        ignored.push("node.threads");
    }
    if old.node.state_dir != new.node.state_dir {
        ignored.push("node.state_dir");
    }
    if old.node.grace_period != new.node.grace_period {
        ignored.push("node.grace_period");
    }
    if old.log.access != new.log.access || old.log.level != new.log.level {
        ignored.push("log");
    }
    if old.protect.keepalive_requests != new.protect.keepalive_requests {
        ignored.push("protect.keepalive_requests");
    }
    if !ignored.is_empty() {
        tracing::warn!(
            keys = ?ignored,
            "these settings take effect only after a restart or graceful upgrade (onair run -u)"
        );
    }
}
