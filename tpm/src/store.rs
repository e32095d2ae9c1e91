//! [`TpmStore`]: the one connection to the TPM, owned by the one worker thread, and the
//! [`KeyStore`] operations over wrapped key blobs.
//!
//! A connection holds the ESAPI context and the storage primary, re-derived on every
//! connect from a fixed template under the owner hierarchy (same seed, same template, same
//! key), so blobs wrapped by it load again after a restart. At connect, transient objects
//! leaked by a crashed process are flushed (swtpm has 3 transient slots; a leak makes the
//! next load fail with TPM_RC_OBJECT_MEMORY). The key of the last operation stays loaded
//! (one slot); using another key flushes it first. When the TCTI reports a lost connection
//! (swtpm killed), the connection is dropped and the next request reconnects.
//!
//! Authorisation uses password sessions: HMAC sessions cost ~3.4 ms of client CPU per
//! command with libtss2 3.2.1 (shared/notes/backends-spike.md §6).

use std::sync::Arc;

use keyward_core::private_key::PrivateKeyMaterial;
use keyward_core::{KeyAlgorithm, KeyId, KeyInfo, KeyStore, PublicKey, SignProfile, StoreError, StoreInfo};
use tss_esapi::constants::tss::TPM2_TRANSIENT_FIRST;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, Private, RsaExponent, SymmetricDefinitionObject};
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::backend::Shared;
use crate::blob::{self, KeyBlob};
use crate::error::{Failure, TpmError};
use crate::sign::SignRequest;

/// An open ESAPI context with the storage primary loaded, and the last key used.
pub(crate) struct Connection {
    pub(crate) ctx: Context,
    pub(crate) primary: KeyHandle,
    /// The key of the last operation, left loaded: an FL site uses one key, and loading it
    /// for every request would double the cost of a P-256 signature on swtpm. One slot
    /// only (primary + one key of a real TPM's ~3 transient slots).
    loaded: Option<LoadedKey>,
}

/// A key loaded into the TPM, and the blob it was loaded from (to notice a different key
/// under the same name).
struct LoadedKey {
    private: Private,
    handle: KeyHandle,
}

impl Connection {
    /// Connects, flushes leaked transient objects and derives the storage primary.
    pub(crate) fn open(shared: &Shared) -> Result<Self, TpmError> {
        let tcti = shared.config.tcti.to_string();
        let mut ctx = Context::new(shared.config.tcti.name_conf()?)
            .map_err(|source| TpmError::Connect { tcti: tcti.clone(), source })?;
        let flushed = flush_transients(&mut ctx)?;
        if flushed > 0 {
            tracing::warn!(tpm = %tcti, flushed, "flushed transient objects left in the TPM by an earlier process");
        }
        let template = tss_esapi::utils::create_restricted_decryption_rsa_public(
            SymmetricDefinitionObject::AES_128_CFB,
            tss_esapi::interface_types::key_bits::RsaKeyBits::Rsa2048,
            RsaExponent::default(),
        )
        .map_err(TpmError::call("building primary template"))?;
        let primary = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(TpmError::call("TPM2_CreatePrimary (owner storage key)"))?
            .key_handle;
        Ok(Self { ctx, primary, loaded: None })
    }

    /// Runs `op` with `blob`'s key in a password session, loading it first unless it is the
    /// key already loaded (which is flushed to make room for another one).
    fn with_key<T>(
        &mut self,
        blob: &KeyBlob,
        auth: Option<tss_esapi::structures::Auth>,
        op: impl FnOnce(&mut Context, KeyHandle) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let key = match &self.loaded {
            Some(loaded) if loaded.private == blob.private => loaded.handle,
            _ => self.load(blob, auth)?,
        };
        self.ctx.execute_with_session(Some(AuthSession::Password), |c| op(c, key))
    }

    /// Flushes the loaded key (if any), loads `blob` and sets its auth value.
    fn load(&mut self, blob: &KeyBlob, auth: Option<tss_esapi::structures::Auth>) -> Result<KeyHandle, Failure> {
        if let Some(old) = self.loaded.take() {
            self.ctx.flush_context(old.handle.into()).map_err(TpmError::call("TPM2_FlushContext"))?;
        }
        let (primary, private, public) = (self.primary, blob.private.clone(), blob.public.clone());
        let key = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| c.load(primary, private, public))
            .map_err(TpmError::call("TPM2_Load"))?;
        if let Some(auth) = auth {
            if let Err(e) = self.ctx.tr_set_auth(key.into(), auth) {
                let _ = self.ctx.flush_context(key.into());
                return Err(TpmError::call("setting key auth")(e).into());
            }
        }
        self.loaded = Some(LoadedKey { private: blob.private.clone(), handle: key });
        Ok(key)
    }
}

/// Flushes every transient object the TPM reports (through `/dev/tpmrm0` only this
/// connection's, which is none; on swtpm, whatever a crashed process left).
fn flush_transients(ctx: &mut Context) -> Result<usize, TpmError> {
    let (data, _) = ctx
        .get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, 16)
        .map_err(TpmError::call("TPM2_GetCapability (transient handles)"))?;
    let CapabilityData::Handles(handles) = data else { return Ok(0) };
    let handles = handles.into_inner();
    for handle in &handles {
        let object = ctx
            .execute_without_session(|c| c.tr_from_tpm_public(*handle))
            .map_err(TpmError::call("Esys_TR_FromTPMPublic (leaked transient)"))?;
        ctx.flush_context(object).map_err(TpmError::call("TPM2_FlushContext (leaked transient)"))?;
    }
    Ok(handles.len())
}

/// The TPM [`KeyStore`] for the one worker thread.
pub struct TpmStore {
    shared: Arc<Shared>,
    conn: Option<Connection>,
    /// Set when the TPM rejected the auth value: it is not offered again (each failure
    /// counts towards the TPM's dictionary-attack lockout), until the agent restarts.
    auth_rejected: bool,
}

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
        Self { shared, conn, auth_rejected: false }
    }

    /// Runs `op` on the connection (connecting first if needed) and classifies its error.
    /// A lost connection is forgotten so the next call reconnects; a stale handle (another
    /// client flushed our primary or key, or the TPM was reset) reconnects at once and
    /// repeats `op` once: signing, decrypting and creating a key are safe to repeat.
    fn run<T>(&mut self, mut op: impl FnMut(&mut Connection) -> Result<T, Failure>) -> Result<T, StoreError> {
        let tpm = self.shared.config.tcti.to_string();
        let mut repeated = false;
        loop {
            let conn = match &mut self.conn {
                Some(conn) => conn,
                empty => match Connection::open(&self.shared) {
                    Ok(conn) => {
                        tracing::info!(tpm = %tpm, "connected to TPM");
                        empty.insert(conn)
                    }
                    Err(e) => return Err(e.into_store_error(&tpm)),
                },
            };
            let e = match op(conn) {
                Ok(value) => return Ok(value),
                Err(Failure::Store(e)) => return Err(e),
                Err(Failure::Tpm(e)) => e,
            };
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

    fn blob(&self, id: &KeyId) -> Result<KeyBlob, StoreError> {
        let tpm = self.shared.config.tcti.to_string();
        blob::read(&self.shared.config.key_dir, id)
            .map_err(|e| e.into_store_error(&tpm))?
            .ok_or_else(|| StoreError::KeyNotFound { id: id.clone() })
    }

    /// Makes a new key with `make` and writes its blob, never replacing an existing one:
    /// the name is checked before the TPM is asked and the blob is linked into place
    /// atomically (a race between two creators leaves the first).
    fn create_blob(
        &mut self,
        id: &KeyId,
        what: &'static str,
        make: impl Fn(&mut Connection, Option<tss_esapi::structures::Auth>) -> Result<KeyBlob, TpmError>,
    ) -> Result<KeyInfo, StoreError> {
        let key_dir = self.shared.config.key_dir.clone();
        let path = blob::path(&key_dir, id);
        let exists = || StoreError::KeyExists { id: id.clone(), detail: format!("key blob `{}`", path.display()) };
        if path.exists() {
            return Err(exists());
        }
        let auth = self.auth()?;
        let blob = self.run(|conn| Ok(make(conn, auth.clone())?))?;
        match blob::write_new(&key_dir, id, &blob) {
            Ok(_) => {}
            Err(TpmError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(exists())
            }
            Err(e) => return Err(e.into_store_error(&self.shared.config.tcti.to_string())),
        }
        let info = info_of(id, &blob)?;
        tracing::info!(key = %id, algorithm = %info.algorithm, blob = %path.display(), "{what}");
        Ok(info)
    }

    fn auth(&self) -> Result<Option<tss_esapi::structures::Auth>, StoreError> {
        if self.auth_rejected {
            let tpm = self.shared.config.tcti.to_string();
            return Err(StoreError::PinIncorrect { token: format!("TPM `{tpm}` (key auth value; rejected earlier)") });
        }
        crate::keygen::auth_value(self.shared.auth.as_ref())
    }
}

fn info_of(id: &KeyId, blob: &KeyBlob) -> Result<KeyInfo, StoreError> {
    Ok(KeyInfo {
        id: id.clone(),
        algorithm: crate::keygen::algorithm_of(id, &blob.public)?,
        generated_on_device: blob.public.object_attributes().sensitive_data_origin(),
    })
}

impl KeyStore for TpmStore {
    fn info(&self) -> StoreInfo {
        StoreInfo { backend: "tpm", device: format!("TPM `{}` ({})", self.shared.config.tcti, self.shared.device) }
    }

    fn list(&mut self) -> Result<Vec<KeyInfo>, StoreError> {
        let tpm = self.shared.config.tcti.to_string();
        let ids = blob::list(&self.shared.config.key_dir).map_err(|e| e.into_store_error(&tpm))?;
        let mut keys = Vec::new();
        for id in ids {
            match info_of(&id, &self.blob(&id)?) {
                Ok(info) => keys.push(info),
                Err(StoreError::Unsupported { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(keys)
    }

    fn generate(&mut self, id: &KeyId, algorithm: KeyAlgorithm) -> Result<KeyInfo, StoreError> {
        self.create_blob(id, "generated key in the TPM", |conn, auth| crate::keygen::create(conn, algorithm, auth))
    }

    fn import(&mut self, id: &KeyId, key: &PrivateKeyMaterial) -> Result<KeyInfo, StoreError> {
        self.create_blob(id, "imported key into the TPM (held by it, not born in it)", |conn, auth| {
            crate::import::import(conn, key, auth)
        })
    }

    fn public_key(&mut self, id: &KeyId) -> Result<PublicKey, StoreError> {
        crate::keygen::public_key(id, &self.blob(id)?.public)
    }

    fn sign(&mut self, id: &KeyId, profile: SignProfile, msg: &[u8]) -> Result<Vec<u8>, StoreError> {
        let blob = self.blob(id)?;
        let algorithm = crate::keygen::algorithm_of(id, &blob.public)?;
        let req =
            SignRequest { mechanism: profile.mechanism(algorithm)?, msg, rsa_bits: algorithm.rsa_bits().unwrap_or(0) };
        let auth = self.auth()?;
        self.run(|conn| conn.with_key(&blob, auth.clone(), |ctx, key| crate::sign::sign(ctx, key, &req)))
    }

    fn decrypt(&mut self, id: &KeyId, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let blob = self.blob(id)?;
        let algorithm = crate::keygen::algorithm_of(id, &blob.public)?;
        let Some(bits) = algorithm.rsa_bits() else {
            return Err(StoreError::Unsupported { what: format!("decrypt with {algorithm} key `{id}` (RSA only)") });
        };
        if ciphertext.len() != bits / 8 {
            return Err(StoreError::InvalidInput {
                what: format!("ciphertext is {} bytes; key `{id}` needs exactly {}", ciphertext.len(), bits / 8),
            });
        }
        let auth = self.auth()?;
        self.run(|conn| conn.with_key(&blob, auth.clone(), |ctx, key| crate::decrypt::decrypt(ctx, key, ciphertext)))
    }

    fn check(&mut self) -> Result<(), StoreError> {
        self.run(|conn| {
            let property = tss_esapi::constants::PropertyTag::Manufacturer;
            conn.ctx.get_tpm_property(property).map_err(TpmError::call("TPM2_GetCapability"))?;
            Ok(())
        })
    }
}
