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
            // The caller gave up (timeout) while this waited behind a stuck call: do not
            // run a device operation nobody will receive.
            if tx.is_closed() {
                return;
            }
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

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};
    use std::time::Instant;

    use keyward_core::private_key::PrivateKeyMaterial;
    use keyward_core::{KeyAlgorithm, KeyId, KeyInfo, PublicKey, SignProfile};
    use zeroize::Zeroizing;

    use super::*;

    /// Released once; until then, signing with key `stuck` blocks like a hung device call.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
    }

    impl Gate {
        fn wait(&self) {
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }
        fn release(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    struct FakeStore {
        gate: Arc<Gate>,
        signed: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl KeyStore for FakeStore {
        fn info(&self) -> StoreInfo {
            StoreInfo { backend: "fake", device: "fake".into() }
        }
        fn list(&mut self) -> Result<Vec<KeyInfo>, StoreError> {
            Ok(Vec::new())
        }
        fn generate(&mut self, _: &KeyId, _: KeyAlgorithm) -> Result<KeyInfo, StoreError> {
            Err(StoreError::Unsupported { what: "fake".into() })
        }
        fn import(&mut self, _: &KeyId, _: &PrivateKeyMaterial) -> Result<KeyInfo, StoreError> {
            Err(StoreError::Unsupported { what: "fake".into() })
        }
        fn public_key(&mut self, _: &KeyId) -> Result<PublicKey, StoreError> {
            Err(StoreError::Unsupported { what: "fake".into() })
        }
        fn sign(&mut self, id: &KeyId, _: SignProfile, msg: &[u8]) -> Result<Vec<u8>, StoreError> {
            if id.as_str() == "stuck" {
                self.gate.wait();
            }
            self.signed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(msg.to_vec())
        }
        fn decrypt(&mut self, _: &KeyId, _: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
            Err(StoreError::Unsupported { what: "fake".into() })
        }
        fn check(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    struct FakeBackend {
        gate: Arc<Gate>,
        signed: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Backend for FakeBackend {
        fn max_workers(&self) -> usize {
            2
        }
        fn open_store(&self) -> Result<Box<dyn KeyStore>, StoreError> {
            Ok(Box::new(FakeStore { gate: Arc::clone(&self.gate), signed: Arc::clone(&self.signed) }))
        }
    }

    async fn sign(handle: &StoreHandle, key: &str) -> Result<Vec<u8>, StoreError> {
        let id = KeyId::new(key).unwrap();
        handle.call(move |s| s.sign(&id, SignProfile::Nvflare, b"m")).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_worker_times_out_while_the_other_worker_and_health_keep_answering() {
        let gate = Arc::new(Gate::default());
        let signed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let backend = FakeBackend { gate: Arc::clone(&gate), signed: Arc::clone(&signed) };
        let (handle, workers) = StoreHandle::start(Arc::new(backend), 16, Duration::from_millis(300)).unwrap();

        let started = Instant::now();
        assert!(matches!(sign(&handle, "stuck").await, Err(StoreError::Timeout { millis: 300 })));
        assert!(started.elapsed() < Duration::from_secs(2));
        // One worker is stuck; the other serves every other request.
        for _ in 0..20 {
            assert_eq!(sign(&handle, "fine").await.unwrap(), b"m");
        }
        // Health needs no worker.
        let t = Instant::now();
        assert!(handle.health().up);
        assert!(t.elapsed() < Duration::from_millis(50));

        // A second stuck call takes the last worker: requests now time out, health still answers.
        assert!(matches!(sign(&handle, "stuck").await, Err(StoreError::Timeout { .. })));
        assert!(matches!(sign(&handle, "fine").await, Err(StoreError::Timeout { .. })));
        let _ = handle.health();

        // Released: the stuck calls finish, the timed-out job waiting behind them is skipped
        // (nobody would receive it), and service resumes.
        let before = signed.load(std::sync::atomic::Ordering::SeqCst);
        gate.release();
        let resumed = Instant::now();
        loop {
            match sign(&handle, "fine").await {
                Ok(_) => break,
                Err(StoreError::Timeout { .. }) if resumed.elapsed() < Duration::from_secs(5) => {}
                Err(e) => panic!("{e}"),
            }
        }
        // The released workers count their signatures a moment after waking: wait for them,
        // then make sure the skipped job never ran.
        while signed.load(std::sync::atomic::Ordering::SeqCst) < before + 3
            && resumed.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            signed.load(std::sync::atomic::Ordering::SeqCst),
            before + 3,
            "2 released + 1 new; the skipped job never ran"
        );
        drop(handle);
        workers.join();
    }
}
