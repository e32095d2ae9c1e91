//! The shipped unit under a real systemd: `deploy/systemd/keyward.service` and its drop-ins,
//! unchanged (the freshly built binary is bound at the unit's `/usr/bin/keyward`), started by
//! systemd as PID 1 of a container over a Debian 12 tree (`tests/src/container.rs`,
//! `scripts/service-tree.sh`). Through the running unit, with the agent as user
//! `keyward` and callers of other uids (`flare` through `setpriv`, root from the host): sign
//! (verified by openssl), decrypt, status, the NVFlare challenge / register / token flow,
//! `systemctl reload` (SIGHUP) and still serving, then a clean stop. And
//! `allowed_executables` across users: refused with a precise error under the plain unit
//! (`ProtectProc=invisible`), served with `allowed-executables.conf`, and not fooled by a bind
//! mount over the allowed path in the caller's own mount namespace. And a unit whose sandbox
//! lets the agent start but not serve (`accept` filtered out) fails its start instead of
//! reporting READY.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;
use keyward_client::AgentClient;
use keyward_core::KeyId;
use keyward_protocol::{Operation, Reply};
use keyward_tests::checks::{openssl_oaep_encrypt, openssl_verifies, pss_sigopts};
use keyward_tests::container::{Container, FLARE_UID, KEYWARD_UID};
use keyward_tests::pki::sign_pss_max_salt;
use keyward_tests::tools::assert_success;
use keyward_tests::{workspace_root, TestCa};

const CONFIG: &str = "/etc/keyward/keyward.toml";
const SOCKET: &str = "/run/keyward/agent.sock";

/// The unit file and a drop-in folder holding `drop_ins`, copied unchanged from `deploy/`.
fn unit_binds(dir: &Path, drop_ins: &[&str]) -> Vec<(PathBuf, &'static str)> {
    let source = workspace_root().join("deploy/systemd");
    let text = std::fs::read_to_string(source.join("keyward.service")).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/keyward "), "the test binds the binary at the unit's ExecStart path");
    let unit = dir.join("keyward.service");
    std::fs::copy(source.join("keyward.service"), &unit).unwrap();
    let d = dir.join("keyward.service.d");
    std::fs::create_dir_all(&d).unwrap();
    for name in drop_ins {
        std::fs::copy(source.join("drop-ins").join(name), d.join(name)).unwrap();
    }
    vec![(unit, "/etc/systemd/system/keyward.service"), (d, "/etc/systemd/system/keyward.service.d")]
}

/// A site as its administrator would set it up: a SoftHSM2 token owned by `keyward`, a key
/// `site-1` with a certificate from `ca`, the root-owned PIN for `LoadCredential`, and the
/// config (`keys_toml` in `[keys.site-1]`). The NVFlare user `flare` joins group `keyward` to reach the
/// socket folder.
fn install_site(ct: &Container, ca: &TestCa, work: &Path, keys_toml: &str) {
    let pin = format!("{:016x}", rand::random::<u64>());
    let so_pin = format!("{:016x}", rand::random::<u64>());
    ct.ok(&["usermod", "--append", "--groups", "keyward", "flare"]);
    ct.ok(&["install", "-d", "-m", "0750", "-o", "root", "-g", "keyward", "/etc/keyward"]);
    ct.ok(&["install", "-d", "-m", "0700", "-o", "keyward", "-g", "keyward", "/var/lib/keyward", "/run/kwsetup"]);
    ct.write("/etc/keyward/pin", pin.as_bytes(), 0o600, 0, 0);
    ct.write("/run/kwsetup/pin", pin.as_bytes(), 0o600, KEYWARD_UID, KEYWARD_UID);
    ct.write("/etc/keyward/rootCA.pem", &std::fs::read(&ca.cert).unwrap(), 0o644, 0, 0);
    let config = format!(
        "socket = \"{SOCKET}\"\nstate_dir = \"/var/lib/keyward\"\n\n[access]\nallowed_uids = [0, {FLARE_UID}]\nsocket_gid = {KEYWARD_UID}\n\n[backend]\ntype = \"pkcs11\"\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken = \"fl-site\"\n\n[keys.site-1]\n{keys_toml}\n[keys.site-1.nvflare]\nroot_ca = \"/etc/keyward/rootCA.pem\"\nserver_identity = \"server1\"\n"
    );
    ct.write(CONFIG, config.as_bytes(), 0o640, 0, KEYWARD_UID);
    // Token work as the agent's user, with the group Debian's softhsm2 gives its files.
    let as_keyward = |argv: &[&str]| {
        let mut full = vec!["setpriv", "--reuid", "keyward", "--regid", "keyward", "--groups", "softhsm", "--"];
        full.extend_from_slice(argv);
        let out = ct.run(&full);
        assert_success(&out, &argv.join(" "));
        out.stdout
    };
    as_keyward(&["softhsm2-util", "--init-token", "--free", "--label", "fl-site", "--so-pin", &so_pin, "--pin", &pin]);
    let keyward = ["env", "KEYWARD_PIN_FILE=/run/kwsetup/pin", "keyward", "--config", CONFIG];
    as_keyward(&[&keyward[..], &["key", "generate", "site-1"]].concat());
    as_keyward(
        &[&keyward[..], &["csr", "site-1", "--subject", "CN=site-1,O=nvidia", "--out", "/run/kwsetup/site-1.csr"]]
            .concat(),
    );
    let csr = work.join("site-1.csr");
    std::fs::copy(ct.host_path("/run/kwsetup/site-1.csr"), &csr).unwrap();
    let crt = work.join("site-1.crt");
    ca.issue(&csr, &crt, "subjectAltName=DNS:site-1\n");
    ct.write("/run/kwsetup/site-1.crt", &std::fs::read(&crt).unwrap(), 0o644, 0, 0);
    as_keyward(&[&keyward[..], &["cert", "install", "site-1", "/run/kwsetup/site-1.crt"]].concat());
    let public = as_keyward(&[&keyward[..], &["key", "public", "site-1"]].concat());
    std::fs::write(work.join("site-1.pub.pem"), public).unwrap();
}

/// `keyward ARGS` inside the container as the NVFlare user.
fn as_flare(ct: &Container, args: &[&str]) -> std::process::Output {
    let mut argv = vec!["keyward", "--config", CONFIG];
    argv.extend_from_slice(args);
    ct.run_as("flare", &argv)
}

fn journal(ct: &Container) -> String {
    ct.ok(&["journalctl", "--unit", "keyward", "--no-pager", "--output", "cat"])
}

fn main_pid(ct: &Container) -> String {
    ct.ok(&["systemctl", "show", "--property", "MainPID", "--value", "keyward"]).trim().to_owned()
}

fn sign_as_flare(ct: &Container, work: &Path, text: &str) {
    ct.write("/tmp/msg", text.as_bytes(), 0o644, 0, 0);
    let out = as_flare(ct, &["sign", "site-1", "--profile", "tls", "--in", "/tmp/msg", "--out", "/tmp/sig"]);
    assert_success(&out, "sign as flare");
    let (msg, sig) = (work.join("msg"), work.join("sig"));
    std::fs::write(&msg, text).unwrap();
    std::fs::copy(ct.host_path("/tmp/sig"), &sig).unwrap();
    ct.ok(&["rm", "-f", "/tmp/sig"]);
    let opts = pss_sigopts("rsa_pss_saltlen:32", "rsa_mgf1_md:sha256");
    assert!(openssl_verifies(&work.join("site-1.pub.pem"), &msg, &sig, "-sha256", &opts), "openssl verifies");
}

#[test]
fn the_shipped_unit_serves_signs_decrypts_registers_and_reloads_under_a_real_systemd() {
    let test_started = Instant::now();
    let work = tempfile::Builder::new().prefix("kwru").tempdir_in("/tmp").unwrap();
    // The container's tmpfiles must not reach the host's /tmp.
    let sentinel = work.path().join("host-tmp-sentinel");
    std::fs::write(&sentinel, b"left alone").unwrap();
    let ca = TestCa::new(work.path(), "root");
    let mut ct = Container::boot(&unit_binds(work.path(), &["softhsm.conf"]));
    eprintln!("tree: {:.1} s, boot: {:.1} s", ct.tree_seconds, ct.boot_seconds);
    install_site(&ct, &ca, work.path(), "");

    // Type=notify: `systemctl start` returns once READY=1 came, which the agent sends only
    // after a `list_keys` through its socket and store was answered (agent/src/cli/ready.rs).
    let out = ct.run(&["systemctl", "start", "keyward"]);
    assert_success(&out, &format!("systemctl start keyward\n{}", journal(&ct)));
    assert_eq!(ct.ok(&["systemctl", "is-active", "keyward"]).trim(), "active");
    let log = journal(&ct);
    assert!(log.contains("keyward agent ready") && log.contains("keys=1"), "{log}");
    let user = ct.ok(&["ps", "-o", "user=", "-p", &main_pid(&ct)]);
    assert_eq!(user.trim(), "keyward");

    // A caller of another uid, at once after start: sign (openssl verifies), decrypt, status.
    sign_as_flare(&ct, work.path(), "signed through the real unit");
    let plain = work.path().join("plain");
    std::fs::write(&plain, b"a data key for the site").unwrap();
    let ct_file = work.path().join("ct");
    openssl_oaep_encrypt(&work.path().join("site-1.pub.pem"), "sha256", &plain, &ct_file);
    ct.write("/tmp/ct", &std::fs::read(&ct_file).unwrap(), 0o644, 0, 0);
    assert_success(&as_flare(&ct, &["decrypt", "site-1", "--in", "/tmp/ct", "--out", "/tmp/pt"]), "decrypt");
    assert_eq!(std::fs::read(ct.host_path("/tmp/pt")).unwrap(), std::fs::read(&plain).unwrap());
    let status = as_flare(&ct, &["status", "--json"]);
    assert_success(&status, "status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["backend_health"], "ok", "{status}");

    // The NVFlare flow from root on the host (uid 0, a pid outside the container).
    nvflare_flow(&ct, &ca, work.path());

    // Reload: same process, still serving.
    let pid = main_pid(&ct);
    assert_success(&ct.run(&["systemctl", "reload", "keyward"]), "systemctl reload keyward");
    sign_as_flare(&ct, work.path(), "signed after a reload");
    assert_eq!(main_pid(&ct), pid, "reload keeps the process");
    assert_eq!(ct.ok(&["systemctl", "is-active", "keyward"]).trim(), "active");
    let log = journal(&ct);
    assert!(log.contains("SIGHUP"), "{log}");

    // The audit names the callers.
    let audit = std::fs::read_to_string(ct.host_path("/var/lib/keyward/audit.log")).unwrap();
    let records: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ok_by =
        |op: &str, uid: u32| records.iter().any(|r| r["op"] == op && r["outcome"] == "ok" && r["peer"]["uid"] == uid);
    assert!(ok_by("sign", FLARE_UID) && ok_by("decrypt", FLARE_UID) && ok_by("nvflare_register", 0), "{audit}");

    // A clean stop: the socket removed, nothing of keyward left running.
    assert_success(&ct.run(&["systemctl", "stop", "keyward"]), "systemctl stop keyward");
    assert_eq!(ct.run(&["systemctl", "is-active", "keyward"]).stdout, b"inactive\n");
    assert!(!ct.host_path(SOCKET).exists(), "socket removed at stop");
    assert!(journal(&ct).contains("keyward agent stopped"));
    assert!(ct.run(&["pgrep", "-x", "keyward"]).stdout.is_empty(), "no keyward process left");
    let leader = ct.leader();
    assert!(ct.stop(), "the container powered off within 30 s");
    assert!(!Path::new(&format!("/proc/{leader}")).exists(), "the container's systemd is gone");
    assert_eq!(std::fs::read(&sentinel).unwrap(), b"left alone", "host /tmp untouched");
    assert!(Path::new("/dev/null")
        .metadata()
        .map(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()))
        .unwrap());
    eprintln!("real-unit test: {:.1} s in all", test_started.elapsed().as_secs_f64());
}

fn nvflare_flow(ct: &Container, ca: &TestCa, work: &Path) {
    let (server_key, server_crt) = ca.leaf("/CN=server1", "server", "subjectAltName=DNS:server1\n");
    let server_cert = std::fs::read(&server_crt).unwrap();
    let key = KeyId::new("site-1").unwrap();
    let socket = ct.host_path(SOCKET);
    let server_nonce = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (signature, session) = runtime.block_on(async {
        let mut c = AgentClient::connect(&socket).await.unwrap();
        let Reply::NvflareChallenge { nonce } = c.call(Operation::NvflareChallenge { key: key.clone() }).await.unwrap()
        else {
            panic!("challenge reply")
        };
        let server_sig = sign_pss_max_salt(work, &server_key, format!("server1{nonce}").as_bytes());
        let reply = c
            .call(Operation::NvflareRegister {
                key: key.clone(),
                client_nonce: nonce,
                server_cert,
                server_cn: "server1".into(),
                server_signature: server_sig,
                server_nonce: server_nonce.into(),
            })
            .await
            .unwrap();
        let Reply::NvflareRegistration { cn, signature, session, .. } = reply else { panic!("registration reply") };
        assert_eq!(cn, "site-1");
        (signature, session)
    });
    let (m, s) = (work.join("reg.msg"), work.join("reg.sig"));
    std::fs::write(&m, format!("site-1{server_nonce}")).unwrap();
    std::fs::write(&s, signature).unwrap();
    let opts = pss_sigopts("rsa_pss_saltlen:222", "rsa_mgf1_md:sha256");
    assert!(openssl_verifies(&work.join("site-1.pub.pem"), &m, &s, "-sha256", &opts), "registration signature");
    let token = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
    let token_signature = base64::engine::general_purpose::STANDARD.encode(sign_pss_max_salt(
        work,
        &server_key,
        format!("site-1{token}").as_bytes(),
    ));
    runtime.block_on(async {
        let mut c = AgentClient::connect(&socket).await.unwrap();
        let op = Operation::NvflareVerifyToken {
            session,
            client_name: "site-1".into(),
            token: token.into(),
            token_signature,
        };
        assert_eq!(c.call(op).await.unwrap(), Reply::TokenVerified { server_cn: "server1".into() });
    });
}

/// Signs as `flare` with `/usr/bin/keyward`; `bind_over` first bind-mounts that file over
/// `/usr/bin/keyward` in a private mount namespace of the caller (the agent's is untouched).
fn sign_through(ct: &Container, bind_over: Option<&str>) -> std::process::Output {
    ct.write("/tmp/msg", b"allowed executables", 0o644, 0, 0);
    let sign = format!(
        "exec setpriv --reuid flare --regid flare --init-groups /usr/bin/keyward --config {CONFIG} sign site-1 --profile tls --in /tmp/msg --out /tmp/sig-$$"
    );
    match bind_over {
        None => ct.run(&["sh", "-c", &sign]),
        Some(other) => ct.run(&[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!("mount --bind {other} /usr/bin/keyward && {sign}"),
        ]),
    }
}

#[test]
fn allowed_executables_work_across_users_with_the_drop_in_and_a_bind_mount_does_not_fool_them() {
    let work = tempfile::Builder::new().prefix("kwrx").tempdir_in("/tmp").unwrap();
    let ca = TestCa::new(work.path(), "root");
    let ct = Container::boot(&unit_binds(work.path(), &["softhsm.conf"]));
    install_site(&ct, &ca, work.path(), "allowed_executables = [\"/usr/bin/keyward\"]\n");
    // The other binary: a byte-for-byte copy of keyward (another file, same path once bound).
    ct.ok(&["install", "-m", "0755", "/usr/bin/keyward", "/usr/local/bin/keyward-copy"]);

    // The plain unit (ProtectProc=invisible, no capabilities): the flare user's process is
    // hidden from the agent. Refused with a reply that says so, and recorded.
    assert_success(&ct.run(&["systemctl", "start", "keyward"]), "systemctl start keyward");
    let out = sign_through(&ct, None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("policy_denied") && stderr.contains("hidden from the agent"), "{stderr}");
    assert!(stderr.contains("allowed-executables.conf"), "{stderr}");
    let audit = std::fs::read_to_string(ct.host_path("/var/lib/keyward/audit.log")).unwrap();
    assert!(audit.lines().any(|l| l.contains("\"op\":\"sign\"") && l.contains("policy_denied")), "{audit}");

    // With the shipped drop-in (as a runtime drop-in, the /etc one is read-only here).
    let drop_in = std::fs::read(workspace_root().join("deploy/systemd/drop-ins/allowed-executables.conf")).unwrap();
    ct.ok(&["mkdir", "-p", "/run/systemd/system/keyward.service.d"]);
    ct.write("/run/systemd/system/keyward.service.d/allowed-executables.conf", &drop_in, 0o644, 0, 0);
    ct.ok(&["systemctl", "daemon-reload"]);
    assert_success(&ct.run(&["systemctl", "restart", "keyward"]), "systemctl restart keyward");
    let caps = ct.ok(&["grep", "^CapEff", &format!("/proc/{}/status", main_pid(&ct))]);
    assert!(caps.trim().ends_with("0000000000080000"), "only CAP_SYS_PTRACE: {caps}");
    let out = sign_through(&ct, None);
    assert_success(&out, "sign as flare with the allowed executable");

    // A copy bound over the allowed path in the caller's own mount namespace: `/proc` shows
    // the allowed path, but the file is another one.
    let out = sign_through(&ct, Some("/usr/local/bin/keyward-copy"));
    assert!(!out.status.success(), "the bind mount must not pass");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("policy_denied")
            && stderr.contains("caller executable `/usr/bin/keyward`")
            && stderr.contains("none of the files in keys.site-1.allowed_executables"),
        "{stderr}"
    );
    // And the allowed binary still works afterwards.
    assert_success(&sign_through(&ct, None), "sign again");
}

#[test]
fn a_unit_that_cannot_serve_is_never_reported_ready() {
    // A sandbox that lets the agent bind and log in but not accept a connection: before, it
    // sent READY=1 anyway and `systemctl start` succeeded with nothing served.
    let work = tempfile::Builder::new().prefix("kwrn").tempdir_in("/tmp").unwrap();
    let ca = TestCa::new(work.path(), "root");
    let ct = Container::boot(&unit_binds(work.path(), &["softhsm.conf"]));
    install_site(&ct, &ca, work.path(), "");
    ct.ok(&["mkdir", "-p", "/run/systemd/system/keyward.service.d"]);
    ct.write(
        "/run/systemd/system/keyward.service.d/no-accept.conf",
        b"[Service]\nSystemCallFilter=~accept accept4\nRestart=no\n",
        0o644,
        0,
        0,
    );
    ct.ok(&["systemctl", "daemon-reload"]);
    let out = ct.run(&["systemctl", "start", "keyward"]);
    assert!(!out.status.success(), "start must fail:\n{}", journal(&ct));
    assert_eq!(ct.run(&["systemctl", "is-active", "keyward"]).stdout, b"failed\n");
    let log = journal(&ct);
    assert!(log.contains("self-check failed") && !log.contains("keyward agent ready"), "{log}");
}
