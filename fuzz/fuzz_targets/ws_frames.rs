//! The gateway's WebSocket reader (`xinge_gateway::ws::decode`, the code every `/ws`
//! connection reads with) on whatever a client sends after the upgrade. It may refuse,
//! never panic; the same bytes cut into two reads anywhere must read the same (a partial
//! frame waits, it is not misread); and what it holds between reads is at most one frame
//! under the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xinge_gateway::ws::decode;

/// Small enough that the fuzzer reaches the too-large paths with short inputs.
const MAX: u32 = 256;
/// The longest WebSocket frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;

fuzz_target!(|data: &[u8]| {
    // The first byte says where the second read starts.
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let whole = decode(&[data], MAX);
    let at = usize::from(cut) * data.len() / 255;
    let (a, b) = data.split_at(at);
    assert_eq!(decode(&[a, b], MAX), whole, "cut after {at} bytes");
    assert!(
        whole.held <= MAX as usize + MAX_HEADER,
        "holds {} bytes",
        whole.held
    );
    for f in &whole.frames {
        if !whole.text {
            assert!(f.encode().len() <= MAX as usize, "a frame over the limit");
        }
    }
});
