//! Protecting readers and origins from abusive clients: who a client is (`client`) and how
//! fast it may go (`rate`).
//!
//! The limits are per client address (IPv6 grouped by /64, since one subscriber gets a whole
//! /64), counted on every request, cache hits included: a client over its rate gets 429 with
//! `Retry-After` before any cache or origin work.

pub mod acl;
pub mod client;
pub mod hygiene;
pub mod rate;
