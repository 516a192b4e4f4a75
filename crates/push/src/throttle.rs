//! Signals per user per second, so one busy user cannot flood a gateway, with coalescing
//! rather than dropping.
//!
//! Within the rate (a token bucket per user) a signal passes as it is. Over it, the user's
//! signals are held: a signal that a newer one supersedes (an inbox or group sequence, a
//! friend's presence — [`Coalesce::Newest`] with the same key) replaces the held one, so a
//! burst of a thousand messages to one user becomes one "inbox reached N" signal, and the
//! client pulls the rest. Ephemeral signals (typing, [`Coalesce::Drop`]) are dropped. Held
//! signals go out, oldest key first, as the user's bucket refills ([`Throttle::due`], run
//! every few tens of milliseconds); while a user has signals held, new ones queue behind
//! them so that nothing overtakes.
//!
//! Bounded: at most `max_held` keys per user (past that a signal is dropped and counted —
//! the client's periodic pull repairs it) and `max_users` users tracked (past that, users
//! whose bucket is full and who have nothing held are forgotten; if none is, a new user is
//! not limited until room frees up).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;
use xinge_core::UserId;
use xinge_core::ratelimit::{Bucket, Rate};
use xinge_proto::Frame;

const SHARDS: usize = 16;

/// How a signal may be merged when its user receives signals faster than the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coalesce {
    /// Ephemeral (typing): dropped over the limit.
    Drop,
    /// Superseded by a signal with the same `key` and a higher `order` (a sequence, or a
    /// time): over the limit only the newest per key is kept. By `order`, not by arrival:
    /// concurrent commits hand their signals over in any order.
    Newest { key: u64, order: u64 },
    /// Control (a session ended): never held, never dropped by the rate.
    Never,
}

impl Coalesce {
    /// A kind in the key's top byte, an id below.
    pub fn newest(kind: u8, id: u64, order: u64) -> Self {
        Coalesce::Newest {
            key: (u64::from(kind) << 56) | (id & ((1 << 56) - 1)),
            order,
        }
    }

    /// As two numbers on the bus (key `u64::MAX` is `Drop` and `u64::MAX - 1` is `Never`,
    /// which no key of [`Coalesce::newest`] reaches: kinds are small).
    pub fn to_wire(self) -> (u64, u64) {
        match self {
            Coalesce::Drop => (u64::MAX, 0),
            Coalesce::Never => (u64::MAX - 1, 0),
            Coalesce::Newest { key, order } => (key, order),
        }
    }

    pub fn from_wire(key: u64, order: u64) -> Self {
        match key {
            u64::MAX => Coalesce::Drop,
            k if k == u64::MAX - 1 => Coalesce::Never,
            key => Coalesce::Newest { key, order },
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ThrottleConfig {
    pub rate: Rate,
    /// Users tracked by this process.
    pub max_users: usize,
    /// Distinct held signals per user.
    pub max_held: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            rate: Rate {
                per_sec: 200.0,
                burst: 400.0,
            },
            max_users: 1_000_000,
            max_held: 64,
        }
    }
}

impl ThrottleConfig {
    pub fn from_limits(l: &xinge_core::config::LimitsConfig) -> Self {
        Self {
            rate: Rate {
                per_sec: l.signals_per_sec,
                burst: l.signals_burst,
            },
            max_users: l.max_users,
            ..Self::default()
        }
    }
}

struct UserState<T> {
    bucket: Bucket,
    /// (key, order, signal), oldest key first; empty (no allocation) for a user within
    /// the rate.
    held: Vec<(u64, u64, T)>,
}

struct Shard<T> {
    users: HashMap<UserId, UserState<T>>,
    /// Users with something held, so that [`Throttle::due`] does not walk everyone.
    pending: HashSet<UserId>,
}

/// Holds signals of type `T`: a [`Frame`] in one process, its encoded bytes on the bus.
pub struct Throttle<T = Frame> {
    cfg: ThrottleConfig,
    shards: Vec<Mutex<Shard<T>>>,
    swept: Mutex<Instant>,
}

/// How often [`Throttle::due`] also forgets idle users.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl<T: Clone> Throttle<T> {
    pub fn new(cfg: ThrottleConfig) -> Self {
        Self {
            cfg,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        users: HashMap::new(),
                        pending: HashSet::new(),
                    })
                })
                .collect(),
            swept: Mutex::new(Instant::now()),
        }
    }

    fn shard(&self, user: UserId) -> std::sync::MutexGuard<'_, Shard<T>> {
        self.shards[(user.0 as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// `true`: send `frame` to `user` now. `false`: it was held (or dropped) instead.
    pub fn admit(&self, user: UserId, frame: &T, how: Coalesce, now: Instant) -> bool {
        if how == Coalesce::Never {
            return true;
        }
        let rate = self.cfg.rate;
        let mut shard = self.shard(user);
        let shard = &mut *shard;
        if !shard.users.contains_key(&user) && shard.users.len() >= self.cfg.max_users / SHARDS {
            shard
                .users
                .retain(|_, st| !st.held.is_empty() || !st.bucket.is_full(rate, now));
            if shard.users.len() >= self.cfg.max_users / SHARDS {
                return true;
            }
        }
        let st = shard.users.entry(user).or_insert_with(|| UserState {
            bucket: Bucket::full(rate, now),
            held: Vec::new(),
        });
        if st.held.is_empty() && st.bucket.take(rate, now).is_ok() {
            return true;
        }
        if self.hold(st, frame, how) {
            shard.pending.insert(user);
        }
        false
    }

    /// Keeps `frame` among the user's held signals; `false` if it was dropped.
    fn hold(&self, st: &mut UserState<T>, frame: &T, how: Coalesce) -> bool {
        let Coalesce::Newest { key, order } = how else {
            metrics::counter!("xinge_signals_throttled_total", "how" => "dropped").increment(1);
            return !st.held.is_empty();
        };
        if let Some(slot) = st.held.iter_mut().find(|(k, ..)| *k == key) {
            if order >= slot.1 {
                (slot.1, slot.2) = (order, frame.clone());
            }
            metrics::counter!("xinge_signals_throttled_total", "how" => "coalesced").increment(1);
        } else if st.held.len() < self.cfg.max_held {
            st.held.push((key, order, frame.clone()));
            metrics::counter!("xinge_signals_throttled_total", "how" => "held").increment(1);
        } else {
            metrics::counter!("xinge_signals_throttled_total", "how" => "dropped").increment(1);
        }
        !st.held.is_empty()
    }

    /// The held signals whose users' buckets have refilled enough, to be sent now. Call it
    /// every few tens of milliseconds; every 10 s it also forgets idle users.
    pub fn due(&self, now: Instant) -> Vec<(UserId, Vec<T>)> {
        let rate = self.cfg.rate;
        {
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if now.saturating_duration_since(*swept) >= SWEEP_EVERY {
                *swept = now;
                self.sweep(now);
            }
        }
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let shard = &mut *shard;
            shard.pending.retain(|user| {
                let Some(st) = shard.users.get_mut(user) else {
                    return false;
                };
                let n = st.bucket.take_up_to(rate, now, st.held.len());
                if n > 0 {
                    out.push((*user, st.held.drain(..n).map(|(.., f)| f).collect()));
                }
                if st.held.is_empty() {
                    st.held = Vec::new();
                    return false;
                }
                true
            });
        }
        out
    }

    /// Users tracked (for tests and the gauge).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).users.len())
            .sum()
    }

    /// Forgets users whose bucket is full and who have nothing held.
    pub fn sweep(&self, now: Instant) {
        let rate = self.cfg.rate;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard
                .users
                .retain(|_, st| !st.held.is_empty() || !st.bucket.is_full(rate, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(n: u8) -> Frame {
        Frame::request(4, 0, vec![n])
    }

    fn throttle(per_sec: f64, burst: f64) -> Throttle<Frame> {
        Throttle::new(ThrottleConfig {
            rate: Rate { per_sec, burst },
            max_users: 1_000,
            max_held: 3,
        })
    }

    #[test]
    fn over_the_rate_signals_are_coalesced_by_key_and_released_as_it_refills() {
        let t = throttle(10.0, 2.0);
        let t0 = Instant::now();
        let u = UserId(1);
        let inbox = |seq| Coalesce::newest(0, 0, seq);
        assert!(t.admit(u, &frame(1), inbox(1), t0));
        assert!(t.admit(u, &frame(2), inbox(2), t0));
        // The burst is spent: 3..=9 are held as one, the newest by sequence, whatever the
        // order they came in.
        for n in [3, 4, 5, 9, 6, 7, 8] {
            assert!(!t.admit(u, &frame(n), inbox(u64::from(n)), t0));
        }
        assert!(
            !t.admit(u, &frame(50), Coalesce::Drop, t0),
            "typing is dropped"
        );
        assert!(t.due(t0).is_empty(), "no token yet");
        let due = t.due(t0 + Duration::from_millis(100));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, u);
        assert_eq!(due[0].1.iter().map(|f| f.body[0]).collect::<Vec<_>>(), [9]);
        assert!(t.due(t0 + Duration::from_millis(100)).is_empty());
        // Refilled: signals pass again, and another user was never held back.
        assert!(t.admit(u, &frame(10), inbox(10), t0 + Duration::from_millis(300)));
        assert!(t.admit(UserId(2), &frame(1), inbox(1), t0));
    }

    #[test]
    fn held_signals_keep_their_order_and_are_bounded() {
        let t = throttle(10.0, 1.0);
        let t0 = Instant::now();
        let u = UserId(1);
        let group = |g, seq| Coalesce::newest(1, g, seq);
        assert!(t.admit(u, &frame(0), Coalesce::newest(0, 0, 1), t0));
        for (n, g) in [(1, 1), (2, 2), (3, 1), (4, 3), (5, 4)] {
            assert!(!t.admit(u, &frame(n), group(g, u64::from(n)), t0));
        }
        // Group 4 found three keys held and was dropped; group 1 kept its place with its
        // newest.
        let mut got = Vec::new();
        for ms in [100, 200, 300, 400] {
            for (_, frames) in t.due(t0 + Duration::from_millis(ms)) {
                got.extend(frames.iter().map(|f| f.body[0]));
            }
        }
        assert_eq!(got, [3, 2, 4]);
        // While something is held, a new signal queues behind it even with a token there.
        let t1 = t0 + Duration::from_secs(1);
        assert!(t.admit(u, &frame(6), Coalesce::newest(0, 0, 2), t1));
        assert!(!t.admit(u, &frame(7), Coalesce::newest(0, 0, 3), t1));
        assert!(!t.admit(u, &frame(8), group(9, 1), t1));
        let t2 = t1 + Duration::from_millis(100);
        let first: Vec<u8> = t.due(t2)[0].1.iter().map(|f| f.body[0]).collect();
        assert_eq!(first, [7]);
    }

    #[test]
    fn the_user_table_is_bounded() {
        let t = Throttle::<Frame>::new(ThrottleConfig {
            rate: Rate {
                per_sec: 1.0,
                burst: 1.0,
            },
            max_users: SHARDS * 2,
            max_held: 4,
        });
        let t0 = Instant::now();
        for u in 0..1_000 {
            t.admit(UserId(u), &frame(0), Coalesce::Drop, t0);
        }
        assert!(t.tracked() <= SHARDS * 2);
        t.sweep(t0 + Duration::from_secs(5));
        assert_eq!(t.tracked(), 0, "everyone refilled: forgotten");
    }
}
