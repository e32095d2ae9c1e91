//! [`StoreHandle`]: the async front end's only way to reach a key store. Jobs go on a
//! bounded queue to named worker threads, each owning one `KeyStore` (one PKCS#11 session,
//! or the one TPM context), so blocking device calls never run on the tokio runtime. A full
//! queue answers `Busy` at once; a reply that takes too long answers `Timeout` (the worker
//! stays in its device call; the other workers keep serving). Health for `status` is kept
//! without a worker (`store_health.rs`).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender, TrySendError};
use keyward_core::{Backend, BackendHealth, KeyStore, StoreError, StoreInfo};
use tokio::sync::oneshot;

use crate::store_health::{Monitor, Observed};

type Job = Box<dyn FnOnce(&mut dyn KeyStore) + Send>;

/// A cloneable handle that runs closures on the store's worker threads.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: Sender<Job>,
    timeout: Duration,
    info: Arc<StoreInfo>,
    workers: usize,
    backend: Arc<dyn Backend>,
    observed: Arc<Observed>,
}

/// The worker threads; dropping every [`StoreHandle`] and then calling [`Workers::join`]
/// lets them finish the queue and close their sessions.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    monitor: Monitor,
}

impl Workers {
    /// Stops the health monitor, then waits for the workers to drain the queue and exit.
    pub fn join(self) {
        self.monitor.stop();
        for handle in self.threads {
            let _ = handle.join();
        }
    }
}

impl StoreHandle {
    /// Opens `backend.max_workers()` stores (failing early if the device is unusable),
    /// starts one thread for each, and the health monitor.
    ///
    /// # Errors
    /// The first store that fails to open.
    pub fn start(
        backend: Arc<dyn Backend>,
        queue_depth: usize,
        timeout: Duration,
    ) -> Result<(Self, Workers), StoreError> {
        let stores = (0..backend.max_workers()).map(|_| backend.open_store()).collect::<Result<Vec<_>, _>>()?;
        let info = Arc::new(
            stores
                .first()
                .map(|s| s.info())
                .ok_or(StoreError::Unavailable { what: "no worker could be started".into(), source: None })?,
        );
        let (jobs, queue) = bounded::<Job>(queue_depth);
        let mut threads = Vec::new();
        for (n, mut store) in stores.into_iter().enumerate() {
            let queue = queue.clone();
            let thread = std::thread::Builder::new()
                .name(format!("keyward-store-{n}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        job(store.as_mut());
                    }
                })
                .map_err(|e| StoreError::backend("starting worker thread", e))?;
            threads.push(thread);
        }
        let workers = threads.len();
        let observed = Arc::new(Observed::default());
        let monitor = Monitor::start(health_check(jobs.clone(), Arc::clone(&observed), timeout))
            .map_err(|e| StoreError::backend("starting health monitor thread", e))?;
        Ok((Self { jobs, timeout, info, workers, backend, observed }, Workers { threads, monitor }))
    }

    /// Runs `op` on a worker and waits for its result.
    ///
    /// # Errors
    /// [`StoreError::Busy`] when the queue is full, [`StoreError::Timeout`] when no result
    /// arrives in time, and whatever `op` returns.
    pub async fn call<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn KeyStore) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            let _ = tx.send(op(store));
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(StoreError::Busy),
            Err(TrySendError::Disconnected(_)) => {
                return Err(StoreError::Unavailable { what: "key store workers have stopped".into(), source: None })
            }
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(result)) => {
                self.observed.record(&result);
                result
            }
            Ok(Err(_)) => Err(StoreError::Unavailable { what: "key store worker died".into(), source: None }),
            Err(_) => Err(StoreError::Timeout { millis: self.timeout.as_millis() as u64 }),
        }
    }

    /// What the store said about itself at start.
    pub fn info(&self) -> &StoreInfo {
        &self.info
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The backend's health, without asking a worker.
    pub fn health(&self) -> BackendHealth {
        self.observed.combine(&*self.backend)
    }
}

/// The monitor's periodic check: one `KeyStore::check` job through the normal queue (a
/// full queue skips it), its result recorded like any request's.
fn health_check(jobs: Sender<Job>, observed: Arc<Observed>, timeout: Duration) -> impl Fn() + Send + 'static {
    move || {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move |store| {
            let _ = tx.send(store.check());
        });
        if jobs.try_send(job).is_err() {
            return;
        }
        match rx.recv_timeout(timeout) {
            Ok(result) => observed.record(&result),
            Err(_) => observed.record_no_answer(timeout.as_millis() as u64),
        }
    }
}
