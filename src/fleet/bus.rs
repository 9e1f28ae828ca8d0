//! The NATS side: connecting with the configured credentials, the stream that holds the
//! operations, and publishing one. Used by the node's fleet service, its admin API and the
//! `onair fleet` CLI alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::{Fleet, FleetAuth};

/// How long a connection attempt may take before the caller moves on (the node keeps serving
/// and tries again; the CLI reports it).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The subject operations are published on.
pub fn ops_subject(cfg: &Fleet) -> String {
    format!("{}.ops", cfg.subject)
}

/// A client for `cfg`'s servers. `name` shows in the servers' connection lists.
pub async fn connect(cfg: &Fleet, name: &str) -> Result<async_nats::Client, String> {
    connect_counting(cfg, name, Arc::default()).await
}

/// [`connect`], counting in `connections` every time the client (re)connects: a reader of the
/// stream must start again from its own position after a reconnect, since what the server
/// held for it (an ordered consumer) may have gone with the server it was on.
pub async fn connect_counting(
    cfg: &Fleet,
    name: &str,
    connections: Arc<AtomicU64>,
) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .event_callback(move |event| {
            let connections = connections.clone();
            async move {
                if matches!(event, async_nats::Event::Connected) {
                    connections.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .connection_timeout(CONNECT_TIMEOUT)
        // After the first connection, the client reconnects by itself, with its backoff.
        .max_reconnects(None);
    match &cfg.auth {
        FleetAuth::None => {}
        FleetAuth::Token(token) => options = options.token(token.clone()),
        FleetAuth::NKey(seed) => options = options.nkey(seed.clone()),
        FleetAuth::Creds(creds) => {
            options = options
                .credentials(creds)
                .map_err(|e| format!("fleet.creds_file: {e}"))?
        }
    }
    if let Some(ca) = &cfg.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let servers: Vec<async_nats::ServerAddr> =
        cfg.servers.iter().filter_map(|s| s.parse().ok()).collect();
    tokio::time::timeout(CONNECT_TIMEOUT, options.connect(servers))
        .await
        .map_err(|_| format!("no NATS server answered within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot connect to NATS: {e}"))
}

/// The operation stream, created if it does not exist yet (the first node to connect creates
/// it; later ones find it; publishers never create it, see [`publish`]).
pub async fn stream(js: &jetstream::Context, cfg: &Fleet) -> Result<stream::Stream, String> {
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![ops_subject(cfg)],
            max_age: cfg.retention,
            storage: stream::StorageType::File,
            // An operation is small; a flood of them must not fill the servers' disks.
            max_message_size: i32::try_from(super::op::MAX_ENVELOPE).unwrap_or(i32::MAX),
            max_bytes: 1 << 30,
            // Full, the stream refuses new operations (the publisher is told) rather than drop
            // the oldest: a flood of junk must not push real purges out before slow nodes read
            // them.
            discard: stream::DiscardPolicy::New,
            num_replicas: cfg.replicas,
            // Only retention takes operations away: a bus user cannot empty the stream to make
            // every node drop its cache as if it had been away too long.
            deny_purge: true,
            deny_delete: true,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("JetStream stream {}: {e}", cfg.stream))?;
    // Made by something else with more subjects, its sequences would have holes a node takes
    // for lost operations.
    let subjects = stream
        .info()
        .await
        .map_err(|e| format!("JetStream stream {}: {e}", cfg.stream))?
        .config
        .subjects
        .clone();
    if subjects != [ops_subject(cfg)] {
        return Err(format!(
            "JetStream stream {} takes {subjects:?}, not only {}: it was made by something else",
            cfg.stream,
            ops_subject(cfg)
        ));
    }
    Ok(stream)
}

/// Publishes a signed operation; returns its stream sequence once the stream has stored it.
/// Publishers never create the stream (the nodes do, with their settings): an operation
/// published where no node reads would be lost without a word. One round trip: the server
/// says when no stream takes the subject, and the acknowledgement names the stream that did.
pub async fn publish(
    js: &jetstream::Context,
    cfg: &Fleet,
    envelope: Vec<u8>,
) -> Result<u64, String> {
    let ack = js
        .publish(ops_subject(cfg), envelope.into())
        .await
        .map_err(|e| format!("publish: {e}"))?
        .await
        .map_err(|e| match e.kind() {
            jetstream::context::PublishErrorKind::StreamNotFound => format!(
                "no stream {} takes {}: no node with this [fleet] has connected to the bus yet?",
                cfg.stream,
                ops_subject(cfg)
            ),
            _ => format!("publish not acknowledged: {e}"),
        })?;
    if ack.stream != cfg.stream {
        // Someone else's stream captures the subject: no node reads it there.
        return Err(format!(
            "stream {} stored it, not {}: the operation will reach no node",
            ack.stream, cfg.stream
        ));
    }
    Ok(ack.sequence)
}
