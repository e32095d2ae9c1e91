//! `nvflare_server_challenge`: NVFlare server side, step 1. For a server key with
//! `[keys.<name>.nvflare_server]`, signs the challenge reply `server_cn + client_nonce` (the
//! server CN from the installed certificate, the client nonce shaped as NVFlare's client
//! makes it) and only then issues the server nonce that the client's registration must sign:
//! bound to the caller's uid and the key, good for one `nvflare_server_register`
//! (`nvflare_state.rs` keeps it). The challenge itself cannot be bound to a verified client:
//! NVFlare's server answers every client that asks, before it knows who asks.

use std::time::Instant;

use keyward_core::nvflare::{challenge_reply_message, check_uuid4};
use keyward_core::{KeyId, SignProfile};
use keyward_protocol::Reply;

use super::nvflare_state::{installed_cn, lock, server_not_configured};
use super::{settle, unexpected, AuditExtra, Ctx, Done, Failure};
use crate::daemon::back::{BackendJob, JobOutput, ProfileChoice};
use crate::daemon::policy::KeyUse;

pub(super) fn run(ctx: &Ctx<'_>, key: &KeyId, client_nonce: &str) -> Done {
    let rules = ctx.agent.rules.load();
    let grant = rules.policies.admit(key, &ctx.peer, KeyUse::NvflareServer)?;
    let answered = if rules.policies.get(key).nvflare_server.is_none() {
        Err(server_not_configured(key))
    } else {
        answer(ctx, key, client_nonce)
    };
    let (reply, signed) = settle(&rules.policies, grant, answered)?;
    Ok((reply, AuditExtra { profile: Some(SignProfile::Nvflare), signed: Some(signed) }))
}

/// The signed reply and a fresh server nonce; also returns the signed message for the audit.
fn answer(ctx: &Ctx<'_>, key: &KeyId, client_nonce: &str) -> Result<(Reply, Vec<u8>), Failure> {
    check_uuid4(client_nonce, "client nonce (NVFlare's client sends a lowercase uuid4 string, 36 characters)")?;
    let (cn, _) = installed_cn(ctx.agent, key)?;
    let message = challenge_reply_message(&cn, client_nonce);
    let job = BackendJob::Sign { key, profile: ProfileChoice::Exact(SignProfile::Nvflare), data: &message };
    let signature = match ctx.agent.back.run(job, ctx.deadline)? {
        JobOutput::Signature(signature, _) => signature,
        other => return Err(unexpected("nvflare_server_challenge", &other)),
    };
    let nonce = lock(&ctx.agent.nvflare.server_nonces).issue(ctx.peer.uid, key, Instant::now());
    Ok((Reply::NvflareServerChallenge { cn, nonce, signature }, message))
}
