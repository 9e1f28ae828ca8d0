//! onair: an edge cache and origin proxy on Pingora that keeps a site on air.
//!
//! # Layout
//! - [`config`]: the TOML file, its validation (every error with its key path).
//! - [`snapshot`]: the runtime snapshot built from a config, swapped atomically on reload.
//! - [`router`]: host -> site -> route -> pool; [`uri_path`]: the normal form paths are
//!   routed and keyed in.
//! - [`origin`]: pools, tiers, regions, active and passive health, origin protection.
//! - [`tls`]: certificates and keys from PEM files, checked before Pingora sees them.
//! - [`cache`]: cache key, RFC 9111 cacheability, the memory tier, `Cache-Status`.
//! - [`protect`]: client identity (trusted proxies, IPv6 /64) and per-client rate limits.
//! - [`proxy`]: the `ProxyHttp` phases, which only dispatch to the modules above.
//! - [`admin`]: the admin API. [`metrics`]: every Prometheus metric.
//! - [`access_log`], [`logging`]: what onair tells operators.
//! - [`fleet`]: the fleet control plane (signed operations over NATS JetStream).
//! - [`server`]: process lifecycle. [`demo`]: the `onair demo` showcase.

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod cidr;
pub mod config;
pub mod demo;
pub mod fleet;
pub mod integrity;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod protect;
pub mod proxy;
pub mod release;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod uri_path;
