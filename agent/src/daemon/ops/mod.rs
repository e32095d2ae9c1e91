//! What each request does, one file per operation, named by its wire name (`hello.rs`,
//! `sign.rs`, …), and [`execute`], which every frame goes through: decode (straight from the
//! frame), hand the request to the watchdog, run the operation on this thread, write one
//! audit record, count it, and build the reply. The wire gets the error's code and
//! top-level message; the log gets the whole cause chain under the same request id. A
//! private-key result (signature, decryption, registration) leaves only after its record is
//! in the audit log; otherwise the caller gets `audit_failed` and the result is dropped.
//!
//! When the watchdog answered `timeout` first (a hung device call), the late result is
//! dropped here: `execute` returns `None` and the thread leaves the connection alone.

mod decrypt;
mod hello;
mod list_keys;
mod nvflare_challenge;
mod nvflare_register;
mod nvflare_server_challenge;
mod nvflare_server_register;
mod nvflare_state;
mod nvflare_verify_token;
mod public_key;
mod retire_key;
mod sign;
mod status;

use crate::wire_error::WireCode;
use std::time::{Duration, Instant};

use keyward_core::error::chain;
use keyward_core::{KeyId, SignProfile, StoreError};
use keyward_protocol::{decode_request, ErrorCode, Operation, Reply, Response};

use super::metrics::{Shard, Stats};
use super::policy::{Grant, Policies, Refusal};
use super::Agent;
use crate::audit::{micros, sha256_hex, AuditError, AuditRecord, Peer};

pub use nvflare_state::NvflareState;

/// A failed operation: wire code and message.
pub(crate) struct Failure {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
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

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Self { code: r.code, message: r.message }
    }
}

/// What every operation gets: the agent, the caller, and the deadline of backend calls.
pub(crate) struct Ctx<'a> {
    pub(crate) agent: &'a Agent,
    pub(crate) peer: Peer,
    pub(crate) deadline: Instant,
}

/// What an operation adds to its audit record.
#[derive(Default)]
pub(crate) struct AuditExtra {
    pub(crate) profile: Option<SignProfile>,
    /// The message actually signed, when the agent built it (NVFlare registration).
    pub(crate) signed: Option<Vec<u8>>,
}

/// An operation's result.
pub(crate) type Done = Result<(Reply, AuditExtra), Failure>;

/// A request being served, as its audit record and metrics need it; parked with the
/// watchdog while the operation runs, so that a `timeout` answered by the watchdog is
/// recorded like any other outcome.
pub struct Pending {
    id: u64,
    op: &'static str,
    key: Option<KeyId>,
    profile: Option<String>,
    payload: Option<(String, usize)>,
    started: Instant,
}

/// The connection's side of the watchdog (`front/watchdog.rs`).
pub trait Watched {
    /// Parks `pending` until [`Watched::disarm`]; past `deadline` the watchdog may answer
    /// `timeout` in the request's place.
    fn arm(&self, pending: Pending, deadline: Instant);
    /// Takes the request back; `None` when the watchdog has answered it.
    fn disarm(&self) -> Option<Pending>;
}

/// Decodes and executes one frame, returning the reply to send, or `None` when the
/// watchdog already answered it.
pub fn execute(
    agent: &Agent,
    peer: Peer,
    watch: &dyn Watched,
    shard: &Shard,
    frame: &[u8],
    started: Instant,
) -> Option<Response> {
    let request = match decode_request(frame) {
        Ok(r) => r,
        Err(e) => {
            Stats::bump(&agent.stats.requests_failed);
            let id = e.id.unwrap_or(0);
            let pending = Pending { id, op: "invalid", key: None, profile: None, payload: None, started };
            // A refusal: it is refused whether or not its record is written.
            let _ = audit(agent, peer, &pending, None, e.code.as_str());
            agent.stats.record_in(shard, "invalid", None, None, e.code.as_str(), started.elapsed());
            return Some(Response::error(id, e.code, e.message));
        }
    };
    let id = request.id;
    let op_name = request.op.name();
    let (profile, payload) = match &request.op {
        Operation::Sign { profile, data, .. } => (Some(profile.clone()), Some(data.as_slice())),
        Operation::Decrypt { data, .. } => (None, Some(data.as_slice())),
        Operation::NvflareRegister { .. }
        | Operation::NvflareServerChallenge { .. }
        | Operation::NvflareServerRegister { .. } => (Some(SignProfile::Nvflare.name().to_owned()), None),
        _ => (None, None),
    };
    let pending = Pending {
        id,
        op: op_name,
        key: request.op.key().cloned(),
        profile,
        payload: payload.map(|p| (sha256_hex(p), p.len())),
        started,
    };
    let private_key_result = uses_private_key(&request.op);
    let deadline = started + agent.back.timeout();
    watch.arm(pending, deadline);
    let result = dispatch(&Ctx { agent, peer, deadline }, request.op);
    let mut pending = watch.disarm()?;
    let (mut outcome, mut response, extra) = match result {
        Ok((reply, extra)) => ("ok", Response::ok(id, reply), extra),
        Err(f) => {
            tracing::info!(request_id = id, op = op_name, code = %f.code, message = %f.message, "request failed");
            (f.code.as_str(), Response::error(id, f.code, f.message), AuditExtra::default())
        }
    };
    if let Some(signed) = &extra.signed {
        pending.payload = Some((sha256_hex(signed), signed.len()));
    }
    let shown_profile = extra.profile.map(SignProfile::name);
    if let Err(e) = audit(agent, peer, &pending, shown_profile, outcome) {
        if outcome == "ok" && private_key_result {
            // Fail closed: no signature, plaintext or registration without its record.
            outcome = ErrorCode::AuditFailed.as_str();
            response = Response::error(id, ErrorCode::AuditFailed, withheld(&e));
        }
    }
    let stats = &agent.stats;
    if outcome == "ok" {
        Stats::bump(&stats.requests_ok);
        match op_name {
            "sign" | "nvflare_register" | "nvflare_server_challenge" | "nvflare_server_register" => {
                Stats::bump(&stats.signatures)
            }
            "decrypt" => Stats::bump(&stats.decryptions),
            _ => {}
        }
    } else {
        Stats::bump(&stats.requests_failed);
    }
    let profile = shown_profile.or(pending.profile.as_deref());
    stats.record_in(shard, op_name, pending.key.as_ref(), profile, outcome, started.elapsed());
    Some(response)
}

/// The watchdog's answer for a request whose backend call did not return in time: its
/// audit record and metrics, and the `timeout` reply.
pub fn timed_out(agent: &Agent, peer: Peer, shard: &Shard, pending: &Pending, timeout: Duration) -> Response {
    let code = ErrorCode::Timeout;
    tracing::warn!(
        request_id = pending.id,
        op = pending.op,
        timeout_ms = timeout.as_millis(),
        "backend call did not return in time; answered timeout"
    );
    // Not a private-key result: the answer goes out whether or not its record is written.
    let _ = audit(agent, peer, pending, None, code.as_str());
    Stats::bump(&agent.stats.requests_failed);
    let elapsed = pending.started.elapsed();
    agent.stats.record_in(shard, pending.op, pending.key.as_ref(), pending.profile.as_deref(), code.as_str(), elapsed);
    let err = StoreError::Timeout { millis: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX) };
    Response::error(pending.id, code, err.to_string())
}

fn dispatch(ctx: &Ctx<'_>, op: Operation) -> Done {
    match op {
        Operation::Hello => hello::run(ctx),
        Operation::ListKeys => list_keys::run(ctx),
        Operation::PublicKey { key } => public_key::run(ctx, key),
        Operation::Sign { key, profile, data } => sign::run(ctx, key, &profile, &data),
        Operation::Decrypt { key, data } => decrypt::run(ctx, &key, &data),
        Operation::Status => status::run(ctx),
        Operation::NvflareChallenge { key } => nvflare_challenge::run(ctx, &key),
        Operation::NvflareRegister { key, client_nonce, server_cert, server_cn, server_signature, server_nonce } => {
            let registration = nvflare_register::Registration {
                key,
                client_nonce,
                server_cert,
                server_cn,
                server_signature,
                server_nonce,
            };
            nvflare_register::run(ctx, registration)
        }
        Operation::NvflareVerifyToken { session, client_name, token, token_signature } => {
            nvflare_verify_token::run(ctx, &session, &client_name, &token, &token_signature)
        }
        Operation::RetireKey { key, replaced_by } => retire_key::run(ctx, &key, &replaced_by),
        Operation::NvflareServerChallenge { key, client_nonce } => {
            nvflare_server_challenge::run(ctx, &key, &client_nonce)
        }
        Operation::NvflareServerRegister { key, server_nonce, client_name, client_cert, client_signature, token } => {
            let request = nvflare_server_register::ClientRegistrationRequest {
                key,
                server_nonce,
                client_name,
                client_cert,
                client_signature,
                token,
            };
            nvflare_server_register::run(ctx, request)
        }
    }
}

/// Operations whose success hands out the work of a private key.
fn uses_private_key(op: &Operation) -> bool {
    matches!(
        op,
        Operation::Sign { .. }
            | Operation::Decrypt { .. }
            | Operation::NvflareRegister { .. }
            | Operation::NvflareServerChallenge { .. }
            | Operation::NvflareServerRegister { .. }
    )
}

/// The `audit_failed` message: the OS reason, not the log's path.
fn withheld(e: &AuditError) -> String {
    format!("the audit record could not be written ({}), so the result was withheld", e.reason())
}

fn audit(agent: &Agent, peer: Peer, p: &Pending, profile: Option<&str>, outcome: &str) -> Result<(), AuditError> {
    let (payload_sha256, payload_len) = p.payload.clone().map_or((None, None), |(d, n)| (Some(d), Some(n)));
    agent.audit.record(&AuditRecord {
        request_id: p.id,
        key: p.key.as_ref().map(KeyId::as_str),
        profile: profile.or(p.profile.as_deref()),
        payload_sha256,
        payload_len,
        latency_us: micros(p.started.elapsed()),
        ..AuditRecord::new(peer, p.op, outcome)
    })
}

/// Ends a rate-limited use: a refusal that never reached the key gets its tokens back.
pub(crate) fn settle<T>(policies: &Policies, grant: Grant, result: Result<T, Failure>) -> Result<T, Failure> {
    policies.settle(grant, result.as_ref().err().map(|f| f.code));
    result
}

/// A job answered with an output of another kind: a bug, never a client's doing.
pub(crate) fn unexpected(op: &str, output: &super::back::JobOutput) -> Failure {
    tracing::error!(op, output = output.kind(), "backend job returned an unexpected output");
    Failure { code: ErrorCode::Internal, message: format!("internal error in `{op}`") }
}

#[cfg(test)]
impl Pending {
    /// A pending `sign` request with id `id`, for tests of the watchdog's state machine.
    pub(crate) fn for_tests(id: u64) -> Self {
        Self { id, op: "sign", key: None, profile: None, payload: None, started: Instant::now() }
    }
}
