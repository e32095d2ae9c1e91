//! Wrapped key blobs on disk: one file `<key_dir>/<name>.tpmkey` per key, holding the
//! key's TPMT_PUBLIC (as tss-esapi marshals it; `tpm2_print -t TPMT_PUBLIC` reads it) and its
//! TPM2B_PRIVATE buffer. The private part is encrypted by the storage
//! primary (whose seed never leaves this TPM), so the file is useless on another machine;
//! it is still written 0600. Files are written atomically and never replaced: a temp file
//! in the same folder is fsynced and hard-linked to the final name (which fails if the
//! name exists), then the folder is fsynced.
//!
//! Layout (all lengths big-endian u16): `KWTPMKEY` `0x02` len public len private len auth,
//! where auth is the key's own auth value (see `auth.rs`). Version `0x01` (no auth part)
//! was written before keys had their own auth value, and still by keys made with a
//! configured `auth_file`; it is read as "no own auth value".

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use keyward_core::KeyId;
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};
use zeroize::Zeroizing;

use crate::auth::KeyAuth;
use crate::error::TpmError;

const MAGIC: &[u8; 8] = b"KWTPMKEY";
/// Without an own auth value (older keys, or a configured `auth_file`).
const VERSION_1: u8 = 1;
/// With the key's own auth value.
const VERSION_2: u8 = 2;
/// File name suffix of key blobs.
pub(crate) const SUFFIX: &str = ".tpmkey";

/// A key as the TPM wrapped it.
#[derive(Clone)]
pub(crate) struct KeyBlob {
    pub(crate) public: Public,
    pub(crate) private: Private,
    /// The key's own auth value; `None` for keys without one (see `auth.rs`).
    pub(crate) auth: Option<KeyAuth>,
}

/// The blob file of `id`.
pub(crate) fn path(key_dir: &Path, id: &KeyId) -> PathBuf {
    key_dir.join(format!("{id}{SUFFIX}"))
}

/// Creates `key_dir` (0700) if it does not exist.
pub(crate) fn ensure_dir(key_dir: &Path) -> Result<(), TpmError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(key_dir)
        .map_err(|source| TpmError::Io { path: key_dir.to_owned(), source })
}

fn encode(path: &Path, blob: &KeyBlob) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    let public = blob.public.marshall().map_err(TpmError::call("marshalling TPMT_PUBLIC"))?;
    let private = blob.private.value();
    let auth = blob.auth.as_ref().map(KeyAuth::bytes);
    let mut out = Zeroizing::new(Vec::with_capacity(15 + public.len() + private.len() + auth.map_or(0, <[u8]>::len)));
    out.extend_from_slice(MAGIC);
    out.push(if auth.is_some() { VERSION_2 } else { VERSION_1 });
    for part in [Some(public.as_slice()), Some(private), auth].into_iter().flatten() {
        let len = u16::try_from(part.len())
            .map_err(|_| TpmError::BadBlob { path: path.to_owned(), reason: "part longer than 65535 bytes" })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    Ok(out)
}

fn decode(path: &Path, bytes: &[u8]) -> Result<KeyBlob, TpmError> {
    let bad = |reason| TpmError::BadBlob { path: path.to_owned(), reason };
    let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(|| bad("not a keyward TPM key blob"))?;
    let (&version, mut rest) = rest.split_first().ok_or_else(|| bad("truncated"))?;
    let count = match version {
        VERSION_1 => 2,
        VERSION_2 => 3,
        _ => return Err(bad("unknown version")),
    };
    let mut parts = Vec::new();
    for _ in 0..count {
        let (len, tail) = rest.split_at_checked(2).ok_or_else(|| bad("truncated"))?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (part, tail) = tail.split_at_checked(len).ok_or_else(|| bad("truncated"))?;
        parts.push(part);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let public = Public::unmarshall(parts[0]).map_err(|_| bad("bad TPMT_PUBLIC"))?;
    let private = Private::try_from(parts[1].to_vec()).map_err(|_| bad("bad TPM2B_PRIVATE"))?;
    let auth = match parts.get(2) {
        None => None,
        Some(auth) if (1..=64).contains(&auth.len()) => Some(KeyAuth::from_bytes(auth)),
        Some(_) => return Err(bad("key auth value must be 1 to 64 bytes")),
    };
    Ok(KeyBlob { public, private, auth })
}

/// Reads the blob of `id`; `Ok(None)` when there is none.
pub(crate) fn read(key_dir: &Path, id: &KeyId) -> Result<Option<KeyBlob>, TpmError> {
    let path = path(key_dir, id);
    match std::fs::read(&path).map(Zeroizing::new) {
        Ok(bytes) => decode(&path, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TpmError::Io { path, source }),
    }
}

/// Writes a new blob for `id`. An existing file is never replaced: that is
/// `Err(Io { AlreadyExists })`.
pub(crate) fn write_new(key_dir: &Path, id: &KeyId, blob: &KeyBlob) -> Result<PathBuf, TpmError> {
    let target = path(key_dir, id);
    let bytes = encode(&target, blob)?;
    write_new_file(key_dir, &target, &bytes)?;
    Ok(target)
}

/// Writes `bytes` as the new file `target` in `dir`, mode 0600, complete or not at all: a
/// temp file is written and fsynced, hard-linked to `target` (which fails if it exists:
/// `Err(Io { AlreadyExists })`) and removed, and the folder fsynced.
pub(crate) fn write_new_file(dir: &Path, target: &Path, bytes: &[u8]) -> Result<(), TpmError> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}-{:016x}", std::process::id(), rand::random::<u64>()));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TpmError::Io { path, source }
    };
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    let linked = written.map_err(io(&tmp)).and_then(|()| std::fs::hard_link(&tmp, target).map_err(io(target)));
    let _ = std::fs::remove_file(&tmp);
    linked?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// The key names that have blobs in `key_dir`, sorted.
pub(crate) fn list(key_dir: &Path) -> Result<Vec<KeyId>, TpmError> {
    let io = |source| TpmError::Io { path: key_dir.to_owned(), source };
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(key_dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else { continue };
        if let Ok(id) = KeyId::new(stem) {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tss_esapi::interface_types::key_bits::RsaKeyBits;
    use tss_esapi::structures::RsaExponent;

    fn blob() -> KeyBlob {
        let public = tss_esapi::utils::create_unrestricted_encryption_decryption_rsa_public(
            RsaKeyBits::Rsa2048,
            RsaExponent::default(),
        )
        .unwrap();
        KeyBlob { public, private: Private::try_from(vec![7u8; 100]).unwrap(), auth: None }
    }

    #[test]
    fn round_trips_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let id = KeyId::new("site-1").unwrap();
        let path = write_new(dir.path(), &id, &blob()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = read(dir.path(), &id).unwrap().unwrap();
        assert_eq!(back.private.value(), &[7u8; 100]);
        assert_eq!(back.public, blob().public);
        let before = std::fs::read(&path).unwrap();
        let err = write_new(dir.path(), &id, &blob()).unwrap_err();
        assert!(matches!(&err, TpmError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(list(dir.path()).unwrap(), vec![id.clone()]);
        assert!(read(dir.path(), &KeyId::new("other").unwrap()).unwrap().is_none());
    }

    #[test]
    fn keeps_the_auth_value_in_version_2_and_reads_version_1_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let id = KeyId::new("sealed").unwrap();
        let auth = KeyAuth::random(tss_esapi::interface_types::algorithm::HashingAlgorithm::Sha256);
        let path = write_new(dir.path(), &id, &KeyBlob { auth: Some(auth.clone()), ..blob() }).unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[8], VERSION_2);
        assert_eq!(read(dir.path(), &id).unwrap().unwrap().auth, Some(auth));
        let old = write_new(dir.path(), &KeyId::new("old").unwrap(), &blob()).unwrap();
        assert_eq!(std::fs::read(&old).unwrap()[8], VERSION_1);
        assert!(read(dir.path(), &KeyId::new("old").unwrap()).unwrap().unwrap().auth.is_none());
    }

    #[test]
    fn rejects_foreign_and_truncated_files() {
        let p = Path::new("x");
        assert!(decode(p, b"-----BEGIN PRIVATE KEY-----").is_err());
        let mut bytes = encode(p, &blob()).unwrap();
        bytes.pop();
        assert!(decode(p, &bytes).is_err());
    }
}
