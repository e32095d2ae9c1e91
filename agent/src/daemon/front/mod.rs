//! The front end: everything between the socket and an operation, and nothing that names a
//! backend. `socket.rs` (binding safely), `listener.rs` (accept loop, connection limits,
//! reload and shutdown), `connection.rs` (one thread per connection: peer checks, frames,
//! replies), `frame_io.rs` (reading and writing frames on a blocking socket), `conn.rs`
//! (who may write to a connection, one atomic word), `registry.rs` (the open connections),
//! `watchdog.rs` (answering `timeout` for hung backend calls), `peer_limit.rs` (connections
//! per peer process), `peer_exe.rs` (the executable behind a peer).

mod conn;
mod connection;
mod frame_io;
mod listener;
pub(crate) mod peer_exe;
mod peer_limit;
mod registry;
mod socket;
mod watchdog;

pub use listener::serve;
pub use registry::Connections;
pub use socket::{bind_socket, BoundSocket};
