//! Many clients at once on a real token: 32 concurrent connections × 200 `nvflare`
//! signatures each, every signature verified (exact salt 222) and exactly one audit
//! record per signature.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashSet;
use std::sync::Arc;

use keyward_client::AgentClient;
use keyward_core::verify::verify;
use keyward_core::{KeyAlgorithm, KeyId, PublicKey, SignProfile};
use keyward_protocol::{Operation, Reply};
use keyward_tests::{AgentProcess, Site};

const CLIENTS: usize = 32;
const SIGNATURES_EACH: usize = 200;

#[test]
fn thirty_two_clients_times_two_hundred_signatures_all_verify_and_are_audited() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let agent = AgentProcess::start(&site);
    let socket = agent.socket().to_path_buf();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let results = rt.block_on(async move {
        let mut probe = AgentClient::connect(&socket).await.unwrap();
        let key = KeyId::new("site-1").unwrap();
        let Reply::PublicKey { spki_der, .. } = probe.call(Operation::PublicKey { key: key.clone() }).await.unwrap()
        else {
            panic!("public key reply")
        };
        let public = Arc::new(PublicKey { algorithm: KeyAlgorithm::Rsa2048, spki_der });
        let mut tasks = Vec::new();
        for client in 0..CLIENTS {
            let (socket, key, public) = (socket.clone(), key.clone(), Arc::clone(&public));
            tasks.push(tokio::spawn(async move {
                let mut c = AgentClient::connect(&socket).await.expect("connect");
                let mut messages = Vec::new();
                for n in 0..SIGNATURES_EACH {
                    let msg = format!("site-{client}-nonce-{n}").into_bytes();
                    let reply = c
                        .call(Operation::Sign { key: key.clone(), profile: "nvflare".into(), data: msg.clone() })
                        .await
                        .expect("sign");
                    let Reply::Signature { signature, .. } = reply else { panic!("signature reply") };
                    verify(&public, SignProfile::Nvflare, &msg, &signature).expect("signature verifies with salt 222");
                    messages.push(msg);
                }
                messages
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client task"));
        }
        all
    });
    assert_eq!(results.len(), CLIENTS * SIGNATURES_EACH);

    let signs: Vec<_> = site.audit_records().into_iter().filter(|r| r["op"] == "sign").collect();
    assert_eq!(signs.len(), CLIENTS * SIGNATURES_EACH, "one audit record per signature");
    assert!(signs.iter().all(|r| r["outcome"] == "ok" && r["profile"] == "nvflare"));
    let digests: HashSet<_> = signs.iter().map(|r| r["payload_sha256"].as_str().unwrap().to_owned()).collect();
    assert_eq!(digests.len(), CLIENTS * SIGNATURES_EACH, "each message audited once, by its own digest");
    let expected: HashSet<_> = results.iter().map(|m| keyward_agent::audit::sha256_hex(m)).collect();
    assert_eq!(digests, expected);
    drop(agent);
    // Concurrent writers never interleave or break the hash chain.
    let verified = site.keyward_ok(&["audit", "verify"]);
    assert!(String::from_utf8_lossy(&verified.stdout).contains("chain intact"));
}
