//! The self-check behind `READY=1`: before telling systemd it is up, the agent calls itself
//! through its own socket, exactly as a client would (accept, peer credentials, the
//! connection time, framing, the key store's sessions and the token), with `list_keys`. Only
//! an answer counts; a connection closed without a reply, an error from the store or no
//! answer within the deadline fails the start, so a unit that cannot serve is never reported
//! healthy (sd_notify(3), `Type=notify`).
//!
//! When `[access]` does not admit the agent's own uid, the socket answers
//! `permission_denied` — the request path works up to the access check — and the store is
//! then asked directly, without the socket. A `busy` reply (clients took every connection
//! slot the moment the socket appeared) is asked again until the deadline: it proves the
//! listener, not the store.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keyward_protocol::{ErrorCode, Operation, Reply};

use crate::daemon::back::{Back, BackendJob};
use keyward_client::{AgentClient, ClientError};

/// How long the self-check may take: a token's first `C_FindObjects` or a TPM's first
/// context load can take a second or two.
pub const SELF_CHECK_DEADLINE: Duration = Duration::from_secs(20);

/// Calls the agent at `socket` (already served by this process) with `list_keys`.
///
/// # Errors
/// The reply is an error other than `permission_denied`, the connection closed without a
/// reply, the store failed, or nothing came back within [`SELF_CHECK_DEADLINE`].
pub async fn self_check(socket: &Path, store: &Back) -> Result<usize> {
    tokio::time::timeout(SELF_CHECK_DEADLINE, check(socket, store))
        .await
        .with_context(|| format!("no answer within {} s", SELF_CHECK_DEADLINE.as_secs()))?
}

/// Pause between two tries after a `busy` reply.
const BUSY_RETRY: Duration = Duration::from_millis(50);

async fn check(socket: &Path, store: &Back) -> Result<usize> {
    loop {
        match check_once(socket, store).await {
            Err(e) if is_busy(&e) => tokio::time::sleep(BUSY_RETRY).await,
            other => return other,
        }
    }
}

fn is_busy(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ClientError>().is_some_and(|c| matches!(c, ClientError::Agent { code: ErrorCode::Busy, .. }))
}

async fn check_once(socket: &Path, store: &Back) -> Result<usize> {
    let mut client = AgentClient::connect(socket).await.context("connecting to its own socket")?;
    match client.call(Operation::ListKeys).await {
        Ok(Reply::Keys { keys }) => Ok(keys.len()),
        Ok(other) => bail!("`list_keys` through the socket answered {other:?}"),
        Err(ClientError::Agent { code: ErrorCode::PermissionDenied, .. }) => {
            tracing::info!("[access] does not admit the agent's own uid; checking the key store directly");
            let deadline = std::time::Instant::now() + store.timeout();
            let listed = tokio::task::block_in_place(|| store.run(BackendJob::ListKeys, deadline));
            match listed.context("listing keys in the store")? {
                crate::daemon::back::JobOutput::Keys(keys) => Ok(keys.len()),
                other => bail!("listing keys in the store answered `{}`", other.kind()),
            }
        }
        Err(e) => Err(e).context("`list_keys` through its own socket"),
    }
}
