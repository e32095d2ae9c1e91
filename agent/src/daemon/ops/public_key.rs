//! `public_key`: a key's SubjectPublicKeyInfo and its installed certificate, if any.

use keyward_core::KeyId;
use keyward_protocol::Reply;

use super::{unexpected, AuditExtra, Ctx, Done};
use crate::daemon::back::{BackendJob, JobOutput};

pub(super) fn run(ctx: &Ctx<'_>, key: KeyId) -> Done {
    let public = match ctx.agent.back.run(BackendJob::PublicKey { key: &key }, ctx.deadline)? {
        JobOutput::PublicKey(public) => public,
        other => return Err(unexpected("public_key", &other)),
    };
    let reply = Reply::PublicKey {
        certificate_pem: ctx.agent.certs.get(&key),
        key,
        algorithm: public.algorithm,
        spki_der: public.spki_der,
    };
    Ok((reply, AuditExtra::default()))
}
