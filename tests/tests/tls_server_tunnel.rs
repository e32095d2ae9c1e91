//! `keyward server-tunnel`: TLS terminated with a server key that never leaves SoftHSM, in
//! front of a plain-text server on loopback (here a small TCP server in the test that says
//! how many bytes it got, standing in for NVFlare's server). Real clients: `openssl
//! s_client` and Python's `ssl` (verifying the server against the root and its name). The
//! agent's audit log shows one `sign` per handshake with the scheme rustls negotiated; the
//! tunnel's log names each client's verified CN. Refused before any byte reaches the
//! server: a client without a certificate, one from another CA, a CN not on the allow-list;
//! a non-loopback upstream is refused at start.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use keyward_tests::tls::free_port;
use keyward_tests::AgentSite;
use keyward_tests::{AgentProcess, Site, TestCa, TunnelProcess};

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

/// The plain-text server behind the tunnel: answers each connection with the bytes it read
/// up to the first blank line, then closes. Counts connections.
struct Upstream {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    fn start() -> Self {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(stream, "HTTP/1.0 200 ok\r\n\r\nupstream got {} bytes\n", got.len());
            }
        });
        Self { port, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A site whose key `server` (of `algorithm`) has an installed certificate `CN=server1`
/// (SAN DNS:server1) from a test root, a client certificate `CN=site-1` from the same root,
/// a running agent and the upstream.
struct ServerSite {
    site: Site,
    ca: TestCa,
    client: (PathBuf, PathBuf),
    agent: AgentProcess,
    upstream: Upstream,
}

impl ServerSite {
    fn new(algorithm: &str) -> Self {
        let site = Site::new();
        site.generate("server", algorithm);
        let ca = TestCa::new(&site.path(""), "root");
        let extensions = "subjectAltName=DNS:server1\nextendedKeyUsage=serverAuth\n";
        let crt = site.issue_certificate(&ca, "server", "CN=server1", extensions);
        site.keyward_ok(&["cert", "install", "--server", "server", crt.to_str().unwrap()]);
        let client = ca.leaf("/CN=site-1/O=hospital-a", "site-1", "extendedKeyUsage=clientAuth\n");
        let agent = AgentProcess::start(&site);
        Self { site, ca, client, agent, upstream: Upstream::start() }
    }

    fn tunnel(&self, extra: &[&str]) -> TunnelProcess {
        let (upstream, ca, socket) = (
            format!("127.0.0.1:{}", self.upstream.port),
            self.ca.cert.display().to_string(),
            self.agent.socket().display().to_string(),
        );
        let mut args = vec!["--key", "server", "--upstream", &upstream, "--socket", &socket];
        if !extra.contains(&"--no-client-auth") {
            args.extend(["--ca", &ca]);
        }
        args.extend(extra);
        TunnelProcess::start_server(&self.site, &args)
    }

    /// `openssl s_client` with `client` (cert, key) or none, verifying the server as
    /// `server1` against the root; returns its whole output (session details and reply).
    fn s_client(&self, tunnel: &TunnelProcess, client: Option<&(PathBuf, PathBuf)>, extra: &[&str]) -> String {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &format!("127.0.0.1:{}", tunnel.port), "-servername", "server1"])
            .args(["-verify_hostname", "server1", "-verify_return_error", "-ign_eof", "-CAfile"])
            .arg(&self.ca.cert)
            .args(extra);
        if let Some((key, cert)) = client {
            cmd.arg("-cert").arg(cert).arg("-key").arg(key);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(REQUEST).unwrap();
        let out = child.wait_with_output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// The profiles of the `sign` records of key `server` in the audit log, in order.
    fn signed_profiles(&self) -> Vec<String> {
        self.site
            .audit_records()
            .iter()
            .filter(|r| r["op"] == "sign" && r["key"] == "server")
            .map(|r| format!("{}:{}", r["profile"].as_str().unwrap_or("?"), r["outcome"].as_str().unwrap_or("?")))
            .collect()
    }
}

fn handshake(algorithm: &str, tls: &str, profile: &str) {
    let s = ServerSite::new(algorithm);
    let tunnel = s.tunnel(&[]);
    let out = s.s_client(&tunnel, Some(&s.client), &[tls, "-alpn", "h2"]);
    assert!(out.contains("upstream got 18 bytes"), "{out}\ntunnel log:\n{}", tunnel.log_text());
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    let log = tunnel.wait_log("connection done", 1);
    assert!(log.contains("client_cn=site-1"), "{log}");
    let version = if tls == "-tls1_2" { "TLSv1_2" } else { "TLSv1_3" };
    assert!(log.contains(&format!("tls_version={version}")) && log.contains("alpn=h2"), "{log}");
    assert_eq!(s.signed_profiles(), [format!("{profile}:ok")]);

    // No resumption: the next connection is a new handshake with its own signature.
    let again = s.s_client(&tunnel, Some(&s.client), &[tls]);
    assert!(again.contains("upstream got 18 bytes") && again.contains("New, "), "{again}");
    assert_eq!(s.signed_profiles().len(), 2);
    assert_eq!(s.upstream.connections(), 2);
}

#[test]
fn an_rsa_server_key_in_the_token_serves_tls13_with_client_certificates() {
    handshake("rsa-2048", "-tls1_3", "tls-rsa-pss-sha256");
}

#[test]
fn a_p256_server_key_in_the_token_serves_tls12_with_client_certificates() {
    handshake("p-256", "-tls1_2", "tls-ecdsa-p256-sha256");
}

#[test]
fn python_ssl_verifies_the_server_and_negotiates_h2() {
    let s = ServerSite::new("rsa-2048");
    let tunnel = s.tunnel(&[]);
    let script = r#"
import socket, ssl, sys
port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["h2"])
with socket.create_connection(("127.0.0.1", port)) as raw:
    with ctx.wrap_socket(raw, server_hostname="server1") as tls:
        tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
        print(tls.version(), tls.selected_alpn_protocol(), data.decode().splitlines()[-1])
"#;
    let (key, cert) = &s.client;
    let out = Command::new("python3")
        .args(["-c", script, &tunnel.port.to_string()])
        .arg(&s.ca.cert)
        .arg(cert)
        .arg(key)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}\n{}", String::from_utf8_lossy(&out.stderr), tunnel.log_text());
    assert_eq!(text.trim(), "TLSv1.3 h2 upstream got 18 bytes");
}

#[test]
fn clients_without_a_valid_certificate_never_reach_the_server() {
    let s = ServerSite::new("rsa-2048");
    let tunnel = s.tunnel(&[]);

    // No client certificate.
    let out = s.s_client(&tunnel, None, &["-tls1_2"]);
    assert!(!out.contains("upstream got"), "{out}");
    let log = tunnel.wait_log("connection refused", 1);
    assert!(log.contains("peer sent no certificates"), "{log}");

    // A certificate from another root with the same CN.
    std::fs::create_dir_all(s.site.path("other-ca")).unwrap();
    let other = TestCa::new(&s.site.path("other-ca"), "other");
    let stranger = other.leaf("/CN=site-1/O=hospital-a", "stranger", "extendedKeyUsage=clientAuth\n");
    let out = s.s_client(&tunnel, Some(&stranger), &["-tls1_2"]);
    assert!(!out.contains("upstream got"), "{out}");
    let log = tunnel.wait_log("connection refused", 2);
    // The other root has the same name as the federation's: the chain fails on its signature.
    assert!(log.contains("invalid peer certificate: BadSignature"), "{log}");
    assert_eq!(s.upstream.connections(), 0, "a refused client reached the server");

    // The tunnel still serves a good client.
    let out = s.s_client(&tunnel, Some(&s.client), &[]);
    assert!(out.contains("upstream got 18 bytes"), "{out}");
}

#[test]
fn a_client_cn_outside_the_allow_list_is_refused_after_the_handshake() {
    let s = ServerSite::new("p-256");
    let tunnel = s.tunnel(&["--allow-client-cn", "site-2"]);
    let out = s.s_client(&tunnel, Some(&s.client), &[]);
    assert!(!out.contains("upstream got"), "{out}");
    let log = tunnel.wait_log("connection refused", 1);
    assert!(log.contains("client certificate CN `site-1` is not allowed"), "{log}");
    assert_eq!(s.upstream.connections(), 0);
}

#[test]
fn without_client_auth_any_tls_client_gets_through() {
    let s = ServerSite::new("rsa-2048");
    let tunnel = s.tunnel(&["--no-client-auth"]);
    let out = s.s_client(&tunnel, None, &[]);
    assert!(out.contains("upstream got 18 bytes"), "{out}");
    assert!(tunnel.wait_log("connection done", 1).contains("client_cn=-"));
}

#[test]
fn a_plain_text_upstream_off_this_host_is_refused_at_start() {
    let s = ServerSite::new("rsa-2048");
    let ca = s.ca.cert.display().to_string();
    let out = s.site.keyward(&[
        "server-tunnel",
        "--key",
        "server",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--upstream",
        "192.0.2.10:8002",
        "--ca",
        &ca,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is not a loopback address"), "{err}");
}
