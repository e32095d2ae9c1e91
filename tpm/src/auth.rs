//! A key's own auth value: random per key, so no other TPM client can use the key, neither
//! at its persistent handle nor as an object the agent has loaded.
//!
//! - Made here from the OS RNG, as long as the key's name algorithm allows (32 bytes for
//!   SHA-256, the TPM refuses longer), when a key is generated or imported without a
//!   configured `auth_file`.
//! - Kept for the agent only: inside the key's blob (`blob.rs`, format version 2), or for a
//!   key at a persistent handle in `<key_dir>/<name>.tpmauth` (raw bytes, mode 0600,
//!   created with O_EXCL through a temp file and a hard link, never replaced; read without
//!   following a symlink).
//! - Held in [`Zeroizing`] memory; its `Debug` is redacted; it never reaches a log or error.
//!
//! Keys made by keyward before this (no own auth value, no configured `auth_file`) still
//! work with the empty auth value and are flagged `auth: none` by `key list` and `status`.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use keyward_core::KeyId;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::Auth;
use zeroize::Zeroizing;

use crate::error::TpmError;

/// File name suffix of the auth value of a key at a persistent handle.
pub(crate) const SUFFIX: &str = ".tpmauth";

/// The auth value of one key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct KeyAuth(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for KeyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyAuth(<redacted>)")
    }
}

/// The longest auth value a key with this name algorithm takes (its digest size).
fn max_len(name_alg: HashingAlgorithm) -> usize {
    match name_alg {
        HashingAlgorithm::Sha1 => 20,
        HashingAlgorithm::Sha384 | HashingAlgorithm::Sha3_384 => 48,
        HashingAlgorithm::Sha512 | HashingAlgorithm::Sha3_512 => 64,
        _ => 32,
    }
}

impl KeyAuth {
    /// A fresh random auth value, as long as a key with name algorithm `name_alg` takes. It
    /// never ends in a zero byte: a TPM drops trailing zero octets of an auth value (TPM 2.0
    /// Part 1, authorization values) and a client may or may not, so such a value would
    /// depend on the client.
    pub(crate) fn random(name_alg: HashingAlgorithm) -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; max_len(name_alg)]);
        while bytes.last() == Some(&0) {
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        }
        Self(bytes)
    }

    /// From stored bytes.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// The raw bytes (to store them).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// As tss-esapi takes it (tss-esapi's `Auth` wipes itself on drop).
    pub(crate) fn to_tpm(&self) -> Result<Auth, TpmError> {
        Auth::try_from(self.0.to_vec()).map_err(TpmError::call("building key auth value"))
    }
}

/// The auth file of the key `id` at a persistent handle.
pub(crate) fn path(key_dir: &Path, id: &KeyId) -> PathBuf {
    key_dir.join(format!("{id}{SUFFIX}"))
}

/// Reads the auth value of the persistent key `id`; `Ok(None)` when it has none (a key
/// made by an older keyward). A symlink, a non-regular file, a file others can read, or an
/// empty or overlong one is refused.
pub(crate) fn read(key_dir: &Path, id: &KeyId) -> Result<Option<KeyAuth>, TpmError> {
    let path = path(key_dir, id);
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(&path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(TpmError::Io { path, source }),
    };
    let meta = file.metadata().map_err(|source| TpmError::Io { path: path.clone(), source })?;
    if !meta.file_type().is_file() || meta.mode() & 0o077 != 0 {
        return Err(TpmError::BadBlob { path, reason: "not a regular file of mode 0600 (key auth value)" });
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.by_ref().take(65).read_to_end(&mut bytes).map_err(|source| TpmError::Io { path: path.clone(), source })?;
    if bytes.is_empty() || bytes.len() > 64 {
        return Err(TpmError::BadBlob { path, reason: "key auth value must be 1 to 64 bytes" });
    }
    Ok(Some(KeyAuth::from_bytes(&bytes)))
}

/// Writes the auth value of the persistent key `id`; an existing file is never replaced
/// (`Err(Io { AlreadyExists })`).
pub(crate) fn write_new(key_dir: &Path, id: &KeyId, auth: &KeyAuth) -> Result<PathBuf, TpmError> {
    let target = path(key_dir, id);
    crate::blob::write_new_file(key_dir, &target, auth.bytes())?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn random() -> KeyAuth {
        KeyAuth::random(HashingAlgorithm::Sha256)
    }

    #[test]
    fn random_values_fill_the_name_digest_and_differ() {
        let (a, b) = (random(), random());
        assert_eq!(a.bytes().len(), 32);
        assert!((0..200).all(|_| random().bytes().last() != Some(&0)), "ends in a zero byte");
        assert_eq!(KeyAuth::random(HashingAlgorithm::Sha384).bytes().len(), 48);
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "KeyAuth(<redacted>)");
    }

    #[test]
    fn files_are_private_never_replaced_and_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let id = KeyId::new("site-1").unwrap();
        assert!(read(dir.path(), &id).unwrap().is_none());
        let auth = random();
        let path = write_new(dir.path(), &id, &auth).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read(dir.path(), &id).unwrap().unwrap(), auth);
        let err = write_new(dir.path(), &id, &random()).unwrap_err();
        assert!(matches!(&err, TpmError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists));
        assert_eq!(read(dir.path(), &id).unwrap().unwrap(), auth);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read(dir.path(), &id).is_err(), "a file others can read is refused");
        let other = KeyId::new("other").unwrap();
        std::os::unix::fs::symlink(&path, super::path(dir.path(), &other)).unwrap();
        assert!(read(dir.path(), &other).is_err(), "a symlink is not followed");
    }
}
