//! A bare socket client for tests that must send what a well-behaved client never would:
//! hand-written or broken frames, a request without reading its reply, half a frame.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// `body` with its 4-byte big-endian length prefix.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("frame under 4 GiB");
    let mut f = len.to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// One raw connection.
pub struct RawConn {
    /// The stream, for writes of any shape.
    pub stream: UnixStream,
}

impl RawConn {
    /// Connects, with a 10 s read timeout.
    ///
    /// # Panics
    /// When the agent does not accept the connection.
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).expect("connect to the agent");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set read timeout");
        Self { stream }
    }

    /// Sends `body` as one frame.
    ///
    /// # Panics
    /// When the write fails.
    pub fn send(&mut self, body: &[u8]) {
        self.stream.write_all(&frame(body)).expect("write frame");
    }

    /// Reads one reply frame as JSON.
    ///
    /// # Panics
    /// When no whole JSON frame arrives.
    pub fn read_reply(&mut self) -> Value {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).expect("reply length");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).expect("reply body");
        serde_json::from_slice(&body).expect("reply is JSON")
    }

    /// Sends `body`, reads the reply.
    pub fn request(&mut self, body: &[u8]) -> Value {
        self.send(body);
        self.read_reply()
    }

    /// True when the agent has closed the connection: end of stream, or a reset (what a
    /// Unix socket reports when the agent closed it with our unread request still queued).
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        match self.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// The error code of an error reply, or `None` for a success.
pub fn error_code(reply: &Value) -> Option<&str> {
    (reply["status"] == "error").then(|| reply["body"]["code"].as_str().unwrap_or("<no code>"))
}
