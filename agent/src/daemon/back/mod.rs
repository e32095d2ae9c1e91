//! The back end: the key stores and how requests reach them. [`Back::run`] runs a
//! [`BackendJob`] on the calling thread with a store lent by the [`SessionPool`]: no
//! hand-off to another thread, so a request costs the client one round trip. The side
//! thread (`side.rs`) runs what no client waits on (health checks, `status`'s key list);
//! the monitor (`health.rs`) queues a check every second and keeps the health `status`
//! reports without using a session. Hung device calls are the front end's watchdog's
//! business (`front/watchdog.rs`): the thread stuck in one keeps its store until the
//! call returns, and the other stores keep serving.

mod health;
mod job;
mod pool;
mod side;

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyward_core::{Backend, BackendHealth, StoreError, StoreInfo};

pub use health::{Observed, CHECK_INTERVAL};
pub use job::{BackendJob, JobOutput, ProfileChoice};
pub use pool::{Session, SessionPool};
pub use side::NotRun;

use health::Monitor;
use side::Side;

/// The key stores, shared by every connection.
pub struct Back {
    pool: SessionPool,
    info: StoreInfo,
    backend: Arc<dyn Backend>,
    observed: Observed,
    timeout: Duration,
    side: Mutex<Option<Side>>,
}

/// The threads of the back end; [`BackThreads::stop`] ends them and closes idle sessions.
pub struct BackThreads {
    back: Arc<Back>,
    side: Option<JoinHandle<()>>,
    monitor: Monitor,
}

impl BackThreads {
    /// Stops the monitor and the side thread, and closes the pool: idle stores are closed
    /// now, stores still in a call when they come back.
    pub fn stop(mut self) {
        self.monitor.stop();
        drop(self.back.side.lock().unwrap_or_else(PoisonError::into_inner).take());
        if let Some(side) = self.side.take() {
            let _ = side.join();
        }
        self.back.pool.close();
    }
}

impl Back {
    /// Opens `backend.max_workers()` stores (failing early if the device is unusable), and
    /// starts the side thread and the health monitor. At most `max_waiting` requests wait
    /// for a store; each job may take `timeout`.
    ///
    /// # Errors
    /// The first store that fails to open, or a thread that cannot start.
    pub fn start(
        backend: Arc<dyn Backend>,
        max_waiting: usize,
        timeout: Duration,
    ) -> Result<(Arc<Self>, BackThreads), StoreError> {
        let stores = (0..backend.max_workers()).map(|_| backend.open_store()).collect::<Result<Vec<_>, _>>()?;
        let info = stores
            .first()
            .map(|s| s.info())
            .ok_or(StoreError::Unavailable { what: "no key store could be opened".into(), source: None })?;
        let back = Arc::new(Self {
            pool: SessionPool::new(stores, max_waiting),
            info,
            backend,
            observed: Observed::default(),
            timeout,
            side: Mutex::new(None),
        });
        let (side, side_thread) =
            Side::start(Arc::downgrade(&back)).map_err(|e| StoreError::backend("starting the side thread", e))?;
        *back.side.lock().unwrap_or_else(PoisonError::into_inner) = Some(side);
        let checked = Arc::downgrade(&back);
        let monitor = Monitor::start(move || {
            if let Some(back) = checked.upgrade() {
                back.check_health();
            }
        })
        .map_err(|e| StoreError::backend("starting health monitor thread", e))?;
        let threads = BackThreads { back: Arc::clone(&back), side: Some(side_thread), monitor };
        Ok((back, threads))
    }

    /// Runs `job` on this thread with a store from the pool, waiting for one until
    /// `deadline`; the result also feeds the health `status` reports.
    ///
    /// # Errors
    /// As [`SessionPool::acquire`], and whatever the store returns.
    pub fn run(&self, job: BackendJob<'_>, deadline: Instant) -> Result<JobOutput, StoreError> {
        let result = self.pool.acquire(deadline, self.timeout).and_then(|mut session| job.run(session.store()));
        self.observed.record(&result);
        result
    }

    /// Runs `job` on the side thread, waiting at most `wait`.
    ///
    /// # Errors
    /// [`NotRun`]: busy, or no answer in time (`NoAnswer` too while shutting down).
    pub fn run_aside(&self, job: BackendJob<'static>, wait: Duration) -> Result<Result<JobOutput, StoreError>, NotRun> {
        // Cloned out of the lock: a caller waiting for its answer must not hold up another.
        let side = self.side.lock().unwrap_or_else(PoisonError::into_inner).clone().ok_or(NotRun::NoAnswer)?;
        side.run(job, wait)
    }

    /// A health check on the side thread: `Some(up)` when it says something about the
    /// backend; `None` when the side thread is only busy with jobs that move (a full queue
    /// behind a job younger than the request timeout), which says nothing either way. No
    /// answer within the timeout, or a queue stuck behind an older job, is `Some(false)`
    /// and marks the backend down, as a failed request does.
    pub fn probe(&self) -> Option<bool> {
        match self.run_aside(BackendJob::Check, self.timeout) {
            Ok(result) => {
                self.observed.record(&result);
                Some(result.is_ok())
            }
            Err(NotRun::Busy { running_for }) if running_for < self.timeout => None,
            Err(_) => {
                self.observed.record_no_answer(u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX));
                Some(false)
            }
        }
    }

    /// The monitor's check ([`Back::probe`]).
    fn check_health(&self) {
        let _ = self.probe();
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What the store said about itself at start.
    pub fn info(&self) -> &StoreInfo {
        &self.info
    }

    /// Number of stores (sessions).
    pub fn sessions(&self) -> usize {
        self.pool.size()
    }

    /// The backend's health, without using a store.
    pub fn health(&self) -> BackendHealth {
        self.observed.combine(&*self.backend)
    }
}
