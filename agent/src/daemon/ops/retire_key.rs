//! `retire_key`: the last step of a key rotation, the one way a key is destroyed. Runs in
//! the agent, not in the CLI, for three reasons: the agent is the audit log's one writer (a
//! second process appending would fork the hash chain), it holds the TPM that a swtpm or
//! `/dev/tpm0` serves to one client only, and its workers' sessions must stop using the key.
//!
//! In order, each step a refusal when it cannot be made: the caller is root or the agent's
//! own user (the NVFlare user, if another, may use keys but not destroy them); the two keys
//! differ and both exist; the successor has an installed certificate that is its own, valid
//! now and usable by NVFlare (`CertStore::check`); a signature the successor makes verifies
//! against that certificate; when the old key has a certificate, both name the same
//! subject. Then the `destroying` record is written and synced (`AuditLog::record_durable`):
//! no record, no destroy. Then the key is destroyed in the token and its certificates move to
//! `certs/retired/`. The `retire_key` record with the outcome follows, as for every request.

use keyward_core::{KeyId, PublicKey, SignProfile, TlsScheme};
use keyward_protocol::{ErrorCode, Reply};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{unexpected, AuditExtra, Ctx, Done, Failure};
use crate::audit::{sha256_hex, AuditNote, AuditRecord};
use crate::certs::CertStore;
use crate::daemon::back::{BackendJob, JobOutput, ProfileChoice};

/// The outcome of the record written before the key is destroyed.
pub(crate) const DESTROYING: &str = "destroying";

fn refused(message: String) -> Failure {
    Failure { code: ErrorCode::PolicyDenied, message }
}

pub(super) fn run(ctx: &Ctx<'_>, key: &KeyId, successor: &KeyId) -> Done {
    let agent = ctx.agent;
    let own_uid = nix::unistd::geteuid().as_raw();
    if ctx.peer.uid != 0 && ctx.peer.uid != own_uid {
        return Err(refused(format!(
            "retiring a key is for root or the agent's user (uid {own_uid}), not uid {}",
            ctx.peer.uid
        )));
    }
    if key == successor {
        return Err(Failure {
            code: ErrorCode::InvalidRequest,
            message: format!("invalid request: `{key}` cannot replace itself"),
        });
    }
    let retired = public_key(ctx, key)?;
    let public = public_key(ctx, successor)?;
    if public.spki_der == retired.spki_der {
        return Err(refused(format!("`{successor}` is the same key pair as `{key}`")));
    }
    let cert_path = agent.certs.path(successor);
    let Some(cert_pem) = agent.certs.get(successor) else {
        return Err(refused(format!(
            "`{successor}` has no installed certificate (`{}`): enroll it before retiring `{key}`",
            cert_path.display()
        )));
    };
    CertStore::check(successor, &public, cert_pem.as_bytes(), &cert_path)
        .map_err(|e| refused(format!("the certificate of `{successor}` cannot replace `{key}`'s: {e}")))?;
    prove(ctx, successor, &public)?;
    if let Some(old_pem) = agent.certs.get(key) {
        let (old, new) = (subject(&old_pem), subject(&cert_pem));
        if old != new {
            return Err(refused(format!(
                "`{successor}`'s certificate names `{}`, `{key}`'s names `{}`: not its successor",
                new.unwrap_or_default(),
                old.unwrap_or_default()
            )));
        }
    }

    let note = AuditNote::Retiring {
        replaced_by: successor.to_string(),
        retired_spki_sha256: sha256_hex(&retired.spki_der),
        successor_certificate_sha256: sha256_hex(cert_pem.as_bytes()),
    };
    let record = AuditRecord {
        key: Some(key.as_str()),
        note: Some(note),
        ..AuditRecord::new(ctx.peer, "retire_key", DESTROYING)
    };
    let audit_seq = agent.audit.record_durable(&record).map_err(|e| Failure {
        code: ErrorCode::AuditFailed,
        message: format!("the audit record could not be written ({}), so `{key}` was not destroyed", e.reason()),
    })?;
    tracing::warn!(key = %key, replaced_by = %successor, audit_seq, "retiring key: destroying it in the token");
    match agent.back.run(BackendJob::Destroy { key }, ctx.deadline)? {
        JobOutput::Destroyed => {}
        other => return Err(unexpected("retire_key", &other)),
    }
    if let Err(e) = agent.certs.retire(key) {
        tracing::warn!(key = %key, error = %keyward_core::error::chain(&e), "key destroyed; its certificate was not moved to certs/retired/");
    }
    if let Err(e) = agent.rules.load().renewal.retire_birth(key) {
        tracing::warn!(key = %key, error = %e, "key destroyed; its birth record was not moved aside");
    }
    Ok((Reply::KeyRetired { key: key.clone(), replaced_by: successor.clone(), audit_seq }, AuditExtra::default()))
}

fn public_key(ctx: &Ctx<'_>, key: &KeyId) -> Result<PublicKey, Failure> {
    match ctx.agent.back.run(BackendJob::PublicKey { key }, ctx.deadline)? {
        JobOutput::PublicKey(public) => Ok(public),
        other => Err(unexpected("retire_key", &other)),
    }
}

/// The successor signs a probe and the signature verifies with its certificate's key.
fn prove(ctx: &Ctx<'_>, successor: &KeyId, public: &PublicKey) -> Result<(), Failure> {
    let profile =
        if public.algorithm.is_rsa() { SignProfile::Nvflare } else { SignProfile::Tls(TlsScheme::EcdsaP256Sha256) };
    let probe = format!("keyward retire_key: {successor} takes over");
    let job = BackendJob::Sign { key: successor, profile: ProfileChoice::Exact(profile), data: probe.as_bytes() };
    let signature = match ctx.agent.back.run(job, ctx.deadline)? {
        JobOutput::Signature(signature, _) => signature,
        other => return Err(unexpected("retire_key", &other)),
    };
    keyward_core::verify::verify(public, profile, probe.as_bytes(), &signature)
        .map_err(|_| refused(format!("a signature by `{successor}` does not verify against its certificate")))
}

/// The subject of the first certificate in `pem_text`, as text.
fn subject(pem_text: &str) -> Option<String> {
    let block = ::pem::parse_many(pem_text.as_bytes()).ok()?.into_iter().find(|p| p.tag() == "CERTIFICATE")?;
    let (_, cert) = X509Certificate::from_der(block.contents()).ok()?;
    Some(cert.subject().to_string())
}
