//! `keyward init`: writes a new config for a backend, checking what can be checked now
//! (the module exists, the PIN or auth file is private, the TCTI is one keyward accepts).
//! It never overwrites a config.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::config::{AccessConfig, AgentConfig, BackendConfig, Config, LimitsConfig};

/// Backends `init` can configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// A PKCS#11 token (SoftHSM2, an HSM, a smart card).
    Pkcs11,
    /// A TPM 2.0 (`/dev/tpmrm0`, or swtpm over TCP).
    Tpm,
}

/// Arguments of `keyward init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Which backend holds the keys.
    #[arg(long, value_enum)]
    backend: BackendKind,
    /// PKCS#11 module (.so). [pkcs11]
    #[arg(long, value_name = "PATH", required_if_eq("backend", "pkcs11"))]
    module: Option<PathBuf>,
    /// Token label, or an RFC 7512 URI such as "pkcs11:token=fl-site". [pkcs11]
    #[arg(long, value_name = "LABEL|URI", required_if_eq("backend", "pkcs11"))]
    token: Option<String>,
    /// File holding the user PIN (mode 0600, owned by the agent's user). [pkcs11] Unset: the
    /// agent reads `$KEYWARD_PIN_FILE`, else the systemd credential `keyward-pin`
    /// (`LoadCredential=`, as the shipped unit does), so no path to the PIN is in the config.
    #[arg(long, value_name = "FILE")]
    pin_file: Option<PathBuf>,
    /// How to reach the TPM: "device:/dev/tpmrm0" or "swtpm:host=127.0.0.1,port=2321". [tpm]
    #[arg(long, value_name = "TCTI", required_if_eq("backend", "tpm"))]
    tcti: Option<String>,
    /// Folder for the TPM-wrapped key files (created 0700). [tpm]
    #[arg(long, value_name = "DIR", required_if_eq("backend", "tpm"))]
    key_dir: Option<PathBuf>,
    /// File holding the TPM keys' auth value (mode 0600); default: each key its own random
    /// auth value. [tpm]
    #[arg(long, value_name = "FILE")]
    auth_file: Option<PathBuf>,
    /// Agent socket.
    #[arg(long, value_name = "PATH", default_value = "/run/keyward/agent.sock")]
    socket: PathBuf,
    /// Folder for certificates and the audit log.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/keyward")]
    state_dir: PathBuf,
    /// Let `keyward serve` run as root (writes `[agent] allow_root = true`); for containers
    /// and CI only, a service should run as its own user.
    #[arg(long)]
    allow_root: bool,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving `{}`", p.display()))
}

fn backend_config(args: InitArgs) -> Result<BackendConfig> {
    let wrong = |flags: &str, backend: &str| anyhow::anyhow!("{flags} do not apply to --backend {backend}");
    match args.backend {
        BackendKind::Pkcs11 => {
            if args.tcti.is_some() || args.key_dir.is_some() || args.auth_file.is_some() {
                return Err(wrong("--tcti, --key-dir and --auth-file", "pkcs11"));
            }
            let (Some(module), Some(token)) = (args.module, args.token) else {
                bail!("--backend pkcs11 needs --module and --token");
            };
            if !module.exists() {
                bail!("PKCS#11 module `{}` does not exist", module.display());
            }
            if let Some(pin_file) = &args.pin_file {
                keyward_core::Pin::from_file(pin_file).context("checking --pin-file")?;
            }
            keyward_pkcs11::TokenSelector::parse(&token).context("checking --token")?;
            Ok(BackendConfig::Pkcs11 {
                module: absolute(&module)?,
                token,
                pin_file: args.pin_file.as_deref().map(absolute).transpose()?,
                workers: 2,
            })
        }
        BackendKind::Tpm => {
            if args.module.is_some() || args.token.is_some() || args.pin_file.is_some() {
                return Err(wrong("--module, --token and --pin-file", "tpm"));
            }
            let (Some(tcti), Some(key_dir)) = (args.tcti, args.key_dir) else {
                bail!("--backend tpm needs --tcti and --key-dir");
            };
            crate::backends::check_tcti(&tcti).context("checking --tcti")?;
            if let Some(auth) = &args.auth_file {
                keyward_core::Pin::from_file(auth).context("checking --auth-file")?;
            }
            Ok(BackendConfig::Tpm {
                tcti,
                key_dir: absolute(&key_dir)?,
                auth_file: args.auth_file.as_deref().map(absolute).transpose()?,
                persistent_handles: std::collections::BTreeMap::new(),
            })
        }
    }
}

/// Runs `keyward init`.
///
/// # Errors
/// When the config exists, or the backend settings are unusable.
pub fn run(config_path: &Path, args: InitArgs) -> Result<()> {
    let (socket, state_dir) = (absolute(&args.socket)?, absolute(&args.state_dir)?);
    let agent = AgentConfig { allow_root: args.allow_root };
    let config = Config {
        socket,
        state_dir,
        audit_log: None,
        audit_max_bytes: None,
        audit_max_files: None,
        audit_refusals_per_second: None,
        agent,
        metrics: None,
        keys: Default::default(),
        access: AccessConfig::default(),
        limits: LimitsConfig::default(),
        backend: backend_config(args)?,
    };
    config.write_new(config_path)?;
    std::fs::create_dir_all(config.cert_dir())
        .with_context(|| format!("creating `{}`", config.cert_dir().display()))?;
    eprintln!("wrote config `{}`", config_path.display());
    eprintln!("  socket:    {}", config.socket.display());
    eprintln!("  state dir: {}", config.state_dir.display());
    if matches!(config.backend, BackendConfig::Pkcs11 { pin_file: None, .. }) {
        eprintln!(
            "  PIN:       from the systemd credential `{}` (the unit's LoadCredential=), or $KEYWARD_PIN_FILE \
             for commands run by hand",
            crate::config::DEFAULT_PIN_CREDENTIAL
        );
    }
    eprintln!("next: keyward key generate <name>   (or: keyward key import <name> --from client.key)");
    Ok(())
}
