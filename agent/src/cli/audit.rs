//! `keyward audit verify`: walks the audit log's hash chain through its rotated files
//! (`<log>.1`, `<log>.2`, …, then `<log>`), checks both of its ends against the head file
//! (`<state_dir>/audit.head`), names the file and line where it breaks, and reports the
//! agent's own records about the log (repairs, head mismatches found at start, retention).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::audit::chain::{verify_against_head, verify_files, ChainSummary};
use crate::audit::{log_files, read_head};
use crate::config::Config;

/// `keyward audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain, across rotated files, against its head.
    Verify {
        /// Files to check as one chain, oldest first (repeat the flag). Default: the config's
        /// audit log and its rotated files.
        #[arg(long, value_name = "FILE")]
        log: Vec<PathBuf>,
        /// The head file to check the ends of the chain against. Default: the config's
        /// (`<state_dir>/audit.head`) when no `--log` is given; with `--log`, none.
        #[arg(long, value_name = "FILE")]
        head: Option<PathBuf>,
    },
}

/// Runs an `audit` subcommand.
///
/// # Errors
/// An unreadable log or head, or a broken chain (with the file and line that break it).
pub fn run(config_path: &Path, cmd: AuditCommand) -> Result<()> {
    let AuditCommand::Verify { log, head } = cmd;
    let (files, head) = if log.is_empty() {
        let config = Config::load(config_path)?;
        let path = config.audit_log();
        let files = log_files(&path).with_context(|| format!("listing the rotated files of `{}`", path.display()))?;
        (files, Some(head.unwrap_or_else(|| config.audit_head())))
    } else {
        (log, head)
    };
    let summary = match &head {
        Some(head_path) => {
            // Read before the log: records appended meanwhile only put the log ahead.
            let head = read_head(head_path)?;
            verify_against_head(&files, &head, &head_path.display().to_string())
        }
        None => verify_files(&files),
    }
    .context("audit log chain broken")?;
    report(&files, head.as_deref(), &summary);
    Ok(())
}

fn report(files: &[PathBuf], head: Option<&Path>, summary: &ChainSummary) {
    let names: Vec<String> = files.iter().map(|f| format!("`{}`", f.display())).collect();
    println!(
        "audit log {}: {} records, seq {} to {}, chain intact",
        names.join(", "),
        summary.records,
        summary.first_seq,
        summary.last_seq
    );
    match head {
        Some(head) => println!("head `{}` matches both ends of the chain", head.display()),
        None => println!("note: no head file given (--head): records removed from the end or the start would not show"),
    }
    for event in &summary.events {
        let what = match event.op.as_str() {
            "audit_repair" => "note: the agent cut a partial last record at start (a write cut by a crash or full disk)",
            "audit_retention" => "note: rotated files were removed (audit_max_files)",
            _ => "warning: at start the agent found the log not ending or starting where its head said: records were lost (power loss) or removed",
        };
        println!("{what}; seq {}: {}", event.seq, event.detail);
    }
}
