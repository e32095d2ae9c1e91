//! What the three NVFlare operations (`nvflare_challenge.rs`, `nvflare_register.rs`,
//! `nvflare_verify_token.rs`) share: the issued nonces, the registration sessions (which tie
//! the token check to the server verified at registration), the site CN of an installed
//! certificate, and the rule that keeps plain `sign` from making a registration signature.

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
pub(super) fn site_cn(cert_pem: &str) -> Option<String> {
    let block = ::pem::parse_many(cert_pem).ok()?.into_iter().find(|b| b.tag() == "CERTIFICATE")?;
    let (_, cert) = X509Certificate::from_der(block.contents()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}
