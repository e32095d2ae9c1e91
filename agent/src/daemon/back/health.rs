//! Backend health as `status` reports it, known without using a session: so `status`
//! answers even while every session is stuck in a device call.
//!
//! Two sources are combined: what the backend tracks itself ([`Backend::health`]: the
//! PKCS#11 backend knows when its token is gone and counts its recovery attempts), and what
//! the agent saw — results of requests, plus a health check (`KeyStore::check`) that a
//! monitor thread hands to the side thread (`side.rs`) every [`CHECK_INTERVAL`]. The check
//! also gives a backend that is down the chance to recover when no client is asking.
//! Recording a success while the backend is up costs one atomic load: no lock on the
//! request path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use keyward_core::error::chain;
use keyward_core::{Backend, BackendHealth, StoreError};

/// How often the monitor queues a health check.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What the agent last saw of the backend.
#[derive(Default)]
pub struct Observed {
    down: Mutex<Option<String>>,
    /// Whether `down` holds a reason: the lock-free fast path of [`Observed::record`].
    seen_down: AtomicBool,
}

impl Observed {
    /// Records the outcome of a backend call: a device-level failure marks the backend
    /// down, a success marks it up, anything else (a bad request, a busy queue) says
    /// nothing about the device.
    pub fn record<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) if !self.seen_down.load(Ordering::Acquire) => {}
            Ok(_) => {
                let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
                *down = None;
                self.seen_down.store(false, Ordering::Release);
            }
            Err(
                e @ (StoreError::Unavailable { .. } | StoreError::PinIncorrect { .. } | StoreError::PinLocked { .. }),
            ) => self.mark_down(chain(e)),
            Err(_) => {}
        }
    }

    fn mark_down(&self, why: String) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        *down = Some(why);
        // Under the lock, so that the flag and the reason never disagree.
        self.seen_down.store(true, Ordering::Release);
    }

    /// Records that a health check got no answer in time.
    pub fn record_no_answer(&self, millis: u64) {
        self.mark_down(format!("no worker answered a health check within {millis} ms (workers stuck or overloaded)"));
    }

    /// The combined view: down when either the backend or the agent says so.
    pub fn combine(&self, backend: &dyn Backend) -> BackendHealth {
        let seen = self.down.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let own = backend.health();
        let attempts = own.as_ref().map_or(0, |h| h.recovery_attempts);
        let backend_error = own.filter(|h| !h.up).map(|h| h.last_error.unwrap_or_else(|| "down".into()));
        let last_error = backend_error.or(seen);
        BackendHealth { up: last_error.is_none(), last_error, recovery_attempts: attempts }
    }
}

/// The monitor thread; stopped by [`Monitor::stop`].
pub struct Monitor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Starts a thread that calls `check` every [`CHECK_INTERVAL`] until stopped.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(check: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("keyward-health".into()).spawn(move || {
            let tick = Duration::from_millis(50);
            let mut waited = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                waited += tick;
                if waited >= CHECK_INTERVAL {
                    waited = Duration::ZERO;
                    check();
                }
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
