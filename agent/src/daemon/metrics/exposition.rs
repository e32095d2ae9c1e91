//! The Prometheus text exposition format (version 0.0.4) of the agent's metrics, written by
//! hand: `# HELP`, `# TYPE`, then `name{label="value"} number` lines. Only counters, gauges
//! and the latency histograms from `stats.rs` are rendered — nothing here can hold a PIN,
//! a key or a payload. Served by `endpoint.rs`; metric names are listed in
//! docs/configuration.md.

use std::fmt::Write;

use keyward_core::KeyId;

use super::histogram::Histogram;
use super::stats::{Series, SeriesKey};

/// Outcomes that count as backend errors (`keyward_backend_errors_total`).
const BACKEND_ERROR_CODES: [&str; 3] = ["backend_error", "backend_unavailable", "timeout"];

/// What one scrape shows.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Backend kind (`pkcs11`, `tpm`).
    pub backend: String,
    /// Whether the backend passed its health check for this scrape.
    pub backend_up: bool,
    /// Seconds since the agent started.
    pub uptime_seconds: u64,
    /// Connections open now.
    pub connections: u64,
    /// Every (operation, key, profile) series.
    pub series: Vec<(SeriesKey, Series)>,
    /// Installed certificates and their notAfter (Unix seconds).
    pub certificates: Vec<(KeyId, i64)>,
    /// Per key with a certificate: seconds left to its notAfter, and 1 when its renewal
    /// policy says renewal is due (or it expired).
    pub renewal: Vec<(KeyId, i64, bool)>,
    /// Per key with a recorded birth: its age in seconds.
    pub key_ages: Vec<(KeyId, i64)>,
}

/// Renders `snapshot` in the text format.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    header(&mut out, "keyward_up", "gauge", "1 while the agent serves");
    line(&mut out, "keyward_up", &[], 1);
    header(&mut out, "keyward_backend_up", "gauge", "1 if the key store passed a health check during this scrape");
    line(&mut out, "keyward_backend_up", &[("backend", &snapshot.backend)], u64::from(snapshot.backend_up));
    header(&mut out, "keyward_uptime_seconds", "gauge", "seconds since the agent started");
    line(&mut out, "keyward_uptime_seconds", &[], snapshot.uptime_seconds);
    header(&mut out, "keyward_connections", "gauge", "client connections open now");
    line(&mut out, "keyward_connections", &[], snapshot.connections);

    header(&mut out, "keyward_requests_total", "counter", "requests answered, by operation, key, profile and outcome");
    for (labels, series) in &snapshot.series {
        for (outcome, n) in &series.outcomes {
            let l = [("op", labels.op), ("key", &labels.key), ("profile", &labels.profile), ("outcome", outcome)];
            line(&mut out, "keyward_requests_total", &l, *n);
        }
    }
    header(&mut out, "keyward_backend_errors_total", "counter", "requests that failed in the key store or timed out");
    for (labels, series) in &snapshot.series {
        for (code, n) in series.outcomes.iter().filter(|(code, _)| BACKEND_ERROR_CODES.contains(code)) {
            line(
                &mut out,
                "keyward_backend_errors_total",
                &[("op", labels.op), ("key", &labels.key), ("code", code)],
                *n,
            );
        }
    }
    header(&mut out, "keyward_request_duration_seconds", "histogram", "time from a whole request frame to its reply");
    for (labels, series) in &snapshot.series {
        histogram(&mut out, &[("op", labels.op), ("key", &labels.key), ("profile", &labels.profile)], &series.latency);
    }
    header(
        &mut out,
        "keyward_certificate_expiry_seconds",
        "gauge",
        "notAfter of the key's installed certificate, Unix time",
    );
    for (key, not_after) in &snapshot.certificates {
        let _ = writeln!(out, "keyward_certificate_expiry_seconds{} {not_after}", labels(&[("key", key.as_str())]));
    }
    header(
        &mut out,
        "keyward_certificate_seconds_to_expiry",
        "gauge",
        "seconds from now to the notAfter of the key's certificate (negative once expired)",
    );
    for (key, left, _) in &snapshot.renewal {
        let _ = writeln!(out, "keyward_certificate_seconds_to_expiry{} {left}", labels(&[("key", key.as_str())]));
    }
    header(
        &mut out,
        "keyward_certificate_renewal_due",
        "gauge",
        "1 when the key's renewal policy says its certificate is due for renewal or expired",
    );
    for (key, _, due) in &snapshot.renewal {
        line(&mut out, "keyward_certificate_renewal_due", &[("key", key.as_str())], u64::from(*due));
    }
    header(&mut out, "keyward_key_age_seconds", "gauge", "seconds since the key was generated (keyward's record)");
    for (key, age) in &snapshot.key_ages {
        let _ = writeln!(out, "keyward_key_age_seconds{} {age}", labels(&[("key", key.as_str())]));
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn line(out: &mut String, name: &str, pairs: &[(&str, &str)], value: u64) {
    let _ = writeln!(out, "{name}{} {value}", labels(pairs));
}

fn histogram(out: &mut String, pairs: &[(&str, &str)], h: &Histogram) {
    const NAME: &str = "keyward_request_duration_seconds";
    for (bound_us, n) in h.cumulative() {
        let le = bound_us.map_or_else(|| "+Inf".to_owned(), seconds);
        let mut with_le = pairs.to_vec();
        with_le.push(("le", &le));
        line(out, &format!("{NAME}_bucket"), &with_le, n);
    }
    let _ = writeln!(out, "{NAME}_sum{} {}", labels(pairs), seconds(h.sum_us()));
    line(out, &format!("{NAME}_count"), pairs, h.count());
}

#[allow(clippy::cast_precision_loss)]
fn seconds(micros: u64) -> String {
    (micros as f64 / 1e6).to_string()
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", body.join(","))
}

/// Label value escaping of the text format: backslash, double quote, line feed.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn snapshot() -> Snapshot {
        let mut series = Series::default();
        series.outcomes.insert("ok", 2);
        series.outcomes.insert("backend_unavailable", 1);
        series.latency.observe(Duration::from_micros(1_200));
        series.latency.observe(Duration::from_micros(700));
        series.latency.observe(Duration::from_secs(20));
        let labels = SeriesKey { op: "sign", key: "site-1".into(), profile: "nvflare".into() };
        Snapshot {
            backend: "pkcs11".into(),
            backend_up: true,
            uptime_seconds: 7,
            connections: 1,
            series: vec![(labels, series)],
            certificates: vec![(KeyId::new("site-1").unwrap(), 1_800_000_000)],
            renewal: vec![(KeyId::new("site-1").unwrap(), -5, true)],
            key_ages: vec![(KeyId::new("site-1").unwrap(), 86_400)],
        }
    }

    #[test]
    fn renders_counts_histogram_and_expiry() {
        let text = render(&snapshot());
        for expected in [
            "keyward_up 1\n",
            "keyward_backend_up{backend=\"pkcs11\"} 1\n",
            "keyward_requests_total{op=\"sign\",key=\"site-1\",profile=\"nvflare\",outcome=\"ok\"} 2\n",
            "keyward_backend_errors_total{op=\"sign\",key=\"site-1\",code=\"backend_unavailable\"} 1\n",
            "keyward_request_duration_seconds_bucket{op=\"sign\",key=\"site-1\",profile=\"nvflare\",le=\"0.0005\"} 0\n",
            "keyward_request_duration_seconds_bucket{op=\"sign\",key=\"site-1\",profile=\"nvflare\",le=\"0.001\"} 1\n",
            "keyward_request_duration_seconds_bucket{op=\"sign\",key=\"site-1\",profile=\"nvflare\",le=\"10\"} 2\n",
            "keyward_request_duration_seconds_bucket{op=\"sign\",key=\"site-1\",profile=\"nvflare\",le=\"+Inf\"} 3\n",
            "keyward_request_duration_seconds_sum{op=\"sign\",key=\"site-1\",profile=\"nvflare\"} 20.0019\n",
            "keyward_request_duration_seconds_count{op=\"sign\",key=\"site-1\",profile=\"nvflare\"} 3\n",
            "# TYPE keyward_certificate_expiry_seconds gauge\n",
            "keyward_certificate_expiry_seconds{key=\"site-1\"} 1800000000\n",
            "keyward_certificate_seconds_to_expiry{key=\"site-1\"} -5\n",
            "keyward_certificate_renewal_due{key=\"site-1\"} 1\n",
            "keyward_key_age_seconds{key=\"site-1\"} 86400\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn every_sample_line_is_name_labels_value() {
        for l in render(&snapshot()).lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = l.rsplit_once(' ').unwrap();
            assert!(series.starts_with("keyward_"), "{l}");
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("k", "a\"b\\c\nd")]), "{k=\"a\\\"b\\\\c\\nd\"}");
    }
}
