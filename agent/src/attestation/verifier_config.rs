//! The project admin's verifier config (`keyward attest challenge|verify --verifier-config
//! FILE`, TOML; docs/configuration.md, "Attestation verifier"):
//!
//! ```toml
//! accepted_tpm_cas = ["/etc/keyward/tpm-cas.pem"]   # PEM bundles: TPM makers' roots + intermediates
//! ek_allow_list = ["<sha256 hex of the EK public key>"]  # optional: only these TPMs
//! state_dir = "/var/lib/keyward-verifier"           # open challenges, one file each
//! challenge_ttl = "15m"                             # default 15 minutes
//! accept_unattested_keys = false                    # PKCS#11/HSM keys without TPM evidence
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keyward_tpm::attest::VerifierPolicy;
use serde::Deserialize;

/// The verifier config.
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    /// What the TPM checks accept.
    pub policy: VerifierPolicy,
    /// Folder of open challenges (made 0700 when absent).
    pub state_dir: PathBuf,
    /// How long a challenge may stay open.
    pub challenge_ttl: Duration,
    /// Whether a certificate request without TPM evidence (an HSM or smart-card key) passes.
    pub accept_unattested_keys: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    accepted_tpm_cas: Vec<PathBuf>,
    ek_allow_list: Option<Vec<String>>,
    state_dir: PathBuf,
    #[serde(default, with = "ttl_text")]
    challenge_ttl: Option<Duration>,
    #[serde(default)]
    accept_unattested_keys: bool,
}

/// `challenge_ttl` as a humantime string.
mod ttl_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Some).map_err(serde::de::Error::custom)
    }
}

/// Default `challenge_ttl`.
const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);

impl VerifierConfig {
    /// Loads the config and the CA bundles it names.
    ///
    /// # Errors
    /// Unreadable or invalid TOML, a bundle without certificates, a malformed allow-list entry.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
        let file: File = toml::from_str(&text).with_context(|| format!("parsing `{}`", path.display()))?;
        let mut accepted_cas = Vec::new();
        for bundle in &file.accepted_tpm_cas {
            let pem_text =
                std::fs::read(bundle).with_context(|| format!("reading TPM CA bundle `{}`", bundle.display()))?;
            let blocks = pem::parse_many(&pem_text)
                .with_context(|| format!("TPM CA bundle `{}` is not PEM", bundle.display()))?;
            let before = accepted_cas.len();
            accepted_cas.extend(blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE").map(|b| b.into_contents()));
            if accepted_cas.len() == before {
                bail!("TPM CA bundle `{}` holds no certificate", bundle.display());
            }
        }
        if accepted_cas.is_empty() {
            bail!("field `accepted_tpm_cas` in `{}` names no bundle", path.display());
        }
        if let Some(list) = &file.ek_allow_list {
            if let Some(bad) = list.iter().find(|e| e.len() != 64 || !e.chars().all(|c| c.is_ascii_hexdigit())) {
                bail!("field `ek_allow_list`: `{bad}` is not a SHA-256 fingerprint (64 hex digits)");
            }
        }
        Ok(Self {
            policy: VerifierPolicy { accepted_cas, ek_allow_list: file.ek_allow_list },
            state_dir: file.state_dir,
            challenge_ttl: file.challenge_ttl.unwrap_or(DEFAULT_TTL),
            accept_unattested_keys: file.accept_unattested_keys,
        })
    }
}
