use serde::{Deserialize, Serialize};
use xinge_core::{ConvId, DeviceId, MsgId, UserId};
use xinge_proto::api::{Event, FriendRequestView, InboxEntry, Message, MessageBody};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub created_at_ms: u64,
}

#[derive(Clone, Debug)]
pub struct NewUser {
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub created_at_ms: u64,
}

/// How `me` stands with another user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Relation {
    pub friends_since_ms: Option<u64>,
    pub i_blocked: bool,
    pub blocked_me: bool,
    /// A request from me to them is pending.
    pub request_out: Option<FriendRequestView>,
    /// A request from them to me is pending.
    pub request_in: Option<FriendRequestView>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pair {
    pub friends_since_ms: Option<u64>,
    pub i_blocked: bool,
    pub blocked_me: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub conv: ConvId,
    pub read_seq: u64,
}

/// A message about to be appended to its conversation timeline; the store assigns
/// `msg_id` and `conv_seq`.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub conv: ConvId,
    pub sender: UserId,
    pub sender_device: Option<DeviceId>,
    pub client_msg_id: String,
    pub sent_at_ms: u64,
    pub body: MessageBody,
}

/// A state change other than appending to timelines.
#[derive(Clone, Debug)]
pub enum Op {
    /// Makes `a` and `b` friends (both directions) and clears requests between them.
    SetFriends {
        a: UserId,
        b: UserId,
        since_ms: u64,
    },
    RemoveFriends {
        a: UserId,
        b: UserId,
    },
    PutRequest(FriendRequestView),
    DeleteRequest {
        from: UserId,
        to: UserId,
    },
    SetBlock {
        by: UserId,
        peer: UserId,
        blocked: bool,
    },
    /// Adds `conv` to the user's conversation list (no-op if present).
    Join {
        user: UserId,
        conv: ConvId,
    },
    /// Moves the user's read cursor in `conv` forward to `seq` (never backwards); joins too.
    AdvanceRead {
        user: UserId,
        conv: ConvId,
        seq: u64,
    },
}

/// One atomic write. In order, a backend:
/// 1. if `dedup` names a (sender, client_msg_id) already committed, applies nothing and
///    returns the earlier outcome with `duplicate = true`;
/// 2. appends `message` to its conversation (next conv_seq, new msg_id) and moves the
///    sender's read cursor to it (sending implies having read up to there);
/// 3. appends to the inbox of every user in `message_to` an entry for that message, then
///    every `(user, event)` of `events`, each at the user's next inbox seq;
/// 4. applies `ops`; 5. records the dedup key.
#[derive(Clone, Debug, Default)]
pub struct Commit {
    pub dedup: Option<(UserId, String)>,
    pub message: Option<NewMessage>,
    pub message_to: Vec<UserId>,
    pub events: Vec<(UserId, Event)>,
    pub ops: Vec<Op>,
}

#[derive(Clone, Debug, Default)]
pub struct Committed {
    pub duplicate: bool,
    pub message: Option<Message>,
    /// The sender's inbox seq of `message` (for a duplicate: of the original).
    pub sender_seq: u64,
    /// Every inbox entry the commit created, in order, with its owner; empty for duplicates.
    pub entries: Vec<(UserId, InboxEntry)>,
}

/// What a dedup key remembers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DedupRecord {
    pub conv: ConvId,
    pub conv_seq: u64,
    pub msg_id: MsgId,
    pub sender_seq: u64,
}
