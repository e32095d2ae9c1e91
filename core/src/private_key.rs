//! Parsing an existing PEM private key for a one-time import into a device (how a site
//! migrates `client.key` from its NVFlare startup kit). Accepts PKCS#1 (`RSA PRIVATE KEY`,
//! what `nvflare provision` writes), PKCS#8 (`PRIVATE KEY`) and SEC1 (`EC PRIVATE KEY`).
//! Every secret component lives in [`Zeroizing`] buffers.

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use zeroize::Zeroizing;

use crate::key::{KeyAlgorithm, PublicKey};

/// The components of an RSA private key, big-endian, as PKCS#11 `CKO_PRIVATE_KEY` wants them.
pub struct RsaComponents {
    /// Modulus.
    pub modulus: Vec<u8>,
    /// Public exponent.
    pub public_exponent: Vec<u8>,
    /// Private exponent.
    pub private_exponent: Zeroizing<Vec<u8>>,
    /// First prime.
    pub prime_1: Zeroizing<Vec<u8>>,
    /// Second prime.
    pub prime_2: Zeroizing<Vec<u8>>,
    /// `d mod (p-1)`.
    pub exponent_1: Zeroizing<Vec<u8>>,
    /// `d mod (q-1)`.
    pub exponent_2: Zeroizing<Vec<u8>>,
    /// `q^-1 mod p`.
    pub coefficient: Zeroizing<Vec<u8>>,
}

/// A private key read from a file, ready for import.
pub enum PrivateKeyMaterial {
    /// An RSA key.
    Rsa {
        /// Its components.
        parts: RsaComponents,
        /// Its public key.
        public: PublicKey,
    },
    /// A P-256 key.
    EcP256 {
        /// The 32-byte private scalar.
        scalar: Zeroizing<Vec<u8>>,
        /// Uncompressed public point (65 bytes, `04 || X || Y`).
        point: Vec<u8>,
        /// Its public key.
        public: PublicKey,
    },
}

impl std::fmt::Debug for PrivateKeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKeyMaterial({}, <redacted>)", self.public_key().algorithm)
    }
}

/// Why a private key file could not be imported. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum PrivateKeyError {
    /// Not PEM.
    #[error("not a PEM file")]
    NotPem,
    /// A PEM type keyward does not import.
    #[error(
        "PEM block `{0}` is not an unencrypted private key (expected RSA PRIVATE KEY, PRIVATE KEY or EC PRIVATE KEY)"
    )]
    UnsupportedPem(String),
    /// Parsed, but of a kind keyward does not hold.
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    /// The DER inside did not parse.
    #[error("malformed private key")]
    Malformed,
}

impl PrivateKeyMaterial {
    /// Parses a PEM private key.
    ///
    /// # Errors
    /// [`PrivateKeyError`] for anything but an unencrypted RSA-2048/3072 or P-256 key.
    pub fn from_pem(pem_text: &[u8]) -> Result<Self, PrivateKeyError> {
        let block = pem::parse(pem_text).map_err(|_| PrivateKeyError::NotPem)?;
        let der = Zeroizing::new(block.contents().to_vec());
        match block.tag() {
            "RSA PRIVATE KEY" => {
                let key = rsa::RsaPrivateKey::from_pkcs1_der(&der).map_err(|_| PrivateKeyError::Malformed)?;
                Self::from_rsa(&key)
            }
            "EC PRIVATE KEY" => {
                let key = p256::SecretKey::from_sec1_der(&der)
                    .map_err(|_| PrivateKeyError::UnsupportedKey("EC key that is not P-256, or malformed".into()))?;
                Self::from_p256(&key)
            }
            "PRIVATE KEY" => {
                if let Ok(key) = rsa::RsaPrivateKey::from_pkcs8_der(&der) {
                    return Self::from_rsa(&key);
                }
                let key = p256::SecretKey::from_pkcs8_der(&der)
                    .map_err(|_| PrivateKeyError::UnsupportedKey("PKCS#8 key that is neither RSA nor P-256".into()))?;
                Self::from_p256(&key)
            }
            other => Err(PrivateKeyError::UnsupportedPem(other.to_owned())),
        }
    }

    fn from_rsa(key: &rsa::RsaPrivateKey) -> Result<Self, PrivateKeyError> {
        let bits = key.n().bits();
        let algorithm = KeyAlgorithm::from_rsa_bits(bits).ok_or_else(|| {
            PrivateKeyError::UnsupportedKey(format!("RSA-{bits} (keyward holds RSA-2048 and RSA-3072)"))
        })?;
        let primes = key.primes();
        let (Some(p), Some(q), Some(dp), Some(dq), Some(qinv)) =
            (primes.first(), primes.get(1), key.dp(), key.dq(), key.crt_coefficient())
        else {
            return Err(PrivateKeyError::UnsupportedKey("RSA key without two primes and CRT values".into()));
        };
        if primes.len() != 2 {
            return Err(PrivateKeyError::UnsupportedKey("multi-prime RSA".into()));
        }
        let secret = |n: &rsa::BigUint| Zeroizing::new(n.to_bytes_be());
        let spki_der = key.to_public_key().to_public_key_der().map_err(|_| PrivateKeyError::Malformed)?.into_vec();
        Ok(Self::Rsa {
            parts: RsaComponents {
                modulus: key.n().to_bytes_be(),
                public_exponent: key.e().to_bytes_be(),
                private_exponent: secret(key.d()),
                prime_1: secret(p),
                prime_2: secret(q),
                exponent_1: secret(dp),
                exponent_2: secret(dq),
                coefficient: secret(&qinv),
            },
            public: PublicKey { algorithm, spki_der },
        })
    }

    fn from_p256(key: &p256::SecretKey) -> Result<Self, PrivateKeyError> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let public_key = key.public_key();
        let spki_der = public_key.to_public_key_der().map_err(|_| PrivateKeyError::Malformed)?.into_vec();
        Ok(Self::EcP256 {
            scalar: Zeroizing::new(key.to_bytes().to_vec()),
            point: public_key.to_encoded_point(false).as_bytes().to_vec(),
            public: PublicKey { algorithm: KeyAlgorithm::EcP256, spki_der },
        })
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        match self {
            Self::Rsa { public, .. } | Self::EcP256 { public, .. } => public,
        }
    }
}
