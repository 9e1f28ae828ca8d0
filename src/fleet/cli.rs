//! `onair fleet ...`: an operator signs an operation with their key and publishes it to the bus
//! directly. No node needs to be up, and no node's admin token is involved: the signature is
//! the authority.

use std::path::PathBuf;
use std::time::Duration;

use super::keys::SignKey;
use super::op::{Action, Operation, Scope};
use crate::config::{Config, Fleet, FleetAuth, Overrides};

/// Where to publish and with which key.
pub struct Publisher {
    /// A node's config file: its `[fleet]` gives servers, credentials, stream and subject.
    pub config: Option<PathBuf>,
    /// NATS URLs, instead of the config's.
    pub servers: Vec<String>,
    /// The operator's private key (PEM): needed to publish, not to look.
    pub key: Option<PathBuf>,
}

impl Publisher {
    /// The bus settings: the config's `[fleet]`, or the defaults, with `servers` over them.
    fn fleet(&self) -> Result<Fleet, String> {
        let mut fleet = match &self.config {
            Some(path) => Config::load(path, &Overrides::default())
                .map_err(|e| format!("{}: {e}", path.display()))?
                .fleet
                .ok_or_else(|| format!("{} has no [fleet] section", path.display()))?,
            None => Fleet {
                servers: Vec::new(),
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
            },
        };
        if !self.servers.is_empty() {
            fleet.servers = self.servers.clone();
        }
        if fleet.servers.is_empty() {
            return Err("no NATS server: give --servers or a config (-c) with [fleet]".to_owned());
        }
        Ok(fleet)
    }

    /// Signs `action` for `scope`, publishes it, and returns `{"seq", "id", "scope", "kind"}`.
    pub async fn publish(&self, scope: Scope, action: Action) -> Result<serde_json::Value, String> {
        let fleet = self.fleet()?;
        let path = self
            .key
            .as_ref()
            .ok_or("--key FILE is required (the operator's private key)")?;
        let pem = std::fs::read(path).map_err(|e| format!("--key {}: {e}", path.display()))?;
        let key = SignKey::from_pem(&pem).map_err(|e| format!("--key {}: {e}", path.display()))?;
        let op = Operation::new(scope, action);
        let client = super::bus::connect(&fleet, "onair-cli").await?;
        let js = async_nats::jetstream::new(client);
        let seq = super::bus::publish(&js, &fleet, op.sign(&key)).await?;
        Ok(serde_json::json!({
            "seq": seq,
            "id": op.id,
            "scope": op.scope.to_string(),
            "kind": op.action.kind(),
        }))
    }
}

/// Checks the operation like a node would, then publishes it, on a runtime of its own.
pub fn run(
    publisher: Publisher,
    scope: Scope,
    action: Action,
) -> Result<serde_json::Value, String> {
    // Refuse here what every node would refuse, before anything is published.
    match &action {
        Action::Purge { .. } => {
            if let Some(request) = action.purge_request() {
                request.selector()?;
            }
        }
        Action::AttackMode { mode } => {
            crate::config::AttackMode::parse(mode)
                .ok_or_else(|| format!("{mode:?} is not on, off or auto"))?;
        }
    }
    runtime()?.block_on(publisher.publish(scope, action))
}

/// Every node's last heartbeat, read from the bus.
async fn heartbeats(publisher: &Publisher) -> Result<Vec<super::status::Heartbeat>, String> {
    let fleet = publisher.fleet()?;
    let client = super::bus::connect(&fleet, "onair-cli").await?;
    let js = async_nats::jetstream::new(client);
    let store = super::status::store(&js, &fleet).await?;
    super::status::all(&store).await
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

/// `onair fleet status`: the fleet as a table.
pub fn status(publisher: &Publisher) -> Result<String, String> {
    let beats = runtime()?.block_on(heartbeats(publisher))?;
    if beats.is_empty() {
        return Ok("no node has reported to this bus yet\n".to_owned());
    }
    Ok(super::status::table(
        &beats,
        super::op::unix_ms(std::time::SystemTime::now()),
    ))
}

/// `onair fleet wait SEQ`: until every node that is not silent has applied operation `seq`,
/// or `timeout`; the last answer either way (`done` says which).
pub fn wait(
    publisher: &Publisher,
    seq: u64,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    runtime()?.block_on(async {
        let started = std::time::Instant::now();
        loop {
            let beats = heartbeats(publisher).await?;
            let now = super::op::unix_ms(std::time::SystemTime::now());
            let answer = super::status::op_json(&beats, seq, now);
            if answer["done"] == true || started.elapsed() >= timeout {
                return Ok(answer);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}
