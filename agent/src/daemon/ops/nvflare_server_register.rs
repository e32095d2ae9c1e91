//! `nvflare_server_register`: NVFlare server side, step 2. The agent uses up the server
//! nonce it issued in its own challenge reply (same caller and key, once, within its
//! lifetime), verifies the client's registration against `[keys.<name>.nvflare_server]
//! root_ca` (certificate chain and clientAuth, CN = the registering name, the client's
//! signature over `client_cn + server_nonce`), and only then signs the client's token,
//! `client_cn + token` — a message it builds, for a token shaped as NVFlare makes it.
//! A nonce is used up by a refused attempt too, as NVFlare's server drops the session.

use std::time::{Instant, SystemTime};

use keyward_core::nvflare::{check_uuid4, token_message, ChallengeError, ClientRegistration};
use keyward_core::{KeyId, SignProfile};
use keyward_protocol::Reply;

use super::nvflare_state::{lock, server_not_configured};
use super::{settle, unexpected, AuditExtra, Ctx, Done, Failure};
use crate::daemon::back::{BackendJob, JobOutput, ProfileChoice};
use crate::daemon::policy::KeyUse;
use crate::wire_error::WireCode;

/// The inputs of `nvflare_server_register`.
pub(super) struct ClientRegistrationRequest {
    /// Server key.
    pub(super) key: KeyId,
    /// The server nonce the agent issued.
    pub(super) server_nonce: String,
    /// The name the client registers under.
    pub(super) client_name: String,
    /// The client's certificate PEM.
    pub(super) client_cert: Vec<u8>,
    /// The client's signature.
    pub(super) client_signature: Vec<u8>,
    /// The token the server issues.
    pub(super) token: String,
}

pub(super) fn run(ctx: &Ctx<'_>, r: ClientRegistrationRequest) -> Done {
    let rules = ctx.agent.rules.load();
    let grant = rules.policies.admit(&r.key, &ctx.peer, KeyUse::NvflareServer)?;
    let registered = match rules.policies.get(&r.key).nvflare_server.as_ref() {
        None => Err(server_not_configured(&r.key)),
        Some(trust) => register(ctx, trust, &r),
    };
    let (reply, signed) = settle(&rules.policies, grant, registered)?;
    Ok((reply, AuditExtra { profile: Some(SignProfile::Nvflare), signed: Some(signed) }))
}

fn register(
    ctx: &Ctx<'_>,
    trust: &keyward_core::nvflare::ClientTrust,
    r: &ClientRegistrationRequest,
) -> Result<(Reply, Vec<u8>), Failure> {
    // Before the nonce is used up: a malformed request leaves it for a correct retry.
    check_uuid4(&r.token, "token (NVFlare's server issues a lowercase uuid4 string, 36 characters)")?;
    lock(&ctx.agent.nvflare.server_nonces)
        .consume(&r.server_nonce, ctx.peer.uid, &r.key, Instant::now())
        .map_err(server_nonce_refusal)?;
    let registration =
        ClientRegistration { client_name: &r.client_name, cert_pem: &r.client_cert, signature: &r.client_signature };
    let client = trust.verify_registration(&registration, &r.server_nonce, SystemTime::now()).inspect_err(|e| {
        tracing::warn!(key = %r.key, client = %r.client_name, error = %e, "refused NVFlare client registration");
    })?;
    tracing::info!(key = %r.key, client = %client.cn, "verified NVFlare client registration");
    let message = token_message(&client.cn, &r.token);
    let job = BackendJob::Sign { key: &r.key, profile: ProfileChoice::Exact(SignProfile::Nvflare), data: &message };
    let token_signature = match ctx.agent.back.run(job, ctx.deadline)? {
        JobOutput::Signature(signature, _) => signature,
        other => return Err(unexpected("nvflare_server_register", &other)),
    };
    Ok((Reply::NvflareClientRegistered { client_cn: client.cn, token_signature }, message))
}

/// The nonce book speaks of client nonces; on this side the nonce is the server's.
fn server_nonce_refusal(e: ChallengeError) -> Failure {
    let message = match &e {
        ChallengeError::UnknownNonce(shown) => {
            format!("server nonce `{shown}` was not issued by this agent's nvflare_server_challenge")
        }
        ChallengeError::ExpiredNonce(secs) => format!("server nonce expired (older than {secs} s)"),
        ChallengeError::ReplayedNonce => "server nonce was already used; a replayed registration is refused".to_owned(),
        ChallengeError::NonceNotYours => "server nonce was issued to another caller or key".to_owned(),
        other => other.to_string(),
    };
    Failure { code: e.code(), message }
}
