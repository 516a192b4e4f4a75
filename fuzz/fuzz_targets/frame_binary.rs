//! The binary frame as it arrives on both transports: a WebSocket binary message is one
//! `Frame::decode`; a TCP stream is a run of 4-byte length prefixes, each checked by
//! `Frame::check_prefix` before its frame is read (the same calls as gateway/src/tcp.rs and
//! client/src/conn.rs). Neither may panic, and what decodes must encode back to its bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use xinge_proto::Frame;

/// Small enough that the fuzzer reaches the too-large path with short inputs.
const MAX: usize = 256;

fuzz_target!(|data: &[u8]| {
    // WebSocket binary message.
    if let Ok(f) = Frame::decode(Bytes::copy_from_slice(data), MAX) {
        assert_eq!(&f.encode()[..], data, "decode/encode round trip");
    }

    // TCP stream: prefix, frame, prefix, frame, ... until the bytes run out or one is bad
    // (the gateway closes the connection on the first bad frame).
    let mut rest = data;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let Ok(len) = Frame::check_prefix(len, MAX) else {
            break;
        };
        assert!((xinge_proto::frame::HEADER_LEN..=MAX).contains(&len));
        let Some(body) = rest.get(4..4 + len) else {
            break; // the peer would still be sending; the reader waits, it does not parse
        };
        match Frame::decode(Bytes::copy_from_slice(body), MAX) {
            Ok(f) => assert_eq!(&f.encode_prefixed()[..], &rest[..4 + len]),
            Err(_) => break,
        }
        rest = &rest[4 + len..];
    }
});
