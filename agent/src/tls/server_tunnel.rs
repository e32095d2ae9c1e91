//! The tunnel behind `keyward server-tunnel`: TLS terminated in front of a server whose key
//! the agent holds (NVFlare's server, whose gRPC and HTTP drivers want a PEM key file).
//! Accepts TLS 1.2/1.3 from the network with the server certificate and the agent-held key
//! (`signer.rs`), requires and verifies a client certificate against the federation's root
//! when client authentication is on (rustls' webpki client verifier: chain, validity, key
//! usage), optionally checks the client certificate's CN against an allow-list, then opens a
//! plain-text connection to the server on loopback and copies bytes both ways (`relay.rs`).
//!
//! What the server behind it no longer sees is the TLS peer: it gets a loopback connection,
//! with no certificate. Every connection therefore ends with one log line naming the client's
//! address and verified CN, TLS version, cipher suite, ALPN, handshake time and bytes each way,
//! or a warning naming why it was refused. A failing connection never stops the accept loop;
//! the TLS handshake has a time limit, so a client that stalls it holds a connection slot for
//! that long at most.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::accept_loop::accept_loop;
use super::relay::{relay, SessionSummary};
use super::tunnel::ErrorChain;

/// Where the tunnel forwards, and its limits.
#[derive(Clone, Debug)]
pub struct ServerTunnelSettings {
    /// The plain-text server, on loopback.
    pub upstream: SocketAddr,
    /// Limit for the TLS handshake (the agent's signature included).
    pub handshake_timeout: Duration,
    /// Limit for the TCP connect to the upstream.
    pub connect_timeout: Duration,
    /// A connection with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// When set, only client certificates whose subject CN is one of these are let through.
    pub allowed_client_names: Option<Vec<String>>,
}

/// Why a connection was closed before any byte reached the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerTunnelError {
    /// The TLS handshake failed (client certificate, protocol, the agent refusing to sign).
    #[error("TLS handshake failed")]
    Handshake(#[source] std::io::Error),
    /// The TLS handshake took too long.
    #[error("TLS handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The client certificate's CN is not on the allow-list.
    #[error("client certificate CN `{0}` is not allowed (--allow-client-cn)")]
    ClientNameRefused(String),
    /// The upstream server is not reachable.
    #[error("upstream `{upstream}` unreachable")]
    Upstream {
        /// The upstream.
        upstream: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connect to the upstream took too long.
    #[error("TCP connect to upstream `{0}` timed out")]
    UpstreamTimeout(SocketAddr),
}

/// Serves connections from `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    settings: Arc<ServerTunnelSettings>,
    shutdown: CancellationToken,
) {
    let serve = |(tcp, peer): (TcpStream, SocketAddr)| {
        let (acceptor, settings) = (acceptor.clone(), Arc::clone(&settings));
        Some(async move { serve_connection(tcp, peer, &acceptor, &settings).await })
    };
    accept_loop(settings.max_connections, shutdown, async || listener.accept().await, serve).await;
}

async fn serve_connection(tcp: TcpStream, peer: SocketAddr, acceptor: &TlsAcceptor, settings: &ServerTunnelSettings) {
    let _ = tcp.set_nodelay(true);
    let started = Instant::now();
    let opened = match accept(tcp, acceptor, settings).await {
        Ok(tls) => connect_upstream(settings).await.map(|upstream| (tls, upstream)),
        Err(e) => Err(e),
    };
    let ((tls, client_name), upstream) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!(%peer, error = %ErrorChain(&e), "connection refused");
            return;
        }
    };
    let handshake_ms = started.elapsed().as_millis();
    let session = SessionSummary::of(tls.get_ref().1);
    let relay = relay(tls, upstream, settings.idle_timeout).await;
    tracing::info!(
        %peer,
        client_cn = %client_name.as_deref().unwrap_or("-"),
        upstream = %settings.upstream,
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

/// The TLS handshake, and the client certificate's CN checked against the allow-list.
async fn accept(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    settings: &ServerTunnelSettings,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Option<String>), ServerTunnelError> {
    let tls = tokio::time::timeout(settings.handshake_timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| ServerTunnelError::HandshakeTimeout(settings.handshake_timeout))?
        .map_err(ServerTunnelError::Handshake)?;
    let client_name =
        tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()).and_then(|leaf| common_name(leaf));
    if let Some(allowed) = &settings.allowed_client_names {
        let name = client_name.clone().unwrap_or_default();
        if !allowed.contains(&name) {
            return Err(ServerTunnelError::ClientNameRefused(name));
        }
    }
    Ok((tls, client_name))
}

async fn connect_upstream(settings: &ServerTunnelSettings) -> Result<TcpStream, ServerTunnelError> {
    let upstream = settings.upstream;
    let tcp = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(upstream))
        .await
        .map_err(|_| ServerTunnelError::UpstreamTimeout(upstream))?
        .map_err(|source| ServerTunnelError::Upstream { upstream, source })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The first subject CN of a DER certificate (already verified by rustls).
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}
