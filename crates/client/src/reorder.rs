//! Inbox entries that arrive ahead of the next one, held for a moment.
//!
//! Entries of one inbox are numbered, and each signal carries its entry, but signals for
//! one inbox written by different senders at once can leave the server in another order
//! than their numbers (they are handed to the push layer by the sends' own tasks). A
//! device that pulled at every gap would make a round trip for nearly every such pair;
//! instead it holds an entry that is ahead (at most [`REORDER_MAX`], for at most
//! [`REORDER_WAIT`]) and applies it as soon as the entries before it have come. Only a
//! gap that outlasts the wait — a signal really lost, or coalesced by the server's rate
//! limit — costs a pull.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use xinge_proto::api::InboxEntry;

/// How long an entry ahead of a gap waits for the gap to fill before the device pulls.
pub const REORDER_WAIT: Duration = Duration::from_millis(50);
/// Entries held at most; one more and the device pulls.
pub const REORDER_MAX: usize = 256;

#[derive(Default)]
pub struct Reorder {
    held: BTreeMap<u64, InboxEntry>,
    /// When the oldest gap was first seen.
    since: Option<Instant>,
}

impl Reorder {
    /// Holds `e`, which is ahead of the next entry; false when full (then pull).
    pub fn hold(&mut self, e: InboxEntry) -> bool {
        if self.held.len() >= REORDER_MAX {
            return false;
        }
        self.since.get_or_insert_with(Instant::now);
        self.held.insert(e.seq, e);
        true
    }

    /// The held entry right after `cursor`, if it is here; entries at or before `cursor`
    /// (a pull brought them) are forgotten.
    pub fn next_after(&mut self, cursor: u64) -> Option<InboxEntry> {
        while let Some(entry) = self.held.first_entry() {
            match (*entry.key()).cmp(&(cursor + 1)) {
                std::cmp::Ordering::Less => {
                    entry.remove();
                }
                std::cmp::Ordering::Equal => {
                    let e = entry.remove();
                    self.settle();
                    return Some(e);
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        self.settle();
        None
    }

    /// When the device should stop waiting and pull, if it holds anything.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|s| s + REORDER_WAIT)
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// A pull is on its way: what it brings supersedes what is held.
    pub fn clear(&mut self) {
        self.held.clear();
        self.since = None;
    }

    /// Once nothing is held, no gap is being waited on; while something is, the wait runs
    /// from when the gap was first seen (a gap that keeps moving still ends in a pull).
    fn settle(&mut self) {
        if self.held.is_empty() {
            self.since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xinge_proto::api::Event;

    fn entry(seq: u64) -> InboxEntry {
        InboxEntry {
            seq,
            at_ms: 0,
            event: Event::FriendRemoved {
                by: xinge_core::UserId(1),
                peer: xinge_core::UserId(2),
            },
        }
    }

    #[tokio::test]
    async fn entries_ahead_wait_and_are_applied_in_order_once_the_gap_fills() {
        let mut r = Reorder::default();
        assert!(r.deadline().is_none());
        assert!(r.hold(entry(12)));
        assert!(r.hold(entry(13)));
        assert!(r.deadline().is_some(), "a gap is waited on");
        assert!(r.next_after(10).is_none(), "11 has not come");
        // 11 arrived and was applied: 12 and 13 follow, then nothing is waited on.
        assert_eq!(r.next_after(11).map(|e| e.seq), Some(12));
        assert_eq!(r.next_after(12).map(|e| e.seq), Some(13));
        assert!(r.next_after(13).is_none());
        assert!(r.deadline().is_none() && r.is_empty());
        // A pull went past what was held: it is forgotten.
        assert!(r.hold(entry(20)));
        assert!(r.next_after(25).is_none());
        assert!(r.is_empty() && r.deadline().is_none());
        // Full: the caller pulls.
        for s in 0..REORDER_MAX as u64 {
            assert!(r.hold(entry(100 + s)));
        }
        assert!(!r.hold(entry(1_000)));
        r.clear();
        assert!(r.is_empty() && r.deadline().is_none());
    }
}
