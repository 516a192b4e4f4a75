//! The bytes the distributed roles exchange on NATS (`xinge_push::wire`): packs of push
//! events (api → push), packs of deliveries (push → gateway) and presence changes
//! (gateway → api), from arbitrary bytes — a peer of another version, a corrupted
//! message, anyone who can publish on the subject. Decoding may refuse, never panic or
//! allocate past what the bytes can hold; what decodes must encode back (to the same bytes
//! where the encoding is unique).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use xinge_push::wire::{
    Pack, decode_delivery, decode_presence, decode_push, encode_delivery, encode_presence,
    encode_push, unpack,
};

fn push_event(b: Bytes) {
    let len = b.len();
    let Some(e) = decode_push(b) else { return };
    assert!(e.users.len() * 8 <= len, "more users than the bytes hold");
    let again = encode_push(e.at_ms, e.trace, e.how, &e.users, e.except, &e.frame);
    let d = decode_push(again).expect("a re-encoded push event decodes");
    assert_eq!(
        (d.at_ms, d.trace, d.how, &d.users, d.except, &d.frame),
        (e.at_ms, e.trace, e.how, &e.users, e.except, &e.frame)
    );
}

fn delivery(b: Bytes) {
    let Some((conns, frame)) = decode_delivery(b.clone()) else {
        return;
    };
    assert_eq!(
        encode_delivery(&conns, &frame),
        b,
        "a delivery encodes back"
    );
}

fuzz_target!(|data: &[u8]| {
    let b = Bytes::copy_from_slice(data);
    if let Some(parts) = unpack(b.clone()) {
        let mut pack = Pack::default();
        for p in &parts {
            pack.push(p);
            push_event(p.clone());
            delivery(p.clone());
        }
        assert_eq!(pack.len(), parts.len());
        assert_eq!(pack.take(), b, "a pack packs back to its bytes");
    }
    push_event(b.clone());
    delivery(b.clone());
    if let Some(p) = decode_presence(b) {
        assert_eq!(decode_presence(encode_presence(&p)), Some(p));
    }
});
