//! keyward-pkcs11: the [`keyward_core::KeyStore`] over a PKCS#11 token (SoftHSM2, HSMs,
//! smart cards), through cryptoki.
//!
//! - [`Pkcs11Backend::open`] loads the module, finds the token by label, serial or RFC 7512
//!   URI (never by slot number, which SoftHSM reassigns), and logs in **once**. PKCS#11 login
//!   state belongs to the application, so every session opened afterwards shares it, and a
//!   wrong PIN is tried exactly once.
//! - Each worker thread gets a [`Pkcs11Store`] with its own session (cryptoki's `Session` is
//!   `Send` but not `Sync`).
//!
//! Files: `config.rs` (what to open), `uri.rs` (RFC 7512), `backend.rs` (module, token,
//! login), `store.rs` (lookup, list, public keys), `keygen.rs` (generate, import),
//! `sign.rs`, `decrypt.rs`, `error.rs`, `pin_state.rs` (the PIN flags, read without a login).
//!
//! Device quirks (SoftHSM 2.6.1): no OAEP with SHA-256 (see `decrypt.rs`); `CKA_EC_POINT` is
//! DER-wrapped; reading a sensitive attribute returns success with the attribute left out.

mod backend;
mod config;
mod decrypt;
mod device;
mod error;
mod keygen;
mod pin_state;
mod sign;
mod store;
mod uri;

pub use backend::Pkcs11Backend;
pub use config::{Pkcs11Config, TokenSelector};
pub use error::Pkcs11Error;
pub use pin_state::{read_pin_state, PinState};
pub use store::Pkcs11Store;
pub use uri::Pkcs11Uri;
