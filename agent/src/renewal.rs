//! A key's renewal policy (`[keys.<name>.renewal]`, modelled on aziot's cert renewal): when its
//! certificate is due for renewal (`threshold`: a share of the validity elapsed, `"50%"`, or a
//! time left, `"30d"`), how long to wait before reminding again after a renewal was asked for
//! (`retry`), and how old the key itself may grow before it must be rotated (`max_key_age`).
//! The default is NVFlare's design #5248: renew at half-life. Pure logic; `keyward check`
//! reads certificates and key records and reports what this says. A key's birth is recorded
//! by `keyward nvflare request` in `<state_dir>/keys/<key>.generated` (RFC 3339), since
//! neither a PKCS#11 token nor a TPM keeps when a key was made.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_core::KeyId;
use serde::{Deserialize, Serialize};

/// `[keys.<name>.renewal]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalConfig {
    /// `"NN%"` of the validity elapsed, or a time left (`"30d"`, `"12h"`). Default `"50%"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<String>,
    /// Time between reminders once renewal is due. Default `"1d"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    /// Largest key age before the key must be rotated (`"365d"`); none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_key_age: Option<String>,
}

/// When a certificate is due.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// When this share (0 < s < 1) of the validity has elapsed.
    Elapsed(f64),
    /// When no more than this is left.
    Left(Duration),
}

/// A checked policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RenewalPolicy {
    /// When renewal is due.
    pub threshold: Threshold,
    /// Time between reminders.
    pub retry: Duration,
    /// Key age limit.
    pub max_key_age: Option<Duration>,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self { threshold: Threshold::Elapsed(0.5), retry: Duration::from_secs(86_400), max_key_age: None }
    }
}

/// Where a certificate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertState {
    /// Before the threshold.
    Valid,
    /// Past the threshold: ask for a renewal.
    RenewalDue,
    /// Past notAfter.
    Expired,
    /// Before notBefore.
    NotYetValid,
}

/// A certificate judged against a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assessment {
    /// Its state.
    pub state: CertState,
    /// notAfter − now (negative once expired).
    pub seconds_to_expiry: i64,
    /// When renewal is (or was) due, Unix seconds.
    pub renew_at: i64,
}

impl RenewalConfig {
    /// Checks and converts.
    ///
    /// # Errors
    /// Names the field and what is wrong.
    pub fn policy(&self) -> Result<RenewalPolicy, String> {
        let mut policy = RenewalPolicy::default();
        if let Some(text) = &self.threshold {
            policy.threshold = match text.trim().strip_suffix('%') {
                Some(share) => {
                    let share: f64 =
                        share.trim().parse().map_err(|_| format!("field `threshold`: `{text}` is not NN%"))?;
                    if !(share > 0.0 && share < 100.0) {
                        return Err(format!("field `threshold`: `{text}` must be between 0% and 100%"));
                    }
                    Threshold::Elapsed(share / 100.0)
                }
                None => Threshold::Left(duration("threshold", text)?),
            };
        }
        if let Some(text) = &self.retry {
            policy.retry = duration("retry", text)?;
        }
        policy.max_key_age = self.max_key_age.as_deref().map(|t| duration("max_key_age", t)).transpose()?;
        Ok(policy)
    }
}

fn duration(field: &str, text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("field `{field}`: `{text}` is not a duration such as `30d` or `12h`")),
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl RenewalPolicy {
    /// Judges a certificate valid from `not_before` to `not_after` (Unix seconds) at `now`.
    pub fn assess(&self, not_before: i64, not_after: i64, now: i64) -> Assessment {
        let renew_at = match self.threshold {
            Threshold::Elapsed(share) => {
                // Whole seconds are precise enough for certificates; the cast cannot overflow for
                // validity periods of real certificates.
                #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
                let elapsed = ((not_after - not_before).max(0) as f64 * share) as i64;
                not_before + elapsed
            }
            Threshold::Left(left) => not_after.saturating_sub(secs(left)),
        };
        let state = if now < not_before {
            CertState::NotYetValid
        } else if now >= not_after {
            CertState::Expired
        } else if now >= renew_at {
            CertState::RenewalDue
        } else {
            CertState::Valid
        };
        Assessment { state, seconds_to_expiry: not_after - now, renew_at }
    }

    /// Whether a key born at `generated_at` is past `max_key_age` at `now`.
    pub fn key_too_old(&self, generated_at: i64, now: i64) -> bool {
        self.max_key_age.is_some_and(|max| now - generated_at > secs(max))
    }
}

/// Every configured key's renewal policy and where key births are recorded: what the
/// running agent reports in `status` and the metrics. Replaced with the other rules on SIGHUP.
#[derive(Clone, Debug, Default)]
pub struct RenewalRules {
    state_dir: PathBuf,
    policies: HashMap<String, RenewalPolicy>,
}

/// One key as its renewal policy sees it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRenewal {
    /// The certificate judged (none without a certificate).
    pub certificate: Option<Assessment>,
    /// Seconds since the key was generated, when recorded.
    pub key_age_seconds: Option<i64>,
    /// Older than `max_key_age`.
    pub key_age_exceeded: bool,
}

impl RenewalRules {
    /// From `[keys.<name>.renewal]` (checked by `Config::load`; a bad one gives the default).
    pub fn from_config(config: &crate::config::Config) -> Self {
        let policies = config
            .keys
            .iter()
            .filter_map(|(name, key)| Some((name.clone(), key.renewal.as_ref()?.policy().ok()?)))
            .collect();
        Self { state_dir: config.state_dir.clone(), policies }
    }

    /// The policy of `key` (the default for keys without one).
    pub fn policy(&self, key: &KeyId) -> RenewalPolicy {
        self.policies.get(key.as_str()).copied().unwrap_or_default()
    }

    /// Judges `key` whose certificate is valid `validity` (notBefore, notAfter), at `now`.
    pub fn judge(&self, key: &KeyId, validity: Option<(i64, i64)>, now: i64) -> KeyRenewal {
        let policy = self.policy(key);
        let born = read_birth(&self.state_dir, key);
        KeyRenewal {
            certificate: validity.map(|(from, to)| policy.assess(from, to, now)),
            key_age_seconds: born.map(|b| (now - b).max(0)),
            key_age_exceeded: born.is_some_and(|b| policy.key_too_old(b, now)),
        }
    }
}

impl RenewalRules {
    /// Moves the birth record of a retired `key` aside (`<key>.generated.retired-<unix time>`),
    /// so a new key of the same name starts a new record.
    ///
    /// # Errors
    /// File system errors; a missing record is not one.
    pub fn retire_birth(&self, key: &KeyId) -> std::io::Result<()> {
        let from = birth_record(&self.state_dir, key);
        let to = from.with_extension(format!("generated.retired-{}", now()));
        match std::fs::rename(&from, to) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

impl CertState {
    /// Its name in `status` and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::RenewalDue => "renewal_due",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
        }
    }
}

/// Now, Unix seconds.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, secs)
}

/// The record of when `key` was generated.
pub fn birth_record(state_dir: &Path, key: &KeyId) -> PathBuf {
    state_dir.join("keys").join(format!("{key}.generated"))
}

/// Records that `key` was generated now (never overwrites an older record).
///
/// # Errors
/// File system errors.
pub fn record_birth(state_dir: &Path, key: &KeyId) -> std::io::Result<()> {
    write_birth(state_dir, key, SystemTime::now(), "generated in the key store")
}

/// Records the birth of an imported `key`: it is at least as old as the certificate that came
/// with it (`not_before`, Unix seconds), and at least as old as the import. The key age is then
/// a lower bound, which `max_key_age` can only underrate, never overrate.
///
/// # Errors
/// File system errors.
pub fn record_import(state_dir: &Path, key: &KeyId, not_before: Option<i64>) -> std::io::Result<()> {
    let now = SystemTime::now();
    let when = not_before
        .and_then(|s| UNIX_EPOCH.checked_add(std::time::Duration::from_secs(u64::try_from(s).ok()?)))
        .map_or(now, |cert| cert.min(now));
    write_birth(state_dir, key, when, "imported: at least this old (its certificate's notBefore, or the import)")
}

/// The record: an RFC 3339 time on the first line, then what it means.
fn write_birth(state_dir: &Path, key: &KeyId, when: SystemTime, meaning: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = birth_record(state_dir, key);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().mode(0o755).recursive(true).create(dir)?;
    }
    let stamp = humantime::format_rfc3339_seconds(when).to_string();
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path)?;
    file.write_all(format!("{stamp}\n{meaning}\n").as_bytes())
}

/// When `key` was generated (Unix seconds), if recorded (for an imported key: no later than).
pub fn read_birth(state_dir: &Path, key: &KeyId) -> Option<i64> {
    let text = std::fs::read_to_string(birth_record(state_dir, key)).ok()?;
    let when = humantime::parse_rfc3339(text.lines().next()?.trim()).ok()?;
    Some(secs(when.duration_since(UNIX_EPOCH).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn config(threshold: &str) -> RenewalPolicy {
        RenewalConfig { threshold: Some(threshold.into()), ..Default::default() }.policy().unwrap()
    }

    #[test]
    fn the_default_renews_at_half_life() {
        let p = RenewalPolicy::default();
        assert_eq!(p.assess(0, 100 * DAY, 49 * DAY).state, CertState::Valid);
        let due = p.assess(0, 100 * DAY, 50 * DAY);
        assert_eq!((due.state, due.renew_at, due.seconds_to_expiry), (CertState::RenewalDue, 50 * DAY, 50 * DAY));
        assert_eq!(p.assess(0, 100 * DAY, 100 * DAY).state, CertState::Expired);
        assert_eq!(p.assess(10, 100 * DAY, 0).state, CertState::NotYetValid);
    }

    #[test]
    fn a_share_or_a_time_left_sets_the_threshold() {
        assert_eq!(config("80%").assess(0, 100 * DAY, 79 * DAY).state, CertState::Valid);
        assert_eq!(config("80%").assess(0, 100 * DAY, 80 * DAY).state, CertState::RenewalDue);
        assert_eq!(config("30d").assess(0, 100 * DAY, 69 * DAY).state, CertState::Valid);
        assert_eq!(config("30d").assess(0, 100 * DAY, 70 * DAY).renew_at, 70 * DAY);
    }

    #[test]
    fn bad_fields_are_named() {
        for (c, field) in [
            (RenewalConfig { threshold: Some("0%".into()), ..Default::default() }, "threshold"),
            (RenewalConfig { threshold: Some("150%".into()), ..Default::default() }, "threshold"),
            (RenewalConfig { threshold: Some("soon".into()), ..Default::default() }, "threshold"),
            (RenewalConfig { retry: Some("0s".into()), ..Default::default() }, "retry"),
            (RenewalConfig { max_key_age: Some("old".into()), ..Default::default() }, "max_key_age"),
        ] {
            assert!(c.policy().unwrap_err().contains(field), "{c:?}");
        }
    }

    #[test]
    fn an_imported_key_is_as_old_as_its_certificate_or_its_import() {
        let dir = tempfile::tempdir().unwrap();
        let n = now();
        let (older, plain, future) =
            (KeyId::new("older").unwrap(), KeyId::new("plain").unwrap(), KeyId::new("future").unwrap());
        record_import(dir.path(), &older, Some(n - 400 * DAY)).unwrap();
        record_import(dir.path(), &plain, None).unwrap();
        record_import(dir.path(), &future, Some(n + DAY)).unwrap();
        assert_eq!(read_birth(dir.path(), &older), Some(n - 400 * DAY));
        for key in [&plain, &future] {
            assert!((n..=n + 5).contains(&read_birth(dir.path(), key).unwrap()), "{key}");
        }
        let text = std::fs::read_to_string(birth_record(dir.path(), &older)).unwrap();
        assert!(text.lines().nth(1).unwrap().starts_with("imported: at least this old"), "{text}");
        // Never replaced: a second import of the name keeps the first record.
        assert!(record_import(dir.path(), &older, None).is_err());
        assert_eq!(read_birth(dir.path(), &older), Some(n - 400 * DAY));
    }

    #[test]
    fn rules_judge_a_key_by_its_own_policy_and_birth_record() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyId::new("site-1").unwrap();
        let mut rules = RenewalRules { state_dir: dir.path().to_path_buf(), policies: HashMap::new() };
        let strict =
            RenewalConfig { threshold: Some("30d".into()), max_key_age: Some("1s".into()), ..Default::default() };
        rules.policies.insert("site-1".into(), strict.policy().unwrap());
        let n = now();
        let none = rules.judge(&key, None, n);
        assert_eq!((none.certificate, none.key_age_seconds, none.key_age_exceeded), (None, None, false));
        record_birth(dir.path(), &key).unwrap();
        let judged = rules.judge(&key, Some((n - DAY, n + 10 * DAY)), n + 5);
        assert_eq!(judged.certificate.unwrap().state, CertState::RenewalDue);
        assert!(judged.key_age_seconds.unwrap() >= 4 && judged.key_age_exceeded);
        let other = rules.judge(&KeyId::new("other").unwrap(), Some((n - DAY, n + 10 * DAY)), n);
        assert_eq!(other.certificate.unwrap().state, CertState::Valid, "the default: half-life");
    }

    #[test]
    fn key_age_counts_from_the_recorded_birth() {
        let p = RenewalConfig { max_key_age: Some("365d".into()), ..Default::default() }.policy().unwrap();
        assert!(!p.key_too_old(0, 365 * DAY) && p.key_too_old(0, 366 * DAY));
        assert!(!RenewalPolicy::default().key_too_old(0, 10_000 * DAY));
        let dir = tempfile::tempdir().unwrap();
        let key = KeyId::new("site-1").unwrap();
        assert_eq!(read_birth(dir.path(), &key), None);
        record_birth(dir.path(), &key).unwrap();
        assert!((read_birth(dir.path(), &key).unwrap() - now()).abs() < 5);
        assert!(record_birth(dir.path(), &key).is_err(), "an older record is never overwritten");
    }
}
