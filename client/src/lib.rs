//! keyward-client: clients of the agent's socket protocol (`keyward-protocol`,
//! `docs/protocol.md`), so that the CLI, the tests and the benchmarks link a client without
//! the daemon.
//!
//! - [`AgentClient`] (`agent_client.rs`): async, over tokio.
//! - [`BlockingAgentClient`] (`blocking.rs`): its synchronous twin, with read and write
//!   timeouts, for callers that cannot await (rustls's `Signer::sign`).
//! - [`ClientError`] (`error.rs`): what either can fail with.

mod agent_client;
mod blocking;
mod error;

pub use agent_client::AgentClient;
pub use blocking::BlockingAgentClient;
pub use error::ClientError;
