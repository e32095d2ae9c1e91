//! [`Connection`]: the one ESAPI context to the TPM, with the storage primary and the key
//! at hand.
//!
//! The primary is re-derived on every connect from a fixed template under the owner
//! hierarchy (same seed, same template, same key), so blobs wrapped by it load again after
//! a restart. At connect, transient objects leaked by a crashed process are flushed (swtpm
//! has 3 transient slots; a leak makes the next load fail with TPM_RC_OBJECT_MEMORY). The
//! key of the last operation stays loaded (one slot); using another key releases it first.
//!
//! Keys are used through the connection's salted HMAC session (`session.rs`), so their auth
//! value never crosses the bus; the primary (empty auth) through password sessions. Leaked
//! sessions are flushed at connect like leaked objects (swtpm has 3 session slots).

use tss_esapi::constants::tss::{TPM2_LOADED_SESSION_FIRST, TPM2_TRANSIENT_FIRST};
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, Private, Public, RsaExponent, SymmetricDefinitionObject};
use tss_esapi::Context;

use crate::auth::KeyAuth;
use crate::backend::Shared;
use crate::blob::KeyBlob;
use crate::error::{Failure, TpmError};

/// An open ESAPI context with the storage primary loaded, and the last key used.
pub(crate) struct Connection {
    pub(crate) ctx: Context,
    pub(crate) primary: KeyHandle,
    /// The salted HMAC session that authorises every use of a key.
    pub(crate) session: AuthSession,
    /// The key of the last operation, left loaded: an FL site uses one key, and loading it
    /// for every request would double the cost of a P-256 signature on swtpm. One slot
    /// only (primary + one key of a real TPM's ~3 transient slots).
    loaded: Option<LoadedKey>,
}

/// Where a key is kept: a wrapped blob (loaded on use) or a persistent handle.
#[derive(Clone)]
pub(crate) enum StoredKey {
    /// A key file in `key_dir`.
    Wrapped(KeyBlob),
    /// A key in the TPM's non-volatile memory.
    Persistent {
        /// The handle (0x81...).
        handle: u32,
        /// Its public area, read from the TPM.
        public: Public,
        /// Its own auth value, from `<name>.tpmauth` (none for keys of older versions).
        auth: Option<KeyAuth>,
    },
}

impl StoredKey {
    /// The key's public area.
    pub(crate) fn public(&self) -> &Public {
        match self {
            Self::Wrapped(blob) => &blob.public,
            Self::Persistent { public, .. } => public,
        }
    }

    /// The key's own auth value, if it has one.
    pub(crate) fn own_auth(&self) -> Option<&KeyAuth> {
        match self {
            Self::Wrapped(blob) => blob.auth.as_ref(),
            Self::Persistent { auth, .. } => auth.as_ref(),
        }
    }
}

/// The key an ESAPI handle currently refers to.
#[derive(PartialEq, Eq)]
enum Loaded {
    /// Loaded from this wrapped private part (a different blob under the same name is
    /// a different key).
    Wrapped(Private),
    /// Opened from this persistent handle (closed, never flushed, when replaced).
    Persistent(u32),
}

struct LoadedKey {
    what: Loaded,
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
        let session = crate::session::start(&mut ctx, primary)?;
        Ok(Self { ctx, primary, session, loaded: None })
    }

    /// Runs `op` with `key` in the HMAC session, loading (or opening) it first unless it
    /// is the key already at hand, which is released to make room.
    pub(crate) fn with_key<T>(
        &mut self,
        key: &StoredKey,
        auth: Option<tss_esapi::structures::Auth>,
        op: impl FnOnce(&mut Context, KeyHandle) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let wanted = match key {
            StoredKey::Wrapped(blob) => Loaded::Wrapped(blob.private.clone()),
            StoredKey::Persistent { handle, .. } => Loaded::Persistent(*handle),
        };
        let handle = match &self.loaded {
            Some(loaded) if loaded.what == wanted => loaded.handle,
            _ => self.load(key, wanted, auth)?,
        };
        self.ctx.execute_with_session(Some(self.session), |c| op(c, handle))
    }

    /// Releases the key at hand (if any), loads or opens `key` and sets its auth value.
    fn load(
        &mut self,
        key: &StoredKey,
        what: Loaded,
        auth: Option<tss_esapi::structures::Auth>,
    ) -> Result<KeyHandle, Failure> {
        if let Some(old) = self.loaded.take() {
            self.release(old)?;
        }
        let handle = match key {
            StoredKey::Wrapped(blob) => {
                let (primary, private, public) = (self.primary, blob.private.clone(), blob.public.clone());
                self.ctx
                    .execute_with_session(Some(AuthSession::Password), |c| c.load(primary, private, public))
                    .map_err(TpmError::call("TPM2_Load"))?
            }
            StoredKey::Persistent { handle, .. } => crate::persistent::open(&mut self.ctx, *handle)?,
        };
        let loaded = LoadedKey { what, handle };
        if let Err(e) = self.ctx.tr_set_auth(handle.into(), auth.unwrap_or_default()) {
            let _ = self.release(loaded);
            return Err(TpmError::call("setting key auth")(e).into());
        }
        self.loaded = Some(loaded);
        Ok(handle)
    }

    /// Flushes a loaded transient key; closes (never evicts) a persistent one.
    fn release(&mut self, key: LoadedKey) -> Result<(), TpmError> {
        match key.what {
            Loaded::Wrapped(_) => {
                self.ctx.flush_context(key.handle.into()).map_err(TpmError::call("TPM2_FlushContext"))
            }
            Loaded::Persistent(_) => {
                let mut object = ObjectHandle::from(key.handle);
                self.ctx.tr_close(&mut object).map_err(TpmError::call("Esys_TR_Close"))
            }
        }
    }
}

/// Flushes every transient object and session the TPM reports (through `/dev/tpmrm0` only
/// this connection's, which is none; on swtpm, whatever a crashed process left).
fn flush_transients(ctx: &mut Context) -> Result<usize, TpmError> {
    let mut flushed = 0;
    for first in [TPM2_TRANSIENT_FIRST, TPM2_LOADED_SESSION_FIRST] {
        let (data, _) = ctx
            .get_capability(CapabilityType::Handles, first, 16)
            .map_err(TpmError::call("TPM2_GetCapability (transient handles)"))?;
        let CapabilityData::Handles(handles) = data else { continue };
        let handles = handles.into_inner();
        for handle in &handles {
            let object = ctx
                .execute_without_session(|c| c.tr_from_tpm_public(*handle))
                .map_err(TpmError::call("Esys_TR_FromTPMPublic (leaked transient)"))?;
            ctx.flush_context(object).map_err(TpmError::call("TPM2_FlushContext (leaked transient)"))?;
        }
        flushed += handles.len();
    }
    Ok(flushed)
}
