//! A token that goes away and comes back, on a real SoftHSM2 token under a running agent:
//! the token's folder is moved away (SoftHSM then fails `C_GetTokenInfo` and forgets its
//! objects) and moved back. Requests fail fast with `backend_unavailable` naming the token,
//! `status` says `down` with the reason, a client hammering the agent causes at most about
//! one recovery attempt per second, and the same agent process signs again once the token
//! is back — without being restarted and without asking for the PIN.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keyward_client::BlockingAgentClient;
use keyward_client::ClientError;
use keyward_core::verify::verify;
use keyward_core::{KeyAlgorithm, KeyId, PublicKey, SignProfile};
use keyward_protocol::{ErrorCode, Operation, Reply, StatusReport};
use keyward_tests::softhsm::pkcs11_tool;
use keyward_tests::{AgentProcess, Site};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// The folder of the site's one SoftHSM token (`<tokendir>/<uuid>`).
fn token_folder(site: &Site) -> PathBuf {
    let tokens = site.hsm.dir.path().join("hsm/tokens");
    let mut entries: Vec<_> = std::fs::read_dir(&tokens).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "one token folder in {}", tokens.display());
    entries.remove(0)
}

/// Moves the token folder out of SoftHSM's token directory (SoftHSM finds a token in any
/// sub-folder there, whatever its name).
fn hide(folder: &Path) -> PathBuf {
    let away = folder.parent().unwrap().with_file_name("token-away");
    std::fs::rename(folder, &away).unwrap();
    away
}

fn sign(c: &mut BlockingAgentClient, msg: &[u8]) -> Result<Vec<u8>, ClientError> {
    let key = KeyId::new("site-1").unwrap();
    match c.call(Operation::Sign { key, profile: "nvflare".into(), data: msg.to_vec() })? {
        Reply::Signature { signature, .. } => Ok(signature),
        other => panic!("unexpected reply {other:?}"),
    }
}

fn status(c: &mut BlockingAgentClient) -> StatusReport {
    match c.call(Operation::Status).unwrap() {
        Reply::Status(s) => s,
        other => panic!("unexpected reply {other:?}"),
    }
}

fn public_key(c: &mut BlockingAgentClient) -> PublicKey {
    let Reply::PublicKey { spki_der, .. } =
        c.call(Operation::PublicKey { key: KeyId::new("site-1").unwrap() }).unwrap()
    else {
        panic!("public key reply")
    };
    PublicKey { algorithm: KeyAlgorithm::Rsa2048, spki_der }
}

fn expect_code(result: Result<Vec<u8>, ClientError>, want: ErrorCode) -> String {
    match result {
        Err(ClientError::Agent { code, message }) if code == want => message,
        other => panic!("expected {want}, got {other:?}"),
    }
}

/// Recovery attempts the agent logged (one line per attempt).
fn logged_attempts(agent: &AgentProcess) -> usize {
    agent.log_text().lines().filter(|l| l.contains("trying to recover the token")).count()
}

#[test]
fn token_gone_and_back_fails_fast_recovers_at_a_bounded_rate_and_signs_again_in_the_same_agent() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let agent = AgentProcess::start(&site);
    let pid = agent.pid();
    let mut c = BlockingAgentClient::connect(agent.socket(), IO_TIMEOUT).unwrap();
    let public = public_key(&mut c);
    let sig = sign(&mut c, b"before").unwrap();
    verify(&public, SignProfile::Nvflare, b"before", &sig).unwrap();
    assert_eq!(status(&mut c).backend_health, "ok");

    // Gone: the first request fails fast, precisely, naming the token.
    let folder = token_folder(&site);
    let away = hide(&folder);
    let started = Instant::now();
    let message = expect_code(sign(&mut c, b"while gone"), ErrorCode::BackendUnavailable);
    let first_failure = started.elapsed();
    assert!(first_failure < Duration::from_secs(1), "failing took {first_failure:?}");
    assert!(message.contains("token `fl-site`"), "{message}");
    let down = status(&mut c);
    assert_eq!(down.backend_health, "down", "{down:?}");
    let why = down.backend_error.unwrap_or_default();
    assert!(why.contains("C_GetTokenInfo returned GeneralError") || why.contains("no token `fl-site` found"), "{why}");

    // Four clients hammering the agent for 3 s: every answer fast, and the token sees at
    // most about one recovery attempt per second, whatever the request rate.
    let attempts_before = status(&mut c).backend_recovery_attempts;
    let hammer_for = Duration::from_secs(3);
    let hammers: Vec<_> = (0..4)
        .map(|_| {
            let socket = agent.socket().to_path_buf();
            std::thread::spawn(move || {
                let mut c = BlockingAgentClient::connect(&socket, IO_TIMEOUT).unwrap();
                let (started, mut requests, mut slowest) = (Instant::now(), 0u32, Duration::ZERO);
                while started.elapsed() < hammer_for {
                    let t = Instant::now();
                    expect_code(sign(&mut c, b"hammer"), ErrorCode::BackendUnavailable);
                    slowest = slowest.max(t.elapsed());
                    requests += 1;
                }
                (requests, slowest)
            })
        })
        .collect();
    let (mut requests, mut slowest) = (0u32, Duration::ZERO);
    for h in hammers {
        let (n, s) = h.join().unwrap();
        requests += n;
        slowest = slowest.max(s);
    }
    let attempts = status(&mut c).backend_recovery_attempts - attempts_before;
    eprintln!("outage: first failure {first_failure:?}; {requests} requests from 4 clients in {hammer_for:?}, slowest {slowest:?}, {attempts} recovery attempts");
    assert!(requests > 100, "only {requests} requests in {hammer_for:?}");
    assert!(slowest < Duration::from_secs(1), "slowest answer during the outage took {slowest:?}");
    assert!((1..=5).contains(&attempts), "{attempts} recovery attempts in {hammer_for:?} (want at most ~1/s)");

    // Back: the same agent signs again within a few seconds, with no PIN asked for.
    std::fs::rename(&away, &folder).unwrap();
    let restored = Instant::now();
    let sig = loop {
        match sign(&mut c, b"after") {
            Ok(sig) => break sig,
            Err(ClientError::Agent { code: ErrorCode::BackendUnavailable, .. }) => {
                assert!(restored.elapsed() < Duration::from_secs(5), "not back after 5 s:\n{}", agent.log_text());
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("unexpected error after restore: {e:?}"),
        }
    };
    let recovery = restored.elapsed();
    eprintln!("recovery: token back -> first good signature in {recovery:?}");
    verify(&public, SignProfile::Nvflare, b"after", &sig).unwrap();
    assert_eq!(agent.pid(), pid);
    let up = status(&mut c);
    assert_eq!(up.backend_health, "ok", "{up:?}");
    assert!(up.backend_error.is_none());
    assert_eq!(up.backend_recovery_attempts as usize, logged_attempts(&agent), "counter matches the log");

    // Both workers got fresh sessions: a run of signatures all succeed.
    for n in 0..20 {
        let msg = format!("again-{n}");
        verify(&public, SignProfile::Nvflare, msg.as_bytes(), &sign(&mut c, msg.as_bytes()).unwrap()).unwrap();
    }
    assert!(!agent.log_text().contains(site.hsm.pin().trim_end()), "PIN in the agent log");
}

#[test]
fn a_pin_refused_on_re_login_stops_recovery_for_good() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let agent = AgentProcess::start(&site);
    let mut c = BlockingAgentClient::connect(agent.socket(), IO_TIMEOUT).unwrap();
    sign(&mut c, b"before").unwrap();

    // Another program changes the user PIN; the agent's login is unaffected until the token
    // goes away and comes back, when it must log in again with the PIN it holds.
    let out = pkcs11_tool(&site.hsm, &["--change-pin", "--new-pin", "24681357"]);
    assert!(out.status.success(), "{out:?}");
    sign(&mut c, b"still logged in").unwrap();
    let folder = token_folder(&site);
    let away = hide(&folder);
    expect_code(sign(&mut c, b"gone"), ErrorCode::BackendUnavailable);
    std::fs::rename(&away, &folder).unwrap();

    let started = Instant::now();
    loop {
        match sign(&mut c, b"back") {
            Err(ClientError::Agent { code: ErrorCode::PinIncorrect, message }) => {
                assert!(message.contains("fl-site"), "{message}");
                break;
            }
            Err(ClientError::Agent { code: ErrorCode::BackendUnavailable, .. }) => {
                assert!(started.elapsed() < Duration::from_secs(5), "no re-login after 5 s:\n{}", agent.log_text());
                std::thread::sleep(Duration::from_millis(20));
            }
            other => panic!("expected pin_incorrect, got {other:?}"),
        }
    }
    let attempts = status(&mut c).backend_recovery_attempts;
    std::thread::sleep(Duration::from_millis(2500));
    for _ in 0..50 {
        expect_code(sign(&mut c, b"again"), ErrorCode::PinIncorrect);
    }
    let s = status(&mut c);
    assert_eq!(s.backend_health, "down");
    assert_eq!(s.backend_recovery_attempts, attempts, "no login attempt after the PIN was refused");
    assert_eq!(logged_attempts(&agent), attempts as usize);
    assert!(agent.log_text().contains("refused the PIN on re-login; not retrying"));
}

#[test]
fn a_different_token_under_the_same_label_is_never_offered_the_pin() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let agent = AgentProcess::start(&site);
    let mut c = BlockingAgentClient::connect(agent.socket(), IO_TIMEOUT).unwrap();
    sign(&mut c, b"before").unwrap();
    let folder = token_folder(&site);
    let away = hide(&folder);
    expect_code(sign(&mut c, b"gone"), ErrorCode::BackendUnavailable);

    // Another token, same label, other serial and PIN (throwaway PINs in argv: test only).
    let out = std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &site.hsm.conf)
        .args(["--init-token", "--free", "--label", "fl-site", "--pin", "86420864", "--so-pin", "97531975"])
        .output()
        .expect("softhsm2-util is installed");
    assert!(out.status.success(), "{out:?}");
    let started = Instant::now();
    let refused = loop {
        let s = status(&mut c);
        if let Some(why) = s.backend_error.clone().filter(|w| w.contains("is now a different token")) {
            break why;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "impostor not noticed: {:?}\n{}", s, agent.log_text());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(refused.contains("restart the agent"), "{refused}");
    let message = expect_code(sign(&mut c, b"impostor"), ErrorCode::BackendUnavailable);
    assert!(message.contains("different token"), "{message}");

    // The impostor goes, the original returns: the agent logs in again. Had the PIN been
    // offered to the impostor, it would have been refused and recovery stopped for good.
    std::fs::remove_dir_all(token_folder(&site)).unwrap();
    std::fs::rename(&away, &folder).unwrap();
    let restored = Instant::now();
    while let Err(e) = sign(&mut c, b"after") {
        assert!(matches!(e, ClientError::Agent { code: ErrorCode::BackendUnavailable, .. }), "{e:?}");
        assert!(restored.elapsed() < Duration::from_secs(5), "not back:\n{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status(&mut c).backend_health, "ok");
}

/// Another program logging in to the same SoftHSM token rewrites the token's file on every
/// login. SoftHSM then re-reads the token in the agent's process, and a read that races the
/// write leaves that process's token invalid for good (`OSToken::index`) — the cause of a
/// failed CI run. The agent must re-initialise at once and retry: no client sees an error.
#[test]
fn another_program_logging_in_to_the_token_never_fails_a_request() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let agent = AgentProcess::start(&site);
    let public = {
        let mut c = BlockingAgentClient::connect(agent.socket(), IO_TIMEOUT).unwrap();
        public_key(&mut c)
    };
    let run_for = Duration::from_secs(8);
    let signers: Vec<_> = (0..2)
        .map(|n| {
            let (socket, public) = (agent.socket().to_path_buf(), public.clone());
            std::thread::spawn(move || {
                let mut c = BlockingAgentClient::connect(&socket, IO_TIMEOUT).unwrap();
                let (started, mut signed) = (Instant::now(), 0u32);
                while started.elapsed() < run_for {
                    let msg = format!("client {n} #{signed}");
                    let sig =
                        sign(&mut c, msg.as_bytes()).map_err(|e| format!("request {signed} of client {n}: {e:?}"))?;
                    verify(&public, SignProfile::Nvflare, msg.as_bytes(), &sig).unwrap();
                    signed += 1;
                }
                Ok::<_, String>(signed)
            })
        })
        .collect();
    let (started, mut logins) = (Instant::now(), 0u32);
    while started.elapsed() < run_for {
        let out = pkcs11_tool(&site.hsm, &["--list-objects", "--type", "pubkey"]);
        assert!(out.status.success(), "{out:?}");
        logins += 1;
    }
    let signed: Result<Vec<u32>, String> = signers.into_iter().map(|s| s.join().unwrap()).collect();
    let signed: u32 = signed.unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_text())).iter().sum();
    eprintln!(
        "{signed} signatures while another program logged in {logins} times; {} recoveries",
        logged_attempts(&agent)
    );
    assert!(logins > 20 && signed > 100, "{logins} logins, {signed} signatures");
}
