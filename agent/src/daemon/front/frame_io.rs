//! Frames on a blocking Unix stream: [`FrameReader`] reads one whole frame — its length
//! checked before anything is allocated for it, within the read timeout — usually with a
//! single `recv`; [`encode`] builds a reply frame in one buffer so that [`write_frame`]
//! sends it with a single `send`, within the write timeout. The socket's own timeouts
//! (`SO_RCVTIMEO`, `SO_SNDTIMEO`, set once per connection) bound a frame read in one go; a
//! frame that comes in pieces gets the time left, so the limit holds for the whole frame.
//!
//! **A whole frame is peeked, and taken off the socket only after its reply is sent.** When
//! the reader takes a client's bytes off a Unix socket, the kernel wakes whoever sleeps on
//! the client's socket to say it may write again (`unix_write_space`) — and a client that
//! already waits for its reply in a blocking `recv` sleeps there: it is woken for nothing,
//! which costs the agent the wake-up (an inter-processor interrupt, several µs in a VM) and
//! the client a useless round through the scheduler (measured: 2 wake-ups per request
//! instead of 1, docs/benchmarks.md, issue 12). So a frame that arrives whole is read with
//! `MSG_PEEK` and its bytes are dropped at the next read (after the reply went out, when
//! the reply's own wake-up has already taken the client off that wait queue) or when the
//! connection ends ([`FrameReader::discard_answered`]); a frame that comes in pieces is read
//! as before.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use keyward_protocol::{Response, LENGTH_PREFIX_BYTES, MAX_REPLY_BYTES};

/// Bytes read ahead; a frame larger than this gets a buffer of its own size.
const READ_AHEAD: usize = 16 << 10;

/// Why no frame came.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection between frames.
    Closed,
    /// The length prefix is over the limit.
    TooLarge,
    /// The peer closed the connection in the middle of a frame.
    Truncated,
    /// No whole frame within the read timeout.
    TimedOut,
    /// Any other failure of the stream.
    Io(io::Error),
}

/// The read side of one connection: a buffer and where its unread bytes are.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame: usize,
    /// Bytes of the last frame returned that were only peeked: still in the socket.
    peeked: usize,
}

impl FrameReader {
    /// A reader of frames of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self { buf: vec![0; READ_AHEAD], start: 0, end: 0, max_frame, peeked: 0 }
    }

    /// Takes the bytes of the last frame returned off the socket, when they were only
    /// peeked: called before the next read, and when the connection ends (unread bytes at
    /// close would make the client's next read fail with `ECONNRESET` instead of the end
    /// of the stream).
    ///
    /// # Errors
    /// The stream's error.
    pub fn discard_answered(&mut self, stream: &UnixStream) -> io::Result<()> {
        let peeked = std::mem::take(&mut self.peeked);
        if peeked > 0 {
            // They are in the socket already: this returns at once.
            (&*stream).read_exact(&mut self.buf[..peeked])?;
        }
        Ok(())
    }

    /// A whole frame at the front of the socket, peeked (left in it); `None` when there is
    /// only part of one (or an oversized prefix), to be read the ordinary way.
    fn peek_whole_frame(&mut self, stream: &UnixStream) -> Result<Option<usize>, ReadError> {
        let n = loop {
            match nix::sys::socket::recv(stream.as_raw_fd(), &mut self.buf, nix::sys::socket::MsgFlags::MSG_PEEK) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return Err(ReadError::TimedOut),
                Err(e) => return Err(ReadError::Io(e.into())),
            }
        };
        if n == 0 {
            return Err(ReadError::Closed);
        }
        if n < LENGTH_PREFIX_BYTES {
            return Ok(None);
        }
        let mut prefix = [0; LENGTH_PREFIX_BYTES];
        prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX_BYTES]);
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_frame || n < LENGTH_PREFIX_BYTES + len {
            return Ok(None);
        }
        self.peeked = LENGTH_PREFIX_BYTES + len;
        Ok(Some(len))
    }

    /// The next frame's body, read within `timeout` (the socket's `SO_RCVTIMEO` must be
    /// `timeout` when this is called; it is again when this returns).
    ///
    /// # Errors
    /// [`ReadError`].
    pub fn read_frame(&mut self, stream: &UnixStream, timeout: Duration) -> Result<&[u8], ReadError> {
        let began = Instant::now();
        self.discard_answered(stream).map_err(ReadError::Io)?;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > READ_AHEAD {
                self.buf = vec![0; READ_AHEAD];
            }
            if let Some(len) = self.peek_whole_frame(stream)? {
                return Ok(&self.buf[LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + len]);
            }
        }
        let mut shortened = false;
        let result = loop {
            match self.whole_frame() {
                Ok(Some(len)) => break Ok(len),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            if self.end > self.start {
                // A piece of a frame is here: the rest gets only the time left.
                let Some(left) = timeout.checked_sub(began.elapsed()).filter(|d| !d.is_zero()) else {
                    break Err(ReadError::TimedOut);
                };
                if let Err(e) = stream.set_read_timeout(Some(left)) {
                    break Err(ReadError::Io(e));
                }
                shortened = true;
            }
            match (&*stream).read(&mut self.buf[self.end..]) {
                Ok(0) if self.end == self.start => break Err(ReadError::Closed),
                Ok(0) => break Err(ReadError::Truncated),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    break Err(ReadError::TimedOut)
                }
                Err(e) => break Err(ReadError::Io(e)),
            }
        };
        if shortened {
            let _ = stream.set_read_timeout(Some(timeout));
        }
        let len = result?;
        let body = self.start + LENGTH_PREFIX_BYTES;
        self.start = body + len;
        Ok(&self.buf[body..body + len])
    }

    /// The length of the frame at `start` when it is all in the buffer; otherwise makes
    /// room for the rest (after checking the length) and returns `None`.
    fn whole_frame(&mut self) -> Result<Option<usize>, ReadError> {
        if self.start == self.end {
            // Nothing unread: start over at the front, and give back a large frame's buffer.
            self.start = 0;
            self.end = 0;
            if self.buf.len() > READ_AHEAD {
                self.buf = vec![0; READ_AHEAD];
            }
        }
        let have = self.end - self.start;
        let needed = if have >= LENGTH_PREFIX_BYTES {
            let mut prefix = [0; LENGTH_PREFIX_BYTES];
            prefix.copy_from_slice(&self.buf[self.start..self.start + LENGTH_PREFIX_BYTES]);
            let len = u32::from_be_bytes(prefix) as usize;
            if len > self.max_frame {
                return Err(ReadError::TooLarge);
            }
            if have >= LENGTH_PREFIX_BYTES + len {
                return Ok(Some(len));
            }
            LENGTH_PREFIX_BYTES + len
        } else {
            LENGTH_PREFIX_BYTES
        };
        if self.start + needed > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end = have;
            self.start = 0;
            if needed > self.buf.len() {
                self.buf.resize(needed, 0);
            }
        }
        Ok(None)
    }
}

/// A reply as one frame: length prefix and JSON body in one buffer.
///
/// # Errors
/// When the reply cannot be encoded, or is over [`MAX_REPLY_BYTES`].
pub fn encode(response: &Response) -> io::Result<Vec<u8>> {
    let mut frame = Vec::with_capacity(256);
    frame.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    serde_json::to_writer(&mut frame, response).map_err(io::Error::other)?;
    let len = frame.len() - LENGTH_PREFIX_BYTES;
    if len > MAX_REPLY_BYTES {
        return Err(io::Error::other(format!("reply of {len} bytes is over the limit of {MAX_REPLY_BYTES}")));
    }
    let prefix = u32::try_from(len).map_err(io::Error::other)?.to_be_bytes();
    frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&prefix);
    Ok(frame)
}

/// Sends `frame` within `timeout` in all (the socket's `SO_SNDTIMEO` must be `timeout`;
/// it is again when this returns).
///
/// # Errors
/// `TimedOut` when the peer did not take it in time, or the stream's error.
pub fn write_frame(stream: &UnixStream, frame: &[u8], timeout: Duration) -> io::Result<()> {
    let began = Instant::now();
    let mut sent = 0;
    let mut shortened = false;
    let result = loop {
        if sent == frame.len() {
            break Ok(());
        }
        if sent > 0 {
            let Some(left) = timeout.checked_sub(began.elapsed()).filter(|d| !d.is_zero()) else {
                break Err(io::ErrorKind::TimedOut.into());
            };
            stream.set_write_timeout(Some(left))?;
            shortened = true;
        }
        match (&*stream).write(&frame[sent..]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Err(io::ErrorKind::TimedOut.into()),
            Err(e) => break Err(e),
        }
    };
    if shortened {
        let _ = stream.set_write_timeout(Some(timeout));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn frames_in_pieces_together_and_large_are_read_whole_and_in_order() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let t = Duration::from_secs(5);
        server.set_read_timeout(Some(t)).unwrap();
        let mut reader = FrameReader::new(1 << 20);
        let big = vec![7u8; 100_000];
        let mut all = frame(b"one");
        all.extend(frame(b"two"));
        all.extend(frame(&big));
        let writer = std::thread::spawn(move || {
            for piece in all.chunks(4093) {
                client.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            client
        });
        assert_eq!(reader.read_frame(&server, t).unwrap(), b"one");
        assert_eq!(reader.read_frame(&server, t).unwrap(), b"two");
        assert_eq!(reader.read_frame(&server, t).unwrap(), &big[..]);
        drop(writer.join().unwrap());
        assert!(matches!(reader.read_frame(&server, t), Err(ReadError::Closed)));
    }

    /// Bytes still queued on `stream`, without taking them.
    fn queued(stream: &UnixStream) -> usize {
        use nix::sys::socket::{recv, MsgFlags};
        let mut buf = [0u8; 64];
        recv(stream.as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT).unwrap_or(0)
    }

    #[test]
    fn a_whole_frame_stays_in_the_socket_until_it_is_answered() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let t = Duration::from_secs(5);
        server.set_read_timeout(Some(t)).unwrap();
        let mut reader = FrameReader::new(1024);
        client.write_all(&frame(b"one")).unwrap();
        assert_eq!(reader.read_frame(&server, t).unwrap(), b"one");
        assert_eq!(queued(&server), 7, "peeked, not taken: the client is not woken by the read");
        reader.discard_answered(&server).unwrap();
        assert_eq!(queued(&server), 0);
        client.write_all(&frame(b"two")).unwrap();
        client.write_all(&frame(b"three")).unwrap();
        assert_eq!(reader.read_frame(&server, t).unwrap(), b"two");
        assert_eq!(reader.read_frame(&server, t).unwrap(), b"three", "the next read drops the answered frame first");
        drop(client);
        assert!(matches!(reader.read_frame(&server, t), Err(ReadError::Closed)));
    }

    #[test]
    fn an_oversized_prefix_a_cut_frame_and_a_stall_are_told_apart() {
        let t = Duration::from_millis(200);
        let (mut client, server) = UnixStream::pair().unwrap();
        server.set_read_timeout(Some(t)).unwrap();
        client.write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert!(matches!(FrameReader::new(1024).read_frame(&server, t), Err(ReadError::TooLarge)));

        let (mut client, server) = UnixStream::pair().unwrap();
        server.set_read_timeout(Some(t)).unwrap();
        client.write_all(&frame(b"hello")[..6]).unwrap();
        let mut reader = FrameReader::new(1024);
        let started = Instant::now();
        assert!(matches!(reader.read_frame(&server, t), Err(ReadError::TimedOut)));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(client);
        assert!(matches!(reader.read_frame(&server, t), Err(ReadError::Truncated)));
    }
}
