//! `keyward nvflare request` on a real SoftHSM token, checked with openssl: the key is made in
//! the token and the CSR signed there with NVFlare's subject; a definition NVFlare would refuse,
//! an existing request folder or an existing key (without `--renew`) stop it before any key is
//! made; `--renew` asks again for the same key. And `keyward csr` takes `unstructuredName`, the
//! role NVFlare's `cert approve` reads. The whole flow with the real nvflare 2.9.0 is
//! python/tests/e2e/test_distributed_provisioning.py.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use keyward_tests::tools::assert_success;
use keyward_tests::{openssl, Site};

const SITE: &str = "name: kwproject\nparticipants:\n  - name: site-1\n    type: client\n    org: nvidia\n";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn key_names(site: &Site) -> String {
    String::from_utf8_lossy(&site.keyward_ok(&["key", "list"]).stdout).into_owned()
}

#[test]
fn csr_takes_the_unstructured_name_nvflare_reads_the_role_from() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let csr = site.path("site-1.csr").display().to_string();
    site.keyward_ok(&["csr", "site-1", "--subject", "CN=site-1,O=nvidia,unstructuredName=client", "--out", &csr]);
    let out = openssl(&["req", "-in", &csr, "-noout", "-verify", "-subject"]);
    assert_success(&out, "openssl req -verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CN = site-1, O = nvidia, unstructuredName = client"), "{text}");
}

#[test]
fn request_makes_the_key_in_the_token_and_a_csr_with_nvflares_subject() {
    let site = Site::new();
    std::fs::write(site.path("site-1.yaml"), SITE).unwrap();
    let yaml = site.path("site-1.yaml").display().to_string();
    let out_dir = site.path("req");
    let out = site.keyward_ok(&["nvflare", "request", "-p", &yaml, "--out", out_dir.to_str().unwrap()]);
    assert!(stderr(&out).contains("generated rsa-2048 key `site-1`"), "{}", stderr(&out));
    let csr = out_dir.join("site-1.csr").display().to_string();
    let checked = openssl(&["req", "-in", &csr, "-noout", "-verify", "-subject", "-text"]);
    assert_success(&checked, "openssl req -verify");
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(text.contains("subject=CN = site-1, O = nvidia, unstructuredName = client"), "{text}");
    assert!(text.contains("sha256WithRSAEncryption") && !text.contains("X509v3"), "{text}");
    let reference = std::fs::read_to_string(out_dir.join("site-1.key")).unwrap();
    assert!(reference.starts_with("-----BEGIN KEYWARD KEY REFERENCE-----"), "{reference}");
    let public = site.keyward_ok(&["key", "public", "site-1"]).stdout;
    let csr_public = openssl(&["req", "-in", &csr, "-noout", "-pubkey"]).stdout;
    assert_eq!(public, csr_public, "the CSR carries the token key");

    // Again into the same folder: refused before a key is made, nothing changed.
    let before = key_names(&site);
    let again =
        site.keyward(&["nvflare", "request", "-p", &yaml, "--key", "site-1b", "--out", out_dir.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("is never overwritten"), "{}", stderr(&again));
    // The same key name without --renew: refused by the token, with the way out.
    let taken = site.keyward(&["nvflare", "request", "-p", &yaml, "--out", site.path("req2").to_str().unwrap()]);
    assert_eq!(taken.status.code(), Some(5), "{}", stderr(&taken));
    assert!(stderr(&taken).contains("pass --renew"), "{}", stderr(&taken));
    // A definition NVFlare would refuse: nothing is made.
    std::fs::write(site.path("bad.yaml"), SITE.replace("client", "relay")).unwrap();
    let bad = site.keyward(&["nvflare", "request", "-p", site.path("bad.yaml").to_str().unwrap(), "--key", "x"]);
    assert!(stderr(&bad).contains("client, server or admin"), "{}", stderr(&bad));
    assert_eq!(key_names(&site), before, "no key was made by the refused requests");

    // --renew: a new request for the key the token already has.
    let renew_dir = site.path("renew");
    site.keyward_ok(&["nvflare", "request", "-p", &yaml, "--renew", "--out", renew_dir.to_str().unwrap()]);
    let renewed = openssl(&["req", "-in", renew_dir.join("site-1.csr").to_str().unwrap(), "-noout", "-pubkey"]);
    assert_eq!(renewed.stdout, public, "the renewal asks for the same key");
    assert_eq!(key_names(&site), before);
}
