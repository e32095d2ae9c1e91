//! [`TlsSink`]: an in-process TLS 1.3 server (rustls with ring) for bulk-throughput
//! benchmarks. It requires a client certificate from the given CA, reads each connection's
//! application data to the end (close_notify or TCP EOF) into a discarded buffer, answers
//! `received N\n`, and reports every connection — its byte count and the time from its
//! first application byte to its end — on a channel. One thread per connection, so a
//! readiness probe that never sends a byte blocks nothing.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Socket reads of this size (rustls alone would read at most 4 KiB per call).
const READ_BUFFER: usize = 256 * 1024;

/// What the sink saw of one connection.
#[derive(Debug)]
pub struct SinkReport {
    /// Application bytes received.
    pub bytes: u64,
    /// The error that ended the connection, if one did.
    pub error: Option<String>,
    /// From the first application byte to the end of the stream.
    pub elapsed: Duration,
    /// Negotiated version and cipher suite, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
    pub session: String,
}

/// The sink server on a free loopback port; its listener thread lives as long as the
/// process (it only accepts), and dropping the value stops nothing but the channel.
pub struct TlsSink {
    /// Its port on 127.0.0.1.
    pub port: u16,
    reports: Receiver<SinkReport>,
}

impl TlsSink {
    /// Starts the sink with the server `cert`/`key` (PEM), trusting client certificates
    /// issued by `client_ca`; TLS 1.3 only.
    pub fn start(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(client_ca).context("client CA file")? {
            roots.add(c.context("client CA certificate")?)?;
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(cert).context("server cert file")?.collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(key).context("server key file")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the sink")?;
        let port = listener.local_addr()?.port();
        let (tx, reports) = channel();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (config, tx) = (Arc::clone(&config), tx.clone());
                std::thread::spawn(move || serve(tcp, config, &tx));
            }
        });
        Ok(Self { port, reports })
    }

    /// The next connection that carried application data, waiting up to `limit`;
    /// connections that ended without a byte (readiness probes, failed or not) are skipped.
    pub fn next_report(&self, limit: Duration) -> Result<SinkReport> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let report = self.reports.recv_timeout(left).context("no connection report from the TLS sink")?;
            if report.bytes > 0 {
                return Ok(report);
            }
        }
    }
}

/// Reads through a large buffer, writes straight to the socket.
struct Buffered(BufReader<TcpStream>);

impl Read for Buffered {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Buffered {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.get_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.get_mut().flush()
    }
}

fn serve(tcp: TcpStream, config: Arc<rustls::ServerConfig>, reports: &Sender<SinkReport>) {
    let mut report = SinkReport { bytes: 0, error: None, elapsed: Duration::ZERO, session: String::new() };
    if let Err(e) = sink(tcp, config, &mut report) {
        report.error = Some(format!("{e:#}"));
    }
    let _ = reports.send(report);
}

fn sink(tcp: TcpStream, config: Arc<rustls::ServerConfig>, report: &mut SinkReport) -> Result<()> {
    let conn = rustls::ServerConnection::new(config)?;
    let mut tls = rustls::StreamOwned::new(conn, Buffered(BufReader::with_capacity(READ_BUFFER, tcp)));
    let mut buf = vec![0u8; READ_BUFFER];
    let mut first = None;
    loop {
        let n = match tls.read(&mut buf) {
            Ok(n) => n,
            // A peer that closes the TCP stream without close_notify (a dropped probe).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e).context("TLS read"),
        };
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        report.bytes += n as u64;
    }
    report.elapsed = first.map(|t| t.elapsed()).unwrap_or_default();
    let conn = &tls.conn;
    report.session = format!(
        "{} {}",
        conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
        conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default()
    );
    // The answer is a courtesy: a client that already left (s_client) makes it fail.
    let _ = tls.write_all(format!("received {}\n", report.bytes).as_bytes());
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.0.get_ref().shutdown(Shutdown::Write);
    Ok(())
}
