//! The parts of the `status` reply beyond the plain counters: the keys with their
//! certificate's expiry (from `CertStore`, listed only when the backend is up and answers
//! quickly), and p50/p99 latency per operation (from the
//! histograms in `stats.rs`). The health check and counters are in `ops.rs`.

use std::time::Duration;

use keyward_core::error::chain;
use keyward_core::StoreError;
use keyward_protocol::{KeyStatus, OpLatency};

use super::Agent;

/// How long `status` waits for a worker to list the keys: a busy or stuck backend must not
/// hold up the one request that reports on it.
const LIST_KEYS_WAIT: Duration = Duration::from_millis(250);

/// The store's keys and their certificates' expiry; empty when the backend is down or
/// cannot list them within [`LIST_KEYS_WAIT`].
pub(super) async fn keys(agent: &Agent, backend_up: bool) -> Vec<KeyStatus> {
    if !backend_up {
        return Vec::new();
    }
    let listed = tokio::time::timeout(LIST_KEYS_WAIT, agent.store.call(|s| s.list())).await;
    match listed.unwrap_or(Err(StoreError::Timeout { millis: LIST_KEYS_WAIT.as_millis() as u64 })) {
        Ok(keys) => keys
            .into_iter()
            .map(|k| KeyStatus {
                certificate_not_after: agent.certs.not_after(&k.id),
                empty_auth: k.empty_auth,
                key: k.id,
                algorithm: k.algorithm,
            })
            .collect(),
        Err(e) => {
            // The health check in the same request already warns about a down backend.
            tracing::debug!(error = %chain(&e), "status: cannot list keys");
            Vec::new()
        }
    }
}

/// p50 and p99 per operation seen since start.
pub(super) fn latency(agent: &Agent) -> Vec<OpLatency> {
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
