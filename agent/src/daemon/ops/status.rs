//! `status`: backend health, counters, the keys with their certificate's expiry judged by
//! the key's renewal policy and the key's age (`renewal.rs`), and p50/p99 latency per
//! operation. Certificates and birth records are read at each request. Answered without a session, so that a stuck backend call
//! cannot hold up the one request that reports on it: health comes from `back/health.rs`,
//! and the key list from the side thread, waited for at most [`LIST_KEYS_WAIT`] and only
//! while the backend is up.

use std::time::Duration;

use keyward_core::error::chain;
use keyward_core::StoreError;
use keyward_protocol::{KeyStatus, OpLatency, Reply, StatusReport};

use super::{AuditExtra, Ctx, Done};
use crate::daemon::back::{BackendJob, JobOutput};
use crate::daemon::metrics::Stats;
use crate::daemon::Agent;

/// How long `status` waits for the key list: a busy or stuck backend must not hold up the
/// one request that reports on it.
const LIST_KEYS_WAIT: Duration = Duration::from_millis(250);

pub(super) fn run(ctx: &Ctx<'_>) -> Done {
    let agent = ctx.agent;
    let health = agent.back.health();
    let keys = keys(agent, health.up);
    let info = agent.back.info();
    let stats = &agent.stats;
    let reply = Reply::Status(StatusReport {
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
        workers: agent.back.sessions() as u64,
        keys,
        latency: latency(agent),
    });
    Ok((reply, AuditExtra::default()))
}

/// The store's keys and their certificates' expiry; empty when the backend is down or
/// cannot list them within [`LIST_KEYS_WAIT`].
fn keys(agent: &Agent, backend_up: bool) -> Vec<KeyStatus> {
    if !backend_up {
        return Vec::new();
    }
    let listed = agent.back.run_aside(BackendJob::ListKeys, LIST_KEYS_WAIT);
    match listed.unwrap_or(Err(StoreError::Timeout { millis: LIST_KEYS_WAIT.as_millis() as u64 })) {
        Ok(JobOutput::Keys(keys)) => {
            let rules = agent.rules.load();
            let now = crate::renewal::now();
            keys.into_iter()
                .map(|k| {
                    let validity = agent.certs.validity(&k.id);
                    let judged = rules.renewal.judge(&k.id, validity, now);
                    KeyStatus {
                        certificate_not_after: validity.map(|(_, not_after)| not_after),
                        certificate_seconds_to_expiry: judged.certificate.map(|a| a.seconds_to_expiry),
                        renewal: judged.certificate.map(|a| a.state.name().to_owned()),
                        key_age_seconds: judged.key_age_seconds,
                        key_age_exceeded: judged.key_age_exceeded,
                        empty_auth: k.empty_auth,
                        key: k.id,
                        algorithm: k.algorithm,
                    }
                })
                .collect()
        }
        Ok(_) => Vec::new(),
        Err(e) => {
            // The health check in the same request already warns about a down backend.
            tracing::debug!(error = %chain(&e), "status: cannot list keys");
            Vec::new()
        }
    }
}

/// p50 and p99 per operation seen since start.
fn latency(agent: &Agent) -> Vec<OpLatency> {
    agent
        .stats
        .latency_by_op()
        .into_iter()
        .map(|(op, h)| OpLatency {
            op: op.to_owned(),
            count: h.count(),
            p50_us: h.quantile_us(0.5).unwrap_or(0),
            p99_us: h.quantile_us(0.99).unwrap_or(0),
        })
        .collect()
}
