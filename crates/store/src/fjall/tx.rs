//! One group-commit batch in the making: the fjall write batch with an overlay of what
//! it has written so far, the writer's caches it reads through, and the reads every
//! commit of the batch makes (keys, sequences, group records, member lists, cursors).

use super::keys::*;
use super::writer::Lists;
use super::{Spaces, backend, decode, encode};
use crate::{GroupRecord, MemberRecord, Result, StoreError, UserRecord};
use fjall::{Keyspace, OwnedWriteBatch, Slice};
use std::collections::HashMap;
use std::sync::Arc;
use xinge_core::{ConvId, DeviceId, GroupId, UserId};

/// The writer's maps are keyed by [`slot_key`]: the keyspace's slot, then the key. One flat
/// byte string, so that a lookup borrows a stack buffer instead of allocating a key, and
/// hashed with foldhash: these lookups are a large part of a commit's own cost.
pub(super) type Map<V> = HashMap<Vec<u8>, V, foldhash::fast::RandomState>;

/// Which keyspace an overlay entry belongs to (keyspaces are not hashable).
pub(super) type Space = fn(&Spaces) -> &Keyspace;

/// Calls `f` with `slot ++ key`, built on the stack when it fits.
pub(super) fn slot_key<R>(slot: u16, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    let mut buf = [0u8; 96];
    let n = 2 + key.len();
    if n <= buf.len() {
        buf[..2].copy_from_slice(&slot.to_be_bytes());
        buf[2..n].copy_from_slice(key);
        f(&buf[..n])
    } else {
        let mut v = Vec::with_capacity(n);
        v.extend_from_slice(&slot.to_be_bytes());
        v.extend_from_slice(key);
        f(&v)
    }
}

pub(super) fn owned_slot_key(slot: u16, key: &[u8]) -> Vec<u8> {
    slot_key(slot, key, <[u8]>::to_vec)
}

/// One group-commit batch in the making: the fjall batch plus an overlay of what it has
/// written so far that a later commit of the same batch may read (everything but inbox
/// entries and mention marks, see [`Tx::put_unread`]; and the cursor moves it holds
/// instead of writing, see [`Tx::advance_by_send`]), so later commits read their
/// predecessors' writes.
pub(super) struct Tx<'a> {
    pub(super) spaces: &'a Spaces,
    pub(super) cached_heads: &'a Map<u64>,
    pub(super) cached_members: &'a Map<Option<Slice>>,
    pub(super) cached_lists: &'a Lists,
    pub(super) batch: OwnedWriteBatch,
    pub(super) overlay: Map<Option<Slice>>,
    pub(super) heads: Map<u64>,
    /// Groups whose membership this batch changes: their lists are read, not cached.
    pub(super) changed_groups: Vec<GroupId>,
    /// Lists this batch read from fjall, for the cache once the batch is durable.
    pub(super) loaded: Lists,
    /// Whether 1:1 sends may hold their cursor move (not sealed, holding on, table not
    /// full), and how many cursors were held when the batch began.
    pub(super) hold: bool,
    pub(super) held: usize,
    /// Cursors this batch's 1:1 sends moved without writing them: held once it is durable.
    pub(super) moved: Vec<(UserId, ConvId, u64)>,
}

impl Tx<'_> {
    /// The keyspace's place in `Spaces`: unique per keyspace, and small.
    pub(super) fn slot(&self, space: Space) -> u16 {
        let at = space(self.spaces) as *const Keyspace as usize;
        (at - self.spaces as *const Spaces as usize) as u16
    }

    pub(super) fn get(&self, space: Space, key: &[u8]) -> Result<Option<Slice>> {
        let slot = self.slot(space);
        let members = slot == self.slot(|s| &s.members);
        let known = slot_key(slot, key, |k| {
            self.overlay
                .get(k)
                .or_else(|| members.then(|| self.cached_members.get(k)).flatten())
                .cloned()
        });
        match known {
            Some(v) => Ok(v),
            None => space(self.spaces).get(key).map_err(backend),
        }
    }

    pub(super) fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        // A `Slice` is shared, not copied, between the batch and the overlay.
        let value = Slice::from(value);
        let slot = owned_slot_key(self.slot(space), &key);
        self.batch.insert(space(self.spaces), key, value.clone());
        self.overlay.insert(slot, Some(value));
    }

    /// A write that no later commit of the batch reads back (inbox entries and mention
    /// marks: sequences come from `heads`, not from reading the entries), so it is not
    /// recorded in the overlay.
    pub(super) fn put_unread(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.batch.insert(space(self.spaces), key, value);
    }

    pub(super) fn delete(&mut self, space: Space, key: Vec<u8>) {
        let slot = owned_slot_key(self.slot(space), &key);
        self.batch.remove(space(self.spaces), key);
        self.overlay.insert(slot, None);
    }

    /// The next sequence under `prefix` (keys `prefix ++ seq`), counting this batch's
    /// earlier appends.
    /// The outbox's next place (see [`OUTBOX_HEAD`]).
    pub(super) fn next_outbox_seq(&mut self) -> Result<u64> {
        self.next_counter(OUTBOX_HEAD)
    }

    /// The next value of the counter kept in `meta` under `key` (from 1, never reused).
    pub(super) fn next_counter(&mut self, key: &[u8]) -> Result<u64> {
        let next = match self.get(|s| &s.meta, key)? {
            Some(v) => read_u64(&v)? + 1,
            None => 1,
        };
        self.put(|s| &s.meta, key.to_vec(), u64_key(next).to_vec());
        Ok(next)
    }

    /// A user's record, or `NotFound`.
    pub(super) fn user_rec(&self, id: UserId) -> Result<UserRecord> {
        match self.get(|s| &s.users, &u64_key(id.0))? {
            Some(v) => decode(&v),
            None => Err(StoreError::NotFound),
        }
    }

    pub(super) fn put_user(&mut self, user: &UserRecord) {
        self.put(|s| &s.users, u64_key(user.id.0).to_vec(), encode(user));
    }

    /// Removes `devices`' tokens of `user`.
    pub(super) fn remove_devices(&mut self, user: UserId, devices: &[DeviceId]) {
        for device in devices {
            self.delete(|s| &s.devices, device_key(user, device));
        }
    }

    pub(super) fn next_seq(&mut self, space: Space, prefix: &[u8]) -> Result<u64> {
        let next = self.head(space, prefix)? + 1;
        let slot = self.slot(space);
        slot_key(slot, prefix, |k| match self.heads.get_mut(k) {
            Some(v) => *v = next,
            None => {
                self.heads.insert(k.to_vec(), next);
            }
        });
        Ok(next)
    }

    /// The last sequence under `prefix`, counting this batch's appends.
    pub(super) fn head(&self, space: Space, prefix: &[u8]) -> Result<u64> {
        let known = slot_key(self.slot(space), prefix, |k| {
            self.heads
                .get(k)
                .or_else(|| self.cached_heads.get(k))
                .copied()
        });
        match known {
            Some(v) => Ok(v),
            None => last_seq(space(self.spaces), prefix),
        }
    }

    pub(super) fn group_rec(&self, id: GroupId) -> Result<Option<GroupRecord>> {
        self.get(|s| &s.groups, &u64_key(id.0))?
            .map(|v| decode(&v))
            .transpose()
    }

    pub(super) fn member_rec(&self, group: GroupId, user: UserId) -> Result<Option<MemberRecord>> {
        self.get(|s| &s.gmembers, &group_user_key(group, user))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Every member of a group, counting this batch's adds and removes. The list of a group
    /// whose membership no commit of this batch changes comes from the writer's cache.
    pub(super) fn member_ids(&mut self, group: GroupId) -> Result<Arc<[UserId]>> {
        let changed = self.changed_groups.contains(&group);
        if !changed
            && let Some(ids) = self
                .cached_lists
                .get(&group)
                .or_else(|| self.loaded.get(&group))
        {
            return Ok(ids.clone());
        }
        let prefix = u64_key(group.0);
        let mut ids = std::collections::BTreeSet::new();
        for kv in self.spaces.gmembers.prefix(prefix) {
            let k = kv.key().map_err(backend)?;
            ids.insert(read_u64(&k[8..])?);
        }
        let within = owned_slot_key(self.slot(|s| &s.gmembers), &prefix);
        for (k, v) in &self.overlay {
            if k.starts_with(&within) {
                let uid = read_u64(&k[within.len()..])?;
                if v.is_some() {
                    ids.insert(uid);
                } else {
                    ids.remove(&uid);
                }
            }
        }
        let ids: Arc<[UserId]> = ids.into_iter().map(UserId).collect();
        if !changed {
            self.loaded.insert(group, ids.clone());
        }
        Ok(ids)
    }

    /// Notes that this batch changes `group`'s membership: its list is read afresh for the
    /// rest of the batch and dropped from the cache when the batch is durable.
    pub(super) fn membership_changes(&mut self, group: GroupId) {
        if !self.changed_groups.contains(&group) {
            self.changed_groups.push(group);
        }
        self.loaded.remove(&group);
    }

    /// A read cursor as this batch sees it: the batch's own moves, the writer's cache, else
    /// the larger of fjall's and a held one (soft.rs). `None`: no membership.
    pub(super) fn cursor(&self, user: UserId, conv: ConvId) -> Result<Option<u64>> {
        let key = member_key(user, conv);
        let known = slot_key(self.slot(|s| &s.members), &key, |k| {
            self.overlay
                .get(k)
                .or_else(|| self.cached_members.get(k))
                .cloned()
        });
        if let Some(v) = known {
            return v.map(|v| read_u64(&v)).transpose();
        }
        let held = self.spaces.soft.get(user, conv);
        match self.spaces.members.get(&key).map_err(backend)? {
            Some(v) => Ok(Some(read_u64(&v)?.max(held.unwrap_or(0)))),
            None => Ok(held),
        }
    }

    /// Writes every held cursor (as the batch sees it, so never below a later explicit
    /// read) and returns what it wrote, for `SoftCursors::forget` once that is durable.
    pub(super) fn flush_cursors(&mut self) -> Result<Vec<(UserId, ConvId, u64)>> {
        let mut written = self.spaces.soft.all();
        for (user, conv, seq) in &mut written {
            *seq = self.cursor(*user, *conv)?.unwrap_or(0).max(*seq);
            let key = member_key(*user, *conv);
            self.put(|s| &s.members, key, u64_key(*seq).to_vec());
        }
        Ok(written)
    }
}
