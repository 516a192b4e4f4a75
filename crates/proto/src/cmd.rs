//! Command numbers. Numbers below 100 belong to the gateway itself; from 100 up they are
//! business commands that the gateway forwards, by number, without reading their bodies.

/// First frame of a connection: `{token}` → `AuthOk`.
pub const AUTH: u16 = 1;
/// Heartbeat; the response is an empty frame. Any frame from the client also counts.
pub const PING: u16 = 2;
/// Server → client before it closes the connection: `{code, message}`.
pub const CLOSE: u16 = 3;
/// Server → client, unsolicited: a [`crate::api::Signal`].
pub const SIGNAL: u16 = 4;
/// Push → gateway only, never on a client's connection: end some of a user's sessions
/// (the push layer's `SessionEnd`). A client that sends it gets `unknown_command`.
pub const END_SESSIONS: u16 = 5;

/// Lowest business command number.
pub const FIRST_BUSINESS: u16 = 100;
pub const SEND: u16 = 100;
pub const SYNC: u16 = 101;
pub const READ: u16 = 102;
pub const RECALL: u16 = 103;
pub const TYPING: u16 = 104;
pub const CONVERSATIONS: u16 = 105;
pub const HISTORY: u16 = 106;
pub const READ_STATE: u16 = 107;
pub const PRESENCE: u16 = 108;
/// `AppState`: the app went to the background or came back (offline push).
pub const APP_STATE: u16 = 109;

/// A business command's name, for metrics labels ("other" for a number this build does not
/// know).
pub fn name(cmd: u16) -> &'static str {
    match cmd {
        SEND => "send",
        SYNC => "sync",
        READ => "read",
        RECALL => "recall",
        TYPING => "typing",
        CONVERSATIONS => "conversations",
        HISTORY => "history",
        READ_STATE => "read_state",
        PRESENCE => "presence",
        APP_STATE => "app_state",
        _ => "other",
    }
}

/// Frame flag: this frame answers the request with the same `req_id`.
pub const FLAG_RESPONSE: u8 = 0x01;
/// Frame flag (with `FLAG_RESPONSE`): the body is an error `{code, message}`.
pub const FLAG_ERROR: u8 = 0x02;
