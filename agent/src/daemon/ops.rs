//! What each request does: decode, run it on the key store, write one audit record, and
//! build the reply. The wire gets the error's code and top-level message; the log gets the
//! whole cause chain under the same request id. A private-key result (signature,
//! decryption, registration) leaves only after its record is in the audit log; otherwise
//! the caller gets `audit_failed` and the result is dropped.

use std::time::Instant;

use keyward_core::error::chain;
use keyward_core::{KeyId, SignProfile, StoreError, TlsScheme};
use keyward_protocol::{decode_request, ErrorCode, KeyEntry, Operation, Reply, Response, StatusReport};

use super::policy::{Grant, KeyUse, Policies, Refusal};
use super::{nvflare, status, Agent, Stats};
use crate::audit::{micros, sha256_hex, AuditError, AuditRecord, Peer};
use crate::wire_error::WireCode;

/// A failed operation: wire code and message.
pub(super) struct Failure {
    pub(super) code: ErrorCode,
    pub(super) message: String,
}

/// What an operation adds to its audit record.
#[derive(Default)]
struct AuditExtra {
    profile: Option<SignProfile>,
    /// The message actually signed, when the agent built it (NVFlare registration).
    signed: Option<Vec<u8>>,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        // An unavailable backend logs its own state changes once (a token going away, each
        // recovery attempt); one warning per refused request would flood the log in an outage.
        match e.code() {
            ErrorCode::BackendError => tracing::warn!(error = %chain(&e), "backend failure"),
            ErrorCode::BackendUnavailable => tracing::debug!(error = %chain(&e), "backend unavailable"),
            _ => {}
        }
        Self { code: e.code(), message: e.to_string() }
    }
}

/// Decodes and executes one frame, returning the reply to send.
pub async fn execute(agent: &Agent, peer: Peer, frame: &[u8], started: Instant) -> Response {
    let request = match decode_request(frame) {
        Ok(r) => r,
        Err(e) => {
            Stats::bump(&agent.stats.requests_failed);
            let id = e.id.unwrap_or(0);
            // A refusal: it is refused whether or not its record is written.
            let _ = audit(agent, peer, id, "invalid", None, None, None, e.code.as_str(), started);
            agent.stats.record("invalid", None, None, e.code.as_str(), started.elapsed());
            return Response::error(id, e.code, e.message);
        }
    };
    let id = request.id;
    let op_name = request.op.name();
    let key = request.op.key().cloned();
    let (profile, payload) = match &request.op {
        Operation::Sign { profile, data, .. } => (Some(profile.clone()), Some(data.as_slice())),
        Operation::Decrypt { data, .. } => (None, Some(data.as_slice())),
        Operation::NvflareRegister { .. } => (Some(SignProfile::Nvflare.name().to_owned()), None),
        _ => (None, None),
    };
    let mut payload_digest = payload.map(|p| (sha256_hex(p), p.len()));
    let private_key_result = uses_private_key(&request.op);
    let result = run(agent, peer, request.op).await;
    let (mut outcome, mut response, extra) = match result {
        Ok((reply, extra)) => ("ok", Response::ok(id, reply), extra),
        Err(f) => {
            tracing::info!(request_id = id, op = op_name, code = %f.code, message = %f.message, "request failed");
            (f.code.as_str(), Response::error(id, f.code, f.message), AuditExtra::default())
        }
    };
    if let Some(signed) = &extra.signed {
        payload_digest = Some((sha256_hex(signed), signed.len()));
    }
    let shown_profile = extra.profile.map(SignProfile::name).or(profile.as_deref());
    let written = audit(agent, peer, id, op_name, key.as_ref(), shown_profile, payload_digest, outcome, started);
    if let Err(e) = written {
        if outcome == "ok" && private_key_result {
            // Fail closed: no signature, plaintext or registration without its record.
            outcome = ErrorCode::AuditFailed.as_str();
            response = Response::error(id, ErrorCode::AuditFailed, withheld(&e));
        }
    }
    Stats::bump(if outcome == "ok" { &agent.stats.requests_ok } else { &agent.stats.requests_failed });
    agent.stats.record(op_name, key.as_ref(), shown_profile, outcome, started.elapsed());
    response
}

/// Operations whose success hands out the work of a private key.
fn uses_private_key(op: &Operation) -> bool {
    matches!(op, Operation::Sign { .. } | Operation::Decrypt { .. } | Operation::NvflareRegister { .. })
}

/// The `audit_failed` message: the OS reason, not the log's path.
fn withheld(e: &AuditError) -> String {
    format!("the audit record could not be written ({}), so the result was withheld", e.reason())
}

#[allow(clippy::too_many_arguments)]
fn audit(
    agent: &Agent,
    peer: Peer,
    request_id: u64,
    op: &str,
    key: Option<&KeyId>,
    profile: Option<&str>,
    payload: Option<(String, usize)>,
    outcome: &str,
    started: Instant,
) -> Result<(), AuditError> {
    let (payload_sha256, payload_len) = payload.map_or((None, None), |(d, n)| (Some(d), Some(n)));
    agent.audit.record(&AuditRecord {
        request_id,
        key: key.map(KeyId::as_str),
        profile,
        payload_sha256,
        payload_len,
        latency_us: micros(started.elapsed()),
        ..AuditRecord::new(peer, op, outcome)
    })
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Self { code: r.code, message: r.message }
    }
}

async fn run(agent: &Agent, peer: Peer, op: Operation) -> Result<(Reply, AuditExtra), Failure> {
    let reply = match op {
        Operation::Hello => Reply::Hello {
            agent: format!("keyward {}", env!("CARGO_PKG_VERSION")),
            protocol: keyward_protocol::PROTOCOL_VERSION,
            backend: agent.store.info().backend.to_owned(),
        },
        Operation::ListKeys => {
            let keys = agent.store.call(|s| s.list()).await?;
            let keys = keys
                .into_iter()
                .map(|k| KeyEntry {
                    has_certificate: agent.certs.get(&k.id).is_some(),
                    key: k.id,
                    algorithm: k.algorithm,
                    generated_on_device: k.generated_on_device,
                    empty_auth: k.empty_auth,
                })
                .collect();
            Reply::Keys { keys }
        }
        Operation::PublicKey { key } => {
            let id = key.clone();
            let public = agent.store.call(move |s| s.public_key(&id)).await?;
            Reply::PublicKey {
                certificate_pem: agent.certs.get(&key),
                key,
                algorithm: public.algorithm,
                spki_der: public.spki_der,
            }
        }
        Operation::Sign { key, profile, data } => {
            let explicit = if profile == "tls" {
                None
            } else {
                Some(
                    profile
                        .parse::<SignProfile>()
                        .map_err(|message| Failure { code: ErrorCode::InvalidRequest, message })?,
                )
            };
            // One snapshot of the rules for the whole request (a SIGHUP may swap them).
            let rules = agent.rules.load();
            let grant = rules.policies.admit(&key, &peer, KeyUse::Sign(&profile))?;
            let signed = match nvflare::refuse_registration_shaped(agent, &rules.policies, &key, &data) {
                Ok(()) => sign(agent, &rules.policies, key, explicit, data).await,
                Err(refused) => Err(refused),
            };
            let (signature, used) = settle(&rules.policies, grant, signed)?;
            Stats::bump(&agent.stats.signatures);
            let extra = AuditExtra { profile: Some(used), signed: None };
            return Ok((Reply::Signature { profile: used.name().to_owned(), signature }, extra));
        }
        Operation::NvflareChallenge { key } => {
            // Takes no rate-limit token: nothing to settle.
            let _no_tokens = agent.rules.load().policies.admit(&key, &peer, KeyUse::NvflareChallenge)?;
            nvflare::challenge(agent, peer, &key)?
        }
        Operation::NvflareRegister { key, client_nonce, server_cert, server_cn, server_signature, server_nonce } => {
            let rules = agent.rules.load();
            let grant = rules.policies.admit(&key, &peer, KeyUse::NvflareRegister)?;
            let registration =
                nvflare::Registration { key, client_nonce, server_cert, server_cn, server_signature, server_nonce };
            let registered = nvflare::register(agent, peer, registration).await;
            let (reply, signed) = settle(&rules.policies, grant, registered)?;
            Stats::bump(&agent.stats.signatures);
            return Ok((reply, AuditExtra { profile: Some(SignProfile::Nvflare), signed: Some(signed) }));
        }
        Operation::NvflareVerifyToken { session, client_name, token, token_signature } => {
            nvflare::verify_token(agent, peer, &session, &client_name, &token, &token_signature)?
        }
        Operation::Decrypt { key, data } => {
            let rules = agent.rules.load();
            let grant = rules.policies.admit(&key, &peer, KeyUse::Decrypt)?;
            // The range check runs here, once for every backend, before the device sees the input.
            let decrypted = agent
                .store
                .call(move |s| {
                    let public = s.public_key(&key)?;
                    keyward_core::oaep::check_ciphertext(&key, &public, &data)?;
                    s.decrypt(&key, &data)
                })
                .await
                .map_err(Failure::from);
            let plaintext = settle(&rules.policies, grant, decrypted)?;
            Stats::bump(&agent.stats.decryptions);
            Reply::Plaintext { plaintext: plaintext.to_vec() }
        }
        Operation::Status => {
            // Answered from what is known without a worker, so that a stuck backend call
            // cannot hold up `status` (see store_health.rs).
            let health = agent.store.health();
            let keys = status::keys(agent, health.up).await;
            let info = agent.store.info();
            let stats = &agent.stats;
            Reply::Status(StatusReport {
                backend_health: if health.up { "ok" } else { "down" }.to_owned(),
                backend_error: health.last_error,
                backend_recovery_attempts: health.recovery_attempts,
                backend: info.backend.to_owned(),
                device: info.device.clone(),
                uptime_seconds: agent.started.elapsed().as_secs(),
                connections: Stats::get(&stats.connections),
                requests_ok: Stats::get(&stats.requests_ok),
                requests_failed: Stats::get(&stats.requests_failed),
                signatures: Stats::get(&stats.signatures),
                decryptions: Stats::get(&stats.decryptions),
                workers: agent.store.workers() as u64,
                keys,
                latency: status::latency(agent),
            })
        }
    };
    Ok((reply, AuditExtra::default()))
}

/// Ends a rate-limited use: a refusal that never reached the key gets its tokens back.
fn settle<T>(policies: &Policies, grant: Grant, result: Result<T, Failure>) -> Result<T, Failure> {
    policies.settle(grant, result.as_ref().err().map(|f| f.code));
    result
}

/// Resolves the profile (plain `tls` needs the key's algorithm) and signs, in one job. A
/// resolved profile outside `keys.<name>.profiles` is refused before the token is asked.
async fn sign(
    agent: &Agent,
    policies: &Policies,
    key: KeyId,
    explicit: Option<SignProfile>,
    data: Vec<u8>,
) -> Result<(Vec<u8>, SignProfile), Failure> {
    // What plain `tls` may resolve to, decided here: the worker has no access to the policy.
    // An explicit profile (NVFlare, the tunnel) was already admitted and needs no list.
    let allowed: Vec<SignProfile> = match explicit {
        Some(_) => Vec::new(),
        None => [TlsScheme::RsaPssSha256, TlsScheme::EcdsaP256Sha256]
            .into_iter()
            .map(SignProfile::Tls)
            .filter(|p| policies.allows_profile(&key, *p))
            .collect(),
    };
    let id = key.clone();
    let signed = agent
        .store
        .call(move |s| {
            let profile = match explicit {
                Some(p) => p,
                None => {
                    let alg = s.public_key(&id)?.algorithm;
                    let p = SignProfile::resolve("tls", alg).map_err(|what| StoreError::InvalidInput { what })?;
                    if !allowed.contains(&p) {
                        return Ok(Err(p));
                    }
                    p
                }
            };
            s.sign(&id, profile, &data).map(|sig| Ok((sig, profile)))
        })
        .await?;
    signed.map_err(|profile| Failure {
        code: ErrorCode::PolicyDenied,
        message: format!("key `{key}` does not allow profile `{profile}` (keys.{key}.profiles)"),
    })
}
