//! The tunnel behind `keyward tunnel`: accepts plain connections from local users (a
//! loopback port or a Unix socket, `listen.rs`; others' connections are closed first) and, for each, opens mutual TLS to one upstream
//! with the site certificate and the agent-held key (`signer.rs`), verifies the server
//! against the given root CA and server name, then copies bytes both ways with half-close
//! and an idle timeout.
//!
//! Every connection ends with one log line: peer, upstream, TLS version, cipher suite, ALPN,
//! handshake time and bytes each way — or, when the upstream is unreachable or the handshake
//! fails (bad server certificate, the agent or token refusing to sign), a warning naming the
//! cause. A failing connection never stops the accept loop. Shape after mini-redis's
//! `server::run`: the caller binds the listener (tests bind port 0), a `Semaphore` bounds
//! concurrent connections, and a `CancellationToken` stops accepting.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::accept_loop::accept_loop;
use super::listen::{LocalListener, LocalStream};
use super::relay::{relay, SessionSummary};

/// How the tunnel reaches its upstream, and its limits.
#[derive(Clone, Debug)]
pub struct TunnelSettings {
    /// `host:port` of the TLS server.
    pub upstream: String,
    /// The name the server certificate must carry (also sent as SNI when it is a DNS name).
    pub server_name: ServerName<'static>,
    /// Limit for the TCP connect to the upstream.
    pub connect_timeout: Duration,
    /// Limit for the TLS handshake, agent signature included.
    pub handshake_timeout: Duration,
    /// A connection with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Local users who may use the tunnel: a loopback client whose socket another uid owns
    /// is closed before any upstream connection. `None`: no check (`--allow-remote`).
    pub allowed_uids: Option<Vec<u32>>,
}

/// Whether a client may use the tunnel: its socket's owner is an allowed uid.
fn peer_allowed(peer: &str, owner: std::io::Result<Option<u32>>, settings: &TunnelSettings) -> bool {
    let Some(allowed) = &settings.allowed_uids else { return true };
    match owner {
        Ok(Some(uid)) if allowed.contains(&uid) => true,
        Ok(Some(uid)) => {
            tracing::warn!(%peer, uid, allowed = ?allowed, "connection refused: its local user may not use this tunnel");
            false
        }
        Ok(None) => {
            tracing::warn!(%peer, "connection refused: not a local socket, and the tunnel serves local users only");
            false
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "connection refused: cannot identify the peer's user");
            false
        }
    }
}

/// Why a connection was refused before any byte was relayed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// TCP connect to the upstream failed.
    #[error("upstream `{upstream}` unreachable")]
    Connect {
        /// The upstream.
        upstream: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A connect or handshake step took too long.
    #[error("{step} with `{upstream}` timed out after {limit:?}")]
    Timeout {
        /// `TCP connect` or `TLS handshake`.
        step: &'static str,
        /// The upstream.
        upstream: String,
        /// The limit.
        limit: Duration,
    },
    /// The TLS handshake failed (server certificate, name, client key, protocol).
    #[error("TLS handshake with `{upstream}` failed")]
    Handshake {
        /// The upstream.
        upstream: String,
        /// Cause: tokio-rustls wraps the `rustls::Error`.
        #[source]
        source: std::io::Error,
    },
}

/// Serves connections from `listener` until `shutdown` is cancelled. Connections still
/// relaying then are the caller's to end, with the runtime (the CLI gives them 1 s).
pub async fn run(
    listener: LocalListener,
    connector: TlsConnector,
    settings: Arc<TunnelSettings>,
    shutdown: CancellationToken,
) {
    let serve = |(client, peer, owner): (LocalStream, String, std::io::Result<Option<u32>>)| {
        if !peer_allowed(&peer, owner, &settings) {
            return None;
        }
        let (connector, settings) = (connector.clone(), Arc::clone(&settings));
        Some(async move { serve_connection(client, peer, &connector, &settings).await })
    };
    accept_loop(settings.max_connections, shutdown, async || listener.accept().await, serve).await;
}

async fn serve_connection(client: LocalStream, peer: String, connector: &TlsConnector, settings: &TunnelSettings) {
    let upstream = settings.upstream.as_str();
    let (tls, handshake) = match open_upstream(connector, settings).await {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!(%peer, %upstream, error = %ErrorChain(&e), "connection refused");
            return;
        }
    };
    let handshake_ms = handshake.as_millis();
    let session = SessionSummary::of(tls.get_ref().1);
    let relay = relay(client, tls, settings.idle_timeout).await;
    tracing::info!(
        %peer,
        %upstream,
        tls_version = %session.version,
        cipher_suite = %session.suite,
        alpn = %session.alpn,
        handshake_ms,
        bytes_to_upstream = relay.to_upstream,
        bytes_to_client = relay.to_client,
        end = %relay.end(),
        "connection done"
    );
}

/// Connects and completes the handshake; also returns how long the TLS handshake took (the
/// agent's signature included, the TCP connect not).
async fn open_upstream(
    connector: &TlsConnector,
    settings: &TunnelSettings,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Duration), TunnelError> {
    let upstream = || settings.upstream.clone();
    let timeout = |step, limit| TunnelError::Timeout { step, upstream: upstream(), limit };
    let tcp = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(&settings.upstream))
        .await
        .map_err(|_| timeout("TCP connect", settings.connect_timeout))?
        .map_err(|source| TunnelError::Connect { upstream: upstream(), source })?;
    let _ = tcp.set_nodelay(true);
    let started = Instant::now();
    let tls = tokio::time::timeout(settings.handshake_timeout, connector.connect(settings.server_name.clone(), tcp))
        .await
        .map_err(|_| timeout("TLS handshake", settings.handshake_timeout))?
        .map_err(|source| TunnelError::Handshake { upstream: upstream(), source })?;
    Ok((tls, started.elapsed()))
}

/// Displays an error with its causes, `outer: inner: innermost`, skipping a cause whose text
/// the previous one already ends with. It looks through the two wrappers that hide causes:
/// the `io::Error` tokio-rustls returns, and `rustls::Error::Other`, which has no `source()`
/// (that is where the signer's `AgentSignError` and the agent's refusal are).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut previous = self.0.to_string();
        f.write_str(&previous)?;
        let mut cause = next_cause(self.0);
        while let Some(e) = cause {
            let text = e.to_string();
            if !previous.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            previous = text;
            cause = next_cause(e);
        }
        Ok(())
    }
}

fn next_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a (dyn std::error::Error + 'static)> {
    let rustls_error = match e.downcast_ref::<std::io::Error>() {
        Some(io) => io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        None => e.downcast_ref::<rustls::Error>(),
    };
    match rustls_error {
        Some(rustls::Error::Other(other)) => Some(other.0.as_ref()),
        _ => e.source(),
    }
}
