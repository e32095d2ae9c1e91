//! `keyward audit verify`: walks the audit log's hash chain through its rotated files
//! (`<log>.1`, `<log>.2`, …, then `<log>`) and names the file and line where it breaks.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::audit::log_files;
use crate::audit_chain::verify_files;
use crate::config::Config;

/// `keyward audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain, across rotated files.
    Verify {
        /// Files to check as one chain, oldest first (repeat the flag). Default: the config's
        /// audit log and its rotated files.
        #[arg(long, value_name = "FILE")]
        log: Vec<PathBuf>,
    },
}

/// Runs an `audit` subcommand.
///
/// # Errors
/// An unreadable log or a broken chain (with the file and line that break it).
pub fn run(config_path: &Path, cmd: AuditCommand) -> Result<()> {
    let AuditCommand::Verify { log } = cmd;
    let files = if log.is_empty() {
        let path = Config::load(config_path)?.audit_log();
        log_files(&path).with_context(|| format!("listing the rotated files of `{}`", path.display()))?
    } else {
        log
    };
    let summary = verify_files(&files).context("audit log chain broken")?;
    let names: Vec<String> = files.iter().map(|f| format!("`{}`", f.display())).collect();
    println!(
        "audit log {}: {} records, seq {} to {}, chain intact",
        names.join(", "),
        summary.records,
        summary.first_seq,
        summary.last_seq
    );
    if summary.first_seq > 1 {
        println!("note: the chain starts at seq {}; earlier records are not in these files", summary.first_seq);
    }
    Ok(())
}
