//! From commits to signals: every new inbox entry goes to its owner's online devices, the
//! message serialised once and spliced into each recipient's frame; what becomes of a
//! signal when a user gets them faster than the push layer's rate (the coalescing keys).

use crate::{Logic, Result};
use xinge_core::{ConnId, GroupId, UserId};
use xinge_proto::api::{InboxEntry, Signal};
use xinge_proto::{Frame, cmd};
use xinge_push::Coalesce;
use xinge_store::{Commit, Committed};

/// What becomes of a signal when its user gets signals faster than the push layer's rate:
/// a newer inbox signal supersedes an older one (the client pulls what it skipped), and so
/// does a newer signal of the same read fan-out group or of the same friend's presence.
pub(crate) fn inbox_key(seq: u64) -> Coalesce {
    Coalesce::newest(0, 0, seq)
}

pub(crate) fn group_key(group: GroupId, seq: u64) -> Coalesce {
    Coalesce::newest(1, group.0, seq)
}

pub(crate) fn presence_key(user: UserId, at_ms: u64) -> Coalesce {
    Coalesce::newest(2, user.0, at_ms)
}

/// The JSON of `Signal::Inbox` for `entry`, with the entry inline when its JSON is at most
/// `inline_max` bytes. The entry is serialised once and spliced in, not serialised twice.
pub fn inbox_signal_body(entry: &InboxEntry, inline_max: usize) -> Vec<u8> {
    let json = serde_json::to_vec(entry).unwrap_or_default();
    let mut body = Vec::with_capacity(json.len() + 48);
    body.extend_from_slice(b"{\"type\":\"inbox\",\"seq\":");
    body.extend_from_slice(entry.seq.to_string().as_bytes());
    body.extend_from_slice(b",\"entry\":");
    if !json.is_empty() && json.len() <= inline_max {
        body.extend_from_slice(&json);
    } else {
        body.extend_from_slice(b"null");
    }
    body.push(b'}');
    body
}

/// Whether the inbox entry of a message whose JSON is `len` bytes rides inline in its
/// signal (the entry adds at most 64 bytes around the message).
fn rides_inline(len: usize, inline_max: usize) -> bool {
    len > 0 && len + 64 <= inline_max
}

/// The JSON of `Signal::Inbox` for the entry `seq` that holds `message` (already
/// serialised), inline when the entry is at most `inline_max` bytes.
pub fn message_signal_body(seq: u64, at_ms: u64, message: &[u8], inline_max: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(message.len() + 96);
    body.extend_from_slice(b"{\"type\":\"inbox\",\"seq\":");
    body.extend_from_slice(seq.to_string().as_bytes());
    body.extend_from_slice(b",\"entry\":");
    if rides_inline(message.len(), inline_max) {
        body.extend_from_slice(b"{\"seq\":");
        body.extend_from_slice(seq.to_string().as_bytes());
        body.extend_from_slice(b",\"at_ms\":");
        body.extend_from_slice(at_ms.to_string().as_bytes());
        body.extend_from_slice(b",\"event\":{\"type\":\"message\",\"message\":");
        body.extend_from_slice(message);
        body.extend_from_slice(b"}}");
    } else {
        body.extend_from_slice(b"null");
    }
    body.push(b'}');
    body
}

impl Logic {
    /// Commits and then signals every new inbox entry to its owner's online devices —
    /// the calling connection included: its own entry, inline, keeps its cursor contiguous,
    /// where leaving it out would make the next signal look like a gap and cost a pull.
    ///
    /// Not an `async fn`: the commit moves straight into the store's call (boxed already),
    /// so the caller's future does not carry it as well. A send's future, boxed per call by
    /// the gateway's dispatch, then stays small enough for the allocator's per-thread cache.
    pub(crate) fn commit(
        &self,
        c: Commit,
    ) -> impl Future<Output = Result<Committed>> + Send + use<'_> {
        let call = self.commit_from(c, None);
        async move { call.await.map(|(done, _)| done) }
    }

    /// [`Logic::commit`] of a message sent by `origin` (its user and connection): that
    /// connection is not signalled its own inbox entry when the entry can ride in the
    /// answer instead; the `bool` says whether it must (see `SendResponse::entry`).
    pub(crate) fn commit_from(
        &self,
        c: Commit,
        origin: Option<(UserId, ConnId)>,
    ) -> impl Future<Output = Result<(Committed, bool)>> + Send + use<'_> {
        let started = std::time::Instant::now();
        let call = self.store.commit(self.with_outbox(c));
        async move { self.signal_committed(started, call.await?, origin) }
    }

    fn signal_committed(
        &self,
        started: std::time::Instant,
        done: Committed,
        origin: Option<(UserId, ConnId)>,
    ) -> Result<(Committed, bool)> {
        metrics::histogram!("xinge_store_commit_seconds").record(started.elapsed().as_secs_f64());
        // The message is serialised once: spliced into every recipient's signal, and the
        // size that decides whether it rides inline in a large group's signal.
        let message = done
            .message
            .as_ref()
            .map(|m| serde_json::to_vec(m).unwrap_or_default());
        let mut answered = false;
        if let Some(json) = &message {
            let inline = rides_inline(json.len(), self.cfg.chat.inline_max_bytes);
            for &(user, seq) in &done.recipients {
                let body =
                    message_signal_body(seq, done.at_ms, json, self.cfg.chat.inline_max_bytes);
                let frame = Frame::request(cmd::SIGNAL, 0, body);
                match origin {
                    // One write fewer per message: the sending connection gets its entry
                    // in the answer it is waiting for anyway.
                    Some((sender, conn)) if sender == user && inline => {
                        self.push.signal_except(user, &frame, inbox_key(seq), conn);
                        answered = true;
                    }
                    _ => {
                        self.push.signal(&[user], &frame, inbox_key(seq));
                    }
                }
            }
        }
        for (user, entry) in &done.entries {
            self.signal_inbox(*user, entry);
        }
        if let Some((group, seq)) = done.group_advanced {
            // Small messages ride in the signal, so online members need not pull.
            let small = message
                .as_ref()
                .is_some_and(|j| j.len() <= self.cfg.chat.inline_max_bytes);
            self.group_signals
                .mark(group, seq, done.message.clone().filter(|_| small));
        }
        Ok((done, answered))
    }

    fn signal_inbox(&self, user: UserId, entry: &InboxEntry) {
        let body = inbox_signal_body(entry, self.cfg.chat.inline_max_bytes);
        self.push.signal(
            &[user],
            &Frame::request(cmd::SIGNAL, 0, body),
            inbox_key(entry.seq),
        );
    }

    /// An ephemeral signal (typing): dropped, not kept, when `user` is over the rate.
    pub(crate) fn signal_ephemeral(&self, user: UserId, signal: &Signal) {
        let body = serde_json::to_vec(signal).unwrap_or_default();
        self.push.signal(
            &[user],
            &Frame::request(cmd::SIGNAL, 0, body),
            Coalesce::Drop,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xinge_proto::api::Event;

    #[test]
    fn spliced_inbox_signal_is_the_signal_type() {
        let entry = InboxEntry {
            seq: 7,
            at_ms: 1,
            event: Event::FriendRemoved {
                by: UserId(1),
                peer: UserId(2),
            },
        };
        let s: Signal = serde_json::from_slice(&inbox_signal_body(&entry, 1024)).unwrap();
        assert_eq!(
            s,
            Signal::Inbox {
                seq: 7,
                entry: Some(Box::new(entry.clone()))
            }
        );
        let s: Signal = serde_json::from_slice(&inbox_signal_body(&entry, 10)).unwrap();
        assert_eq!(
            s,
            Signal::Inbox {
                seq: 7,
                entry: None
            }
        );
        // The message form, spliced from the message's own JSON, is the same signal.
        let message = xinge_proto::api::Message {
            msg_id: xinge_core::MsgId(9),
            conv: xinge_core::ConvId::Group(xinge_core::GroupId(4)),
            conv_seq: 3,
            sender: UserId(1),
            sender_device: None,
            client_msg_id: "c".into(),
            sent_at_ms: 5,
            mentions: vec![UserId(2)],
            mention_all: false,
            body: xinge_proto::api::MessageBody::Content {
                content: serde_json::json!({"t": "x"}),
            },
        };
        let json = serde_json::to_vec(&message).unwrap();
        let entry = InboxEntry {
            seq: 11,
            at_ms: 12,
            event: Event::Message { message },
        };
        let s: Signal = serde_json::from_slice(&message_signal_body(11, 12, &json, 4096)).unwrap();
        assert_eq!(
            s,
            Signal::Inbox {
                seq: 11,
                entry: Some(Box::new(entry))
            }
        );
        let s: Signal = serde_json::from_slice(&message_signal_body(11, 12, &json, 10)).unwrap();
        assert_eq!(
            s,
            Signal::Inbox {
                seq: 11,
                entry: None
            }
        );
    }
}
