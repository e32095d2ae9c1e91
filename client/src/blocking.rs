//! [`BlockingAgentClient`]: the synchronous twin of [`crate::AgentClient`], over a
//! std `UnixStream`, for callers that cannot await — rustls calls `Signer::sign`
//! synchronously (see the agent's `tls/signer.rs`). Same framing (`docs/protocol.md` §2: 4-byte
//! big-endian length, then JSON), same reply checks, plus read/write timeouts so a stuck
//! agent cannot hold a thread forever.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use keyward_protocol::{self as protocol, Operation, Reply, Request};

use crate::agent_client::reply_outcome;
use crate::error::ClientError;

/// One blocking connection to the agent.
#[derive(Debug)]
pub struct BlockingAgentClient {
    stream: UnixStream,
    next_id: u64,
}

impl BlockingAgentClient {
    /// Connects to the agent's socket; each later read or write fails after `io_timeout`.
    ///
    /// # Errors
    /// [`ClientError::Connect`].
    pub fn connect(path: &Path, io_timeout: Duration) -> Result<Self, ClientError> {
        let connect_err = |source| ClientError::Connect { path: path.display().to_string(), source };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        stream.set_read_timeout(Some(io_timeout)).map_err(connect_err)?;
        stream.set_write_timeout(Some(io_timeout)).map_err(connect_err)?;
        Ok(Self { stream, next_id: 1 })
    }

    /// Sends one request and waits for its reply.
    ///
    /// # Errors
    /// [`ClientError::Agent`] for an error reply; transport errors otherwise.
    pub fn call(&mut self, op: Operation) -> Result<Reply, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = protocol::encode_frame(&Request { v: protocol::PROTOCOL_VERSION, id, op })
            .map_err(ClientError::BadReply)?;
        if let Err(e) = self.stream.write_all(&frame) {
            // As in `AgentClient::call`: a refused peer is answered before the agent reads.
            if !matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) {
                return Err(e.into());
            }
            let reply = self.read_frame().map_err(|_| ClientError::Io(e))?;
            return reply_outcome(&reply, None);
        }
        let reply = self.read_frame()?;
        reply_outcome(&reply, Some(id))
    }

    fn read_frame(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut prefix = [0u8; protocol::LENGTH_PREFIX_BYTES];
        self.stream.read_exact(&mut prefix).map_err(closed_or_io)?;
        let len = u32::from_be_bytes(prefix) as usize;
        if len > protocol::MAX_REPLY_BYTES {
            return Err(ClientError::ReplyTooLarge { len });
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).map_err(closed_or_io)?;
        Ok(body)
    }
}

fn closed_or_io(e: std::io::Error) -> ClientError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ClientError::Closed
    } else {
        ClientError::Io(e)
    }
}
