//! The connection's one HMAC session, which authorises every use of a key: the key's auth
//! value never crosses the bus to the TPM, only an HMAC keyed with it over the command and
//! fresh nonces (TPM 2.0 Part 1 §19.6). With a password session the auth value would travel
//! in clear in every command, readable by anyone on the bus or in the TCTI path.
//!
//! The session is salted with the storage primary (`tpmKey`), so its session key is not
//! known to a bus observer either; that is what lets TPM2_Create's `inSensitive` (the new
//! key's auth value) be sent encrypted (AES-128-CFB parameter encryption, [`encrypting`]),
//! and TPM2_RSA_Decrypt's plaintext come back encrypted ([`with_encrypted_response`]).
//! It is started once per connection and kept (continueSession): measured cost in
//! docs/security.md. Operations on the primary itself (empty auth, no secret) keep using
//! password sessions.

use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::SymmetricDefinition;
use tss_esapi::Context;

use crate::error::TpmError;

/// Starts the salted HMAC session of a connection.
pub(crate) fn start(ctx: &mut Context, primary: KeyHandle) -> Result<AuthSession, TpmError> {
    let session = ctx
        .execute_without_session(|c| {
            c.start_auth_session(
                Some(primary),
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
        })
        .map_err(TpmError::call("TPM2_StartAuthSession (salted HMAC)"))?
        .ok_or_else(|| TpmError::call("TPM2_StartAuthSession (salted HMAC)")(no_session()))?;
    set_attributes(ctx, session, false)?;
    Ok(session)
}

fn no_session() -> tss_esapi::Error {
    tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm)
}

/// Continue the session after each command; encrypt the command's first parameter or not.
fn set_attributes(ctx: &mut Context, session: AuthSession, decrypt: bool) -> Result<(), TpmError> {
    set_flags(ctx, session, decrypt, false)
}

/// Continue the session; encrypt the command's first parameter (`decrypt`) and/or the
/// response's (`encrypt`).
fn set_flags(ctx: &mut Context, session: AuthSession, decrypt: bool, encrypt: bool) -> Result<(), TpmError> {
    let (attributes, mask) =
        SessionAttributesBuilder::new().with_continue_session(true).with_decrypt(decrypt).with_encrypt(encrypt).build();
    ctx.tr_sess_set_attributes(session, attributes, mask).map_err(TpmError::call("Esys_TRSess_SetAttributes"))
}

/// Runs `op` in `session` with the command's first parameter encrypted (for TPM2_Create:
/// `inSensitive`, which holds the new key's auth value).
pub(crate) fn encrypting<T>(
    ctx: &mut Context,
    session: AuthSession,
    op: impl FnOnce(&mut Context) -> tss_esapi::Result<T>,
) -> Result<tss_esapi::Result<T>, TpmError> {
    set_attributes(ctx, session, true)?;
    let result = ctx.execute_with_session(Some(session), op);
    set_attributes(ctx, session, false)?;
    Ok(result)
}

/// Runs `op` (inside `execute_with_session` with the connection's session) with the
/// response's first parameter encrypted: for TPM2_RSA_Decrypt, the plaintext.
pub(crate) fn with_encrypted_response<T>(
    ctx: &mut Context,
    op: impl FnOnce(&mut Context) -> tss_esapi::Result<T>,
) -> Result<tss_esapi::Result<T>, TpmError> {
    let Some(session) = ctx.sessions().0 else { return Ok(op(ctx)) };
    set_flags(ctx, session, false, true)?;
    let result = op(ctx);
    set_flags(ctx, session, false, false)?;
    Ok(result)
}
