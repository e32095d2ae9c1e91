//! The short soak CI runs (8 clients × 15 s; the long one is the `soak` binary): sign,
//! decrypt, status and bad requests mixed, zero wrong answers, one audit record per frame
//! and an intact chain, fds back to idle and RSS within a bound afterwards.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use keyward_tests::soak::{self, SoakConfig};

#[test]
fn eight_clients_for_fifteen_seconds_get_only_right_answers_and_every_frame_is_audited() {
    let config = SoakConfig { clients: 8, duration: Duration::from_secs(15), sample_every: Duration::from_secs(2) };
    let report = soak::run(config);
    eprintln!("{}", report.markdown());
    let c = report.counts;
    assert!(c.sign > 0 && c.decrypt > 0 && c.status > 0 && c.bad > 0, "every kind exercised: {c:?}");
    assert_eq!(report.wrong_count, 0, "wrong answers: {:?}", report.wrong);
    assert_eq!(report.audit_found, report.audit_expected, "one audit record per frame");
    assert_eq!(report.audit_signs_ok, c.sign, "one successful sign record per signature");
    assert!(report.audit_chain_intact, "`keyward audit verify` after the soak");
    assert!(report.samples.len() >= 5, "sampled every 2 s: {:?}", report.samples);
    assert!(report.after.fds <= report.baseline.fds, "fds: idle {}, after {}", report.baseline.fds, report.after.fds);
    assert!(
        report.after.rss_kib <= report.baseline.rss_kib + 32 * 1024,
        "RSS: idle {} KiB, after {} KiB",
        report.baseline.rss_kib,
        report.after.rss_kib
    );
}
