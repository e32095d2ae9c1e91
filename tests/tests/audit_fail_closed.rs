//! The audit log where it really runs out: on a real full file system (a 64 KiB tmpfs as
//! the audit folder) a signature is withheld (`audit_failed`) unless its record was written,
//! the agent keeps serving, and signing resumes when space is freed; a record cut mid-line
//! is repaired at the next start and the chain keeps verifying; the head file shows a
//! removed or edited last record and removed first records; retention bounds the files; a
//! refused uid connecting and closing 20,000 times writes a bounded number of records that
//! still count every refusal; `busy` refusals are recorded. Real agent, real SoftHSM2.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keyward_client::BlockingAgentClient;
use keyward_client::ClientError;
use keyward_core::KeyId;
use keyward_protocol::{ErrorCode, Operation, Reply};
use keyward_tests::raw::{error_code, RawConn};
use keyward_tests::tmpfs::Tmpfs;
use keyward_tests::{AgentProcess, Site};
use serde_json::Value;

/// Puts the audit log at `path` (a top-level key, so it goes before the tables).
fn set_audit_log(site: &Site, extra: &str) {
    let text = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(&site.config, format!("{extra}\n{text}")).unwrap();
}

/// One `nvflare` signature over a new connection: the signature, or the error code and
/// message.
fn sign(socket: &Path) -> Result<Vec<u8>, (ErrorCode, String)> {
    let mut c = BlockingAgentClient::connect(socket, Duration::from_secs(20)).unwrap();
    let op = Operation::Sign { key: KeyId::new("site-1").unwrap(), profile: "nvflare".into(), data: b"m".to_vec() };
    match c.call(op) {
        Ok(Reply::Signature { signature, .. }) => Ok(signature),
        Err(ClientError::Agent { code, message }) => Err((code, message)),
        other => panic!("unexpected {other:?}"),
    }
}

fn records(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn verify(site: &Site) -> std::process::Output {
    site.keyward(&["audit", "verify"])
}

fn assert_verifies(site: &Site) -> String {
    let out = verify(site);
    keyward_tests::tools::assert_success(&out, "keyward audit verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("chain intact") && stdout.contains("matches both ends"), "{stdout}");
    stdout
}

#[test]
fn a_full_file_system_withholds_signatures_until_space_is_freed_and_the_chain_verifies() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let fs = Tmpfs::mount(site.path("auditfs"), "64k");
    let log = fs.dir.join("audit.log");
    set_audit_log(&site, &format!("audit_log = \"{}\"", log.display()));
    let mut agent = AgentProcess::start(&site);
    sign(agent.socket()).unwrap();

    let filler = fs.fill();
    // The log's last page may still hold a few records; then every signature is withheld.
    let mut granted = 1;
    let mut refused = None;
    for _ in 0..40 {
        match sign(agent.socket()) {
            Ok(_) => granted += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let (code, message) = refused.expect("a full file system must stop signatures");
    assert_eq!(code, ErrorCode::AuditFailed, "{message}");
    assert!(message.contains("No space left on device") && message.contains("withheld"), "{message}");
    assert!(!message.contains(&log.display().to_string()), "the client is not told the log's path: {message}");
    for _ in 0..3 {
        assert_eq!(sign(agent.socket()).unwrap_err().0, ErrorCode::AuditFailed);
    }
    // The agent keeps serving what returns no private-key result.
    let mut c = BlockingAgentClient::connect(agent.socket(), Duration::from_secs(20)).unwrap();
    assert!(matches!(c.call(Operation::Status).unwrap(), Reply::Status(_)));

    std::fs::remove_file(filler).unwrap();
    sign(agent.socket()).unwrap();
    granted += 1;
    assert!(agent.terminate().success());
    assert!(agent.log_text().contains("audit record not written"), "{}", agent.log_text());
    assert!(agent.log_text().contains("audit log writable again"), "{}", agent.log_text());

    // Exactly the granted signatures are in the log, and no partial line is.
    let signs: Vec<Value> = records(&log).into_iter().filter(|r| r["op"] == "sign").collect();
    assert_eq!(signs.len(), granted, "one record per granted signature, none for a withheld one");
    assert!(signs.iter().all(|r| r["outcome"] == "ok"));
    assert_verifies(&site);
}

#[test]
fn a_record_cut_mid_line_is_repaired_at_start_even_after_a_full_disk_and_verify_passes() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let fs = Tmpfs::mount(site.path("auditfs"), "64k");
    let log = fs.dir.join("audit.log");
    set_audit_log(&site, &format!("audit_log = \"{}\"", log.display()));
    let mut agent = AgentProcess::start(&site);
    for _ in 0..3 {
        sign(agent.socket()).unwrap();
    }
    assert!(agent.terminate().success());

    // A write cut by a full disk: the record's first half, then as much more as fits.
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap().to_owned();
    let half = &last[..last.len() / 2];
    std::fs::write(&log, format!("{text}{half}")).unwrap();
    let filler = fs.fill();
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    while file.write_all(half.as_bytes()).is_ok() {}
    drop(file);
    let torn = std::fs::metadata(&log).unwrap().len() - text.len() as u64;

    // Cutting the torn bytes frees room in the file's last page; if the repair record does
    // not fit there, the agent must refuse to start (naming the cause), never serve without
    // it.
    let mut first = AgentProcess::spawn(&site);
    if !started_or_refused(&first) {
        let why = first.log_text();
        assert!(why.contains("opening the audit log") && why.contains("No space left on device"), "{why}");
        assert!(!first.wait_exit(Duration::from_secs(20)).success());
        std::fs::remove_file(&filler).unwrap();
        first = AgentProcess::start(&site);
    }
    sign(first.socket()).unwrap();
    assert!(first.terminate().success());
    let _ = std::fs::remove_file(&filler);
    let all = records(&log);
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seq continues from the last complete record");
    let repair = all.iter().find(|r| r["op"] == "audit_repair").expect("an audit_repair record");
    assert_eq!(repair["dropped_bytes"], torn);
    let stdout = assert_verifies(&site);
    assert!(stdout.contains("cut a partial last record"), "{stdout}");
}

/// Whether the agent came up (true) or exited with an error in its log (false).
fn started_or_refused(agent: &AgentProcess) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if agent.log_text().contains("keyward: error:") {
            return false;
        }
        if let Ok(mut c) = BlockingAgentClient::connect(agent.socket(), Duration::from_secs(5)) {
            if c.call(Operation::Hello).is_ok() {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("agent neither ready nor stopped after 20 s: {}", agent.log_text());
}

#[test]
fn verify_finds_a_removed_or_edited_last_record_and_removed_first_records() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let mut agent = AgentProcess::start(&site);
    for _ in 0..5 {
        sign(agent.socket()).unwrap();
    }
    assert!(agent.terminate().success());
    assert_verifies(&site);
    let log = site.audit_log();
    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let write = |lines: &[&str]| std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let fails_with = |needle: &str| {
        let out = verify(&site);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    };

    let n = lines.len();
    write(&lines[..n - 1]);
    fails_with(&format!("1 record(s) removed from the end: the log ends at seq {}", n - 1));
    let edited = lines[n - 1].replace("\"outcome\":\"ok\"", "\"outcome\":\"busy\"");
    assert_ne!(edited, lines[n - 1]);
    write(&[&lines[..n - 1], &[edited.as_str()]].concat());
    fails_with(&format!("the record with seq {n} was changed or replaced"));
    write(&lines[2..]);
    fails_with("2 record(s) removed from the start (seq 1 to 2)");
    write(&lines);
    assert_verifies(&site);
    std::fs::remove_file(site.state_dir.join("audit.head")).unwrap();
    fails_with("cannot read the audit head");
}

#[test]
fn rotation_keeps_audit_max_files_and_the_kept_chain_verifies() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    set_audit_log(&site, "audit_max_bytes = 4096\naudit_max_files = 2");
    let mut agent = AgentProcess::start(&site);
    for _ in 0..60 {
        sign(agent.socket()).unwrap();
    }
    assert!(agent.terminate().success());
    let rotated: Vec<PathBuf> =
        std::fs::read_dir(&site.state_dir).unwrap().map(|e| e.unwrap().path()).filter(|p| is_rotated(p)).collect();
    assert_eq!(rotated.len(), 2, "{rotated:?}");
    let stdout = assert_verifies(&site);
    assert!(stdout.contains("rotated files were removed"), "{stdout}");
    assert!(!stdout.contains("seq 1 to"), "the oldest records are gone: {stdout}");
}

fn is_rotated(p: &Path) -> bool {
    let name = p.file_name().unwrap().to_str().unwrap();
    name.strip_prefix("audit.log.").is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
}

/// Waits until the agent refuses a connection with `permission_denied` (not `busy`);
/// returns how many connections it refused meanwhile.
fn wait_refused(socket: &Path) -> u64 {
    let start = Instant::now();
    let mut refused = 0;
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(stream) = std::os::unix::net::UnixStream::connect(socket) {
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut c = RawConn { stream };
            refused += 1;
            if error_code(&c.read_reply()) == Some("permission_denied") {
                return refused;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("agent not answering");
}

#[test]
fn a_refused_uid_connecting_and_closing_20000_times_writes_a_bounded_count_of_records() {
    const FLOOD: u64 = 20_000;
    let site = Site::new();
    // The test runs as root; only uid 65534 is allowed, so every connection here is refused.
    site.set_config("access", "allowed_uids", vec![toml::Value::from(65534)].into());
    let mut agent = AgentProcess::spawn(&site);
    let mut probes = wait_refused(agent.socket());
    let started = Instant::now();
    for _ in 0..FLOOD {
        drop(std::os::unix::net::UnixStream::connect(agent.socket()).unwrap());
    }
    let flood_took = started.elapsed();
    // A last refusal read to the end: every connection before it has been accepted.
    probes += wait_refused(agent.socket());
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.terminate().success());

    let all = site.audit_records();
    let size = std::fs::metadata(site.audit_log()).unwrap().len();
    let written = all.iter().filter(|r| r["op"] == "connect").count() as u64;
    let summaries: Vec<&Value> = all.iter().filter(|r| r["op"] == "refusals_suppressed").collect();
    let suppressed: u64 = summaries.iter().map(|r| r["suppressed"].as_u64().unwrap()).sum();
    println!(
        "{FLOOD} refused connects in {flood_took:?}: {} records ({written} refusals, {} summaries), {size} bytes",
        all.len(),
        summaries.len()
    );
    assert!(all.len() < 100, "{} records for a flood of {FLOOD}", all.len());
    // Nothing is lost from the count: every refusal (the probes too) is either a record or
    // in a summary, whether refused as `permission_denied` or, past the per-process
    // connection limit, as `busy`.
    // The agent's own readiness self-check (`cli/ready.rs`) is refused as root too: one more.
    assert_eq!(written + suppressed, FLOOD + probes + 1);
    assert!(summaries.iter().all(|r| r["refused_op"] == "connect" && r["peer"]["uid"] == 0));
    assert_verifies(&site);
}

#[test]
fn busy_refusals_at_the_connection_limit_are_recorded() {
    let site = Site::new();
    site.set_config("limits", "max_connections", 1.into());
    let agent = AgentProcess::start(&site);
    std::thread::sleep(Duration::from_millis(200)); // the readiness probe's slot is back
    let mut held = BlockingAgentClient::connect(agent.socket(), Duration::from_secs(20)).unwrap();
    assert!(matches!(held.call(Operation::Hello).unwrap(), Reply::Hello { .. }));
    // The agent's own readiness self-check may have met the harness's readiness probes (this
    // process too) in the one slot, and those were answered `busy` and recorded: count them.
    let busy_of_this_process = || -> Vec<Value> {
        site.audit_records()
            .into_iter()
            .filter(|r| r["outcome"] == "busy" && r["peer"]["pid"] == std::process::id())
            .collect()
    };
    let before = busy_of_this_process().len();
    let mut second = RawConn::connect(agent.socket());
    assert_eq!(error_code(&second.read_reply()), Some("busy"));
    drop(agent);
    let busy = busy_of_this_process();
    assert_eq!(busy.len(), before + 1, "{busy:?}");
    assert_eq!(busy[before]["op"], "connect");
}
