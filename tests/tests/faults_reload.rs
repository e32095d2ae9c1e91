//! Config reload on SIGHUP, on a running agent with a real SoftHSM2 token: a good config
//! swaps the key policies for new requests; broken configs (a TOML syntax error, an unknown
//! field, an NVFlare root CA that is not a certificate) are rejected with a log line naming
//! the problem while the previous rules keep serving; a backend change is reported as
//! needing a restart. The agent process stays the same throughout.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use keyward_protocol::ErrorCode;
use keyward_tests::{AgentProcess, Site};

fn hangup(agent: &AgentProcess) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.pid()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

/// Waits until the agent's log has `n` lines containing `needle`.
fn wait_for_log(agent: &AgentProcess, needle: &str, n: usize) -> String {
    let started = Instant::now();
    loop {
        let log = agent.log_text();
        if log.lines().filter(|l| l.contains(needle)).count() >= n {
            return log;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no {n}× `{needle}` in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_config(site: &Site, text: &str) {
    std::fs::write(&site.config, text).unwrap();
}

#[test]
fn sighup_swaps_key_policies_and_a_broken_config_leaves_the_old_rules_serving() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let base = std::fs::read_to_string(&site.config).unwrap();
    let with_sign = |allow: bool| format!("{base}\n[keys.site-1]\nallow_sign = {allow}\n");
    write_config(&site, &with_sign(true));
    let agent = AgentProcess::start(&site);
    let pid = agent.pid();
    assert_eq!(agent.try_sign("site-1"), Ok(()));

    // A good config: signing is refused from now on.
    write_config(&site, &with_sign(false));
    hangup(&agent);
    wait_for_log(&agent, "config reloaded", 1);
    assert_eq!(agent.try_sign("site-1"), Err(ErrorCode::PolicyDenied));

    // Broken configs that would allow signing again: each is rejected, naming the problem,
    // and the rules in force (no signing) stay.
    let bad_ca = site.path("not-a-ca.pem");
    std::fs::write(&bad_ca, "this is not a certificate\n").unwrap();
    let broken = [
        (format!("{}\nallow_sign = [", with_sign(true)), "TOML parse error"),
        (format!("{}colour = \"blue\"\n", with_sign(true)), "unknown field `colour`"),
        (
            format!(
                "{}\n[keys.site-1.nvflare]\nroot_ca = \"{}\"\nserver_identity = \"server\"\n",
                with_sign(true),
                bad_ca.display()
            ),
            "keys.site-1.nvflare.root_ca",
        ),
    ];
    for (n, (text, named)) in broken.iter().enumerate() {
        write_config(&site, text);
        hangup(&agent);
        let log = wait_for_log(&agent, "config reload rejected", n + 1);
        let line = log.lines().filter(|l| l.contains("config reload rejected")).nth(n).unwrap();
        assert!(line.contains(named), "rejection does not name `{named}`: {line}");
        assert_eq!(agent.try_sign("site-1"), Err(ErrorCode::PolicyDenied), "old rules must stay after: {named}");
    }

    // A good config that also changes the backend: the policy applies, the backend change
    // is reported as needing a restart.
    let changed_backend = with_sign(true).replace("workers = 2", "workers = 3");
    assert_ne!(changed_backend, with_sign(true), "config sets `backend.workers`");
    write_config(&site, &changed_backend);
    hangup(&agent);
    let log = wait_for_log(&agent, "config reloaded", 2);
    assert!(log.contains("`backend` changed; it takes effect only after a restart"), "{log}");
    assert_eq!(agent.try_sign("site-1"), Ok(()));
    assert_eq!(agent.pid(), pid);
}
