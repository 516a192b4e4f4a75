//! JSON bodies of the HTTP API and of the business commands on the long connection.
//! One type per request and response; the HTTP route and the command carry the same body.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use xinge_core::{ConvId, DeviceId, GroupId, MsgId, UserId};

// === accounts ===

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 3-32 characters of `[a-z0-9_.-]`, unique.
    pub username: String,
    /// 8-256 bytes.
    pub password: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    pub device: DeviceId,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    pub token: String,
    pub user_id: UserId,
    pub device: DeviceId,
    pub expires_at_ms: u64,
}

/// Change the password: the current one proves it is the user; every other device is
/// logged out (this one stays).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// A user created by the app's server (admin API). Without a password the user signs in
/// only with tokens the app's server has the admin API issue.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminNewUser {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    /// The app's own id for the user (1-128 bytes), unique: the admin API finds the user
    /// by it.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Instead of `password`: the user's password as an Argon2 hash in PHC form
    /// (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), as another system stored it. The user
    /// logs in with the password it was made from; the hash's own parameters are used to
    /// check it.
    #[serde(default)]
    pub password_hash: Option<String>,
}

/// Users created in one request (at most 1,000), each on its own: one that cannot be
/// created does not stop the others.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminImport {
    pub users: Vec<AdminNewUser>,
}

/// What became of each user of an [`AdminImport`], in the request's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminImported {
    /// How many were created by this request.
    pub created: usize,
    pub results: Vec<AdminImportResult>,
}

/// One user of an import: `created`, or `exists` (a user with this username and this
/// `external_id` is already there: a retried import finds what its first try created),
/// or `failed` with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminImportResult {
    pub username: String,
    /// `created`, `exists` or `failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<xinge_core::error::ApiError>,
}

/// A token for one device of a user, issued by the app's server.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenRequest {
    pub device: DeviceId,
}

/// A user as the app's server sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminUser {
    pub user_id: UserId,
    pub username: String,
    pub display_name: String,
    /// Whether the user can log in with a password (a user created without one signs in
    /// only with issued tokens).
    pub has_password: bool,
    pub banned: bool,
    pub created_at_ms: u64,
    /// The app's own id for the user, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// Who is connected, as the admin API counts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminOnline {
    /// Users with at least one long connection; absent where it is not counted (a
    /// cluster: users are counted per gateway only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u64>,
    /// Long connections, over every gateway.
    pub connections: u64,
    /// Gateways holding them.
    pub gateways: u64,
}

/// An after-event whose delivery was given up on.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterView {
    pub id: u64,
    /// The event as it would have been delivered.
    pub event: Value,
    /// Why its last attempt failed.
    pub error: String,
    pub at_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetterView>,
}

/// A user's data, as the admin API exports it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AdminExport {
    pub user: AdminUser,
    pub friends: Vec<Friend>,
    /// The groups the user is a member of.
    pub groups: Vec<GroupId>,
    /// The messages the user sent, by conversation and sequence.
    pub messages: Vec<Message>,
    /// More messages than one export holds (`ADMIN_EXPORT_MAX_MESSAGES`) were sent: the
    /// oldest are here, the rest are not.
    pub truncated: bool,
}

/// One of the caller's logged-in devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    pub device: DeviceId,
    pub logged_in_at_ms: u64,
    /// Whether it holds a long connection now.
    pub online: bool,
    /// Now for an online device; when its last connection ended otherwise (0: not known,
    /// e.g. it never connected since the server started).
    pub last_seen_ms: u64,
    /// The device this request came from.
    pub current: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Devices {
    pub devices: Vec<DeviceView>,
}

// === offline push ===

/// How a device is reached while it is not connected (or is in the background): its
/// provider and what that provider needs. One per device; a new one replaces the old;
/// logging the device out removes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "provider", rename_all = "snake_case", deny_unknown_fields)]
pub enum PushRegistration {
    /// Apple: the device token (hex), the app's bundle id as the topic, and whether the
    /// token is for the sandbox (development builds) or production.
    Apns {
        token: String,
        topic: String,
        #[serde(default)]
        sandbox: bool,
    },
    /// Firebase Cloud Messaging: the registration token.
    Fcm { token: String },
    /// Web Push: the browser's subscription (`PushSubscription.toJSON()`: the endpoint and
    /// its `p256dh` and `auth` keys, base64url).
    Webpush {
        endpoint: String,
        p256dh: String,
        auth: String,
    },
    /// The app's own push service, told through the notification webhook; `token` is
    /// passed through as the app gave it.
    Webhook {
        #[serde(default)]
        token: Option<String>,
    },
}

/// A piece of media as messages carry it and clients show it. A message's content names
/// its media as `{"media": "<id>"}`; the server puts this in its place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MediaView {
    pub id: String,
    /// `image`, `video`, `voice` or `file`.
    pub kind: String,
    /// Sniffed from the bytes.
    pub mime: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Whether a thumbnail exists (`variant=thumb`).
    pub thumb: bool,
}

/// A resumable upload's progress, and the media it became once complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UploadStatus {
    pub offset: u64,
    pub length: u64,
    pub expires_ms: u64,
    /// `Upload-Metadata` as the client sent it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    pub media: Option<MediaView>,
}

/// A download URL: needs no token (it can go into an `<img src>`), valid until
/// `expires_ms`, and checked again at each use (a recalled message's media is gone at
/// once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MediaUrl {
    pub url: String,
    pub expires_ms: u64,
}

/// What this server can push through: the providers a registration may name, and the
/// VAPID public key a browser subscribes with (`applicationServerKey`), if Web Push is on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushConfigView {
    pub providers: Vec<String>,
    pub vapid_public_key: Option<String>,
}

/// The calling device's push registration, if it has one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushStatus {
    pub registration: Option<PushRegistration>,
}

/// A user's notification preferences.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyPrefs {
    /// Show the sender and the text (`true`) or only "New message" (`false`); unset: the
    /// server's default.
    #[serde(default)]
    pub preview: Option<bool>,
    /// Do not disturb: no notification in these hours of the user's day, mentions
    /// included (the messages wait in the inbox as always).
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
}

/// Daily quiet hours from `start_min` to `end_min` (minutes after midnight, local time;
/// across midnight when start > end), local time being UTC plus `utc_offset_min`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    pub start_min: u16,
    pub end_min: u16,
    pub utc_offset_min: i16,
}

/// One user's settings of one conversation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationSettings {
    /// No notification but for mentions, forever or until `muted_until_ms`.
    #[serde(default)]
    pub muted: bool,
    #[serde(default)]
    pub muted_until_ms: Option<u64>,
    /// Kept at the top of the user's conversation list.
    #[serde(default)]
    pub pinned: bool,
}

impl ConversationSettings {
    /// Whether the conversation is muted at `now_ms`.
    pub fn muted_at(&self, now_ms: u64) -> bool {
        self.muted && self.muted_until_ms.is_none_or(|until| now_ms < until)
    }
}

/// Told by a device on its long connection: whether the app is in the background (it then
/// gets notifications as if it were not connected) or in the foreground again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppState {
    pub background: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Profile {
    pub user_id: UserId,
    pub username: String,
    pub display_name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    pub display_name: String,
}

// === friends ===

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FriendRequestBody {
    pub to: UserId,
    #[serde(default)]
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FriendRequestView {
    pub from: UserId,
    pub to: UserId,
    pub note: String,
    pub created_at_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FriendRequests {
    pub incoming: Vec<FriendRequestView>,
    pub outgoing: Vec<FriendRequestView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Friend {
    pub user_id: UserId,
    pub since_ms: u64,
}

// === messages ===

/// The body of a message as its sender wrote it, or a recall of an earlier one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MessageBody {
    /// Ordinary content: any JSON object the clients agree on, e.g. `{"text":"hi"}`.
    Content { content: Value },
    /// A tombstone: the message at `target` (conv_seq) was recalled by its sender.
    Recall { target: u64 },
    /// What a recalled message reads as from then on, in every history, sync and
    /// conversation list: its content is gone; who recalled it and when remain.
    Recalled { by: UserId, at_ms: u64 },
    /// What a message deleted by the app's server (moderation, admin API) reads as from
    /// then on, everywhere: its content is gone; when remains.
    Deleted { at_ms: u64 },
    /// A change to a group, at its place in the group's timeline.
    System { event: GroupEvent },
}

/// Membership and settings changes of a group. They are messages of the group's timeline,
/// so every device renders the same history and a change takes effect exactly there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum GroupEvent {
    Created {
        by: UserId,
        name: String,
        members: Vec<UserId>,
    },
    Joined {
        users: Vec<UserId>,
        by: UserId,
    },
    Invited {
        user: UserId,
        by: UserId,
    },
    Removed {
        user: UserId,
        by: UserId,
    },
    Left {
        user: UserId,
    },
    Updated {
        by: UserId,
        name: Option<String>,
        avatar: Option<String>,
        notice: Option<String>,
    },
    OwnerChanged {
        from: UserId,
        to: UserId,
    },
    AdminSet {
        user: UserId,
        admin: bool,
        by: UserId,
    },
    MemberMuted {
        user: UserId,
        muted: bool,
        by: UserId,
    },
    AllMuted {
        muted: bool,
        by: UserId,
    },
    Dismissed {
        by: UserId,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub msg_id: MsgId,
    pub conv: ConvId,
    pub conv_seq: u64,
    pub sender: UserId,
    pub sender_device: Option<DeviceId>,
    pub client_msg_id: String,
    pub sent_at_ms: u64,
    /// Members this message mentions (`@user`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    /// `@all`, allowed to group admins.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mention_all: bool,
    #[serde(flatten)]
    pub body: MessageBody,
}

impl Message {
    /// Replaces the message's content with `body` (a `Recalled` or `Deleted` one): its
    /// content, and whom it mentioned, gone.
    pub fn redact(&mut self, body: MessageBody) {
        self.body = body;
        self.mentions.clear();
        self.mention_all = false;
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The recipient of a 1:1 message; or give `conv`.
    #[serde(default)]
    pub to: Option<UserId>,
    #[serde(default)]
    pub conv: Option<ConvId>,
    /// Chosen by the client, unique per sender (1-64 bytes); a retry with the same value
    /// returns the original result and creates nothing.
    pub client_msg_id: String,
    /// A JSON object, at most `chat.max_content_bytes` when serialised.
    pub content: Value,
    /// Group members to mention (at most 100).
    #[serde(default)]
    pub mentions: Vec<UserId>,
    /// Mention everyone (group admins only).
    #[serde(default)]
    pub mention_all: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SendResponse {
    pub msg_id: MsgId,
    pub conv: ConvId,
    pub conv_seq: u64,
    /// The sender's inbox seq of this message.
    pub inbox_seq: u64,
    pub sent_at_ms: u64,
    /// True when this answers a retry of an already committed send.
    pub duplicate: bool,
    /// On a long connection: the sender's inbox entry `inbox_seq`, in place of the signal
    /// that would announce it to this connection (the connection gets no such signal). A
    /// client applies it as it would that signal. Absent over HTTP, on a retry, and when
    /// the message is too large to ride along (the connection is then signalled as usual).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<Box<InboxEntry>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecallRequest {
    pub conv: ConvId,
    pub conv_seq: u64,
    /// Idempotency key of the recall itself.
    pub client_msg_id: String,
}

// === inbox and sync ===

/// Something that happened to a user, at a position of their inbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Message {
        message: Message,
    },
    FriendRequest {
        from: UserId,
        to: UserId,
        note: String,
    },
    FriendAccepted {
        from: UserId,
        to: UserId,
    },
    FriendDeclined {
        from: UserId,
        to: UserId,
    },
    FriendRemoved {
        by: UserId,
        peer: UserId,
    },
    Blocked {
        by: UserId,
        peer: UserId,
    },
    Unblocked {
        by: UserId,
        peer: UserId,
    },
    /// `reader` has read `conv` up to `seq` (sent to the reader's other devices and the peer).
    Read {
        conv: ConvId,
        reader: UserId,
        seq: u64,
    },
    /// `by` invites the owner of this inbox to a group; accept by joining it.
    GroupInvite {
        conv: ConvId,
        by: UserId,
        name: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InboxEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub event: Event,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// Return entries with seq greater than this (the client's cursor).
    #[serde(default)]
    pub after: u64,
    #[serde(default)]
    pub limit: Option<usize>,
    /// Also list the heads of the caller's large (read fan-out) groups, whose messages
    /// are not in the inbox and must be pulled per group. Ask on (re)connect.
    #[serde(default)]
    pub groups: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SyncResponse {
    pub entries: Vec<InboxEntry>,
    /// The newest seq of the inbox.
    pub head: u64,
    pub has_more: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupHead>,
}

/// The newest conv_seq of a read fan-out group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupHead {
    pub conv: ConvId,
    pub head: u64,
}

// === conversations ===

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Conversation {
    pub conv: ConvId,
    /// For 1:1 conversations, the other member.
    pub peer: Option<UserId>,
    pub last_seq: u64,
    pub read_seq: u64,
    pub unread: u64,
    /// Unread messages that mention the caller (or everyone).
    #[serde(default)]
    pub unread_mentions: u64,
    /// For groups, the group's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub last_message: Option<Message>,
    pub last_activity_ms: u64,
    /// The caller pinned it: listed before the others (`ConversationSettings`).
    #[serde(default)]
    pub pinned: bool,
    /// The caller muted it (now): no notifications but for mentions.
    #[serde(default)]
    pub muted: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<Conversation>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryRequest {
    pub conv: ConvId,
    /// Page backwards: messages with conv_seq < before (newest first is `before` absent
    /// and `after` absent).
    #[serde(default)]
    pub before: Option<u64>,
    /// Page forwards: messages with conv_seq > after.
    #[serde(default)]
    pub after: Option<u64>,
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryResponse {
    /// Always in ascending conv_seq order.
    pub messages: Vec<Message>,
    pub has_more: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    pub conv: ConvId,
    pub seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadResponse {
    pub conv: ConvId,
    pub read_seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadStateRequest {
    pub conv: ConvId,
    pub seq: u64,
    /// Page the lists: members with ids greater than this.
    #[serde(default)]
    pub after: Option<UserId>,
    /// Most ids in each list (default 100, at most 1,000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Who has read the message at `seq`: members (other than its sender, and who were members
/// when it was sent) whose read cursor is at or past it. Counts are over all of them; the
/// lists are one page, in user id order.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadState {
    pub conv: ConvId,
    pub seq: u64,
    pub read_count: u64,
    pub unread_count: u64,
    pub read_by: Vec<UserId>,
    pub unread_by: Vec<UserId>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<UserId>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TypingRequest {
    pub conv: ConvId,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceRequest {
    pub users: Vec<UserId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Presence {
    pub user: UserId,
    pub online: bool,
    /// When the user was last seen connected (now, if online); 0 if never.
    pub last_seen_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PresenceList {
    pub presence: Vec<Presence>,
}

// === the long connection ===

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthRequest {
    pub token: String,
    #[serde(default)]
    pub protocol: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuthOk {
    pub conn_id: u64,
    pub user_id: UserId,
    pub device: DeviceId,
    /// Seconds of silence after which the server closes the connection.
    pub heartbeat_timeout_secs: u32,
}

/// Server → client, unsolicited (command `SIGNAL`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Signal {
    /// The inbox has reached `seq`; `entry` is that entry when it is small enough to ride
    /// along. A client whose cursor is `seq - 1` applies it; any other pulls `after=cursor`.
    Inbox {
        seq: u64,
        entry: Option<Box<InboxEntry>>,
    },
    Typing {
        conv: ConvId,
        user: UserId,
    },
    Presence {
        user: UserId,
        online: bool,
        last_seen_ms: u64,
    },
    /// A read fan-out group has reached `seq`. Coalesced: at most one per group per member
    /// in a short window. `messages` are the newest messages up to `seq`, contiguous (up to
    /// 16, when small): a client whose cursor falls inside or right before them applies them;
    /// any other pulls the group's history after its cursor.
    Group {
        conv: ConvId,
        seq: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        messages: Vec<Message>,
    },
}

// === groups ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    pub name: String,
    /// Initial members besides the creator (at most 1,000).
    #[serde(default)]
    pub members: Vec<UserId>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupInfo {
    pub group_id: GroupId,
    pub conv: ConvId,
    pub name: String,
    pub avatar: String,
    pub notice: String,
    pub owner: UserId,
    pub member_count: u64,
    pub muted_all: bool,
    /// `write` (fan-out to inboxes) or `read` (members pull the group timeline).
    pub fanout: String,
    pub dismissed: bool,
    pub created_at_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupMember {
    pub user: UserId,
    pub role: Role,
    pub muted: bool,
    /// The member sees the group's timeline after this conv_seq.
    pub joined_seq: u64,
    pub read_seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupMembers {
    pub members: Vec<GroupMember>,
    pub next_after: Option<UserId>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsersRequest {
    /// At most 1,000 at a time.
    pub users: Vec<UserId>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroupRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub avatar: Option<String>,
    #[serde(default)]
    pub notice: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberFlagRequest {
    pub user: UserId,
    pub on: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagRequest {
    pub on: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    pub to: UserId,
}

// === route ===

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GatewayEndpoint {
    /// `ws` or `tcp`.
    pub transport: String,
    /// `ws://host:port/ws` or `host:port`.
    pub address: String,
    pub region: String,
    pub zone: String,
    pub connections: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RouteResponse {
    /// Best first.
    pub gateways: Vec<GatewayEndpoint>,
}
