use serde::{Deserialize, Serialize};
use xinge_core::{ConvId, DeviceId, GroupId, MsgId, UserId};
use xinge_proto::api::{Event, FriendRequestView, InboxEntry, Message, MessageBody, Role};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub created_at_ms: u64,
    /// Banned by the app's server: no login, no token (records from before bans read
    /// as not banned).
    #[serde(default)]
    pub banned: bool,
    /// The app's own id for this user (admin API), unique when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// A device holding a valid token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device: DeviceId,
    pub token_id: u64,
    pub logged_in_at_ms: u64,
}

#[derive(Clone, Debug)]
pub struct NewUser {
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub created_at_ms: u64,
    /// The app's own id for the user, unique (`Conflict` if taken).
    pub external_id: Option<String>,
    /// Events for the app's server, written with the user (see [`OutboxEvent::User`]).
    pub outbox: Vec<OutboxEvent>,
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

/// Unread mentions a conversation list counts at most, per conversation.
pub const LIST_MENTIONS_CAP: u64 = 99;

/// One conversation of a user's list with what the list shows of it, read in one go
/// ([`crate::Store::conversation_list`]) rather than with five reads per conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct ConversationRow {
    pub conv: ConvId,
    /// The user's read cursor, as [`crate::Store::memberships`] gives it (not capped).
    pub read_seq: u64,
    /// The last conv_seq the user may read: the conversation's head; for a group the user
    /// has left, the smaller of the head and the seq at which they left.
    pub head: u64,
    /// The message at `head`, if there is one.
    pub last_message: Option<Message>,
    /// A group's name (`None` for a 1:1 conversation, or a group whose record is gone).
    pub name: Option<String>,
    /// A group's messages after `read_seq` that mention the user or everyone, at most
    /// [`LIST_MENTIONS_CAP`] (0 for a 1:1 conversation).
    pub unread_mentions: u64,
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
    pub mentions: Vec<UserId>,
    pub mention_all: bool,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: GroupId,
    pub name: String,
    pub avatar: String,
    pub notice: String,
    pub owner: UserId,
    pub created_at_ms: u64,
    /// Kept by the store as members are added and removed.
    pub member_count: u64,
    pub muted_all: bool,
    pub dismissed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub role: Role,
    /// The member sees the group timeline after this conv_seq (the head when they joined).
    pub joined_seq: u64,
    pub muted: bool,
    /// The member's read cursor, kept here too so "who read" is one scan of the members.
    pub read_seq: u64,
}

/// Changes to a group's settings, applied to the current record.
#[derive(Clone, Debug, Default)]
pub struct GroupPatch {
    pub name: Option<String>,
    pub avatar: Option<String>,
    pub notice: Option<String>,
    pub owner: Option<UserId>,
    pub muted_all: Option<bool>,
    pub dismissed: Option<bool>,
}

impl GroupPatch {
    /// Applies the changes to a group record.
    pub fn apply(self, rec: &mut GroupRecord) {
        if let Some(v) = self.name {
            rec.name = v;
        }
        if let Some(v) = self.avatar {
            rec.avatar = v;
        }
        if let Some(v) = self.notice {
            rec.notice = v;
        }
        if let Some(v) = self.owner {
            rec.owner = v;
        }
        if let Some(v) = self.muted_all {
            rec.muted_all = v;
        }
        if let Some(v) = self.dismissed {
            rec.dismissed = v;
        }
    }
}

impl GroupFanout {
    /// The refusal, if any, for this commit given the group as it stands, the sender's
    /// membership, and how many of the commit's adds are new members. Every backend asks
    /// this inside its atomic commit.
    pub fn check(
        &self,
        group: Option<&GroupRecord>,
        sender: Option<&MemberRecord>,
        new_members: u64,
    ) -> Option<Refusal> {
        let rec = match group {
            Some(g) if !g.dismissed => g,
            _ => return Some(Refusal::NoGroup),
        };
        if let Some((_, talk)) = self.sender {
            let Some(m) = sender else {
                return Some(Refusal::NotMember);
            };
            if talk && (m.muted || (rec.muted_all && m.role == Role::Member)) {
                return Some(Refusal::Muted);
            }
        }
        (rec.member_count + new_members > self.max_members).then_some(Refusal::GroupFull)
    }
}

/// Why the store refused a commit (checked atomically with the write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The group does not exist or was dismissed.
    NoGroup,
    /// The sender is not a member of the group.
    NotMember,
    /// The sender is muted, or everyone but admins is.
    Muted,
    /// The group is at its maximum size.
    GroupFull,
}

/// How a message to a group fans out, decided by the store atomically with membership:
/// at most `threshold` members → an inbox entry for every member (write fan-out); more →
/// none (read fan-out: members pull the group timeline).
#[derive(Clone, Debug)]
pub struct GroupFanout {
    pub group: GroupId,
    pub threshold: u64,
    /// Refuse unless this user is a member (and, with `talk`, may talk: not muted, and
    /// not a plain member of a group muted for all).
    pub sender: Option<(UserId, bool)>,
    /// Refuse `AddMember`s that would take the group past this many members.
    pub max_members: u64,
}

impl NewMessage {
    /// The message as stored, once the backend has given it an id and its place.
    pub fn into_message(self, msg_id: MsgId, conv_seq: u64) -> Message {
        Message {
            msg_id,
            conv: self.conv,
            conv_seq,
            sender: self.sender,
            sender_device: self.sender_device,
            client_msg_id: self.client_msg_id,
            sent_at_ms: self.sent_at_ms,
            mentions: self.mentions,
            mention_all: self.mention_all,
            body: self.body,
        }
    }
}

/// A state change other than appending to timelines.
#[derive(Clone, Debug)]
pub enum Op {
    CreateGroup(GroupRecord),
    UpdateGroup {
        group: GroupId,
        patch: GroupPatch,
    },
    /// Adds a member (no-op if present): they see the timeline from the current head on,
    /// and the group joins their conversation list.
    AddMember {
        group: GroupId,
        user: UserId,
        role: Role,
    },
    /// Removes a member (no-op if absent) and the group from their conversation list.
    RemoveMember {
        group: GroupId,
        user: UserId,
    },
    SetRole {
        group: GroupId,
        user: UserId,
        role: Role,
    },
    SetMuted {
        group: GroupId,
        user: UserId,
        muted: bool,
    },
    PutInvite {
        group: GroupId,
        user: UserId,
        by: UserId,
    },
    DeleteInvite {
        group: GroupId,
        user: UserId,
    },
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
    /// Forgets, of `convs` (1:1 conversations), those the user has read up to their head
    /// at the time of this write from the set of conversations that may hold unread
    /// messages for them (see [`Commit`], step 5); one with a newer message stays.
    ForgetNews {
        user: UserId,
        convs: Vec<ConvId>,
    },
    /// Replaces the content of the message at `conv_seq` with `body` (a recall's
    /// [`MessageBody::Recalled`], a moderator's [`MessageBody::Deleted`]) and forgets whom
    /// it mentioned: every later read of it, however it is read, has no content. No-op if
    /// there is no such message.
    Redact {
        conv: ConvId,
        conv_seq: u64,
        body: MessageBody,
    },
}

/// One atomic write. In order, a backend:
/// 1. if `dedup` names a (sender, client_msg_id) already committed, applies nothing and
///    returns the earlier outcome with `duplicate = true`;
/// 2. with `group`: refuses (`StoreError::Refused`) if the group is gone, or the sender
///    may not send;
/// 3. applies `ops` (in order);
/// 4. appends `message` to its conversation (next conv_seq, new msg_id), moves the
///    sender's read cursor to it (sending implies having read up to there; in a 1:1
///    conversation a backend may make that move durable up to a second later than the
///    rest, see [`crate::Store::seal`]) and indexes its mentions;
/// 5. appends an entry for that message to the inbox of every user in `message_to` and,
///    for a write fan-out group, of every member (each once), then every `(user, event)`
///    of `events`, each at the user's next inbox seq; in a 1:1 conversation, adds it to
///    the recipient's set of conversations that may hold unread messages for them (what
///    [`crate::Store::unread`] reads instead of every conversation);
/// 6. records the dedup key;
/// 7. writes each of `outbox`'s events to the outbox (see [`OutboxEvent`]).
#[derive(Clone, Debug, Default)]
pub struct Commit {
    pub dedup: Option<(UserId, String)>,
    pub group: Option<GroupFanout>,
    pub message: Option<NewMessage>,
    pub message_to: Vec<UserId>,
    pub events: Vec<(UserId, Event)>,
    pub ops: Vec<Op>,
    /// Events for the app's server (none is written for a duplicate).
    pub outbox: Vec<OutboxEvent>,
    /// Offline-push notices the commit causes, queued in the same write (none for a
    /// duplicate).
    pub notify: Vec<Notice>,
}

/// A notification a commit asks for: to whom, about what. Queued in the commit's own
/// write, so that a crash loses none (the notify queue, read by the push workers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub user: UserId,
    pub about: NoticeAbout,
}

/// What a notice is about. A message is kept by reference: the worker reads it when it
/// notifies, so a message recalled in between is not shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NoticeAbout {
    /// The commit's message (in a [`Commit`]: the store fills in where it was placed).
    Message {
        #[serde(default = "no_conv")]
        conv: ConvId,
        #[serde(default)]
        conv_seq: u64,
    },
    FriendRequest {
        from: UserId,
    },
}

fn no_conv() -> ConvId {
    ConvId::Direct(UserId(0), UserId(0))
}

impl NoticeAbout {
    /// A notice about the commit's message (placed by the store).
    pub fn message() -> Self {
        Self::Message {
            conv: no_conv(),
            conv_seq: 0,
        }
    }
}

/// A queued notice and its place in the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRecord {
    #[serde(skip)]
    pub seq: u64,
    pub user: UserId,
    pub at_ms: u64,
    pub about: NoticeAbout,
}

/// An event for the app's server, written to the outbox by the commit that caused it, so
/// that it is delivered (at least once) exactly when the change happened. Stored as
/// `{"event_id", "type", "at_ms", "data"}`, the id a snowflake made at the commit.
#[derive(Clone, Debug)]
pub enum OutboxEvent {
    /// The commit's message (`data: {"message": …}`), under this type. Kept by reference
    /// ([`outbox_head`]): the event carries the message as stored when it is read.
    Message(&'static str),
    /// The user a write creates (`data: {"user": {user_id, username, display_name,
    /// created_at_ms}}`), under this type.
    User(&'static str),
    /// Anything else, its data known before the commit.
    Other {
        kind: &'static str,
        data: serde_json::Value,
    },
}

impl OutboxEvent {
    /// The stored JSON, given the write's user (for [`OutboxEvent::User`]; `None` if the
    /// write had none: then there is no event). `None` for [`OutboxEvent::Message`]: an
    /// event about a message is kept by reference ([`outbox_head`]).
    pub fn record(&self, id: u64, at_ms: u64, user: Option<&UserRecord>) -> Option<String> {
        // Written straight from the message or user (no JSON tree built on the way): this
        // runs in the store's writer for every message while the webhook is on.
        #[derive(serde::Serialize)]
        struct Record<'a, D> {
            event_id: String,
            #[serde(rename = "type")]
            kind: &'a str,
            at_ms: u64,
            data: D,
        }
        #[derive(serde::Serialize)]
        struct UserData<'a> {
            user: UserView<'a>,
        }
        #[derive(serde::Serialize)]
        struct UserView<'a> {
            user_id: UserId,
            username: &'a str,
            display_name: &'a str,
            created_at_ms: u64,
        }
        let event_id = id.to_string();
        let json = match self {
            OutboxEvent::Message(_) => return None,
            OutboxEvent::User(kind) => {
                let u = user?;
                serde_json::to_string(&Record {
                    event_id,
                    kind,
                    at_ms,
                    data: UserData {
                        user: UserView {
                            user_id: u.id,
                            username: &u.username,
                            display_name: &u.display_name,
                            created_at_ms: u.created_at_ms,
                        },
                    },
                })
            }
            OutboxEvent::Other { kind, data } => serde_json::to_string(&Record {
                event_id,
                kind,
                at_ms,
                data,
            }),
        };
        json.ok()
    }
}

/// An event about a message without its data: `{"event_id", "type", "at_ms"}`, to be
/// completed by [`outbox_with_message`] when the outbox is read. Backends keep events
/// about a message this way, beside a reference to the message, so that the message is
/// not stored twice and an event read after a recall or a deletion tells the message as
/// it is then, its content gone.
pub fn outbox_head(id: u64, kind: &str, at_ms: u64) -> String {
    serde_json::json!({"event_id": id.to_string(), "type": kind, "at_ms": at_ms}).to_string()
}

/// The event `head` ([`outbox_head`]) with `data: {"message": …}`, `message` being the
/// stored message's JSON text (`null` were it missing: messages are never removed, and
/// an event must not hold up the outbox).
pub fn outbox_with_message(head: &str, message: Option<&str>) -> String {
    let head = head.strip_suffix('}').unwrap_or(head);
    let message = message.unwrap_or("null");
    let mut event = String::with_capacity(head.len() + message.len() + 24);
    event.push_str(head);
    event.push_str(r#","data":{"message":"#);
    event.push_str(message);
    event.push_str("}}");
    event
}

/// The password hash of a user who has no password (created without one by the app's
/// server, or erased): no Argon2 hash parses as it, so no password ever matches.
pub const NO_PASSWORD: &str = "!";

/// An event in the outbox: its place (oldest first) and its JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRecord {
    pub seq: u64,
    pub event: String,
}

/// An event whose delivery was given up, kept until it is replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: u64,
    pub event: String,
    /// Why its last attempt failed.
    pub error: String,
    pub at_ms: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Committed {
    pub duplicate: bool,
    pub message: Option<Message>,
    /// The sender's inbox seq of `message` (for a duplicate: of the original).
    pub sender_seq: u64,
    /// The inbox entries for `message`: each recipient and the seq of its entry (the entry
    /// is `Event::Message` with `message`, at `at_ms`); empty for duplicates. Kept apart from
    /// `entries` so a message fanned out to 500 members is not cloned 500 times.
    pub recipients: Vec<(UserId, u64)>,
    /// The other inbox entries the commit created, in order, with their owners.
    pub entries: Vec<(UserId, InboxEntry)>,
    /// When the entries were written.
    pub at_ms: u64,
    /// For a message to a read fan-out group: the group and the message's conv_seq, for
    /// the coalesced "group advanced" signal.
    pub group_advanced: Option<(GroupId, u64)>,
}

/// What a dedup key remembers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DedupRecord {
    pub conv: ConvId,
    pub conv_seq: u64,
    pub msg_id: MsgId,
    pub sender_seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_outbox_record_is_the_event_with_its_message_user_or_data() {
        let message: Message = serde_json::from_value(json!({
            "msg_id": "7", "conv": "d1-2", "conv_seq": 3, "sender": "1",
            "sender_device": "phone", "client_msg_id": "c1", "sent_at_ms": 5,
            "kind": "content", "content": {"text": "hi \"there\"\n"},
        }))
        .unwrap();
        let user = UserRecord {
            id: UserId(9),
            username: "nine".into(),
            display_name: "Nine".into(),
            password_hash: "secret hash".into(),
            created_at_ms: 11,
            banned: false,
            external_id: Some("e9".into()),
        };
        let parse =
            |s: Option<String>| serde_json::from_str::<serde_json::Value>(&s.unwrap()).unwrap();
        let head = outbox_head(42, "message.sent", 100);
        let stored = serde_json::to_string(&message).unwrap();
        assert_eq!(
            parse(Some(outbox_with_message(&head, Some(&stored)))),
            json!({"event_id": "42", "type": "message.sent", "at_ms": 100,
                   "data": {"message": serde_json::to_value(&message).unwrap()}})
        );
        assert_eq!(
            parse(Some(outbox_with_message(&head, None))),
            json!({"event_id": "42", "type": "message.sent", "at_ms": 100,
                   "data": {"message": null}})
        );
        let u = OutboxEvent::User("account.created").record(43, 101, Some(&user));
        assert_eq!(
            parse(u),
            json!({"event_id": "43", "type": "account.created", "at_ms": 101,
                   "data": {"user": {"user_id": "9", "username": "nine", "display_name": "Nine",
                                     "created_at_ms": 11}}}),
            "never the password hash"
        );
        let o = OutboxEvent::Other {
            kind: "friend.added",
            data: json!({"users": ["1", "2"]}),
        };
        assert_eq!(
            parse(o.record(44, 102, None)),
            json!({"event_id": "44", "type": "friend.added", "at_ms": 102,
                   "data": {"users": ["1", "2"]}})
        );
        // An event about the write's user, in a write without one, is none.
        assert!(
            OutboxEvent::User("account.created")
                .record(1, 1, None)
                .is_none()
        );
        assert!(
            OutboxEvent::Message("message.sent")
                .record(1, 1, Some(&user))
                .is_none()
        );
    }
}
