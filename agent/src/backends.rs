//! The one place that names backend crates: opens the configured backend, reading the PIN
//! or auth value from its file at that moment and dropping it (zeroized) once it is handed
//! to the backend.

use std::sync::Arc;

use anyhow::{Context, Result};
use keyward_core::{Backend, KeyId, KeyStore, Pin};
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

/// Opens the TPM store itself, for `keyward attest` (TPM-only operations).
///
/// # Errors
/// As [`open`], and when the configured backend is not a TPM.
pub fn open_tpm_store(config: &Config) -> Result<keyward_tpm::TpmStore> {
    Ok(open_tpm(config)?.store())
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
    let BackendConfig::Tpm { tcti, key_dir, auth_file, persistent_handles } = &config.backend else {
        anyhow::bail!("the configured backend is not a TPM");
    };
    let tcti = Tcti::parse(tcti).context("field `backend.tcti`")?;
    let persistent = persistent_handles
        .iter()
        .map(|(name, handle)| {
            let field = || format!("field `backend.persistent_handles.{name}`");
            Ok((KeyId::new(name).with_context(field)?, parse_persistent_handle(handle).with_context(field)?))
        })
        .collect::<Result<std::collections::BTreeMap<_, _>>>()?;
    let mut handles: Vec<u32> = persistent.values().copied().collect();
    handles.sort_unstable();
    if let Some(twice) = handles.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!("field `backend.persistent_handles`: handle {:#010x} is given to two keys", twice[0]);
    }
    let auth = auth_file.as_deref().map(Pin::from_file).transpose().context("field `backend.auth_file`")?;
    let cfg = TpmConfig { tcti, key_dir: key_dir.clone(), persistent };
    TpmBackend::open(&cfg, auth).with_context(|| format!("opening TPM `{}`", cfg.tcti))
}

/// `0x81000010`: a handle in the owner's persistent range.
fn parse_persistent_handle(text: &str) -> Result<u32> {
    let range = keyward_tpm::PERSISTENT_HANDLES;
    let handle = text
        .strip_prefix("0x")
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .with_context(|| format!("`{text}` is not a hex handle like 0x81000010"))?;
    if !range.contains(&handle) {
        anyhow::bail!(
            "{handle:#010x} is outside the owner's persistent range {:#010x}-{:#010x}",
            range.start(),
            range.end()
        );
    }
    Ok(handle)
}

/// Checks a TCTI string the way [`open_tpm`] will (for `keyward init`).
///
/// # Errors
/// When the TCTI is not one keyward accepts.
pub fn check_tcti(tcti: &str) -> Result<()> {
    Tcti::parse(tcti)?;
    Ok(())
}

/// A PKCS#11 token's user-PIN flags (`C_GetTokenInfo`), for `keyward check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinFlags {
    /// The user PIN is set.
    pub initialized: bool,
    /// A wrong PIN was entered since the last good one.
    pub count_low: bool,
    /// One more wrong PIN locks it.
    pub final_try: bool,
    /// Locked.
    pub locked: bool,
}

/// Reads the PKCS#11 token's PIN flags without logging in; `None` for a TPM backend.
///
/// # Errors
/// When the module does not load or the token is not found.
pub fn pin_flags(config: &Config) -> Result<Option<PinFlags>> {
    let BackendConfig::Pkcs11 { module, token, workers, .. } = &config.backend else { return Ok(None) };
    let token = TokenSelector::parse(token).context("field `backend.token`")?;
    let cfg = Pkcs11Config { module: module.clone(), token, workers: *workers };
    let s = keyward_pkcs11::read_pin_state(&cfg)?;
    Ok(Some(PinFlags { initialized: s.initialized, count_low: s.count_low, final_try: s.final_try, locked: s.locked }))
}
