//! The audit log as an operator checks it: one hash chain across agent restarts, verified by
//! `keyward audit verify`, which names the line an edit, a removal or a reordering broke.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use keyward_tests::{AgentProcess, Site};

fn sign_a_few(site: &Site, n: usize) {
    let msg = site.path("m");
    std::fs::write(&msg, b"site-1 audit").unwrap();
    for _ in 0..n {
        site.keyward_ok(&["sign", "site-1", "--profile", "tls", "--in", msg.to_str().unwrap(), "--out", "/dev/null"]);
    }
}

#[test]
fn the_chain_survives_restarts_and_verify_names_the_tampered_line() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    for _ in 0..2 {
        let mut agent = AgentProcess::start(&site);
        sign_a_few(&site, 3);
        assert!(agent.terminate().success());
    }
    let records = site.audit_records();
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seq continues across restarts");
    let out = site.keyward_ok(&["audit", "verify"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("chain intact"), "{out:?}");

    let log = site.audit_log();
    let original = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = original.lines().collect();
    let edited = lines[2].replace("\"outcome\":\"ok\"", "\"outcome\":\"unknown_key\"");
    lines[2] = &edited;
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let out = site.keyward(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3 was changed"), "{out:?}");

    let mut lines: Vec<&str> = original.lines().collect();
    lines.remove(1);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let out = site.keyward(&["audit", "verify"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed before line 2"), "{out:?}");
}
