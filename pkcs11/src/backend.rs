//! [`Pkcs11Backend`]: an opened, logged-in token that hands out one session per worker.
//! The connection itself (module, login, health, recovery after the token went away)
//! lives in `device.rs`.

use std::sync::Arc;

use keyward_core::{Backend, BackendHealth, KeyStore, Pin, StoreError};

use crate::config::Pkcs11Config;
use crate::device::Shared;
use crate::store::Pkcs11Store;

/// A logged-in PKCS#11 token.
pub struct Pkcs11Backend {
    shared: Arc<Shared>,
    workers: usize,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend").field("token", &self.shared.token).field("workers", &self.workers).finish()
    }
}

impl Pkcs11Backend {
    /// Loads the module, finds the token and logs in with `pin`, exactly once. The PIN is
    /// kept (zeroizing) for logging in again after the token went away and came back.
    ///
    /// # Errors
    /// [`StoreError::PinIncorrect`] / [`StoreError::PinLocked`] naming the token (not
    /// retried); [`StoreError::Unavailable`] when the module or token cannot be found.
    pub fn open(config: &Pkcs11Config, pin: Pin) -> Result<Self, StoreError> {
        let shared = Shared::open(config.module.clone(), config.token.clone(), pin)?;
        Ok(Self { shared: Arc::new(shared), workers: config.workers.max(1) })
    }

    /// Opens a store directly (for the CLI, which needs no worker pool).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when no session can be opened.
    pub fn store(&self) -> Result<Pkcs11Store, StoreError> {
        Pkcs11Store::open(Arc::clone(&self.shared))
    }

    /// The token label.
    pub fn token_label(&self) -> &str {
        &self.shared.token
    }
}

impl Backend for Pkcs11Backend {
    fn max_workers(&self) -> usize {
        self.workers
    }

    fn open_store(&self) -> Result<Box<dyn KeyStore>, StoreError> {
        Ok(Box::new(self.store()?))
    }

    fn health(&self) -> Option<BackendHealth> {
        Some(self.shared.report())
    }
}
