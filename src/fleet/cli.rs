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
    /// The operator's private key (PEM).
    pub key: PathBuf,
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
                stream: "ONAIR".to_owned(),
                subject: "onair".to_owned(),
                verify_keys: Vec::new(),
                sign_key: None,
                max_skew: Duration::from_secs(300),
                retention: Duration::from_secs(7 * 86_400),
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
        let pem =
            std::fs::read(&self.key).map_err(|e| format!("--key {}: {e}", self.key.display()))?;
        let key =
            SignKey::from_pem(&pem).map_err(|e| format!("--key {}: {e}", self.key.display()))?;
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(publisher.publish(scope, action))
}
