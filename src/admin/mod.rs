//! The admin API on `listen.admin`: health and readiness probes for orchestrators, status for
//! operators, and the operations that change state: reload, purge and attack mode.
//!
//! Every call but `/healthz` and `/readyz` needs `Authorization: Bearer <token>`, compared in
//! constant time (as SHA-256 hashes, against every token), before any body is read; each token
//! has scopes (`read`, `purge`, `operate`: [`scope_of`] says which a call needs). Without
//! tokens only the two probes answer. A wrong or missing token gets 401, a token without the
//! scope 403, and nothing changes. Every call that changes something, and every refused one, is
//! in the audit log ([`audit`]). At most
//! [`MAX_CONNECTIONS`] connections are served at once, each exchange within [`EXCHANGE`].

pub mod audit;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::cache::purge::PurgeRequest;
use crate::cache::EdgeCache;
use crate::config::{AdminScope, Attack, AttackMode};
use crate::fleet::link::LinkError;
use crate::fleet::op::{Action, Operation, Scope};
use crate::protect::attack::AttackState;
use crate::snapshot::Live;

/// Largest admin request body read (a purge of many URLs fits easily).
const MAX_BODY: usize = 1 << 20;
/// Admin connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Of which one address may hold at most this many: one misbehaving host on the internal
/// network cannot lock the operators out.
pub const MAX_CONNECTIONS_PER_IP: usize = 8;
/// The longest one admin exchange (head, body, answer) may take: a client trickling bytes
/// cannot hold one of the few connections for long.
pub const EXCHANGE: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the whole request body, refusing more than [`MAX_BODY`].
async fn read_body(
    session: &mut ServerSession,
) -> Result<Vec<u8>, (StatusCode, serde_json::Value)> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err((
                        StatusCode::PAYLOAD_TOO_LARGE,
                        json!({"error": "request body over 1 MiB"}),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("cannot read the body: {e}")}),
                ))
            }
        }
    }
}

/// The admin HTTP app.
pub struct AdminApp {
    live: Arc<Live>,
    cache: EdgeCache,
    fleet: Arc<crate::fleet::link::Link>,
}

impl AdminApp {
    pub fn new(live: Arc<Live>, cache: EdgeCache, fleet: Arc<crate::fleet::link::Link>) -> Self {
        AdminApp { live, cache, fleet }
    }

    async fn route(
        &self,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> (StatusCode, serde_json::Value) {
        match (method, path) {
            (&Method::GET | &Method::HEAD, "/healthz") => (
                StatusCode::OK,
                // The pid tells which process answers during a graceful upgrade.
                json!({"status": "ok", "pid": std::process::id()}),
            ),
            (&Method::GET | &Method::HEAD, "/readyz") => {
                (StatusCode::OK, json!({"status": "ready"}))
            }
            _ => {
                // Authorized by `response` before any body was read.
                match (method, path) {
                    (&Method::GET, "/status") => (StatusCode::OK, self.status()),
                    (&Method::POST, "/reload") => match self.live.reload().await {
                        Ok(version) => (
                            StatusCode::OK,
                            json!({"result": "ok", "config_version": version}),
                        ),
                        Err(errors) => (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            json!({
                                "result": "error",
                                "config_version": self.live.current().version,
                                "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                            }),
                        ),
                    },
                    (&Method::POST, "/purge") => self.purge(body).await,
                    (&Method::POST, "/attack-mode") => self.attack_mode(body).await,
                    (&Method::POST, "/release") => self.release(body).await,
                    (&Method::GET, "/release") => (
                        StatusCode::OK,
                        json!({ "releases": self.cache.releases.list() }),
                    ),
                    (&Method::GET, p) if p.starts_with("/release/") => {
                        match self.cache.releases.get(&p["/release/".len()..]) {
                            Some(entry) => {
                                let mut answer = json!(entry);
                                answer["warm"] = self
                                    .cache
                                    .releases
                                    .warm
                                    .report(&entry.spec.id, &entry.spec.warm);
                                (StatusCode::OK, answer)
                            }
                            None => (StatusCode::NOT_FOUND, json!({"error": "no such release"})),
                        }
                    }
                    (&Method::GET, "/fleet") => self.fleet_status(None).await,
                    (&Method::GET, p) if p.starts_with("/fleet/ops/") => {
                        match p["/fleet/ops/".len()..].parse::<u64>() {
                            Ok(seq) => self.fleet_status(Some(seq)).await,
                            Err(_) => (
                                StatusCode::BAD_REQUEST,
                                json!({"error": "expected /fleet/ops/SEQ, SEQ a stream sequence"}),
                            ),
                        }
                    }
                    (_, "/status" | "/reload" | "/purge" | "/attack-mode" | "/release") => (
                        StatusCode::METHOD_NOT_ALLOWED,
                        json!({"error": "method not allowed"}),
                    ),
                    _ => (
                        StatusCode::NOT_FOUND,
                        json!({"error": "no such admin call"}),
                    ),
                }
            }
        }
    }

    /// The name of the token the call carries, if it may make a call that needs `scope`.
    fn authorize(
        &self,
        session: &ServerSession,
        scope: AdminScope,
    ) -> Result<String, (Option<String>, StatusCode, serde_json::Value)> {
        let snapshot = self.live.current();
        let tokens = &snapshot.config.admin.tokens;
        if tokens.is_empty() {
            return Err((
                None,
                StatusCode::FORBIDDEN,
                json!({"error": "the admin API is disabled: set admin.token_file or admin.tokens"}),
            ));
        }
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let hash = ring::digest::digest(&ring::digest::SHA256, given.as_bytes());
        // Every token is compared, whichever matches: the time tells nothing.
        let mut found = None;
        for token in tokens {
            if bool::from(hash.as_ref().ct_eq(&token.hash[..])) {
                found = Some(token);
            }
        }
        match found {
            None => Err((
                None,
                StatusCode::UNAUTHORIZED,
                json!({"error": "missing or wrong bearer token"}),
            )),
            Some(token) if !token.scopes.allows(scope) => Err((
                Some(token.name.clone()),
                StatusCode::FORBIDDEN,
                json!({"error": format!(
                    "token {:?} may not do this: it needs the {:?} scope",
                    token.name,
                    scope.as_str()
                )}),
            )),
            Some(token) => Ok(token.name.clone()),
        }
    }

    /// `POST /purge`: `{"urls": [...]}`, `{"prefix": "..."}` or `{"tags": [...]}`, with an
    /// optional `"soft": true`, and an optional `"scope"` (`fleet`, `region:NAME`,
    /// `nodes:ID,ID`) that also publishes it to the fleet, signed with `fleet.sign_key`.
    async fn purge(&self, body: &[u8]) -> (StatusCode, serde_json::Value) {
        let (scope, rest) = match split_scope(body) {
            Ok(split) => split,
            Err(e) => return (StatusCode::BAD_REQUEST, json!({ "error": e })),
        };
        let request: PurgeRequest = match serde_json::from_value(rest) {
            Ok(r) => r,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("not a purge request: {e}")}),
                )
            }
        };
        let snapshot = self.live.current();
        let selector = match snapshot.purge_selector(&request) {
            Ok(selector) => selector,
            Err(e) => return (StatusCode::BAD_REQUEST, json!({ "error": e })),
        };
        let action = Action::Purge {
            urls: request.urls.clone(),
            prefix: request.prefix.clone(),
            tags: request.tags.clone(),
            soft: request.soft,
        };
        let published = match self.publish(scope, action, &snapshot, true).await {
            Ok(published) => published,
            Err(answer) => return answer,
        };
        let mut answer = json!({"soft": request.soft});
        if published.as_ref().is_none_or(|p| p.here) {
            // Here at once: this node does not wait for its own operation to come back.
            let report = self.cache.purge(&selector, request.soft).await;
            answer["purged"] = report.purged.into();
            answer["index_ready"] = report.index_ready.into();
        }
        if let Some(p) = published {
            p.add_to(&mut answer);
        }
        (StatusCode::OK, answer)
    }

    /// `POST /attack-mode`: `{"mode": "on" | "off" | "auto"}`. Overrides the file's mode
    /// until the next call or a restart. With `"scope"`, also published to the fleet.
    async fn attack_mode(&self, body: &[u8]) -> (StatusCode, serde_json::Value) {
        let (scope, rest) = match split_scope(body) {
            Ok(split) => split,
            Err(e) => return (StatusCode::BAD_REQUEST, json!({ "error": e })),
        };
        let text = rest.get("mode").and_then(|m| m.as_str()).unwrap_or("");
        let Some(mode) = AttackMode::parse(text) else {
            return (
                StatusCode::BAD_REQUEST,
                json!({"error": "expected {\"mode\": \"on\" | \"off\" | \"auto\"}"}),
            );
        };
        let snap = self.live.current();
        let action = Action::AttackMode {
            mode: mode.as_str().to_owned(),
        };
        // Fleet-wide, this node switches as every other one does: when the fleet service reads
        // the operation, in the stream's order. Switching here first could leave it on the
        // loser of two calls racing, while the rest of the fleet follows the stream.
        let published = match self.publish(scope, action, &snap, false).await {
            Ok(published) => published,
            Err(answer) => return answer,
        };
        let attack = self.live.attack();
        let read = match &published {
            None => {
                attack.set(mode, &snap.config.protect.attack, std::time::Instant::now());
                None
            }
            Some(p) if p.here => Some(self.fleet.wait_read(p.seq, FLEET_READ_WAIT).await),
            Some(_) => None,
        };
        let mut answer = attack_json(attack, &snap.config.protect.attack);
        if let Some(p) = published {
            p.add_to(&mut answer);
        }
        if let Some(read) = read {
            // False: the bus has it and the service will get to it; `active` shows the mode
            // from before.
            answer["read_here"] = read.into();
        }
        (StatusCode::OK, answer)
    }

    /// `POST /release`: schedules (or changes) a release, `{"at", "embargo": {"urls",
    /// "prefix"}, "warm", "purge", "id"?}`, or calls one off, `{"cancel": ID}`; with `"scope"`
    /// also published to the fleet. Answers the release's `id` (and the operation's `seq`).
    async fn release(&self, body: &[u8]) -> (StatusCode, serde_json::Value) {
        let (scope, mut rest) = match split_scope(body) {
            Ok(split) => split,
            Err(e) => return (StatusCode::BAD_REQUEST, json!({ "error": e })),
        };
        let cancel = rest
            .as_object_mut()
            .and_then(|fields| fields.remove("cancel"));
        let action = match cancel {
            Some(serde_json::Value::String(id)) => Action::ReleaseCancel { id },
            Some(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"error": "\"cancel\" takes a release id"}),
                )
            }
            None => {
                if let Some(fields) = rest.as_object_mut() {
                    fields
                        .entry("id")
                        .or_insert_with(|| crate::release::Spec::new_id().into());
                }
                let spec: crate::release::Spec = match serde_json::from_value(rest) {
                    Ok(spec) => spec,
                    Err(e) => {
                        return (
                            StatusCode::BAD_REQUEST,
                            json!({"error": format!("not a release: {e}")}),
                        )
                    }
                };
                let checked = match spec.check_new(crate::release::now_ms()) {
                    Ok(checked) => checked,
                    Err(e) => return (StatusCode::BAD_REQUEST, json!({ "error": e })),
                };
                // A host no site answers here would hold nothing back: a typo, most likely.
                let snapshot = self.live.current();
                let hosts = checked.urls.iter().map(|(host, _, _)| host);
                if let Some(host) = hosts
                    .chain(checked.prefix.iter().map(|(host, _, _)| host))
                    .find(|host| snapshot.hosts.site_for(host).is_none())
                {
                    return (
                        StatusCode::BAD_REQUEST,
                        json!({"error": format!("no site here answers for {host:?}")}),
                    );
                }
                Action::Release(spec)
            }
        };
        let snapshot = self.live.current();
        let published = match self.publish(scope, action.clone(), &snapshot, true).await {
            Ok(published) => published,
            Err(answer) => return answer,
        };
        // Ordered against the release's time by when it was issued (see `release`).
        let issued = published
            .as_ref()
            .map_or_else(crate::release::now_ms, |p| p.op.issued_at);
        let mut answer = json!({});
        if published.as_ref().is_none_or(|p| p.here) {
            // Here at once, like a purge: this node does not wait for the bus to bring it back.
            let done = match &action {
                Action::Release(spec) => {
                    let seq = published.as_ref().map(|p| p.seq);
                    crate::release::hold(&self.cache, &snapshot, spec.clone(), seq, issued)
                        .await
                        .map(str::to_owned)
                }
                Action::ReleaseCancel { id } => {
                    crate::release::call_off(&self.cache, &snapshot, id, issued)
                        .await
                        .map(|()| "cancelled".to_owned())
                }
                _ => Ok(String::new()),
            };
            match done {
                Ok(what) => answer["result"] = what.into(),
                Err(e) if published.is_none() => {
                    return (StatusCode::CONFLICT, json!({ "error": e }))
                }
                Err(e) => answer["result"] = e.into(),
            }
        }
        if let Some(p) = &published {
            p.add_to(&mut answer);
            answer["op_id"] = p.op.id.clone().into();
        }
        answer["id"] = match &action {
            Action::Release(spec) => spec.id.clone().into(),
            Action::ReleaseCancel { id } => id.clone().into(),
            _ => serde_json::Value::Null,
        };
        (StatusCode::OK, answer)
    }

    /// `GET /fleet` (every node's heartbeat), or `GET /fleet/ops/SEQ` (which nodes applied
    /// operation SEQ); 503 while the bus is out of reach.
    async fn fleet_status(&self, op: Option<u64>) -> (StatusCode, serde_json::Value) {
        if self.live.current().config.fleet.is_none() {
            return (
                StatusCode::NOT_FOUND,
                json!({"error": "this node has no [fleet]"}),
            );
        }
        match self.fleet.heartbeats().await {
            Ok(beats) => {
                let now = crate::fleet::op::unix_ms(std::time::SystemTime::now());
                let answer = match op {
                    None => crate::fleet::status::fleet_json(&beats, now),
                    Some(seq) => crate::fleet::status::op_json(&beats, seq, now),
                };
                (StatusCode::OK, answer)
            }
            Err(LinkError::NotAllowed(why)) => (StatusCode::FORBIDDEN, json!({ "error": why })),
            Err(LinkError::Down(why)) => (StatusCode::SERVICE_UNAVAILABLE, json!({ "error": why })),
        }
    }

    /// Publishes `action` to the fleet when the call has a scope: None for a local call; the
    /// answer to give when it cannot be published (403: not allowed here, 503: bus down).
    /// `applies_here`: the caller applies it on this node itself (when in scope), so the
    /// fleet service does not again when the bus brings it back.
    async fn publish(
        &self,
        scope: Option<Scope>,
        action: Action,
        snapshot: &crate::snapshot::Snapshot,
        applies_here: bool,
    ) -> Result<Option<Published>, (StatusCode, serde_json::Value)> {
        let Some(scope) = scope else {
            return Ok(None);
        };
        let node = &snapshot.config.node;
        let here = scope.includes(&node.id, &node.region);
        let op = Operation::new(scope, action);
        if here && applies_here {
            // Before it is published: the bus may bring it back before this call applies it.
            self.fleet.applied_here(&op.id);
        }
        let published = self
            .fleet
            .publish(snapshot.config.fleet.as_ref(), &op)
            .await;
        if published.is_err() && here && applies_here {
            self.fleet.was_applied_here(&op.id);
        }
        match published {
            Ok(seq) => Ok(Some(Published { seq, op, here })),
            Err(LinkError::NotAllowed(why)) => {
                Err((StatusCode::FORBIDDEN, json!({ "error": why })))
            }
            Err(LinkError::Down(why)) => {
                Err((StatusCode::SERVICE_UNAVAILABLE, json!({ "error": why })))
            }
        }
    }

    fn status(&self) -> serde_json::Value {
        let snap = self.live.current();
        let cfg = &snap.config;
        let pools: Vec<_> = snap
            .pools
            .iter()
            .map(|p| {
                json!({
                    "name": p.name(),
                    "healthy": p.any_up(),
                    "inflight": p.limiter.inflight(),
                    "max_inflight": p.config.max_inflight,
                    "origins": p.origins.iter().map(|o| json!({
                        "name": o.label,
                        "addr": cfg.admin.origin_addresses.then(|| o.addr.to_string()),
                        "region": o.region,
                        "tier": o.tier,
                        "weight": o.weight,
                        "up": o.health.is_up(),
                        "state": o.health.describe(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let memory = self.cache.memory;
        let disk = self.cache.store.disk.as_ref().map(|d| {
            let (objects, bytes) = d.usage();
            json!({
                "objects": objects,
                "bytes": bytes,
                "admissions_paused": d.admissions_paused(std::time::Instant::now()),
            })
        });
        json!({
            "node": cfg.node.id,
            "region": cfg.node.region,
            "version": env!("CARGO_PKG_VERSION"),
            "config_version": snap.version,
            "sites": cfg.sites.iter().map(|s| json!({"name": s.name, "hosts": s.hosts})).collect::<Vec<_>>(),
            "pools": pools,
            "cache": {
                "memory": {"objects": memory.objects(), "bytes": memory.size()},
                "disk": disk,
            },
            "attack": attack_json(self.live.attack(), &cfg.protect.attack),
        })
    }
}

/// Serves an app's connections, at most `cap` at once and each exchange within [`EXCHANGE`]
/// (the admin API: few operators, and no reason for a slow or idle client to hold a slot).
pub struct Capped<A> {
    inner: Arc<A>,
    open: std::sync::atomic::AtomicUsize,
    cap: usize,
    per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl<A> Capped<A> {
    fn per_ip(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        match self.per_ip.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Counts a connection from `ip`; false when that address holds its share already.
    fn enter(&self, ip: Option<std::net::IpAddr>) -> bool {
        let Some(ip) = ip else { return true };
        let mut per_ip = self.per_ip();
        let n = per_ip.entry(ip).or_default();
        if *n >= MAX_CONNECTIONS_PER_IP {
            tracing::warn!(%ip, "admin connection refused: too many from this address");
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: Option<std::net::IpAddr>) {
        let Some(ip) = ip else { return };
        let mut per_ip = self.per_ip();
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    pub fn new(inner: A, cap: usize) -> Self {
        Capped {
            inner: Arc::new(inner),
            open: std::sync::atomic::AtomicUsize::new(0),
            cap,
            per_ip: Default::default(),
        }
    }
}

#[async_trait]
impl<A: pingora::apps::ServerApp + Send + Sync + 'static> pingora::apps::ServerApp for Capped<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: pingora::protocols::Stream,
        shutdown: &pingora::server::ShutdownWatch,
    ) -> Option<pingora::protocols::Stream> {
        use std::sync::atomic::Ordering;
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        if !self.enter(ip) {
            return None;
        }
        if self.open.fetch_add(1, Ordering::SeqCst) >= self.cap {
            self.open.fetch_sub(1, Ordering::SeqCst);
            self.leave(ip);
            tracing::warn!(cap = self.cap, "admin connection refused: too many open");
            return None;
        }
        let served = tokio::time::timeout(EXCHANGE, self.inner.process_new(stream, shutdown)).await;
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.leave(ip);
        served.ok().flatten()
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// A fleet operation an admin call published.
struct Published {
    seq: u64,
    op: Operation,
    /// The scope includes this node.
    here: bool,
}

impl Published {
    /// The operation's `seq`, `id` and `scope`, next to the local result.
    fn add_to(&self, answer: &mut serde_json::Value) {
        answer["seq"] = self.seq.into();
        answer["id"] = self.op.id.clone().into();
        answer["scope"] = self.op.scope.to_string().into();
    }
}

/// Takes an optional `"scope"` out of a JSON object body; the rest is the call's own fields.
fn split_scope(body: &[u8]) -> Result<(Option<Scope>, serde_json::Value), String> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Some(fields) = value.as_object_mut() else {
        return Err("expected a JSON object".to_owned());
    };
    let scope = match fields.remove("scope") {
        None => None,
        Some(serde_json::Value::String(text)) => Some(Scope::parse(&text)?),
        Some(_) => {
            return Err("\"scope\" must be a string: fleet, region:NAME or nodes:ID,ID".to_owned())
        }
    };
    Ok((scope, value))
}

/// The scope an admin call needs: reading for `GET`s, `purge` for purges, `operate` for the
/// rest (attack mode, releases, reload).
pub fn scope_of(method: &Method, path: &str) -> AdminScope {
    match (method, path) {
        (&Method::GET | &Method::HEAD, _) => AdminScope::Read,
        (_, "/purge") => AdminScope::Purge,
        _ => AdminScope::Operate,
    }
}

impl AdminApp {
    /// Counts the call, and appends it to the audit log if it changes something or was
    /// refused (reads that went through are only counted).
    async fn audit(
        &self,
        session: &ServerSession,
        method: &Method,
        path: &str,
        who: Option<&str>,
        status: StatusCode,
        answer: &serde_json::Value,
    ) {
        let outcome = match status {
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            s if s.is_success() => "ok",
            _ => "error",
        };
        crate::metrics::METRICS.admin_call(outcome);
        let refused = matches!(outcome, "unauthorized" | "forbidden");
        if scope_of(method, path) == AdminScope::Read && !refused {
            return;
        }
        if refused && !audit::refusal_allowed(crate::release::now_ms() / 1000) {
            // Anyone who reaches the port can be refused: past a few a second they are only
            // counted, so that nobody fills the disk (or its fsyncs) from outside.
            return;
        }
        let result = match answer.get("error") {
            Some(serde_json::Value::String(e)) => e.clone(),
            _ if status.is_success() => "ok".to_owned(),
            _ => format!("{} {}", status.as_u16(), outcome),
        };
        let from = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or_else(|| "-".to_owned(), |a| a.ip().to_string());
        let state_dir = self.live.current().config.node.state_dir.clone();
        audit::record(
            &state_dir,
            &audit::Entry {
                time: crate::access_log::now_rfc3339(),
                who: who.unwrap_or("-"),
                from,
                method: method.as_str(),
                path: audit::shortened(path),
                status: status.as_u16(),
                result,
            },
        )
        .await;
    }
}

/// How long a fleet-scoped `POST /attack-mode` waits for this node's fleet service to read the
/// operation back from the bus before it answers.
const FLEET_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Attack mode as `/status` and `/attack-mode` show it.
fn attack_json(state: &AttackState, config: &Attack) -> serde_json::Value {
    let r = state.report(config);
    json!({
        "mode": r.mode.as_str(),
        "active": r.active,
        "set_by": if r.overridden { "admin" } else { "config" },
        "rps": r.rps,
    })
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        let probe = matches!(path.as_str(), "/healthz" | "/readyz");
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let authorized = if probe {
            Ok(String::new())
        } else {
            self.authorize(session, scope_of(&method, &path))
        };
        let who = match &authorized {
            Ok(name) => Some(name.clone()),
            Err((name, _, _)) => name.clone(),
        };
        let (status, body) = if let Err((_, status, answer)) = authorized {
            // No body is read for a caller without the token; the connection closes instead.
            session.set_keepalive(None);
            (status, answer)
        } else if declared.is_some_and(|l| l > MAX_BODY as u64) {
            session.set_keepalive(None);
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "request body over 1 MiB"}),
            )
        } else {
            match read_body(session).await {
                Ok(request_body) => self.route(&method, &path, &request_body).await,
                Err(answer) => answer,
            }
        };
        if !probe {
            self.audit(session, &method, &path, who.as_deref(), status, &body)
                .await;
        }
        let mut body = serde_json::to_vec_pretty(&body).unwrap_or_default();
        body.push(b'\n');
        let mut resp = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, body.len())
            .header(http::header::CACHE_CONTROL, "no-store");
        if status == StatusCode::UNAUTHORIZED {
            resp = resp.header(
                http::header::WWW_AUTHENTICATE,
                "Bearer realm=\"onair admin\"",
            );
        }
        resp.body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
