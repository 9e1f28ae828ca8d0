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
    /// The operator's NATS user (an NKey seed file), over the config's credentials.
    pub nkey: Option<PathBuf>,
}

impl Publisher {
    /// The bus settings: the config's `[fleet]`, or the defaults, with `servers` over them.
    fn fleet(&self) -> Result<Fleet, String> {
        let mut fleet = match &self.config {
            Some(path) => Config::load(path, &Overrides::default())
                .map_err(|e| format!("{}: {e}", path.display()))?
                .fleet
                .ok_or_else(|| format!("{} has no [fleet] section", path.display()))?,
            None => Fleet::publisher(Vec::new()),
        };
        if !self.servers.is_empty() {
            fleet.servers = self.servers.clone();
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| format!("--nkey {}: {e}", path.display()))?;
            let seed = seed.trim();
            if !seed.starts_with("SU") || nkeys::KeyPair::from_seed(seed).is_err() {
                return Err(format!("--nkey {}: not an NKey user seed", path.display()));
            }
            fleet.auth = FleetAuth::NKey(seed.to_owned());
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
        let mut answer = serde_json::json!({
            "seq": seq,
            "id": op.id,
            "scope": op.scope.to_string(),
            "kind": op.action.kind(),
        });
        if let Action::Release(spec) = &op.action {
            answer["release"] = spec.id.clone().into();
            answer["at"] = spec.at.clone().into();
        }
        Ok(answer)
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
        Action::Release(spec) => {
            spec.check_new(crate::release::now_ms())?;
        }
        Action::ReleaseCancel { .. } => {}
    }
    runtime()?.block_on(publisher.publish(scope, action))
}

/// Every node's last heartbeat, read from the bus.
async fn heartbeats(publisher: &Publisher) -> Result<Vec<super::status::Heartbeat>, String> {
    let fleet = publisher.fleet()?;
    let client = super::bus::connect(&fleet, "onair-cli").await?;
    let js = async_nats::jetstream::new(client);
    let store = super::status::store(&js, &fleet).await?;
    let mut stream = js
        .get_stream(&fleet.stream)
        .await
        .map_err(|e| format!("stream {}: {e}", fleet.stream))?;
    super::status::all(&store, &mut stream).await
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

/// `onair fleet nkey --out NAME`: a new NATS user key; NAME.nk holds the seed (mode 0600,
/// never overwritten), NAME.pub the public key, which is returned.
pub fn nkey(out: &std::path::Path) -> Result<String, String> {
    let pair = nkeys::KeyPair::new_user();
    let seed = pair.seed().map_err(|e| format!("seed: {e}"))?;
    let public = pair.public_key();
    crate::keys::write_pair(
        out,
        (".nk", &format!("{seed}\n")),
        (".pub", &format!("{public}\n")),
    )?;
    Ok(public)
}
