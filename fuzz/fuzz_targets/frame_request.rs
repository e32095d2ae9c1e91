//! The socket's first parsers: the length-prefixed frame codec (fed the input as a byte
//! stream, split into frames) and `decode_request` (fed every frame, and the whole input as
//! one frame body). Checks more than "no panic": a decoded frame never exceeds the limit,
//! and a request that decodes re-encodes to JSON that decodes to the same request.

#![no_main]

use bytes::BytesMut;
use keyward_protocol::{codec, decode_request};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// A small limit, so that the fuzzer reaches "frame too large" easily.
const MAX_FRAME: usize = 4096;

fn check_request(body: &[u8]) {
    if let Ok(request) = decode_request(body) {
        let again = serde_json::to_vec(&request).expect("a decoded request serialises");
        let decoded = decode_request(&again).expect("a re-encoded request decodes");
        assert_eq!(decoded, request, "request changed in a round trip");
    }
}

fuzz_target!(|data: &[u8]| {
    check_request(data);
    let mut codec = codec(MAX_FRAME);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        assert!(frame.len() <= MAX_FRAME, "frame of {} bytes over the limit", frame.len());
        check_request(&frame);
    }
    let _ = codec.decode_eof(&mut buf);
});
