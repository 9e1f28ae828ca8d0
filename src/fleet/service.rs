//! The node's fleet service: reads the operation stream from where this node left off,
//! verifies each operation, applies those meant for it, and records its position durably.
//!
//! A background service, never on the request path. With `[fleet]` absent it idles; with the
//! bus out of reach (at start or later) the node serves as it is and this service tries again
//! with a capped backoff, then carries on from its stored position, so what was published
//! meanwhile is applied in order. A reload that changes `[fleet]` reconnects with it.
//!
//! The position is the node's own (`state::Position`, fsynced at once after a quiet spell and
//! at most every [`STORE_EVERY`] under load), not a durable consumer's on the server: the server keeps no state per node, a node
//! restored from a backup replays from where its state dir says, and retiring a node leaves
//! nothing behind on the bus.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::op::{self, Action, Operation, Seen};
use super::{bus, state, status};
use crate::cache::EdgeCache;
use crate::config::{AttackMode, Fleet};
use crate::metrics::METRICS;
use crate::snapshot::{Live, Snapshot};

/// The first wait after a failed connection; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the service looks for a changed `[fleet]` (a reload) while it reads.
const CONFIG_CHECK: Duration = Duration::from_secs(1);
/// With nothing read for this long, the service asks the stream whether it missed anything.
const STUCK_AFTER: Duration = Duration::from_secs(5);
/// How often, at most, the position is made durable while operations keep coming. Each store
/// is an fsync; at a hundred operations a second one each would cost the node more than
/// applying them. After a crash the node applies again what it applied in the last moments
/// before it: purging again is harmless, and attack-mode records replay in their order.
const STORE_EVERY: Duration = Duration::from_millis(200);

pub struct FleetService {
    pub live: Arc<Live>,
    pub cache: EdgeCache,
    /// Lent the connection while there is one (the admin API publishes through it).
    pub link: Arc<super::link::Link>,
}

/// Refused operations are logged at most once a second (junk on the bus must not flood the
/// log); the metric counts every one.
#[derive(Default)]
struct Refusals {
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    fn log(&mut self, why: &str) {
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(
            "fleet: refused an operation ({why}; {} more refused since the last line): only \
             operations signed by fleet.verify_key, issued within fleet.max_skew, and new, are \
             applied",
            self.unlogged
        );
        self.last_log = Some(now);
        self.unlogged = 0;
    }
}

/// Where this node is in the stream, kept across sessions (the disk may trail it, see
/// [`STORE_EVERY`] and [`Progress::persist`]), and the operations it refused lately.
struct Progress {
    position: state::Position,
    /// Applied but not yet on disk; and when the last store was tried.
    dirty: bool,
    stored: Instant,
    /// The latest sequences refused here (forged, stale, ...), newest last: the heartbeat
    /// reports them, so that `fleet wait` does not call an operation done that nodes refused.
    refused: std::collections::VecDeque<u64>,
    /// Since when a store has waited for the disk index, and whether that was logged.
    unstored_since: Option<Instant>,
    warned: bool,
}

/// A position held back this long by an incomplete disk index is logged (a scan that cannot
/// finish, say, would otherwise keep it from the disk without a word).
const UNSTORED_WARN: Duration = Duration::from_secs(60);

/// Refused sequences a heartbeat carries.
const REFUSED_KEPT: usize = 32;

impl Progress {
    fn new(position: state::Position) -> Progress {
        Progress {
            position,
            dirty: false,
            // The first operation after a quiet spell is stored at once.
            stored: Instant::now()
                .checked_sub(STORE_EVERY)
                .unwrap_or_else(Instant::now),
            refused: std::collections::VecDeque::new(),
            unstored_since: None,
            warned: false,
        }
    }

    fn refuse(&mut self, seq: u64) {
        if self.refused.len() >= REFUSED_KEPT {
            self.refused.pop_front();
        }
        self.refused.push_back(seq);
    }

    /// Makes the position durable if it changed and `STORE_EVERY` has passed (or `now`).
    /// Not while the disk tier's start-up scan runs: a purge reaches the files it has not
    /// indexed yet only through the scan, held in memory until then, so a position stored
    /// past it would claim a purge a crash could lose. The disk keeps the older position, and
    /// after a crash the node applies those operations again.
    async fn persist(
        &mut self,
        state_dir: &Path,
        cache: &EdgeCache,
        now: bool,
    ) -> Result<(), String> {
        self.persist_if(state_dir, cache.store.index_ready(), now)
            .await
    }

    /// [`Progress::persist`], told whether the disk tier's index is complete.
    async fn persist_if(
        &mut self,
        state_dir: &Path,
        index_ready: bool,
        now: bool,
    ) -> Result<(), String> {
        if !self.dirty || (!now && self.stored.elapsed() < STORE_EVERY) {
            return Ok(());
        }
        self.stored = Instant::now();
        if !index_ready {
            let since = *self.unstored_since.get_or_insert(self.stored);
            if since.elapsed() >= UNSTORED_WARN && !self.warned {
                self.warned = true;
                tracing::warn!(
                    "fleet: the position ({}) is not stored while the disk cache's index is \
                     incomplete (for {:?} now; see the disk scan's log): after a restart this \
                     node applies the operations since the last stored one again",
                    self.position.seq,
                    since.elapsed()
                );
            }
            return Ok(());
        }
        (self.unstored_since, self.warned) = (None, false);
        store(state_dir, self.position.clone()).await?;
        self.dirty = false;
        Ok(())
    }
}

/// Why a session with the bus ended without an error.
enum Ended {
    Shutdown,
    Reconfigured,
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = FIRST_BACKOFF;
        // Kept across reconnects: an operation delivered again after one is not applied twice.
        let mut seen = Seen::default();
        let first = self.live.current();
        let state_dir = first.config.node.state_dir.clone();
        let mut progress = Progress::new(load(&state_dir).await);
        // (At start the server closed the catch-up gate itself when [fleet] was there.)
        let mut had_fleet = first.config.fleet.is_some();
        if had_fleet {
            self.restore_attack_mode(&state_dir);
        }
        loop {
            let snapshot = self.live.current();
            let Some(cfg) = snapshot.config.fleet.clone() else {
                METRICS.fleet_connected(false);
                // No fleet (any more): nothing to catch up with.
                self.cache.catch_up.open();
                had_fleet = false;
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(CONFIG_CHECK) => continue,
                }
            };
            if !had_fleet {
                // [fleet] came with a reload: what the cache holds may have been purged by
                // the fleet already, as after a start.
                self.cache.catch_up.close(SystemTime::now());
                had_fleet = true;
            }
            let began = Instant::now();
            let result = self
                .session(&cfg, &snapshot, &mut seen, &mut progress, &mut shutdown)
                .await;
            if began.elapsed() > MAX_BACKOFF {
                // A session that lasted is not a failure in a row.
                backoff = FIRST_BACKOFF;
            }
            self.link.take_back();
            METRICS.fleet_connected(false);
            match result {
                Ok(Ended::Shutdown) => return,
                Ok(Ended::Reconfigured) => backoff = FIRST_BACKOFF,
                Err(e) => {
                    tracing::warn!("fleet: {e}; the node serves on, trying again in {backoff:?}");
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

impl FleetService {
    /// One connection to the bus: catch up from the stored position, then follow the stream.
    async fn session(
        &self,
        cfg: &Fleet,
        snapshot: &Snapshot,
        seen: &mut Seen,
        progress: &mut Progress,
        shutdown: &mut ShutdownWatch,
    ) -> Result<Ended, String> {
        let node = snapshot.config.node.id.clone();
        let state_dir = snapshot.config.node.state_dir.clone();
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let client = bus::connect_counting(cfg, &node, connections.clone()).await?;
        let js = jetstream::new(client.clone());
        let mut stream = bus::stream(&js, cfg).await?;
        let position = &mut progress.position;
        seen.raise(position.newest);
        let (first, last, identity) = {
            let info = stream
                .info()
                .await
                .map_err(|e| format!("stream info: {e}"))?;
            let created = info.created.unix_timestamp_nanos() / 1_000_000;
            (
                info.state.first_sequence,
                info.state.last_sequence,
                created.to_string(),
            )
        };
        let reset = position.stream.as_ref().is_some_and(|s| *s != identity) || position.seq > last;
        // Also from position 0: a node that never read this stream (a new one, or one whose
        // state dir was wiped) may hold copies that operations retention took have purged.
        let fell_off = position.seq.saturating_add(1) < first;
        if reset || fell_off {
            // Operations this node never saw are gone (retention took them, or the stream was
            // made again): it cannot know what they purged.
            self.lost(&format!(
                "this node applied up to operation {} of {}, the stream now holds {first} to \
                 {last} of {identity}",
                position.seq,
                position.stream.as_deref().unwrap_or("an unknown stream"),
            ))
            .await;
            position.seq = first.saturating_sub(1);
        }
        if position.stream.as_deref() != Some(identity.as_str()) || reset || fell_off {
            position.stream = Some(identity);
            progress.dirty = true;
        }
        let position = &progress.position;
        METRICS.fleet_position(position.seq, Duration::ZERO);
        if position.seq >= last {
            self.caught_up(position.seq);
        } else {
            // Behind (after a partition, say): until it has read on, copies stored before
            // now may be of pages purged meanwhile (at start the server closed it already).
            self.cache.catch_up.close(SystemTime::now());
        }
        let start = position.seq.saturating_add(1);
        // Sequences count from here in this stream (it may have been made again).
        self.link.advanced(position.seq);
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: bus::ops_subject(cfg),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| format!("consumer: {e}"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("reading operations: {e}"))?;
        // Best effort: without the bucket the node still applies operations.
        let heartbeats = match status::store(&js, cfg).await {
            Ok(store) => Some(store),
            Err(e) => {
                tracing::warn!("fleet: {e}; no heartbeats this session");
                None
            }
        };
        METRICS.fleet_connected(true);
        self.link
            .lend(client.clone(), js.clone(), cfg.clone(), heartbeats.clone());
        tracing::info!("fleet: connected; reading operations from sequence {start}");
        let mut check = tokio::time::interval(CONFIG_CHECK);
        let mut beat = tokio::time::interval(status::INTERVAL);
        let mut refusals = Refusals::default();
        // When the node last read an operation (or the session began).
        let mut progressed = Instant::now();
        // The first connection's event may come after this: only a second one is a reconnect.
        let connected = connections
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1);
        let mut beating: Option<tokio::task::JoinHandle<()>> = None;
        // Answers to "is the stream ahead of this node?" (see STUCK_AFTER), and when it was
        // last asked.
        let mut asked = Instant::now();
        let mut behind_once = false;
        let (last_tx, mut last_rx) = tokio::sync::mpsc::channel::<Result<u64, String>>(1);
        let ended = async { loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(Ended::Shutdown),
                _ = beat.tick() => {
                    // On a task of its own: the bucket may live in another region, a round
                    // trip of a few hundred ms that must not hold up the operations. One at a
                    // time; a missed heartbeat is not worth ending the session for, the next
                    // one comes in a few seconds.
                    if let Some(store) = &heartbeats {
                        if beating.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                            let beat = self.heartbeat(progress.position.seq, &progress.refused);
                            let store = store.clone();
                            let offset = self.link.clock_offset_ms.clone();
                            beating = Some(tokio::spawn(async move {
                                match status::put(&store, &beat).await {
                                    Ok(Some(ms)) => clock_measured(&offset, ms),
                                    Ok(None) => {}
                                    Err(e) => tracing::debug!("fleet: {e}"),
                                }
                            }));
                        }
                    }
                }
                _ = tokio::time::sleep_until((progress.stored + STORE_EVERY).into()),
                    if progress.dirty => {
                    progress.persist(&state_dir, &self.cache, false).await?;
                }
                _ = check.tick() => {
                    // The client reconnects by itself; the metric follows its state.
                    let up = client.connection_state() == async_nats::connection::State::Connected;
                    METRICS.fleet_connected(up);
                    if connections.load(std::sync::atomic::Ordering::Relaxed) > connected {
                        // Reconnected (perhaps to another server): the ordered consumer may
                        // have been on the server that went; read on from the stored position
                        // with a new one.
                        return Err("the bus connection was made again".to_owned());
                    }
                    if progressed.elapsed() >= STUCK_AFTER && asked.elapsed() >= STUCK_AFTER {
                        // Quiet for a while: does the stream hold operations this node has not
                        // read? Asked on the side, as the answer may be a far region's round
                        // trip away and an operation may come meanwhile.
                        asked = Instant::now();
                        let (stream, answer) = (stream.clone(), last_tx.clone());
                        tokio::spawn(async move {
                            let last = stream.get_info().await.map(|i| i.state.last_sequence);
                            let _ = answer.try_send(last.map_err(|e| format!("stream info: {e}")));
                        });
                    }
                    if self.live.current().config.fleet.as_ref() != Some(cfg) {
                        tracing::info!("fleet: [fleet] changed; reconnecting with it");
                        return Ok(Ended::Reconfigured);
                    }
                }
                Some(last) = last_rx.recv() => {
                    let last = last?;
                    // Behind with nothing read since the question, twice in a row (once could
                    // be an operation stored just before the answer and not yet delivered).
                    let behind = last > progress.position.seq && progressed < asked;
                    if behind && !behind_once {
                        behind_once = true;
                    } else if behind {
                        // The stream holds operations this node has not read, and none came:
                        // the consumer went with a server of the cluster (no reconnect here).
                        return Err(format!(
                            "the stream holds operations up to {last}, this node read up to {} \
                             and none came for {STUCK_AFTER:?}",
                            progress.position.seq
                        ));
                    } else {
                        behind_once = false;
                    }
                }
                next = messages.next() => {
                    let Some(message) = next else {
                        return Err("the operation stream ended".to_owned());
                    };
                    let message = message.map_err(|e| format!("reading operations: {e}"))?;
                    let (seq, stored_at, pending) = {
                        let info = message.info().map_err(|e| format!("operation metadata: {e}"))?;
                        let ms = info.published.unix_timestamp_nanos() / 1_000_000;
                        (info.stream_sequence, u64::try_from(ms).unwrap_or(0), info.pending)
                    };
                    let position = &mut progress.position;
                    if seq <= position.seq {
                        // The ordered consumer started again from the stream's start (it does
                        // after a reconnect before its first message): a new session reads
                        // on from the kept position instead of applying old operations again.
                        return Err(format!(
                            "the bus sent operation {seq} again (applied up to {})",
                            position.seq
                        ));
                    }
                    if seq > position.seq + 1 {
                        // The stream only holds operations, and only retention (from its
                        // start) takes them away: a hole means some were taken from its middle.
                        self.lost(&format!(
                            "operations {} to {} are missing from the stream",
                            position.seq + 1,
                            seq - 1
                        ))
                        .await;
                    }
                    progressed = Instant::now();
                    let refused = self
                        .handle(
                            (&message.payload, seq, stored_at),
                            cfg,
                            seen,
                            position,
                            &mut refusals,
                        )
                        .await;
                    position.seq = seq;
                    position.at = op::unix_ms(SystemTime::now());
                    position.newest = seen.newest();
                    if refused {
                        progress.refuse(seq);
                    }
                    self.link.advanced(seq);
                    // Durable at once after a quiet spell, then at most every STORE_EVERY.
                    progress.dirty = true;
                    progress.persist(&state_dir, &self.cache, false).await?;
                    if seq >= last || pending == 0 {
                        self.caught_up(seq);
                    }
                    let lag = if pending > 0 {
                        Duration::from_millis(progress.position.at.saturating_sub(stored_at))
                    } else {
                        Duration::ZERO
                    };
                    METRICS.fleet_position(seq, lag);
                }
            }
        } }
        .await;
        if let Some(beating) = beating {
            // A put still on its way must not land after the next session's first one.
            beating.abort();
        }
        // Whatever ended the session, what was applied is on disk (a clean stop, a reconnect).
        // A failure here is logged, never in the way of a shutdown.
        if let Err(e) = progress.persist(&state_dir, &self.cache, true).await {
            tracing::warn!("fleet: {e}");
        }
        ended
    }

    /// This node as the fleet status shows it.
    fn heartbeat(
        &self,
        applied: u64,
        refused: &std::collections::VecDeque<u64>,
    ) -> status::Heartbeat {
        let snapshot = self.live.current();
        let origins_down = snapshot
            .pools
            .iter()
            .flat_map(|p| {
                p.origins
                    .iter()
                    .filter(|o| !o.health.is_up())
                    .map(move |o| format!("{}/{}", p.name(), o.label))
            })
            .collect();
        status::Heartbeat {
            id: snapshot.config.node.id.clone(),
            region: snapshot.config.node.region.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            config_version: snapshot.version,
            applied,
            attack_mode: self.live.attack().active(),
            cache_memory_bytes: self.cache.memory.size(),
            cache_memory_objects: self.cache.memory.objects(),
            origins_down,
            at: op::unix_ms(SystemTime::now()),
            refused: refused.iter().copied().collect(),
            clock_offset_ms: *self
                .link
                .clock_offset_ms
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            releases: self.cache.releases.beats(),
            doubtful: false,
        }
    }

    /// Operations this node never saw are gone: it cannot know what they purged, so every
    /// copy it holds is marked stale (revalidated before it is served again, and still served
    /// if the origin fails: never off air). Loudly.
    async fn lost(&self, why: &str) {
        tracing::error!(
            "fleet: {why}: operations it never saw are lost; every cached object is marked stale"
        );
        let everything = crate::cache::purge::Selector::Prefix(String::new());
        let report = self.cache.purge(&everything, true).await;
        tracing::error!("fleet: marked {} cached objects stale", report.purged);
    }

    /// Everything published until this connection is applied: copies stored before the start
    /// are current again.
    fn caught_up(&self, seq: u64) {
        if !self.cache.catch_up.is_open() {
            tracing::info!("fleet: caught up at operation {seq}");
            self.cache.catch_up.open();
        }
    }

    /// Verifies one operation (`envelope`, stored as `seq` at `stored_at`) and applies it if
    /// it is meant for this node; counts the result. Whether it was refused (not for another
    /// node: refused as forged, stale, invalid...).
    async fn handle(
        &self,
        (envelope, seq, stored_at): (&[u8], u64, u64),
        cfg: &Fleet,
        seen: &mut Seen,
        position: &mut state::Position,
        refusals: &mut Refusals,
    ) -> bool {
        let op = match op::verify(
            envelope,
            &cfg.verify_keys,
            stored_at,
            op::unix_ms(SystemTime::now()),
            cfg.max_skew,
            seen,
        ) {
            Ok(op) => op,
            Err(refusal) => {
                METRICS.fleet_op("unknown", refusal.label());
                refusals.log(refusal.label());
                return true;
            }
        };
        let snapshot = self.live.current();
        let node = &snapshot.config.node;
        let kind = op.action.kind();
        if !op.scope.includes(&node.id, &node.region) {
            METRICS.fleet_op(kind, "not_in_scope");
            return false;
        }
        if let Action::AttackMode { mode } = &op.action {
            // An older attack-mode operation (replayed by whoever holds the bus) never
            // overrides a newer one.
            if position
                .attack
                .as_ref()
                .is_some_and(|last| last.issued_at > op.issued_at)
            {
                METRICS.fleet_op(kind, "stale");
                refusals.log("stale");
                return true;
            }
            position.attack = Some(state::AttackRecord {
                mode: mode.clone(),
                issued_at: op.issued_at,
            });
        }
        if self.link.was_applied_here(&op.id) {
            // This node's admin API published it and applied it here itself.
            METRICS.fleet_op(kind, "applied");
            return false;
        }
        match self.apply(&op, seq, &snapshot).await {
            Ok(what) => {
                METRICS.fleet_op(kind, "applied");
                tracing::info!(id = %op.id, scope = %op.scope, "fleet: applied {kind}: {what}");
                false
            }
            Err(e) => {
                METRICS.fleet_op(kind, "invalid");
                tracing::warn!(id = %op.id, "fleet: cannot apply {kind}: {e}");
                true
            }
        }
    }

    /// The attack mode the fleet set last, after a restart (it lives in memory otherwise).
    pub fn restore_attack_mode(&self, state_dir: &Path) {
        let Some(record) = state::load(state_dir).attack else {
            return;
        };
        if let Some(mode) = AttackMode::parse(&record.mode) {
            let snapshot = self.live.current();
            self.live
                .attack()
                .set(mode, &snapshot.config.protect.attack, Instant::now());
            tracing::info!(
                "fleet: attack mode {} as the fleet last set it",
                record.mode
            );
        }
    }

    /// Applies operation `seq` of the stream.
    async fn apply(&self, op: &Operation, seq: u64, snapshot: &Snapshot) -> Result<String, String> {
        match &op.action {
            Action::Purge { .. } => {
                let request = op
                    .action
                    .purge_request()
                    .ok_or_else(|| "not a purge".to_owned())?;
                let selector = snapshot.purge_selector(&request)?;
                let report = self.cache.purge(&selector, request.soft).await;
                Ok(format!("{} objects", report.purged))
            }
            Action::AttackMode { mode } => {
                let mode = AttackMode::parse(mode)
                    .ok_or_else(|| format!("{mode:?} is not on, off or auto"))?;
                self.live
                    .attack()
                    .set(mode, &snapshot.config.protect.attack, Instant::now());
                Ok(mode.as_str().to_owned())
            }
            Action::Release(spec) => {
                let what = crate::release::hold(
                    &self.cache,
                    snapshot,
                    spec.clone(),
                    Some(seq),
                    op.issued_at,
                )
                .await?;
                Ok(format!("{} {what} for {}", spec.id, spec.at))
            }
            Action::ReleaseCancel { id } => {
                match crate::release::call_off(&self.cache, snapshot, id, op.issued_at).await {
                    Ok(()) => Ok(format!("{id} cancelled")),
                    // Issued after the release's time: refused, as a change would be.
                    Err(e) if e.contains(crate::release::LATE) => Err(e),
                    // Never seen here, or cancelled already: what the cancel wants holds.
                    Err(e) => Ok(e),
                }
            }
        }
    }
}

/// How far this node's clock may be from the bus's before it says so: releases lift their
/// embargo by each node's clock, and purge a second later (`release::service`), so two nodes
/// each within this of the bus are within that second of each other.
const CLOCK_WARN_MS: i64 = 500;

/// Records a clock offset measured by a heartbeat (ms, the bus's minus this node's); logs when
/// it goes past [`CLOCK_WARN_MS`], and when it comes back.
fn clock_measured(last: &std::sync::Mutex<Option<i64>>, ms: i64) {
    let mut last = last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let was_off = last.is_some_and(|l| l.abs() > CLOCK_WARN_MS);
    let off = ms.abs() > CLOCK_WARN_MS;
    if off && !was_off {
        tracing::warn!(
            "fleet: this node's clock is {ms:+} ms from the bus's (more than {CLOCK_WARN_MS} ms): \
             releases come out here that far from the others; check its NTP"
        );
    } else if was_off && !off {
        tracing::info!("fleet: this node's clock is {ms:+} ms from the bus's again");
    }
    *last = Some(ms);
    METRICS.fleet_clock_offset(ms);
}

async fn load(state_dir: &Path) -> state::Position {
    let dir = state_dir.to_owned();
    tokio::task::spawn_blocking(move || state::load(&dir))
        .await
        .unwrap_or_default()
}

async fn store(state_dir: &Path, position: state::Position) -> Result<(), String> {
    let dir = state_dir.to_owned();
    tokio::task::spawn_blocking(move || state::store(&dir, position))
        .await
        .map_err(|e| format!("storing the fleet position: {e}"))?
        .map_err(|e| format!("storing the fleet position in {}: {e}", state_dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The position on disk never claims what a crash could lose: not while the disk tier's
    /// scan holds purges in memory; at most every STORE_EVERY under load; at once when asked.
    #[tokio::test]
    async fn the_position_is_stored_only_when_it_cannot_be_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut progress = Progress::new(state::Position::default());
        progress.position.seq = 7;
        progress.dirty = true;
        progress.persist_if(dir.path(), false, true).await.unwrap();
        assert_eq!(state::load(dir.path()).seq, 0, "stored during the scan");
        assert!(progress.dirty);
        // The scan is done: the next try stores it (not before STORE_EVERY unless asked).
        progress.persist_if(dir.path(), true, false).await.unwrap();
        assert_eq!(
            state::load(dir.path()).seq,
            0,
            "stored again within STORE_EVERY"
        );
        progress.persist_if(dir.path(), true, true).await.unwrap();
        assert_eq!(state::load(dir.path()).seq, 7);
        assert!(!progress.dirty);
        progress.position.seq = 8;
        progress.dirty = true;
        progress.persist_if(dir.path(), true, false).await.unwrap();
        assert_eq!(state::load(dir.path()).seq, 7);
    }
}
