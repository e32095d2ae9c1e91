//! [`AuditLog`]: the append-only file, its rotation and retention, and the head file kept
//! beside it. [`AuditLog::record`] returns only once the line is in the file (one
//! `write(2)` on an `O_APPEND` descriptor, so it survives the agent crashing; there is no
//! `fsync` per record: see docs/security.md, "Audit log", for why and what it costs), and
//! returns the error otherwise, so the caller can withhold a private-key result.
//!
//! - **Failed writes leave nothing.** A write cut short (ENOSPC) is truncated away at once,
//!   or before the next record, so no half line is ever followed by another record.
//! - **Start repairs a torn tail.** A last line without its newline (a crash or full disk
//!   mid-write) is cut off and an `audit_repair` record (byte count and hash of what was
//!   dropped) continues the chain; a head that disagrees with the log gets an
//!   `audit_head_mismatch` record (`head.rs`).
//! - **Rotation and retention.** When the next line would take the file past
//!   `audit_max_bytes` it is renamed to `<path>.<N>` (N = 1, 2, …) and a new one started,
//!   whose first line continues `seq` and `prev`. Beyond `audit_max_files` rotated files the
//!   oldest are removed, the head's start moves to the first kept record and an
//!   `audit_retention` record says so.
//! - **Flood control.** Refusals go through `flood.rs`; successes are always written.
//!
//! The chain head (`seq` and hash) also goes to the agent's log at each rotation and at
//! shutdown, so a copy of it leaves the host with journald.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::error::AuditError;
use super::files::{cut_torn_tail, first_link, last_link, log_files, rotated_files, rotated_name, Link};
use super::flood::{Admit, RefusalLimiter, Summary, WINDOW};
use super::head::{Head, HeadFile};
use super::record::{sha256_hex, AuditNote, AuditRecord, Peer, GENESIS};
use crate::config::Config;

/// Where the log goes and how it is bounded.
#[derive(Clone, Debug)]
pub struct AuditSettings {
    /// The log file.
    pub path: PathBuf,
    /// The head file.
    pub head: PathBuf,
    /// Rotation size.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub max_files: u64,
    /// Refusal records per uid per second before they are summarised.
    pub refusals_per_second: u32,
}

impl AuditSettings {
    /// A log at `path` with its head at `<folder>/audit.head` and the default limits.
    pub fn new(path: &Path) -> Self {
        let head = path.parent().unwrap_or(Path::new(".")).join("audit.head");
        Self {
            path: path.to_path_buf(),
            head,
            max_bytes: crate::config::DEFAULT_AUDIT_MAX_BYTES,
            max_files: crate::config::DEFAULT_AUDIT_MAX_FILES,
            refusals_per_second: crate::config::DEFAULT_AUDIT_REFUSALS_PER_SECOND,
        }
    }

    /// The settings of a config.
    pub fn from_config(config: &Config) -> Self {
        Self {
            path: config.audit_log(),
            head: config.audit_head(),
            max_bytes: config.audit_max_bytes(),
            max_files: config.audit_max_files(),
            refusals_per_second: config.audit_refusals_per_second(),
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    record: &'a AuditRecord<'a>,
}

/// The open file and both ends of the chain.
struct Tail {
    file: File,
    seq: u64,
    prev: String,
    /// Bytes of complete records in the open file.
    size: u64,
    /// N of the next `<path>.<N>`.
    next_index: u64,
    /// The first record kept.
    first: Link,
    /// A failed write may have left a partial line past `size`.
    torn: bool,
    /// The last write failed (errors are logged once per outage).
    failing: bool,
}

struct Inner {
    tail: Tail,
    head: HeadFile,
    limiter: RefusalLimiter,
}

/// The append-only audit file.
pub struct AuditLog {
    inner: Mutex<Inner>,
    settings: AuditSettings,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log and its head, repairs a torn last line, and
    /// continues the chain from the last complete record (of the file or, when it is empty,
    /// of the newest rotated file).
    ///
    /// # Errors
    /// When a file cannot be opened, read or repaired, the last line is not a record, or the
    /// record of a repair cannot be written.
    pub fn open(settings: AuditSettings) -> Result<Self, AuditError> {
        let path = &settings.path;
        let open_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| AuditError::Open { path: p, source }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(open_err(dir))?;
        }
        let mut file = OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(open_err(path))?;
        let cut = cut_torn_tail(&mut file, path)?;
        let size = file.metadata().map_err(open_err(path))?.len();
        let rotated = rotated_files(path).map_err(open_err(path))?;
        let next_index = rotated.last().map_or(1, |(n, _)| n + 1);
        let last = match (size, rotated.last()) {
            (0, Some((_, newest))) => last_link(newest)?,
            _ => last_link(path)?,
        };
        let (seq, prev) = last.map_or((0, GENESIS.to_owned()), |l| (l.seq, l.hash));
        let first = first_kept(path)?.unwrap_or(Link { seq: seq + 1, hash: prev.clone() });
        let (head, current) = HeadFile::open(&settings.head).map_err(open_err(&settings.head))?;
        let mismatch = compare_head(current, seq, &prev, &first);
        let tail = Tail { file, seq, prev, size, next_index, first, torn: false, failing: false };
        let limiter = RefusalLimiter::new(settings.refusals_per_second);
        let log = Self { inner: Mutex::new(Inner { tail, head, limiter }), settings };
        {
            let mut inner = log.lock();
            log.write_head(&inner);
            if let Some(cut) = cut {
                tracing::warn!(path = %log.settings.path.display(), dropped_bytes = cut.dropped_bytes, "audit log ended in a partial record; cut it off");
                let note = AuditNote::Repaired { dropped_bytes: cut.dropped_bytes, dropped_sha256: cut.dropped_sha256 };
                log.append(&mut inner, &internal("audit_repair", note))?;
            }
            if let Some(note) = mismatch {
                tracing::warn!(path = %log.settings.path.display(), head = %log.settings.head.display(), ?note, "audit log does not match its head: records are missing");
                log.append(&mut inner, &internal("audit_head_mismatch", note))?;
            }
        }
        Ok(log)
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.settings.path
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends one record as a single `write`, unless it is a refusal over its uid's budget
    /// (then it is counted for a `refusals_suppressed` summary and `Ok`).
    ///
    /// # Errors
    /// The record is not in the file.
    pub fn record(&self, record: &AuditRecord<'_>) -> Result<(), AuditError> {
        let mut inner = self.lock();
        let now = Instant::now();
        let due = inner.limiter.take_due(now);
        self.write_summaries(&mut inner, due);
        if record.is_refusal() && inner.limiter.admit(record.peer, record.op, record.outcome, now) == Admit::Suppress {
            return Ok(());
        }
        self.append(&mut inner, record)
    }

    /// Appends `record` and syncs it to disk before returning its `seq`: for a record that
    /// must exist before an irreversible act (a key's retirement destroys it after this).
    /// Never folded into a refusal summary.
    ///
    /// # Errors
    /// The record is not in the file, or not on disk.
    pub fn record_durable(&self, record: &AuditRecord<'_>) -> Result<u64, AuditError> {
        let mut inner = self.lock();
        self.append(&mut inner, record)?;
        let tail = &mut inner.tail;
        if let Err(source) = tail.file.sync_data() {
            return Err(self.failed(tail, AuditError::Write { path: self.settings.path.clone(), source }));
        }
        Ok(tail.seq)
    }

    /// Writes the summaries of refusal windows that have closed (called every second, so a
    /// flood that stops is still summarised).
    pub fn flush_suppressed(&self) {
        let mut inner = self.lock();
        let due = inner.limiter.take_due(Instant::now());
        self.write_summaries(&mut inner, due);
    }

    fn write_summaries(&self, inner: &mut Inner, due: Vec<Summary>) {
        for s in due {
            let note = AuditNote::Suppressed {
                refused_op: s.op,
                suppressed: s.suppressed,
                window_ms: u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX),
            };
            let record =
                AuditRecord { note: Some(note), ..AuditRecord::new(s.peer, "refusals_suppressed", &s.outcome) };
            // A failure is logged by `append`; the count is lost with the write.
            let _ = self.append(inner, &record);
        }
    }

    fn append(&self, inner: &mut Inner, record: &AuditRecord<'_>) -> Result<(), AuditError> {
        self.untear(&mut inner.tail)?;
        let mut text = encode(&inner.tail, record)?;
        if inner.tail.size > 0 && inner.tail.size + text.len() as u64 + 1 > self.settings.max_bytes {
            if let Some(note) = self.rotate(&mut inner.tail) {
                let retention = encode(&inner.tail, &internal("audit_retention", note))?;
                self.write_line(inner, &retention)?;
                text = encode(&inner.tail, record)?;
            }
        }
        self.write_line(inner, &text)
    }

    /// Cuts what an earlier failed write left past the last complete record.
    fn untear(&self, tail: &mut Tail) -> Result<(), AuditError> {
        if tail.torn {
            tail.file
                .set_len(tail.size)
                .map_err(|source| self.failed(tail, AuditError::Torn { path: self.settings.path.clone(), source }))?;
            tail.torn = false;
        }
        Ok(())
    }

    fn write_line(&self, inner: &mut Inner, text: &str) -> Result<(), AuditError> {
        let tail = &mut inner.tail;
        let line = format!("{text}\n");
        if let Err(source) = tail.file.write_all(line.as_bytes()) {
            tail.torn = true;
            // Usually possible at once (a truncation frees space); else before the next one.
            if tail.file.set_len(tail.size).is_ok() {
                tail.torn = false;
            }
            return Err(self.failed(tail, AuditError::Write { path: self.settings.path.clone(), source }));
        }
        if tail.failing {
            tail.failing = false;
            tracing::info!(path = %self.settings.path.display(), "audit log writable again");
        }
        tail.size += line.len() as u64;
        tail.seq += 1;
        tail.prev = sha256_hex(text.as_bytes());
        self.write_head(inner);
        Ok(())
    }

    /// Logs the first failure of an outage (later ones at debug level: a full disk must not
    /// also flood the journal) and returns it.
    fn failed(&self, tail: &mut Tail, e: AuditError) -> AuditError {
        let chain = keyward_core::error::chain(&e);
        if tail.failing {
            tracing::debug!(error = %chain, "audit record not written");
        } else {
            tail.failing = true;
            tracing::error!(error = %chain, "audit record not written; private-key results are withheld until it can be");
        }
        e
    }

    /// The head is rewritten in place (`head.rs`), which needs no new space; an I/O error is
    /// logged, and shows later as a head behind the log, which `verify` accepts.
    fn write_head(&self, inner: &Inner) {
        let t = &inner.tail;
        let head = Head { seq: t.seq, hash: t.prev.clone(), first_seq: t.first.seq, first_prev: t.first.hash.clone() };
        if let Err(e) = inner.head.write(&head) {
            tracing::error!(head = %self.settings.head.display(), error = %e, "cannot write the audit head");
        }
    }

    /// Renames the full file to `<path>.<N>`, opens a new one and removes the oldest rotated
    /// files beyond `max_files`. On a failed rename the old file keeps receiving records.
    fn rotate(&self, tail: &mut Tail) -> Option<AuditNote> {
        let path = &self.settings.path;
        let target = rotated_name(path, tail.next_index);
        let renamed = if target.exists() {
            Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "rotated file already exists"))
        } else {
            std::fs::rename(path, &target)
        };
        let opened = renamed.and_then(|()| OpenOptions::new().create_new(true).append(true).mode(0o600).open(path));
        match opened {
            Ok(file) => {
                tail.file = file;
                tail.size = 0;
                tail.next_index += 1;
                tracing::info!(rotated_to = %target.display(), seq = tail.seq, head = %tail.prev, "audit log rotated; chain head");
            }
            Err(e) => {
                tracing::error!(path = %path.display(), to = %target.display(), error = %e, "cannot rotate the audit log; still appending to the current file");
                return None;
            }
        }
        self.remove_oldest(tail)
    }

    fn remove_oldest(&self, tail: &mut Tail) -> Option<AuditNote> {
        let path = &self.settings.path;
        let rotated = match rotated_files(path) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot list rotated audit files");
                return None;
            }
        };
        let excess = rotated.len().saturating_sub(usize::try_from(self.settings.max_files).unwrap_or(usize::MAX));
        let mut removed = 0;
        for (_, old) in rotated.iter().take(excess) {
            match std::fs::remove_file(old) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::error!(file = %old.display(), error = %e, "cannot remove an old audit file");
                    break;
                }
            }
        }
        if removed == 0 {
            return None;
        }
        match first_kept(path) {
            Ok(Some(first)) => tail.first = first,
            Ok(None) => tail.first = Link { seq: tail.seq + 1, hash: tail.prev.clone() },
            Err(e) => {
                tracing::error!(error = %keyward_core::error::chain(&e), "cannot read the first kept audit record")
            }
        }
        tracing::info!(removed, kept_from_seq = tail.first.seq, "removed old audit files (audit_max_files)");
        Some(AuditNote::Retention { removed_files: removed, kept_from_seq: tail.first.seq })
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let mut inner = self.lock();
        let pending = inner.limiter.take_all();
        self.write_summaries(&mut inner, pending);
        tracing::info!(path = %self.settings.path.display(), seq = inner.tail.seq, head = %inner.tail.prev, "audit log closed; chain head");
    }
}

/// A record the agent writes about its own log.
fn internal(op: &'static str, note: AuditNote) -> AuditRecord<'static> {
    AuditRecord { note: Some(note), ..AuditRecord::new(Peer::agent(), op, "ok") }
}

fn encode(tail: &Tail, record: &AuditRecord<'_>) -> Result<String, AuditError> {
    let ts = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    serde_json::to_string(&Line { ts, seq: tail.seq + 1, prev: &tail.prev, record }).map_err(AuditError::Encode)
}

/// The first record of the oldest file that has one.
fn first_kept(path: &Path) -> Result<Option<Link>, AuditError> {
    let files = log_files(path).map_err(|source| AuditError::Open { path: path.to_path_buf(), source })?;
    for file in files {
        if let Some(link) = first_link(&file)? {
            return Ok(Some(link));
        }
    }
    Ok(None)
}

/// What the head file says against what the log holds: `None` when they agree, or the log
/// ran ahead of the head (a crash between the record and the head write).
fn compare_head(current: Result<Option<Head>, String>, seq: u64, prev: &str, first: &Link) -> Option<AuditNote> {
    let note = |head: Option<&Head>| AuditNote::HeadMismatch {
        head_seq: head.map(|h| h.seq),
        head_first_seq: head.map(|h| h.first_seq),
        found_last_seq: seq,
        found_first_seq: first.seq,
    };
    match current {
        Ok(None) if seq == 0 => None,
        Ok(None) | Err(_) => Some(note(None)),
        Ok(Some(head)) => {
            let end_ok = head.seq < seq || (head.seq == seq && head.hash == prev);
            let start_ok = head.first_seq == first.seq && head.first_prev == first.hash;
            (!(end_ok && start_ok)).then(|| note(Some(&head)))
        }
    }
}
