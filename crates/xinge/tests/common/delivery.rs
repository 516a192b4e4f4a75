//! The delivery checker: every device has every acknowledged message of its conversations
//! exactly once, in order, and the store has each one where it was acknowledged.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xinge_client::api::{Event, SendRequest};
use xinge_client::{Device, Http};
use xinge_core::{ConvId, MsgId, UserId};

/// Every acknowledged message: (conversation, msg_id, conv_seq).
pub type Acked = Arc<Mutex<Vec<(ConvId, MsgId, u64)>>>;

/// Sends `n` messages from `dev` (client_msg_ids `tag0`, `tag1`, …) 20 ms apart, each
/// retried by the SDK until acknowledged, and records every acknowledgement.
pub async fn sender(dev: Arc<Device>, to: SendRequest, tag: &str, n: usize, acked: Acked) {
    for i in 0..n {
        let req = SendRequest {
            client_msg_id: format!("{tag}{i}"),
            content: serde_json::json!({"i": i}),
            ..to.clone()
        };
        let r = dev
            .send(&req)
            .await
            .unwrap_or_else(|e| panic!("{tag}{i}: {e}"));
        acked.lock().unwrap().push((r.conv, r.msg_id, r.conv_seq));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Until at least `k` sends have been acknowledged: a fault injected after it lands while
/// the traffic is under way, however fast the machine. Panics after 60 s.
pub async fn until_acked(acked: &Acked, k: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < k {
        assert!(
            std::time::Instant::now() < deadline,
            "{k} sends were not acknowledged within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether `user` is in `conv`, for tests where every user is in every group.
pub fn conv_has(conv: &ConvId, user: UserId) -> bool {
    match conv {
        ConvId::Direct(x, y) => *x == user || *y == user,
        ConvId::Group(_) => true,
    }
}

/// What one device has been handed: its inbox without gap or repeat, each message once,
/// in conv_seq order per conversation. Assumes the device started at cursor 0.
#[derive(Default)]
pub struct Seen {
    pub msgs: HashSet<MsgId>,
    last: HashMap<ConvId, u64>,
    inbox: u64,
}

impl Seen {
    /// Takes the device's next inbox entry (waiting up to 30 s) and checks it.
    pub async fn next(&mut self, dev: &Device) {
        let e = dev
            .next_event(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("nothing more arrived after {}", self.msgs.len()));
        self.check(e);
    }

    fn check(&mut self, e: xinge_client::api::InboxEntry) {
        assert_eq!(e.seq, self.inbox + 1, "inbox without gaps or repeats");
        self.inbox = e.seq;
        if let Event::Message { message } = e.event {
            let last = self.last.entry(message.conv).or_default();
            assert!(message.conv_seq > *last, "in conv_seq order");
            *last = message.conv_seq;
            assert!(self.msgs.insert(message.msg_id), "exactly once");
        }
    }

    /// Takes entries until the device has had every message of `want`, then whatever else
    /// it already holds (so a late duplicate is caught too).
    pub async fn until_has(&mut self, dev: &Device, want: &HashSet<MsgId>, who: &str) {
        while !want.is_subset(&self.msgs) {
            let e = dev.next_event(Duration::from_secs(30)).await;
            let e = e.unwrap_or_else(|| {
                let missing = want.difference(&self.msgs).count();
                panic!(
                    "{who}: {missing} of {} acknowledged never arrived",
                    want.len()
                )
            });
            self.check(e);
        }
        while let Some(e) = dev.next_event(Duration::ZERO).await {
            self.check(e);
        }
    }
}

/// The store has every acknowledged message at the conv_seq it was acknowledged with, and
/// each conversation's timeline runs 1, 2, 3, … without gap or repeat. `reader` gives a
/// client that may read the whole conversation.
pub async fn assert_stored<'a>(
    acked: &[(ConvId, MsgId, u64)],
    reader: impl Fn(&ConvId) -> &'a Http,
) {
    let mut by_conv: HashMap<ConvId, HashMap<u64, MsgId>> = HashMap::new();
    for (conv, msg, seq) in acked {
        by_conv.entry(*conv).or_default().insert(*seq, *msg);
    }
    for (conv, want) in &by_conv {
        let http = reader(conv);
        let mut after = 0;
        let mut found = 0;
        loop {
            let page = http.history(*conv, None, Some(after), 500).await.unwrap();
            for m in &page.messages {
                assert_eq!(m.conv_seq, after + 1, "{conv}: timeline without gaps");
                after = m.conv_seq;
                if let Some(id) = want.get(&m.conv_seq) {
                    assert_eq!(*id, m.msg_id, "{conv}: acknowledged at {}", m.conv_seq);
                    found += 1;
                }
            }
            if !page.has_more {
                break;
            }
        }
        assert_eq!(
            found,
            want.len(),
            "{conv}: every acknowledged message stored"
        );
    }
}
