//! The accept loop both tunnels share (shape after mini-redis's `server::run`): at most
//! `max_connections` connections are served at once (a `Semaphore`; further clients wait in
//! the listen backlog), a failed accept (EMFILE and the like) backs off 100 ms rather than
//! spin, and `shutdown` stops accepting. Connections still running then are the caller's to
//! end, with the runtime.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Accepts with `accept` until `shutdown`; `serve` turns each accepted connection into the
/// task that serves it, or `None` to close it at once.
pub(crate) async fn accept_loop<C, Fut>(
    max_connections: usize,
    shutdown: CancellationToken,
    mut accept: impl AsyncFnMut() -> std::io::Result<C>,
    serve: impl Fn(C) -> Option<Fut>,
) where
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = accept() => accepted,
        };
        match accepted {
            Ok(connection) => {
                if let Some(task) = serve(connection) {
                    tokio::spawn(async move {
                        task.await;
                        drop(permit);
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
