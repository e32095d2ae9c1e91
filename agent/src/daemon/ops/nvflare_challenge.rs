//! `nvflare_challenge`: NVFlare flow, step 1. A fresh client nonce for a key with NVFlare
//! settings, bound to the caller's uid and the key (`nvflare_state.rs` keeps it). Takes no
//! rate-limit token: nothing reaches the key here.

use std::time::Instant;

use keyward_core::KeyId;
use keyward_protocol::Reply;

use super::nvflare_state::{lock, not_configured};
use super::{AuditExtra, Ctx, Done};
use crate::daemon::policy::KeyUse;

pub(super) fn run(ctx: &Ctx<'_>, key: &KeyId) -> Done {
    let rules = ctx.agent.rules.load();
    let _no_tokens = rules.policies.admit(key, &ctx.peer, KeyUse::NvflareChallenge)?;
    if rules.policies.get(key).nvflare.is_none() {
        return Err(not_configured(key));
    }
    let nonce = lock(&ctx.agent.nvflare.nonces).issue(ctx.peer.uid, key, Instant::now());
    Ok((Reply::NvflareChallenge { nonce }, AuditExtra::default()))
}
