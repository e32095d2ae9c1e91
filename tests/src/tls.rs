//! TLS peers for the tunnel tests: [`OpensslServer`], a real `openssl s_server -www` that
//! demands and verifies a client certificate, and [`TunnelProcess`], the real
//! `keyward tunnel` as a child process. Both run on free loopback ports ([`free_port`]), log
//! to a file in the site's dir, are polled for readiness, and are killed by PID on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ports tests pick from: below Linux's ephemeral range (32768–60999 by default), which the
/// connections' own source ports and their TIME_WAIT leftovers crowd.
pub const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port below the ephemeral range that was free a moment ago (a random port
/// that binds on every address, released again), never one this process handed out before:
/// tests run in parallel, and two of them given the same free port race to bind it.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `count` consecutive ports, each as [`free_port`] gives one.
pub fn free_ports(count: u16) -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let first = rand::Rng::gen_range(&mut rand::thread_rng(), TEST_PORTS.start..TEST_PORTS.end - count);
        let ports = first..first + count;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ports.clone().all(|p| !handed_out.contains(&p) && TcpListener::bind(("0.0.0.0", p)).is_ok()) {
            handed_out.extend(ports);
            return first;
        }
    }
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: impl Fn() -> String, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "after {limit:?}: {}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `openssl s_server -www` requiring a client certificate from `ca` (`-Verify 1
/// -verify_return_error`): its status page shows the protocol, cipher and verified client
/// certificate of the session that fetched it.
pub struct OpensslServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl OpensslServer {
    /// Starts the server on `port` with `cert`/`key`, trusting `client_ca`; `extra` adds
    /// options (e.g. `-tls1_2`). Ready once it accepts TCP.
    pub fn start(dir: &Path, port: u16, cert: &Path, key: &Path, client_ca: &Path, extra: &[&str]) -> Self {
        let log = dir.join(format!("s_server-{port}-{}.log", rand::random::<u32>()));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .arg("-CAfile")
            .arg(client_ca)
            .args(["-Verify", "1", "-verify_return_error", "-www"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("openssl is installed (scripts/install-packages.sh)");
        let mut server = Self { child, port, log };
        wait_until(
            Duration::from_secs(10),
            || {
                format!(
                    "s_server not accepting on {port}: {}",
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                )
            },
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        assert!(server.child.try_wait().expect("try_wait").is_none(), "s_server exited");
        server
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        crate::tools::stop_child(&mut self.child);
    }
}

/// `keyward tunnel` for a site, listening on a free loopback port.
pub struct TunnelProcess {
    child: Child,
    /// The port local clients connect to.
    pub port: u16,
    /// Its stderr (the per-connection log lines).
    pub log: PathBuf,
}

impl TunnelProcess {
    /// Starts `keyward tunnel --listen 127.0.0.1:<free> ARGS` and waits for its "listening"
    /// line. The tunnel needs a running agent.
    pub fn start(site: &impl crate::AgentSite, args: &[&str]) -> Self {
        let port = free_port();
        Self::start_listening(site, &format!("127.0.0.1:{port}"), port, args)
    }

    /// Starts `keyward tunnel --listen LISTEN ARGS` (`port` is what [`Self::exchange`] uses;
    /// any value for a Unix socket) and waits for its "listening" line.
    pub fn start_listening(site: &impl crate::AgentSite, listen: &str, port: u16, args: &[&str]) -> Self {
        Self::spawn(site, &["tunnel", "--listen", listen], port, args, "keyward tunnel listening")
    }

    /// Starts `keyward server-tunnel --listen 127.0.0.1:<free> ARGS` and waits for its
    /// "listening" line. It needs a running agent.
    pub fn start_server(site: &impl crate::AgentSite, args: &[&str]) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        Self::spawn(site, &["server-tunnel", "--listen", &listen], port, args, "keyward server tunnel listening")
    }

    fn spawn(site: &impl crate::AgentSite, command: &[&str], port: u16, args: &[&str], ready: &str) -> Self {
        let log = site.path(&format!("tunnel-{}.log", rand_tag()));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = site
            .command()
            .args(command)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn keyward tunnel");
        let mut tunnel = Self { child, port, log };
        wait_until(
            Duration::from_secs(10),
            || format!("tunnel not listening; log:\n{}", tunnel.log_text()),
            || tunnel.log_text().contains(ready),
        );
        assert!(tunnel.child.try_wait().expect("try_wait").is_none(), "tunnel exited:\n{}", tunnel.log_text());
        tunnel
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `n` lines containing `needle`; returns the log.
    pub fn wait_log(&self, needle: &str, n: usize) -> String {
        wait_until(
            Duration::from_secs(10),
            || format!("{n}× `{needle}` not in tunnel log:\n{}", self.log_text()),
            || self.log_text().matches(needle).count() >= n,
        );
        self.log_text()
    }

    /// Connects, sends `request`, and returns everything read until EOF (or until the tunnel
    /// resets the connection).
    pub fn exchange(&self, request: &[u8]) -> Vec<u8> {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the tunnel");
        exchange_on(stream, request)
    }

    /// [`Self::exchange`] over the tunnel's Unix socket `path`.
    pub fn exchange_unix(&self, path: &Path, request: &[u8]) -> Vec<u8> {
        let stream = std::os::unix::net::UnixStream::connect(path).expect("connect to the tunnel's socket");
        exchange_on(stream, request)
    }
}

/// Sends `request` and reads until EOF; a refused connection may already be closed, so a
/// failed write is not an error: the (empty) read says so.
fn exchange_on<S: Read + Write + SetReadTimeout>(mut stream: S, request: &[u8]) -> Vec<u8> {
    stream.read_timeout(Duration::from_secs(20));
    let _ = stream.write_all(request);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply
}

/// The read timeout of a TCP or Unix stream.
trait SetReadTimeout {
    fn read_timeout(&self, limit: Duration);
}

impl SetReadTimeout for TcpStream {
    fn read_timeout(&self, limit: Duration) {
        self.set_read_timeout(Some(limit)).expect("timeout");
    }
}

impl SetReadTimeout for std::os::unix::net::UnixStream {
    fn read_timeout(&self, limit: Duration) {
        self.set_read_timeout(Some(limit)).expect("timeout");
    }
}

fn rand_tag() -> u32 {
    rand::random()
}

impl Drop for TunnelProcess {
    fn drop(&mut self) {
        crate::tools::stop_child(&mut self.child);
    }
}

/// The Python peer (`tests/src/tls_peer.py`): a server with Python's `ssl` module and
/// `CERT_REQUIRED`, and a streaming client.
const TLS_PEER_PY: &str = include_str!("tls_peer.py");

fn tls_peer_script(dir: &Path) -> PathBuf {
    let script = dir.join("tls_peer.py");
    if !script.exists() {
        std::fs::write(&script, TLS_PEER_PY).expect("write tls_peer.py");
    }
    script
}

/// A Python `ssl` server (`ssl.CERT_REQUIRED`, client certificates from `client_ca`) that
/// reports, on the connection, the client certificate CN it verified, the TLS version and
/// cipher, and the SHA-256 of what it received; then sends back random bytes and their
/// SHA-256 (protocol in `tls_peer.py`).
pub struct PythonTlsServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its stdout and stderr: `served ...` or `handshake failed: ...` per connection.
    pub log: PathBuf,
}

impl PythonTlsServer {
    /// Starts the server on `port`; `tls12` caps it at TLS 1.2. Ready once it printed
    /// `listening`.
    pub fn start(dir: &Path, port: u16, cert: &Path, key: &Path, client_ca: &Path, tls12: bool) -> Self {
        let log = dir.join(format!("py-server-{port}-{}.log", rand::random::<u32>()));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut command = Command::new(crate::tools::python());
        command.arg(tls_peer_script(dir)).args(["serve", &port.to_string()]).arg(cert).arg(key).arg(client_ca);
        if tls12 {
            command.arg("--tls12");
        }
        let child = command.stdin(Stdio::null()).stdout(out).stderr(err).spawn().expect("spawn the Python TLS server");
        let mut server = Self { child, port, log };
        wait_until(
            Duration::from_secs(10),
            || format!("Python server not listening on {port}: {}", server.log_text()),
            || server.log_text().contains("listening"),
        );
        assert!(server.child.try_wait().expect("try_wait").is_none(), "Python server exited: {}", server.log_text());
        server
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `n` lines containing `needle`; returns the log.
    pub fn wait_log(&self, needle: &str, n: usize) -> String {
        wait_until(
            Duration::from_secs(10),
            || format!("{n}× `{needle}` not in the Python server's log:\n{}", self.log_text()),
            || self.log_text().matches(needle).count() >= n,
        );
        self.log_text()
    }
}

impl Drop for PythonTlsServer {
    fn drop(&mut self) {
        crate::tools::stop_child(&mut self.child);
    }
}

/// What [`stream_through`] saw: the SHA-256 of what the client sent, the server's report
/// line, and the size and SHA-256 of what came back against the server's trailer.
#[derive(Debug)]
pub struct StreamReport {
    /// SHA-256 (hex) of the bytes the client sent.
    pub sent_sha256: String,
    /// The server's line: `cn=... version=... cipher=... received=N sha256=...`.
    pub server_line: String,
    /// How many bytes came back between the line and the trailer.
    pub received_bytes: u64,
    /// Their SHA-256 (hex), computed by the client.
    pub received_sha256: String,
    /// The SHA-256 (hex) the server computed of what it sent.
    pub trailer: String,
}

/// Sends `n_in` random bytes in the clear to `port` (the tunnel) and asks a
/// [`PythonTlsServer`] behind it for `n_out` back, with the Python client in `tls_peer.py`
/// (hashing with OpenSSL's SHA-256, fast even in a debug test build).
pub fn stream_through(dir: &Path, port: u16, n_in: u64, n_out: u64) -> StreamReport {
    let out = Command::new(crate::tools::python())
        .arg(tls_peer_script(dir))
        .args(["stream", &port.to_string(), &n_in.to_string(), &n_out.to_string()])
        .output()
        .expect("run the Python stream client");
    crate::tools::assert_success(&out, "tls_peer.py stream");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stream client prints JSON");
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    StreamReport {
        sent_sha256: text("sent_sha256"),
        server_line: text("server_line"),
        received_bytes: v["received_bytes"].as_u64().unwrap_or_default(),
        received_sha256: text("received_sha256"),
        trailer: text("trailer"),
    }
}
