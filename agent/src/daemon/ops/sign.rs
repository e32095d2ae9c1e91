//! `sign`: the key's policy first (caller, `allow_sign`, profiles, rate limits), then one
//! backend job that resolves plain `tls` from the key's algorithm and signs. A resolved
//! profile outside `keys.<name>.profiles` is refused before the token is asked; a message
//! shaped like an NVFlare registration is refused for a key with NVFlare settings
//! (`nvflare_state.rs`).

use keyward_core::{KeyId, SignProfile};
use keyward_protocol::{ErrorCode, Reply};

use super::{nvflare_state, settle, unexpected, AuditExtra, Ctx, Done, Failure};
use crate::daemon::back::{BackendJob, JobOutput, ProfileChoice};
use crate::daemon::policy::{KeyUse, Policies};

pub(super) fn run(ctx: &Ctx<'_>, key: KeyId, profile: &str, data: &[u8]) -> Done {
    let explicit = if profile == "tls" {
        None
    } else {
        Some(profile.parse::<SignProfile>().map_err(|message| Failure { code: ErrorCode::InvalidRequest, message })?)
    };
    // One snapshot of the rules for the whole request (a SIGHUP may swap them).
    let rules = ctx.agent.rules.load();
    let grant = rules.policies.admit(&key, &ctx.peer, KeyUse::Sign(profile))?;
    let signed = match nvflare_state::refuse_registration_shaped(ctx.agent, &rules.policies, &key, data) {
        Ok(()) => sign(ctx, &rules.policies, &key, explicit, data),
        Err(refused) => Err(refused),
    };
    let (signature, used) = settle(&rules.policies, grant, signed)?;
    let extra = AuditExtra { profile: Some(used), signed: None };
    Ok((Reply::Signature { profile: used.name().to_owned(), signature }, extra))
}

fn sign(
    ctx: &Ctx<'_>,
    policies: &Policies,
    key: &KeyId,
    explicit: Option<SignProfile>,
    data: &[u8],
) -> Result<(Vec<u8>, SignProfile), Failure> {
    // What plain `tls` may resolve to, decided here: the store has no access to the policy.
    // An explicit profile (NVFlare, the tunnel) was already admitted and needs no list.
    let profile = match explicit {
        Some(p) => ProfileChoice::Exact(p),
        None => ProfileChoice::Tls {
            allowed: ProfileChoice::TLS_CANDIDATES.into_iter().filter(|p| policies.allows_profile(key, *p)).collect(),
        },
    };
    match ctx.agent.back.run(BackendJob::Sign { key, profile, data }, ctx.deadline)? {
        JobOutput::Signature(signature, used) => Ok((signature, used)),
        JobOutput::ProfileRefused(profile) => Err(Failure {
            code: ErrorCode::PolicyDenied,
            message: format!("key `{key}` does not allow profile `{profile}` (keys.{key}.profiles)"),
        }),
        other => Err(unexpected("sign", &other)),
    }
}
