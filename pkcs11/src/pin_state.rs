//! The token's own view of its user PIN, read without logging in (`C_GetTokenInfo` flags), so
//! that `keyward check` can tell a locked PIN, or one with a single try left, before it offers
//! the PIN: a login with a wrong PIN costs one of the token's tries. PKCS#11 2.40 §3.2
//! (`CKF_USER_PIN_*`). SoftHSM 2.6 keeps no try counter: it never sets COUNT_LOW, FINAL_TRY
//! or LOCKED.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use keyward_core::StoreError;

use crate::config::Pkcs11Config;
use crate::error::Pkcs11Error;

/// The user-PIN flags of a token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinState {
    /// `CKF_USER_PIN_INITIALIZED`.
    pub initialized: bool,
    /// `CKF_USER_PIN_COUNT_LOW`: a wrong PIN was entered since the last good one.
    pub count_low: bool,
    /// `CKF_USER_PIN_FINAL_TRY`: one more wrong PIN locks it.
    pub final_try: bool,
    /// `CKF_USER_PIN_LOCKED`.
    pub locked: bool,
    /// `CKF_USER_PIN_TO_BE_CHANGED`.
    pub to_be_changed: bool,
}

/// Loads the module, finds the token as the backend would, and reads its PIN flags; no
/// session is opened and no PIN is used. The module is finalised again when this returns.
///
/// # Errors
/// [`StoreError::Unavailable`] when the module does not load or the token is not found.
pub fn read_pin_state(config: &Pkcs11Config) -> Result<PinState, StoreError> {
    let name = config.token.name();
    let ctx = Pkcs11::new(&config.module)
        .map_err(|source| Pkcs11Error::LoadModule { path: config.module.clone(), source })
        .map_err(|e| e.into_store_error(&name))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(Pkcs11Error::call("C_Initialize")(e).into_store_error(&name)),
    }
    let (slot, label, _) = crate::device::find_token(&ctx, &config.token).map_err(|e| e.into_store_error(&name))?;
    let info = ctx.get_token_info(slot).map_err(|e| Pkcs11Error::call("C_GetTokenInfo")(e).into_store_error(&label))?;
    Ok(PinState {
        initialized: info.user_pin_initialized(),
        count_low: info.user_pin_count_low(),
        final_try: info.user_pin_final_try(),
        locked: info.user_pin_locked(),
        to_be_changed: info.user_pin_to_be_changed(),
    })
}
