//! `nvflare_register`: NVFlare flow, step 2. The agent checks the server nonce's shape,
//! uses up its own client nonce, verifies the server's challenge reply against the key's
//! NVFlare root CA and expected server identity, and only then signs `client_cn +
//! server_nonce` — a message it builds, never one the caller supplies. The verified server
//! is kept in a session for `nvflare_verify_token`.

use std::time::{Instant, SystemTime};

use keyward_core::nvflare::{check_server_nonce, registration_message, ServerReply};
use keyward_core::{KeyId, SignProfile};
use keyward_protocol::Reply;

use super::nvflare_state::{installed_cn, lock, not_configured, Session, MAX_SESSIONS, SESSION_LIFETIME};
use super::{settle, unexpected, AuditExtra, Ctx, Done, Failure};
use crate::daemon::back::{BackendJob, JobOutput, ProfileChoice};
use crate::daemon::policy::KeyUse;

/// The inputs of `nvflare_register`.
pub(super) struct Registration {
    /// Site key.
    pub(super) key: KeyId,
    /// Our nonce.
    pub(super) client_nonce: String,
    /// Server certificate PEM.
    pub(super) server_cert: Vec<u8>,
    /// Server CN.
    pub(super) server_cn: String,
    /// Server signature.
    pub(super) server_signature: Vec<u8>,
    /// Server nonce.
    pub(super) server_nonce: String,
}

pub(super) fn run(ctx: &Ctx<'_>, r: Registration) -> Done {
    let rules = ctx.agent.rules.load();
    let grant = rules.policies.admit(&r.key, &ctx.peer, KeyUse::NvflareRegister)?;
    let registered = register(ctx, &r);
    let (reply, signed) = settle(&rules.policies, grant, registered)?;
    Ok((reply, AuditExtra { profile: Some(SignProfile::Nvflare), signed: Some(signed) }))
}

/// The registration; also returns the signed message for the audit record.
fn register(ctx: &Ctx<'_>, r: &Registration) -> Result<(Reply, Vec<u8>), Failure> {
    let agent = ctx.agent;
    let rules = agent.rules.load();
    let trust = rules.policies.get(&r.key).nvflare.as_ref().ok_or_else(|| not_configured(&r.key))?;
    // Before the nonce is used up: a malformed request leaves it for a correct retry.
    check_server_nonce(&r.server_nonce)?;
    lock(&agent.nvflare.nonces).consume(&r.client_nonce, ctx.peer.uid, &r.key, Instant::now())?;
    let reply = ServerReply { cert_pem: &r.server_cert, cn: &r.server_cn, signature: &r.server_signature };
    let server = trust.verify_reply(&reply, &r.client_nonce, SystemTime::now())?;
    tracing::info!(key = %r.key, server = %server.cn, "verified NVFlare server identity");

    let (cn, cert_pem) = installed_cn(agent, &r.key)?;
    let message = registration_message(&cn, &r.server_nonce);
    let job = BackendJob::Sign { key: &r.key, profile: ProfileChoice::Exact(SignProfile::Nvflare), data: &message };
    let signature = match agent.back.run(job, ctx.deadline)? {
        JobOutput::Signature(signature, _) => signature,
        other => return Err(unexpected("nvflare_register", &other)),
    };

    let session = uuid::Uuid::new_v4().to_string();
    let mut sessions = lock(&agent.nvflare.sessions);
    sessions.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);
    if sessions.len() >= MAX_SESSIONS {
        if let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| k.clone()) {
            sessions.remove(&oldest);
        }
    }
    sessions.insert(session.clone(), Session { caller: ctx.peer.uid, server, created: Instant::now() });
    Ok((Reply::NvflareRegistration { cn, cert: cert_pem.into_bytes(), signature, session }, message))
}
