//! TLS with a key the agent holds: [`signer`] is the rustls `SigningKey` that forwards
//! handshake signatures to the agent; [`tunnel`] is `keyward tunnel`, a local plain-TCP to
//! mutual-TLS bridge for clients that cannot use a remote signer themselves.

pub mod signer;
pub mod tunnel;
