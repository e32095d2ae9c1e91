//! The frame: a 4-byte big-endian length (not counting itself), then that many bytes of
//! UTF-8 JSON, in both directions (`docs/protocol.md` §2). The length is checked against the
//! reader's limit before the body is read or allocated.

use serde::Serialize;

/// Default largest frame the agent accepts (1 MiB): far above any sign or decrypt request.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// Largest reply frame either end accepts (16 MiB): replies are never limited by the
/// (smaller, configurable) request limit.
pub const MAX_REPLY_BYTES: usize = 16 << 20;

/// Bytes in the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The frame codec both ends use: 4-byte big-endian length prefix, `max_frame_bytes` limit
/// checked before the body is read or allocated.
pub fn codec(max_frame_bytes: usize) -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .length_field_length(LENGTH_PREFIX_BYTES)
        .big_endian()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// A whole frame (prefix and compact JSON body) for `message`, a [`crate::Request`] or a
/// [`crate::Response`]. A body past 4 GiB gets a saturated prefix, which every reader refuses
/// as too large.
///
/// # Errors
/// serde_json's error if `message` does not serialise (no protocol type fails).
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut frame = vec![0u8; LENGTH_PREFIX_BYTES];
    serde_json::to_writer(&mut frame, message)?;
    let len = u32::try_from(frame.len() - LENGTH_PREFIX_BYTES).unwrap_or(u32::MAX);
    frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}
