//! The heartbeat timing wheel: one slot per second, one ticking task for
//! every connection. A heartbeat only stores "last seen" in the connection's atomic; the
//! wheel re-files a connection lazily when its slot comes up and it turns out to have been
//! active. So a heartbeat costs one relaxed store, and a connection costs no timer.

use std::sync::Mutex;
use xinge_core::ConnId;

pub(crate) struct Wheel {
    slots: Mutex<Vec<Vec<ConnId>>>,
    timeout: u32,
    /// Last tick processed.
    cursor: Mutex<u32>,
}

impl Wheel {
    pub fn new(timeout_secs: u32) -> Self {
        let n = timeout_secs as usize + 2;
        Self {
            slots: Mutex::new(vec![Vec::new(); n]),
            timeout: timeout_secs,
            cursor: Mutex::new(0),
        }
    }

    fn len(&self) -> u32 {
        self.timeout + 2
    }

    /// Files a new connection, seen at `now`, to be looked at by its heartbeat deadline or
    /// at `until` (its token's expiry) if that comes first.
    pub fn insert(&self, id: ConnId, now: u32, until: u32) {
        self.file(id, (now + self.timeout + 1).min(until.max(now + 1)));
    }

    fn file(&self, id: ConnId, deadline: u32) {
        let i = (deadline % self.len()) as usize;
        self.slots.lock().unwrap_or_else(|p| p.into_inner())[i].push(id);
    }

    /// Processes every slot up to `now`. `check(id, now)` returns the connection's next
    /// deadline if it is still alive, `None` if it is gone or was expired.
    pub fn tick(&self, now: u32, mut check: impl FnMut(ConnId, u32) -> Option<u32>) {
        let mut cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        while *cursor <= now {
            let i = (*cursor % self.len()) as usize;
            let due = std::mem::take(&mut self.slots.lock().unwrap_or_else(|p| p.into_inner())[i]);
            for id in due {
                if let Some(deadline) = check(id, now) {
                    self.file(id, deadline.max(now + 1));
                }
            }
            *cursor += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn idle_connections_expire_after_the_timeout_and_active_ones_do_not() {
        let w = Wheel::new(3);
        let mut last_seen: HashMap<u64, u32> = HashMap::from([(1, 0), (2, 0)]);
        w.insert(ConnId(1), 0, u32::MAX);
        w.insert(ConnId(2), 0, u32::MAX);
        let mut expired = Vec::new();
        for now in 0..=10u32 {
            last_seen.insert(2, now); // connection 2 heartbeats every second
            w.tick(now, |id, now| {
                let deadline = last_seen[&id.0] + 3 + 1;
                if deadline <= now {
                    expired.push((id.0, now));
                    None
                } else {
                    Some(deadline)
                }
            });
        }
        assert_eq!(
            expired,
            vec![(1, 4)],
            "silent for the full 3 s, closed at the next tick"
        );
    }
}
