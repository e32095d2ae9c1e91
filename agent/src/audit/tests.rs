//! The log and its verification together, on real files in a temp dir: the chain across
//! restarts and rotated files, what the head adds (a removed or edited last record, removed
//! first records), retention, a torn tail repaired at start, and flood control. A write
//! failing on a full file system is tested end to end on a real tmpfs
//! (`tests/tests/audit_fail_closed.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::chain::{verify_against_head, verify_chain, verify_files, ChainBreak, ChainSummary, Place};
use super::{log_files, read_head, sha256_hex, AuditLog, AuditRecord, AuditSettings, Peer, GENESIS};

fn peer(uid: u32) -> Peer {
    Peer { uid, gid: uid, pid: Some(42), connected: Duration::ZERO }
}

fn append(log: &AuditLog, n: u64) {
    for i in 0..n {
        let record = AuditRecord {
            request_id: i,
            key: Some("site-1"),
            profile: Some("nvflare"),
            payload_len: Some(42),
            ..AuditRecord::new(peer(1000), "sign", "ok")
        };
        log.record(&record).unwrap();
    }
}

fn settings(dir: &Path, max_bytes: u64) -> AuditSettings {
    AuditSettings { max_bytes, ..AuditSettings::new(&dir.join("audit.log")) }
}

fn write_log(dir: &Path, n: u64) -> Vec<String> {
    // Two agent "runs" over the same file: the chain and seq continue.
    for _ in 0..2 {
        append(&AuditLog::open(settings(dir, 1 << 20)).unwrap(), n);
    }
    std::fs::read_to_string(dir.join("audit.log")).unwrap().lines().map(str::to_owned).collect()
}

fn check(lines: &[String]) -> Result<ChainSummary, ChainBreak> {
    verify_chain(std::io::Cursor::new(lines.join("\n")))
}

fn line(n: u64) -> Place {
    Place { file: String::new(), line: n }
}

/// Verifies the log in `dir` against its head.
fn verify_dir(dir: &Path) -> Result<ChainSummary, ChainBreak> {
    let files = log_files(&dir.join("audit.log")).unwrap();
    let head = read_head(&dir.join("audit.head")).unwrap();
    verify_against_head(&files, &head, "audit.head")
}

#[test]
fn an_untouched_log_verifies_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let lines = write_log(dir.path(), 3);
    let summary = check(&lines).unwrap();
    assert_eq!((summary.records, summary.first_seq, summary.last_seq), (6, 1, 6));
    assert!(lines[0].contains(GENESIS));
    assert_eq!(verify_dir(dir.path()).unwrap().last_seq, 6);
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

fn rewrite(path: &Path, lines: &[String]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn the_head_shows_a_removed_or_edited_last_record_and_removed_first_records() {
    let dir = tempfile::tempdir().unwrap();
    let lines = write_log(dir.path(), 3);
    let log = dir.path().join("audit.log");

    // The chain alone cannot see these; the head can.
    rewrite(&log, &lines[..5]);
    assert!(check(&lines[..5]).is_ok());
    let err = verify_dir(dir.path()).unwrap_err();
    assert!(matches!(err, ChainBreak::TailRemoved { count: 1, last_seq: 5, head_seq: 6, .. }), "{err}");
    assert!(err.to_string().contains("1 record(s) removed from the end"), "{err}");

    let mut edited = lines.clone();
    edited[5] = edited[5].replace("\"request_id\":2", "\"request_id\":7");
    rewrite(&log, &edited);
    assert!(check(&edited).is_ok());
    assert_eq!(verify_dir(dir.path()), Err(ChainBreak::TailChanged { head: "audit.head".into(), seq: 6 }));

    rewrite(&log, &lines[2..]);
    assert!(check(&lines[2..]).is_ok());
    let err = verify_dir(dir.path()).unwrap_err();
    assert_eq!(err, ChainBreak::StartRemoved { head: "audit.head".into(), count: 2, from: 1, to: 2 });

    rewrite(&log, &lines);
    assert!(verify_dir(dir.path()).is_ok());
}

#[test]
fn records_appended_after_the_head_was_read_are_not_a_break() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 2);
    let head = read_head(&dir.path().join("audit.head")).unwrap();
    append(&AuditLog::open(settings(dir.path(), 1 << 20)).unwrap(), 2);
    let files = log_files(&dir.path().join("audit.log")).unwrap();
    assert_eq!(verify_against_head(&files, &head, "h").unwrap().last_seq, 6);
}

/// A log rotated into several files (about 3 records each), across a restart.
fn rotated_log(dir: &Path) -> Vec<PathBuf> {
    append(&AuditLog::open(settings(dir, 700)).unwrap(), 7);
    append(&AuditLog::open(settings(dir, 700)).unwrap(), 7);
    log_files(&dir.join("audit.log")).unwrap()
}

#[test]
fn the_chain_continues_across_rotated_files_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let files = rotated_log(dir.path());
    assert!(files.len() >= 4, "{files:?}");
    assert!(files[0].ends_with("audit.log.1") && files.last().unwrap().ends_with("audit.log"));
    let summary = verify_files(&files).unwrap();
    assert_eq!((summary.records, summary.first_seq, summary.last_seq), (14, 1, 14));
    assert_eq!(verify_dir(dir.path()).unwrap().records, 14);
    // Each file but the last stays under the size; each new file's first line names the
    // last line of the one before.
    for pair in files.windows(2) {
        assert!(std::fs::metadata(&pair[0]).unwrap().len() <= 700);
        let before = std::fs::read_to_string(&pair[0]).unwrap();
        let after = std::fs::read_to_string(&pair[1]).unwrap();
        let first: serde_json::Value = serde_json::from_str(after.lines().next().unwrap()).unwrap();
        assert_eq!(first["prev"], sha256_hex(before.lines().last().unwrap().as_bytes()));
    }
    // Removing the oldest file by hand leaves a chain, but the head shows the gap.
    assert_eq!(verify_files(&files[1..]).unwrap().last_seq, 14);
    std::fs::remove_file(&files[0]).unwrap();
    assert!(matches!(verify_dir(dir.path()), Err(ChainBreak::StartRemoved { from: 1, .. })));
}

#[test]
fn retention_keeps_max_files_records_it_and_the_kept_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let settings = AuditSettings { max_files: 2, ..settings(dir.path(), 700) };
    let log = AuditLog::open(settings.clone()).unwrap();
    append(&log, 30);
    drop(log);
    let files = log_files(&settings.path).unwrap();
    assert_eq!(files.len(), 3, "two rotated files and the live one: {files:?}");
    let summary = verify_dir(dir.path()).unwrap();
    assert!(summary.first_seq > 1, "old records are gone");
    assert!(summary.events.iter().any(|e| e.op == "audit_retention"), "{:?}", summary.events);
    let head = read_head(&settings.head).unwrap();
    assert_eq!(head.first_seq, summary.first_seq);
    // The retention record says where the kept log starts.
    let retention = summary.events.iter().rev().find(|e| e.op == "audit_retention").unwrap();
    assert!(retention.detail.contains("kept_from_seq="), "{}", retention.detail);
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
    rewrite(&files[0], &lines);
    let err = verify_files(&files).unwrap_err();
    let changed = Place { file: name(0), line: last_line };
    assert_eq!(err, ChainBreak::Changed { changed, detected: Place { file: name(1), line: 1 } });
}

#[test]
fn a_torn_last_line_is_repaired_at_start_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 2);
    let log = dir.path().join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    // A write cut in the middle of a fifth record.
    let torn = "{\"ts\":\"2026-01-01T00:00:00Z\",\"seq\":5,\"pre";
    std::fs::write(&log, format!("{text}{torn}")).unwrap();

    append(&AuditLog::open(settings(dir.path(), 1 << 20)).unwrap(), 1);
    let summary = verify_dir(dir.path()).unwrap();
    assert_eq!((summary.records, summary.last_seq), (6, 6), "seq 5 is the repair record, 6 the new one");
    let repair = &summary.events[0];
    assert_eq!((repair.seq, repair.op.as_str()), (5, "audit_repair"));
    assert!(repair.detail.contains(&format!("dropped_bytes={}", torn.len())), "{}", repair.detail);
    assert!(repair.detail.contains(&sha256_hex(torn.as_bytes())), "{}", repair.detail);
}

#[test]
fn a_log_that_does_not_match_its_head_at_start_gets_a_record_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let lines = write_log(dir.path(), 3);
    rewrite(&dir.path().join("audit.log"), &lines[..4]);
    append(&AuditLog::open(settings(dir.path(), 1 << 20)).unwrap(), 1);
    let summary = verify_dir(dir.path()).unwrap();
    let event = summary.events.iter().find(|e| e.op == "audit_head_mismatch").unwrap();
    assert_eq!(event.seq, 5);
    assert!(event.detail.contains("head_seq=6") && event.detail.contains("found_last_seq=4"), "{}", event.detail);

    // A log without a head (an agent from before heads, or a removed head file) likewise.
    std::fs::remove_file(dir.path().join("audit.head")).unwrap();
    append(&AuditLog::open(settings(dir.path(), 1 << 20)).unwrap(), 1);
    let summary = verify_dir(dir.path()).unwrap();
    let event = summary.events.last().unwrap();
    assert!(event.op == "audit_head_mismatch" && event.detail.contains("head_seq=null"), "{event:?}");
}

#[test]
fn a_last_line_that_is_not_a_record_stops_the_agent_instead_of_restarting_seq() {
    let dir = tempfile::tempdir().unwrap();
    let lines = write_log(dir.path(), 1);
    rewrite(&dir.path().join("audit.log"), &[lines[0].clone(), "garbage".into()]);
    let err = AuditLog::open(settings(dir.path(), 1 << 20)).err().unwrap();
    assert!(err.to_string().contains("is not an audit record"), "{err}");
}

#[test]
fn a_refusal_flood_writes_a_bounded_number_of_records_and_successes_are_never_suppressed() {
    let dir = tempfile::tempdir().unwrap();
    let settings = AuditSettings { refusals_per_second: 5, ..settings(dir.path(), 1 << 20) };
    let log = AuditLog::open(settings).unwrap();
    for _ in 0..10_000 {
        log.record(&AuditRecord::new(peer(1001), "connect", "permission_denied")).unwrap();
    }
    append(&log, 20);
    drop(log); // closes the window: the summary is written
    let records: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let denied = records.iter().filter(|r| r["op"] == "connect").count();
    let summaries: Vec<_> = records.iter().filter(|r| r["op"] == "refusals_suppressed").collect();
    assert_eq!(denied, 5);
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0]["suppressed"], 9_995);
    assert_eq!(summaries[0]["outcome"], "permission_denied");
    assert_eq!(summaries[0]["refused_op"], "connect");
    assert_eq!(summaries[0]["peer"]["uid"], 1001);
    assert_eq!(records.iter().filter(|r| r["op"] == "sign").count(), 20);
    assert!(verify_dir(dir.path()).is_ok());
}
