//! Keys at persistent handles (the owner's range 0x81000000–0x817FFFFF), the alternative to
//! wrapped key files: the key lives in the TPM's own non-volatile memory, so there is no
//! file to back up or lose, at the cost of NV space (a TPM holds only a few such keys).
//! A name is bound to a handle in the config. An occupied handle is reported, not reused;
//! only a key retirement evicts one ([`evict`], after its audit record).

use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::resource_handles::Provision;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, Public};
use tss_esapi::Context;

use crate::blob::KeyBlob;
use crate::error::TpmError;

/// First and last handle of the owner's persistent range.
pub const OWNER_RANGE: std::ops::RangeInclusive<u32> = 0x8100_0000..=0x817F_FFFF;

fn tpm_handle(handle: u32) -> Result<TpmHandle, TpmError> {
    PersistentTpmHandle::new(handle).map(TpmHandle::Persistent).map_err(TpmError::call("persistent handle"))
}

/// Whether `handle` holds an object.
pub(crate) fn is_occupied(ctx: &mut Context, handle: u32) -> Result<bool, TpmError> {
    let (data, _) = ctx
        .get_capability(CapabilityType::Handles, handle, 1)
        .map_err(TpmError::call("TPM2_GetCapability (persistent handles)"))?;
    let CapabilityData::Handles(handles) = data else { return Ok(false) };
    Ok(handles.into_inner().first().is_some_and(|h| u32::from(*h) == handle))
}

/// An ESAPI object for the key at `handle` (release it with `Context::tr_close`).
pub(crate) fn open(ctx: &mut Context, handle: u32) -> Result<KeyHandle, TpmError> {
    let tpm = tpm_handle(handle)?;
    let object = ctx
        .execute_without_session(|c| c.tr_from_tpm_public(tpm))
        .map_err(TpmError::call("Esys_TR_FromTPMPublic (persistent key)"))?;
    Ok(object.into())
}

/// The public area of the key at `handle`.
pub(crate) fn read_public(ctx: &mut Context, handle: u32) -> Result<Public, TpmError> {
    let key = open(ctx, handle)?;
    let public = ctx.read_public(key).map(|(public, _, _)| public).map_err(TpmError::call("TPM2_ReadPublic"));
    let mut object = ObjectHandle::from(key);
    let closed = ctx.tr_close(&mut object).map_err(TpmError::call("Esys_TR_Close"));
    let public = public?;
    closed?;
    Ok(public)
}

/// Loads `blob` under `primary` and makes it persistent at `handle` (owner authorisation,
/// empty owner password); the transient copy is flushed again.
pub(crate) fn persist(ctx: &mut Context, primary: KeyHandle, blob: &KeyBlob, handle: u32) -> Result<(), TpmError> {
    let target = Persistent::Persistent(PersistentTpmHandle::new(handle).map_err(TpmError::call("persistent handle"))?);
    let (private, public) = (blob.private.clone(), blob.public.clone());
    let loaded = ctx
        .execute_with_session(Some(AuthSession::Password), |c| c.load(primary, private, public))
        .map_err(TpmError::call("TPM2_Load"))?;
    let persisted = ctx
        .execute_with_session(Some(AuthSession::Password), |c| c.evict_control(Provision::Owner, loaded.into(), target))
        .map_err(TpmError::call("TPM2_EvictControl"));
    let flushed = ctx.flush_context(loaded.into()).map_err(TpmError::call("TPM2_FlushContext"));
    let mut persistent = persisted?;
    flushed?;
    ctx.tr_close(&mut persistent).map_err(TpmError::call("Esys_TR_Close"))
}

/// Evicts the key at `handle` from the TPM's non-volatile memory (owner authorisation,
/// empty owner password): the key is gone for good.
pub(crate) fn evict(ctx: &mut Context, handle: u32) -> Result<(), TpmError> {
    let target = Persistent::Persistent(PersistentTpmHandle::new(handle).map_err(TpmError::call("persistent handle"))?);
    let key = open(ctx, handle)?;
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.evict_control(Provision::Owner, ObjectHandle::from(key), target)
    })
    .map_err(TpmError::call("TPM2_EvictControl (evict)"))?;
    Ok(())
}
