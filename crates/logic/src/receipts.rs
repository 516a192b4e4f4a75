//! Read state: a user's read cursor per conversation, and who has read a message —
//! computed from the members' cursors, with no row per message and reader.

use crate::access::{Access, MEMBER_PAGE};
use crate::{Caller, Logic, Result, error::bad};
use xinge_core::{ErrorCode, UserId};
use xinge_proto::api::*;
use xinge_store::{Commit, Op};

impl Logic {
    pub async fn mark_read(&self, caller: &Caller, req: ReadRequest) -> Result<ReadResponse> {
        let me = caller.user;
        let access = self.access(caller, req.conv).await?;
        let head = self.store.conv_head(req.conv).await?;
        let seq = req.seq.min(head);
        let cur = self.store.read_cursor(me, req.conv).await?;
        if seq <= cur {
            return Ok(ReadResponse {
                conv: req.conv,
                read_seq: cur,
            });
        }
        let ev = Event::Read {
            conv: req.conv,
            reader: me,
            seq,
        };
        // 1:1: the reader's other devices and the peer hear of it. Groups: the reader's
        // other devices; senders ask `read_state` (a read in a 10,000-member group must not
        // fan out).
        let events = match access {
            Access::Direct(peer) => vec![(me, ev.clone()), (peer, ev)],
            Access::Group(..) => vec![(me, ev)],
        };
        let c = Commit {
            events,
            ops: vec![Op::AdvanceRead {
                user: me,
                conv: req.conv,
                seq,
            }],
            ..Commit::default()
        };
        self.commit(c).await?;
        Ok(ReadResponse {
            conv: req.conv,
            read_seq: seq,
        })
    }

    /// Who has read the message at `seq`: members (other than its sender, and who were
    /// members when it was sent) whose read cursor is at or past it. No per-message rows:
    /// it is computed from cursors, one scan of the members.
    pub async fn read_state(&self, caller: &Caller, req: ReadStateRequest) -> Result<ReadState> {
        let access = self.access(caller, req.conv).await?;
        let msg = self
            .store
            .messages(req.conv, req.seq, req.seq, 1, false)
            .await?
            .pop()
            .filter(|m| self.visible_from(&access) < m.conv_seq)
            .ok_or_else(|| bad(ErrorCode::NotFound, "no such message"))?;
        let limit = req.limit.unwrap_or(100).clamp(1, 1_000);
        let after = req.after.map_or(0, |u| u.0);
        let mut st = ReadState {
            conv: req.conv,
            seq: req.seq,
            read_count: 0,
            unread_count: 0,
            read_by: vec![],
            unread_by: vec![],
            next_after: None,
        };
        let tally = |user: UserId, cursor: u64, st: &mut ReadState| {
            let (count, list) = if cursor >= req.seq {
                (&mut st.read_count, &mut st.read_by)
            } else {
                (&mut st.unread_count, &mut st.unread_by)
            };
            *count += 1;
            if user.0 > after {
                if list.len() < limit {
                    list.push(user);
                } else if st.next_after.is_none() {
                    st.next_after = Some(*list.last().unwrap_or(&user));
                }
            }
        };
        match access {
            Access::Direct(peer) => {
                for member in [caller.user, peer] {
                    if member != msg.sender {
                        let cursor = self.store.read_cursor(member, req.conv).await?;
                        tally(member, cursor, &mut st);
                    }
                }
            }
            Access::Group(g, _) => {
                let mut from = None;
                loop {
                    let page = self.store.group_members(g.id, from, MEMBER_PAGE).await?;
                    for (user, m) in &page {
                        if *user != msg.sender && m.joined_seq < req.seq {
                            tally(*user, m.read_seq, &mut st);
                        }
                    }
                    match page.last() {
                        Some((u, _)) if page.len() == MEMBER_PAGE => from = Some(*u),
                        _ => break,
                    }
                }
            }
        }
        Ok(st)
    }
}
