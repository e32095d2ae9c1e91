//! keyward-core: what every part of keyward shares and nothing device-specific. The socket
//! protocol is the `keyward-protocol` crate (`protocol/`), which builds on these types.
//!
//! - [`KeyStore`] and [`Backend`]: the one trait each backend crate (PKCS#11, TPM) implements.
//! - [`KeyId`], [`KeyAlgorithm`], [`PublicKey`]: key references and their public halves.
//! - [`SignProfile`]: what a signature is for; the backend maps it to exactly one mechanism.
//! - [`Pin`]: a PIN or auth value that is zeroized and never printed.
//! - [`nvflare`]: NVFlare's secure-mode authenticator flow, verified by the agent itself.
//! - [`oaep`], [`pss`], [`verify`], [`private_key`]: pure cryptographic encoding shared by the backends.

pub mod error;
pub mod key;
pub mod nvflare;
pub mod oaep;
pub mod pin;
pub mod private_key;
pub mod profile;
pub mod pss;
pub mod signature;
pub mod store;
pub mod verify;

pub use error::StoreError;
pub use key::{KeyAlgorithm, KeyId, KeyInfo, PublicKey};
pub use pin::Pin;
pub use profile::{SignProfile, TlsScheme};
pub use store::{Backend, BackendHealth, KeyStore, StoreInfo};
