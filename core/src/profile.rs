//! Signing profiles: what a signature is for, named explicitly, so the same key can sign
//! NVFlare identity challenges (PSS, maximum salt) and TLS handshakes (PSS, salt = hash
//! length) without a caller picking padding parameters. A backend maps a profile to exactly
//! one mechanism; a profile the key cannot do is an error, never a fallback.
//!
//! NVFlare's rule comes from `nvflare/lighter/utils.py::sign_content`:
//! `PSS(mgf=MGF1(SHA256), salt_length=PSS.MAX_LENGTH)` with `SHA256`.

use std::fmt;
use std::str::FromStr;

use crate::key::KeyAlgorithm;

/// The hash a profile signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
}

impl HashAlgorithm {
    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
        }
    }

    /// Hashes `msg`.
    pub fn digest(self, msg: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Self::Sha256 => sha2::Sha256::digest(msg).to_vec(),
            Self::Sha384 => sha2::Sha384::digest(msg).to_vec(),
        }
    }
}

/// A TLS signature scheme (RFC 8446 §4.2.3) that keyward keys can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsScheme {
    /// `rsa_pss_rsae_sha256`: PSS, MGF1-SHA256, salt = 32 bytes.
    RsaPssSha256,
    /// `rsa_pss_rsae_sha384`: PSS, MGF1-SHA384, salt = 48 bytes.
    RsaPssSha384,
    /// `rsa_pkcs1_sha256` (TLS 1.2 only).
    RsaPkcs1Sha256,
    /// `rsa_pkcs1_sha384` (TLS 1.2 only).
    RsaPkcs1Sha384,
    /// `ecdsa_secp256r1_sha256`, DER-encoded `ECDSA-Sig-Value`.
    EcdsaP256Sha256,
}

impl TlsScheme {
    /// Every scheme, in preference order.
    pub const ALL: [TlsScheme; 5] =
        [Self::EcdsaP256Sha256, Self::RsaPssSha256, Self::RsaPssSha384, Self::RsaPkcs1Sha256, Self::RsaPkcs1Sha384];

    /// The hash the scheme uses.
    pub fn hash(self) -> HashAlgorithm {
        match self {
            Self::RsaPssSha256 | Self::RsaPkcs1Sha256 | Self::EcdsaP256Sha256 => HashAlgorithm::Sha256,
            Self::RsaPssSha384 | Self::RsaPkcs1Sha384 => HashAlgorithm::Sha384,
        }
    }

    /// The schemes a key of this algorithm can produce, in preference order.
    pub fn for_algorithm(alg: KeyAlgorithm) -> Vec<TlsScheme> {
        Self::ALL.into_iter().filter(|s| SignProfile::Tls(*s).supports(alg)).collect()
    }
}

/// What a signature is for. The backend chooses the mechanism; the caller never sends one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignProfile {
    /// NVFlare identity signatures: RSA-PSS, SHA-256, MGF1-SHA-256, salt = maximum
    /// (`emLen - hLen - 2`: 222 bytes for RSA-2048).
    Nvflare,
    /// A TLS handshake signature with the scheme rustls (or another TLS stack) negotiated.
    Tls(TlsScheme),
}

/// How an RSA signature is padded (what the backend must do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsaPadding {
    /// EMSA-PSS with MGF1 over the same hash and this salt length.
    Pss {
        /// Salt length in bytes.
        salt_len: usize,
    },
    /// EMSA-PKCS1-v1_5.
    Pkcs1v15,
}

/// The exact operation a profile asks of a key: hash, padding and encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignMechanism {
    /// RSA signature over `hash(msg)`.
    Rsa {
        /// Message hash.
        hash: HashAlgorithm,
        /// Padding.
        padding: RsaPadding,
    },
    /// ECDSA P-256 over SHA-256, DER-encoded.
    EcdsaP256Sha256,
}

impl SignProfile {
    /// Whether a key of `alg` can produce this profile.
    pub fn supports(self, alg: KeyAlgorithm) -> bool {
        match self {
            Self::Nvflare => alg.is_rsa(),
            Self::Tls(TlsScheme::EcdsaP256Sha256) => alg == KeyAlgorithm::EcP256,
            Self::Tls(_) => alg.is_rsa(),
        }
    }

    /// The exact mechanism for a key of `alg`.
    ///
    /// # Errors
    /// [`crate::StoreError::Unsupported`] when the key cannot produce this profile.
    pub fn mechanism(self, alg: KeyAlgorithm) -> Result<SignMechanism, crate::StoreError> {
        if !self.supports(alg) {
            return Err(crate::StoreError::Unsupported { what: format!("profile `{self}` with a {alg} key") });
        }
        let rsa = |hash, padding| SignMechanism::Rsa { hash, padding };
        Ok(match self {
            Self::Nvflare => {
                let bits = alg.rsa_bits().unwrap_or(2048);
                let salt_len = crate::signature::pss_max_salt_len(bits, HashAlgorithm::Sha256.output_len());
                rsa(HashAlgorithm::Sha256, RsaPadding::Pss { salt_len })
            }
            Self::Tls(TlsScheme::EcdsaP256Sha256) => SignMechanism::EcdsaP256Sha256,
            Self::Tls(s @ (TlsScheme::RsaPssSha256 | TlsScheme::RsaPssSha384)) => {
                rsa(s.hash(), RsaPadding::Pss { salt_len: s.hash().output_len() })
            }
            Self::Tls(s) => rsa(s.hash(), RsaPadding::Pkcs1v15),
        })
    }

    /// The wire and CLI name (`nvflare`, `tls-rsa-pss-sha256`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Nvflare => "nvflare",
            Self::Tls(TlsScheme::RsaPssSha256) => "tls-rsa-pss-sha256",
            Self::Tls(TlsScheme::RsaPssSha384) => "tls-rsa-pss-sha384",
            Self::Tls(TlsScheme::RsaPkcs1Sha256) => "tls-rsa-pkcs1-sha256",
            Self::Tls(TlsScheme::RsaPkcs1Sha384) => "tls-rsa-pkcs1-sha384",
            Self::Tls(TlsScheme::EcdsaP256Sha256) => "tls-ecdsa-p256-sha256",
        }
    }

    /// Resolves a requested profile name; plain `tls` means the key's preferred TLS 1.3
    /// scheme (`tls-rsa-pss-sha256` for RSA, `tls-ecdsa-p256-sha256` for P-256).
    ///
    /// # Errors
    /// A message naming the unknown profile.
    pub fn resolve(name: &str, alg: KeyAlgorithm) -> Result<Self, String> {
        if name == "tls" {
            let scheme = if alg.is_rsa() { TlsScheme::RsaPssSha256 } else { TlsScheme::EcdsaP256Sha256 };
            return Ok(Self::Tls(scheme));
        }
        name.parse()
    }
}

impl fmt::Display for SignProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SignProfile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        std::iter::once(Self::Nvflare)
            .chain(TlsScheme::ALL.into_iter().map(Self::Tls))
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown profile `{s}`: expected nvflare, tls, or tls-<scheme> (see docs/protocol.md)")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvflare_profile_uses_maximum_salt() {
        let m = SignProfile::Nvflare.mechanism(KeyAlgorithm::Rsa2048).unwrap();
        assert_eq!(m, SignMechanism::Rsa { hash: HashAlgorithm::Sha256, padding: RsaPadding::Pss { salt_len: 222 } });
        let m = SignProfile::Nvflare.mechanism(KeyAlgorithm::Rsa3072).unwrap();
        assert_eq!(m, SignMechanism::Rsa { hash: HashAlgorithm::Sha256, padding: RsaPadding::Pss { salt_len: 350 } });
    }

    #[test]
    fn tls_pss_uses_hash_length_salt() {
        let p = SignProfile::Tls(TlsScheme::RsaPssSha384);
        assert_eq!(
            p.mechanism(KeyAlgorithm::Rsa2048).unwrap(),
            SignMechanism::Rsa { hash: HashAlgorithm::Sha384, padding: RsaPadding::Pss { salt_len: 48 } }
        );
    }

    #[test]
    fn profile_a_key_cannot_do_is_an_error() {
        assert!(SignProfile::Nvflare.mechanism(KeyAlgorithm::EcP256).is_err());
        assert!(SignProfile::Tls(TlsScheme::EcdsaP256Sha256).mechanism(KeyAlgorithm::Rsa2048).is_err());
    }

    #[test]
    fn names_round_trip_and_tls_resolves_per_key() {
        for s in TlsScheme::ALL {
            let p = SignProfile::Tls(s);
            assert_eq!(p.name().parse::<SignProfile>(), Ok(p));
        }
        assert_eq!(SignProfile::resolve("tls", KeyAlgorithm::EcP256), Ok(SignProfile::Tls(TlsScheme::EcdsaP256Sha256)));
        assert_eq!(SignProfile::resolve("tls", KeyAlgorithm::Rsa2048), Ok(SignProfile::Tls(TlsScheme::RsaPssSha256)));
        assert!("pss".parse::<SignProfile>().is_err());
    }
}
