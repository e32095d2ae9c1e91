//! The token connection every session of one backend shares — module context, slot, the
//! login — with its health and its recovery after the token went away.
//!
//! When a call shows the token is gone, the backend is marked down: every request fails
//! at once with `Unavailable` naming the token, and at most one recovery attempt per
//! [`RECOVERY_INTERVAL`] runs (whichever worker comes first; the others do not wait). The
//! request whose failure marked the token down is the exception: it runs up to
//! [`FIRST_FAILURE_ATTEMPTS`] attempts at once, a few milliseconds apart, and when the token
//! is back runs once more (`Pkcs11Store::guarded`), so a token that only needed
//! re-initialising costs that request some milliseconds, not an error. An attempt is `C_Finalize`, `C_Initialize`, finding the token again by the same selector,
//! and `C_Login` with the PIN kept here in zeroizing memory — only if it is the same token
//! (manufacturer, model, serial) as at start, so the PIN is never offered to a token swapped
//! in under the same label. A PIN the token rejects on re-login stops recovery for good: a
//! retry could lock the token.
//!
//! Sessions of the previous module instance are never closed after `C_Finalize`: their
//! handle numbers are reused by the fresh instance, so closing one could close another
//! worker's new session (see `Pkcs11Store::reopen`).
//!
//! Device quirks (SoftHSM 2.6.1, token folder moved away and back, seen in testing): open
//! sessions stay valid and `C_GetSessionInfo` still succeeds; `C_Sign` with a cached key
//! handle fails with `CKR_OBJECT_HANDLE_INVALID`; `C_FindObjects` finds nothing (so a
//! lookup would wrongly say "no such key"); `C_GetTokenInfo` fails with
//! `CKR_GENERAL_ERROR`. None of this heals when the folder returns: only `C_Finalize` +
//! `C_Initialize` brings the token back (then a fresh `C_Login` is needed).
//!
//! The same state without any outage (SoftHSM 2.6.1, seen in CI): another program logging
//! in to the token rewrites its `token.object`, and a read in our process that races the
//! write marks SoftHSM's in-memory token invalid for good (`OSToken::index`); every call
//! then fails as above until `C_Finalize` + `C_Initialize`.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyward_core::{BackendHealth, Pin, StoreError};

use crate::config::TokenSelector;
use crate::decrypt::OaepPath;
use crate::error::Pkcs11Error;

/// At most one recovery attempt per this interval, for the whole backend.
pub(crate) const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// How long a recovery waits for workers to leave their current device call.
const QUIESCE_WAIT: Duration = Duration::from_millis(500);

/// Recovery attempts the request that found the token gone runs at once (see
/// [`Shared::ready_after_failure`]), and the pause before the second (tripled each time).
const FIRST_FAILURE_ATTEMPTS: u32 = 3;
const FIRST_FAILURE_PAUSE: Duration = Duration::from_millis(10);

/// What [`Shared::wait_for_recovery`] waits for.
#[derive(Clone, Copy)]
enum Wait {
    /// The recovery attempt running now.
    Attempt,
    /// That, and the attempts of every request in [`Shared::ready_after_failure`].
    AlsoFirstFailures,
}

/// When a recovery attempt may run.
#[derive(Clone, Copy)]
enum Due {
    /// Unless one is running: for the request whose failure marked the token down.
    Now,
    /// When none ran in the last [`RECOVERY_INTERVAL`]: for every other request.
    AfterInterval,
}

/// A logged-in token in the current module instance.
pub(crate) struct LoggedIn {
    pub(crate) slot: Slot,
    /// Holds the login: PKCS#11 drops it when the application's last session closes.
    _login: Mutex<Session>,
}

/// What sessions need, guarded so that recovery can swap it while no call is running.
pub(crate) struct Gate {
    /// `None` while down after a failed recovery attempt.
    pub(crate) token: Option<LoggedIn>,
    /// Bumped by every successful recovery; sessions of older generations are stale.
    pub(crate) generation: u64,
}

#[derive(Default)]
struct Health {
    /// Why the token is down (whole cause chain), while it is.
    down: Option<String>,
    /// When it went down, for the recovery log line.
    down_since: Option<Instant>,
    /// The re-login was refused: never try again.
    refused: Option<Refusal>,
    last_attempt: Option<Instant>,
    /// A recovery attempt is running now.
    recovering: bool,
    /// Requests inside [`Shared::ready_after_failure`] now.
    first_failures: u32,
    attempts: u64,
}

#[derive(Clone, Copy)]
enum Refusal {
    PinIncorrect,
    PinLocked,
}

/// What every store of one backend shares.
pub(crate) struct Shared {
    pub(crate) ctx: Pkcs11,
    selector: TokenSelector,
    pin: Pin,
    /// Token label, for messages.
    pub(crate) token: String,
    /// Manufacturer, model, serial, for `status`.
    pub(crate) device: String,
    /// Decided on the first decrypt: does the token do OAEP-SHA-256 itself?
    pub(crate) oaep_path: OnceLock<OaepPath>,
    gate: RwLock<Gate>,
    health: Mutex<Health>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("token", &self.token).finish_non_exhaustive()
    }
}

impl Shared {
    /// Loads the module, finds the token and logs in with `pin`, exactly once.
    pub(crate) fn open(module: PathBuf, selector: TokenSelector, pin: Pin) -> Result<Self, StoreError> {
        let name = selector.name();
        let ctx = Pkcs11::new(&module)
            .map_err(|source| Pkcs11Error::LoadModule { path: module.clone(), source })
            .map_err(|e| e.into_store_error(&name))?;
        let (logged_in, token, device) = connect(&ctx, &selector, None, &pin).map_err(|(e, label)| {
            let label = label.unwrap_or(name);
            e.into_store_error(&label)
        })?;
        tracing::info!(token = %token, device = %device, "logged in to PKCS#11 token");
        Ok(Self {
            ctx,
            selector,
            pin,
            token,
            device,
            oaep_path: OnceLock::new(),
            gate: RwLock::new(Gate { token: Some(logged_in), generation: 0 }),
            health: Mutex::new(Health::default()),
        })
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The gate of a usable token, for the length of one device call. When the token is
    /// down this runs a recovery attempt if one is due, waits for the outcome of one that
    /// is running, and otherwise fails at once.
    pub(crate) fn ready(&self) -> Result<RwLockReadGuard<'_, Gate>, StoreError> {
        if self.health().down.is_some() {
            if let Err(e) = self.recover(Due::AfterInterval) {
                // Another worker's attempts are running: their outcome is this request's.
                if !self.wait_for_recovery(Wait::AlsoFirstFailures) || self.health().down.is_some() {
                    return Err(e);
                }
            }
        }
        let gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        if gate.token.is_none() {
            return Err(self.unavailable());
        }
        Ok(gate)
    }

    /// [`Shared::ready`] for the request whose failure just marked the token down: runs up
    /// to [`FIRST_FAILURE_ATTEMPTS`] recovery attempts at once, [`FIRST_FAILURE_PAUSE`]
    /// apart and growing (or waits for one another worker is running), before the
    /// once-per-interval limit takes over. Fails as `ready` does when the token stays away.
    pub(crate) fn ready_after_failure(&self) -> Result<RwLockReadGuard<'_, Gate>, StoreError> {
        self.health().first_failures += 1;
        let result = self.first_failure_attempts();
        self.health().first_failures -= 1;
        result
    }

    fn first_failure_attempts(&self) -> Result<RwLockReadGuard<'_, Gate>, StoreError> {
        let mut pause = FIRST_FAILURE_PAUSE;
        let mut error = self.unavailable();
        for attempt in 0..FIRST_FAILURE_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(pause);
                pause *= 3;
            }
            self.wait_for_recovery(Wait::Attempt);
            if self.health().down.is_some() {
                if let Err(e) = self.recover(Due::Now) {
                    if self.health().refused.is_some() {
                        return Err(e);
                    }
                    error = e;
                    continue;
                }
            }
            match self.ready() {
                Ok(gate) => return Ok(gate),
                Err(e) => error = e,
            }
        }
        Err(error)
    }

    /// Waits, [`QUIESCE_WAIT`] at most, while what `what` names is running; says whether
    /// it was.
    fn wait_for_recovery(&self, what: Wait) -> bool {
        let running = || {
            let health = self.health();
            health.recovering || (matches!(what, Wait::AlsoFirstFailures) && health.first_failures > 0)
        };
        let started = Instant::now();
        let mut waited = false;
        while running() && started.elapsed() < QUIESCE_WAIT {
            waited = true;
            std::thread::sleep(Duration::from_millis(2));
        }
        waited
    }

    /// Records that the token is gone (`why`: the failed call and its return value, see
    /// `Pkcs11Error::brief`) and returns the error for the caller.
    pub(crate) fn mark_down(&self, why: String) -> StoreError {
        let mut health = self.health();
        if health.down.is_none() {
            tracing::warn!(token = %self.token, error = %why, "token unavailable; requests fail until it is back (one recovery attempt per second at most)");
            health.down_since = Some(Instant::now());
        }
        health.down = Some(why);
        drop(health);
        self.unavailable()
    }

    /// The error for a request while the token is down.
    fn unavailable(&self) -> StoreError {
        let health = self.health();
        match health.refused {
            Some(Refusal::PinIncorrect) => return StoreError::PinIncorrect { token: self.token.clone() },
            Some(Refusal::PinLocked) => return StoreError::PinLocked { token: self.token.clone() },
            None => {}
        }
        let why = health.down.clone().unwrap_or_else(|| "not logged in".into());
        StoreError::Unavailable {
            what: format!("token `{}` is not reachable ({why}); retrying at most once per second", self.token),
            source: None,
        }
    }

    /// What `status` reports.
    pub(crate) fn report(&self) -> BackendHealth {
        let health = self.health();
        BackendHealth { up: health.down.is_none(), last_error: health.down.clone(), recovery_attempts: health.attempts }
    }

    /// One recovery attempt, if `due` and the PIN was never refused. Fails with the reason the token is still unavailable.
    fn recover(&self, due: Due) -> Result<(), StoreError> {
        let mut health = self.health();
        if health.down.is_none() {
            return Ok(());
        }
        let due = match due {
            Due::Now => !health.recovering,
            Due::AfterInterval => health.last_attempt.is_none_or(|t| t.elapsed() >= RECOVERY_INTERVAL),
        };
        if health.refused.is_some() || !due {
            drop(health);
            return Err(self.unavailable());
        }
        health.last_attempt = Some(Instant::now());
        health.attempts += 1;
        health.recovering = true;
        let attempt = health.attempts;
        drop(health);
        let result = self.attempt_recovery(attempt);
        self.health().recovering = false;
        result
    }

    /// The recovery attempt number `attempt` itself.
    fn attempt_recovery(&self, attempt: u64) -> Result<(), StoreError> {
        let Some(mut gate) = self.quiesce() else {
            tracing::warn!(token = %self.token, "recovery postponed: a worker is still inside a device call");
            return Err(self.unavailable());
        };
        tracing::info!(token = %self.token, attempt, "trying to recover the token: C_Finalize, C_Initialize, C_Login");
        // Close the old login session while its module instance is still initialised, then
        // start a fresh instance (a finalize on an uninitialised module fails harmlessly).
        gate.token = None;
        let _ = self.ctx.clone().finalize();
        match connect(&self.ctx, &self.selector, Some(&self.device), &self.pin) {
            Ok((logged_in, _, _)) => {
                gate.token = Some(logged_in);
                gate.generation += 1;
                drop(gate);
                let mut health = self.health();
                let down_for = health.down_since.take().map(|t| t.elapsed()).unwrap_or_default();
                health.down = None;
                // The interval bounds attempts on a token that stays away; one that was back
                // gets its next attempt as soon as it fails again.
                health.last_attempt = None;
                tracing::info!(token = %self.token, attempt, down_ms = down_for.as_millis() as u64, "token is back: logged in again");
                Ok(())
            }
            Err((e, _)) => {
                drop(gate);
                let refusal = match e.rv() {
                    Some(RvError::PinIncorrect) => Some(Refusal::PinIncorrect),
                    Some(RvError::PinLocked) => Some(Refusal::PinLocked),
                    _ => None,
                };
                let why = e.brief();
                if let Some(refusal) = refusal {
                    tracing::error!(token = %self.token, error = %why, "the token refused the PIN on re-login; not retrying (the token may lock); restart the agent with the right PIN");
                    self.health().refused = Some(refusal);
                }
                Err(self.mark_down(why))
            }
        }
    }

    /// The write side of the gate, once no worker is inside a device call; `None` after
    /// [`QUIESCE_WAIT`].
    fn quiesce(&self) -> Option<RwLockWriteGuard<'_, Gate>> {
        let started = Instant::now();
        loop {
            match self.gate.try_write() {
                Ok(gate) => return Some(gate),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if started.elapsed() < QUIESCE_WAIT => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(std::sync::TryLockError::WouldBlock) => return None,
            }
        }
    }
}

/// Finds the token and logs in. With `expect` (the description of the token the agent
/// started with: manufacturer, model, serial), a different token answering to the selector
/// is refused before the PIN is offered to it. On failure returns the error and, when the
/// token was found, its label (for the message).
fn connect(
    ctx: &Pkcs11,
    selector: &TokenSelector,
    expect: Option<&str>,
    pin: &Pin,
) -> Result<(LoggedIn, String, String), (Pkcs11Error, Option<String>)> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err((Pkcs11Error::call("C_Initialize")(e), None)),
    }
    let (slot, token, device) = find_token(ctx, selector).map_err(|e| (e, None))?;
    if let Some(expected) = expect.filter(|e| *e != device) {
        let replaced =
            Pkcs11Error::TokenReplaced { selector: selector.to_string(), expected: expected.to_owned(), found: device };
        return Err((replaced, Some(token)));
    }
    let session =
        ctx.open_rw_session(slot).map_err(|e| (Pkcs11Error::call("C_OpenSession")(e), Some(token.clone())))?;
    let auth = AuthPin::from(pin.expose());
    match session.login(UserType::User, Some(&auth)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err((Pkcs11Error::call("C_Login")(e), Some(token))),
    }
    drop(auth);
    Ok((LoggedIn { slot, _login: Mutex::new(session) }, token, device))
}

/// Finds the one token matching `selector`: returns its slot, label and a description.
pub(crate) fn find_token(ctx: &Pkcs11, selector: &TokenSelector) -> Result<(Slot, String, String), Pkcs11Error> {
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
