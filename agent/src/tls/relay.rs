//! Copying bytes both ways between a client side and an upstream side, for both tunnels:
//! half-close passed on, bytes counted per direction, and an idle timeout over both; and
//! what each tunnel's log line says of a finished connection.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::tunnel::ErrorChain;

/// Copy buffer per direction (128 KiB per connection). With tokio's default 8 KiB every
/// read became one half-full TLS record; 64 KiB fills four 16 KiB records per read and took
/// one bulk connection from about 700 to 900+ MB/s on the bench machine (`tls-bench`,
/// docs/benchmarks.md); 256 KiB gained nothing more.
const RELAY_BUFFER: usize = 64 * 1024;

/// How a relayed connection ended.
pub(crate) struct RelayOutcome {
    /// Bytes read from the client side and sent on.
    pub(crate) to_upstream: u64,
    /// Bytes read from the upstream side and sent on.
    pub(crate) to_client: u64,
    /// Closed for idleness.
    pub(crate) idle: bool,
    /// The I/O error that ended it, if one did.
    pub(crate) error: Option<std::io::Error>,
}

impl RelayOutcome {
    /// How it ended, for the connection's log line.
    pub(crate) fn end(&self) -> String {
        match &self.error {
            Some(e) => format!("error: {}", ErrorChain(e)),
            None if self.idle => "idle timeout".to_owned(),
            None => "closed".to_owned(),
        }
    }
}

/// What a connection's log line says of its TLS session.
pub(crate) struct SessionSummary {
    /// The protocol version, e.g. `TLSv1_3`.
    pub(crate) version: String,
    /// The cipher suite.
    pub(crate) suite: String,
    /// The negotiated ALPN protocol, `-` when none.
    pub(crate) alpn: String,
}

impl SessionSummary {
    pub(crate) fn of(session: &rustls::CommonState) -> Self {
        Self {
            version: session.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
            suite: session.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default(),
            alpn: session
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_else(|| "-".into()),
        }
    }
}

/// Copies both ways until both sides have closed (half-close is passed on), an error, or
/// `idle` without a byte in either direction.
pub(crate) async fn relay<A, B>(client: A, upstream: B, idle: Duration) -> RelayOutcome
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Metered { inner: client, read: 0, last: Arc::clone(&last), epoch };
    let mut upstream = Metered { inner: upstream, read: 0, last: Arc::clone(&last), epoch };
    let (idle_hit, error) = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, RELAY_BUFFER, RELAY_BUFFER) => (false, r.err()),
        () = idle_expired(&last, epoch, idle) => (true, None),
    };
    RelayOutcome { to_upstream: client.read, to_client: upstream.read, idle: idle_hit, error }
}

async fn idle_expired(last_ms: &AtomicU64, epoch: Instant, idle: Duration) {
    loop {
        let deadline = epoch + Duration::from_millis(last_ms.load(Ordering::Relaxed)) + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// A stream that counts the bytes read from it and stamps the time of the last read.
struct Metered<S> {
    inner: S,
    read: u64,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read += n;
            let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(now, Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relay_passes_half_close_and_counts_bytes() {
        let (mut app, client_side) = tokio::io::duplex(1024);
        let (upstream_side, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(client_side, upstream_side, Duration::from_secs(5)));
        app.write_all(b"ping").await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        server.write_all(b"pong!").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong!");
        let outcome = relay.await.unwrap();
        assert_eq!((outcome.to_upstream, outcome.to_client, outcome.idle), (4, 5, false));
        assert!(outcome.error.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn relay_closes_an_idle_connection() {
        let (_app, client_side) = tokio::io::duplex(1024);
        let (upstream_side, _server) = tokio::io::duplex(1024);
        let outcome = relay(client_side, upstream_side, Duration::from_secs(30)).await;
        assert!(outcome.idle);
        assert_eq!((outcome.to_upstream, outcome.to_client), (0, 0));
    }
}
