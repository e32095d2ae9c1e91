//! Installed certificates: `<state_dir>/certs/<key>.pem`, a leaf certificate (optionally
//! followed by its chain) that must belong to the key. Installing checks that the leaf's
//! public key is the key's, that it is in its validity period, and that any KeyUsage /
//! ExtendedKeyUsage allows what NVFlare requires (digitalSignature, and clientAuth for a
//! client's certificate or serverAuth for a server's, [`Usage`]); writes are
//! atomic (`files.rs`: a replaced file keeps its owner, group and mode; a symbolic link at
//! the path is refused), and a replaced certificate is kept as `<key>.previous.pem`. A
//! retired key's certificates move to `retired/<key>.<unix time>[.previous].pem`.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use keyward_core::{KeyId, PublicKey};
use x509_parser::prelude::*;

/// What the certificate's key authenticates, for the ExtendedKeyUsage check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Usage {
    /// A TLS client: an NVFlare site or admin (EKU, when present, allows clientAuth).
    #[default]
    Client,
    /// A TLS server: NVFlare's server behind `keyward server-tunnel` (EKU allows serverAuth).
    Server,
}

/// Why a certificate was not installed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// No `CERTIFICATE` PEM block.
    #[error("no PEM certificate found in `{0}`")]
    NoCertificate(String),
    /// The DER did not parse.
    #[error("certificate {index} in the file does not parse")]
    Malformed {
        /// 0 is the leaf.
        index: usize,
    },
    /// The leaf's key is another key.
    #[error("the certificate's public key is not the public key of `{key}`; it was issued for another key")]
    KeyMismatch {
        /// The key.
        key: KeyId,
    },
    /// Not valid now.
    #[error("the certificate is not valid now (valid from {not_before} to {not_after})")]
    NotValidNow {
        /// Start.
        not_before: String,
        /// End.
        not_after: String,
    },
    /// KU / EKU forbid client authentication.
    #[error("the certificate's {0}; NVFlare would reject it")]
    Usage(&'static str),
    /// File system error.
    #[error("cannot write `{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// What an install did.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// The same certificate was already installed.
    Unchanged,
    /// Newly written.
    New,
    /// Replaced an older one, kept at the given path.
    Replaced(PathBuf),
}

/// The certificate folder.
#[derive(Clone, Debug)]
pub struct CertStore {
    dir: PathBuf,
}

impl CertStore {
    /// Certificates in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Path of `key`'s certificate.
    pub fn path(&self, key: &KeyId) -> PathBuf {
        self.dir.join(format!("{key}.pem"))
    }

    /// The installed certificate (chain) of `key`, as PEM.
    pub fn get(&self, key: &KeyId) -> Option<String> {
        std::fs::read_to_string(self.path(key)).ok()
    }

    /// When `key`'s installed leaf certificate expires (its notAfter, Unix seconds); none
    /// without a certificate or when it does not parse.
    pub fn not_after(&self, key: &KeyId) -> Option<i64> {
        let text = self.get(key)?;
        let leaf = ::pem::parse_many(text.as_bytes()).ok()?.into_iter().find(|p| p.tag() == "CERTIFICATE")?;
        let (_, cert) = X509Certificate::from_der(leaf.contents()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// The validity (notBefore, notAfter; Unix seconds) of `key`'s installed leaf
    /// certificate; none without one or when it does not parse. Read at each call: a
    /// certificate installed while the agent runs counts from the next call on.
    pub fn validity(&self, key: &KeyId) -> Option<(i64, i64)> {
        pem_validity(self.get(key)?.as_bytes())
    }

    /// Keys with an installed certificate (`<key>.pem`; kept `.previous.pem` copies are not).
    pub fn installed(&self) -> Vec<KeyId> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut keys: Vec<KeyId> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| !name.ends_with(".previous.pem"))
            .filter_map(|name| KeyId::new(name.strip_suffix(".pem")?).ok())
            .collect();
        keys.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        keys
    }

    /// Checks `pem_text` as [`CertStore::install`] would, writing nothing: the leaf belongs
    /// to `public`, is valid now, and allows what NVFlare needs. Returns the certificate blocks.
    ///
    /// # Errors
    /// [`CertError`] naming what is wrong.
    pub fn check(
        key: &KeyId,
        public: &PublicKey,
        pem_text: &[u8],
        source: &Path,
    ) -> Result<Vec<::pem::Pem>, CertError> {
        Self::check_for(Usage::Client, key, public, pem_text, source)
    }

    /// [`CertStore::check`] for a certificate of `usage`.
    ///
    /// # Errors
    /// [`CertError`] naming what is wrong.
    pub fn check_for(
        usage: Usage,
        key: &KeyId,
        public: &PublicKey,
        pem_text: &[u8],
        source: &Path,
    ) -> Result<Vec<::pem::Pem>, CertError> {
        let blocks: Vec<::pem::Pem> = ::pem::parse_many(pem_text)
            .map_err(|_| CertError::NoCertificate(source.display().to_string()))?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .collect();
        let leaf = blocks.first().ok_or_else(|| CertError::NoCertificate(source.display().to_string()))?;
        for (index, block) in blocks.iter().enumerate() {
            X509Certificate::from_der(block.contents()).map_err(|_| CertError::Malformed { index })?;
        }
        let (_, cert) = X509Certificate::from_der(leaf.contents()).map_err(|_| CertError::Malformed { index: 0 })?;
        check_leaf(usage, key, public, &cert)?;
        Ok(blocks)
    }

    /// Checks and installs `pem_text` for `key` whose public key is `public`.
    ///
    /// # Errors
    /// [`CertError`] naming what is wrong; nothing is written then.
    pub fn install(
        &self,
        key: &KeyId,
        public: &PublicKey,
        pem_text: &[u8],
        source: &Path,
    ) -> Result<Installed, CertError> {
        self.install_for(Usage::Client, key, public, pem_text, source)
    }

    /// [`CertStore::install`] for a certificate of `usage`.
    ///
    /// # Errors
    /// [`CertError`] naming what is wrong; nothing is written then.
    pub fn install_for(
        &self,
        usage: Usage,
        key: &KeyId,
        public: &PublicKey,
        pem_text: &[u8],
        source: &Path,
    ) -> Result<Installed, CertError> {
        let blocks = Self::check_for(usage, key, public, pem_text, source)?;
        let lf = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
        let canonical: String = blocks.iter().map(|b| ::pem::encode_config(b, lf)).collect();
        let path = self.path(key);
        let io_err = |source| CertError::Io { path: path.clone(), source };
        let previous = std::fs::read_to_string(&path).ok();
        if previous.as_deref() == Some(canonical.as_str()) {
            return Ok(Installed::Unchanged);
        }
        // The folder is made here on purpose (one level, in the existing state dir); the
        // atomic writes below never create folders.
        match std::fs::DirBuilder::new().mode(0o755).create(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(CertError::Io { path: self.dir.clone(), source: e })
            }
            _ => {}
        }
        let mut outcome = Installed::New;
        if let Some(old) = previous {
            let keep = self.dir.join(format!("{key}.previous.pem"));
            crate::files::write_atomic(&keep, old.as_bytes(), 0o644, true).map_err(io_err)?;
            outcome = Installed::Replaced(keep);
        }
        crate::files::write_atomic(&path, canonical.as_bytes(), 0o644, true).map_err(io_err)?;
        Ok(outcome)
    }
}

impl CertStore {
    /// Moves the certificates of a retired `key` (`<key>.pem`, `<key>.previous.pem`) to
    /// `retired/`, under names that carry the time (a link, then an unlink: an existing
    /// file is never replaced). Returns where the certificate went, if there was one.
    ///
    /// # Errors
    /// [`CertError::Io`] naming the file.
    pub fn retire(&self, key: &KeyId) -> Result<Option<PathBuf>, CertError> {
        let retired = self.dir.join("retired");
        match std::fs::DirBuilder::new().mode(0o755).create(&retired) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(CertError::Io { path: retired, source: e })
            }
            _ => {}
        }
        let stamp = crate::renewal::now();
        let mut moved = None;
        for (from, to) in [
            (self.path(key), retired.join(format!("{key}.{stamp}.pem"))),
            (self.dir.join(format!("{key}.previous.pem")), retired.join(format!("{key}.{stamp}.previous.pem"))),
        ] {
            match std::fs::hard_link(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CertError::Io { path: to, source }),
            }
            std::fs::remove_file(&from).map_err(|source| CertError::Io { path: from.clone(), source })?;
            if moved.is_none() {
                moved = Some(to);
            }
        }
        Ok(moved)
    }
}

fn check_leaf(usage: Usage, key: &KeyId, public: &PublicKey, cert: &X509Certificate<'_>) -> Result<(), CertError> {
    if cert.public_key().raw != public.spki_der.as_slice() {
        return Err(CertError::KeyMismatch { key: key.clone() });
    }
    let validity = cert.validity();
    if !validity.is_valid() {
        return Err(CertError::NotValidNow {
            not_before: validity.not_before.to_string(),
            not_after: validity.not_after.to_string(),
        });
    }
    if let Ok(Some(ku)) = cert.key_usage() {
        if !ku.value.digital_signature() {
            return Err(CertError::Usage("KeyUsage lacks digitalSignature"));
        }
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        match usage {
            Usage::Client if !eku.value.client_auth && !eku.value.any => {
                return Err(CertError::Usage("ExtendedKeyUsage lacks clientAuth"));
            }
            Usage::Server if !eku.value.server_auth && !eku.value.any => {
                return Err(CertError::Usage("ExtendedKeyUsage lacks serverAuth"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The validity (notBefore, notAfter; Unix seconds) of the first certificate in `pem_text`;
/// none when there is none or it does not parse.
pub fn pem_validity(pem_text: &[u8]) -> Option<(i64, i64)> {
    let leaf = ::pem::parse_many(pem_text).ok()?.into_iter().find(|p| p.tag() == "CERTIFICATE")?;
    let (_, cert) = X509Certificate::from_der(leaf.contents()).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}
