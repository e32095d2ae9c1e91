//! The request path crosses no thread inside the agent: the thread that reads a request
//! also signs, audits and replies (`agent/src/daemon/front/connection.rs`). Shown by what
//! it costs the agent's threads: context switches per request, counted over every agent
//! thread (`/proc/<pid>/task/*/status`), voluntary and involuntary together (which of the
//! two a wake-up shows as depends on the machine's load: a reply that wakes the client may
//! preempt the agent's thread instead of letting it block). The earlier design (async front
//! end → queue → worker thread → oneshot back) made four wake-ups in series per request,
//! about six switches of the agent's threads; one blocking read per request makes about two.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use keyward_client::BlockingAgentClient;
use keyward_core::KeyId;
use keyward_protocol::{Operation, Reply};
use keyward_tests::procstat::{context_switches, switches_between};
use keyward_tests::{AgentProcess, Site};

const REQUESTS: u32 = 2000;

#[test]
fn a_signature_costs_the_agent_one_wake_up_not_a_chain_of_thread_hand_offs() {
    let site = Site::new();
    site.generate("ec", "p-256");
    let agent = AgentProcess::start(&site);
    let mut client = BlockingAgentClient::connect(agent.socket(), Duration::from_secs(20)).unwrap();
    let key = KeyId::new("ec").unwrap();
    let mut sign = || {
        let op = Operation::Sign { key: key.clone(), profile: "tls-ecdsa-p256-sha256".into(), data: b"m".to_vec() };
        assert!(matches!(client.call(op).unwrap(), Reply::Signature { .. }));
    };
    for _ in 0..50 {
        sign();
    }
    let before = context_switches(agent.pid()).unwrap();
    for _ in 0..REQUESTS {
        sign();
    }
    let after = context_switches(agent.pid()).unwrap();
    let (voluntary, involuntary) = switches_between(&before, &after);
    let per = |n: u64| f64::from(u32::try_from(n).unwrap()) / f64::from(REQUESTS);
    let per_request = per(voluntary + involuntary);
    eprintln!(
        "agent context switches per request: {per_request:.2} ({:.2} voluntary + {:.2} involuntary)",
        per(voluntary),
        per(involuntary)
    );
    // The blocking read of each request, the reply's wake-up of the client, and the timers
    // of the watchdog and the health monitor spread over the run.
    assert!(per_request <= 3.0, "{per_request:.2} context switches of the agent's threads per request");
}
