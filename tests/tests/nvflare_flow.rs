//! NVFlare's authenticator flow through the agent, with a project PKI made by openssl the
//! way `nvflare provision` shapes it (root CA; leaf certificates with only a SAN), and the
//! server side's signatures made by openssl with PSS at maximum salt — the agent verifies
//! the server before it signs, refuses every forged reply class with its own code, and
//! signs exactly `client_cn + server_nonce`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use base64::Engine;
use keyward_client::{AgentClient, ClientError};
use keyward_core::KeyId;
use keyward_protocol::{ErrorCode, Operation, Reply};
use keyward_tests::pki::sign_pss_max_salt;
use keyward_tests::tools::assert_success;
use keyward_tests::AgentSite;
use keyward_tests::{AgentProcess, Site, TestCa};

struct Federation {
    site: Site,
    ca: TestCa,
    server_key: PathBuf,
    server_crt: PathBuf,
}

fn server_sign(site: &Site, key: &Path, msg: &[u8]) -> Vec<u8> {
    sign_pss_max_salt(site.hsm.dir.path(), key, msg)
}

fn federation() -> Federation {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let ca = TestCa::new(site.hsm.dir.path(), "root");
    let site_crt = site.issue_certificate(&ca, "site-1", "CN=site-1,O=nvidia", "subjectAltName=DNS:site-1\n");
    site.install_certificate("site-1", &site_crt);
    let (server_key, server_crt) = ca.leaf("/CN=server1", "server", "subjectAltName=DNS:server1\n");
    site.append_config(&format!(
        "[keys.site-1.nvflare]\nroot_ca = \"{}\"\nserver_identity = \"server1\"\n",
        ca.cert.display()
    ));
    Federation { site, ca, server_key, server_crt }
}

fn key() -> KeyId {
    KeyId::new("site-1").unwrap()
}

async fn challenge(c: &mut AgentClient) -> String {
    let Reply::NvflareChallenge { nonce } = c.call(Operation::NvflareChallenge { key: key() }).await.unwrap() else {
        panic!("challenge reply")
    };
    nonce
}

fn register_op(client_nonce: &str, cert: &[u8], cn: &str, signature: Vec<u8>, server_nonce: &str) -> Operation {
    Operation::NvflareRegister {
        key: key(),
        client_nonce: client_nonce.into(),
        server_cert: cert.to_vec(),
        server_cn: cn.into(),
        server_signature: signature,
        server_nonce: server_nonce.into(),
    }
}

fn refused(result: Result<Reply, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Agent { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn verify_with_openssl(site: &Site, cert: &Path, msg: &[u8], sig: &[u8]) -> bool {
    keyward_tests::pki::verify_pss_max_salt(site.hsm.dir.path(), cert, msg, sig)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn the_agent_verifies_the_server_then_signs_the_registration_and_checks_the_token() {
    let f = federation();
    let _agent = AgentProcess::start(&f.site);
    let server_cert = std::fs::read(&f.server_crt).unwrap();
    let server_nonce = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
    let (reply, site_crt) = runtime().block_on(async {
        let mut c = AgentClient::connect(&f.site.socket).await.unwrap();
        let nonce = challenge(&mut c).await;
        assert_eq!(nonce.len(), 36);
        let server_sig = server_sign(&f.site, &f.server_key, format!("server1{nonce}").as_bytes());
        let reply = c.call(register_op(&nonce, &server_cert, "server1", server_sig, server_nonce)).await.unwrap();
        (reply, f.site.state_dir.join("certs/site-1.pem"))
    });
    let Reply::NvflareRegistration { cn, cert, signature, session } = reply else { panic!("registration reply") };
    assert_eq!(cn, "site-1");
    assert_eq!(cert, std::fs::read(&site_crt).unwrap());
    let signed = format!("site-1{server_nonce}");
    assert_eq!(signed.len(), 42);
    assert!(verify_with_openssl(&f.site, &site_crt, signed.as_bytes(), &signature), "registration signature");

    // The token the server returns, signed by the server (base64 text, as NVFlare sends it).
    let token = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
    let token_sig = base64::engine::general_purpose::STANDARD.encode(server_sign(
        &f.site,
        &f.server_key,
        format!("site-1{token}").as_bytes(),
    ));
    runtime().block_on(async {
        let mut c = AgentClient::connect(&f.site.socket).await.unwrap();
        let ok = c
            .call(Operation::NvflareVerifyToken {
                session: session.clone(),
                client_name: "site-1".into(),
                token: token.into(),
                token_signature: token_sig.clone(),
            })
            .await
            .unwrap();
        assert_eq!(ok, Reply::TokenVerified { server_cn: "server1".into() });
        let forged = c
            .call(Operation::NvflareVerifyToken {
                session,
                client_name: "site-1".into(),
                token: "00000000-0000-0000-0000-000000000000".into(),
                token_signature: token_sig,
            })
            .await;
        assert_eq!(refused(forged), ErrorCode::TokenSignatureInvalid);
    });
    let records = f.site.audit_records();
    let reg = records.iter().find(|r| r["op"] == "nvflare_register").unwrap();
    assert_eq!(reg["outcome"], "ok");
    assert_eq!(reg["profile"], "nvflare");
    assert_eq!(reg["payload_len"], 42);
    assert_eq!(reg["payload_sha256"].as_str().unwrap(), keyward_agent::audit::sha256_hex(signed.as_bytes()));

    // The same message through a plain `sign` is refused: no registration without the checks.
    // Other `nvflare`-profile signatures (the cell cipher's) still work.
    runtime().block_on(async {
        let mut c = AgentClient::connect(&f.site.socket).await.unwrap();
        let plain = Operation::Sign { key: key(), profile: "nvflare".into(), data: signed.clone().into_bytes() };
        assert_eq!(refused(c.call(plain).await), ErrorCode::PolicyDenied);
        let cipher_like = Operation::Sign { key: key(), profile: "nvflare".into(), data: vec![1u8; 300] };
        assert!(c.call(cipher_like).await.is_ok());
    });
}

#[test]
fn forged_replayed_and_foreign_server_replies_get_no_signature() {
    let f = federation();
    let _agent = AgentProcess::start(&f.site);
    let server_cert = std::fs::read(&f.server_crt).unwrap();
    // Another provision: same names, another root CA.
    let rogue_ca = TestCa::new(f.site.hsm.dir.path(), "rogue-root");
    let (rogue_key, rogue_crt) = rogue_ca.leaf("/CN=server1", "rogue", "subjectAltName=DNS:server1\n");
    let rogue_cert = std::fs::read(&rogue_crt).unwrap();
    // The right CA, but an EKU for clients only; and one for another server name.
    let (eku_key, eku_crt) = f.ca.leaf("/CN=server1", "eku", "extendedKeyUsage=clientAuth\n");
    let (other_key, other_crt) = f.ca.leaf("/CN=server2", "other", "subjectAltName=DNS:server2\n");

    runtime().block_on(async {
        let mut c = AgentClient::connect(&f.site.socket).await.unwrap();
        let sn = "0b4d07b5-5c3c-4b0e-9c5e-2f1d2a7f6c11";
        let sign = |key: &Path, nonce: &str| server_sign(&f.site, key, format!("server1{nonce}").as_bytes());

        let n = challenge(&mut c).await;
        let r = c.call(register_op(&n, &rogue_cert, "server1", sign(&rogue_key, &n), sn)).await;
        assert_eq!(refused(r), ErrorCode::ServerUntrusted);

        let n = challenge(&mut c).await;
        let r = c.call(register_op(&n, &server_cert, "server2", sign(&f.server_key, &n), sn)).await;
        assert_eq!(refused(r), ErrorCode::ServerIdentityMismatch);

        let n = challenge(&mut c).await;
        let r = c.call(register_op(&n, &std::fs::read(&other_crt).unwrap(), "server1", sign(&other_key, &n), sn)).await;
        assert_eq!(refused(r), ErrorCode::ServerIdentityMismatch);

        let n = challenge(&mut c).await;
        let r = c.call(register_op(&n, &std::fs::read(&eku_crt).unwrap(), "server1", sign(&eku_key, &n), sn)).await;
        assert_eq!(refused(r), ErrorCode::ServerCertUsage);

        let n = challenge(&mut c).await;
        let r = c.call(register_op(&n, &server_cert, "server1", sign(&f.server_key, "some-other-nonce"), sn)).await;
        assert_eq!(refused(r), ErrorCode::ServerSignatureInvalid);

        let r =
            c.call(register_op("never-issued", &server_cert, "server1", sign(&f.server_key, "never-issued"), sn)).await;
        assert_eq!(refused(r), ErrorCode::NonceUnknown);

        // A genuine reply works once; replaying it is refused.
        let n = challenge(&mut c).await;
        let good = sign(&f.server_key, &n);
        assert!(c.call(register_op(&n, &server_cert, "server1", good.clone(), sn)).await.is_ok());
        let r = c.call(register_op(&n, &server_cert, "server1", good, sn)).await;
        assert_eq!(refused(r), ErrorCode::NonceReplayed);

        // A nonce used by a refused attempt cannot be retried either.
        let n = challenge(&mut c).await;
        let r = c.call(register_op(&n, &rogue_cert, "server1", sign(&rogue_key, &n), sn)).await;
        assert_eq!(refused(r), ErrorCode::ServerUntrusted);
        let r = c.call(register_op(&n, &server_cert, "server1", sign(&f.server_key, &n), sn)).await;
        assert_eq!(refused(r), ErrorCode::NonceReplayed);
    });
    let regs: Vec<_> = f.site.audit_records().into_iter().filter(|r| r["op"] == "nvflare_register").collect();
    assert_eq!(regs.len(), 10);
    assert_eq!(regs.iter().filter(|r| r["outcome"] == "ok").count(), 1, "exactly one registration was signed");
    let signatures = f.site.keyward_ok(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&signatures.stdout).unwrap();
    assert_eq!(status["signatures"], 1);
}

#[test]
fn a_key_without_nvflare_settings_refuses_the_flow_and_raw_ops_follow_policy() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    site.append_config("[keys.site-1]\nallow_sign = false\nallow_decrypt = false\n");
    let _agent = AgentProcess::start(&site);
    runtime().block_on(async {
        let mut c = AgentClient::connect(&site.socket).await.unwrap();
        assert_eq!(refused(c.call(Operation::NvflareChallenge { key: key() }).await), ErrorCode::PolicyDenied);
        let sign = Operation::Sign { key: key(), profile: "nvflare".into(), data: b"x".to_vec() };
        assert_eq!(refused(c.call(sign).await), ErrorCode::PolicyDenied);
        let decrypt = Operation::Decrypt { key: key(), data: vec![0; 256] };
        assert_eq!(refused(c.call(decrypt).await), ErrorCode::PolicyDenied);
        assert!(c.call(Operation::PublicKey { key: key() }).await.is_ok());
    });
}

#[test]
fn a_server_nonce_not_shaped_like_nvflares_uuid4_is_refused_and_the_client_nonce_survives() {
    let f = federation();
    let _agent = AgentProcess::start(&f.site);
    let server_cert = std::fs::read(&f.server_crt).unwrap();
    runtime().block_on(async {
        let mut c = AgentClient::connect(&f.site.socket).await.unwrap();
        let n = challenge(&mut c).await;
        let sig = server_sign(&f.site, &f.server_key, format!("server1{n}").as_bytes());
        // Shapes a caller could use to have the site key sign something else than a registration.
        for bad in [
            "server-nonce",
            "7C9E6679-7425-40DE-944B-E07FC1F90AE7",
            "7c9e6679-7425-10de-944b-e07fc1f90ae7",
            "7c9e6679742540de944be07fc1f90ae7",
            "7c9e6679-7425-40de-944b-e07fc1f90ae7\u{0}extra",
        ] {
            let r = c.call(register_op(&n, &server_cert, "server1", sig.clone(), bad)).await;
            match r {
                Err(ClientError::Agent { code, message }) => {
                    assert_eq!(code, ErrorCode::InvalidRequest, "{bad:?}: {message}");
                    assert!(message.contains("uuid4"), "{message}");
                }
                other => panic!("{bad:?}: expected invalid_request, got {other:?}"),
            }
        }
        // The refusals used nothing up: the same client nonce registers with a real one.
        let good = c.call(register_op(&n, &server_cert, "server1", sig, "7c9e6679-7425-40de-944b-e07fc1f90ae7")).await;
        assert!(matches!(good, Ok(Reply::NvflareRegistration { .. })), "{good:?}");
    });
    let status: serde_json::Value = serde_json::from_slice(&f.site.keyward_ok(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["signatures"], 1, "nothing was signed for a malformed server nonce");
}

/// Sends `n` `nvflare_challenge` requests for `site-1` as uid/gid 65534 (`nobody`), in
/// batches so neither side's socket buffer fills; returns how many got a nonce.
fn flood_challenges_as_nobody(socket: &Path, n: usize) -> usize {
    const SCRIPT: &str = r#"
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
def recv(k):
    b = b""
    while len(b) < k:
        c = s.recv(k - len(b))
        if not c: raise SystemExit("closed")
        b += c
    return b
ok, sent = 0, 0
total = int(sys.argv[2])
while sent < total:
    batch = min(100, total - sent)
    for i in range(batch):
        body = json.dumps({"v": 1, "id": sent + i + 1, "op": "nvflare_challenge", "key": "site-1"}).encode()
        s.sendall(struct.pack(">I", len(body)) + body)
    for i in range(batch):
        reply = json.loads(recv(struct.unpack(">I", recv(4))[0]))
        ok += reply["status"] == "ok"
    sent += batch
print(ok)
"#;
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "/usr/bin/python3", "-c", SCRIPT])
        .arg(socket)
        .arg(n.to_string())
        .output()
        .expect("setpriv (util-linux) and /usr/bin/python3 (the system Python, readable by nobody) run");
    assert_success(&out, "challenge flood as nobody");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_challenge_flood_by_another_caller_does_not_evict_a_pending_nonce() {
    use std::os::unix::fs::PermissionsExt;
    let f = federation();
    // Let `nobody` reach the socket and pass `[access]` by its gid.
    std::fs::set_permissions(f.site.hsm.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    f.site.set_config("access", "socket_gid", 65534.into());
    f.site.set_config("access", "allowed_gids", vec![toml::Value::from(65534)].into());
    let _agent = AgentProcess::start(&f.site);
    let server_cert = std::fs::read(&f.server_crt).unwrap();
    runtime().block_on(async {
        let mut c = AgentClient::connect(&f.site.socket).await.unwrap();
        let mine = challenge(&mut c).await;
        // More challenges than the whole book holds, from another uid.
        assert_eq!(flood_challenges_as_nobody(&f.site.socket, 5000), 5000);
        let sig = server_sign(&f.site, &f.server_key, format!("server1{mine}").as_bytes());
        let r = c.call(register_op(&mine, &server_cert, "server1", sig, "7c9e6679-7425-40de-944b-e07fc1f90ae7")).await;
        assert!(matches!(r, Ok(Reply::NvflareRegistration { .. })), "pending nonce lost to another caller: {r:?}");
    });
}
