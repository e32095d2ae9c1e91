//! `decrypt`: the key's policy first (caller, `allow_decrypt`, rate limits), then one
//! backend job: the ciphertext's range check against the key's modulus, then RSA-OAEP
//! (SHA-256) on the device.

use keyward_core::KeyId;
use keyward_protocol::Reply;

use super::{settle, unexpected, AuditExtra, Ctx, Done};
use crate::daemon::back::{BackendJob, JobOutput};
use crate::daemon::policy::KeyUse;

pub(super) fn run(ctx: &Ctx<'_>, key: &KeyId, data: &[u8]) -> Done {
    let rules = ctx.agent.rules.load();
    let grant = rules.policies.admit(key, &ctx.peer, KeyUse::Decrypt)?;
    let decrypted = match ctx.agent.back.run(BackendJob::Decrypt { key, data }, ctx.deadline) {
        Ok(JobOutput::Plaintext(plaintext)) => Ok(plaintext),
        Ok(other) => Err(unexpected("decrypt", &other)),
        Err(e) => Err(e.into()),
    };
    let plaintext = settle(&rules.policies, grant, decrypted)?;
    Ok((Reply::Plaintext { plaintext: plaintext.to_vec() }, AuditExtra::default()))
}
