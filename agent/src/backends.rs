//! The one place that names backend crates: opens the configured backend, reading the PIN
//! or auth value from its file at that moment and dropping it (zeroized) once it is handed
//! to the backend.

use std::sync::Arc;

use anyhow::{Context, Result};
use keyward_core::{Backend, KeyStore, Pin};
use keyward_pkcs11::{Pkcs11Backend, Pkcs11Config, TokenSelector};
use keyward_tpm::{Tcti, TpmBackend, TpmConfig};

use crate::config::{BackendConfig, Config};

/// Opens the backend the config names (a PKCS#11 token logs in once).
///
/// # Errors
/// A bad PIN file, an unloadable module, a missing token, a rejected PIN (tried once), an
/// invalid TCTI or an unreachable TPM.
pub fn open(config: &Config) -> Result<Arc<dyn Backend>> {
    Ok(match &config.backend {
        BackendConfig::Pkcs11 { .. } => Arc::new(open_pkcs11(config)?),
        BackendConfig::Tpm { .. } => Arc::new(open_tpm(config)?),
    })
}

/// Opens one store directly, for CLI commands that manage keys without the agent.
///
/// # Errors
/// As [`open`].
pub fn open_store(config: &Config) -> Result<Box<dyn KeyStore>> {
    Ok(match &config.backend {
        BackendConfig::Pkcs11 { .. } => Box::new(open_pkcs11(config)?.store()?),
        BackendConfig::Tpm { .. } => Box::new(open_tpm(config)?.store()),
    })
}

/// Opens the PKCS#11 backend.
///
/// # Errors
/// As [`open`].
fn open_pkcs11(config: &Config) -> Result<Pkcs11Backend> {
    let BackendConfig::Pkcs11 { module, token, workers, .. } = &config.backend else {
        anyhow::bail!("the configured backend is not PKCS#11");
    };
    let pin_path = config.pin_path()?;
    let pin = Pin::from_file(&pin_path)?;
    let token = TokenSelector::parse(token).context("field `backend.token`")?;
    let cfg = Pkcs11Config { module: module.clone(), token, workers: *workers };
    Ok(Pkcs11Backend::open(&cfg, pin)?)
}

/// Opens the TPM backend.
///
/// # Errors
/// As [`open`].
fn open_tpm(config: &Config) -> Result<TpmBackend> {
    let BackendConfig::Tpm { tcti, key_dir, auth_file } = &config.backend else {
        anyhow::bail!("the configured backend is not a TPM");
    };
    let tcti = Tcti::parse(tcti).context("field `backend.tcti`")?;
    let auth = auth_file.as_deref().map(Pin::from_file).transpose().context("field `backend.auth_file`")?;
    let cfg = TpmConfig { tcti, key_dir: key_dir.clone() };
    TpmBackend::open(&cfg, auth).with_context(|| format!("opening TPM `{}`", cfg.tcti))
}

/// Checks a TCTI string the way [`open_tpm`] will (for `keyward init`).
///
/// # Errors
/// When the TCTI is not one keyward accepts.
pub fn check_tcti(tcti: &str) -> Result<()> {
    Tcti::parse(tcti)?;
    Ok(())
}
