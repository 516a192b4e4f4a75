//! Who may see which conversation: a 1:1 conversation's two users; a group's current
//! members, from their join on (unless the server allows full history); a former member
//! the part of the timeline they were a member for.

use crate::{Caller, Logic, Result, error::bad};
use xinge_core::{ConvId, ErrorCode, GroupId, UserId};
use xinge_store::{GroupFanout, GroupRecord, MemberRecord};

/// Members read per page when scanning a group.
pub(crate) const MEMBER_PAGE: usize = 1_000;

/// The caller's standing in a conversation.
pub(crate) enum Access {
    Direct(UserId),
    Group(GroupRecord, MemberRecord),
}

pub(crate) fn no_conversation() -> crate::Error {
    // `not_found`, not `forbidden`: whether it exists is none of their business.
    bad(ErrorCode::NotFound, "no such conversation")
}

impl Logic {
    /// The caller's access to `conv`, or `not_found` if they are not in it.
    pub(crate) async fn access(&self, caller: &Caller, conv: ConvId) -> Result<Access> {
        self.access_of(caller.user, conv).await
    }

    /// [`Logic::access`] of a user, whatever device (a media download URL names no device).
    pub(crate) async fn access_of(&self, user: UserId, conv: ConvId) -> Result<Access> {
        match conv {
            ConvId::Direct(..) => conv
                .peer_of(user)
                .map(Access::Direct)
                .ok_or_else(no_conversation),
            ConvId::Group(g) => {
                let group = self.store.group(g).await?.filter(|g| !g.dismissed);
                let member = self.store.group_member(g, user).await?;
                match (group, member) {
                    (Some(group), Some(member)) => Ok(Access::Group(group, member)),
                    _ => Err(no_conversation()),
                }
            }
        }
    }

    pub(crate) fn fanout(&self, group: GroupId, sender: Option<(UserId, bool)>) -> GroupFanout {
        GroupFanout {
            group,
            threshold: self.cfg.chat.fanout_threshold,
            sender,
            max_members: self.cfg.chat.max_group_members,
        }
    }

    /// The conv_seq after which the caller may read: a group member sees from their join on
    /// (unless the server allows full history).
    pub(crate) fn visible_from(&self, access: &Access) -> u64 {
        match access {
            Access::Group(_, m) if !self.cfg.chat.group_full_history => m.joined_seq,
            _ => 0,
        }
    }

    /// The part of a conversation's timeline the caller may read: members from their join
    /// on; a former group member the part they were a member for (nothing after it).
    pub(crate) async fn readable(&self, caller: &Caller, conv: ConvId) -> Result<(u64, u64)> {
        match self.access(caller, conv).await {
            Ok(access) => Ok((self.visible_from(&access) + 1, u64::MAX)),
            Err(e) => {
                let ConvId::Group(g) = conv else {
                    return Err(e);
                };
                match self.store.former_member(g, caller.user).await? {
                    Some((joined, left)) => {
                        let first = if self.cfg.chat.group_full_history {
                            1
                        } else {
                            joined + 1
                        };
                        Ok((first, left))
                    }
                    None => Err(e),
                }
            }
        }
    }
}
