//! The one place that names backend crates: opens the configured backend, reading the PIN
//! from its file at that moment and dropping it (zeroized) right after login.

use std::sync::Arc;

use anyhow::{Context, Result};
use keyward_core::{Backend, Pin};
use keyward_pkcs11::{Pkcs11Backend, Pkcs11Config, TokenSelector};

use crate::config::{BackendConfig, Config};

/// Opens the backend the config names, logging in once.
///
/// # Errors
/// A bad PIN file, an unloadable module, a missing token, a rejected PIN (tried once).
pub fn open(config: &Config) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(open_pkcs11(config)?))
}

/// Opens the PKCS#11 backend directly (for CLI commands that manage keys).
///
/// # Errors
/// As [`open`].
pub fn open_pkcs11(config: &Config) -> Result<Pkcs11Backend> {
    let BackendConfig::Pkcs11 { module, token, workers, .. } = &config.backend;
    let pin_path = config.pin_path()?;
    let pin = Pin::from_file(&pin_path)?;
    let token = TokenSelector::parse(token).context("field `backend.token`")?;
    let cfg = Pkcs11Config { module: module.clone(), token, workers: *workers };
    Ok(Pkcs11Backend::open(&cfg, pin)?)
}
