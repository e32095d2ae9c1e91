//! [`BackendJob`]: every thing the agent asks of a key store, as data a reader can
//! enumerate, and [`BackendJob::run`], the one place that calls a [`KeyStore`]. A job runs
//! on whatever thread holds a session (`pool.rs`): the connection's own thread for client
//! requests, the side thread (`side.rs`) for the health check and `status`'s key list.

use keyward_core::{KeyId, KeyInfo, KeyStore, PublicKey, SignProfile, StoreError, TlsScheme};
use zeroize::Zeroizing;

/// Which profile a `sign` job uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProfileChoice {
    /// Named by the request (`nvflare`, `tls-<scheme>`), already admitted by the policy.
    Exact(SignProfile),
    /// Plain `tls`: resolved from the key's algorithm, then allowed only when it is one of
    /// these (the policy decided them before the job; the store knows no policy).
    Tls {
        /// The resolved profiles the key's policy allows.
        allowed: Vec<SignProfile>,
    },
}

impl ProfileChoice {
    /// The profiles plain `tls` may resolve to.
    pub const TLS_CANDIDATES: [SignProfile; 2] =
        [SignProfile::Tls(TlsScheme::RsaPssSha256), SignProfile::Tls(TlsScheme::EcdsaP256Sha256)];
}

/// One backend operation.
#[derive(Debug)]
pub enum BackendJob<'a> {
    /// The keys in the store.
    ListKeys,
    /// A key's public key.
    PublicKey {
        /// The key.
        key: &'a KeyId,
    },
    /// Sign a message.
    Sign {
        /// The key.
        key: &'a KeyId,
        /// How the profile is chosen.
        profile: ProfileChoice,
        /// The message (not a digest).
        data: &'a [u8],
    },
    /// Decrypt an RSA-OAEP ciphertext, after the range check against the key's modulus.
    Decrypt {
        /// The key.
        key: &'a KeyId,
        /// The ciphertext.
        data: &'a [u8],
    },
    /// The cheap device check of the health monitor.
    Check,
    /// Destroy a key for good (`retire_key`, after its audit record).
    Destroy {
        /// The key.
        key: &'a KeyId,
    },
}

/// What a job gives back; each job has exactly one kind of output. No `Debug`: a
/// plaintext must not reach a log by accident.
pub enum JobOutput {
    /// From [`BackendJob::ListKeys`].
    Keys(Vec<KeyInfo>),
    /// From [`BackendJob::PublicKey`].
    PublicKey(PublicKey),
    /// From [`BackendJob::Sign`]: the signature and the profile it was made with.
    Signature(Vec<u8>, SignProfile),
    /// From [`BackendJob::Sign`] with plain `tls`: the key resolves to a profile its policy
    /// does not allow; the key was not used.
    ProfileRefused(SignProfile),
    /// From [`BackendJob::Decrypt`].
    Plaintext(Zeroizing<Vec<u8>>),
    /// From [`BackendJob::Check`].
    Checked,
    /// From [`BackendJob::Destroy`].
    Destroyed,
}

impl JobOutput {
    /// The output's kind, for logs (never its content: a plaintext stays out of them).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Keys(_) => "keys",
            Self::PublicKey(_) => "public_key",
            Self::Signature(..) => "signature",
            Self::ProfileRefused(_) => "profile_refused",
            Self::Plaintext(_) => "plaintext",
            Self::Checked => "checked",
            Self::Destroyed => "destroyed",
        }
    }
}

impl BackendJob<'_> {
    /// The job's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ListKeys => "list_keys",
            Self::PublicKey { .. } => "public_key",
            Self::Sign { .. } => "sign",
            Self::Decrypt { .. } => "decrypt",
            Self::Check => "check",
            Self::Destroy { .. } => "destroy",
        }
    }

    /// Runs the job on `store`.
    ///
    /// # Errors
    /// The store's error.
    pub fn run(self, store: &mut dyn KeyStore) -> Result<JobOutput, StoreError> {
        Ok(match self {
            Self::ListKeys => JobOutput::Keys(store.list()?),
            Self::PublicKey { key } => JobOutput::PublicKey(store.public_key(key)?),
            Self::Sign { key, profile, data } => {
                let profile = match profile {
                    ProfileChoice::Exact(p) => p,
                    ProfileChoice::Tls { allowed } => {
                        let alg = store.public_key(key)?.algorithm;
                        let p = SignProfile::resolve("tls", alg).map_err(|what| StoreError::InvalidInput { what })?;
                        if !allowed.contains(&p) {
                            return Ok(JobOutput::ProfileRefused(p));
                        }
                        p
                    }
                };
                JobOutput::Signature(store.sign(key, profile, data)?, profile)
            }
            Self::Decrypt { key, data } => {
                // The range check runs here, once for every backend, before the device sees the input.
                let public = store.public_key(key)?;
                keyward_core::oaep::check_ciphertext(key, &public, data)?;
                JobOutput::Plaintext(store.decrypt(key, data)?)
            }
            Self::Check => {
                store.check()?;
                JobOutput::Checked
            }
            Self::Destroy { key } => {
                store.destroy(key)?;
                JobOutput::Destroyed
            }
        })
    }
}
