//! `keyward check` on a healthy site and on broken ones (real SoftHSM, openssl CA, running
//! agent): one line per check, the verdict, exit 0 unless a check failed. Broken: a wrong PIN
//! (tried once, after the token's PIN flags were read), the certificate of another key, an
//! expired certificate with the agent down; and a certificate inside its renewal threshold
//! (a warning, exit 0). Run with `--nocapture` to see the reports.

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
    let out = site.keyward(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("$ keyward check   # exit {:?}\n{text}", out.status.code());
    (out.status.code(), text)
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
