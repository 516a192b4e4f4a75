//! Friends: requests with a note, accept, decline, remove, block. Every change is an inbox
//! event for both sides (the blocked side excepted), so it is signalled and stays pullable.

use crate::{Caller, Logic, Result, error::bad};
use xinge_core::{ErrorCode, UserId};
use xinge_proto::api::{Event, Friend, FriendRequestView, FriendRequests};
use xinge_store::{Commit, Op};

const MAX_NOTE: usize = 256;
const MAX_LIST: usize = 5_000;

impl Logic {
    /// Commits `ops` with `ev` in both users' inboxes (the caller's other devices learn of
    /// their own action the same way the peer does).
    async fn tell_both(
        &self,
        caller: &Caller,
        peer: UserId,
        ev: Event,
        ops: Vec<Op>,
    ) -> Result<()> {
        let notify = match &ev {
            Event::FriendRequest { from, to, .. } => self.friend_request_notices(*from, *to),
            _ => Vec::new(),
        };
        let c = Commit {
            events: vec![(peer, ev.clone()), (caller.user, ev)],
            ops,
            notify,
            ..Commit::default()
        };
        self.commit(c).await.map(drop)
    }

    /// The relation with `from`, who must have a request pending to `me`.
    async fn pending_request_from(
        &self,
        me: UserId,
        from: UserId,
    ) -> Result<xinge_store::Relation> {
        let rel = self.store.relation(me, from).await?;
        if rel.request_in.is_none() {
            return Err(bad(
                ErrorCode::NotFound,
                "no pending request from that user",
            ));
        }
        Ok(rel)
    }

    async fn existing_peer(&self, me: UserId, peer: UserId) -> Result<()> {
        if me == peer {
            return Err(bad(ErrorCode::InvalidArgument, "that is yourself"));
        }
        match self.store.user(peer).await? {
            Some(_) => Ok(()),
            None => Err(bad(ErrorCode::NotFound, "no such user")),
        }
    }

    pub async fn request_friend(&self, caller: &Caller, to: UserId, note: String) -> Result<()> {
        let me = caller.user;
        if note.chars().count() > MAX_NOTE {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "note is longer than 256 characters",
            ));
        }
        self.existing_peer(me, to).await?;
        let rel = self.store.relation(me, to).await?;
        if rel.i_blocked || rel.blocked_me {
            return Err(bad(ErrorCode::Blocked, "one of you has blocked the other"));
        }
        if rel.friends_since_ms.is_some() {
            return Err(bad(ErrorCode::Conflict, "already friends"));
        }
        if rel.request_in.is_some() {
            // They asked first: asking back is accepting.
            return self.accept_friend(caller, to).await;
        }
        let view = FriendRequestView {
            from: me,
            to,
            note: note.clone(),
            created_at_ms: self.cfg.clock.now_ms(),
        };
        let ev = Event::FriendRequest { from: me, to, note };
        self.tell_both(caller, to, ev, vec![Op::PutRequest(view)])
            .await
    }

    pub async fn accept_friend(&self, caller: &Caller, from: UserId) -> Result<()> {
        let me = caller.user;
        let rel = self.pending_request_from(me, from).await?;
        if rel.i_blocked || rel.blocked_me {
            return Err(bad(ErrorCode::Blocked, "one of you has blocked the other"));
        }
        let ev = Event::FriendAccepted { from, to: me };
        self.tell_both(
            caller,
            from,
            ev,
            vec![Op::SetFriends {
                a: me,
                b: from,
                since_ms: self.cfg.clock.now_ms(),
            }],
        )
        .await
    }

    pub async fn decline_friend(&self, caller: &Caller, from: UserId) -> Result<()> {
        let me = caller.user;
        self.pending_request_from(me, from).await?;
        let ev = Event::FriendDeclined { from, to: me };
        self.tell_both(caller, from, ev, vec![Op::DeleteRequest { from, to: me }])
            .await
    }

    pub async fn remove_friend(&self, caller: &Caller, peer: UserId) -> Result<()> {
        let me = caller.user;
        let rel = self.store.relation(me, peer).await?;
        if rel.friends_since_ms.is_none() {
            return Err(bad(ErrorCode::NotFound, "not friends"));
        }
        let ev = Event::FriendRemoved { by: me, peer };
        self.tell_both(caller, peer, ev, vec![Op::RemoveFriends { a: me, b: peer }])
            .await
    }

    /// Blocking ends a friendship and any pending requests. The blocked user is not told;
    /// their messages are refused from now on.
    pub async fn set_block(&self, caller: &Caller, peer: UserId, blocked: bool) -> Result<()> {
        let me = caller.user;
        self.existing_peer(me, peer).await?;
        let mut ops = vec![Op::SetBlock {
            by: me,
            peer,
            blocked,
        }];
        let mut events = vec![];
        if blocked {
            let rel = self.store.relation(me, peer).await?;
            if rel.friends_since_ms.is_some() {
                ops.push(Op::RemoveFriends { a: me, b: peer });
            }
            ops.push(Op::DeleteRequest { from: me, to: peer });
            ops.push(Op::DeleteRequest { from: peer, to: me });
            events.push((me, Event::Blocked { by: me, peer }));
        } else {
            events.push((me, Event::Unblocked { by: me, peer }));
        }
        self.commit(Commit {
            events,
            ops,
            ..Commit::default()
        })
        .await
        .map(drop)
    }

    pub async fn friends(&self, caller: &Caller) -> Result<Vec<Friend>> {
        self.store
            .friends(caller.user, MAX_LIST)
            .await
            .map_err(Into::into)
    }

    pub async fn friend_requests(&self, caller: &Caller) -> Result<FriendRequests> {
        self.store
            .friend_requests(caller.user, MAX_LIST)
            .await
            .map_err(Into::into)
    }
}
