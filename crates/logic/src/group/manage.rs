//! Group management: every operation a member, an admin or the owner may do.

use super::{info, valid_name};
use crate::access::MEMBER_PAGE;
use crate::{Caller, Logic, Result, error::bad};
use xinge_core::{ConvId, ErrorCode, GroupId, UserId};
use xinge_proto::api::*;
use xinge_store::{Commit, GroupPatch, GroupRecord, Op};

impl Logic {
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
        let id = GroupId(self.ids.next());
        let rec = GroupRecord {
            id,
            name: req.name.clone(),
            avatar: String::new(),
            notice: String::new(),
            owner: me,
            created_at_ms: self.cfg.clock.now_ms(),
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
            message: Some(self.system_message(caller, id, event)),
            message_to: vec![me],
            ..Commit::default()
        };
        self.commit(c).await?;
        self.group_info(caller, id).await
    }

    pub async fn group_info(&self, caller: &Caller, group: GroupId) -> Result<GroupInfo> {
        let (g, _) = self.group_access(caller, group).await?;
        Ok(info(&g, self.cfg.chat.fanout_threshold))
    }

    pub async fn group_members(
        &self,
        caller: &Caller,
        group: GroupId,
        after: Option<UserId>,
        limit: Option<usize>,
    ) -> Result<GroupMembers> {
        self.group_access(caller, group).await?;
        let limit = limit.unwrap_or(100).clamp(1, MEMBER_PAGE);
        let page = self.store.group_members(group, after, limit).await?;
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
    pub async fn add_members(
        &self,
        caller: &Caller,
        group: GroupId,
        users: &[UserId],
    ) -> Result<()> {
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
    pub async fn join_group(&self, caller: &Caller, group: GroupId) -> Result<()> {
        let me = caller.user;
        let Some(by) = self.store.invite(group, me).await? else {
            return Err(bad(ErrorCode::NotFound, "no invitation to that group"));
        };
        let g = self.store.group(group).await?.filter(|g| !g.dismissed);
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
            message: Some(self.system_message(
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

    pub async fn remove_member(&self, caller: &Caller, group: GroupId, user: UserId) -> Result<()> {
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

    pub async fn leave_group(&self, caller: &Caller, group: GroupId) -> Result<()> {
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

    pub async fn transfer_group(&self, caller: &Caller, group: GroupId, to: UserId) -> Result<()> {
        let me = caller.user;
        let (_, role) = self.group_access(caller, group).await?;
        if role != Role::Owner {
            return Err(bad(
                ErrorCode::Forbidden,
                "only the owner may transfer the group",
            ));
        }
        if to == me || self.store.group_member(group, to).await?.is_none() {
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
        group: GroupId,
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
        let target = self.store.group_member(group, user).await?;
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
        group: GroupId,
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

    pub async fn mute_all(&self, caller: &Caller, group: GroupId, muted: bool) -> Result<()> {
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
        group: GroupId,
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

    pub async fn dismiss_group(&self, caller: &Caller, group: GroupId) -> Result<()> {
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
