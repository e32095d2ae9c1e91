//! Why an audit record was not written, or the log could not be opened. A request whose
//! record fails is answered `audit_failed` when it would have returned a private-key result
//! (`daemon/ops/mod.rs`).

use std::path::PathBuf;

/// An audit log failure.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The record could not be appended (a full file system, an I/O error). Nothing of it
    /// stays in the file: a partial line is cut off again before the next record.
    #[error("cannot append to audit log `{}`", path.display())]
    Write {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A partial line left by an earlier failed write could not be cut off yet, so nothing
    /// is appended after it.
    #[error("audit log `{}` still ends in a partial record", path.display())]
    Torn {
        /// The log file.
        path: PathBuf,
        /// The OS error of the truncation.
        #[source]
        source: std::io::Error,
    },
    /// The log or its head file could not be opened, read or repaired at start.
    #[error("cannot open audit log `{}`", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The log's last complete line is not an audit record, so the chain cannot be
    /// continued (an edit; `keyward audit verify` names it).
    #[error("the last line of audit log `{}` is not an audit record; run `keyward audit verify`", path.display())]
    NotARecord {
        /// The file.
        path: PathBuf,
    },
    /// A record could not be encoded (a bug).
    #[error("cannot encode an audit record")]
    Encode(#[source] serde_json::Error),
}

impl AuditError {
    /// The OS error behind a write failure, for the reply to the client (which gets no
    /// path): for example "No space left on device (os error 28)".
    pub fn reason(&self) -> String {
        match self {
            Self::Write { source, .. } | Self::Torn { source, .. } | Self::Open { source, .. } => source.to_string(),
            Self::NotARecord { .. } => "the log's last line is not a record".into(),
            Self::Encode(e) => e.to_string(),
        }
    }
}
