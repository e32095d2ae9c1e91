//! [`AgentClient`]: an async client of the agent's socket protocol, used by the CLI, the tests
//! and the benchmark. It speaks exactly what `docs/protocol.md` describes.

use std::path::Path;

use futures::{SinkExt, StreamExt};
use keyward_protocol::{self as protocol, Operation, Outcome, Reply, Request, Response};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::error::ClientError;

/// One connection to the agent.
pub struct AgentClient {
    framed: Framed<UnixStream, LengthDelimitedCodec>,
    next_id: u64,
}

impl AgentClient {
    /// Connects to the agent's socket.
    ///
    /// # Errors
    /// [`ClientError::Connect`].
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect { path: path.display().to_string(), source })?;
        Ok(Self { framed: Framed::new(stream, protocol::codec(protocol::MAX_REPLY_BYTES)), next_id: 1 })
    }

    /// Sends one request and waits for its reply.
    ///
    /// # Errors
    /// [`ClientError::Agent`] for an error reply; transport errors otherwise.
    pub async fn call(&mut self, op: Operation) -> Result<Reply, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request { v: protocol::PROTOCOL_VERSION, id, op };
        let body = serde_json::to_vec(&request).map_err(ClientError::BadReply)?;
        if let Err(e) = self.framed.send(bytes::Bytes::from(body)).await {
            // The agent may have answered and closed before reading (a refused peer gets
            // `permission_denied` at once): read that answer rather than report the pipe.
            if !matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) {
                return Err(e.into());
            }
            let frame = self.framed.next().await.ok_or(ClientError::Io(e))??;
            return reply_outcome(&frame, None);
        }
        let frame = self.framed.next().await.ok_or(ClientError::Closed)??;
        reply_outcome(&frame, Some(id))
    }
}

/// Parses a reply frame; `expected_id` is checked when given (id 0 is a connection-level
/// error the agent sends before it could read a request). Shared with
/// [`crate::BlockingAgentClient`].
pub(crate) fn reply_outcome(frame: &[u8], expected_id: Option<u64>) -> Result<Reply, ClientError> {
    let response: Response = serde_json::from_slice(frame).map_err(ClientError::BadReply)?;
    if let Some(id) = expected_id.filter(|id| response.id != *id && response.id != 0) {
        return Err(ClientError::WrongId { sent: id, got: response.id });
    }
    match response.outcome {
        Outcome::Ok(reply) => Ok(reply),
        Outcome::Error(e) => Err(ClientError::Agent { code: e.code, message: e.message }),
    }
}
