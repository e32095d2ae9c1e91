//! keyward-agent: the `keyward` agent daemon and command line, as a library so that tests
//! and the benchmark can use the same client and the same pieces.
//!
//! - `daemon/`: the agent as rooms — `front/` (socket, connections, watchdog), `ops/` (one
//!   file per operation), `back/` (the pool of key store sessions), `policy/`, `metrics/`
//!   (knows nothing of PKCS#11 or TPM).
//! - [`backends`]: the one place that names backend crates.
//! - [`client`]: the socket client used by the CLI, tests and benchmarks; [`blocking_client`]
//!   is its synchronous twin.
//! - [`tls`]: a rustls signing key backed by the agent, and the `keyward tunnel` relay.
//! - `cli/`: the clap command line; [`kit_file`]: files in folders another user may change.

pub mod audit;
pub mod backends;
pub mod blocking_client;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod files;
pub mod hygiene;
pub mod kit_file;
pub mod notify;
pub mod output;
pub mod tls;
