//! The bytes the distributed roles exchange besides frames (push events api → push,
//! deliveries push → gateway, presence changes), and the packs that carry several of them
//! in one bus message. All big-endian and length-checked: a malformed message is dropped
//! (and counted by the caller), never trusted. Here rather than in `cluster`, which sends
//! them, so that the fuzz build reaches them without the engines' clients.

use crate::{Coalesce, PresenceChange};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use xinge_core::{ConnId, UserId};

/// A push event (api → push): when it was made, the trace id of the command that caused it
/// (0: none), how it may be coalesced, the users to signal, a connection not to signal,
/// and the encoded frame for all of them.
pub struct PushEvent {
    pub at_ms: u64,
    pub trace: u64,
    /// What the push process may do with it when a user is over the signal rate.
    pub how: Coalesce,
    pub users: Vec<UserId>,
    /// The connection whose request made the entry: its answer carried it.
    pub except: Option<ConnId>,
    pub frame: Bytes,
}

/// Set in the user count when a connection to skip follows it.
const EXCEPT: u32 = 1 << 31;

pub fn encode_push(
    at_ms: u64,
    trace: u64,
    how: Coalesce,
    users: &[UserId],
    except: Option<ConnId>,
    frame: &[u8],
) -> Bytes {
    let mut b = BytesMut::with_capacity(44 + users.len() * 8 + frame.len());
    b.put_u64(at_ms);
    b.put_u64(trace);
    let (key, order) = how.to_wire();
    b.put_u64(key);
    b.put_u64(order);
    // Events carry at most `USERS_PER_EVENT` users, far below the flag.
    let n = users.len() as u32;
    match except {
        Some(c) => {
            b.put_u32(n | EXCEPT);
            b.put_u64(c.0);
        }
        None => b.put_u32(n),
    }
    for u in users {
        b.put_u64(u.0);
    }
    b.put_slice(frame);
    b.freeze()
}

pub fn decode_push(mut b: Bytes) -> Option<PushEvent> {
    if b.len() < 36 {
        return None;
    }
    let at_ms = b.get_u64();
    let trace = b.get_u64();
    let how = Coalesce::from_wire(b.get_u64(), b.get_u64());
    let n = b.get_u32();
    let except = if n & EXCEPT != 0 {
        if b.len() < 8 {
            return None;
        }
        Some(ConnId(b.get_u64()))
    } else {
        None
    };
    let n = (n & !EXCEPT) as usize;
    if b.len() < n.checked_mul(8)? {
        return None;
    }
    let users = (0..n).map(|_| UserId(b.get_u64())).collect();
    Some(PushEvent {
        at_ms,
        trace,
        how,
        users,
        except,
        frame: b,
    })
}

/// Bytes one bus message packs at most when it carries several parts (push events in one
/// stream message, deliveries to one gateway): a part is added while the message stays
/// under this, and a message always takes at least one part. Well under NATS's default
/// 1 MiB payload limit.
pub const PACK_BYTES: usize = 256 * 1024;

/// Parts (push events, deliveries) packed into one bus message, each behind its length:
/// one stream message or one gateway publish carries what would otherwise be many.
#[derive(Default)]
pub struct Pack {
    buf: BytesMut,
    parts: usize,
}

impl Pack {
    /// Whether `part` still fits (an empty pack takes any part).
    pub fn fits(&self, part: &[u8]) -> bool {
        self.parts == 0 || self.buf.len() + 4 + part.len() <= PACK_BYTES
    }

    pub fn push(&mut self, part: &[u8]) {
        self.buf.put_u32(part.len() as u32);
        self.buf.put_slice(part);
        self.parts += 1;
    }

    pub fn len(&self) -> usize {
        self.parts
    }

    pub fn is_empty(&self) -> bool {
        self.parts == 0
    }

    /// The packed bytes; the pack is empty again.
    pub fn take(&mut self) -> Bytes {
        self.parts = 0;
        self.buf.split().freeze()
    }
}

/// The parts of a [`Pack`], or `None` if a length runs past the end.
pub fn unpack(mut b: Bytes) -> Option<Vec<Bytes>> {
    let mut parts = Vec::new();
    while !b.is_empty() {
        if b.len() < 4 {
            return None;
        }
        let n = b.get_u32() as usize;
        if b.len() < n {
            return None;
        }
        parts.push(b.split_to(n));
    }
    Some(parts)
}

/// A delivery (push → one gateway): the connections, then the encoded frame.
pub fn encode_delivery(conns: &[ConnId], frame: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + conns.len() * 8 + frame.len());
    b.put_u32(conns.len() as u32);
    for c in conns {
        b.put_u64(c.0);
    }
    b.put_slice(frame);
    b.freeze()
}

pub fn decode_delivery(mut b: Bytes) -> Option<(Vec<ConnId>, Bytes)> {
    if b.len() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    if b.len() < n.checked_mul(8)? {
        return None;
    }
    let conns = (0..n).map(|_| ConnId(b.get_u64())).collect();
    Some((conns, b))
}

pub fn encode_presence(p: &PresenceChange) -> Bytes {
    let mut b = BytesMut::with_capacity(17);
    b.put_u64(p.user.0);
    b.put_u8(u8::from(p.online));
    b.put_u64(p.at_ms);
    b.freeze()
}

pub fn decode_presence(mut b: Bytes) -> Option<PresenceChange> {
    if b.len() != 17 {
        return None;
    }
    Some(PresenceChange {
        user: UserId(b.get_u64()),
        online: b.get_u8() == 1,
        at_ms: b.get_u64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_truncations() {
        let how = Coalesce::newest(1, 42, 7);
        let e = encode_push(5, 6, how, &[UserId(1), UserId(2)], None, b"frame");
        let d = decode_push(e.clone()).unwrap();
        assert_eq!(
            (d.at_ms, d.trace, d.how, d.users, d.except, &d.frame[..]),
            (5, 6, how, vec![UserId(1), UserId(2)], None, &b"frame"[..])
        );
        assert!(decode_push(e.slice(..39)).is_none());
        let drop = encode_push(5, 6, Coalesce::Drop, &[], None, b"");
        assert_eq!(decode_push(drop).unwrap().how, Coalesce::Drop);
        let skip = encode_push(5, 6, how, &[UserId(1)], Some(ConnId(77)), b"f");
        let d = decode_push(skip.clone()).unwrap();
        assert_eq!(
            (d.users, d.except, &d.frame[..]),
            (vec![UserId(1)], Some(ConnId(77)), &b"f"[..])
        );
        assert!(
            decode_push(skip.slice(..40)).is_none(),
            "the connection cut short"
        );
        assert!(
            decode_push(skip.slice(..50)).is_none(),
            "the users cut short"
        );
        let d = encode_delivery(&[ConnId(9)], b"f");
        assert_eq!(decode_delivery(d.clone()).unwrap().0, vec![ConnId(9)]);
        assert!(decode_delivery(d.slice(..6)).is_none());
        let mut huge = BytesMut::new();
        huge.put_u32(u32::MAX);
        assert!(decode_delivery(huge.freeze()).is_none());
        let p = PresenceChange {
            user: UserId(3),
            online: true,
            at_ms: 4,
        };
        assert_eq!(decode_presence(encode_presence(&p)), Some(p));
        assert!(decode_presence(Bytes::from_static(b"x")).is_none());
    }

    #[test]
    fn packs_round_trip_and_stop_at_their_budget() {
        let mut p = Pack::default();
        assert!(
            p.is_empty() && p.fits(&vec![0; PACK_BYTES * 2]),
            "an empty pack takes any part"
        );
        p.push(b"one");
        p.push(b"");
        p.push(b"three");
        assert_eq!(p.len(), 3);
        let b = p.take();
        assert!(p.is_empty());
        assert_eq!(
            unpack(b.clone()).unwrap(),
            vec![
                Bytes::from_static(b"one"),
                Bytes::new(),
                Bytes::from_static(b"three")
            ]
        );
        assert!(unpack(b.slice(..b.len() - 1)).is_none(), "a part cut short");
        assert!(unpack(b.slice(..2)).is_none(), "a length cut short");
        assert_eq!(unpack(Bytes::new()).unwrap(), Vec::<Bytes>::new());
        p.push(&vec![1; PACK_BYTES - 100]);
        assert!(p.fits(&[0; 90]) && !p.fits(&[0; 100]));
    }
}
