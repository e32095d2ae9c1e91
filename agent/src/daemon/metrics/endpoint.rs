//! The Prometheus endpoint (`[metrics] listen`, off by default): a deliberately tiny HTTP/1.x
//! server on a loopback address that answers `GET /metrics` and nothing else. It reads at
//! most [`MAX_REQUEST_BYTES`] of request head within [`READ_TIMEOUT`], serves at most
//! [`MAX_CONNECTIONS`] scrapes at once (more get `503` and are closed), ignores any request
//! body, and closes every connection after one reply. Other methods get `405`, other paths
//! `404`. The body (`exposition.rs`) holds only counters, so nothing secret can leave here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::exposition::{render, Snapshot};
use super::Stats;
use crate::daemon::Agent;

/// Largest request head read (request line and headers).
pub const MAX_REQUEST_BYTES: usize = 4096;
/// Scrapes served at once.
pub const MAX_CONNECTIONS: usize = 4;
/// How long a scraper may take to send its request head, and to take the reply.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the metrics listener. Call inside the runtime.
///
/// # Errors
/// When the address cannot be bound (in use, not local).
pub async fn bind_metrics(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding metrics listener `{addr}` (metrics.listen)"))
}

/// Serves scrapes until `shutdown` is cancelled.
pub async fn serve_metrics(listener: TcpListener, agent: Arc<Agent>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracker.spawn(async move { reply(&mut stream, 503, "Service Unavailable", "too many scrapes\n").await });
            continue;
        };
        let agent = Arc::clone(&agent);
        tracker.spawn(async move {
            answer(stream, &agent).await;
            drop(permit);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(READ_TIMEOUT, tracker.wait()).await;
}

async fn answer(mut stream: TcpStream, agent: &Arc<Agent>) {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return reply(&mut stream, 431, "Request Header Fields Too Large", "request too large\n").await,
        Ok(Err(_)) => return,
        Err(_) => return reply(&mut stream, 408, "Request Timeout", "request head not received in time\n").await,
    };
    match route(&head) {
        Route::Metrics => {
            let body = render(&snapshot(agent).await);
            reply(&mut stream, 200, "OK", &body).await;
        }
        Route::BadRequest => reply(&mut stream, 400, "Bad Request", "not an HTTP/1.x request\n").await,
        Route::MethodNotAllowed => reply(&mut stream, 405, "Method Not Allowed", "only GET /metrics\n").await,
        Route::NotFound => reply(&mut stream, 404, "Not Found", "only GET /metrics\n").await,
    }
}

/// Reads until the blank line ending the head; None when it would exceed the limit.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() >= MAX_REQUEST_BYTES {
            return Ok(None);
        }
        let room = (MAX_REQUEST_BYTES - head.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    BadRequest,
    MethodNotAllowed,
    NotFound,
}

fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else { return Route::BadRequest };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    if method != "GET" {
        return Route::MethodNotAllowed;
    }
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

async fn snapshot(agent: &Arc<Agent>) -> Snapshot {
    // On the side thread, as the health monitor's checks: a stuck session holds up no scrape
    // for longer than the request timeout. A side thread only busy with other jobs (many
    // `status` requests) tells nothing: the agent's combined view of the backend answers then.
    let checker = Arc::clone(agent);
    let probed = tokio::task::spawn_blocking(move || checker.back.probe()).await;
    let backend_up = match probed {
        Ok(Some(up)) => up,
        Ok(None) => agent.back.health().up,
        Err(_) => false,
    };
    let rules = agent.rules.load();
    let now = crate::renewal::now();
    let (mut certificates, mut renewal, mut key_ages) = (Vec::new(), Vec::new(), Vec::new());
    for key in agent.certs.installed() {
        let validity = agent.certs.validity(&key);
        let judged = rules.renewal.judge(&key, validity, now);
        if let (Some((_, not_after)), Some(a)) = (validity, judged.certificate) {
            certificates.push((key.clone(), not_after));
            let due = matches!(a.state, crate::renewal::CertState::RenewalDue | crate::renewal::CertState::Expired);
            renewal.push((key.clone(), a.seconds_to_expiry, due));
        }
        if let Some(age) = judged.key_age_seconds {
            key_ages.push((key, age));
        }
    }
    Snapshot {
        backend: agent.back.info().backend.to_owned(),
        backend_up,
        uptime_seconds: agent.started.elapsed().as_secs(),
        connections: Stats::get(&agent.stats.connections),
        series: agent.stats.series(),
        certificates,
        renewal,
        key_ages,
    }
}

async fn reply(stream: &mut TcpStream, code: u16, reason: &str, body: &str) {
    let content_type =
        if code == 200 { "text/plain; version=0.0.4; charset=utf-8" } else { "text/plain; charset=utf-8" };
    let allow = if code == 405 { "Allow: GET\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(READ_TIMEOUT, write).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metrics/../x HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Route::BadRequest);
    }
}
