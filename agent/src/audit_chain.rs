//! Checking the audit log's hash chain (`keyward audit verify`): every line must name the
//! SHA-256 of the line before it in `prev` and carry the next `seq`, across rotated files
//! (`audit.log.1`, `audit.log.2`, …, `audit.log`) as within one. The first break is reported
//! with its file and line and what it means (a line changed, lines removed, lines reordered, a
//! rotated file missing). What a chain cannot show on its own: lines cut from the end of the
//! newest file or whole files removed from the start (compare the last `seq` with the chain
//! head in the agent's log), or a log rewritten consistently by someone who can write it.

use std::fmt;
use std::io::BufRead;
use std::path::Path;

use crate::audit::sha256_hex;

/// The result of a clean walk.
#[derive(Debug, PartialEq, Eq)]
pub struct ChainSummary {
    /// Lines checked.
    pub records: u64,
    /// `seq` of the first line (1 unless older files were removed).
    pub first_seq: u64,
    /// `seq` of the last line.
    pub last_seq: u64,
}

/// A line in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// The file as given (empty for a single unnamed stream).
    pub file: String,
    /// 1-based line number.
    pub line: u64,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.is_empty() {
            write!(f, "line {}", self.line)
        } else {
            write!(f, "line {} of `{}`", self.line, self.file)
        }
    }
}

/// The first place the chain breaks.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// Not a JSON record with `seq` and `prev`.
    #[error("{at} is not an audit record")]
    Malformed {
        /// Where.
        at: Place,
    },
    /// `prev` does not match the line before, which therefore was changed.
    #[error("{changed} was changed ({detected} does not match its hash)")]
    Changed {
        /// The line whose content no longer matches.
        changed: Place,
        /// The line that detected it.
        detected: Place,
    },
    /// `seq` jumps inside a file: records were removed.
    #[error("{count} record(s) removed before {before} (seq {from} to {to} missing)")]
    Removed {
        /// The line after the gap.
        before: Place,
        /// How many.
        count: u64,
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
    },
    /// `seq` jumps between two files: a rotated file (or the end of the earlier one) is gone.
    #[error(
        "{count} record(s) missing between `{after}` and `{before}` (seq {from} to {to}): a rotated file, or the end of `{after}`, was removed"
    )]
    FileMissing {
        /// The earlier file.
        after: String,
        /// The later file.
        before: String,
        /// How many.
        count: u64,
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
    },
    /// `seq` goes backwards or repeats: records (or files) were reordered or duplicated.
    #[error("{at} is out of order (seq {seq} after seq {previous})")]
    Reordered {
        /// The line.
        at: Place,
        /// Its seq.
        seq: u64,
        /// The seq before it.
        previous: u64,
    },
    /// A file could not be read.
    #[error("cannot read `{file}`: {reason}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        reason: String,
    },
}

/// The end of the chain walked so far.
struct Link {
    seq: u64,
    hash: String,
    at: Place,
}

/// Walks one chain over several files, in order.
#[derive(Default)]
pub struct ChainWalker {
    previous: Option<Link>,
    summary: Option<ChainSummary>,
}

impl ChainWalker {
    /// Continues the chain through the lines of `file` (a name for messages).
    ///
    /// # Errors
    /// The first [`ChainBreak`].
    pub fn walk(&mut self, file: &str, reader: impl BufRead) -> Result<(), ChainBreak> {
        for (index, line) in reader.split(b'\n').enumerate() {
            let at = Place { file: file.to_owned(), line: index as u64 + 1 };
            let bytes = line.map_err(|e| ChainBreak::Io { file: file.to_owned(), reason: e.to_string() })?;
            if bytes.is_empty() {
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|_| ChainBreak::Malformed { at: at.clone() })?;
            let (Some(seq), Some(prev)) = (value["seq"].as_u64(), value["prev"].as_str()) else {
                return Err(ChainBreak::Malformed { at });
            };
            if let Some(last) = &self.previous {
                check_link(last, &at, seq, prev)?;
            }
            let summary = self.summary.get_or_insert(ChainSummary { records: 0, first_seq: seq, last_seq: seq });
            summary.records += 1;
            summary.last_seq = seq;
            self.previous = Some(Link { seq, hash: sha256_hex(&bytes), at });
        }
        Ok(())
    }

    /// The walk's result (no records: all zero).
    pub fn finish(self) -> ChainSummary {
        self.summary.unwrap_or(ChainSummary { records: 0, first_seq: 0, last_seq: 0 })
    }
}

fn check_link(last: &Link, at: &Place, seq: u64, prev: &str) -> Result<(), ChainBreak> {
    if seq <= last.seq {
        return Err(ChainBreak::Reordered { at: at.clone(), seq, previous: last.seq });
    }
    if seq > last.seq + 1 {
        let (from, to) = (last.seq + 1, seq - 1);
        let count = to - from + 1;
        if last.at.file != at.file {
            return Err(ChainBreak::FileMissing {
                after: last.at.file.clone(),
                before: at.file.clone(),
                count,
                from,
                to,
            });
        }
        return Err(ChainBreak::Removed { before: at.clone(), count, from, to });
    }
    if prev != last.hash {
        return Err(ChainBreak::Changed { changed: last.at.clone(), detected: at.clone() });
    }
    Ok(())
}

/// Walks the chain of one stream.
///
/// # Errors
/// The first [`ChainBreak`].
pub fn verify_chain(reader: impl BufRead) -> Result<ChainSummary, ChainBreak> {
    let mut walker = ChainWalker::default();
    walker.walk("", reader)?;
    Ok(walker.finish())
}

/// Walks one chain through `files`, in the order given.
///
/// # Errors
/// The first [`ChainBreak`], or a file that cannot be opened.
pub fn verify_files(files: &[impl AsRef<Path>]) -> Result<ChainSummary, ChainBreak> {
    let mut walker = ChainWalker::default();
    for path in files {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file =
            std::fs::File::open(path).map_err(|e| ChainBreak::Io { file: name.clone(), reason: e.to_string() })?;
        walker.walk(&name, std::io::BufReader::new(file))?;
    }
    Ok(walker.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{log_files, AuditLog, AuditRecord, Peer};

    fn append(log: &AuditLog, n: u64) {
        for i in 0..n {
            log.record(&AuditRecord {
                peer: Peer { uid: 1000, gid: 1000, pid: Some(42), connected: std::time::Duration::ZERO },
                request_id: i,
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

    fn write_log(dir: &Path, n: u64) -> Vec<String> {
        let path = dir.join("audit.log");
        // Two agent "runs" over the same file: the chain and seq continue.
        for _ in 0..2 {
            append(&AuditLog::open(&path).unwrap(), n);
        }
        std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
    }

    fn check(lines: &[String]) -> Result<ChainSummary, ChainBreak> {
        verify_chain(std::io::Cursor::new(lines.join("\n")))
    }

    fn line(n: u64) -> Place {
        Place { file: String::new(), line: n }
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
        assert_eq!(check(&edited), Err(ChainBreak::Changed { changed: line(3), detected: line(4) }));

        let mut removed = lines.clone();
        removed.remove(3);
        assert_eq!(check(&removed), Err(ChainBreak::Removed { before: line(4), count: 1, from: 4, to: 4 }));

        let mut reordered = lines.clone();
        reordered.swap(1, 2);
        assert!(matches!(check(&reordered), Err(ChainBreak::Removed { .. } | ChainBreak::Reordered { .. })));

        let mut garbage = lines;
        garbage[5] = "not json".into();
        assert_eq!(check(&garbage), Err(ChainBreak::Malformed { at: line(6) }));
    }

    /// A log rotated into several files (about 3 records each), across a restart.
    fn rotated_log(dir: &Path) -> Vec<std::path::PathBuf> {
        let path = dir.join("audit.log");
        append(&AuditLog::open_rotating(&path, 700).unwrap(), 7);
        append(&AuditLog::open_rotating(&path, 700).unwrap(), 7);
        log_files(&path).unwrap()
    }

    #[test]
    fn the_chain_continues_across_rotated_files_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let files = rotated_log(dir.path());
        assert!(files.len() >= 4, "{files:?}");
        assert!(files[0].ends_with("audit.log.1") && files.last().unwrap().ends_with("audit.log"));
        assert_eq!(verify_files(&files), Ok(ChainSummary { records: 14, first_seq: 1, last_seq: 14 }));
        // Each file but the last stays under the size; each new file's first line names the
        // last line of the one before.
        for pair in files.windows(2) {
            assert!(std::fs::metadata(&pair[0]).unwrap().len() <= 700);
            let before = std::fs::read_to_string(&pair[0]).unwrap();
            let after = std::fs::read_to_string(&pair[1]).unwrap();
            let first: serde_json::Value = serde_json::from_str(after.lines().next().unwrap()).unwrap();
            assert_eq!(first["prev"], sha256_hex(before.lines().last().unwrap().as_bytes()));
        }
        // Removing the oldest files (retention) leaves a chain that verifies from later on.
        assert_eq!(verify_files(&files[1..]).unwrap().last_seq, 14);
    }

    #[test]
    fn a_missing_middle_file_a_reordered_file_and_an_edit_across_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = rotated_log(dir.path());
        let name = |i: usize| files[i].display().to_string();

        let without_second: Vec<_> = files.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, f)| f).collect();
        let err = verify_files(&without_second).unwrap_err();
        assert!(
            matches!(&err, ChainBreak::FileMissing { after, before, .. } if *after == name(0) && *before == name(2)),
            "{err}"
        );
        assert!(err.to_string().contains("a rotated file"), "{err}");

        let swapped = [&files[1], &files[0], &files[2]];
        let err = verify_files(&swapped).unwrap_err();
        assert!(matches!(&err, ChainBreak::Reordered { at, .. } if at.file == name(0) && at.line == 1), "{err}");

        // The last line of the first file is edited: the second file's first line says so.
        let text = std::fs::read_to_string(&files[0]).unwrap();
        let last_line = text.lines().count() as u64;
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let last = lines.last_mut().unwrap();
        *last = last.replace("\"request_id\":", "\"request_id\":1");
        std::fs::write(&files[0], lines.join("\n") + "\n").unwrap();
        let err = verify_files(&files).unwrap_err();
        let changed = Place { file: name(0), line: last_line };
        assert_eq!(err, ChainBreak::Changed { changed, detected: Place { file: name(1), line: 1 } });
    }
}
