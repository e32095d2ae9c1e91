//! Checking the audit log's hash chain (`keyward audit verify`): every line must name the
//! SHA-256 of the line before it in `prev` and carry the next `seq`, across rotated files
//! (`audit.log.1`, `audit.log.2`, …, `audit.log`) as within one. The first break is reported
//! with its file and line and what it means (a line changed, lines removed, lines reordered, a
//! rotated file missing). Against the head file ([`verify_against_head`]) it also finds what
//! a chain cannot show on its own: records cut from the end, a last record edited, and
//! records or whole files removed from the start. What remains: a log and head rewritten
//! consistently by someone who can write both (compare with the chain head the agent logs
//! at rotation and shutdown, or ship the lines off the host).

use std::fmt;
use std::io::BufRead;
use std::path::Path;

use super::head::Head;
use super::record::sha256_hex;

/// The result of a clean walk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChainSummary {
    /// Lines checked.
    pub records: u64,
    /// `seq` of the first line (1 unless older files were removed).
    pub first_seq: u64,
    /// `seq` of the last line.
    pub last_seq: u64,
    /// `prev` of the first line.
    pub first_prev: String,
    /// The agent's records about the log itself (`audit_repair`, `audit_head_mismatch`,
    /// `audit_retention`), for the report.
    pub events: Vec<ChainEvent>,
}

/// A record the agent wrote about its own log.
#[derive(Debug, PartialEq, Eq)]
pub struct ChainEvent {
    /// Its `seq`.
    pub seq: u64,
    /// `audit_repair`, `audit_head_mismatch` or `audit_retention`.
    pub op: String,
    /// Its other fields, as `name=value` text.
    pub detail: String,
}

/// Ops of the records that [`ChainSummary::events`] collects.
const EVENT_OPS: [&str; 3] = ["audit_repair", "audit_head_mismatch", "audit_retention"];

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
    /// The log ends before the head's last record: records were cut from the end.
    #[error(
        "{count} record(s) removed from the end: the log ends at seq {last_seq}, its head `{head}` says seq {head_seq}"
    )]
    TailRemoved {
        /// The head file.
        head: String,
        /// How many.
        count: u64,
        /// The log's last seq.
        last_seq: u64,
        /// The head's.
        head_seq: u64,
    },
    /// The record at the head's `seq` is not the one the head names.
    #[error("the record with seq {seq} was changed or replaced: its hash is not the one in the head `{head}`")]
    TailChanged {
        /// The head file.
        head: String,
        /// The record.
        seq: u64,
    },
    /// The log starts after the head's first kept record: records were cut from the start.
    #[error("{count} record(s) removed from the start (seq {from} to {to}): the head `{head}` says the kept log starts at seq {from}")]
    StartRemoved {
        /// The head file.
        head: String,
        /// How many.
        count: u64,
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
    },
    /// The first record is not the one the head names.
    #[error("the log starts at seq {found}, not at the first kept record its head `{head}` names (seq {expected}): the first record was changed, or these are not this head's files")]
    StartChanged {
        /// The head file.
        head: String,
        /// The log's first seq.
        found: u64,
        /// The head's.
        expected: u64,
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
    /// Remember the hash of the line with this seq (the head's last record).
    anchor: Option<u64>,
    anchor_hash: Option<String>,
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
            let summary = self.summary.get_or_insert_with(|| ChainSummary {
                first_seq: seq,
                first_prev: prev.to_owned(),
                ..ChainSummary::default()
            });
            summary.records += 1;
            summary.last_seq = seq;
            if let Some(op) = value["op"].as_str().filter(|op| EVENT_OPS.contains(op)) {
                summary.events.push(ChainEvent { seq, op: op.to_owned(), detail: event_detail(&value) });
            }
            let hash = sha256_hex(&bytes);
            if self.anchor == Some(seq) {
                self.anchor_hash = Some(hash.clone());
            }
            self.previous = Some(Link { seq, hash, at });
        }
        Ok(())
    }

    /// The walk's result (no records: all zero).
    pub fn finish(self) -> ChainSummary {
        self.summary.unwrap_or_default()
    }
}

/// The fields of an event record other than the common ones.
fn event_detail(value: &serde_json::Value) -> String {
    const COMMON: [&str; 8] = ["ts", "seq", "prev", "peer", "request_id", "op", "outcome", "latency_us"];
    let Some(object) = value.as_object() else { return String::new() };
    object
        .iter()
        .filter(|(k, _)| !COMMON.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
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
    walk_files(&mut walker, files)?;
    Ok(walker.finish())
}

/// Walks one chain through `files` and checks both of its ends against `head` (read before
/// the files, so records the agent appends meanwhile are fine: the log may run ahead of the
/// head, never behind it). `head_name` names the head file in messages.
///
/// # Errors
/// The first [`ChainBreak`], including the end or start of the log not being the head's.
pub fn verify_against_head(
    files: &[impl AsRef<Path>],
    head: &Head,
    head_name: &str,
) -> Result<ChainSummary, ChainBreak> {
    let mut walker = ChainWalker { anchor: Some(head.seq), ..ChainWalker::default() };
    walk_files(&mut walker, files)?;
    let anchor_hash = walker.anchor_hash.take();
    let summary = walker.finish();
    let name = || head_name.to_owned();
    if head.seq > 0 {
        if summary.records == 0 || summary.last_seq < head.seq {
            let last_seq = summary.last_seq;
            return Err(ChainBreak::TailRemoved {
                head: name(),
                count: head.seq - last_seq,
                last_seq,
                head_seq: head.seq,
            });
        }
        if anchor_hash.as_deref() != Some(head.hash.as_str()) {
            return Err(ChainBreak::TailChanged { head: name(), seq: head.seq });
        }
    }
    if summary.records > 0 && (summary.first_seq != head.first_seq || summary.first_prev != head.first_prev) {
        if summary.first_seq > head.first_seq {
            let (from, to) = (head.first_seq, summary.first_seq - 1);
            return Err(ChainBreak::StartRemoved { head: name(), count: to - from + 1, from, to });
        }
        return Err(ChainBreak::StartChanged { head: name(), found: summary.first_seq, expected: head.first_seq });
    }
    Ok(summary)
}

fn walk_files(walker: &mut ChainWalker, files: &[impl AsRef<Path>]) -> Result<(), ChainBreak> {
    for path in files {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file =
            std::fs::File::open(path).map_err(|e| ChainBreak::Io { file: name.clone(), reason: e.to_string() })?;
        walker.walk(&name, std::io::BufReader::new(file))?;
    }
    Ok(())
}
