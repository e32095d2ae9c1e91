//! The side thread: runs the jobs no client waits on directly — the health monitor's
//! `check` and `status`'s key list — so that a device call stuck there holds up neither.
//! Jobs queue on a short bounded channel; a caller waits for the answer only as long as it
//! chooses, and gets `None` when the thread is busy or does not answer in time.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyward_core::StoreError;

use super::job::{BackendJob, JobOutput};
use super::Back;

/// Jobs that may wait for the side thread.
const QUEUE: usize = 4;

type Reply = SyncSender<Result<JobOutput, StoreError>>;

/// The handle that queues jobs on the side thread.
#[derive(Clone)]
pub struct Side {
    jobs: SyncSender<(BackendJob<'static>, Reply)>,
}

impl Side {
    /// Starts the thread; it holds `back` only while it runs and ends when `Side` is dropped.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(back: std::sync::Weak<Back>) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (jobs, queue) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new().name("keyward-side".into()).spawn(move || serve(&back, &queue))?;
        Ok((Self { jobs }, thread))
    }

    /// Runs `job` on the side thread, waiting at most `wait` for its answer.
    pub fn run(&self, job: BackendJob<'static>, wait: Duration) -> Option<Result<JobOutput, StoreError>> {
        let (tx, rx) = sync_channel(1);
        self.jobs.try_send((job, tx)).ok()?;
        rx.recv_timeout(wait).ok()
    }
}

fn serve(back: &std::sync::Weak<Back>, queue: &Receiver<(BackendJob<'static>, Reply)>) {
    while let Ok((job, reply)) = queue.recv() {
        let Some(back) = back.upgrade() else { return };
        let result = back.run(job, Instant::now() + back.timeout());
        let _ = reply.send(result);
    }
}
