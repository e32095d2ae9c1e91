//! Per-key policy from `[keys.<name>]`: who may use the key (uids, gids, executables), for
//! what (`sign`, `decrypt`, signing profiles), how often (token buckets), and, for NVFlare
//! site keys, the pinned root CA and expected server identity; for an NVFlare server's key,
//! the root CA its clients must chain to. A key without a table allows
//! every caller `[access]` lets in, `sign` and `decrypt` with every profile, at any rate, and
//! has no NVFlare flow. Public information (`list_keys`, `public_key`) is not restricted.
//!
//! The whole value is rebuilt on a config reload ([`Policies::from_config`]); the rate-limit
//! buckets live inside it, so a reload starts them full. An admitted use holds a [`Grant`]
//! for the tokens it took; a request then refused before the key is put to work (unknown
//! key, a profile the key cannot do, a registration whose server fails verification, ...)
//! gives them back with [`Policies::settle`], so refusals never eat the key's budget. Token buckets: `rate_limit.rs`;
//! reading the caller's executable: `peer_exe.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use keyward_core::nvflare::{ClientTrust, ServerTrust};
use keyward_core::{KeyId, SignProfile};
use keyward_protocol::ErrorCode;

use super::rate_limit::{take_all, Bucket};
use crate::audit::Peer;
use crate::config::{Config, KeyConfig, RateLimitConfig};
use crate::daemon::front::peer_exe::{self, AllowedExe};

/// One key's rules.
pub struct KeyPolicy {
    /// Plain `sign` allowed.
    pub allow_sign: bool,
    /// `decrypt` allowed.
    pub allow_decrypt: bool,
    /// NVFlare trust, when configured.
    pub nvflare: Option<ServerTrust>,
    /// NVFlare server-side trust (the clients' root CA), when configured.
    pub nvflare_server: Option<ClientTrust>,
    profiles: Vec<String>,
    uids: Vec<u32>,
    gids: Vec<u32>,
    executables: Vec<AllowedExe>,
    rate_limit: Option<RateLimitConfig>,
    profile_rate_limits: BTreeMap<String, RateLimitConfig>,
}

/// The rules of a key without a `[keys.<name>]` table.
impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            allow_sign: true,
            allow_decrypt: true,
            nvflare: None,
            nvflare_server: None,
            profiles: Vec::new(),
            uids: Vec::new(),
            gids: Vec::new(),
            executables: Vec::new(),
            rate_limit: None,
            profile_rate_limits: BTreeMap::new(),
        }
    }
}

/// What a request does with a key.
#[derive(Clone, Copy, Debug)]
pub enum KeyUse<'a> {
    /// `sign` with the profile as requested (`tls`, `nvflare`, `tls-...`).
    Sign(&'a str),
    /// `decrypt`.
    Decrypt,
    /// `nvflare_challenge` (no private-key use: caller rules only).
    NvflareChallenge,
    /// `nvflare_register` (an `nvflare` signature).
    NvflareRegister,
    /// `nvflare_server_challenge` and `nvflare_server_register` (an `nvflare` signature each).
    NvflareServer,
}

/// A refusal: `policy_denied` or `rate_limited`, with a message naming the config field.
#[derive(Debug)]
pub struct Refusal {
    /// Wire code.
    pub code: ErrorCode,
    /// Message.
    pub message: String,
}

fn denied(message: String) -> Refusal {
    Refusal { code: ErrorCode::PolicyDenied, message }
}

/// Bucket identity: the key, and the profile family for per-profile buckets.
type BucketId = (KeyId, Option<&'static str>);

/// The rate-limit tokens an admitted use took (none when the key has no limits). Hand it to
/// [`Policies::settle`] with the request's outcome.
#[must_use = "settle the grant so that a refused request gets its tokens back"]
#[derive(Debug)]
pub struct Grant {
    taken: Vec<BucketId>,
}

/// Whether a request that failed with `code` put the key to work, so its tokens stay spent:
/// a ciphertext that did not decrypt (each one is a query to a possible padding oracle), and
/// a device call that failed or timed out after it may have used the key.
fn key_was_used(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::DecryptionFailed | ErrorCode::Timeout | ErrorCode::BackendError)
}

/// All keys' rules, and their rate-limit buckets.
#[derive(Default)]
pub struct Policies {
    keys: HashMap<KeyId, KeyPolicy>,
    default: KeyPolicy,
    buckets: Mutex<HashMap<BucketId, Bucket>>,
}

impl Policies {
    /// Reads `[keys.*]` from the config, loading each NVFlare root CA and recording each
    /// allowed executable's file (device and inode, symlinks followed; `peer_exe.rs`).
    ///
    /// # Errors
    /// A bad key name or an unreadable / malformed root CA, naming the file.
    pub fn from_config(config: &Config) -> Result<Self> {
        let mut keys = HashMap::new();
        for (name, key) in &config.keys {
            let id = KeyId::new(name)?;
            keys.insert(id, key_policy(name, key)?);
        }
        Ok(Self { keys, default: KeyPolicy::default(), buckets: Mutex::default() })
    }

    /// The rules for `key`.
    pub fn get(&self, key: &KeyId) -> &KeyPolicy {
        self.keys.get(key).unwrap_or(&self.default)
    }

    /// Checks, in order, the caller, the operation, the profile and the rate limits; a use
    /// that passes takes its rate-limit tokens, held in the returned [`Grant`].
    ///
    /// # Errors
    /// The first rule that refuses (a refusal here takes no token).
    pub fn admit(&self, key: &KeyId, peer: &Peer, what: KeyUse<'_>) -> Result<Grant, Refusal> {
        let policy = self.get(key);
        policy.check_caller(key, peer)?;
        let profile = match what {
            KeyUse::Sign(_) if !policy.allow_sign => {
                return Err(denied(format!("key `{key}` does not allow sign (keys.{key}.allow_sign)")))
            }
            KeyUse::Decrypt if !policy.allow_decrypt => {
                return Err(denied(format!("key `{key}` does not allow decrypt (keys.{key}.allow_decrypt)")))
            }
            KeyUse::NvflareChallenge => return Ok(Grant { taken: Vec::new() }),
            KeyUse::Sign(profile) => Some(profile),
            KeyUse::NvflareRegister | KeyUse::NvflareServer => Some(SignProfile::Nvflare.name()),
            KeyUse::Decrypt => None,
        };
        if let Some(profile) = profile {
            if !policy.allows_requested_profile(profile) {
                return Err(denied(format!("key `{key}` does not allow profile `{profile}` (keys.{key}.profiles)")));
            }
        }
        self.take_tokens(key, policy, profile.and_then(family))
    }

    /// Ends a use: when it failed with `failure` (a wire code) before the key was put to
    /// work, the grant's tokens go back to their buckets; otherwise they stay spent.
    pub fn settle(&self, grant: Grant, failure: Option<ErrorCode>) {
        if grant.taken.is_empty() || failure.is_none_or(key_was_used) {
            return;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in &grant.taken {
            if let Some(bucket) = buckets.get_mut(id) {
                bucket.put_back(now);
            }
        }
    }

    /// Whether `key` allows the profile a plain `tls` request resolved to.
    pub fn allows_profile(&self, key: &KeyId, profile: SignProfile) -> bool {
        let allowed = &self.get(key).profiles;
        allowed.is_empty()
            || allowed.iter().any(|p| p == profile.name())
            || (matches!(profile, SignProfile::Tls(_)) && allowed.iter().any(|p| p == "tls"))
    }

    fn take_tokens(&self, key: &KeyId, policy: &KeyPolicy, family: Option<&'static str>) -> Result<Grant, Refusal> {
        let per_family = family.and_then(|f| policy.profile_rate_limits.get(f).map(|l| (f, *l)));
        if policy.rate_limit.is_none() && per_family.is_none() {
            return Ok(Grant { taken: Vec::new() });
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Out of the map while both are borrowed; back in whatever the outcome.
        let mut take =
            |id: BucketId, limit: RateLimitConfig| buckets.remove(&id).unwrap_or_else(|| Bucket::new(limit, now));
        let mut key_wide = policy.rate_limit.map(|l| take((key.clone(), None), l));
        let mut profile_wide = per_family.map(|(f, l)| take((key.clone(), Some(f)), l));
        let mut refs: Vec<&mut Bucket> = key_wide.iter_mut().chain(profile_wide.iter_mut()).collect();
        let taken = take_all(&mut refs, now);
        let limits: Vec<RateLimitConfig> = refs.iter().map(|b| b.limit()).collect();
        let mut ids = Vec::new();
        if let Some(b) = key_wide {
            ids.push((key.clone(), None));
            buckets.insert((key.clone(), None), b);
        }
        if let (Some(b), Some((f, _))) = (profile_wide, per_family) {
            ids.push((key.clone(), Some(f)));
            buckets.insert((key.clone(), Some(f)), b);
        }
        taken.map(|()| Grant { taken: ids }).map_err(|(index, wait)| {
            let limit = limits[index];
            let (what, field) = if index == 0 && policy.rate_limit.is_some() {
                (String::new(), format!("keys.{key}.rate_limit"))
            } else {
                let f = family.unwrap_or_default();
                (format!(" for profile `{f}`"), format!("keys.{key}.profile_rate_limits.{f}"))
            };
            Refusal {
                code: ErrorCode::RateLimited,
                message: format!(
                    "key `{key}` is over its rate limit{what} ({} per minute, burst {}); retry in {:.1} s ({field})",
                    limit.per_minute,
                    limit.burst,
                    wait.as_secs_f64()
                ),
            }
        })
    }
}

impl KeyPolicy {
    fn check_caller(&self, key: &KeyId, peer: &Peer) -> Result<(), Refusal> {
        let unrestricted = self.uids.is_empty() && self.gids.is_empty();
        if !(unrestricted || self.uids.contains(&peer.uid) || self.gids.contains(&peer.gid)) {
            return Err(denied(format!(
                "caller uid {} / gid {} may not use key `{key}` (keys.{key}.allowed_uids, allowed_gids)",
                peer.uid, peer.gid
            )));
        }
        if self.executables.is_empty() {
            return Ok(());
        }
        let image = peer_exe::executable(peer.pid, peer.connected)
            .map_err(|e| denied(format!("cannot tell which executable is calling for key `{key}`: {e}")))?;
        if !self.executables.iter().any(|a| a.matches(&image)) {
            return Err(denied(format!(
                "caller executable `{}` ({}) is none of the files in keys.{key}.allowed_executables",
                image.path.display(),
                image.file
            )));
        }
        Ok(())
    }

    fn allows_requested_profile(&self, requested: &str) -> bool {
        self.profiles.is_empty()
            || self.profiles.iter().any(|p| {
                p == requested
                    || (p == "tls" && requested.starts_with("tls"))
                    // Plain `tls` resolves per key; the resolved name is checked again later.
                    || (requested == "tls" && p.starts_with("tls-"))
            })
    }
}

/// The profile family a rate limit is configured under.
fn family(profile: &str) -> Option<&'static str> {
    if profile == "nvflare" {
        Some("nvflare")
    } else if profile.starts_with("tls") {
        Some("tls")
    } else {
        None
    }
}

fn key_policy(name: &str, key: &KeyConfig) -> Result<KeyPolicy> {
    let nvflare = match &key.nvflare {
        Some(n) => {
            let pem = std::fs::read(&n.root_ca)
                .with_context(|| format!("reading `keys.{name}.nvflare.root_ca` `{}`", n.root_ca.display()))?;
            let trust = ServerTrust::new(&pem, &n.server_identity)
                .with_context(|| format!("`keys.{name}.nvflare.root_ca` `{}`", n.root_ca.display()))?;
            Some(trust)
        }
        None => None,
    };
    let nvflare_server = match &key.nvflare_server {
        Some(n) => {
            let pem = std::fs::read(&n.root_ca)
                .with_context(|| format!("reading `keys.{name}.nvflare_server.root_ca` `{}`", n.root_ca.display()))?;
            let trust = ClientTrust::new(&pem)
                .with_context(|| format!("`keys.{name}.nvflare_server.root_ca` `{}`", n.root_ca.display()))?;
            Some(trust)
        }
        None => None,
    };
    let executables = key
        .allowed_executables
        .iter()
        .map(|p| {
            AllowedExe::record(p).unwrap_or_else(|(kept, e)| {
                tracing::warn!(key = name, path = %p.display(), error = %e, "allowed executable not found; it matches nothing until a reload finds it");
                kept
            })
        })
        .collect();
    Ok(KeyPolicy {
        allow_sign: key.allow_sign,
        allow_decrypt: key.allow_decrypt,
        nvflare,
        nvflare_server,
        profiles: key.profiles.clone(),
        uids: key.allowed_uids.clone(),
        gids: key.allowed_gids.clone(),
        executables,
        rate_limit: key.rate_limit,
        profile_rate_limits: key.profile_rate_limits.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policies(keys_toml: &str) -> Policies {
        let text = format!(
            "socket = \"/s\"\nstate_dir = \"/st\"\n[backend]\ntype = \"tpm\"\ntcti = \"device:/dev/tpmrm0\"\nkey_dir = \"/k\"\n{keys_toml}"
        );
        Policies::from_config(&toml::from_str(&text).unwrap()).unwrap()
    }

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer { uid, gid, pid: Some(1), connected: Duration::ZERO }
    }

    fn code(r: Result<Grant, Refusal>) -> Option<ErrorCode> {
        r.err().map(|r| r.code)
    }

    #[test]
    fn callers_outside_the_uid_and_gid_lists_are_refused_and_other_keys_are_unaffected() {
        let p = policies("[keys.site-1]\nallowed_uids = [1000]\nallowed_gids = [2000]\n");
        let key = KeyId::new("site-1").unwrap();
        assert_eq!(code(p.admit(&key, &peer(1000, 1), KeyUse::Decrypt)), None);
        assert_eq!(code(p.admit(&key, &peer(7, 2000), KeyUse::Decrypt)), None);
        let refused = p.admit(&key, &peer(7, 7), KeyUse::Sign("tls")).unwrap_err();
        assert_eq!(refused.code, ErrorCode::PolicyDenied);
        assert!(refused.message.contains("keys.site-1.allowed_uids"), "{}", refused.message);
        let other = KeyId::new("other").unwrap();
        assert_eq!(code(p.admit(&other, &peer(7, 7), KeyUse::Sign("tls"))), None);
    }

    #[test]
    fn profiles_are_matched_by_name_or_family() {
        let p = policies("[keys.site-1]\nprofiles = [\"nvflare\", \"tls-rsa-pss-sha256\"]\n");
        let key = KeyId::new("site-1").unwrap();
        let me = peer(1, 1);
        assert_eq!(code(p.admit(&key, &me, KeyUse::Sign("nvflare"))), None);
        assert_eq!(code(p.admit(&key, &me, KeyUse::NvflareRegister)), None);
        assert_eq!(code(p.admit(&key, &me, KeyUse::Sign("tls"))), None); // resolved, then checked again
        assert_eq!(code(p.admit(&key, &me, KeyUse::Sign("tls-rsa-pkcs1-sha256"))), Some(ErrorCode::PolicyDenied));
        assert!(p.allows_profile(&key, SignProfile::Tls(keyward_core::TlsScheme::RsaPssSha256)));
        assert!(!p.allows_profile(&key, SignProfile::Tls(keyward_core::TlsScheme::EcdsaP256Sha256)));
        let tls_only = policies("[keys.site-1]\nprofiles = [\"tls\"]\n");
        assert_eq!(code(tls_only.admit(&key, &me, KeyUse::Sign("tls-rsa-pkcs1-sha384"))), None);
        assert_eq!(code(tls_only.admit(&key, &me, KeyUse::NvflareRegister)), Some(ErrorCode::PolicyDenied));
    }

    #[test]
    fn key_and_profile_buckets_both_apply_and_name_their_field() {
        let p = policies(
            "[keys.site-1]\nrate_limit = { per_minute = 60, burst = 3 }\nprofile_rate_limits.nvflare = { per_minute = 1, burst = 1 }\n",
        );
        let key = KeyId::new("site-1").unwrap();
        let me = peer(1, 1);
        assert_eq!(code(p.admit(&key, &me, KeyUse::NvflareRegister)), None);
        let refused = p.admit(&key, &me, KeyUse::NvflareRegister).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert!(refused.message.contains("keys.site-1.profile_rate_limits.nvflare"), "{}", refused.message);
        // The refused registration took nothing from the key-wide bucket: two uses remain.
        assert_eq!(code(p.admit(&key, &me, KeyUse::Decrypt)), None);
        assert_eq!(code(p.admit(&key, &me, KeyUse::Sign("tls"))), None);
        let refused = p.admit(&key, &me, KeyUse::Decrypt).unwrap_err();
        assert!(refused.message.contains("keys.site-1.rate_limit)"), "{}", refused.message);
        // Caller checks come first and never touch a bucket.
        assert_eq!(code(p.admit(&key, &me, KeyUse::NvflareChallenge)), None);
    }

    #[test]
    fn a_use_refused_before_the_key_works_gives_its_tokens_back() {
        let p = policies(
            "[keys.site-1]\nrate_limit = { per_minute = 1, burst = 2 }\nprofile_rate_limits.tls = { per_minute = 1, burst = 2 }\n",
        );
        let key = KeyId::new("site-1").unwrap();
        let me = peer(1, 1);
        // Refused later for reasons that never reach the key: both buckets are refilled.
        for failure in
            [ErrorCode::UnknownKey, ErrorCode::PolicyDenied, ErrorCode::Unsupported, ErrorCode::InvalidRequest]
        {
            for _ in 0..3 {
                let grant = p.admit(&key, &me, KeyUse::Sign("tls")).unwrap();
                p.settle(grant, Some(failure));
            }
        }
        // Uses that reached the key keep their tokens spent.
        p.settle(p.admit(&key, &me, KeyUse::Sign("tls")).unwrap(), None);
        p.settle(p.admit(&key, &me, KeyUse::Decrypt).unwrap(), Some(ErrorCode::DecryptionFailed));
        let refused = p.admit(&key, &me, KeyUse::Sign("tls")).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
    }
}
