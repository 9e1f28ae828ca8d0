//! Integration tests: real origins and a real onair process on 127.0.0.1 ephemeral ports.
//! One test binary (modules below) so the large binary links once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod attack;
mod cache;
mod cache_trust;
mod chaos;
mod config_check;
mod dns;
mod failover;
mod fleet;
mod fleet_bus;
mod integrity;
mod lifecycle;
mod protect;
mod proxying;
mod release;
mod reload;
mod tiers;
mod tls_edge;
mod upstream_tls;
