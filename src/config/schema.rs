//! The config file as written: serde structs that mirror the TOML one to one.
//!
//! Values with units or syntax (durations, sizes, socket addresses) stay strings here so that
//! `validate` can check every one of them and report all errors at once, each with its key path.
//! Unknown keys are collected by `serde_ignored` in `mod.rs` for the same reason: serde's own
//! `deny_unknown_fields` stops at the first one.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    pub node: RawNode,
    pub listen: RawListen,
    pub admin: RawAdmin,
    pub log: RawLog,
    pub cache: RawCache,
    pub protect: RawProtect,
    pub tls: RawTls,
    pub site: Vec<RawSite>,
    pub pool: Vec<RawPool>,
    pub dns: RawDns,
    pub fleet: Option<RawFleet>,
    pub release: RawRelease,
}

/// `[release]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawRelease {
    pub warm_lead: Option<String>,
    pub warm_concurrency: Option<u32>,
    pub warm_secret_file: Option<String>,
}

/// `[fleet]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawFleet {
    pub servers: Option<Vec<String>>,
    pub token_file: Option<String>,
    pub creds_file: Option<String>,
    pub nkey_file: Option<String>,
    pub ca_file: Option<String>,
    pub stream: Option<String>,
    pub subject: Option<String>,
    pub verify_key: Option<Vec<String>>,
    pub sign_key: Option<String>,
    pub max_skew: Option<String>,
    pub retention: Option<String>,
    pub replicas: Option<i64>,
}

/// `[dns]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawDns {
    pub servers: Option<Vec<String>>,
    pub min_ttl: Option<String>,
    pub max_ttl: Option<String>,
    pub timeout: Option<String>,
}

/// `[node]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawNode {
    pub id: Option<String>,
    pub region: Option<String>,
    pub threads: Option<i64>,
    pub grace_period: Option<String>,
    pub state_dir: Option<String>,
}

/// `[listen]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawListen {
    pub http: Vec<String>,
    pub proxy_protocol: Vec<String>,
    pub https: Vec<String>,
    pub metrics: Option<String>,
    pub admin: Option<String>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawAdmin {
    pub token_file: Option<String>,
    pub tokens: Vec<RawAdminToken>,
    pub origin_addresses: Option<bool>,
}

/// `[admin] tokens = [{ name, file, scopes }]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawAdminToken {
    pub name: Option<String>,
    pub file: Option<String>,
    pub scopes: Vec<String>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawLog {
    pub access: Option<String>,
    pub level: Option<String>,
}

/// `[cache]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawCache {
    pub memory: Option<String>,
    pub disk_path: Option<String>,
    pub disk: Option<String>,
    pub max_object: Option<String>,
    pub lock_timeout: Option<String>,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
    pub purge_from: Option<Vec<String>>,
}

/// `[[site]]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawSite {
    pub name: Option<String>,
    pub hosts: Vec<String>,
    pub pool: Option<String>,
    pub maintenance_page: Option<String>,
    pub embargo_status: Option<u16>,
    pub force_stale_if_error: Option<bool>,
    pub nojs_challenge: Option<bool>,
    pub pass_headers: Vec<String>,
    pub route: Vec<RawRoute>,
    pub integrity: Option<RawIntegrity>,
}

/// `[site.integrity]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawIntegrity {
    pub mode: Option<String>,
    pub keys: Vec<RawIntegrityKey>,
    pub max_buffer: Option<String>,
}

/// `[site.integrity] keys = [{ id, public_key }]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawIntegrityKey {
    pub id: Option<String>,
    pub public_key: Option<String>,
}

/// `[[site.route]]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawRoute {
    pub path: Option<String>,
    pub pool: Option<String>,
    pub cache: Option<bool>,
    pub query: Option<String>,
    pub default_ttl: Option<String>,
    pub rate: Option<String>,
    pub burst: Option<i64>,
}

/// `[tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawTls {
    pub redirect_http: Option<bool>,
    pub hsts: Option<String>,
    pub cert: Vec<RawTlsCert>,
}

/// `[[tls.cert]]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawTlsCert {
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// `[protect]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawProtect {
    pub trusted_proxies: Option<Vec<String>>,
    pub tiers: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub allow: Option<Vec<String>>,
    pub rate: Option<String>,
    pub burst: Option<i64>,
    pub block_rate: Option<String>,
    pub block_burst: Option<i64>,
    pub max_header: Option<String>,
    pub max_headers: Option<i64>,
    pub max_uri: Option<String>,
    pub max_body: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub keepalive_requests: Option<i64>,
    pub max_connections_per_ip: Option<i64>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub min_upload_rate: Option<String>,
    pub shed_at: Option<i64>,
    pub send_timeout: Option<String>,
    pub tarpit: Option<String>,
    pub send_buffer: Option<String>,
    pub attack: RawAttack,
}

/// `[protect.attack]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawAttack {
    pub mode: Option<String>,
    pub trigger_rps: Option<i64>,
    pub cooldown: Option<String>,
    pub challenge: Option<String>,
    pub difficulty: Option<i64>,
    pub clearance: Option<String>,
    pub key_file: Option<String>,
    pub nojs_wait: Option<String>,
    pub nojs_clearance: Option<String>,
    pub nojs_per_block: Option<i64>,
}

/// `[[pool]]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawPool {
    pub name: Option<String>,
    pub select: Option<String>,
    pub fallback: Option<String>,
    pub shields: Option<bool>,
    pub tls: Option<bool>,
    pub sni: Option<String>,
    pub host: Option<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub max_attempts: Option<i64>,
    pub total_timeout: Option<String>,
    pub max_inflight: Option<i64>,
    pub queue: Option<i64>,
    pub queue_timeout: Option<String>,
    pub retry_budget: Option<f64>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub h2: Option<bool>,
    pub health: Option<RawHealth>,
    pub passive: Option<RawPassive>,
    pub origin: Vec<RawOrigin>,
}

/// `passive = { ... }` inside a pool.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawPassive {
    pub failures: Option<i64>,
    pub eject: Option<String>,
    pub max_eject: Option<String>,
}

/// `health = { ... }` inside a pool.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub fall: Option<i64>,
    pub rise: Option<i64>,
}

/// `[[pool.origin]]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawOrigin {
    pub addr: Option<String>,
    pub name: Option<String>,
    pub region: Option<String>,
    pub tier: Option<i64>,
    pub weight: Option<i64>,
}
