//! Process lifecycle: turn a validated config into a running Pingora server with the edge
//! proxy, admin API, metrics listener, health checks and the SIGHUP reloader.
//!
//! Pingora owns the listeners and signals it knows: SIGTERM drains for `node.grace_period`
//! (its own default of 300 s never applies), SIGQUIT hands the listeners to a process started
//! with `-u`, SIGINT stops at once. SIGHUP is ours: reload the config file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, SignalKind};

use crate::access_log;
use crate::admin::AdminApp;
use crate::cache::EdgeCache;
use crate::config::{Config, ConfigErrors, Overrides};
use crate::origin::health::HealthChecker;
use crate::proxy::Edge;
use crate::snapshot::Live;

/// How often the served certificate files are checked for changes.
const CERT_WATCH: std::time::Duration = std::time::Duration::from_secs(2);

/// What identifies the served certificate and key files' contents: path, size, mtime.
fn cert_files(
    live: &Live,
) -> std::collections::BTreeSet<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let snapshot = live.current();
    snapshot
        .config
        .tls
        .certs
        .iter()
        .flat_map(|c| [c.cert.clone(), c.key_path.clone()])
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect()
}

/// Seconds the runtimes get to stop after the grace period; the drain itself is the grace
/// period, this only bounds the final teardown.
const TEARDOWN_SECONDS: u64 = 2;

/// Why `run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Io(String),
}

/// Options of `onair run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub config: PathBuf,
    pub overrides: Overrides,
    /// Take the listeners over from a running onair (graceful upgrade).
    pub upgrade: bool,
}

/// Loads the config and serves until a signal stops the process. Returns only on a start-up
/// error; once serving, the process exits through Pingora's signal handling.
pub fn run(opts: RunOptions) -> Result<(), StartError> {
    let config = Config::load(&opts.config, &opts.overrides)?;
    // Absolute, but symlinks left alone: a reload must follow a symlink that now points at a
    // new file (a Kubernetes ConfigMap, a release directory switch).
    let config_path = std::path::absolute(&opts.config).unwrap_or(opts.config.clone());
    serve(config, Some(config_path), opts.overrides, opts.upgrade)
}

/// Serves a validated config. `source` is the file SIGHUP and `POST /reload` re-read.
pub fn serve(
    config: Config,
    source: Option<PathBuf>,
    overrides: Overrides,
    upgrade: bool,
) -> Result<(), StartError> {
    crate::logging::init(&config.log.level);
    ignore_sighup_until_ready();
    let _access_guard = access_log::init(&config.log.access)
        .map_err(|e| StartError::Io(format!("log.access: cannot open: {e}")))?;
    let state_dir = config.node.state_dir.clone();
    std::fs::create_dir_all(&state_dir).map_err(|e| {
        StartError::Io(format!(
            "node.state_dir: cannot create {}: {e}",
            state_dir.display()
        ))
    })?;

    if !upgrade {
        listeners_free(&config.listen)?;
    }
    let server_conf = server_conf(&config, &state_dir);
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();

    let resolved = Live::resolve_first(&config);
    let live = Live::new(config.clone(), source, overrides, resolved);

    let edge_cache = EdgeCache::new(&config.cache)
        .map_err(|e| StartError::Io(format!("cache.disk_path: cannot open the disk cache: {e}")))?;
    // Before the first request: a release's embargo holds across a restart. Releases lost
    // with an unreadable file come back from the fleet: its operations are read again.
    if edge_cache.releases.open(&state_dir) && config.fleet.is_some() {
        crate::fleet::state::read_again(&state_dir);
    }
    if config.fleet.is_some() {
        // What the disk kept may have been purged by the fleet while this node was away. Also
        // on an upgrade: the old process may itself have been cut off from the bus, and until
        // this one has read on from the stored position it cannot know (on a healthy bus that
        // takes well under a second).
        edge_cache.catch_up.close(std::time::SystemTime::now());
    }
    // The admin API publishes fleet-scoped calls through the fleet service's connection.
    let fleet_link = Arc::new(crate::fleet::link::Link::default());
    let limiter = Arc::new(crate::protect::rate::RateLimiter::default());
    server.add_service(background_service(
        "onair cache maintenance",
        CacheMaintenance {
            cache: edge_cache,
            limiter: limiter.clone(),
            live: live.clone(),
        },
    ));
    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        Edge::new(live.clone(), edge_cache, limiter.clone()),
    );
    // Requests per client connection (fixed at start: Pingora reads it when a connection opens).
    let mut options = pingora::apps::HttpServerOptions::default();
    // Pingora counts reuses after the first request.
    options.keepalive_request_limit = Some(config.protect.keepalive_requests.saturating_sub(1));
    // An HTTP/2 connection with no stream open is closed after the keep-alive time, as an idle
    // HTTP/1 one is (Pingora's default keeps it forever).
    options.h2_idle_timeout = Some(config.protect.keepalive_timeout);
    app.server_options = Some(options);
    // HTTP/2 limits: Pingora's defaults (100 concurrent streams, 64 KiB of headers, 32 bad
    // streams per connection), with the header list capped at protect.max_header like HTTP/1.
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(u32::try_from(config.protect.max_header).unwrap_or(u32::MAX));
    app.h2_options = Some(h2);
    let tls = if config.listen.https.is_empty() {
        None
    } else {
        Some(
            crate::tls::store::server_config(live.clone())
                .map_err(|e| StartError::Io(format!("listen.https: {e}")))?,
        )
    };
    // The gate sees each client connection from accept to close (connection caps, the
    // whole-head deadline, the upload rate), then hands it to the proxy.
    let mut proxy = Service::new(
        "onair edge".to_owned(),
        crate::protect::conn::Gate::new(
            app,
            live.clone(),
            crate::protect::conn::GateListeners {
                proxied: config.listen.proxy_protocol.clone(),
                https: config.listen.https.clone(),
                tls,
            },
            limiter.clone(),
        ),
    );
    for addr in config
        .listen
        .http
        .iter()
        .chain(&config.listen.proxy_protocol)
    {
        proxy.add_tcp(&addr.to_string());
    }
    // HTTPS listeners accept TCP; the gate does the TLS handshake (tls::store::server_config:
    // the certificate per handshake from the live snapshot, so reloads apply).
    for addr in &config.listen.https {
        proxy.add_tcp(&addr.to_string());
    }
    // protect.deny at accept (the `connection_filter` feature makes this real; without it the
    // call would silently do nothing).
    proxy.set_connection_filter(Arc::new(crate::protect::acl::AcceptFilter::new(
        live.clone(),
        limiter.clone(),
    )));
    server.add_service(proxy);

    if let Some(addr) = config.listen.admin {
        let mut admin = Service::new(
            "onair admin".to_owned(),
            crate::admin::Capped::new(
                AdminApp::new(live.clone(), edge_cache, fleet_link.clone()),
                crate::admin::MAX_CONNECTIONS,
            ),
        );
        admin.add_tcp(&addr.to_string());
        admin.threads = Some(1);
        server.add_service(admin);
    }
    if let Some(addr) = config.listen.metrics {
        let mut metrics = pingora_prometheus::prometheus_http_service();
        metrics.add_tcp(&addr.to_string());
        metrics.threads = Some(1);
        server.add_service(metrics);
    }
    server.add_service(background_service(
        "onair health checks",
        HealthChecker::new(live.clone()),
    ));
    server.add_service(background_service(
        "onair reloader",
        Reloader { live: live.clone() },
    ));
    server.add_service(background_service(
        "onair origin names",
        NameRefresher { live: live.clone() },
    ));
    // The fleet bus: never on the request path; idle without [fleet].
    server.add_service(background_service(
        "onair fleet",
        crate::fleet::service::FleetService {
            live: live.clone(),
            cache: edge_cache,
            link: fleet_link.clone(),
        },
    ));
    // Scheduled releases: the purges at each release's time.
    server.add_service(background_service(
        "onair releases",
        crate::release::service::ReleaseService {
            live: live.clone(),
            cache: edge_cache,
        },
    ));

    let pid_file = state_dir.join("onair.pid");
    write_pid_file(&pid_file);
    tracing::info!(
        node = %config.node.id,
        region = %config.node.region,
        listeners = ?config.listen.http,
        "onair {} serving",
        env!("CARGO_PKG_VERSION")
    );
    server.run(pingora::server::RunArgs::default());
    remove_pid_file(&pid_file);
    Ok(())
}

/// Pingora's server settings derived from ours.
fn server_conf(config: &Config, state_dir: &Path) -> ServerConf {
    let mut conf = ServerConf::new().unwrap_or_default();
    conf.threads = config.node.threads;
    // One single-threaded runtime per worker thread instead of one work-stealing pool: a
    // request's tasks stay on the thread that accepted it, which saves cross-thread wake-ups
    // and atomics on every I/O event (measured in docs/benchmarks.md).
    conf.work_stealing = false;
    // Pingora counts whole seconds: round up, so "500ms" still drains instead of cutting.
    conf.grace_period_seconds = Some(config.node.grace_period.as_millis().div_ceil(1000) as u64);
    conf.graceful_shutdown_timeout_seconds = Some(TEARDOWN_SECONDS);
    conf.pid_file = state_dir.join("onair.pid").to_string_lossy().into_owned();
    conf.upgrade_sock = state_dir
        .join("upgrade.sock")
        .to_string_lossy()
        .into_owned();
    conf
}

/// SIGHUP's default action kills the process. The reloader installs its handler only once the
/// runtimes run; registering it now (tokio keeps the handler for the life of the process) means
/// an early SIGHUP is lost rather than fatal.
fn ignore_sighup_until_ready() {
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        rt.block_on(async {
            if let Err(e) = signal(SignalKind::hangup()) {
                tracing::warn!("cannot install the SIGHUP handler: {e}");
            }
        });
    }
}

fn write_pid_file(path: &Path) {
    if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
        tracing::warn!("cannot write pid file {}: {e}", path.display());
    }
}

/// Fails unless every listener's address can be bound. Pingora binds in each service's own
/// thread and, when an address stays in use, that thread panics while the process runs on
/// without the listener: a node that looks started and answers nothing there. Checked before
/// anything starts, so `onair run` exits with the address instead. (Listeners of one config
/// that overlap are a config error.) An address in use is tried again for up to 30 s, as
/// Pingora would, for a process that is still on its way out, with a line every few seconds.
/// (Not on a graceful upgrade: the old process holds the addresses and hands them over.)
fn listeners_free(listen: &crate::config::Listen) -> Result<(), StartError> {
    // As long as Pingora itself would try (30 times, a second apart).
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);
    let named = [
        ("listen.http", &listen.http),
        ("listen.https", &listen.https),
        ("listen.proxy_protocol", &listen.proxy_protocol),
    ];
    let single = [
        ("listen.admin", listen.admin),
        ("listen.metrics", listen.metrics),
    ];
    let all = named
        .iter()
        .flat_map(|(key, addrs)| addrs.iter().map(move |a| (*key, *a)))
        .chain(single.iter().filter_map(|(key, a)| a.map(|a| (*key, a))));
    let started = std::time::Instant::now();
    let mut held = Vec::new();
    let mut waited = 0u32;
    for (key, addr) in all {
        let bound = loop {
            match std::net::TcpListener::bind(addr) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && started.elapsed() < PATIENCE =>
                {
                    if waited.is_multiple_of(25) {
                        eprintln!("onair: {key}: {addr} is in use; waiting for it (up to 30 s)");
                    }
                    waited += 1;
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                other => break other,
            }
        };
        match bound {
            Ok(listener) => held.push(listener),
            Err(e) => {
                let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                    "in use by another process".to_owned()
                } else {
                    e.to_string()
                };
                return Err(StartError::Io(format!(
                    "{key}: cannot listen on {addr}: {why}"
                )));
            }
        }
    }
    // Pingora binds them for real next.
    drop(held);
    Ok(())
}

/// Removes the pid file unless a newer process (graceful upgrade) has taken it over.
fn remove_pid_file(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .map(|s| s.trim() == std::process::id().to_string())
        .unwrap_or(false);
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// Once a second: cache tier upkeep and gauges, the rate limiter's sweep of clients that are
/// back to a clean slate, and attack mode's measurement of the request rate.
struct CacheMaintenance {
    cache: EdgeCache,
    limiter: Arc<crate::protect::rate::RateLimiter>,
    live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for CacheMaintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    self.limiter.sweep(std::time::Instant::now());
                    crate::metrics::METRICS.in_progress(crate::protect::shed::in_progress());
                    let snapshot = self.live.current();
                    let saturated = snapshot.pools.iter().any(|p| p.limiter.queued() > 0);
                    self.live.attack().tick(
                        &snapshot.config.protect.attack,
                        std::time::Instant::now(),
                        saturated,
                    );
                    let memory = self.cache.memory;
                    memory.maintain();
                    crate::metrics::METRICS.cache_tier("memory", memory.size(), memory.objects());
                    if let Some(disk) = &self.cache.store.disk {
                        let (objects, bytes) = disk.usage();
                        crate::metrics::METRICS.cache_tier("disk", bytes, objects);
                        let (index, temp) = disk.overheads();
                        crate::metrics::METRICS.cache_overheads("disk", index, temp);
                        crate::metrics::METRICS.cache_admissions(
                            "disk",
                            disk.admissions_paused(std::time::Instant::now()),
                        );
                    }
                }
            }
        }
    }
}

/// Re-resolves origin names by their TTL (see `origin::dns`).
struct NameRefresher {
    live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for NameRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // With no names configured this wakes now and then in case a reload added some.
        const IDLE: std::time::Duration = std::time::Duration::from_secs(1);
        loop {
            let next = self.live.refresh_names().await;
            let wait = next.map_or(IDLE, |due| {
                due.saturating_duration_since(std::time::Instant::now())
                    .clamp(std::time::Duration::from_millis(50), IDLE)
            });
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Reloads the config on SIGHUP.
struct Reloader {
    live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("SIGHUP reload is unavailable: {e}");
                return;
            }
        };
        let mut watch = tokio::time::interval(CERT_WATCH);
        // Certificates nearing their end are also logged twice a day, not only at reloads.
        let twice_a_day = std::time::Duration::from_secs(12 * 3600);
        let mut expiry =
            tokio::time::interval_at(tokio::time::Instant::now() + twice_a_day, twice_a_day);
        let mut seen = cert_files(&self.live);
        let mut pending = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the config");
                    // Errors are logged and counted inside reload; nothing changes on failure.
                    // The files as they were before the reload read them: a write that lands
                    // during it is still a change.
                    seen = cert_files(&self.live);
                    let _ = self.live.reload().await;
                }
                _ = expiry.tick() => {
                    crate::tls::store::warn_expiring(
                        &self.live.current().certs,
                        std::time::SystemTime::now(),
                    );
                }
                _ = watch.tick() => {
                    // Renewed certificates (certbot, cert-manager) take effect without a
                    // signal: a change to any served file reloads the config. A broken file
                    // fails that reload once; the next change tries again.
                    // A change is acted on once the files have stayed the same for a whole
                    // tick, so a key and certificate written one after the other (or a file
                    // still being written) are read together.
                    let now = cert_files(&self.live);
                    if now == seen {
                        pending = None;
                    } else if pending.as_ref() == Some(&now) {
                        tracing::info!("a TLS certificate file changed: reloading the config");
                        let _ = self.live.reload().await;
                        seen = now;
                        pending = None;
                    } else {
                        pending = Some(now);
                    }
                }
            }
        }
    }
}
