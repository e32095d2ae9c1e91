//! The audit log as an operator checks it: one hash chain across agent restarts and rotated
//! files, verified by `keyward audit verify`, which names the file and line an edit, a
//! removal, a reordering or a missing rotated file broke.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use keyward_tests::{AgentProcess, Site};

fn sign_a_few(site: &Site, n: usize) {
    let msg = site.path("m");
    std::fs::write(&msg, b"site-1 audit").unwrap();
    for _ in 0..n {
        site.keyward_ok(&["sign", "site-1", "--profile", "tls", "--in", msg.to_str().unwrap()]);
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
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("line 3 of `{}` was changed", log.display())), "{stderr}");

    let mut lines: Vec<&str> = original.lines().collect();
    lines.remove(1);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let out = site.keyward(&["audit", "verify"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed before line 2 of"), "{out:?}");
}

#[test]
fn rotation_keeps_one_chain_and_verify_names_a_missing_or_misplaced_file() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let text = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(&site.config, format!("audit_max_bytes = 4096\n{text}")).unwrap();
    let mut agent = AgentProcess::start(&site);
    sign_a_few(&site, 30);
    assert!(agent.terminate().success());
    assert!(agent.log_text().contains("audit log rotated; chain head"), "{}", agent.log_text());

    let log = site.audit_log();
    let rotated: Vec<std::path::PathBuf> =
        (1..).map(|n| site.state_dir.join(format!("audit.log.{n}"))).take_while(|p| p.exists()).collect();
    assert!(rotated.len() >= 2, "expected several rotated files, got {rotated:?}");
    for file in &rotated {
        assert!(std::fs::metadata(file).unwrap().len() <= 4096, "{}", file.display());
    }
    let out = site.keyward_ok(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("chain intact") && stdout.contains("audit.log.2"), "{stdout}");

    // Files given out of order.
    let (first, second) = (rotated[0].to_str().unwrap(), rotated[1].to_str().unwrap());
    let out = site.keyward(&["audit", "verify", "--log", second, "--log", first]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("line 1 of `{first}` is out of order")), "{out:?}");

    // A rotated file in the middle removed.
    let moved = site.path("audit.log.1.away");
    std::fs::rename(&rotated[1], &moved).unwrap();
    let out = site.keyward(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let next = rotated.get(2).cloned().unwrap_or(log);
    assert!(stderr.contains(&format!("missing between `{first}` and `{}`", next.display())), "{stderr}");
}
