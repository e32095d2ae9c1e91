//! `list_keys`: the keys in the store, each with whether a certificate is installed for it.

use keyward_protocol::{KeyEntry, Reply};

use super::{unexpected, AuditExtra, Ctx, Done};
use crate::daemon::back::{BackendJob, JobOutput};

pub(super) fn run(ctx: &Ctx<'_>) -> Done {
    let keys = match ctx.agent.back.run(BackendJob::ListKeys, ctx.deadline)? {
        JobOutput::Keys(keys) => keys,
        other => return Err(unexpected("list_keys", &other)),
    };
    let keys = keys
        .into_iter()
        .map(|k| KeyEntry {
            has_certificate: ctx.agent.certs.get(&k.id).is_some(),
            key: k.id,
            algorithm: k.algorithm,
            generated_on_device: k.generated_on_device,
            empty_auth: k.empty_auth,
        })
        .collect();
    Ok((Reply::Keys { keys }, AuditExtra::default()))
}
