//! The certificate path with real openssl: a CSR signed inside the token, issued by a
//! throwaway CA, installed (and refused when it belongs to another key), served by the
//! agent; `init` never overwrites a config.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use keyward_tests::tools::assert_success;
use keyward_tests::{openssl, AgentProcess, Site, TestCa};

#[test]
fn csr_is_signed_in_the_token_and_the_issued_certificate_installs_and_is_served() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    site.generate("other", "p-256");
    let csr = site.path("site-1.csr").display().to_string();
    site.keyward_ok(&["csr", "site-1", "--subject", "CN=site-1,O=hospital-a", "--out", &csr]);
    let out = openssl(&["req", "-in", &csr, "-noout", "-verify", "-subject", "-text"]);
    assert_success(&out, "openssl req -verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CN = site-1") && text.contains("O = hospital-a") && text.contains("DNS:site-1"), "{text}");

    let ca = TestCa::new(site.hsm.dir.path(), "ca");
    ca.issue(csr.as_ref(), &site.path("site-1.crt"), "subjectAltName=DNS:site-1\n");
    let crt = site.path("site-1.crt").display().to_string();
    let out = site.keyward_ok(&["cert", "install", "site-1", &crt]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("installed"));
    let again = site.keyward_ok(&["cert", "install", "site-1", &crt]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already installed"));

    // The certificate of one key is refused for another, and nothing is written.
    let wrong = site.keyward(&["cert", "install", "other", &crt]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("not the public key of `other`"), "{wrong:?}");
    assert!(!site.state_dir.join("certs/other.pem").exists());

    // A certificate whose EKU lacks clientAuth is refused (NVFlare would reject it).
    ca.issue(csr.as_ref(), &site.path("server-only.crt"), "extendedKeyUsage=serverAuth\n");
    let eku = site.keyward(&["cert", "install", "site-1", site.path("server-only.crt").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&eku.stderr).contains("clientAuth"), "{eku:?}");

    // The agent serves the installed certificate with the public key.
    let _agent = AgentProcess::start(&site);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reply = rt.block_on(async {
        let mut c = keyward_client::AgentClient::connect(&site.socket).await.unwrap();
        c.call(keyward_protocol::Operation::PublicKey { key: keyward_core::KeyId::new("site-1").unwrap() })
            .await
            .unwrap()
    });
    let keyward_protocol::Reply::PublicKey { certificate_pem, .. } = reply else { panic!("reply") };
    assert_eq!(certificate_pem.unwrap(), std::fs::read_to_string(&crt).unwrap());
    let list = String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap();
    let line = list.lines().find(|l| l.starts_with("site-1")).unwrap();
    assert!(line.ends_with("yes"), "{list}");
}

#[test]
fn init_refuses_to_overwrite_a_config_and_bad_configs_name_the_field() {
    let site = Site::new();
    let before = std::fs::read_to_string(&site.config).unwrap();
    let again = site.keyward(&[
        "init",
        "--backend",
        "pkcs11",
        "--module",
        site.hsm.module.to_str().unwrap(),
        "--token",
        "x",
        "--pin-file",
        site.hsm.pin_file.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read_to_string(&site.config).unwrap(), before);

    site.set_config("limits", "max_connections", 0.into());
    let out = site.keyward(&["key", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limits") && stderr.contains(site.config.to_str().unwrap()), "{stderr}");

    std::fs::write(&site.config, before.replace("[limits]", "[limits]\nmax_frame_byte = 5")).unwrap();
    let stderr = String::from_utf8_lossy(&site.keyward(&["serve"]).stderr).into_owned();
    assert!(stderr.contains("unknown field `max_frame_byte`") && stderr.contains("keyward.toml"), "{stderr}");
}

/// `init --backend pkcs11` without `--pin-file` writes no PIN path into the config: the agent
/// reads the PIN from the systemd credential `keyward-pin` (what the shipped unit's
/// `LoadCredential=` provides) and a command run by hand from `$KEYWARD_PIN_FILE`; with
/// neither, it names every source it looked at.
#[test]
fn init_without_a_pin_file_takes_the_pin_from_the_systemd_credential() {
    let site = Site::new();
    std::fs::remove_file(&site.config).unwrap();
    let (module, socket, state) =
        (site.hsm.module.to_str().unwrap(), site.socket.to_str().unwrap(), site.state_dir.to_str().unwrap());
    let out = site.keyward_ok(&[
        "init",
        "--backend",
        "pkcs11",
        "--module",
        module,
        "--token",
        &site.hsm.label,
        "--socket",
        socket,
        "--state-dir",
        state,
        "--allow-root",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("systemd credential `keyward-pin`"), "{out:?}");
    assert!(!std::fs::read_to_string(&site.config).unwrap().contains("pin_file"));

    let refused = site.keyward(&["key", "generate", "site-1"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("no PIN source") && stderr.contains("KEYWARD_PIN_FILE"));
    let by_hand = site
        .command()
        .env("KEYWARD_PIN_FILE", &site.hsm.pin_file)
        .args(["key", "generate", "site-1"])
        .output()
        .unwrap();
    assert_success(&by_hand, "key generate with $KEYWARD_PIN_FILE");

    let credentials = site.path("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::copy(&site.hsm.pin_file, credentials.join("keyward-pin")).unwrap();
    let agent = AgentProcess::start_with_env(&site, &[("CREDENTIALS_DIRECTORY", credentials.as_os_str())]);
    agent.try_sign("site-1").expect("the agent signs with the PIN from the credential");
}
