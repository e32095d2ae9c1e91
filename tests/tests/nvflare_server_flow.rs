//! The server side of NVFlare's authenticator flow through the agent, with the server key in
//! SoftHSM and a project PKI made by openssl the way `nvflare provision` shapes it: the agent
//! signs the challenge reply and issues the server nonce, then signs a client's token only for
//! a registration it verified itself (chain to the pinned root, CN, signature over
//! `client_cn + server nonce`, the nonce once); every forged, foreign or replayed registration
//! is refused with its own code, signs nothing, and leaves an audit record.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use keyward_client::{AgentClient, ClientError};
use keyward_core::KeyId;
use keyward_protocol::{ErrorCode, Operation, Reply};
use keyward_tests::pki::sign_pss_max_salt;
use keyward_tests::AgentSite;
use keyward_tests::{AgentProcess, Site, TestCa};

const TOKEN: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";

struct Project {
    site: Site,
    ca: TestCa,
    client_key: PathBuf,
    client_crt: PathBuf,
}

/// The server's agent: key `server1` in SoftHSM, certified by the project root, with
/// `[keys.server1.nvflare_server]`; and a client `site-1` of the same project (files).
fn project() -> Project {
    let site = Site::new();
    site.generate("server1", "rsa-2048");
    let ca = TestCa::new(site.hsm.dir.path(), "root");
    let server_crt = site.issue_certificate(&ca, "server1", "CN=server1", "subjectAltName=DNS:localhost\n");
    site.install_certificate("server1", &server_crt);
    let (client_key, client_crt) = ca.leaf("/CN=site-1/O=nvidia", "site-1", "subjectAltName=DNS:site-1\n");
    site.append_config(&format!("[keys.server1.nvflare_server]\nroot_ca = \"{}\"\n", ca.cert.display()));
    Project { site, ca, client_key, client_crt }
}

fn key() -> KeyId {
    KeyId::new("server1").unwrap()
}

/// A fresh `str(uuid.uuid4())`, as NVFlare's client makes its nonce.
fn uuid4() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let variant = ["8", "9", "a", "b"][usize::from(b[8] & 3)];
    format!("{}-{}-4{}-{variant}{}-{}", &hex[..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn refused(result: Result<Reply, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Agent { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A challenge for a fresh client nonce: (client nonce, server nonce, reply signature).
async fn challenge(c: &mut AgentClient) -> (String, String, Vec<u8>) {
    let client_nonce = uuid4();
    let op = Operation::NvflareServerChallenge { key: key(), client_nonce: client_nonce.clone() };
    let Reply::NvflareServerChallenge { cn, nonce, signature } = c.call(op).await.unwrap() else {
        panic!("challenge reply")
    };
    assert_eq!(cn, "server1");
    (client_nonce, nonce, signature)
}

fn register_op(server_nonce: &str, name: &str, cert: &Path, signature: Vec<u8>) -> Operation {
    Operation::NvflareServerRegister {
        key: key(),
        server_nonce: server_nonce.into(),
        client_name: name.into(),
        client_cert: std::fs::read(cert).unwrap(),
        client_signature: signature,
        token: TOKEN.into(),
    }
}

fn verify_with_openssl(site: &Site, cert: &Path, msg: &[u8], sig: &[u8]) -> bool {
    keyward_tests::pki::verify_pss_max_salt(site.hsm.dir.path(), cert, msg, sig)
}

#[test]
fn the_agent_answers_the_challenge_then_signs_the_token_of_a_client_it_verified() {
    let p = project();
    let _agent = AgentProcess::start(&p.site);
    let (client_nonce, server_nonce, reply_sig, token_sig) = runtime().block_on(async {
        let mut c = AgentClient::connect(&p.site.socket).await.unwrap();
        let (client_nonce, server_nonce, reply_sig) = challenge(&mut c).await;
        let client_sig =
            sign_pss_max_salt(p.site.hsm.dir.path(), &p.client_key, format!("site-1{server_nonce}").as_bytes());
        let reply = c.call(register_op(&server_nonce, "site-1", &p.client_crt, client_sig)).await.unwrap();
        let Reply::NvflareClientRegistered { client_cn, token_signature } = reply else { panic!("registered reply") };
        assert_eq!(client_cn, "site-1");
        (client_nonce, server_nonce, reply_sig, token_signature)
    });
    assert_eq!(server_nonce.len(), 36);
    let server_crt = p.site.state_dir.join("certs/server1.pem");
    let challenge_msg = format!("server1{client_nonce}");
    assert!(verify_with_openssl(&p.site, &server_crt, challenge_msg.as_bytes(), &reply_sig), "challenge reply");
    let token_msg = format!("site-1{TOKEN}");
    assert!(verify_with_openssl(&p.site, &server_crt, token_msg.as_bytes(), &token_sig), "token signature");

    let records = p.site.audit_records();
    let challenged = records.iter().find(|r| r["op"] == "nvflare_server_challenge").unwrap();
    assert_eq!((challenged["outcome"].as_str(), challenged["profile"].as_str()), (Some("ok"), Some("nvflare")));
    assert_eq!(challenged["payload_len"], 43);
    let registered = records.iter().find(|r| r["op"] == "nvflare_server_register").unwrap();
    assert_eq!((registered["outcome"].as_str(), registered["profile"].as_str()), (Some("ok"), Some("nvflare")));
    assert_eq!(registered["payload_len"], 42);
    let sha = keyward_agent::audit::sha256_hex(token_msg.as_bytes());
    assert_eq!(registered["payload_sha256"].as_str().unwrap(), sha);
}

#[test]
fn forged_replayed_and_foreign_registrations_get_no_token_and_are_audited() {
    let p = project();
    let _agent = AgentProcess::start(&p.site);
    let dir = p.site.hsm.dir.path();
    // Another provision: same names, another root CA.
    let rogue_ca = TestCa::new(dir, "rogue-root");
    let (rogue_key, rogue_crt) = rogue_ca.leaf("/CN=site-1/O=nvidia", "rogue", "subjectAltName=DNS:site-1\n");
    // The right root, but for servers only.
    let (eku_key, eku_crt) = p.ca.leaf("/CN=site-1", "eku", "extendedKeyUsage=serverAuth\n");
    runtime().block_on(async {
        let mut c = AgentClient::connect(&p.site.socket).await.unwrap();
        let sign = |k: &Path, name: &str, nonce: &str| sign_pss_max_salt(dir, k, format!("{name}{nonce}").as_bytes());

        let (_, n, _) = challenge(&mut c).await;
        let r = c.call(register_op(&n, "site-1", &rogue_crt, sign(&rogue_key, "site-1", &n))).await;
        assert_eq!(refused(r), ErrorCode::ClientUntrusted);

        let (_, n, _) = challenge(&mut c).await;
        let r = c.call(register_op(&n, "site-1", &eku_crt, sign(&eku_key, "site-1", &n))).await;
        assert_eq!(refused(r), ErrorCode::ClientUntrusted);

        let (_, n, _) = challenge(&mut c).await;
        let r = c.call(register_op(&n, "site-2", &p.client_crt, sign(&p.client_key, "site-2", &n))).await;
        assert_eq!(refused(r), ErrorCode::ClientIdentityMismatch);

        let (_, n, _) = challenge(&mut c).await;
        let stale = "0b4d07b5-5c3c-4b0e-9c5e-2f1d2a7f6c11";
        let r = c.call(register_op(&n, "site-1", &p.client_crt, sign(&p.client_key, "site-1", stale))).await;
        assert_eq!(refused(r), ErrorCode::ClientSignatureInvalid);

        // A nonce this agent never issued.
        let r = c.call(register_op(stale, "site-1", &p.client_crt, sign(&p.client_key, "site-1", stale))).await;
        assert_eq!(refused(r), ErrorCode::NonceUnknown);

        // A genuine registration works once; replaying it gets no second token.
        let (_, n, _) = challenge(&mut c).await;
        let good = sign(&p.client_key, "site-1", &n);
        assert!(c.call(register_op(&n, "site-1", &p.client_crt, good.clone())).await.is_ok());
        let r = c.call(register_op(&n, "site-1", &p.client_crt, good)).await;
        assert_eq!(refused(r), ErrorCode::NonceReplayed);

        // A nonce used by a refused attempt cannot be retried either.
        let (_, n, _) = challenge(&mut c).await;
        let r = c.call(register_op(&n, "site-1", &rogue_crt, sign(&rogue_key, "site-1", &n))).await;
        assert_eq!(refused(r), ErrorCode::ClientUntrusted);
        let r = c.call(register_op(&n, "site-1", &p.client_crt, sign(&p.client_key, "site-1", &n))).await;
        assert_eq!(refused(r), ErrorCode::NonceReplayed);

        // Plain `sign` cannot make a token or a challenge reply; the job cell's token it can.
        let token_shaped =
            Operation::Sign { key: key(), profile: "nvflare".into(), data: format!("site-1{TOKEN}").into_bytes() };
        assert_eq!(refused(c.call(token_shaped).await), ErrorCode::PolicyDenied);
        let job =
            Operation::Sign { key: key(), profile: "nvflare".into(), data: format!("server_job{TOKEN}").into_bytes() };
        assert!(c.call(job).await.is_ok());
        let own = Operation::Sign { key: key(), profile: "nvflare".into(), data: b"serverserver".to_vec() };
        assert!(c.call(own).await.is_ok());
        // A client nonce not shaped like NVFlare's gets no challenge signature.
        let odd = Operation::NvflareServerChallenge { key: key(), client_nonce: "not-a-uuid".into() };
        assert_eq!(refused(c.call(odd).await), ErrorCode::InvalidRequest);
    });
    let regs: Vec<_> = p.site.audit_records().into_iter().filter(|r| r["op"] == "nvflare_server_register").collect();
    let outcomes: Vec<_> = regs.iter().map(|r| r["outcome"].as_str().unwrap().to_owned()).collect();
    assert_eq!(
        outcomes,
        [
            "client_untrusted",
            "client_untrusted",
            "client_identity_mismatch",
            "client_signature_invalid",
            "nonce_unknown",
            "ok",
            "nonce_replayed",
            "client_untrusted",
            "nonce_replayed"
        ]
    );
    let status: serde_json::Value = serde_json::from_slice(&p.site.keyward_ok(&["status", "--json"]).stdout).unwrap();
    // Six challenge replies, one client token, the job cell's token and the server's own.
    assert_eq!(status["signatures"], 9);
}

#[test]
fn a_key_without_server_settings_refuses_the_server_flow() {
    let site = Site::new();
    site.generate("server1", "rsa-2048");
    let _agent = AgentProcess::start(&site);
    runtime().block_on(async {
        let mut c = AgentClient::connect(&site.socket).await.unwrap();
        let op = Operation::NvflareServerChallenge { key: key(), client_nonce: uuid4() };
        assert_eq!(refused(c.call(op).await), ErrorCode::PolicyDenied);
    });
}
