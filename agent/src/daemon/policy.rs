//! Per-key policy, loaded once at start: which operations a key allows and, for NVFlare
//! site keys, the pinned root CA and expected server identity. A key without a `[keys.*]`
//! table allows `sign` and `decrypt` and has no NVFlare flow.

use std::collections::HashMap;

use anyhow::{Context, Result};
use keyward_core::nvflare::ServerTrust;
use keyward_core::KeyId;

use crate::config::Config;

/// One key's rules.
pub struct KeyPolicy {
    /// Plain `sign` allowed.
    pub allow_sign: bool,
    /// `decrypt` allowed.
    pub allow_decrypt: bool,
    /// NVFlare trust, when configured.
    pub nvflare: Option<ServerTrust>,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self { allow_sign: true, allow_decrypt: true, nvflare: None }
    }
}

/// All keys' rules.
#[derive(Default)]
pub struct Policies {
    keys: HashMap<KeyId, KeyPolicy>,
    default: KeyPolicy,
}

impl Policies {
    /// Reads `[keys.*]` from the config, loading each NVFlare root CA.
    ///
    /// # Errors
    /// A bad key name or an unreadable / malformed root CA, naming the file.
    pub fn from_config(config: &Config) -> Result<Self> {
        let mut keys = HashMap::new();
        for (name, key) in &config.keys {
            let id = KeyId::new(name)?;
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
            keys.insert(id, KeyPolicy { allow_sign: key.allow_sign, allow_decrypt: key.allow_decrypt, nvflare });
        }
        Ok(Self { keys, default: KeyPolicy::default() })
    }

    /// The rules for `key`.
    pub fn get(&self, key: &KeyId) -> &KeyPolicy {
        self.keys.get(key).unwrap_or(&self.default)
    }
}
