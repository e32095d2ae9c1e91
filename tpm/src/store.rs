//! [`TpmStore`]: the [`KeyStore`] over the one [`Connection`], owned by the one worker
//! thread. Keys are wrapped blobs in `key_dir`, or keys at persistent handles bound to
//! names in the config. When the TCTI reports a lost connection (swtpm killed), the
//! connection is dropped and the next request reconnects; when the TPM no longer holds our
//! objects (another client flushed them, or a reset), the request reconnects and repeats once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_core::private_key::PrivateKeyMaterial;
use keyward_core::{KeyAlgorithm, KeyId, KeyInfo, KeyStore, PublicKey, SignProfile, StoreError, StoreInfo};
use tss_esapi::structures::Public;
use zeroize::Zeroizing;

use crate::auth::KeyAuth;
use crate::backend::Shared;
use crate::blob::{self, KeyBlob};
use crate::connection::{Connection, StoredKey};
use crate::error::{Failure, TpmError};
use crate::sign::SignRequest;

/// The TPM [`KeyStore`] for the one worker thread.
pub struct TpmStore {
    shared: Arc<Shared>,
    conn: Option<Connection>,
    /// Set when the TPM rejected the auth value: it is not offered again (each failure
    /// counts towards the TPM's dictionary-attack lockout), until the agent restarts.
    auth_rejected: bool,
    /// After a failed connect: no new attempt before this instant (clients hammering a
    /// missing TPM get the last error at once), and that error.
    retry_connect_at: Option<(Instant, String)>,
    /// Keys looked up before (see [`TpmStore::stored`]).
    cache: HashMap<KeyId, (Option<FileStamp>, StoredKey)>,
}

/// Which file a blob was read from, and its state then: a replaced or rewritten file differs.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        Self { dev: meta.dev(), ino: meta.ino(), len: meta.len(), mtime_ns }
    }
}

/// At most one connect attempt per this interval while the TPM is unreachable.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

impl std::fmt::Debug for TpmStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmStore")
            .field("tcti", &self.shared.config.tcti)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl TpmStore {
    pub(crate) fn new(shared: Arc<Shared>, conn: Option<Connection>) -> Self {
        Self { shared, conn, auth_rejected: false, retry_connect_at: None, cache: HashMap::new() }
    }

    /// Runs `op` on the connection (connecting first if needed) and classifies its error.
    /// A lost connection is forgotten so the next call reconnects; a stale handle (another
    /// client flushed our primary or key, or the TPM was reset) reconnects at once and
    /// repeats `op` once: signing, decrypting and creating a key are safe to repeat.
    pub(crate) fn run<T>(
        &mut self,
        mut op: impl FnMut(&mut Connection) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut repeated = false;
        loop {
            let e = match op(self.connection()?) {
                Ok(value) => return Ok(value),
                Err(Failure::Store(e)) => return Err(e),
                Err(Failure::Tpm(e)) => e,
            };
            let tpm = self.shared.config.tcti.to_string();
            if e.is_stale_handle() && !repeated {
                tracing::warn!(tpm = %tpm, error = %keyward_core::error::chain(&e), "TPM objects were flushed under us; reconnecting and repeating once");
                self.conn = None;
                repeated = true;
                continue;
            }
            if e.is_connection_lost() {
                tracing::warn!(tpm = %tpm, error = %keyward_core::error::chain(&e), "lost the TPM connection; will reconnect");
                self.conn = None;
            }
            let err = e.into_store_error(&tpm);
            if matches!(err, StoreError::PinIncorrect { .. }) {
                tracing::error!(tpm = %tpm, "the TPM rejected the key auth value; not offering it again until restart");
                self.auth_rejected = true;
            }
            return Err(err);
        }
    }

    /// The open connection; without one, connects first, at most once per
    /// [`RECONNECT_INTERVAL`] while the TPM is unreachable (in between, the last error).
    fn connection(&mut self) -> Result<&mut Connection, StoreError> {
        let slot = match &mut self.conn {
            Some(conn) => return Ok(conn),
            slot @ None => slot,
        };
        let tpm = self.shared.config.tcti.to_string();
        if let Some((at, last)) = &self.retry_connect_at {
            if Instant::now() < *at {
                let what = format!("TPM `{tpm}` (last connect failed: {last}; retrying at most once per second)");
                return Err(StoreError::Unavailable { what, source: None });
            }
        }
        match Connection::open(&self.shared) {
            Ok(conn) => {
                tracing::info!(tpm = %tpm, "connected to TPM");
                self.retry_connect_at = None;
                // A persistent key's public area is read again from the (maybe new) TPM.
                self.cache.retain(|_, (stamp, _)| stamp.is_some());
                Ok(slot.insert(conn))
            }
            Err(e) => {
                self.retry_connect_at = Some((Instant::now() + RECONNECT_INTERVAL, keyward_core::error::chain(&e)));
                Err(e.into_store_error(&tpm))
            }
        }
    }

    /// Where `id` is kept: at its configured persistent handle, else in its blob file. The
    /// answer is cached: a blob until its file changes (one `stat` per request), a
    /// persistent key's public area until the connection is renewed.
    pub(crate) fn stored(&mut self, id: &KeyId) -> Result<StoredKey, StoreError> {
        if let Some(&handle) = self.shared.config.persistent.get(id) {
            if let Some((None, key)) = self.cache.get(id) {
                return Ok(key.clone());
            }
            let public = self.run(|conn| {
                if !crate::persistent::is_occupied(&mut conn.ctx, handle)? {
                    return Err(Failure::Store(StoreError::KeyNotFound { id: id.clone() }));
                }
                Ok(crate::persistent::read_public(&mut conn.ctx, handle)?)
            })?;
            let auth = crate::auth::read(&self.shared.config.key_dir, id)
                .map_err(|e| e.into_store_error(&self.shared.config.tcti.to_string()))?;
            let key = StoredKey::Persistent { handle, public, auth };
            self.warn_if_open(id, &key);
            self.cache.insert(id.clone(), (None, key.clone()));
            return Ok(key);
        }
        let tpm = || self.shared.config.tcti.to_string();
        let path = blob::path(&self.shared.config.key_dir, id);
        let stamp = match std::fs::metadata(&path) {
            Ok(meta) => FileStamp::of(&meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::KeyNotFound { id: id.clone() })
            }
            Err(source) => return Err(TpmError::Io { path, source }.into_store_error(&tpm())),
        };
        if let Some((Some(cached), key)) = self.cache.get(id) {
            if *cached == stamp {
                return Ok(key.clone());
            }
        }
        let blob = blob::read(&self.shared.config.key_dir, id)
            .map_err(|e| e.into_store_error(&tpm()))?
            .ok_or_else(|| StoreError::KeyNotFound { id: id.clone() })?;
        let key = StoredKey::Wrapped(blob);
        self.warn_if_open(id, &key);
        self.cache.insert(id.clone(), (Some(stamp), key.clone()));
        Ok(key)
    }

    /// Makes a new key with `make` and keeps it, never replacing an existing one: at its
    /// configured persistent handle if that is free, else as a blob linked into place
    /// atomically (a race between two creators leaves the first). The name is checked
    /// before the TPM is asked. Without a configured `auth_file` the key gets its own random
    /// auth value, kept in its blob or, for a persistent key, in its `.tpmauth` file, which
    /// is written before the key is made persistent (never a persistent key without it).
    fn create_key(
        &mut self,
        id: &KeyId,
        what: &'static str,
        make: impl Fn(&mut Connection, Option<tss_esapi::structures::Auth>, bool) -> Result<KeyBlob, TpmError>,
    ) -> Result<KeyInfo, StoreError> {
        let tpm = self.shared.config.tcti.to_string();
        let configured = self.auth()?;
        let own = configured.is_none().then(|| KeyAuth::random(crate::keygen::NAME_ALG));
        let auth = match &own {
            Some(own) => Some(own.to_tpm().map_err(|e| e.into_store_error(&tpm))?),
            None => configured,
        };
        let key_dir = self.shared.config.key_dir.clone();
        if let Some(&handle) = self.shared.config.persistent.get(id) {
            let occupied = || StoreError::KeyExists {
                id: id.clone(),
                detail: format!("persistent handle {handle:#010x} is occupied (keyward never evicts a handle)"),
            };
            if self.run(|conn| Ok(crate::persistent::is_occupied(&mut conn.ctx, handle)?))? {
                return Err(occupied());
            }
            let auth_file = match &own {
                None => None,
                Some(own) => match crate::auth::write_new(&key_dir, id, own) {
                    Ok(path) => Some(path),
                    Err(TpmError::Io { source, path }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Err(StoreError::KeyExists {
                            id: id.clone(),
                            detail: format!(
                                "auth file `{}` exists while handle {handle:#010x} is free (left by an interrupted generate or import?); keyward never replaces it: remove it to go on",
                                path.display()
                            ),
                        });
                    }
                    Err(e) => return Err(e.into_store_error(&tpm)),
                },
            };
            let made = self.run(|conn| {
                if crate::persistent::is_occupied(&mut conn.ctx, handle)? {
                    return Err(Failure::Store(occupied()));
                }
                let blob = make(conn, auth.clone(), own.is_some())?;
                crate::persistent::persist(&mut conn.ctx, conn.primary, &blob, handle)?;
                Ok(blob)
            });
            let blob = match made {
                Ok(blob) => blob,
                Err(e) => {
                    if let Some(path) = auth_file {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(e);
                }
            };
            let info = info_of(id, &blob.public, own.is_none() && self.shared.auth.is_none())?;
            tracing::info!(key = %id, algorithm = %info.algorithm, handle = %format!("{handle:#010x}"), "{what}");
            return Ok(info);
        }
        let path = blob::path(&key_dir, id);
        let exists = || StoreError::KeyExists { id: id.clone(), detail: format!("key blob `{}`", path.display()) };
        if path.exists() {
            return Err(exists());
        }
        let mut blob = self.run(|conn| Ok(make(conn, auth.clone(), own.is_some())?))?;
        blob.auth = own;
        match blob::write_new(&key_dir, id, &blob) {
            Ok(_) => {}
            Err(TpmError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(exists())
            }
            Err(e) => return Err(e.into_store_error(&tpm)),
        }
        let info = info_of(id, &blob.public, self.is_open(&StoredKey::Wrapped(blob.clone())))?;
        tracing::info!(key = %id, algorithm = %info.algorithm, blob = %path.display(), "{what}");
        Ok(info)
    }

    /// The auth value to use `key` with: its own, else the configured one, else empty.
    pub(crate) fn key_auth(&self, key: &StoredKey) -> Result<Option<tss_esapi::structures::Auth>, StoreError> {
        let configured = self.auth()?;
        match key.own_auth() {
            Some(own) => own.to_tpm().map(Some).map_err(|e| e.into_store_error(&self.shared.config.tcti.to_string())),
            None => Ok(configured),
        }
    }

    /// The TPM's name in errors: its TCTI.
    pub(crate) fn tpm_name(&self) -> String {
        self.shared.config.tcti.to_string()
    }

    /// Whether `key` has the empty auth value: any client of the TPM can use it.
    fn is_open(&self, key: &StoredKey) -> bool {
        key.own_auth().is_none() && self.shared.auth.is_none()
    }

    /// Says once per lookup that a key made by an older keyward is open to every TPM client.
    fn warn_if_open(&self, id: &KeyId, key: &StoredKey) {
        if self.is_open(key) {
            tracing::warn!(key = %id, "TPM key has an empty auth value: any TPM client can use it; rotate it (docs/security.md, \"TPM keys\")");
        }
    }

    fn auth(&self) -> Result<Option<tss_esapi::structures::Auth>, StoreError> {
        if self.auth_rejected {
            let tpm = self.shared.config.tcti.to_string();
            return Err(StoreError::PinIncorrect { token: format!("TPM `{tpm}` (key auth value; rejected earlier)") });
        }
        crate::keygen::auth_value(self.shared.auth.as_ref())
    }
}

fn info_of(id: &KeyId, public: &Public, empty_auth: bool) -> Result<KeyInfo, StoreError> {
    Ok(KeyInfo {
        id: id.clone(),
        algorithm: crate::keygen::algorithm_of(id, public)?,
        generated_on_device: public.object_attributes().sensitive_data_origin(),
        empty_auth,
    })
}

impl KeyStore for TpmStore {
    fn info(&self) -> StoreInfo {
        StoreInfo { backend: "tpm", device: format!("TPM `{}` ({})", self.shared.config.tcti, self.shared.device) }
    }

    fn list(&mut self) -> Result<Vec<KeyInfo>, StoreError> {
        let tpm = self.shared.config.tcti.to_string();
        let mut ids = blob::list(&self.shared.config.key_dir).map_err(|e| e.into_store_error(&tpm))?;
        ids.extend(self.shared.config.persistent.keys().cloned());
        ids.sort();
        ids.dedup();
        let mut keys = Vec::new();
        for id in ids {
            let listed = self.stored(&id).and_then(|key| info_of(&id, key.public(), self.is_open(&key)));
            match listed {
                Ok(info) => keys.push(info),
                Err(StoreError::Unsupported { .. } | StoreError::KeyNotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(keys)
    }

    fn generate(&mut self, id: &KeyId, algorithm: KeyAlgorithm) -> Result<KeyInfo, StoreError> {
        self.create_key(id, "generated key in the TPM", |conn, auth, no_da| {
            crate::keygen::create(conn, algorithm, auth, no_da)
        })
    }

    fn import(&mut self, id: &KeyId, key: &PrivateKeyMaterial) -> Result<KeyInfo, StoreError> {
        self.create_key(id, "imported key into the TPM (held by it, not born in it)", |conn, auth, no_da| {
            crate::import::import(conn, key, auth, no_da)
        })
    }

    fn public_key(&mut self, id: &KeyId) -> Result<PublicKey, StoreError> {
        crate::keygen::public_key(id, self.stored(id)?.public())
    }

    fn sign(&mut self, id: &KeyId, profile: SignProfile, msg: &[u8]) -> Result<Vec<u8>, StoreError> {
        let key = self.stored(id)?;
        let algorithm = crate::keygen::algorithm_of(id, key.public())?;
        let req =
            SignRequest { mechanism: profile.mechanism(algorithm)?, msg, rsa_bits: algorithm.rsa_bits().unwrap_or(0) };
        let auth = self.key_auth(&key)?;
        self.run(|conn| conn.with_key(&key, auth.clone(), |ctx, handle| crate::sign::sign(ctx, handle, &req)))
    }

    fn decrypt(&mut self, id: &KeyId, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let key = self.stored(id)?;
        let algorithm = crate::keygen::algorithm_of(id, key.public())?;
        let Some(bits) = algorithm.rsa_bits() else {
            return Err(StoreError::Unsupported { what: format!("decrypt with {algorithm} key `{id}` (RSA only)") });
        };
        if ciphertext.len() != bits / 8 {
            return Err(StoreError::InvalidInput {
                what: format!("ciphertext is {} bytes; key `{id}` needs exactly {}", ciphertext.len(), bits / 8),
            });
        }
        let auth = self.key_auth(&key)?;
        self.run(|conn| {
            conn.with_key(&key, auth.clone(), |ctx, handle| crate::decrypt::decrypt(ctx, handle, ciphertext))
        })
    }

    /// A persistent key is evicted, then its `.tpmauth` file removed; a wrapped key's blob
    /// file is removed (the TPM never held it: a copy of the blob from a backup would still
    /// load under the same primary, which docs/security.md says).
    fn destroy(&mut self, id: &KeyId) -> Result<(), StoreError> {
        let key = self.stored(id)?;
        self.cache.remove(id);
        let tpm = self.shared.config.tcti.to_string();
        let key_dir = self.shared.config.key_dir.clone();
        let remove = |path: std::path::PathBuf| match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(TpmError::Io { path, source }.into_store_error(&tpm)),
        };
        match key {
            StoredKey::Persistent { handle, .. } => {
                self.run(|conn| Ok(crate::persistent::evict(&mut conn.ctx, handle)?))?;
                remove(crate::auth::path(&key_dir, id))
            }
            StoredKey::Wrapped(_) => remove(blob::path(&key_dir, id)),
        }
    }

    fn check(&mut self) -> Result<(), StoreError> {
        self.run(|conn| {
            let property = tss_esapi::constants::PropertyTag::Manufacturer;
            conn.ctx.get_tpm_property(property).map_err(TpmError::call("TPM2_GetCapability"))?;
            Ok(())
        })
    }
}
