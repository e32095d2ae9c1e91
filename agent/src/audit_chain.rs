//! Checking the audit log's hash chain (`keyward audit verify`): every line must name the
//! SHA-256 of the line before it in `prev` and carry the next `seq`. The first break is
//! reported with its line number and what it means (a line changed, lines removed, lines
//! reordered). What a chain cannot show on its own: lines cut from the end of the file (compare
//! the last `seq` with the agent's), or a whole file replaced by a consistent forgery.

use std::io::BufRead;

use crate::audit::sha256_hex;

/// The result of a clean walk.
#[derive(Debug, PartialEq, Eq)]
pub struct ChainSummary {
    /// Lines checked.
    pub records: u64,
    /// `seq` of the first line (1 unless the log was rotated).
    pub first_seq: u64,
    /// `seq` of the last line.
    pub last_seq: u64,
}

/// The first place the chain breaks.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// Not a JSON record with `seq` and `prev`.
    #[error("line {line} is not an audit record")]
    Malformed {
        /// 1-based line number.
        line: u64,
    },
    /// `prev` does not match the line before, which therefore was changed.
    #[error("line {changed} was changed (line {line} does not match its hash)")]
    Changed {
        /// The line whose content no longer matches.
        changed: u64,
        /// The line that detected it.
        line: u64,
    },
    /// `seq` jumps: records were removed.
    #[error("{count} record(s) removed before line {line} (seq {from} to {to} missing)")]
    Removed {
        /// The line after the gap.
        line: u64,
        /// How many.
        count: u64,
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
    },
    /// `seq` goes backwards or repeats: records were reordered or duplicated.
    #[error("line {line} is out of order (seq {seq} after seq {previous})")]
    Reordered {
        /// The line.
        line: u64,
        /// Its seq.
        seq: u64,
        /// The seq before it.
        previous: u64,
    },
    /// The file could not be read.
    #[error("cannot read the audit log: {0}")]
    Io(String),
}

/// Walks the chain.
///
/// # Errors
/// The first [`ChainBreak`].
pub fn verify_chain(reader: impl BufRead) -> Result<ChainSummary, ChainBreak> {
    let mut previous: Option<(u64, String)> = None;
    let mut summary = ChainSummary { records: 0, first_seq: 0, last_seq: 0 };
    for (index, line) in reader.split(b'\n').enumerate() {
        let line_no = index as u64 + 1;
        let bytes = line.map_err(|e| ChainBreak::Io(e.to_string()))?;
        if bytes.is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| ChainBreak::Malformed { line: line_no })?;
        let (Some(seq), Some(prev)) = (value["seq"].as_u64(), value["prev"].as_str()) else {
            return Err(ChainBreak::Malformed { line: line_no });
        };
        match &previous {
            None => summary.first_seq = seq,
            Some((prev_seq, prev_hash)) => {
                if seq <= *prev_seq {
                    return Err(ChainBreak::Reordered { line: line_no, seq, previous: *prev_seq });
                }
                if seq > prev_seq + 1 {
                    let (from, to) = (prev_seq + 1, seq - 1);
                    return Err(ChainBreak::Removed { line: line_no, count: to - from + 1, from, to });
                }
                if prev != prev_hash {
                    return Err(ChainBreak::Changed { changed: line_no - 1, line: line_no });
                }
            }
        }
        summary.records += 1;
        summary.last_seq = seq;
        previous = Some((seq, sha256_hex(&bytes)));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, AuditRecord, Peer};

    fn write_log(dir: &std::path::Path, n: u64) -> Vec<String> {
        let path = dir.join("audit.log");
        // Two agent "runs" over the same file: the chain and seq continue.
        for run in 0..2 {
            let log = AuditLog::open(&path).unwrap();
            for i in 0..n {
                log.record(&AuditRecord {
                    peer: Peer { uid: 1000, gid: 1000, pid: Some(42), connected: std::time::Duration::ZERO },
                    request_id: run * 100 + i,
                    op: "sign",
                    key: Some("site-1"),
                    profile: Some("nvflare"),
                    payload_sha256: None,
                    payload_len: Some(42),
                    outcome: "ok",
                    latency_us: 1,
                });
            }
        }
        std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
    }

    fn check(lines: &[String]) -> Result<ChainSummary, ChainBreak> {
        verify_chain(std::io::Cursor::new(lines.join("\n")))
    }

    #[test]
    fn an_untouched_log_verifies_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let lines = write_log(dir.path(), 3);
        assert_eq!(check(&lines), Ok(ChainSummary { records: 6, first_seq: 1, last_seq: 6 }));
        assert!(lines[0].contains(crate::audit::GENESIS));
    }

    #[test]
    fn edited_removed_and_reordered_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let lines = write_log(dir.path(), 3);

        let mut edited = lines.clone();
        edited[2] = edited[2].replace("\"outcome\":\"ok\"", "\"outcome\":\"policy_denied\"");
        assert_eq!(check(&edited), Err(ChainBreak::Changed { changed: 3, line: 4 }));

        let mut removed = lines.clone();
        removed.remove(3);
        assert_eq!(check(&removed), Err(ChainBreak::Removed { line: 4, count: 1, from: 4, to: 4 }));

        let mut reordered = lines.clone();
        reordered.swap(1, 2);
        assert!(matches!(check(&reordered), Err(ChainBreak::Removed { .. } | ChainBreak::Reordered { .. })));

        let mut garbage = lines;
        garbage[5] = "not json".into();
        assert_eq!(check(&garbage), Err(ChainBreak::Malformed { line: 6 }));
    }
}
