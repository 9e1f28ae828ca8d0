//! The fleet control plane: operations every node applies (purge, attack mode), signed by the
//! operators and carried by NATS JetStream, which keeps them for nodes that were away.
//!
//! - [`keys`]: the operators' Ed25519 keys in OpenSSL's PEM forms (`crate::keys`, shared with
//!   the newsroom's content keys).
//! - [`link`]: the admin API's way onto the bus, lent by the service.
//! - [`op`]: the signed operation document and the checks before a node acts on one.
//! - [`bus`]: NATS: connecting, the operation stream, publishing.
//! - [`cli`]: `onair fleet ...`: sign and publish without any node.
//! - [`service`]: the node's background service that applies operations in order.
//! - [`state`]: the node's position in the stream, stored durably.
//! - [`status`]: heartbeats in a key-value bucket: the fleet at a glance.
//!
//! The bus is never on the request path: a node with no bus serves what it has.

pub mod bus;
pub mod cli;
pub use crate::keys;
pub mod link;
pub mod op;
pub mod service;
pub mod state;
pub mod status;
