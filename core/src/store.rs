//! The [`KeyStore`] trait every backend implements and the [`Backend`] that opens stores.
//!
//! One worker thread owns each `KeyStore` value (`&mut self`), so backends need no locks:
//! the agent's `StoreHandle` queues requests to those threads. `msg` arguments are messages,
//! not digests; a backend hashes where its device needs a digest.

use zeroize::Zeroizing;

use crate::error::StoreError;
use crate::key::{KeyAlgorithm, KeyId, KeyInfo, PublicKey};
use crate::private_key::PrivateKeyMaterial;
use crate::profile::SignProfile;

/// What a store reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreInfo {
    /// Backend kind (`pkcs11`, `tpm`).
    pub backend: &'static str,
    /// Human description of the device (token label, manufacturer, model).
    pub device: String,
}

/// Holds private keys and uses them without letting them out.
pub trait KeyStore: Send + 'static {
    /// Describes the store.
    fn info(&self) -> StoreInfo;

    /// Lists the keys in the store.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the device is gone.
    fn list(&mut self) -> Result<Vec<KeyInfo>, StoreError>;

    /// Creates a new key pair inside the device; the private key is sensitive and cannot
    /// be exported.
    ///
    /// # Errors
    /// [`StoreError::KeyExists`] when `id` is taken: nothing is ever overwritten.
    fn generate(&mut self, id: &KeyId, algorithm: KeyAlgorithm) -> Result<KeyInfo, StoreError>;

    /// Imports an existing private key once, as sensitive and non-extractable.
    ///
    /// # Errors
    /// [`StoreError::KeyExists`] when `id` is taken.
    fn import(&mut self, id: &KeyId, key: &PrivateKeyMaterial) -> Result<KeyInfo, StoreError>;

    /// The public key of `id`.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`] when there is no such key.
    fn public_key(&mut self, id: &KeyId) -> Result<PublicKey, StoreError>;

    /// Signs `msg` with `id` as `profile` prescribes.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] when the key cannot produce the profile.
    fn sign(&mut self, id: &KeyId, profile: SignProfile, msg: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Decrypts an RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) ciphertext.
    ///
    /// # Errors
    /// [`StoreError::DecryptionFailed`] for a bad ciphertext, [`StoreError::Unsupported`]
    /// for a non-RSA key.
    fn decrypt(&mut self, id: &KeyId, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError>;

    /// Checks the device is still there (cheap: no private-key operation).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when it is not.
    fn check(&mut self) -> Result<(), StoreError>;

    /// Destroys the key `id` for good: its private and public objects (PKCS#11), its
    /// persistent handle or wrapped blob and auth file (TPM). Only a key retirement calls
    /// this, after its audit record is written (`agent/src/daemon/ops/retire_key.rs`).
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`] when there is no such key; [`StoreError::Unsupported`]
    /// from a store that cannot destroy keys.
    fn destroy(&mut self, id: &KeyId) -> Result<(), StoreError> {
        Err(StoreError::Unsupported { what: format!("destroying key `{id}` in this store") })
    }
}

impl<S: KeyStore + ?Sized> KeyStore for Box<S> {
    fn info(&self) -> StoreInfo {
        (**self).info()
    }
    fn list(&mut self) -> Result<Vec<KeyInfo>, StoreError> {
        (**self).list()
    }
    fn generate(&mut self, id: &KeyId, algorithm: KeyAlgorithm) -> Result<KeyInfo, StoreError> {
        (**self).generate(id, algorithm)
    }
    fn import(&mut self, id: &KeyId, key: &PrivateKeyMaterial) -> Result<KeyInfo, StoreError> {
        (**self).import(id, key)
    }
    fn public_key(&mut self, id: &KeyId) -> Result<PublicKey, StoreError> {
        (**self).public_key(id)
    }
    fn sign(&mut self, id: &KeyId, profile: SignProfile, msg: &[u8]) -> Result<Vec<u8>, StoreError> {
        (**self).sign(id, profile, msg)
    }
    fn decrypt(&mut self, id: &KeyId, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        (**self).decrypt(id, ciphertext)
    }
    fn check(&mut self) -> Result<(), StoreError> {
        (**self).check()
    }
    fn destroy(&mut self, id: &KeyId) -> Result<(), StoreError> {
        (**self).destroy(id)
    }
}

/// A backend's own view of its device, readable without a worker thread (so `status`
/// answers even when every worker is stuck in a device call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendHealth {
    /// Whether the device is usable right now.
    pub up: bool,
    /// Why it is not (the last error, whole cause chain), while it is down.
    pub last_error: Option<String>,
    /// Recovery attempts (module re-initialisations) since start.
    pub recovery_attempts: u64,
}

/// An opened device (a logged-in token, a TPM connection) that hands out one [`KeyStore`]
/// per worker thread.
pub trait Backend: Send + Sync + 'static {
    /// How many stores may work at once (a TPM: 1; a PKCS#11 token: one session each).
    fn max_workers(&self) -> usize;

    /// Opens a store for one worker thread.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the device cannot be reached.
    fn open_store(&self) -> Result<Box<dyn KeyStore>, StoreError>;

    /// The backend's health as it last saw it, when it tracks one (PKCS#11 does: it
    /// recovers a token that went away); `None` lets the caller judge from results.
    fn health(&self) -> Option<BackendHealth> {
        None
    }
}
