//! Key references and descriptions: the validated [`KeyId`] a caller names a key by, the
//! [`KeyAlgorithm`]s keyward creates, and the [`PublicKey`] (SubjectPublicKeyInfo) of a key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name of a key inside a store (a PKCS#11 `CKA_LABEL`, a TPM key name).
///
/// 1 to 64 characters from `[A-Za-z0-9._-]`, starting with a letter or digit, so that a
/// name is safe in a file name, a log line and a PKCS#11 URI without escaping.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

/// Why a string is not a valid [`KeyId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid key name `{name}`: use 1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit")]
pub struct InvalidKeyId {
    /// The rejected name, cut to 80 characters.
    pub name: String,
}

impl KeyId {
    /// Longest accepted name.
    pub const MAX_LEN: usize = 64;

    /// Validates `name`.
    ///
    /// # Errors
    /// [`InvalidKeyId`] when the name is empty, too long or has other characters.
    pub fn new(name: &str) -> Result<Self, InvalidKeyId> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let valid = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name.chars().all(ok_char)
            && name.starts_with(|c: char| c.is_ascii_alphanumeric());
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidKeyId { name: name.chars().take(80).collect() })
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for KeyId {
    type Err = InvalidKeyId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for KeyId {
    type Error = InvalidKeyId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> Self {
        id.0
    }
}

/// The key types keyward generates and imports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// RSA with a 2048-bit modulus: what `nvflare provision` creates, and the default.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    /// ECDSA over NIST P-256 (TLS only: NVFlare's identity signatures need RSA).
    #[serde(rename = "p-256")]
    EcP256,
}

impl KeyAlgorithm {
    /// Every algorithm, in the order the CLI lists them.
    pub const ALL: [KeyAlgorithm; 3] = [Self::Rsa2048, Self::Rsa3072, Self::EcP256];

    /// The name used in config, CLI and wire (`rsa-2048`, `rsa-3072`, `p-256`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::EcP256 => "p-256",
        }
    }

    /// RSA modulus size in bits, `None` for EC keys.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::EcP256 => None,
        }
    }

    /// Whether this is an RSA key.
    pub fn is_rsa(self) -> bool {
        self.rsa_bits().is_some()
    }

    /// The RSA algorithm for a modulus size, if keyward supports it.
    pub fn from_rsa_bits(bits: usize) -> Option<Self> {
        match bits {
            2048 => Some(Self::Rsa2048),
            3072 => Some(Self::Rsa3072),
            _ => None,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown algorithm `{s}`: expected rsa-2048, rsa-3072 or p-256"))
    }
}

/// The public half of a key, as a DER SubjectPublicKeyInfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// The key type.
    pub algorithm: KeyAlgorithm,
    /// DER-encoded SubjectPublicKeyInfo (RFC 5280).
    pub spki_der: Vec<u8>,
}

impl PublicKey {
    /// The SubjectPublicKeyInfo as PEM (`BEGIN PUBLIC KEY`).
    pub fn to_pem(&self) -> String {
        let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        pem::encode_config(&pem::Pem::new("PUBLIC KEY", self.spki_der.clone()), lf)
    }
}

/// What a store says about one of its keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The key's name.
    pub id: KeyId,
    /// The key type.
    pub algorithm: KeyAlgorithm,
    /// Whether the key was created inside the device (`false` for imported keys).
    pub generated_on_device: bool,
    /// Whether any client of the device can use the key without a secret: a TPM key with
    /// the empty auth value (made by keyward before keys had their own). Always `false`
    /// for PKCS#11 keys (the token login guards them).
    pub empty_auth: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_accepts_simple_names_and_rejects_path_tricks() {
        assert!(KeyId::new("site-1").is_ok());
        assert!(KeyId::new("a.b_c-9").is_ok());
        for bad in ["", "-x", "../etc", "a b", "a/b", "ä", &"x".repeat(65)] {
            assert!(KeyId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn algorithm_names_round_trip() {
        for a in KeyAlgorithm::ALL {
            assert_eq!(a.name().parse::<KeyAlgorithm>(), Ok(a));
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{}\"", a.name()));
        }
    }
}
