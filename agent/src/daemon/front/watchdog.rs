//! The watchdog: one thread that looks at every open connection a few times per request
//! timeout and, for a request whose backend call has not returned by its deadline, answers
//! `timeout` in its place. It claims the connection (`conn.rs`), then starts a new thread
//! that writes the answer and carries on serving the connection, so that the client can
//! keep using it; the thread stuck in the device call keeps its session until the call
//! returns, then drops the late result. Other connections, other sessions, `status` and
//! `hello` never wait for it. The scan costs nothing per request: requests only store their
//! deadline in their connection's state word.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::conn::now_ms;
use super::connection;
use crate::daemon::Agent;

/// The watchdog thread; stopped by [`Watchdog::stop`].
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How often the watchdog looks: a twentieth of the request timeout, between 5 and 100 ms.
fn tick(request_timeout: Duration) -> Duration {
    (request_timeout / 20).clamp(Duration::from_millis(5), Duration::from_millis(100))
}

impl Watchdog {
    /// Starts the watchdog over `agent`'s connections.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(agent: &Arc<Agent>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let agent = Arc::downgrade(agent);
        let thread = std::thread::Builder::new().name("keyward-watchdog".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Some(agent) = agent.upgrade() else { return };
                std::thread::sleep(tick(agent.back.timeout()));
                scan(&agent);
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

fn scan(agent: &Arc<Agent>) {
    let now = now_ms();
    for conn in agent.connections.all() {
        let Some(pending) = conn.rescue(now) else { continue };
        let (conn_for_thread, agent_for_thread) = (Arc::clone(&conn), Arc::clone(agent));
        let started = std::thread::Builder::new()
            .name("keyward-conn".into())
            .spawn(move || connection::resume(&conn_for_thread, &agent_for_thread, &pending));
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start a thread to answer a timed-out request; closing its connection");
            connection::end(&conn, agent);
        }
    }
}
