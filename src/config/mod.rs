//! Configuration: the TOML file (`schema`), its units (`units`) and the validated [`Config`].
//!
//! Loading is two passes. Serde reads the file into [`schema::RawConfig`] while `serde_ignored`
//! records every unknown key; then [`validate`] turns the raw values into typed ones and collects
//! every problem it finds. An operator running `onair check` sees all errors at once, each with
//! the key path it belongs to (`pool[1].origin[0].addr: ...`).
//!
//! Files the config points at (admin token, maintenance pages) are read here too, so that a
//! missing file is a config error and a reload picks up their new contents.

mod fleet;
pub mod schema;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// One problem in a config file, with the key path it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path such as `pool[1].origin[0].addr`; empty for whole-file problems.
    pub path: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn single(path: &str, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            path: path.to_owned(),
            message: message.into(),
        }])
    }
}

/// A validated configuration: plain data, every value typed and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: Node,
    pub listen: Listen,
    pub admin: Admin,
    pub log: Log,
    pub cache: Cache,
    pub protect: Protect,
    pub tls: Tls,
    pub sites: Vec<Site>,
    pub pools: Vec<Pool>,
    pub dns: Dns,
    /// The fleet control plane; None: the node runs alone.
    pub fleet: Option<Fleet>,
    pub release: Release,
}

/// `[release]`: how scheduled releases are prewarmed (see `crate::release`).
#[derive(Clone, PartialEq, Eq)]
pub struct Release {
    /// How long before a release's time its `warm` list is fetched.
    pub warm_lead: Duration,
    /// Warm fetches at once, per release.
    pub warm_concurrency: usize,
    /// Sent with warm fetches (`Onair-Warm`) so that the origin lets them through its own
    /// embargo, and accepted from this node's tiers (`protect.tiers`) for theirs.
    pub warm_secret: Option<String>,
}

impl Release {
    pub const DEFAULT_WARM_LEAD: Duration = Duration::from_secs(600);
    pub const DEFAULT_WARM_CONCURRENCY: usize = 8;
}

impl Default for Release {
    fn default() -> Self {
        Release {
            warm_lead: Release::DEFAULT_WARM_LEAD,
            warm_concurrency: Release::DEFAULT_WARM_CONCURRENCY,
            warm_secret: None,
        }
    }
}

impl fmt::Debug for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Release")
            .field("warm_lead", &self.warm_lead)
            .field("warm_concurrency", &self.warm_concurrency)
            .field(
                "warm_secret",
                &self.warm_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `[fleet]`: the NATS JetStream bus fleet operations come on, and the operators' keys (see
/// `crate::fleet`).
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    /// NATS URLs (`nats://host:port`, `tls://host:port`).
    pub servers: Vec<String>,
    /// The bus credentials: a token, or a `.creds` file's contents (a JWT and an NKey seed).
    pub auth: FleetAuth,
    /// CA certificates (PEM) to verify the NATS servers' TLS with; None: the system roots.
    pub ca_file: Option<PathBuf>,
    /// The JetStream stream, and the prefix of the subjects operations are published on.
    pub stream: String,
    pub subject: String,
    /// The operators' public keys: an operation signed by none of them is refused.
    pub verify_keys: Vec<crate::fleet::keys::VerifyKey>,
    /// Lets this node's admin API sign fleet-scoped operations for its operators.
    pub sign_key: Option<crate::fleet::keys::SignKey>,
    /// How far an operation's issue time may be from when the bus stored it.
    pub max_skew: Duration,
    /// How long the stream keeps operations: at least the longest stale window, so a node
    /// that comes back can always learn what it missed while it could still serve.
    pub retention: Duration,
    /// Copies JetStream keeps of the stream (1, 3 or 5): 3 on a 3-server cluster, so that one
    /// server down loses nothing and delays nothing.
    pub replicas: usize,
}

impl Fleet {
    /// Defaults of `fleet.stream`, `fleet.subject` and `fleet.max_skew` (also the `onair
    /// fleet` CLI's without a config).
    pub const DEFAULT_STREAM: &'static str = "ONAIR";
    pub const DEFAULT_SUBJECT: &'static str = "onair";
    pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(300);

    /// The bus settings of a publisher that has no node's config (`onair fleet --servers`):
    /// the defaults, no credentials, no keys.
    pub fn publisher(servers: Vec<String>) -> Fleet {
        Fleet {
            servers,
            auth: FleetAuth::None,
            ca_file: None,
            stream: Fleet::DEFAULT_STREAM.to_owned(),
            subject: Fleet::DEFAULT_SUBJECT.to_owned(),
            verify_keys: Vec::new(),
            sign_key: None,
            max_skew: Fleet::DEFAULT_MAX_SKEW,
            // Publishers never create the operation stream (the nodes do, with theirs).
            retention: Duration::from_secs(7 * 86_400),
            replicas: 1,
        }
    }
}

/// How a node proves itself to NATS.
#[derive(Clone, PartialEq, Eq)]
pub enum FleetAuth {
    None,
    Token(String),
    Creds(String),
    /// An NKey user seed (`SU...`): one user per role, each with its own permissions.
    NKey(String),
}

impl fmt::Debug for FleetAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FleetAuth::None => "None",
            FleetAuth::Token(_) => "Token(<redacted>)",
            FleetAuth::Creds(_) => "Creds(<redacted>)",
            FleetAuth::NKey(_) => "NKey(<redacted>)",
        })
    }
}

/// `[dns]`: how origins given by name are resolved (see `origin::dns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Name servers (`IP:port`); empty: the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// Bounds on how long a resolution is used before it is asked again, whatever its TTL:
    /// a TTL of 0 must not mean a query per request, a TTL of a week must not pin a moved
    /// origin for a week.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// One resolution's deadline.
    pub timeout: Duration,
}

/// Where an origin is: an address, or a DNS name and port (re-resolved by its TTL; every
/// address it resolves to is an origin).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OriginAddr {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl std::fmt::Display for OriginAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OriginAddr::Ip(a) => write!(f, "{a}"),
            OriginAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl Config {
    /// The DNS names origins are given by, each once.
    pub fn origin_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .pools
            .iter()
            .flat_map(|p| &p.origins)
            .filter_map(|o| match &o.addr {
                OriginAddr::Name { host, .. } => Some(host.clone()),
                OriginAddr::Ip(_) => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// `[tls]`: the HTTPS side of the edge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tls {
    /// Plain-HTTP requests for hosts a certificate covers get 301/308 to https.
    pub redirect_http: bool,
    /// The `Strict-Transport-Security` value for HTTPS answers; None: not sent.
    pub hsts: Option<String>,
    /// In order: the first is served to clients without SNI.
    pub certs: Vec<TlsCert>,
}

/// One `[[tls.cert]]`, loaded and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsCert {
    pub cert: PathBuf,
    pub key_path: PathBuf,
    /// DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    pub key: crate::tls::SecretKey,
    /// subjectAltName DNS names, lowercase.
    pub names: Vec<String>,
    /// UNIX seconds.
    pub not_after: i64,
}

/// `[protect]`
#[derive(Debug, Clone, PartialEq)]
pub struct Protect {
    /// Peers whose `X-Forwarded-For` is believed (load balancers in front of onair).
    pub trusted_proxies: Vec<crate::cidr::Cidr>,
    /// Peers that are other cache tiers (a shield lists its edges): their requests may ask for
    /// a copy revalidated with the origin, are not challenged in attack mode, and their
    /// `X-Forwarded-For` is believed like a trusted proxy's.
    pub tiers: Vec<crate::cidr::Cidr>,
    /// Refused ranges, and exceptions to them (see `protect::acl`).
    pub deny: Vec<crate::cidr::Cidr>,
    pub allow: Vec<crate::cidr::Cidr>,
    /// Node-wide per-client limit; None: no limit.
    pub rate: Option<RateLimit>,
    /// Node-wide limit per address block (IPv4 /24, IPv6 /48), beside the per-client one:
    /// many addresses of one block are still one sender. None: no limit.
    pub block_rate: Option<RateLimit>,
    /// Request limits (see `protect::hygiene`): the whole head in bytes, its field count, the
    /// URI, and the body.
    pub max_header: u64,
    pub max_headers: usize,
    pub max_uri: u64,
    pub max_body: u64,
    /// How long an idle keep-alive connection stays open, and how many requests one carries.
    pub keepalive_timeout: Duration,
    pub keepalive_requests: u32,
    /// Open connections per client address (IPv6 per /64); 0: no cap (see `protect::conn`).
    pub max_connections_per_ip: u32,
    /// The whole request head must arrive within this.
    pub header_timeout: Duration,
    /// A request body may fall this far behind `min_upload_rate` (bytes/s; 0: no minimum).
    pub body_timeout: Duration,
    pub min_upload_rate: u64,
    /// Requests in progress on the node above which misses are shed; 0: never.
    pub shed_at: usize,
    /// A client that takes none of an answer's bytes for this long is cut (slow reads).
    pub send_timeout: Duration,
    /// How long a 429 is held back (0: answered at once).
    pub tarpit: Duration,
    /// SO_SNDBUF of client sockets in bytes (the kernel doubles it); 0: kernel autotuning.
    pub send_buffer: usize,
    pub attack: Attack,
}

/// `[protect.attack]` (see `protect::attack` and `protect::challenge`).
#[derive(Debug, Clone, PartialEq)]
pub struct Attack {
    pub mode: AttackMode,
    /// `auto`: the node-wide request rate that turns attack mode on.
    pub trigger_rps: u64,
    /// `auto`: how long the rate must stay below the trigger before attack mode turns off.
    pub cooldown: Duration,
    /// `pow`: uncleared clients get the proof-of-work page; off: their misses get 503.
    pub challenge: bool,
    /// Leading zero bits the proof of work needs.
    pub difficulty: u8,
    /// How long a clearance cookie is good for.
    pub clearance: Duration,
    /// The fleet-wide key that signs challenges and cookies; None: a key of this process
    /// (cookies then hold only on this node and until it restarts).
    pub key: Option<AttackKey>,
    /// The no-JavaScript path, on sites that opt in (`site.nojs_challenge`): how long the
    /// reader waits, how long the clearance lasts, and how many times one address block
    /// (IPv4 /24, IPv6 /48) may redeem it per clearance window on this node.
    pub nojs_wait: Duration,
    pub nojs_clearance: Duration,
    pub nojs_per_block: u32,
}

impl Default for Attack {
    fn default() -> Self {
        Attack {
            mode: AttackMode::Off,
            trigger_rps: 5000,
            cooldown: Duration::from_secs(300),
            challenge: true,
            difficulty: 16,
            clearance: Duration::from_secs(3600),
            key: None,
            nojs_wait: Duration::from_secs(15),
            nojs_clearance: Duration::from_secs(300),
            nojs_per_block: 20,
        }
    }
}

/// `protect.attack.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttackMode {
    Off,
    On,
    Auto,
}

impl AttackMode {
    pub fn parse(text: &str) -> Option<AttackMode> {
        match text {
            "off" => Some(AttackMode::Off),
            "on" => Some(AttackMode::On),
            "auto" => Some(AttackMode::Auto),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttackMode::Off => "off",
            AttackMode::On => "on",
            AttackMode::Auto => "auto",
        }
    }
}

/// The bytes of `protect.attack.key_file`; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AttackKey(pub Arc<[u8]>);

impl fmt::Debug for AttackKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttackKey(<redacted>)")
    }
}

impl Protect {
    /// Whether `ip` sends other people's requests (a trusted proxy, or an edge of this
    /// shield): its `X-Forwarded-For` names the client, and limits meant for one client do
    /// not apply to the connection.
    pub fn forwards_for_others(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .chain(&self.tiers)
            .any(|c| c.contains(ip))
    }
}

impl Default for Protect {
    fn default() -> Self {
        Protect {
            trusted_proxies: Vec::new(),
            tiers: Vec::new(),
            deny: Vec::new(),
            allow: Vec::new(),
            rate: None,
            block_rate: None,
            max_header: 32 << 10,
            max_headers: 100,
            max_uri: 8 << 10,
            max_body: 16 << 20,
            keepalive_timeout: Duration::from_secs(60),
            keepalive_requests: 1000,
            max_connections_per_ip: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(20),
            min_upload_rate: 500,
            shed_at: 0,
            send_timeout: Duration::from_secs(30),
            tarpit: Duration::from_secs(1),
            send_buffer: 512 << 10,
            attack: Attack::default(),
        }
    }
}

/// `rate` + `burst`, as configured and as the limiter uses them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
    pub limit: crate::protect::rate::Limit,
}

/// `[cache]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// L1 capacity in bytes.
    pub memory: u64,
    /// L2 directory; None: memory only.
    pub disk_path: Option<PathBuf>,
    /// L2 capacity in bytes.
    pub disk: u64,
    /// Largest body stored; larger responses stream through uncached.
    pub max_object: u64,
    /// How long requests for an object being fetched wait for it before going to the origin.
    pub lock_timeout: Duration,
    /// Added to the origin's stale-while-revalidate window.
    pub stale_while_revalidate: Duration,
    /// The least stale-if-error window: how long cached pages keep the site up while origins fail.
    pub stale_if_error: Duration,
    /// Client ranges allowed to send the PURGE method on the public listeners.
    pub purge_from: Vec<crate::cidr::Cidr>,
}

/// `[node]`
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub region: String,
    pub threads: usize,
    pub grace_period: Duration,
    pub state_dir: PathBuf,
}

/// `[listen]`
#[derive(Debug, Clone)]
pub struct Listen {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    /// Plain HTTP listeners behind an L4 balancer: each connection starts with a PROXY
    /// protocol header (see `protect::proxy_protocol`).
    pub proxy_protocol: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// `[admin]`: the bearer tokens, read from their files at load time and kept hashed.
#[derive(Clone, Default)]
pub struct Admin {
    /// `token_file` (every scope, named `admin`) and `tokens`.
    pub tokens: Vec<AdminToken>,
    /// Whether `/status` and the metrics' `origin` label show origin addresses; off, they show
    /// each origin's `name` (default `origin-N`, its place in the pool): the metrics listener
    /// and a leaked status page must not map the origins an attacker would go around the edge
    /// to reach.
    pub origin_addresses: bool,
}

impl fmt::Debug for Admin {
    // Tokens are secrets (even hashed): names and scopes only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tokens: Vec<(&str, Scopes)> = self
            .tokens
            .iter()
            .map(|t| (t.name.as_str(), t.scopes))
            .collect();
        f.debug_struct("Admin").field("tokens", &tokens).finish()
    }
}

/// One admin token: its name (in the audit log), the SHA-256 of its secret (compared in
/// constant time), and what it may do.
#[derive(Clone)]
pub struct AdminToken {
    pub name: String,
    pub hash: [u8; 32],
    pub scopes: Scopes,
}

/// What an admin call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminScope {
    /// Status, the fleet's status, the releases.
    Read,
    /// `POST /purge`.
    Purge,
    /// Attack mode, releases, reload (and, later, freeze and rollback).
    Operate,
}

impl AdminScope {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminScope::Read => "read",
            AdminScope::Purge => "purge",
            AdminScope::Operate => "operate",
        }
    }
}

/// The scopes a token has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes {
    pub read: bool,
    pub purge: bool,
    pub operate: bool,
}

impl Scopes {
    pub const ALL: Scopes = Scopes {
        read: true,
        purge: true,
        operate: true,
    };

    pub fn allows(self, scope: AdminScope) -> bool {
        match scope {
            AdminScope::Read => self.read,
            AdminScope::Purge => self.purge,
            AdminScope::Operate => self.operate,
        }
    }
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Stdout,
    File(PathBuf),
    Off,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct Log {
    pub access: AccessLog,
    pub level: String,
}

/// `[[site]]`
#[derive(Debug, Clone)]
pub struct Site {
    pub name: String,
    /// Lowercased host patterns: `example.com`, `*.example.com` or `*`.
    pub hosts: Vec<String>,
    pub pool: String,
    /// The maintenance page body, read from `maintenance_page` (None: the built-in page).
    pub maintenance_page: Option<Bytes>,
    /// The status of the answer to a request for content under a release's embargo (a 4xx;
    /// default 404, like any missing page).
    pub embargo_status: u16,
    /// Serve stale on origin errors even where the origin forbids it (must-revalidate, ...).
    pub force_stale_if_error: bool,
    /// Whether attack mode's challenge offers readers without JavaScript a timed wait
    /// instead (off by default: it costs a bot nothing but time).
    pub nojs_challenge: bool,
    /// Request headers onair strips as unkeyed (`proxy::headers::UNKEYED`) that this site's
    /// origin needs: passed through, and their values made part of the cache key. Lowercase.
    pub pass_headers: Vec<String>,
    pub routes: Vec<Route>,
    /// `[site.integrity]`: the newsroom's signatures checked on what the origins send.
    pub integrity: Option<std::sync::Arc<Integrity>>,
}

/// `[site.integrity]` (see `crate::integrity`).
#[derive(Debug, Clone)]
pub struct Integrity {
    pub mode: IntegrityMode,
    /// Key id → public key: several at once, for rotation.
    pub keys: Vec<(String, crate::keys::VerifyKey)>,
    /// The most `enforce` holds back before sending (unused by `report`).
    pub max_buffer: u64,
}

/// What a failed check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityMode {
    /// Serve and cache as without it; count and log every failure.
    Report,
}

/// `[[site.route]]`
#[derive(Debug, Clone)]
pub struct Route {
    pub path: String,
    pub pool: Option<String>,
    /// `false`: requests on this route bypass the cache.
    pub cache: bool,
    /// How the query string enters the cache key.
    pub query: QueryKey,
    /// Freshness for responses that carry no freshness information (no heuristics otherwise).
    pub default_ttl: Option<Duration>,
    /// A per-client limit for this route, on top of the node-wide one.
    pub rate: Option<RateLimit>,
}

/// How a route's query string enters the cache key. A cached request's origin gets the query
/// exactly as keyed (sorted, or none), so that what is stored is what the key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryKey {
    /// As sent: `?b=2&a=1` and `?a=1&b=2` are different objects.
    #[default]
    Keep,
    /// Parameters sorted: the order does not matter.
    Sort,
    /// Ignored: every query string shares the object (tracking parameters and the like).
    Drop,
}

/// `[[pool]]`
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    /// How a request's origin is chosen among the usable ones of the lowest usable tier.
    pub select: Select,
    /// The pool requests go on to when none of this pool's origins can be used (all down or
    /// ejected, or its attempts spent): regional shields, then other regions', then the origin.
    pub fallback: Option<String>,
    /// The origins are onair shields (another cache tier): a 503 from one is its maintenance
    /// answer (its own origins failed, or it is shedding load), which moves the request on but
    /// does not eject it, so it stays in service for the copies it still holds.
    pub shields: bool,
    pub tls: bool,
    pub sni: Option<String>,
    pub host: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Origins one request may try before it gives up (connect failures and retryable errors).
    pub max_attempts: usize,
    /// Longest one origin attempt may take, connect to last body byte (not for upgraded
    /// connections).
    pub total_timeout: Duration,
    /// Requests in flight to this pool at most (origin protection).
    pub max_inflight: usize,
    /// Requests that may wait for a slot when `max_inflight` is reached, and for how long.
    pub queue: usize,
    pub queue_timeout: Duration,
    /// Retries allowed as a share of the pool's requests (plus a small floor per second).
    pub retry_budget: f64,
    /// Certificates (DER) that may sign the origins' certificates, from `ca_file`; None: the
    /// system roots.
    pub ca: Option<Vec<Vec<u8>>>,
    /// The certificate chain and key onair presents to the origins (mTLS).
    pub client_cert: Option<ClientCert>,
    /// Speak HTTP/2 to the origins (ALPN h2, then http/1.1), many requests per connection.
    pub h2: bool,
    pub health: Option<Health>,
    pub passive: Passive,
    pub origins: Vec<Origin>,
}

/// `[[pool]] select`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Select {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Rendezvous (highest random weight) hashing of the request's host and path, weighted:
    /// every node with this config sends one object to one origin (a shield), and when that
    /// origin goes only its share of objects moves.
    Hash,
}

/// A client certificate for authenticated origin pulls.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCert {
    /// Leaf first, in DER.
    pub chain: Vec<Vec<u8>>,
    pub key: crate::tls::SecretKey,
}

/// Passive health: ejection of an origin on failures seen by live traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Passive {
    /// Consecutive failures (connect errors, 5xx) that eject; a timeout ejects at once; 0 turns
    /// passive ejection off.
    pub failures: u32,
    /// First ejection time; it doubles with each ejection in a row, up to `max_eject`.
    pub eject: Duration,
    pub max_eject: Duration,
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            failures: 3,
            eject: Duration::from_secs(10),
            max_eject: Duration::from_secs(300),
        }
    }
}

/// Active health check of a pool's origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
}

/// `[[pool.origin]]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub addr: OriginAddr,
    /// What metrics and `/status` call it (see `Admin::origin_addresses`).
    pub name: Option<String>,
    pub region: Option<String>,
    pub tier: u8,
    pub weight: u32,
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub region: Option<String>,
    pub node_id: Option<String>,
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it (token file,
    /// maintenance pages, access log) are taken relative to the file's own directory.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::single("", format!("cannot read {}: {e}", path.display()))
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&text, base, overrides)
    }

    /// Parses and validates config text; `base` resolves relative paths.
    pub fn parse(text: &str, base: &Path, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let mut unknown = Vec::new();
        let de =
            toml::Deserializer::parse(text).map_err(|e| toml_error(text, &e, "TOML syntax"))?;
        let raw: schema::RawConfig = serde_ignored::deserialize(de, |path| {
            unknown.push(key_path(&path));
        })
        .map_err(|e| toml_error(text, &e, "wrong type"))?;
        let mut errors: Vec<ConfigError> = unknown
            .into_iter()
            .map(|path| ConfigError {
                path,
                message: "unknown key".to_owned(),
            })
            .collect();
        let config = validate::validate(raw, base, overrides, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Finds a pool by name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// Formats a `serde_ignored` path the way our messages name keys: `pool[1].origin[0].addr`.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        P::Map { parent, key } => {
            let head = key_path(parent);
            if head.is_empty() {
                key.clone()
            } else {
                format!("{head}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            key_path(parent)
        }
    }
}

/// A syntax or type error from the TOML parser, with its line and, where the line holds a
/// key, the key path: such an error stops parsing, so it is the one error reported.
fn toml_error(text: &str, e: &toml::de::Error, kind: &str) -> ConfigErrors {
    let Some(span) = e.span() else {
        return ConfigErrors::single("", format!("{kind}: {}", e.message()));
    };
    let offset = span.start.min(text.len());
    let line = text[..offset].matches('\n').count() + 1;
    let message = format!("line {line}: {kind}: {}", e.message().trim());
    ConfigErrors::single(&key_path_at(text, offset).unwrap_or_default(), message)
}

/// The key path of the `key = value` line at `offset`, found from the table headers above it:
/// `[[pool]]` twice then `[[pool.origin]]` and `addr = ...` give `pool[1].origin[0].addr`.
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?.trim();
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    if key.is_empty() || line.starts_with('[') {
        return None;
    }
    // Walk the headers before this line, keeping an index for each array-of-tables path.
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut table: Vec<(String, Option<usize>)> = Vec::new();
    for header in text[..line_start].lines().map(str::trim) {
        let (name, array) =
            if let Some(n) = header.strip_prefix("[[").and_then(|h| h.split("]]").next()) {
                (n.trim(), true)
            } else if let Some(n) = header.strip_prefix('[').and_then(|h| h.split(']').next()) {
                (n.trim(), false)
            } else {
                continue;
            };
        let parts: Vec<&str> = name.split('.').map(str::trim).collect();
        let prefix_len = parts.len().saturating_sub(1);
        table.truncate(prefix_len);
        while table.len() < prefix_len {
            table.push((parts[table.len()].to_owned(), None));
        }
        let index = array.then(|| {
            // Arrays nested in an array element restart their count per parent element.
            let scope = format!("{}/{}", render(&table), parts.last().unwrap_or(&""));
            let n = counts.entry(scope).or_insert(0);
            *n += 1;
            *n - 1
        });
        table.push(((*parts.last()?).to_owned(), index));
    }
    let head = render(&table);
    Some(if head.is_empty() {
        key.to_owned()
    } else {
        format!("{head}.{key}")
    })
}

fn render(table: &[(String, Option<usize>)]) -> String {
    table
        .iter()
        .map(|(name, index)| match index {
            Some(i) => format!("{name}[{i}]"),
            None => name.clone(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests;
