//! What the three NVFlare operations (`nvflare_challenge.rs`, `nvflare_register.rs`,
//! `nvflare_verify_token.rs`) share: the issued nonces, the registration sessions (which tie
//! the token check to the server verified at registration), the site CN of an installed
//! certificate, and the rule that keeps plain `sign` from making a registration signature.
//! The server side (`nvflare_server_challenge.rs`, `nvflare_server_register.rs`) keeps its
//! issued server nonces here too, and the same rule keeps plain `sign` from making a
//! challenge reply or a client's token signature with a server key.

use crate::wire_error::WireCode;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keyward_core::nvflare::{ChallengeError, NonceBook, VerifiedServer};
use keyward_core::KeyId;
use keyward_protocol::ErrorCode;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::Failure;
use crate::daemon::policy::Policies;
use crate::daemon::Agent;

/// How long a registration session stays usable for `nvflare_verify_token`.
pub(super) const SESSION_LIFETIME: Duration = Duration::from_secs(300);
/// Most sessions kept.
pub(super) const MAX_SESSIONS: usize = 1024;

pub(super) struct Session {
    pub(super) caller: u32,
    pub(super) server: VerifiedServer,
    pub(super) created: Instant,
}

/// Nonces and sessions of the NVFlare flow.
#[derive(Default)]
pub struct NvflareState {
    pub(super) nonces: Mutex<NonceBook>,
    pub(super) sessions: Mutex<HashMap<String, Session>>,
    /// Server nonces issued by `nvflare_server_challenge`, each good for one registration.
    pub(super) server_nonces: Mutex<NonceBook>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl From<ChallengeError> for Failure {
    fn from(e: ChallengeError) -> Self {
        Failure { code: e.code(), message: e.to_string() }
    }
}

pub(super) fn not_configured(key: &KeyId) -> Failure {
    Failure {
        code: ErrorCode::PolicyDenied,
        message: format!("key `{key}` has no NVFlare settings ([keys.{key}.nvflare] root_ca and server_identity)"),
    }
}

/// The `nvflare_server_*` refusal for a key without `[keys.<name>.nvflare_server]`.
pub(super) fn server_not_configured(key: &KeyId) -> Failure {
    Failure {
        code: ErrorCode::PolicyDenied,
        message: format!("key `{key}` has no NVFlare server settings ([keys.{key}.nvflare_server] root_ca)"),
    }
}

/// The CN of the certificate installed for `key`, whose name NVFlare messages carry.
pub(super) fn installed_cn(agent: &Agent, key: &KeyId) -> Result<(String, String), Failure> {
    let cert_pem = agent.certs.get(key).ok_or_else(|| Failure {
        code: ErrorCode::PolicyDenied,
        message: format!("no certificate installed for `{key}` (keyward cert install)"),
    })?;
    let cn = site_cn(&cert_pem).ok_or_else(|| Failure {
        code: ErrorCode::Internal,
        message: format!("installed certificate of `{key}` has no readable CN"),
    })?;
    Ok((cn, cert_pem))
}

/// The NVFlare job cell's name: the server signs `"server_job" + job_id` (a uuid4) with
/// plain `sign` when it launches a job (nvflare 2.9.0 `server_engine.py`).
const JOB_CELL_NAME: &[u8] = b"server_job";

/// For a key with NVFlare server settings, a plain `sign` of `<name> + uuid` is refused: a
/// challenge reply (`server_cn + client_nonce`) goes through `nvflare_server_challenge`, a
/// client's token (`client_name + token`) through `nvflare_server_register`, which verifies
/// the client first. The job cell's token (`server_job` + job id) is the one such message
/// the server makes without a client, so it stays a plain signature.
fn refuse_token_shaped(key: &KeyId, data: &[u8]) -> Result<(), Failure> {
    let Some(len) = uuid_tail(data) else { return Ok(()) };
    if &data[..data.len() - len] == JOB_CELL_NAME {
        return Ok(());
    }
    Err(Failure {
        code: ErrorCode::PolicyDenied,
        message: format!(
            "refusing a plain signature over a name + nonce with NVFlare server key `{key}`: challenge replies and client tokens must use nvflare_server_challenge and nvflare_server_register, which verify the client first"
        ),
    })
}

/// For a key with NVFlare settings, a plain `sign` of something shaped like a registration
/// (`site_cn + uuid`) is refused: registrations go through `nvflare_register`, where the
/// agent verifies the server first. NVFlare's other use of the key, the cell cipher, signs
/// `0x01 || nonce || ...`, which never has that shape.
pub fn refuse_registration_shaped(agent: &Agent, policies: &Policies, key: &KeyId, data: &[u8]) -> Result<(), Failure> {
    if policies.get(key).nvflare_server.is_some() {
        refuse_token_shaped(key, data)?;
    }
    if policies.get(key).nvflare.is_none() || uuid_tail(data).is_none() {
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

/// The length of the text `uuid` parses (hyphenated, simple, braced or URN form) that
/// `data` ends with, if any: a cheap filter that keeps the sign path free of file reads for
/// everything else.
fn uuid_tail(data: &[u8]) -> Option<usize> {
    [32, 36, 38, 45].into_iter().find(|&len| {
        data.len() >= len
            && std::str::from_utf8(&data[data.len() - len..]).is_ok_and(|tail| uuid::Uuid::try_parse(tail).is_ok())
    })
}

/// The subject CN of the leaf in a PEM certificate chain.
pub(super) fn site_cn(cert_pem: &str) -> Option<String> {
    let block = ::pem::parse_many(cert_pem).ok()?.into_iter().find(|b| b.tag() == "CERTIFICATE")?;
    let (_, cert) = X509Certificate::from_der(block.contents()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}
