//! TLS with a key the agent holds: [`signer`] is the rustls `SigningKey` that forwards
//! handshake signatures to the agent; [`tunnel`] is `keyward tunnel`, a local plain-TCP to
//! mutual-TLS bridge for clients that cannot use a remote signer themselves;
//! [`listen`] binds where local clients connect (TCP or Unix socket) and [`loopback_peer`]
//! tells which local user is on the other end of a loopback TCP connection;
//! [`server_tunnel`] is `keyward server-tunnel`, TLS terminated for a server whose key the
//! agent holds; `relay` copies the bytes and `accept_loop` takes the connections for both
//! tunnels.

mod accept_loop;
pub mod listen;
pub mod loopback_peer;
mod relay;
pub mod server_tunnel;
pub mod signer;
pub mod tunnel;
