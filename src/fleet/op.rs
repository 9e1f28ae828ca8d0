//! Fleet operations: what the operators ask of every node (purge, attack mode), as a small JSON
//! document signed with their Ed25519 key, and how a node decides whether to act on one.
//!
//! On the bus an operation travels as an envelope `{"v": 1, "payload": B64, "sig": B64}`: the
//! payload is the operation's JSON bytes exactly as signed, so no node ever has to re-encode
//! JSON the same way the signer did. The signature covers [`CONTEXT`] then the payload, so a
//! signature made for anything else with the same key can never pass for an operation.
//!
//! A node acts on an operation only if it is signed by one of `fleet.verify_key`, was issued
//! within `fleet.max_skew` of when the bus stored it (an old operation published again is
//! refused), and its id has not been seen within that window (the same operation published
//! twice acts once). Whoever gets hold of the bus can delay or drop operations, not forge one.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::keys::{SignKey, VerifyKey};
use crate::cache::purge::PurgeRequest;

/// What every signature covers before the payload (domain separation).
pub const CONTEXT: &[u8] = b"onair fleet operation v1\n";

/// Largest envelope a node reads: a purge of a few thousand URLs fits.
pub const MAX_ENVELOPE: usize = 1 << 20;

/// One operation, as signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// Random, 128 bits in hex: names the operation in logs and replies, and catches a replay.
    pub id: String,
    /// When the operator issued it, UNIX milliseconds.
    pub issued_at: u64,
    /// Which nodes it is for: `fleet`, `region:NAME` or `nodes:ID,ID`.
    pub scope: Scope,
    pub action: Action,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    /// Everything `POST /purge` takes.
    Purge {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        urls: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tags: Vec<String>,
        #[serde(default)]
        soft: bool,
    },
    /// `on`, `off` or `auto`, as `POST /attack-mode` takes it.
    AttackMode { mode: String },
    /// A scheduled release (added, or changed while it is pending).
    Release(crate::release::Spec),
    /// A pending release called off.
    ReleaseCancel { id: String },
}

impl Action {
    /// The `kind` label of `onair_fleet_ops_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Purge { .. } => "purge",
            Action::AttackMode { .. } => "attack-mode",
            Action::Release(_) => "release",
            Action::ReleaseCancel { .. } => "release-cancel",
        }
    }

    /// A purge as the admin API's request, for the same checks and URL shaping.
    pub fn purge_request(&self) -> Option<PurgeRequest> {
        match self {
            Action::Purge {
                urls,
                prefix,
                tags,
                soft,
            } => Some(PurgeRequest {
                urls: urls.clone(),
                prefix: prefix.clone(),
                tags: tags.clone(),
                soft: *soft,
            }),
            Action::AttackMode { .. } | Action::Release(_) | Action::ReleaseCancel { .. } => None,
        }
    }
}

/// Which nodes an operation is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Fleet,
    Region(String),
    Nodes(Vec<String>),
}

impl Scope {
    /// `fleet`, `region:NAME` or `nodes:ID,ID,...`.
    pub fn parse(text: &str) -> Result<Scope, String> {
        let bad = || format!("{text:?} is not a scope: fleet, region:NAME or nodes:ID,ID");
        if text == "fleet" {
            return Ok(Scope::Fleet);
        }
        if let Some(region) = text.strip_prefix("region:") {
            return (!region.is_empty())
                .then(|| Scope::Region(region.to_owned()))
                .ok_or_else(bad);
        }
        if let Some(nodes) = text.strip_prefix("nodes:") {
            let ids: Vec<String> = nodes
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect();
            return (!ids.is_empty())
                .then_some(Scope::Nodes(ids))
                .ok_or_else(bad);
        }
        Err(bad())
    }

    /// Whether a node with this id and region is in scope.
    pub fn includes(&self, node: &str, region: &str) -> bool {
        match self {
            Scope::Fleet => true,
            Scope::Region(r) => r == region,
            Scope::Nodes(ids) => ids.iter().any(|id| id == node),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Fleet => f.write_str("fleet"),
            Scope::Region(r) => write!(f, "region:{r}"),
            Scope::Nodes(ids) => write!(f, "nodes:{}", ids.join(",")),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Scope::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    v: u32,
    payload: String,
    sig: String,
}

impl Operation {
    /// A new operation with a fresh id, issued now.
    pub fn new(scope: Scope, action: Action) -> Operation {
        let id: [u8; 16] = rand::random();
        Operation {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            issued_at: unix_ms(std::time::SystemTime::now()),
            scope,
            action,
        }
    }

    /// The envelope to publish: the operation signed with `key`.
    pub fn sign(&self, key: &SignKey) -> Vec<u8> {
        // Serializing plain data to a Vec cannot fail.
        let payload = serde_json::to_vec(self).unwrap_or_default();
        let mut message = CONTEXT.to_vec();
        message.extend_from_slice(&payload);
        let b64 = base64::engine::general_purpose::STANDARD;
        let envelope = Envelope {
            v: 1,
            payload: b64.encode(&payload),
            sig: b64.encode(key.sign(&message)),
        };
        serde_json::to_vec(&envelope).unwrap_or_default()
    }
}

/// Why an operation was not acted on: the `result` label of `onair_fleet_ops_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not an envelope, or its payload is not an operation this node knows.
    Malformed,
    /// No signature.
    Unsigned,
    /// A signature none of the operators' keys made.
    Forged,
    /// Issued further than `max_skew` from when the bus stored it.
    Stale,
    /// Its id was seen already.
    Replayed,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Unsigned => "unsigned",
            Refusal::Forged => "forged",
            Refusal::Stale => "stale",
            Refusal::Replayed => "replayed",
        }
    }
}

/// The ids acted on recently, and the newest issue time acted on.
///
/// The bus's metadata (when it stored a message) is not signed: whoever runs a NATS server
/// could make an old operation look new. What is signed is the issue time, and operations are
/// stored in order, each within `max_skew` of its storing: so no genuine operation after one
/// issued at `newest` was issued before `newest - 2 * max_skew`. Anything older is refused as
/// stale whatever the bus says; `newest` outlives a restart in the node's position. Ids are
/// kept only inside that window (anything older is refused anyway), so the set stays as small
/// as the operators' own rate, and expires in issue-time order at O(log n) per operation.
#[derive(Debug, Default)]
pub struct Seen {
    ids: HashMap<String, u64>,
    by_time: BinaryHeap<Reverse<(u64, String)>>,
    newest: u64,
}

impl Seen {
    /// Knows that operations up to `newest` (UNIX ms) were acted on (before a restart).
    pub fn raise(&mut self, newest: u64) {
        self.newest = self.newest.max(newest);
    }

    /// The newest issue time acted on (UNIX ms; 0: none).
    pub fn newest(&self) -> u64 {
        self.newest
    }

    /// Remembers `id` (issued at `issued_at` ms); the refusal when it is a replay, or older
    /// than any genuine operation after the newest one seen can be.
    fn insert(&mut self, id: &str, issued_at: u64, window_ms: u64) -> Result<(), Refusal> {
        let span = window_ms.saturating_mul(2);
        if issued_at.saturating_add(span) < self.newest {
            return Err(Refusal::Stale);
        }
        if self.ids.contains_key(id) {
            return Err(Refusal::Replayed);
        }
        self.newest = self.newest.max(issued_at);
        self.ids.insert(id.to_owned(), issued_at);
        self.by_time.push(Reverse((issued_at, id.to_owned())));
        while let Some(Reverse((at, _))) = self.by_time.peek() {
            if at.saturating_add(span) >= self.newest {
                break;
            }
            if let Some(Reverse((_, old))) = self.by_time.pop() {
                self.ids.remove(&old);
            }
        }
        Ok(())
    }
}

/// Checks an envelope the bus stored at `stored_at` (UNIX ms), read by a node whose clock says
/// `now`, and returns the operation to act on, or why not.
pub fn verify(
    envelope: &[u8],
    keys: &[VerifyKey],
    stored_at: u64,
    now: u64,
    max_skew: Duration,
    seen: &mut Seen,
) -> Result<Operation, Refusal> {
    if envelope.len() > MAX_ENVELOPE {
        return Err(Refusal::Malformed);
    }
    let envelope: Envelope = serde_json::from_slice(envelope).map_err(|_| Refusal::Malformed)?;
    if envelope.v != 1 {
        return Err(Refusal::Malformed);
    }
    if envelope.sig.is_empty() {
        return Err(Refusal::Unsigned);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64
        .decode(envelope.payload.as_bytes())
        .map_err(|_| Refusal::Malformed)?;
    let sig = b64
        .decode(envelope.sig.as_bytes())
        .map_err(|_| Refusal::Forged)?;
    let mut message = CONTEXT.to_vec();
    message.extend_from_slice(&payload);
    if !keys.iter().any(|k| k.verifies(&message, &sig)) {
        return Err(Refusal::Forged);
    }
    // Signed by an operator: only now is the payload worth parsing.
    let op: Operation = serde_json::from_slice(&payload).map_err(|_| Refusal::Malformed)?;
    let window_ms = u64::try_from(max_skew.as_millis()).unwrap_or(u64::MAX);
    // Issued too far from when the bus stored it, or well after this node's own now (twice
    // the window: the operator's clock and this node's may each be off by one): an operation
    // from the future would raise `newest` and shut out genuine ones until then.
    if op.issued_at.abs_diff(stored_at) > window_ms
        || op.issued_at > now.saturating_add(window_ms.saturating_mul(2))
    {
        return Err(Refusal::Stale);
    }
    seen.insert(&op.id, op.issued_at, window_ms)?;
    Ok(op)
}

/// UNIX milliseconds of `t` (0 before 1970).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::super::keys::tests::{PRIVATE_PEM, PUBLIC_PEM};
    use super::*;

    fn keys() -> (SignKey, Vec<VerifyKey>) {
        (
            SignKey::from_pem(PRIVATE_PEM.as_bytes()).unwrap(),
            vec![VerifyKey::from_pem(PUBLIC_PEM.as_bytes()).unwrap()],
        )
    }

    fn purge_tags(tags: &[&str]) -> Action {
        Action::Purge {
            urls: vec![],
            prefix: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            soft: false,
        }
    }

    const SKEW: Duration = Duration::from_secs(300);

    #[test]
    fn a_signed_operation_verifies_once() {
        let (sign, verify_keys) = keys();
        let op = Operation::new(Scope::Region("hn".into()), purge_tags(&["home"]));
        let env = op.sign(&sign);
        let mut seen = Seen::default();
        let got = verify(
            &env,
            &verify_keys,
            op.issued_at + 40,
            op.issued_at,
            SKEW,
            &mut seen,
        )
        .unwrap();
        assert_eq!(got, op);
        assert_eq!(got.action.kind(), "purge");
        assert!(got.scope.includes("edge-hn-1", "hn"));
        assert!(!got.scope.includes("edge-hcm-1", "hcm"));
        // The same envelope again (published twice): acted on once.
        assert_eq!(
            verify(
                &env,
                &verify_keys,
                op.issued_at + 50,
                op.issued_at,
                SKEW,
                &mut seen
            ),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn forged_unsigned_stale_and_malformed_are_refused() {
        let (sign, verify_keys) = keys();
        let mut seen = Seen::default();
        let op = Operation::new(Scope::Fleet, purge_tags(&["home"]));
        let now = op.issued_at;
        // Another key.
        let other =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(other.as_ref())
        );
        let intruder = SignKey::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(
            verify(&op.sign(&intruder), &verify_keys, now, now, SKEW, &mut seen),
            Err(Refusal::Forged)
        );
        // A payload changed after signing.
        let env = op.sign(&sign);
        let mut parsed: serde_json::Value = serde_json::from_slice(&env).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut changed = op.clone();
        changed.action = purge_tags(&["sport"]);
        parsed["payload"] = b64.encode(serde_json::to_vec(&changed).unwrap()).into();
        let tampered = serde_json::to_vec(&parsed).unwrap();
        assert_eq!(
            verify(&tampered, &verify_keys, now, now, SKEW, &mut seen),
            Err(Refusal::Forged)
        );
        // No signature.
        parsed["sig"] = "".into();
        let unsigned = serde_json::to_vec(&parsed).unwrap();
        assert_eq!(
            verify(&unsigned, &verify_keys, now, now, SKEW, &mut seen),
            Err(Refusal::Unsigned)
        );
        // Issued an hour before the bus stored it: an old operation published again.
        assert_eq!(
            verify(&env, &verify_keys, now + 3_600_000, now, SKEW, &mut seen),
            Err(Refusal::Stale)
        );
        for junk in [
            &b"{}"[..],
            b"not json",
            b"{\"v\":2,\"payload\":\"\",\"sig\":\"x\"}",
        ] {
            assert_eq!(
                verify(junk, &verify_keys, now, now, SKEW, &mut seen),
                Err(Refusal::Malformed)
            );
        }
        // Refused ones were not remembered: the real one still acts.
        assert!(verify(&env, &verify_keys, now, now, SKEW, &mut seen).is_ok());
    }

    #[test]
    fn an_unknown_kind_signed_by_an_operator_is_malformed_not_applied() {
        let (sign, verify_keys) = keys();
        let payload = br#"{"id":"ab","issued_at":1,"scope":"fleet","action":{"kind":"freeze"}}"#;
        let mut message = CONTEXT.to_vec();
        message.extend_from_slice(payload);
        let b64 = base64::engine::general_purpose::STANDARD;
        let env = serde_json::json!({
            "v": 1,
            "payload": b64.encode(payload),
            "sig": b64.encode(sign.sign(&message)),
        });
        let env = serde_json::to_vec(&env).unwrap();
        assert_eq!(
            verify(&env, &verify_keys, 1, 1, SKEW, &mut Seen::default()),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn a_release_round_trips_signed() {
        let (sign, verify_keys) = keys();
        let spec = crate::release::Spec {
            id: "vankien".into(),
            at: "2027-01-20T10:00:00+07:00".into(),
            embargo: crate::release::Embargo {
                urls: vec!["https://portal.example.vn/vankien/nq".into()],
                prefix: None,
            },
            warm: vec!["https://portal.example.vn/media/nq.jpg".into()],
            purge: Some(crate::release::PurgeSpec {
                tags: vec!["home".into()],
                ..Default::default()
            }),
        };
        for action in [
            Action::Release(spec),
            Action::ReleaseCancel {
                id: "vankien".into(),
            },
        ] {
            let op = Operation::new(Scope::Fleet, action);
            let got = verify(
                &op.sign(&sign),
                &verify_keys,
                op.issued_at,
                op.issued_at,
                SKEW,
                &mut Seen::default(),
            )
            .unwrap();
            assert_eq!(got, op);
        }
    }

    #[test]
    fn scopes_parse_and_print() {
        for text in ["fleet", "region:hn", "nodes:edge-1,shield-2"] {
            assert_eq!(Scope::parse(text).unwrap().to_string(), text);
        }
        for bad in ["", "region:", "nodes:", "everyone", "Region:hn"] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
        let nodes = Scope::parse("nodes:a, b").unwrap();
        assert!(nodes.includes("b", "x"));
        assert!(!nodes.includes("c", "x"));
    }

    #[test]
    fn the_seen_set_forgets_what_left_the_window() {
        let mut seen = Seen::default();
        let window = 1_000;
        assert_eq!(seen.insert("a", 10_000, window), Ok(()));
        assert_eq!(seen.insert("a", 10_000, window), Err(Refusal::Replayed));
        // Issue times out of order within twice the window are genuine.
        assert_eq!(seen.insert("c", 11_500, window), Ok(()));
        assert_eq!(seen.insert("d", 9_600, window), Ok(()));
        assert_eq!(seen.insert("b", 50_000, window), Ok(()));
        assert_eq!(
            seen.ids.len(),
            1,
            "a, c and d are far out of the window now"
        );
        assert_eq!(seen.by_time.len(), 1);
        // Forgotten, but still refused: older than any genuine operation after b.
        assert_eq!(seen.insert("a", 10_000, window), Err(Refusal::Stale));
        assert_eq!(seen.newest(), 50_000);
    }

    /// The bus's storing time is not signed: a replay with a forged one is still refused once
    /// a newer operation was seen, also after a restart; and an operation from the future
    /// (by this node's clock) cannot raise the floor.
    #[test]
    fn replays_with_forged_bus_times_are_refused_by_the_signed_times() {
        let (sign, verify_keys) = keys();
        let old = Operation::new(Scope::Fleet, purge_tags(&["home"]));
        let mut new = Operation::new(Scope::Fleet, purge_tags(&["sport"]));
        new.issued_at = old.issued_at + 3_600_000;
        let now = new.issued_at;
        let mut seen = Seen::default();
        assert!(verify(
            &old.sign(&sign),
            &verify_keys,
            old.issued_at,
            now,
            SKEW,
            &mut seen
        )
        .is_ok());
        assert!(verify(
            &new.sign(&sign),
            &verify_keys,
            new.issued_at,
            now,
            SKEW,
            &mut seen
        )
        .is_ok());
        // The old one again, the bus claiming it was stored just now when it was issued.
        let mut restarted = Seen::default();
        restarted.raise(seen.newest());
        assert_eq!(
            verify(
                &old.sign(&sign),
                &verify_keys,
                old.issued_at,
                now,
                SKEW,
                &mut restarted
            ),
            Err(Refusal::Stale)
        );
        let mut future = Operation::new(Scope::Fleet, purge_tags(&["x"]));
        future.issued_at = now + 2 * 3_600_000;
        assert_eq!(
            verify(
                &future.sign(&sign),
                &verify_keys,
                future.issued_at,
                now,
                SKEW,
                &mut seen
            ),
            Err(Refusal::Stale)
        );
        assert_eq!(seen.newest(), new.issued_at);
        // Clocks off within the window each: the bus half a window behind the operator, this
        // node a window and a tenth behind. Genuine, so acted on.
        let skewed = Operation::new(Scope::Fleet, purge_tags(&["y"]));
        let w = 300_000;
        let at = skewed.issued_at;
        assert!(verify(
            &skewed.sign(&sign),
            &verify_keys,
            at - w / 2,
            at - 11 * w / 10,
            SKEW,
            &mut Seen::default()
        )
        .is_ok());
    }
}
