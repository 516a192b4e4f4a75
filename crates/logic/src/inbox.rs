//! A device's pull of its inbox: the entries after its cursor, and, when asked, the heads
//! of its large (read fan-out) groups, whose messages are not in the inbox.

use crate::limits::Limited;
use crate::{Caller, Logic, Result};
use xinge_core::ConvId;
use xinge_proto::api::*;

impl Logic {
    pub async fn sync(&self, caller: &Caller, req: SyncRequest) -> Result<SyncResponse> {
        self.limit(caller.user, Limited::Pull).await?;
        metrics::counter!("xinge_pulls_total", "kind" => "inbox").increment(1);
        let limit = req
            .limit
            .unwrap_or(self.cfg.chat.max_page)
            .clamp(1, self.cfg.chat.max_page);
        let (entries, head) = self.store.inbox(caller.user, req.after, limit).await?;
        let last = entries.last().map_or(req.after, |e| e.seq);
        let mut groups = Vec::new();
        if req.groups {
            let members = self
                .store
                .memberships(caller.user, self.cfg.chat.max_conversations)
                .await?;
            for m in members {
                let ConvId::Group(g) = m.conv else { continue };
                let Some(rec) = self.store.group(g).await? else {
                    continue;
                };
                if rec.member_count > self.cfg.chat.fanout_threshold {
                    let head = self.store.conv_head(m.conv).await?;
                    groups.push(GroupHead { conv: m.conv, head });
                }
            }
        }
        Ok(SyncResponse {
            has_more: last < head,
            entries,
            head,
            groups,
        })
    }
}
