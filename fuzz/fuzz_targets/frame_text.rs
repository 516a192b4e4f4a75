//! The WebSocket text form (`{"cmd":…,"id":…,"body":…}`): `Frame::decode_text` on any UTF-8,
//! and the server's answer to whatever decoded (`encode_text`) must decode back to the same
//! header and an equivalent body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xinge_proto::Frame;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The WebSocket layer hands over only valid UTF-8 text messages.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(f) = Frame::decode_text(text, MAX) else {
        return;
    };
    let back = Frame::decode_text(&f.encode_text(), usize::MAX).expect("re-encoded text frame");
    assert_eq!(
        (back.cmd, back.flags, back.req_id),
        (f.cmd, f.flags, f.req_id)
    );
    let parse = |b: &[u8]| -> Option<serde_json::Value> {
        (!b.is_empty()).then(|| serde_json::from_slice(b).expect("body is JSON"))
    };
    assert_eq!(parse(&back.body), parse(&f.body));
});
