//! The "group advanced" signals of large (read fan-out) groups: messages are not written to
//! each member's inbox, so online members are told once per window that the group moved
//! on (its newest small messages inline), and pull the rest.

use crate::Logic;
use crate::access::MEMBER_PAGE;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xinge_core::{ConvId, GroupId, UserId};
use xinge_proto::api::*;
use xinge_proto::{Frame, cmd};

/// Groups with a signal pending at once; past this a mark is dropped (clients repair with
/// their periodic `sync groups=true`).
const MAX_PENDING_GROUPS: usize = 100_000;

/// Signals sent at once, between waits of the pace (or yields to the scheduler).
const SIGNAL_BATCH: usize = 64;
/// Messages carried inline in one "group advanced" signal, at most.
const INLINE_MESSAGES: usize = 16;
/// Member lists cached for signalling are reread after this long.
const MEMBER_CACHE_TTL: Duration = Duration::from_secs(1);
/// Member ids cached for signalling, across all groups (8 bytes each).
const MEMBER_CACHE_IDS: usize = 2_000_000;

/// When a group's member list was read, and the list.
type CachedMembers = (std::time::Instant, Arc<Vec<UserId>>);

#[derive(Default)]
struct Advanced {
    seq: u64,
    /// The newest small messages, by conv_seq.
    messages: std::collections::BTreeMap<u64, Message>,
}

/// Large groups that advanced since the last window, with their newest seq and messages;
/// and the member lists the signals go to, cached briefly (signals are hints: a member
/// list a second old only decides who is told, never who may read).
pub(crate) struct GroupSignals {
    pending: Mutex<HashMap<GroupId, Advanced>>,
    members: Mutex<HashMap<GroupId, CachedMembers>>,
    window: Duration,
    /// Signals per second at most (0: unpaced).
    rate: u64,
}

impl GroupSignals {
    pub fn new(window: Duration, rate: u64) -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            window: window.max(Duration::from_millis(1)),
            rate,
        }
    }

    pub fn mark(&self, group: GroupId, seq: u64, message: Option<Message>) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() >= MAX_PENDING_GROUPS && !p.contains_key(&group) {
            return;
        }
        let a = p.entry(group).or_default();
        a.seq = a.seq.max(seq);
        if let Some(m) = message {
            a.messages.insert(m.conv_seq, m);
            while a.messages.len() > INLINE_MESSAGES {
                a.messages.pop_first();
            }
        }
    }

    fn take(&self) -> HashMap<GroupId, Advanced> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn cached_members(&self, group: GroupId) -> Option<Arc<Vec<UserId>>> {
        let m = self.members.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&group)
            .filter(|(at, _)| at.elapsed() < MEMBER_CACHE_TTL)
            .map(|(_, ids)| ids.clone())
    }

    fn cache_members(&self, group: GroupId, ids: Arc<Vec<UserId>>) {
        let mut m = self.members.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, (at, _)| at.elapsed() < MEMBER_CACHE_TTL);
        let held: usize = m.values().map(|(_, v)| v.len()).sum();
        if held + ids.len() <= MEMBER_CACHE_IDS {
            m.insert(group, (std::time::Instant::now(), ids));
        }
    }
}

/// Lag behind its rate that a [`Pace`] catches up.
const PACE_SLACK: Duration = Duration::from_millis(2);

/// Spreads a fan-out to at most `rate` signals a second. Quiet time is not saved up
/// (beyond [`PACE_SLACK`]), so the largest burst is a few batches: a 2,000-member signal
/// sent at once held the 1:1 traffic of the same process behind it for the ~15 ms it took
/// (docs/BENCHMARKS.md, "mixed").
struct Pace {
    /// Time per signal; `None`: unpaced.
    per: Option<Duration>,
    next: tokio::time::Instant,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Self {
            per: (rate > 0).then(|| Duration::from_secs(1) / rate.min(1_000_000_000) as u32),
            next: tokio::time::Instant::now(),
        }
    }

    /// `n` signals went out: waits until the rate allows more (yields at least, so the
    /// connections that write them, and everyone else, run).
    async fn sent(&mut self, n: usize) {
        let Some(per) = self.per else {
            tokio::task::yield_now().await;
            return;
        };
        let now = tokio::time::Instant::now();
        // The timer wakes up to a millisecond late: so much lag is caught up (else the
        // rate kept would be far below the one set); more is quiet time, not saved up.
        let behind = now.checked_sub(PACE_SLACK).unwrap_or(now);
        self.next = self.next.max(behind) + per * n as u32;
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}
impl Logic {
    /// Sends every online member of each large group that advanced one signal per window.
    /// One task for all groups, paced ([`Pace`], `chat.group_signal_rate`) so that a busy
    /// 100,000-member group cannot starve the rest; what a member
    /// misses while its turn comes rides in its next signal.
    pub async fn run_group_signals(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.group_signals.window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pace = Pace::new(self.group_signals.rate);
        loop {
            tick.tick().await;
            for (group, advanced) in self.group_signals.take() {
                let Some(members) = self.signal_targets(group).await else {
                    continue;
                };
                // The newest messages that end at `seq` without a gap ride along.
                let mut messages: Vec<Message> = Vec::new();
                for (seq, m) in advanced.messages.into_iter().rev() {
                    let next = messages
                        .last()
                        .map_or(advanced.seq, |p: &Message| p.conv_seq - 1);
                    if seq != next {
                        break;
                    }
                    messages.push(m);
                }
                messages.reverse();
                let signal = Signal::Group {
                    conv: ConvId::Group(group),
                    seq: advanced.seq,
                    messages,
                };
                // Serialised once for every member.
                let frame = Frame::request(
                    cmd::SIGNAL,
                    0,
                    serde_json::to_vec(&signal).unwrap_or_default(),
                );
                for users in members.chunks(SIGNAL_BATCH) {
                    // Paced by the signals sent, not the members: offline ones cost little.
                    let sent = self.push.signal(
                        users,
                        &frame,
                        crate::signal::group_key(group, advanced.seq),
                    );
                    pace.sent(sent).await;
                }
            }
        }
    }

    /// The members of a group to signal (all of them: push skips those offline); also
    /// those a group message may notify. Cached for a moment.
    pub(crate) async fn signal_targets(&self, group: GroupId) -> Option<Arc<Vec<UserId>>> {
        if let Some(ids) = self.group_signals.cached_members(group) {
            return Some(ids);
        }
        let mut ids = Vec::new();
        let mut from = None;
        loop {
            let page = self
                .store
                .group_members(group, from, MEMBER_PAGE)
                .await
                .ok()?;
            ids.extend(page.iter().map(|(u, _)| *u));
            match page.last() {
                Some((u, _)) if page.len() == MEMBER_PAGE => from = Some(*u),
                _ => break,
            }
            tokio::task::yield_now().await;
        }
        let ids = Arc::new(ids);
        self.group_signals.cache_members(group, ids.clone());
        Some(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::Pace;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_paced_fan_out_keeps_to_its_rate() {
        // 64,000 a second: ten batches of 64 are due over 10 ms; the first goes at once.
        let mut pace = Pace::new(64_000);
        let began = Instant::now();
        for _ in 0..10 {
            pace.sent(64).await;
        }
        assert!(began.elapsed() >= Duration::from_millis(10));
        // Quiet time is not saved up: after a pause, no more than the slack's worth goes
        // at once (2 ms: two batches), and then the rate again.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let again = Instant::now();
        for _ in 0..6 {
            pace.sent(64).await;
        }
        assert!(again.elapsed() >= Duration::from_millis(4));
        assert!(Pace::new(0).per.is_none(), "rate 0 is unpaced");
    }
}
