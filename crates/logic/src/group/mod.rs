//! Groups. Every change is a system message in the group's timeline, committed together
//! with the membership change it describes, so it takes effect exactly at its place in the
//! timeline. The store checks the actor's membership in the same atomic commit.
//!
//! ```text
//! mod.rs      the checks every change shares: access, rank, the change's commit
//! manage.rs   create, info, members, add/join/remove/leave, transfer, admins, mute,
//!             update, dismiss
//! signals.rs  the paced "group advanced" signals of large groups
//! ```

mod manage;
mod signals;

pub(crate) use signals::GroupSignals;

use crate::access::Access;
use crate::{Caller, Logic, Result, error::bad};
use xinge_core::{ConvId, ErrorCode, GroupId, UserId};
use xinge_proto::api::*;
use xinge_store::{Commit, GroupRecord, NewMessage, Op};

const MAX_BATCH: usize = 1_000;

impl Logic {
    /// A group change as a message of the group's timeline, from the caller.
    fn system_message(&self, caller: &Caller, group: GroupId, event: GroupEvent) -> NewMessage {
        NewMessage {
            conv: ConvId::Group(group),
            sender: caller.user,
            sender_device: Some(caller.device.clone()),
            client_msg_id: String::new(),
            sent_at_ms: self.cfg.clock.now_ms(),
            mentions: vec![],
            mention_all: false,
            body: MessageBody::System { event },
        }
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

impl Logic {
    async fn group_access(&self, caller: &Caller, group: GroupId) -> Result<(GroupRecord, Role)> {
        match self.access(caller, ConvId::Group(group)).await? {
            Access::Group(g, m) => Ok((g, m.role)),
            Access::Direct(_) => Err(bad(ErrorCode::NotFound, "no such conversation")),
        }
    }

    async fn admin_access(&self, caller: &Caller, group: GroupId) -> Result<(GroupRecord, Role)> {
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
        group: GroupId,
        user: UserId,
        refusal: &str,
    ) -> Result<()> {
        let (_, role) = self.admin_access(caller, group).await?;
        let target = self
            .store
            .group_member(group, user)
            .await?
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
        group: GroupId,
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
            message: Some(self.system_message(caller, group, event)),
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
                if self.store.user(u).await?.is_none() {
                    return Err(bad(ErrorCode::NotFound, format!("no such user {u}")));
                }
                out.push(u);
            }
        }
        Ok(out)
    }
}
