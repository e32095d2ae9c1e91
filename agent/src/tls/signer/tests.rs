//! Unit tests of the agent-backed signer: scheme negotiation per key type, and `sign`
//! against a scripted agent on a Unix socket (exact profile on the wire, no executor stall,
//! a pooled connection the agent closed is replaced). The real agent and token are covered
//! by `tests/tests/tls_tunnel.rs`.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex as StdMutex;

use keyward_protocol::{decode_request, Response};

use super::*;

fn key(algorithm: KeyAlgorithm, socket: PathBuf) -> AgentSigningKey {
    AgentSigningKey {
        key: KeyId::new("site-1").unwrap(),
        algorithm,
        spki: vec![0x30, 0x00],
        certificate_pem: None,
        link: Arc::new(AgentLink::new(socket, Duration::from_secs(5))),
    }
}

fn chosen(key: &AgentSigningKey, offered: &[SignatureScheme]) -> Option<SignatureScheme> {
    key.choose_scheme(offered).map(|s| s.scheme())
}

#[test]
fn schemes_follow_the_key_type_and_the_peer_offer() {
    let rsa = key(KeyAlgorithm::Rsa2048, "/nonexistent".into());
    use SignatureScheme as S;
    assert_eq!(chosen(&rsa, &[S::RSA_PSS_SHA384, S::RSA_PSS_SHA256]), Some(S::RSA_PSS_SHA256));
    assert_eq!(chosen(&rsa, &[S::ECDSA_NISTP256_SHA256, S::RSA_PKCS1_SHA384]), Some(S::RSA_PKCS1_SHA384));
    assert_eq!(chosen(&rsa, &[S::ECDSA_NISTP256_SHA256, S::ED25519, S::RSA_PSS_SHA512]), None);
    let ec = key(KeyAlgorithm::EcP256, "/nonexistent".into());
    assert_eq!(chosen(&ec, &[S::RSA_PSS_SHA256, S::ECDSA_NISTP256_SHA256]), Some(S::ECDSA_NISTP256_SHA256));
    assert_eq!(chosen(&ec, &[S::RSA_PSS_SHA256, S::ECDSA_NISTP384_SHA384]), None);
    assert_eq!(ec.algorithm(), SignatureAlgorithm::ECDSA);
    assert_eq!(rsa.public_key().unwrap().as_ref(), &[0x30, 0x00]);
}

/// How the scripted agent behaves after each reply.
#[derive(Clone, Copy)]
enum AfterReply {
    /// Keep serving the connection.
    Stay,
    /// Send `read_timeout` with id 0 and close, as the agent does to an idle connection.
    TimeOut,
}

/// A scripted agent: answers each `sign` after `delay` with signature `01 02` under the
/// requested profile, recording the profiles and counting connections.
struct FakeAgent {
    socket: PathBuf,
    profiles: Arc<StdMutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl FakeAgent {
    fn start(delay: Duration, after: AfterReply) -> Self {
        let dir = tempfile::Builder::new().prefix("kwsig").tempdir_in("/tmp").unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let profiles = Arc::new(StdMutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (p, c) = (Arc::clone(&profiles), Arc::clone(&connections));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let p = Arc::clone(&p);
                std::thread::spawn(move || serve(stream, delay, after, &p));
            }
        });
        Self { socket, profiles, connections, _dir: dir }
    }
}

fn write_frame(stream: &mut UnixStream, response: &Response) {
    let body = serde_json::to_vec(response).unwrap();
    let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    let _ = stream.write_all(&frame);
}

fn serve(mut stream: UnixStream, delay: Duration, after: AfterReply, profiles: &StdMutex<Vec<String>>) {
    loop {
        let mut prefix = [0u8; 4];
        if stream.read_exact(&mut prefix).is_err() {
            return;
        }
        let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
        stream.read_exact(&mut body).unwrap();
        let request = decode_request(&body).unwrap();
        let Operation::Sign { profile, .. } = request.op else { panic!("only sign is scripted") };
        profiles.lock().unwrap().push(profile.clone());
        std::thread::sleep(delay);
        write_frame(&mut stream, &Response::ok(request.id, Reply::Signature { profile, signature: vec![1, 2] }));
        if let AfterReply::TimeOut = after {
            write_frame(&mut stream, &Response::error(0, ErrorCode::ReadTimeout, "no request within 30000 ms"));
            return;
        }
    }
}

#[test]
fn sign_sends_the_negotiated_scheme_as_the_profile() {
    let agent = FakeAgent::start(Duration::ZERO, AfterReply::Stay);
    let rsa = key(KeyAlgorithm::Rsa2048, agent.socket.clone());
    let signer = rsa.choose_scheme(&[SignatureScheme::RSA_PKCS1_SHA256]).unwrap();
    assert_eq!(signer.sign(b"handshake").unwrap(), [1, 2]);
    let signer = rsa.choose_scheme(&[SignatureScheme::RSA_PSS_SHA384]).unwrap();
    assert_eq!(signer.sign(b"handshake").unwrap(), [1, 2]);
    assert_eq!(*agent.profiles.lock().unwrap(), ["tls-rsa-pkcs1-sha256", "tls-rsa-pss-sha384"]);
    // The second signature reused the first connection.
    assert_eq!(agent.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn a_pooled_connection_the_agent_closed_is_replaced_once() {
    let agent = FakeAgent::start(Duration::ZERO, AfterReply::TimeOut);
    let ec = key(KeyAlgorithm::EcP256, agent.socket.clone());
    for _ in 0..3 {
        let signer = ec.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256]).unwrap();
        assert_eq!(signer.sign(b"handshake").unwrap(), [1, 2]);
    }
    assert_eq!(agent.profiles.lock().unwrap().len(), 3, "each signature was asked for once");
    assert_eq!(agent.connections.load(Ordering::SeqCst), 3);
}

#[test]
fn an_unreachable_agent_is_a_rustls_error_naming_key_and_profile() {
    let ec = key(KeyAlgorithm::EcP256, "/nonexistent/agent.sock".into());
    let signer = ec.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256]).unwrap();
    let err = signer.sign(b"handshake").unwrap_err();
    let rustls::Error::Other(other) = &err else { panic!("{err:?}") };
    let text = other.0.to_string();
    assert!(text.contains("`site-1`") && text.contains("`tls-ecdsa-p256-sha256`"), "{text}");
}

#[test]
fn a_slow_signature_does_not_stall_other_tasks_on_the_runtime() {
    let agent = FakeAgent::start(Duration::from_millis(400), AfterReply::Stay);
    let ec = Arc::new(key(KeyAlgorithm::EcP256, agent.socket.clone()));
    // One worker thread: without block_in_place, the ticker could not run during the sign.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let ticks = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async {
        let t = Arc::clone(&ticks);
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                t.fetch_add(1, Ordering::SeqCst);
            }
        });
        // Let the ticker start on the worker, then sign on the same worker.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let before = ticks.load(Ordering::SeqCst);
        let signer = ec.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256]).unwrap();
        let signature = tokio::spawn(async move { signer.sign(b"handshake") }).await.unwrap().unwrap();
        assert_eq!(signature, [1, 2]);
        let during = ticks.load(Ordering::SeqCst) - before;
        ticker.abort();
        assert!(during >= 10, "only {during} ticks during a 400 ms signature: the executor stalled");
    });
}
