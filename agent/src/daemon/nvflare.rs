//! The NVFlare authenticator operations (`nvflare_challenge`, `nvflare_register`,
//! `nvflare_verify_token`): the agent issues the client nonce, verifies the server's reply
//! itself, and only then signs `client_cn + server_nonce` — a payload it builds, never one
//! the caller supplies, and only for a server nonce shaped as NVFlare's server makes it (a
//! uuid4 string). Sessions tie the token check to the server verified at registration.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use keyward_core::nvflare::{
    check_server_nonce, registration_message, ChallengeError, NonceBook, ServerReply, VerifiedServer,
};
use keyward_core::{KeyId, SignProfile};
use keyward_protocol::{ErrorCode, Reply};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ops::Failure;
use super::{Agent, Policies};
use crate::audit::Peer;
use crate::wire_error::WireCode;

/// How long a registration session stays usable for `nvflare_verify_token`.
const SESSION_LIFETIME: Duration = Duration::from_secs(300);
/// Most sessions kept.
const MAX_SESSIONS: usize = 1024;

struct Session {
    caller: u32,
    server: VerifiedServer,
    created: Instant,
}

/// Nonces and sessions of the NVFlare flow.
#[derive(Default)]
pub struct NvflareState {
    nonces: Mutex<NonceBook>,
    sessions: Mutex<HashMap<String, Session>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl From<ChallengeError> for Failure {
    fn from(e: ChallengeError) -> Self {
        Failure { code: e.code(), message: e.to_string() }
    }
}

fn not_configured(key: &KeyId) -> Failure {
    Failure {
        code: ErrorCode::PolicyDenied,
        message: format!("key `{key}` has no NVFlare settings ([keys.{key}.nvflare] root_ca and server_identity)"),
    }
}

/// `nvflare_challenge`.
pub fn challenge(agent: &Agent, peer: Peer, key: &KeyId) -> Result<Reply, Failure> {
    if agent.rules.load().policies.get(key).nvflare.is_none() {
        return Err(not_configured(key));
    }
    let nonce = lock(&agent.nvflare.nonces).issue(peer.uid, key, Instant::now());
    Ok(Reply::NvflareChallenge { nonce })
}

/// The inputs of `nvflare_register`.
pub struct Registration {
    /// Site key.
    pub key: KeyId,
    /// Our nonce.
    pub client_nonce: String,
    /// Server certificate PEM.
    pub server_cert: Vec<u8>,
    /// Server CN.
    pub server_cn: String,
    /// Server signature.
    pub server_signature: Vec<u8>,
    /// Server nonce.
    pub server_nonce: String,
}

/// `nvflare_register`; also returns the signed message for the audit record.
pub async fn register(agent: &Agent, peer: Peer, r: Registration) -> Result<(Reply, Vec<u8>), Failure> {
    let rules = agent.rules.load();
    let trust = rules.policies.get(&r.key).nvflare.as_ref().ok_or_else(|| not_configured(&r.key))?;
    // Before the nonce is used up: a malformed request leaves it for a correct retry.
    check_server_nonce(&r.server_nonce)?;
    lock(&agent.nvflare.nonces).consume(&r.client_nonce, peer.uid, &r.key, Instant::now())?;
    let reply = ServerReply { cert_pem: &r.server_cert, cn: &r.server_cn, signature: &r.server_signature };
    let server = trust.verify_reply(&reply, &r.client_nonce, SystemTime::now())?;
    tracing::info!(key = %r.key, server = %server.cn, "verified NVFlare server identity");

    let cert_pem = agent.certs.get(&r.key).ok_or_else(|| Failure {
        code: ErrorCode::PolicyDenied,
        message: format!("no certificate installed for `{}` (keyward cert install)", r.key),
    })?;
    let cn = site_cn(&cert_pem).ok_or_else(|| Failure {
        code: ErrorCode::Internal,
        message: format!("installed certificate of `{}` has no readable CN", r.key),
    })?;
    let message = registration_message(&cn, &r.server_nonce);
    let signed = message.clone();
    let key = r.key.clone();
    let signature = agent.store.call(move |s| s.sign(&key, SignProfile::Nvflare, &signed)).await?;

    let session = uuid::Uuid::new_v4().to_string();
    let mut sessions = lock(&agent.nvflare.sessions);
    sessions.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);
    if sessions.len() >= MAX_SESSIONS {
        if let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| k.clone()) {
            sessions.remove(&oldest);
        }
    }
    sessions.insert(session.clone(), Session { caller: peer.uid, server, created: Instant::now() });
    Ok((Reply::NvflareRegistration { cn, cert: cert_pem.into_bytes(), signature, session }, message))
}

/// `nvflare_verify_token`.
pub fn verify_token(
    agent: &Agent,
    peer: Peer,
    session: &str,
    client_name: &str,
    token: &str,
    token_signature: &str,
) -> Result<Reply, Failure> {
    let sessions = lock(&agent.nvflare.sessions);
    let unknown = || Failure {
        code: ErrorCode::InvalidRequest,
        message: "unknown or expired registration session; register again".into(),
    };
    let s = sessions.get(session).ok_or_else(unknown)?;
    if s.caller != peer.uid || s.created.elapsed() >= SESSION_LIFETIME {
        return Err(unknown());
    }
    s.server.verify_token(client_name, token, token_signature)?;
    Ok(Reply::TokenVerified { server_cn: s.server.cn.clone() })
}

/// For a key with NVFlare settings, a plain `sign` of something shaped like a registration
/// (`site_cn + uuid`) is refused: registrations go through `nvflare_register`, where the
/// agent verifies the server first. NVFlare's other use of the key, the cell cipher, signs
/// `0x01 || nonce || ...`, which never has that shape.
pub fn refuse_registration_shaped(agent: &Agent, policies: &Policies, key: &KeyId, data: &[u8]) -> Result<(), Failure> {
    if policies.get(key).nvflare.is_none() || !ends_with_uuid(data) {
        return Ok(());
    }
    // Only now (rare) read the installed certificate for the site CN.
    let Some(cn) = agent.certs.get(key).as_deref().and_then(site_cn) else { return Ok(()) };
    let shaped = data
        .strip_prefix(cn.as_bytes())
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .is_some_and(|rest| uuid::Uuid::try_parse(rest).is_ok());
    if shaped {
        return Err(Failure {
            code: ErrorCode::PolicyDenied,
            message: format!(
                "refusing a plain signature over `{cn}` + nonce with key `{key}`: NVFlare registrations must use nvflare_register, which verifies the server first"
            ),
        });
    }
    Ok(())
}

/// Whether `data` ends with text `uuid` parses (hyphenated, simple, braced or URN form): a
/// cheap filter that keeps the sign path free of file reads for everything else.
fn ends_with_uuid(data: &[u8]) -> bool {
    [32, 36, 38, 45].into_iter().any(|len| {
        data.len() >= len
            && std::str::from_utf8(&data[data.len() - len..]).is_ok_and(|tail| uuid::Uuid::try_parse(tail).is_ok())
    })
}

/// The subject CN of the leaf in a PEM certificate chain.
fn site_cn(cert_pem: &str) -> Option<String> {
    let block = ::pem::parse_many(cert_pem).ok()?.into_iter().find(|b| b.tag() == "CERTIFICATE")?;
    let (_, cert) = X509Certificate::from_der(block.contents()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}
