//! `keyward check` on a healthy site and on broken ones (real SoftHSM, openssl CA, running
//! agent, the repository's own systemd unit and drop-ins): one line per check, the verdict,
//! exit 0 unless a check failed. Broken: a wrong PIN (tried once, after the token's PIN flags
//! were read), the certificate of another key, an expired certificate with the agent down, a
//! key past its `max_key_age`, `allowed_executables` for other uids under a unit without the
//! drop-in it needs, an audit log the service user cannot write, a venv without the plug-in;
//! and a certificate inside its renewal threshold (a warning, exit 0). Run with `--nocapture`
//! to see the reports.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use keyward_tests::{AgentProcess, Site, TestCa};

/// A site with key `site-1`, its certificate from a test CA (valid `days`), and the CA pinned
/// in `[keys.site-1.nvflare]`; returns the CA too.
fn site_with_certificate(days: i32) -> (Site, TestCa) {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let csr = site.path("site-1.csr");
    site.keyward_ok(&["csr", "site-1", "--subject", "CN=site-1,O=nvidia", "--out", csr.to_str().unwrap()]);
    let ca = TestCa::new(site.hsm.dir.path(), "ca");
    ca.issue_days(&csr, &site.path("site-1.crt"), "subjectAltName=DNS:site-1\n", days);
    if days > 0 {
        site.keyward_ok(&["cert", "install", "site-1", site.path("site-1.crt").to_str().unwrap()]);
    }
    site.append_config(&format!(
        "[keys.site-1.nvflare]\nroot_ca = {:?}\nserver_identity = \"server1\"\n",
        ca.cert.display().to_string()
    ));
    (site, ca)
}

fn check(site: &Site) -> (Option<i32>, String) {
    check_with(site, &[])
}

fn check_with(site: &Site, args: &[&str]) -> (Option<i32>, String) {
    let mut argv = vec!["check"];
    argv.extend_from_slice(args);
    let out = site.keyward(&argv);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("$ keyward {}   # exit {:?}\n{text}", argv.join(" "), out.status.code());
    (out.status.code(), text)
}

/// A copy of the repository's unit in the site's folder, with the named drop-ins from
/// deploy/systemd/drop-ins in its `.d` folder; returns the unit's path.
fn unit_with(site: &Site, drop_ins: &[&str]) -> String {
    let deploy = keyward_tests::workspace_root().join("deploy/systemd");
    let unit = site.path("keyward.service");
    std::fs::copy(deploy.join("keyward.service"), &unit).unwrap();
    let dir = site.path("keyward.service.d");
    std::fs::create_dir_all(&dir).unwrap();
    for name in drop_ins {
        std::fs::copy(deploy.join("drop-ins").join(name), dir.join(name)).unwrap();
    }
    unit.display().to_string()
}

fn line<'a>(report: &'a str, prefix: &str) -> &'a str {
    report.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` line in:\n{report}"))
}

#[test]
fn a_healthy_site_passes_every_check() {
    let (site, _ca) = site_with_certificate(1);
    let _agent = AgentProcess::start(&site);
    let (code, report) = check(&site);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.ends_with("verdict: healthy\n"), "{report}");
    line(&report, "[ OK ] token: reachable; PIN flags clean");
    line(&report, "[ OK ] pin: accepted by token");
    line(&report, "[ OK ] key site-1: present (rsa-2048)");
    assert!(line(&report, "[ OK ] certificate site-1: the key's; signed by the root CA").contains("expires in "));
    line(&report, "[ OK ] agent: answering on");
    line(&report, "[ OK ] audit log:");

    let unit = unit_with(&site, &[]);
    let (code, report) = check_with(&site, &["--unit", &unit, "--user", "root"]);
    assert_eq!(code, Some(0), "{report}");
    line(&report, "[ OK ] service user: `root` can write the socket's folder and the audit log");
    line(&report, "[ OK ] unit sandbox:");
}

#[test]
fn allowed_executables_for_other_uids_need_the_drop_in() {
    let (site, _ca) = site_with_certificate(1);
    site.set_config("access", "allowed_uids", toml::Value::Array(vec![toml::Value::Integer(0), 65534.into()]));
    site.append_config("[keys.site-1]\nallowed_executables = [\"/usr/bin/python3\"]\n");
    let _agent = AgentProcess::start(&site);
    let unit = unit_with(&site, &["softhsm.conf"]);
    let (code, report) = check_with(&site, &["--unit", &unit, "--user", "root"]);
    assert_eq!(code, Some(1), "{report}");
    assert!(line(&report, "[FAIL] unit sandbox:").contains("add the allowed-executables.conf drop-in"), "{report}");
    let unit = unit_with(&site, &["softhsm.conf", "allowed-executables.conf"]);
    let (code, report) = check_with(&site, &["--unit", &unit, "--user", "root"]);
    assert_eq!(code, Some(0), "{report}");
    line(&report, "[ OK ] unit sandbox:");
}

#[test]
fn an_audit_log_the_service_user_cannot_write_fails_the_check() {
    let (site, _ca) = site_with_certificate(1);
    let _agent = AgentProcess::start(&site);
    let (code, report) = check_with(&site, &["--user", "nobody"]);
    assert_eq!(code, Some(1), "{report}");
    let failed: Vec<&str> = report.lines().filter(|l| l.starts_with("[FAIL] service user:")).collect();
    assert!(failed.iter().any(|l| l.contains("is not writable by the service user `nobody`")), "{report}");
}

#[test]
fn a_key_past_its_max_key_age_and_a_venv_without_the_plug_in_fail_the_check() {
    let (site, _ca) = site_with_certificate(1);
    site.append_config("[keys.site-1.renewal]\nmax_key_age = \"1s\"\n");
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let _agent = AgentProcess::start(&site);
    let venv = site.path("venv");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::fs::create_dir_all(venv.join("lib/python3.12/site-packages")).unwrap();
    let python = venv.join("bin/python").display().to_string();
    let (code, report) = check_with(&site, &["--python", &python]);
    assert_eq!(code, Some(1), "{report}");
    assert!(line(&report, "[FAIL] key age site-1:").contains("past max_key_age: rotate it"), "{report}");
    assert!(line(&report, "[FAIL] plug-in:").contains("no keyward_nvflare.pth"), "{report}");
    assert!(report.contains("verdict: 2 check(s) failed"), "{report}");
}

#[test]
fn a_certificate_inside_its_renewal_threshold_is_a_warning() {
    let (site, _ca) = site_with_certificate(1);
    site.append_config("[keys.site-1.renewal]\nthreshold = \"25h\"\n");
    let _agent = AgentProcess::start(&site);
    let (code, report) = check(&site);
    assert_eq!(code, Some(0), "{report}");
    assert!(line(&report, "[WARN] certificate site-1:").contains("keyward nvflare request --renew"), "{report}");
    assert!(report.ends_with("verdict: healthy, 1 warning(s)\n"), "{report}");
}

#[test]
fn a_wrong_pin_is_tried_once_and_fails_the_check() {
    let (site, _ca) = site_with_certificate(1);
    let _agent = AgentProcess::start(&site);
    let pin_file = site.hsm.pin_file.clone();
    let mode = std::fs::metadata(&pin_file).unwrap().permissions();
    std::fs::write(&pin_file, "000000").unwrap();
    std::fs::set_permissions(&pin_file, mode).unwrap();
    let (code, report) = check(&site);
    assert_eq!(code, Some(1), "{report}");
    line(&report, "[ OK ] token: reachable; PIN flags clean");
    assert!(line(&report, "[FAIL] pin:").contains("PIN rejected"), "{report}");
    assert!(report.contains("verdict: 1 check(s) failed"), "{report}");
}

#[test]
fn the_certificate_of_another_key_fails_the_check() {
    let (site, ca) = site_with_certificate(1);
    site.generate("other", "rsa-2048");
    let csr = site.path("other.csr");
    site.keyward_ok(&["csr", "other", "--subject", "CN=site-1,O=nvidia", "--out", csr.to_str().unwrap()]);
    ca.issue(&csr, &site.path("other.crt"), "subjectAltName=DNS:site-1\n");
    std::fs::copy(site.path("other.crt"), site.state_dir.join("certs/site-1.pem")).unwrap();
    let _agent = AgentProcess::start(&site);
    let (code, report) = check(&site);
    assert_eq!(code, Some(1), "{report}");
    assert!(line(&report, "[FAIL] certificate site-1:").contains("not the public key of `site-1`"), "{report}");
}

#[test]
fn an_expired_certificate_and_a_stopped_agent_fail_the_check() {
    let (site, _ca) = site_with_certificate(-1);
    std::fs::create_dir_all(site.state_dir.join("certs")).unwrap();
    std::fs::copy(site.path("site-1.crt"), site.state_dir.join("certs/site-1.pem")).unwrap();
    let (code, report) = check(&site);
    assert_eq!(code, Some(1), "{report}");
    assert!(line(&report, "[FAIL] certificate site-1:").contains("expired"), "{report}");
    line(&report, "[FAIL] agent: nothing answers on");
    assert!(report.contains("verdict: 2 check(s) failed"), "{report}");
}
