//! Read cursors moved by sending in 1:1 conversations, held in memory until the writer
//! writes them to fjall (about a second later — `FjallOptions::cursor_flush` — or when the
//! store is sealed for a clean shutdown).
//!
//! Sending implies having read up to one's own message, so every 1:1 send moved the
//! sender's cursor in the same durable batch: a fifth key per message, rewritten thousands
//! of times in a run, each version a node in fjall's memtable skip-list. A cursor is the
//! one part of a send that can be late without anyone losing anything: the message, its
//! inbox entries and its dedup record stay durable before the ack; a crash loses at most
//! the last second of such cursor moves, so the sender's own newest messages may count as
//! unread once more, until their next send or read (see docs/ARCHITECTURE.md, "Read
//! state"). A read that moves a cursor stays durable before its answer.
//!
//! Readers take a user's entries here before they read fjall, and the writer drops an entry
//! only once fjall holds a value at least as large, so a reader never sees a cursor go back.

use std::collections::HashMap;
use std::sync::Mutex;
use xinge_core::{ConvId, UserId};

/// Entries held at most. Past it, sends move their sender's cursor durably again (as
/// before this existed) until a flush has emptied the table.
pub(crate) const MAX_SOFT: usize = 100_000;

type ByUser = HashMap<u64, Vec<(ConvId, u64)>, foldhash::fast::RandomState>;

#[derive(Default)]
pub(crate) struct SoftCursors {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_user: ByUser,
    len: usize,
}

impl SoftCursors {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing here can be left half-done by a panic: take the table as it is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len
    }

    pub fn get(&self, user: UserId, conv: ConvId) -> Option<u64> {
        let inner = self.lock();
        let list = inner.by_user.get(&user.0)?;
        list.iter().find(|(c, _)| *c == conv).map(|&(_, s)| s)
    }

    /// A user's entries (a user has few conversations moving at once).
    pub fn of(&self, user: UserId) -> Vec<(ConvId, u64)> {
        self.lock()
            .by_user
            .get(&user.0)
            .cloned()
            .unwrap_or_default()
    }

    /// Every entry, for a flush.
    pub fn all(&self) -> Vec<(UserId, ConvId, u64)> {
        let inner = self.lock();
        let mut out = Vec::with_capacity(inner.len);
        for (&u, list) in &inner.by_user {
            out.extend(list.iter().map(|&(c, s)| (UserId(u), c, s)));
        }
        out
    }

    /// Moves cursors forward (never back) after the batch that moved them is durable.
    pub fn raise(&self, moves: &[(UserId, ConvId, u64)]) {
        if moves.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let Inner { by_user, len } = &mut *inner;
        for &(user, conv, seq) in moves {
            let list = by_user.entry(user.0).or_default();
            match list.iter_mut().find(|(c, _)| *c == conv) {
                Some((_, s)) => *s = (*s).max(seq),
                None => {
                    list.push((conv, seq));
                    *len += 1;
                }
            }
        }
    }

    /// Drops the entries that fjall now holds (`written`: what a durable batch wrote); an
    /// entry raised past what was written stays.
    pub fn forget(&self, written: &[(UserId, ConvId, u64)]) {
        let mut inner = self.lock();
        let Inner { by_user, len } = &mut *inner;
        for &(user, conv, seq) in written {
            let Some(list) = by_user.get_mut(&user.0) else {
                continue;
            };
            if let Some(i) = list.iter().position(|&(c, s)| c == conv && s <= seq) {
                list.swap_remove(i);
                *len -= 1;
            }
            if list.is_empty() {
                by_user.remove(&user.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_only_move_forward_and_leave_once_written() {
        let soft = SoftCursors::default();
        let (a, b) = (UserId(1), UserId(2));
        let conv = ConvId::direct(a, b);
        soft.raise(&[(a, conv, 5), (a, conv, 3), (b, conv, 1)]);
        assert_eq!(soft.get(a, conv), Some(5));
        assert_eq!(soft.len(), 2);
        // Written at 5, then raised to 7 before the flush was durable: 7 stays.
        soft.raise(&[(a, conv, 7)]);
        soft.forget(&[(a, conv, 5), (b, conv, 1)]);
        assert_eq!(soft.get(a, conv), Some(7));
        assert_eq!(soft.get(b, conv), None);
        assert_eq!(soft.of(b), vec![]);
        assert_eq!(soft.len(), 1);
        soft.forget(&[(a, conv, 7)]);
        assert_eq!(soft.len(), 0);
        assert!(soft.all().is_empty());
    }
}
