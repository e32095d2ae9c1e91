//! keyward-agent: the `keyward` agent daemon and command line, as a library so that tests
//! and the benchmark can use the same client and the same pieces.
//!
//! - `daemon/`: the agent as rooms — `front/` (socket, connections, watchdog), `ops/` (one
//!   file per operation), `back/` (the pool of key store sessions), `policy/`, `metrics/`
//!   (knows nothing of PKCS#11 or TPM).
//! - [`backends`]: the one place that names backend crates.
//! - [`wire_error`]: which wire code each `keyward-core` error becomes.
//! - The socket clients are the `keyward-client` crate; the protocol is `keyward-protocol`.
//! - [`tls`]: a rustls signing key backed by the agent, and the `keyward tunnel` relay.
//! - [`provision`]: NVFlare's distributed-provisioning request with a token key.
//! - [`attestation`]: TPM key attestation documents, verifier config and open challenges.
//! - `cli/`: the clap command line; [`kit_file`]: files in folders another user may change.

pub mod attestation;
pub mod audit;
pub mod backends;
pub mod certs;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod files;
pub mod hygiene;
pub mod kit_file;
pub mod notify;
pub mod output;
pub mod provision;
pub mod renewal;
pub mod tls;
pub mod wire_error;
