//! `keyward tunnel` against a real `openssl s_server -Verify 1 -verify_return_error -www`:
//! a plain HTTP request sent to the tunnel comes back as the server's status page, which
//! shows the negotiated protocol and the client certificate the server verified — the
//! site's, whose key never left SoftHSM. The agent's audit log shows one `sign` per
//! handshake with the exact scheme rustls negotiated. A second peer, a Python `ssl` server
//! with `CERT_REQUIRED` (`tests/src/tls_peer.py`), reports the client CN it verified on the
//! connection, and checks 256 MiB each way by SHA-256. Negative cases: an unreachable
//! upstream, a server certificate from another CA, an expired server certificate, and a
//! server that trusts client certificates from another CA (TLS 1.2: the handshake fails;
//! TLS 1.3: the alert ends the connection right after it) refuse that one connection, with
//! the reason in the tunnel's log, and the tunnel serves the next connection; so does a
//! server name the certificate does not carry, and a stopped agent.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;

use keyward_tests::tls::{free_port, stream_through};
use keyward_tests::{AgentProcess, AgentSite, OpensslServer, PythonTlsServer, Site, TestCa, TpmSite, TunnelProcess};

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

/// A site with key `site-1` of `algorithm` and an installed certificate `CN=site-1` from a
/// test root CA, a server certificate `CN=server1` (SAN DNS:server1) from the same CA, and
/// a running agent.
struct TlsSite<S: AgentSite = Site> {
    site: S,
    ca: TestCa,
    server_cert: PathBuf,
    server_key: PathBuf,
    agent: AgentProcess,
}

impl TlsSite {
    fn new(algorithm: &str) -> Self {
        Self::on(Site::new(), algorithm)
    }
}

impl<S: AgentSite> TlsSite<S> {
    /// The site's key, certificate, CA, server certificate and agent on `site`'s backend.
    fn on(site: S, algorithm: &str) -> Self {
        site.generate("site-1", algorithm);
        let ca = TestCa::new(&site.path(""), "root");
        let extensions = "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n";
        let crt = site.issue_certificate(&ca, "site-1", "CN=site-1,O=hospital-a", extensions);
        site.install_certificate("site-1", &crt);
        let (server_key, server_cert) =
            ca.leaf("/CN=server1", "server1", "subjectAltName=DNS:server1\nextendedKeyUsage=serverAuth\n");
        let agent = AgentProcess::start(&site);
        Self { site, ca, server_cert, server_key, agent }
    }

    fn server(&self, port: u16, extra: &[&str]) -> OpensslServer {
        OpensslServer::start(&self.site.path(""), port, &self.server_cert, &self.server_key, &self.ca.cert, extra)
    }

    fn python_server(&self, port: u16, tls12: bool) -> PythonTlsServer {
        PythonTlsServer::start(&self.site.path(""), port, &self.server_cert, &self.server_key, &self.ca.cert, tls12)
    }

    fn tunnel(&self, upstream_port: u16, server_name: &str) -> TunnelProcess {
        self.tunnel_with(upstream_port, server_name, &[])
    }

    fn tunnel_with(&self, upstream_port: u16, server_name: &str, extra: &[&str]) -> TunnelProcess {
        let mut args = self.tunnel_args(upstream_port, server_name);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        TunnelProcess::start(&self.site, &args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `keyward tunnel` arguments for `site-1` to the upstream, without `--listen`.
    fn tunnel_args(&self, upstream_port: u16, server_name: &str) -> Vec<String> {
        let (ca, socket) = (self.ca.cert.display().to_string(), self.agent.socket().display().to_string());
        #[rustfmt::skip]
        let args = ["--key", "site-1", "--upstream", &format!("127.0.0.1:{upstream_port}"), "--server-name", server_name, "--ca", &ca, "--socket", &socket];
        args.iter().map(|a| (*a).to_owned()).collect()
    }

    /// The profiles of the `sign` records in the agent's audit log, in order.
    fn signed_profiles(&self) -> Vec<String> {
        self.site
            .audit_records()
            .iter()
            .filter(|r| r["op"] == "sign")
            .map(|r| format!("{}:{}", r["profile"].as_str().unwrap_or("?"), r["outcome"].as_str().unwrap_or("?")))
            .collect()
    }
}

/// One request through a tunnel to a server started with `server_args`; asserts the page
/// shows `protocol` and the verified site certificate, and the audit one `profile` sign per
/// connection.
fn handshake_through_tunnel(algorithm: &str, server_args: &[&str], protocol: &str, profile: &str) {
    handshake_through_tunnel_on(TlsSite::new(algorithm), server_args, protocol, profile);
}

fn handshake_through_tunnel_on<S: AgentSite>(tls: TlsSite<S>, server_args: &[&str], protocol: &str, profile: &str) {
    let port = free_port();
    let _server = tls.server(port, server_args);
    let tunnel = tls.tunnel(port, "server1");

    let page = String::from_utf8_lossy(&tunnel.exchange(REQUEST)).into_owned();
    assert!(page.starts_with("HTTP/1.0 200 ok"), "{page}\ntunnel log:\n{}", tunnel.log_text());
    assert!(page.contains(&format!("New, {protocol}, Cipher is")), "{page}");
    assert!(page.contains("Verify return code: 0 (ok)"), "{page}");
    let client_cert = page.split("Client certificate").nth(1).expect("the page shows the client certificate");
    assert!(client_cert.contains("Subject: CN=site-1, O=hospital-a"), "{client_cert}");
    assert!(client_cert.contains("Issuer: CN=example_project"), "{client_cert}");

    // Resumption is off: a second connection is a new handshake with its own signature.
    let again = String::from_utf8_lossy(&tunnel.exchange(REQUEST)).into_owned();
    assert!(again.contains(&format!("New, {protocol}, Cipher is")), "{again}");
    assert_eq!(tls.signed_profiles(), [format!("{profile}:ok"), format!("{profile}:ok")]);
    let log = tunnel.wait_log("connection done", 2);
    let version = protocol.replace(".", "_");
    assert!(log.contains(&format!("tls_version={version}")), "{log}");
    assert!(log.contains("bytes_to_upstream=18") && log.contains("handshake_ms=") && log.contains("alpn=-"), "{log}");
}

#[test]
fn rsa_key_authenticates_a_tls13_handshake_with_pss() {
    handshake_through_tunnel("rsa-2048", &[], "TLSv1.3", "tls-rsa-pss-sha256");
}

#[test]
fn p256_key_authenticates_a_tls13_handshake_with_ecdsa() {
    handshake_through_tunnel("p-256", &[], "TLSv1.3", "tls-ecdsa-p256-sha256");
}

#[test]
fn rsa_key_signs_pkcs1_when_a_tls12_server_asks_for_it() {
    let args = ["-tls1_2", "-client_sigalgs", "RSA+SHA256:ECDSA+SHA256"];
    handshake_through_tunnel("rsa-2048", &args, "TLSv1.2", "tls-rsa-pkcs1-sha256");
}

#[test]
fn p256_key_authenticates_a_tls12_handshake_with_ecdsa() {
    handshake_through_tunnel("p-256", &["-tls1_2"], "TLSv1.2", "tls-ecdsa-p256-sha256");
}

#[test]
fn tpm_keys_authenticate_tls13_and_tls12_handshakes() {
    handshake_through_tunnel_on(TlsSite::on(TpmSite::new(), "rsa-2048"), &[], "TLSv1.3", "tls-rsa-pss-sha256");
    let args = ["-tls1_2", "-client_sigalgs", "RSA+SHA256:ECDSA+SHA256"];
    handshake_through_tunnel_on(TlsSite::on(TpmSite::new(), "rsa-2048"), &args, "TLSv1.2", "tls-rsa-pkcs1-sha256");
    handshake_through_tunnel_on(TlsSite::on(TpmSite::new(), "p-256"), &[], "TLSv1.3", "tls-ecdsa-p256-sha256");
}

#[test]
fn alpn_from_the_command_line_is_negotiated_with_the_server() {
    let tls = TlsSite::new("p-256");
    let port = free_port();
    let _server = tls.server(port, &["-alpn", "h2"]);
    let tunnel = tls.tunnel_with(port, "server1", &["--alpn", "h2"]);
    let page = String::from_utf8_lossy(&tunnel.exchange(REQUEST)).into_owned();
    assert!(page.contains("Subject: CN=site-1"), "{page}");
    let log = tunnel.wait_log("connection done", 1);
    assert!(log.contains("alpn=h2"), "{log}");
}

#[test]
fn refused_upstreams_close_only_their_connection_and_the_tunnel_keeps_serving() {
    let mut tls = TlsSite::new("rsa-2048");
    let port = free_port();
    let tunnel = tls.tunnel(port, "server1");

    // Nothing listens yet: the client's connection is closed, the log says why.
    assert!(tunnel.exchange(REQUEST).is_empty());
    let log = tunnel.wait_log("connection refused", 1);
    assert!(log.contains(&format!("upstream `127.0.0.1:{port}` unreachable")), "{log}");

    // A server whose certificate comes from another CA (an impostor with the same CA name:
    // webpki finds the issuer by name and rejects its signature).
    let other = TestCa::new(&tls.site.path(""), "other");
    let (key, cert) = other.leaf("/CN=server1", "impostor", "subjectAltName=DNS:server1\n");
    let impostor = OpensslServer::start(&tls.site.path(""), port, &cert, &key, &tls.ca.cert, &[]);
    assert!(tunnel.exchange(REQUEST).is_empty());
    let log = tunnel.wait_log("connection refused", 2);
    assert!(log.contains("TLS handshake with") && log.contains("invalid peer certificate: BadSignature"), "{log}");
    drop(impostor);

    // The genuine server on the same port: the same tunnel serves it.
    let _server = tls.server(port, &[]);
    let page = String::from_utf8_lossy(&tunnel.exchange(REQUEST)).into_owned();
    assert!(page.contains("Subject: CN=site-1"), "{page}\ntunnel log:\n{}", tunnel.log_text());
    // No signature was made for the refused handshakes.
    assert_eq!(tls.signed_profiles(), ["tls-rsa-pss-sha256:ok"]);

    // The genuine server under a name its certificate does not carry.
    let misnamed = tls.tunnel(port, "server2");
    assert!(misnamed.exchange(REQUEST).is_empty());
    let log = misnamed.wait_log("connection refused", 1);
    assert!(log.contains("invalid peer certificate: certificate not valid for name \"server2\""), "{log}");
    assert_eq!(tls.signed_profiles(), ["tls-rsa-pss-sha256:ok"]);

    // The agent is gone: the handshake cannot be signed, and the log says so.
    tls.agent.terminate();
    let reply = tunnel.exchange(REQUEST);
    assert!(reply.is_empty(), "{}\n{}", String::from_utf8_lossy(&reply), tunnel.log_text());
    let log = tunnel.wait_log("connection refused", 3);
    let line = log.lines().rev().find(|l| l.contains("connection refused")).unwrap();
    assert!(
        line.contains("the agent did not sign the handshake with `site-1` as `tls-rsa-pss-sha256`")
            && line.contains("cannot connect to the keyward agent"),
        "{line}"
    );
}

/// One exchange with the Python server through `tunnel`: nothing sent, nothing asked back;
/// returns the server's report line.
fn python_report(tunnel: &TunnelProcess) -> String {
    let reply = String::from_utf8_lossy(&tunnel.exchange(b"0 0\n")).into_owned();
    reply.lines().next().unwrap_or_default().to_owned()
}

fn python_server_verifies_the_site_certificate(algorithm: &str, tls12: bool, version: &str, profile: &str) {
    let tls = TlsSite::new(algorithm);
    let port = free_port();
    let server = tls.python_server(port, tls12);
    let tunnel = tls.tunnel(port, "server1");
    let report = python_report(&tunnel);
    // The CN comes from `SSLSocket.getpeercert()`, which is only filled in once OpenSSL has
    // verified the chain against the server's CA file (CERT_REQUIRED).
    assert!(report.starts_with(&format!("cn=site-1 version={version} ")), "{report}\n{}", tunnel.log_text());
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert!(report.ends_with(&format!("received=0 sha256={empty}")), "{report}");
    server.wait_log("served cn=site-1", 1);
    assert_eq!(tls.signed_profiles(), [format!("{profile}:ok")]);
}

#[test]
fn python_ssl_server_with_cert_required_verifies_an_rsa_site_over_tls13() {
    python_server_verifies_the_site_certificate("rsa-2048", false, "TLSv1.3", "tls-rsa-pss-sha256");
}

#[test]
fn python_ssl_server_with_cert_required_verifies_a_p256_site_over_tls12() {
    python_server_verifies_the_site_certificate("p-256", true, "TLSv1.2", "tls-ecdsa-p256-sha256");
}

#[test]
fn an_expired_server_certificate_is_refused_and_the_tunnel_keeps_serving() {
    let tls = TlsSite::new("rsa-2048");
    let port = free_port();
    let tunnel = tls.tunnel(port, "server1");

    // Same CA, same name, but its validity ended a day ago.
    let (key, cert) = tls.ca.leaf_days("/CN=server1", "expired", "subjectAltName=DNS:server1\n", -1);
    let expired = OpensslServer::start(&tls.site.path(""), port, &cert, &key, &tls.ca.cert, &[]);
    assert!(tunnel.exchange(REQUEST).is_empty());
    let log = tunnel.wait_log("connection refused", 1);
    assert!(log.contains("TLS handshake with") && log.contains("invalid peer certificate: Expired"), "{log}");
    drop(expired);
    // Refused before the client certificate was asked for: nothing signed.
    assert!(tls.signed_profiles().is_empty());

    let _server = tls.python_server(port, false);
    assert!(python_report(&tunnel).starts_with("cn=site-1 version=TLSv1.3"), "{}", tunnel.log_text());
    assert_eq!(tls.signed_profiles(), ["tls-rsa-pss-sha256:ok"]);
}

/// A server whose certificate the tunnel accepts but which trusts client certificates from
/// another CA only: the site signs its handshake, the server rejects the certificate with an
/// alert, the client's connection is closed, and the tunnel logs the alert.
fn server_trusting_another_ca_rejects_the_site(tls12: bool, expected_line: &str) {
    let tls = TlsSite::new("p-256");
    let port = free_port();
    let tunnel = tls.tunnel(port, "server1");

    let other = TestCa::new(&tls.site.path(""), "other");
    let version = if tls12 { "-tls1_2" } else { "-tls1_3" };
    let strict =
        OpensslServer::start(&tls.site.path(""), port, &tls.server_cert, &tls.server_key, &other.cert, &[version]);
    assert!(tunnel.exchange(REQUEST).is_empty(), "{}", tunnel.log_text());
    let log = tunnel.wait_log(expected_line, 1);
    let line = log.lines().find(|l| l.contains(expected_line)).unwrap();
    assert!(line.contains("received fatal alert: UnknownCA"), "{line}");
    let server_log = std::fs::read_to_string(&strict.log).unwrap();
    assert!(server_log.contains("unable to get local issuer certificate"), "{server_log}");
    drop(strict);
    // The signature was made (the handshake reached CertificateVerify) and then refused.
    assert_eq!(tls.signed_profiles(), ["tls-ecdsa-p256-sha256:ok"]);

    let _server = tls.server(port, &[]);
    let page = String::from_utf8_lossy(&tunnel.exchange(REQUEST)).into_owned();
    assert!(page.contains("Subject: CN=site-1"), "{page}\ntunnel log:\n{}", tunnel.log_text());
}

#[test]
fn a_tls12_server_trusting_another_ca_refuses_the_handshake() {
    // TLS 1.2: the server's alert comes before its Finished, so the handshake fails.
    server_trusting_another_ca_rejects_the_site(true, "connection refused");
}

#[test]
fn a_tls13_server_trusting_another_ca_ends_the_connection_after_the_handshake() {
    // TLS 1.3: the client's handshake is complete when it sends its Finished; the server's
    // verdict arrives as the first record after it, so the connection ends in the relay.
    server_trusting_another_ca_rejects_the_site(false, "end=error");
}

#[test]
fn a_quarter_gibibyte_each_way_arrives_intact() {
    const SIZE: u64 = 256 << 20;
    let tls = TlsSite::new("p-256");
    let port = free_port();
    let _server = tls.python_server(port, false);
    let tunnel = tls.tunnel(port, "server1");

    let report = stream_through(&tls.site.path(""), tunnel.port, SIZE, SIZE);
    let expected = format!("received={SIZE} sha256={}", report.sent_sha256);
    assert!(report.server_line.starts_with("cn=site-1 version=TLSv1.3"), "{report:?}");
    assert!(report.server_line.ends_with(&expected), "{report:?}");
    assert_eq!(report.received_bytes, SIZE, "{report:?}");
    assert_eq!(report.received_sha256, report.trailer, "{report:?}");
    let log = tunnel.wait_log("connection done", 1);
    let header = format!("{SIZE} {SIZE}\n").len() as u64;
    assert!(log.contains(&format!("bytes_to_upstream={}", SIZE + header)), "{log}");
    assert!(log.contains("end=closed"), "{log}");
}

#[test]
fn tunnel_refuses_a_non_loopback_listen_address_without_allow_remote() {
    let site = Site::new();
    #[rustfmt::skip]
    let out = site.keyward(&[
        "tunnel", "--key", "site-1", "--listen", "0.0.0.0:8443", "--upstream", "127.0.0.1:1", "--server-name", "server1",
        "--ca", "/nonexistent.pem",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a loopback address") && stderr.contains("--allow-remote"), "{stderr}");
}

/// Sends `request` to the tunnel (its TCP port, or the Unix socket `unix`) from a process
/// running as `user` (Debian's python3, which any user may execute); returns the reply.
fn exchange_as(user: &str, tunnel: &TunnelProcess, unix: Option<&std::path::Path>, request: &[u8]) -> Vec<u8> {
    const CLIENT: &str = "import socket,sys\nt=sys.argv[1]\ns=socket.socket(socket.AF_UNIX) if t.startswith('/') else socket.socket()\ns.settimeout(20)\ns.connect(t if t.startswith('/') else ('127.0.0.1',int(t)))\ntry:\n    s.sendall(sys.argv[2].encode())\nexcept OSError:\n    pass\nout=b''\ntry:\n    while (b := s.recv(65536)):\n        out += b\nexcept OSError:\n    pass\nsys.stdout.buffer.write(out)\n";
    let target = unix.map_or_else(|| tunnel.port.to_string(), |p| p.to_str().unwrap().to_owned());
    let out = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={}", primary_group(user)),
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            CLIENT,
        ])
        .arg(target)
        .arg(std::str::from_utf8(request).unwrap())
        .output()
        .expect("setpriv (util-linux) runs python3 as another user");
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// Debian's primary group of the system users these tests run clients as.
fn primary_group(user: &str) -> &str {
    match user {
        "nobody" => "nogroup",
        other => other,
    }
}

fn exchange_as_nobody(tunnel: &TunnelProcess, request: &[u8]) -> Vec<u8> {
    exchange_as("nobody", tunnel, None, request)
}

#[test]
fn only_allowed_local_users_may_use_the_tunnel() {
    let tls = TlsSite::new("p-256");
    let port = free_port();
    let _server = tls.server(port, &[]);

    // Another local user reaching the loopback port is closed before any upstream
    // connection, and no signature is made for it.
    let tunnel = tls.tunnel(port, "server1");
    assert!(exchange_as_nobody(&tunnel, REQUEST).is_empty());
    let log = tunnel.wait_log("its local user may not use this tunnel", 1);
    assert!(log.contains("uid=65534"), "{log}");
    assert!(tls.signed_profiles().is_empty(), "{:?}", tls.signed_profiles());
    // The tunnel's own user is served.
    let page = String::from_utf8_lossy(&tunnel.exchange(REQUEST)).into_owned();
    assert!(page.contains("Subject: CN=site-1"), "{page}");

    // --allow-uid admits that user.
    let admitting = tls.tunnel_with(port, "server1", &["--allow-uid", "65534"]);
    let page = String::from_utf8_lossy(&exchange_as_nobody(&admitting, REQUEST)).into_owned();
    assert!(page.contains("Subject: CN=site-1"), "{page}\n{}", admitting.log_text());
    assert_eq!(tls.signed_profiles().len(), 2);
}

#[test]
fn a_unix_socket_tunnel_serves_its_user_and_checks_the_others() {
    use std::os::unix::fs::PermissionsExt;
    let tls = TlsSite::new("rsa-2048");
    let port = free_port();
    let _server = tls.server(port, &[]);

    // Owner-only by default.
    let path = tls.site.path("fl.sock");
    let listen = format!("unix:{}", path.display());
    let args = tls.tunnel_args(port, "server1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tunnel = TunnelProcess::start_listening(&tls.site, &listen, 0, &args);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let page = String::from_utf8_lossy(&tunnel.exchange_unix(&path, REQUEST)).into_owned();
    assert!(page.contains("Subject: CN=site-1"), "{page}\n{}", tunnel.log_text());
    // A second tunnel does not take over a live socket.
    let out = tls.site.keyward(&[&["tunnel", "--listen", &listen][..], &args].concat());
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("another process is listening"), "{out:?}");
    drop(tunnel);
    assert!(!path.exists(), "the socket file is removed at exit");

    // With --allow-uid the socket is reachable by all, and SO_PEERCRED decides.
    std::fs::set_permissions(tls.site.path(""), std::fs::Permissions::from_mode(0o755)).unwrap();
    let args = [&args[..], &["--allow-uid", "65534"]].concat();
    let shared = TunnelProcess::start_listening(&tls.site, &listen, 0, &args);
    let page = String::from_utf8_lossy(&exchange_as("nobody", &shared, Some(&path), REQUEST)).into_owned();
    assert!(page.contains("Subject: CN=site-1"), "{page}\n{}", shared.log_text());
    assert!(exchange_as("daemon", &shared, Some(&path), REQUEST).is_empty());
    let log = shared.wait_log("its local user may not use this tunnel", 1);
    assert!(log.contains("uid=1 "), "{log}");
}
