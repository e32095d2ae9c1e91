//! `keyward audit verify`: walks the audit log's hash chain and names the first line that was
//! changed, removed or reordered.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::audit_chain::verify_chain;
use crate::config::Config;

/// `keyward audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain.
    Verify {
        /// The log (default: the config's audit log).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
}

/// Runs an `audit` subcommand.
///
/// # Errors
/// An unreadable log or a broken chain (with the line that breaks it).
pub fn run(config_path: &Path, cmd: AuditCommand) -> Result<()> {
    let AuditCommand::Verify { log } = cmd;
    let path = match log {
        Some(p) => p,
        None => Config::load(config_path)?.audit_log(),
    };
    let file = std::fs::File::open(&path).with_context(|| format!("opening `{}`", path.display()))?;
    let summary =
        verify_chain(std::io::BufReader::new(file)).with_context(|| format!("audit log `{}`", path.display()))?;
    println!(
        "audit log `{}`: {} records, seq {} to {}, chain intact",
        path.display(),
        summary.records,
        summary.first_seq,
        summary.last_seq
    );
    Ok(())
}
