//! Key layouts. Integers are big-endian so that byte order is numeric order and a prefix
//! scan walks a user's or a conversation's entries in sequence.

use super::backend;
use crate::Result;
use fjall::Keyspace;
use xinge_core::{ConvId, DeviceId, UserId};

pub(crate) fn u64_key(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub(crate) fn read_u64(b: &[u8]) -> Result<u64> {
    b.get(..8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| backend("short integer value"))
}

pub(crate) fn pair_key(a: UserId, b: UserId) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&a.0.to_be_bytes());
    k.extend_from_slice(&b.0.to_be_bytes());
    k
}

pub(crate) fn device_key(user: UserId, device: &DeviceId) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + device.as_str().len());
    k.extend_from_slice(&user.0.to_be_bytes());
    k.extend_from_slice(device.as_str().as_bytes());
    k
}

pub(crate) fn dedup_key(user: UserId, client_msg_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + client_msg_id.len());
    k.extend_from_slice(&user.0.to_be_bytes());
    k.extend_from_slice(client_msg_id.as_bytes());
    k
}

pub(crate) fn inbox_key(user: UserId, seq: u64) -> Vec<u8> {
    pair_key(user, UserId(seq))
}

pub(crate) fn msg_key(conv: ConvId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.extend_from_slice(&conv.to_key());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn member_key(user: UserId, conv: ConvId) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.extend_from_slice(&user.0.to_be_bytes());
    k.extend_from_slice(&conv.to_key());
    k
}

/// `prefix ++ seq`.
pub(crate) fn seq_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The last sequence under `prefix` in a keyspace whose keys are `prefix ++ seq(8)`.
pub(crate) fn last_seq(ks: &Keyspace, prefix: &[u8]) -> Result<u64> {
    match ks.prefix(prefix).next_back() {
        Some(kv) => {
            let k = kv.key().map_err(backend)?;
            read_u64(&k[prefix.len()..])
        }
        None => Ok(0),
    }
}
