//! Groups: management, and the coalesced "group advanced" signals of large groups.
//!
//! Every change is a system message in the group's timeline, committed together with the
//! membership change it describes, so it takes effect exactly at its place in the
//! timeline. The store checks the actor's membership in the same atomic commit.

use crate::chat::{Access, MEMBER_PAGE};
use crate::{Caller, Logic, Result, bad, store_err};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xinge_core::{ConvId, ErrorCode, UserId};
use xinge_proto::api::*;
use xinge_proto::{Frame, cmd};
use xinge_store::{Commit, GroupPatch, GroupRecord, NewMessage, Op};

const MAX_BATCH: usize = 1_000;
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
    pending: Mutex<HashMap<u64, Advanced>>,
    members: Mutex<HashMap<u64, CachedMembers>>,
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

    pub fn mark(&self, group: u64, seq: u64, message: Option<Message>) {
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

    fn take(&self) -> HashMap<u64, Advanced> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn cached_members(&self, group: u64) -> Option<Arc<Vec<UserId>>> {
        let m = self.members.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&group)
            .filter(|(at, _)| at.elapsed() < MEMBER_CACHE_TTL)
            .map(|(_, ids)| ids.clone())
    }

    fn cache_members(&self, group: u64, ids: Arc<Vec<UserId>>) {
        let mut m = self.members.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, (at, _)| at.elapsed() < MEMBER_CACHE_TTL);
        let held: usize = m.values().map(|(_, v)| v.len()).sum();
        if held + ids.len() <= MEMBER_CACHE_IDS {
            m.insert(group, (std::time::Instant::now(), ids));
        }
    }
}

/// A group change as a message of the group's timeline, from the caller.
fn system_message(caller: &Caller, group: u64, event: GroupEvent) -> NewMessage {
    NewMessage {
        conv: ConvId::Group(group),
        sender: caller.user,
        sender_device: Some(caller.device.clone()),
        client_msg_id: String::new(),
        sent_at_ms: xinge_core::now_ms(),
        mentions: vec![],
        mention_all: false,
        body: MessageBody::System { event },
    }
}

fn valid_name(s: &str) -> bool {
    !s.trim().is_empty() && s.chars().count() <= 64 && !s.chars().any(char::is_control)
}

fn info(g: &GroupRecord, threshold: u64) -> GroupInfo {
    GroupInfo {
        group_id: g.id,
        conv: ConvId::Group(g.id),
        name: g.name.clone(),
        avatar: g.avatar.clone(),
        notice: g.notice.clone(),
        owner: g.owner,
        member_count: g.member_count,
        muted_all: g.muted_all,
        fanout: if g.member_count > threshold {
            "read"
        } else {
            "write"
        }
        .into(),
        dismissed: g.dismissed,
        created_at_ms: g.created_at_ms,
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
    /// 100,000-member group cannot starve the rest (seed 002, items 6-7); what a member
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
                    let sent =
                        self.push
                            .signal(users, &frame, crate::group_key(group, advanced.seq));
                    pace.sent(sent).await;
                }
            }
        }
    }

    /// The members of a group to signal (all of them: push skips those offline).
    async fn signal_targets(&self, group: u64) -> Option<Arc<Vec<UserId>>> {
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

    async fn group_access(&self, caller: &Caller, group: u64) -> Result<(GroupRecord, Role)> {
        match self.access(caller, ConvId::Group(group)).await? {
            Access::Group(g, m) => Ok((g, m.role)),
            Access::Direct(_) => Err(bad(ErrorCode::NotFound, "no such conversation")),
        }
    }

    async fn admin_access(&self, caller: &Caller, group: u64) -> Result<(GroupRecord, Role)> {
        let (g, role) = self.group_access(caller, group).await?;
        if role == Role::Member {
            return Err(bad(
                ErrorCode::Forbidden,
                "only the group's admins may do this",
            ));
        }
        Ok((g, role))
    }

    /// Admins act on plain members, the owner on admins too; nobody on the owner.
    async fn outranks(
        &self,
        caller: &Caller,
        group: u64,
        user: UserId,
        refusal: &str,
    ) -> Result<()> {
        let (_, role) = self.admin_access(caller, group).await?;
        let target = self
            .store
            .group_member(group, user)
            .await
            .map_err(store_err)?
            .ok_or_else(|| bad(ErrorCode::NotFound, "not a member"))?;
        if target.role == Role::Owner || (target.role == Role::Admin && role != Role::Owner) {
            return Err(bad(ErrorCode::Forbidden, refusal));
        }
        Ok(())
    }

    /// Commits a group change: `ops`, and `event` as a system message fanned out like any
    /// message (plus `also_to`, e.g. the member being removed).
    async fn change(
        &self,
        caller: &Caller,
        group: u64,
        event: GroupEvent,
        ops: Vec<Op>,
        also_to: Vec<UserId>,
    ) -> Result<u64> {
        let me = caller.user;
        let mut message_to = vec![me];
        message_to.extend(also_to);
        let c = Commit {
            group: Some(self.fanout(group, Some((me, false)))),
            ops,
            message: Some(system_message(caller, group, event)),
            message_to,
            ..Commit::default()
        };
        let done = self.commit(c).await?;
        Ok(done.message.map_or(0, |m| m.conv_seq))
    }

    async fn existing_users(&self, users: &[UserId], me: UserId) -> Result<Vec<UserId>> {
        if users.len() > MAX_BATCH {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "at most 1,000 users at a time",
            ));
        }
        let mut out = Vec::new();
        for &u in users {
            if u != me && !out.contains(&u) {
                if self.store.user(u).await.map_err(store_err)?.is_none() {
                    return Err(bad(ErrorCode::NotFound, format!("no such user {u}")));
                }
                out.push(u);
            }
        }
        Ok(out)
    }

    pub async fn create_group(
        &self,
        caller: &Caller,
        req: CreateGroupRequest,
    ) -> Result<GroupInfo> {
        if !valid_name(&req.name) {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "group name must be 1-64 printable characters",
            ));
        }
        let me = caller.user;
        let members = self.existing_users(&req.members, me).await?;
        let id = self.ids.next();
        let rec = GroupRecord {
            id,
            name: req.name.clone(),
            avatar: String::new(),
            notice: String::new(),
            owner: me,
            created_at_ms: xinge_core::now_ms(),
            member_count: 0,
            muted_all: false,
            dismissed: false,
        };
        let mut ops = vec![
            Op::CreateGroup(rec),
            Op::AddMember {
                group: id,
                user: me,
                role: Role::Owner,
            },
        ];
        ops.extend(members.iter().map(|&user| Op::AddMember {
            group: id,
            user,
            role: Role::Member,
        }));
        let event = GroupEvent::Created {
            by: me,
            name: req.name,
            members,
        };
        let c = Commit {
            group: Some(self.fanout(id, None)),
            ops,
            message: Some(system_message(caller, id, event)),
            message_to: vec![me],
            ..Commit::default()
        };
        self.commit(c).await?;
        self.group_info(caller, id).await
    }

    pub async fn group_info(&self, caller: &Caller, group: u64) -> Result<GroupInfo> {
        let (g, _) = self.group_access(caller, group).await?;
        Ok(info(&g, self.cfg.chat.fanout_threshold))
    }

    pub async fn group_members(
        &self,
        caller: &Caller,
        group: u64,
        after: Option<UserId>,
        limit: Option<usize>,
    ) -> Result<GroupMembers> {
        self.group_access(caller, group).await?;
        let limit = limit.unwrap_or(100).clamp(1, MEMBER_PAGE);
        let page = self
            .store
            .group_members(group, after, limit)
            .await
            .map_err(store_err)?;
        let next_after = (page.len() == limit)
            .then(|| page.last().map(|(u, _)| *u))
            .flatten();
        let members = page
            .into_iter()
            .map(|(user, m)| GroupMember {
                user,
                role: m.role,
                muted: m.muted,
                joined_seq: m.joined_seq,
                read_seq: m.read_seq,
            })
            .collect();
        Ok(GroupMembers {
            members,
            next_after,
        })
    }

    /// Admins add members directly; other members invite them (the invitee joins).
    pub async fn add_members(&self, caller: &Caller, group: u64, users: &[UserId]) -> Result<()> {
        let me = caller.user;
        let (g, role) = self.group_access(caller, group).await?;
        let users = self.existing_users(users, me).await?;
        if users.is_empty() {
            return Ok(());
        }
        if role == Role::Member {
            let conv = ConvId::Group(group);
            let mut ops = Vec::new();
            let mut events = Vec::new();
            for &u in &users {
                ops.push(Op::PutInvite {
                    group,
                    user: u,
                    by: me,
                });
                events.push((
                    u,
                    Event::GroupInvite {
                        conv,
                        by: me,
                        name: g.name.clone(),
                    },
                ));
            }
            let c = Commit {
                group: Some(self.fanout(group, Some((me, false)))),
                ops,
                events,
                ..Commit::default()
            };
            self.commit(c).await?;
            return Ok(());
        }
        let ops = users
            .iter()
            .map(|&user| Op::AddMember {
                group,
                user,
                role: Role::Member,
            })
            .collect();
        self.change(
            caller,
            group,
            GroupEvent::Joined { users, by: me },
            ops,
            vec![],
        )
        .await
        .map(drop)
    }

    /// Joins a group one was invited to.
    pub async fn join_group(&self, caller: &Caller, group: u64) -> Result<()> {
        let me = caller.user;
        let Some(by) = self.store.invite(group, me).await.map_err(store_err)? else {
            return Err(bad(ErrorCode::NotFound, "no invitation to that group"));
        };
        let g = self
            .store
            .group(group)
            .await
            .map_err(store_err)?
            .filter(|g| !g.dismissed);
        if g.is_none() {
            return Err(bad(ErrorCode::NotFound, "no such conversation"));
        }
        let ops = vec![Op::AddMember {
            group,
            user: me,
            role: Role::Member,
        }];
        let c = Commit {
            group: Some(self.fanout(group, None)),
            ops,
            message: Some(system_message(
                caller,
                group,
                GroupEvent::Joined {
                    users: vec![me],
                    by,
                },
            )),
            message_to: vec![me],
            ..Commit::default()
        };
        self.commit(c).await.map(drop)
    }

    pub async fn remove_member(&self, caller: &Caller, group: u64, user: UserId) -> Result<()> {
        let me = caller.user;
        if user == me {
            return self.leave_group(caller, group).await;
        }
        self.outranks(caller, group, user, "you may not remove that member")
            .await?;
        let ops = vec![Op::RemoveMember { group, user }];
        // The removed member's devices get the removal too, and nothing after it.
        self.change(
            caller,
            group,
            GroupEvent::Removed { user, by: me },
            ops,
            vec![user],
        )
        .await
        .map(drop)
    }

    pub async fn leave_group(&self, caller: &Caller, group: u64) -> Result<()> {
        let me = caller.user;
        let (g, role) = self.group_access(caller, group).await?;
        if role == Role::Owner && g.member_count > 1 {
            return Err(bad(
                ErrorCode::Forbidden,
                "transfer the ownership before leaving",
            ));
        }
        let mut ops = vec![Op::RemoveMember { group, user: me }];
        if g.member_count <= 1 {
            ops.push(Op::UpdateGroup {
                group,
                patch: GroupPatch {
                    dismissed: Some(true),
                    ..GroupPatch::default()
                },
            });
        }
        self.change(caller, group, GroupEvent::Left { user: me }, ops, vec![])
            .await
            .map(drop)
    }

    pub async fn transfer_group(&self, caller: &Caller, group: u64, to: UserId) -> Result<()> {
        let me = caller.user;
        let (_, role) = self.group_access(caller, group).await?;
        if role != Role::Owner {
            return Err(bad(
                ErrorCode::Forbidden,
                "only the owner may transfer the group",
            ));
        }
        if to == me
            || self
                .store
                .group_member(group, to)
                .await
                .map_err(store_err)?
                .is_none()
        {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "the new owner must be another member",
            ));
        }
        let ops = vec![
            Op::SetRole {
                group,
                user: to,
                role: Role::Owner,
            },
            Op::SetRole {
                group,
                user: me,
                role: Role::Admin,
            },
            Op::UpdateGroup {
                group,
                patch: GroupPatch {
                    owner: Some(to),
                    ..GroupPatch::default()
                },
            },
        ];
        self.change(
            caller,
            group,
            GroupEvent::OwnerChanged { from: me, to },
            ops,
            vec![],
        )
        .await
        .map(drop)
    }

    pub async fn set_admin(
        &self,
        caller: &Caller,
        group: u64,
        user: UserId,
        admin: bool,
    ) -> Result<()> {
        let me = caller.user;
        let (_, role) = self.group_access(caller, group).await?;
        if role != Role::Owner {
            return Err(bad(
                ErrorCode::Forbidden,
                "only the owner may appoint admins",
            ));
        }
        let target = self
            .store
            .group_member(group, user)
            .await
            .map_err(store_err)?;
        if target.is_none_or(|t| t.role == Role::Owner) {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "not a member who can be an admin",
            ));
        }
        let role = if admin { Role::Admin } else { Role::Member };
        let ops = vec![Op::SetRole { group, user, role }];
        self.change(
            caller,
            group,
            GroupEvent::AdminSet {
                user,
                admin,
                by: me,
            },
            ops,
            vec![],
        )
        .await
        .map(drop)
    }

    pub async fn mute_member(
        &self,
        caller: &Caller,
        group: u64,
        user: UserId,
        muted: bool,
    ) -> Result<()> {
        let me = caller.user;
        self.outranks(caller, group, user, "you may not mute that member")
            .await?;
        let ops = vec![Op::SetMuted { group, user, muted }];
        self.change(
            caller,
            group,
            GroupEvent::MemberMuted {
                user,
                muted,
                by: me,
            },
            ops,
            vec![],
        )
        .await
        .map(drop)
    }

    pub async fn mute_all(&self, caller: &Caller, group: u64, muted: bool) -> Result<()> {
        self.admin_access(caller, group).await?;
        let patch = GroupPatch {
            muted_all: Some(muted),
            ..GroupPatch::default()
        };
        let ops = vec![Op::UpdateGroup { group, patch }];
        self.change(
            caller,
            group,
            GroupEvent::AllMuted {
                muted,
                by: caller.user,
            },
            ops,
            vec![],
        )
        .await
        .map(drop)
    }

    pub async fn update_group(
        &self,
        caller: &Caller,
        group: u64,
        req: UpdateGroupRequest,
    ) -> Result<GroupInfo> {
        self.admin_access(caller, group).await?;
        if req.name.as_deref().is_some_and(|n| !valid_name(n)) {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "group name must be 1-64 printable characters",
            ));
        }
        let too_long = |s: &Option<String>, max: usize| s.as_ref().is_some_and(|s| s.len() > max);
        if too_long(&req.avatar, 1024) || too_long(&req.notice, 4096) {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "avatar is at most 1 KiB and notice 4 KiB",
            ));
        }
        let patch = GroupPatch {
            name: req.name.clone(),
            avatar: req.avatar.clone(),
            notice: req.notice.clone(),
            ..GroupPatch::default()
        };
        let event = GroupEvent::Updated {
            by: caller.user,
            name: req.name,
            avatar: req.avatar,
            notice: req.notice,
        };
        self.change(
            caller,
            group,
            event,
            vec![Op::UpdateGroup { group, patch }],
            vec![],
        )
        .await?;
        self.group_info(caller, group).await
    }

    pub async fn dismiss_group(&self, caller: &Caller, group: u64) -> Result<()> {
        let (_, role) = self.group_access(caller, group).await?;
        if role != Role::Owner {
            return Err(bad(
                ErrorCode::Forbidden,
                "only the owner may dismiss the group",
            ));
        }
        let patch = GroupPatch {
            dismissed: Some(true),
            ..GroupPatch::default()
        };
        let ops = vec![Op::UpdateGroup { group, patch }];
        self.change(
            caller,
            group,
            GroupEvent::Dismissed { by: caller.user },
            ops,
            vec![],
        )
        .await
        .map(drop)
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
