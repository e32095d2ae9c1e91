//! `keyward init`: writes a new config for a backend, checking what can be checked now
//! (the module exists, the PIN file is private). It never overwrites a config.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::config::{AccessConfig, BackendConfig, Config, LimitsConfig};

/// Backends `init` can configure.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BackendKind {
    /// A PKCS#11 token (SoftHSM2, an HSM, a smart card).
    Pkcs11,
}

/// Arguments of `keyward init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Which backend holds the keys.
    #[arg(long, value_enum)]
    backend: BackendKind,
    /// PKCS#11 module (.so).
    #[arg(long, value_name = "PATH")]
    module: PathBuf,
    /// Token label, or an RFC 7512 URI such as "pkcs11:token=fl-site".
    #[arg(long, value_name = "LABEL|URI")]
    token: String,
    /// File holding the user PIN (mode 0600, owned by the agent's user).
    #[arg(long, value_name = "FILE")]
    pin_file: PathBuf,
    /// Agent socket.
    #[arg(long, value_name = "PATH", default_value = "/run/keyward/agent.sock")]
    socket: PathBuf,
    /// Folder for certificates and the audit log.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/keyward")]
    state_dir: PathBuf,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving `{}`", p.display()))
}

/// Runs `keyward init`.
///
/// # Errors
/// When the config exists, the module is missing or the PIN file is unusable.
pub fn run(config_path: &Path, args: InitArgs) -> Result<()> {
    let BackendKind::Pkcs11 = args.backend;
    if !args.module.exists() {
        bail!("PKCS#11 module `{}` does not exist", args.module.display());
    }
    keyward_core::Pin::from_file(&args.pin_file).context("checking --pin-file")?;
    keyward_pkcs11::TokenSelector::parse(&args.token).context("checking --token")?;
    let config = Config {
        socket: absolute(&args.socket)?,
        state_dir: absolute(&args.state_dir)?,
        audit_log: None,
        keys: Default::default(),
        access: AccessConfig::default(),
        limits: LimitsConfig::default(),
        backend: BackendConfig::Pkcs11 {
            module: absolute(&args.module)?,
            token: args.token,
            pin_file: Some(absolute(&args.pin_file)?),
            workers: 2,
        },
    };
    config.write_new(config_path)?;
    std::fs::create_dir_all(config.cert_dir())
        .with_context(|| format!("creating `{}`", config.cert_dir().display()))?;
    eprintln!("wrote config `{}`", config_path.display());
    eprintln!("  socket:    {}", config.socket.display());
    eprintln!("  state dir: {}", config.state_dir.display());
    eprintln!("next: keyward key generate <name>   (or: keyward key import <name> --from client.key)");
    Ok(())
}
