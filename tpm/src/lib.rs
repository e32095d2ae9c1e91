//! keyward-tpm: the [`keyward_core::KeyStore`] over a TPM 2.0 (a real TPM through the
//! kernel resource manager `/dev/tpmrm0`, or swtpm for tests), through tss-esapi 7.x.
//!
//! - [`TpmBackend::open`] connects once, derives the storage primary under the owner
//!   hierarchy from a fixed template, and hands that connection to the single worker
//!   (`max_workers() == 1`).
//! - Keys are born in the TPM (fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth), or
//!   imported once (then not fixedTPM, and listed as imported), and kept as wrapped blobs on
//!   disk, one file per key in `key_dir`; the last key used stays loaded.
//! - Each key has its own random auth value (`auth.rs`), used only through a salted HMAC
//!   session (`session.rs`): no other TPM client can use a key, at its persistent handle or
//!   loaded by the agent.
//!
//! Files: `config.rs` (TCTI, key folder), `backend.rs` (open), `connection.rs` (ESAPI context,
//! primary, key at hand), `session.rs` (HMAC session), `auth.rs` (per-key auth values),
//! `store.rs` (KeyStore), `persistent.rs` (persistent handles), `blob.rs` (key files),
//! `keygen.rs` (templates, public keys), `import.rs` (one-time import), `sign.rs`,
//! `decrypt.rs`, `error.rs`; `attest/` (key attestation: the site's evidence and the
//! verifier, docs/attestation.md).
//!
//! Device quirks (swtpm 0.7 / libtpms 0.9 / libtss2 3.2.1):
//! - TPM2_Sign RSAPSS always uses salt = hash length; maximum salt needs the raw path in
//!   `sign.rs`.
//! - tss-esapi 7.x misreads `swtpm:path=...` as localhost:2321; `config.rs` refuses it.
//! - libtss2 logs every TPM error to stderr (`WARNING:esys:...`). Our errors keep the
//!   response code, so run the agent with `TSS2_LOG=all+none` (or `esys+error`) in its
//!   environment. This crate does not set it: changing the environment of a running,
//!   multi-threaded process is unsound.

pub mod attest;
mod auth;
mod backend;
mod blob;
mod config;
mod connection;
mod decrypt;
mod error;
mod import;
mod keygen;
mod persistent;
mod session;
mod sign;
mod store;

pub use backend::TpmBackend;
pub use config::{Tcti, TpmConfig};
pub use error::TpmError;
pub use persistent::OWNER_RANGE as PERSISTENT_HANDLES;
pub use store::TpmStore;
