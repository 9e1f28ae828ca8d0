//! The node's way onto the bus for its admin API: the fleet service lends its connection here
//! while it has one, and `POST /purge` or `/attack-mode` with a `"scope"` signs the operation
//! with `fleet.sign_key` and publishes it through it.

use std::sync::Mutex;

use async_nats::jetstream;

use super::op::Operation;
use crate::config::Fleet;

/// Why a fleet-scoped admin call could not be published.
#[derive(Debug)]
pub enum LinkError {
    /// The node has no `[fleet]`, or no `fleet.sign_key` to sign with (403).
    NotAllowed(&'static str),
    /// The bus is out of reach right now (503).
    Down(String),
}

#[derive(Clone)]
struct Lent {
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: Fleet,
    heartbeats: Option<async_nats::jetstream::kv::Store>,
}

/// Shared by the fleet service (which lends) and the admin API (which borrows).
#[derive(Default)]
pub struct Link {
    lent: Mutex<Option<Lent>>,
    /// Ids of operations the admin API applies here itself: when the bus brings one back,
    /// the service counts it without applying it again (and the admin's answer counts what
    /// it purged, not zero because the bus was faster).
    local: Mutex<std::collections::HashSet<String>>,
    /// The last sequence the service has read (applied, refused or not for this node), and
    /// a wake-up for those waiting for one.
    read: std::sync::atomic::AtomicU64,
    moved: tokio::sync::Notify,
    /// How far the bus's clock is from this node's, ms, as the last heartbeat measured.
    pub clock_offset_ms: std::sync::Arc<Mutex<Option<i64>>>,
}

/// At most this many local operations await their return from the bus (a bus that never
/// brings them back must not make the set grow for ever).
const MAX_LOCAL: usize = 1024;

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Lent>> {
        match self.lent.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        match self.local.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The admin API applies operation `id` here itself.
    pub fn applied_here(&self, id: &str) {
        let mut local = self.local();
        if local.len() >= MAX_LOCAL {
            local.clear();
        }
        local.insert(id.to_owned());
    }

    /// Whether operation `id`, back from the bus, was applied here by the admin API already.
    pub fn was_applied_here(&self, id: &str) -> bool {
        self.local().remove(id)
    }

    /// The service has read operation `seq`.
    pub fn advanced(&self, seq: u64) {
        self.read.store(seq, std::sync::atomic::Ordering::Release);
        self.moved.notify_waiters();
    }

    /// Waits until the service has read operation `seq`, for at most `limit`; whether it has.
    pub async fn wait_read(&self, seq: u64, limit: std::time::Duration) -> bool {
        let reached = || self.read.load(std::sync::atomic::Ordering::Acquire) >= seq;
        tokio::time::timeout(limit, async {
            loop {
                // Registered before the check: an advance in between is not missed.
                let moved = self.moved.notified();
                if reached() {
                    return;
                }
                moved.await;
            }
        })
        .await
        .is_ok()
    }

    /// The service connected with `cfg`.
    pub fn lend(
        &self,
        client: async_nats::Client,
        js: jetstream::Context,
        cfg: Fleet,
        heartbeats: Option<async_nats::jetstream::kv::Store>,
    ) {
        *self.lock() = Some(Lent {
            client,
            js,
            cfg,
            heartbeats,
        });
    }

    /// Every node's last heartbeat (`GET /fleet`).
    pub async fn heartbeats(&self) -> Result<Vec<super::status::Heartbeat>, LinkError> {
        let lent = self.in_reach();
        let (store, lent) = lent
            .and_then(|l| Some((l.heartbeats.clone()?, l)))
            .ok_or_else(|| {
                LinkError::Down(
                    "the fleet bus (or its heartbeat bucket) is out of reach: no fleet status"
                        .to_owned(),
                )
            })?;
        let mut stream = lent
            .js
            .get_stream(&lent.cfg.stream)
            .await
            .map_err(|e| LinkError::Down(format!("stream {}: {e}", lent.cfg.stream)))?;
        super::status::all(&store, &mut stream)
            .await
            .map_err(LinkError::Down)
    }

    /// What the service lent, while its connection is up.
    fn in_reach(&self) -> Option<Lent> {
        self.lock()
            .as_ref()
            .filter(|l| l.client.connection_state() == async_nats::connection::State::Connected)
            .cloned()
    }

    /// The service's connection ended.
    pub fn take_back(&self) {
        *self.lock() = None;
    }

    /// Signs `op` with the node's `fleet.sign_key` (from `current`, the config in use) and
    /// publishes it; its stream sequence.
    pub async fn publish(&self, current: Option<&Fleet>, op: &Operation) -> Result<u64, LinkError> {
        let Some(current) = current else {
            return Err(LinkError::NotAllowed(
                "this node has no [fleet]: it can only act locally (leave out \"scope\")",
            ));
        };
        let Some(key) = &current.sign_key else {
            return Err(LinkError::NotAllowed(
                "this node has no fleet.sign_key to sign fleet operations with: use `onair \
                 fleet` with an operator's key, or leave out \"scope\" to act locally",
            ));
        };
        let lent = self.in_reach().ok_or_else(|| {
            LinkError::Down(
                "the fleet bus is out of reach: nothing was published; local calls (without \
                 \"scope\") still work"
                    .to_owned(),
            )
        })?;
        super::bus::publish(&lent.js, &lent.cfg, op.sign(key))
            .await
            .map_err(LinkError::Down)
    }
}
