//! [`ClientError`]: what can go wrong talking to the agent, for both clients.

use keyward_protocol::{ErrorCode, MAX_REPLY_BYTES};

/// What can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to the keyward agent at `{path}` (is `keyward serve` running?)")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed mid-exchange.
    #[error("connection to the agent failed")]
    Io(#[from] std::io::Error),
    /// The agent closed the connection without a reply.
    #[error("the agent closed the connection")]
    Closed,
    /// The reply's length prefix is over [`MAX_REPLY_BYTES`].
    #[error("the agent's reply of {len} bytes exceeds the limit of {max} bytes", max = MAX_REPLY_BYTES)]
    ReplyTooLarge {
        /// The announced length.
        len: usize,
    },
    /// The reply did not parse.
    #[error("unreadable reply from the agent")]
    BadReply(#[source] serde_json::Error),
    /// The reply answers another request.
    #[error("the agent answered request {got}, expected {sent}")]
    WrongId {
        /// Our request id.
        sent: u64,
        /// The reply's id.
        got: u64,
    },
    /// The agent answered with an error.
    #[error("agent refused: {message} ({code})")]
    Agent {
        /// Stable code.
        code: ErrorCode,
        /// Message.
        message: String,
    },
}
