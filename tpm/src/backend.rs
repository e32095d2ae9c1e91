//! Opening a TPM: parse nothing here (see `config.rs`), connect once to check the TPM is
//! there, derive the storage primary, and hand that one connection to the one worker.
//!
//! One worker only: swtpm serves one connection at a time (a second client blocks until the
//! first closes) and a real TPM has about 3 transient object slots, so requests queue to a
//! single owner of the ESAPI context instead of sharing it behind a lock.

use std::sync::{Arc, Mutex};

use keyward_core::{Backend, KeyStore, Pin, StoreError};

use crate::config::TpmConfig;
use crate::connection::Connection;
use crate::error::TpmError;
use crate::store::TpmStore;

/// What the store needs from its backend.
pub(crate) struct Shared {
    pub(crate) config: TpmConfig,
    /// The key auth value; `None` means empty.
    pub(crate) auth: Option<Pin>,
    /// Vendor string, for `status`.
    pub(crate) device: String,
}

/// A reachable TPM.
pub struct TpmBackend {
    shared: Arc<Shared>,
    /// The connection made by `open`, taken by the first store.
    first: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for TpmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmBackend").field("tcti", &self.shared.config.tcti).finish()
    }
}

impl TpmBackend {
    /// Connects to the TPM, flushes leaked transient objects, derives the storage primary and
    /// creates `config.key_dir` (0700) if needed. `auth` is the auth value of keys this
    /// backend creates and uses (none: empty).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the TPM cannot be reached;
    /// [`StoreError::Backend`] when the key folder cannot be created or the primary not
    /// derived (for example a set owner-hierarchy password).
    pub fn open(config: &TpmConfig, auth: Option<Pin>) -> Result<Self, StoreError> {
        let tpm = config.tcti.to_string();
        crate::blob::ensure_dir(&config.key_dir).map_err(|e| e.into_store_error(&tpm))?;
        let mut shared = Shared { config: config.clone(), auth, device: String::new() };
        let mut conn = Connection::open(&shared).map_err(|e| e.into_store_error(&tpm))?;
        shared.device = tss_esapi::utils::get_tpm_vendor(&mut conn.ctx)
            .map_err(TpmError::call("TPM2_GetCapability (vendor)"))
            .map_err(|e| e.into_store_error(&tpm))?;
        tracing::info!(tpm = %tpm, vendor = %shared.device, key_dir = %config.key_dir.display(), "opened TPM");
        Ok(Self { shared: Arc::new(shared), first: Mutex::new(Some(conn)) })
    }

    /// Opens the store directly (for the CLI, which needs no worker).
    pub fn store(&self) -> TpmStore {
        let conn = self.first.lock().map(|mut first| first.take()).unwrap_or_default();
        TpmStore::new(Arc::clone(&self.shared), conn)
    }
}

impl Backend for TpmBackend {
    fn max_workers(&self) -> usize {
        1
    }

    fn open_store(&self) -> Result<Box<dyn KeyStore>, StoreError> {
        Ok(Box::new(self.store()))
    }
}
