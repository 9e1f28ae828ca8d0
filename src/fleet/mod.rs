//! The fleet control plane: operations every node applies (purge, attack mode), signed by the
//! operators and carried by NATS JetStream, which keeps them for nodes that were away.
//!
//! - [`keys`]: the operators' Ed25519 keys in OpenSSL's PEM forms.
//! - [`op`]: the signed operation document and the checks before a node acts on one.
//!
//! The bus is never on the request path: a node with no bus serves what it has.

pub mod keys;
pub mod op;
