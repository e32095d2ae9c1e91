//! Opening a token: load the module, find the token, log in once, and hand out one session
//! per worker. The login session is kept open for the backend's whole life, because PKCS#11
//! drops the login when an application's last session closes.

use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyward_core::{Backend, KeyStore, Pin, StoreError};

use crate::config::{Pkcs11Config, TokenSelector};
use crate::decrypt::OaepPath;
use crate::error::Pkcs11Error;
use crate::store::Pkcs11Store;

/// What every store of one backend shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) ctx: Pkcs11,
    pub(crate) slot: Slot,
    /// Token label, for messages.
    pub(crate) token: String,
    /// Manufacturer, model, serial, for `status`.
    pub(crate) device: String,
    /// Decided on the first decrypt: does the token do OAEP-SHA-256 itself?
    pub(crate) oaep_path: OnceLock<OaepPath>,
}

/// A logged-in PKCS#11 token.
pub struct Pkcs11Backend {
    shared: Arc<Shared>,
    workers: usize,
    /// Holds the login for the backend's life; never used for operations.
    _login_session: Mutex<Session>,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend").field("token", &self.shared.token).field("workers", &self.workers).finish()
    }
}

impl Pkcs11Backend {
    /// Loads the module, finds the token and logs in with `pin`, exactly once.
    ///
    /// # Errors
    /// [`StoreError::PinIncorrect`] / [`StoreError::PinLocked`] naming the token (not
    /// retried); [`StoreError::Unavailable`] when the module or token cannot be found.
    pub fn open(config: &Pkcs11Config, pin: Pin) -> Result<Self, StoreError> {
        let selector = config.token.name();
        let ctx = Pkcs11::new(&config.module)
            .map_err(|source| Pkcs11Error::LoadModule { path: config.module.clone(), source })
            .map_err(|e| e.into_store_error(&selector))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(Pkcs11Error::call("C_Initialize")(e).into_store_error(&selector)),
        }
        let (slot, token, device) = find_token(&ctx, &config.token).map_err(|e| e.into_store_error(&selector))?;

        let session =
            ctx.open_rw_session(slot).map_err(|e| Pkcs11Error::call("C_OpenSession")(e).into_store_error(&token))?;
        let auth = AuthPin::from(pin.expose());
        drop(pin);
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(Pkcs11Error::call("C_Login")(e).into_store_error(&token)),
        }
        drop(auth);
        tracing::info!(token = %token, device = %device, "logged in to PKCS#11 token");
        let shared = Arc::new(Shared { ctx, slot, token, device, oaep_path: OnceLock::new() });
        Ok(Self { shared, workers: config.workers.max(1), _login_session: Mutex::new(session) })
    }

    /// Opens a store directly (for the CLI, which needs no worker pool).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when no session can be opened.
    pub fn store(&self) -> Result<Pkcs11Store, StoreError> {
        Pkcs11Store::open(Arc::clone(&self.shared))
    }

    /// The token label.
    pub fn token_label(&self) -> &str {
        &self.shared.token
    }
}

impl Backend for Pkcs11Backend {
    fn max_workers(&self) -> usize {
        self.workers
    }

    fn open_store(&self) -> Result<Box<dyn KeyStore>, StoreError> {
        Ok(Box::new(self.store()?))
    }
}

/// Finds the one token matching `selector`: returns its slot, label and a description.
fn find_token(ctx: &Pkcs11, selector: &TokenSelector) -> Result<(Slot, String, String), Pkcs11Error> {
    let slots = ctx.get_slots_with_token().map_err(Pkcs11Error::call("C_GetSlotList"))?;
    let mut found = Vec::new();
    let mut labels = Vec::new();
    for slot in slots {
        let info = ctx.get_token_info(slot).map_err(Pkcs11Error::call("C_GetTokenInfo"))?;
        let (label, serial) = (info.label().trim_end(), info.serial_number().trim_end());
        let (manufacturer, model) = (info.manufacturer_id().trim_end(), info.model().trim_end());
        labels.push(format!("`{label}`"));
        let hit = match selector {
            TokenSelector::Label(want) => want == label,
            TokenSelector::Uri(uri) => uri.matches(label, serial, manufacturer, model),
        };
        if hit {
            found.push((slot, label.to_owned(), format!("{manufacturer} {model} serial {serial}")));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Pkcs11Error::TokenNotFound {
            selector: selector.to_string(),
            available: if labels.is_empty() { "none".into() } else { labels.join(", ") },
        }),
        count => Err(Pkcs11Error::TokenAmbiguous { selector: selector.to_string(), count }),
    }
}
