//! The side thread: runs the jobs no client waits on directly — the health monitor's
//! `check`, a metrics scrape's check and `status`'s key list — so that a device call stuck
//! there holds up neither. Jobs queue on a short bounded channel; a caller waits for the
//! answer only as long as it chooses. A job that did not run says why ([`NotRun`]): a full
//! queue behind a job that has run for a while is a stuck thread; a full queue of jobs that
//! move (many `status` requests at once) is only busy, which says nothing about the device.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyward_core::StoreError;

use super::job::{BackendJob, JobOutput};
use super::Back;

/// Jobs that may wait for the side thread.
const QUEUE: usize = 4;

type Reply = SyncSender<Result<JobOutput, StoreError>>;

/// Why a job handed to the side thread has no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotRun {
    /// The queue was full; the job in progress had run this long (zero: none was, it had
    /// just finished).
    Busy {
        /// How long the side thread had been in its current job.
        running_for: Duration,
    },
    /// Queued, but no answer within the wait.
    NoAnswer,
}

/// The handle that queues jobs on the side thread.
#[derive(Clone)]
pub struct Side {
    jobs: SyncSender<(BackendJob<'static>, Reply)>,
    /// When the job in progress started; `None` between jobs.
    current: Arc<Mutex<Option<Instant>>>,
}

impl Side {
    /// Starts the thread; it holds `back` only while it runs and ends when `Side` is dropped.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(back: std::sync::Weak<Back>) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (jobs, queue) = sync_channel(QUEUE);
        let current = Arc::new(Mutex::new(None));
        let started = Arc::clone(&current);
        let thread =
            std::thread::Builder::new().name("keyward-side".into()).spawn(move || serve(&back, &queue, &started))?;
        Ok((Self { jobs, current }, thread))
    }

    /// Runs `job` on the side thread, waiting at most `wait` for its answer.
    ///
    /// # Errors
    /// [`NotRun`]: the queue is full, or no answer came in time.
    pub fn run(&self, job: BackendJob<'static>, wait: Duration) -> Result<Result<JobOutput, StoreError>, NotRun> {
        let (tx, rx) = sync_channel(1);
        if self.jobs.try_send((job, tx)).is_err() {
            let current = *self.current.lock().unwrap_or_else(PoisonError::into_inner);
            return Err(NotRun::Busy { running_for: current.map_or(Duration::ZERO, |started| started.elapsed()) });
        }
        rx.recv_timeout(wait).map_err(|_| NotRun::NoAnswer)
    }
}

fn serve(
    back: &std::sync::Weak<Back>,
    queue: &Receiver<(BackendJob<'static>, Reply)>,
    current: &Mutex<Option<Instant>>,
) {
    let mark = |at: Option<Instant>| *current.lock().unwrap_or_else(PoisonError::into_inner) = at;
    while let Ok((job, reply)) = queue.recv() {
        let Some(back) = back.upgrade() else { return };
        mark(Some(Instant::now()));
        let result = back.run(job, Instant::now() + back.timeout());
        mark(None);
        let _ = reply.send(result);
    }
}
