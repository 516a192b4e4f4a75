//! Offline push: notifications to the devices of a user that are not connected, or whose
//! app is in the background.
//!
//! A commit that may need telling queues a notice in its own store write (so a crash
//! loses none): a 1:1 message whose peer has no device in the foreground, every group
//! message (one notice; the worker finds the members), a friend request.
//! [`Logic::run_notify`] works the queue. For each notice it finds whom to tell (the
//! peer; a group's members, or in a group larger than `max_group_members` only those
//! mentioned), and for each the devices that have a push registration, are still logged
//! in and are not in the foreground, unless the conversation is muted (a mention breaks
//! through) or it is the user's quiet hours. What one user is told about one conversation
//! within `collapse_ms` of the first notice is told once, when the window ends, with the
//! count; the notification's collapse id is the conversation, so one told again after a
//! crash replaces the first on the phone. A notice leaves the queue once everything it
//! caused was sent (or given up on): a crash sends again what was not yet removed. A full
//! queue drops its oldest notices, counted, so that a provider's outage never holds sends.

use crate::{Caller, Logic, Result, error::bad};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use xinge_core::config::NotifyConfig;
use xinge_core::{ConvId, DeviceId, ErrorCode, UserId};
use xinge_notify::{Notification, Outcome, Providers};
use xinge_proto::api::{
    Conversation, ConversationSettings, Message, MessageBody, NotifyPrefs, PushConfigView,
    PushRegistration, PushStatus,
};
use xinge_store::{Notice, NoticeAbout, NoticeRecord};

/// The offline-push side of the IM layer: the providers and whether the queue has room.
pub(crate) struct Notify {
    cfg: NotifyConfig,
    providers: Arc<Providers>,
    /// Set by the worker while the queue holds `max_queue` notices or more.
    full: AtomicBool,
}

impl Notify {
    /// `None` without a provider; an error if a configured provider's key is unusable.
    pub(crate) fn new(
        cfg: &xinge_core::config::Config,
    ) -> std::result::Result<Option<Self>, String> {
        if !cfg.notify.enabled() {
            return Ok(None);
        }
        let providers = Arc::new(Providers::new(&cfg.notify, &cfg.webhooks.secrets)?);
        Ok(Some(Self {
            cfg: cfg.notify.clone(),
            providers,
            full: AtomicBool::new(false),
        }))
    }

    fn wants(&self, kind: &str) -> bool {
        self.cfg.kinds.iter().any(|k| k == kind)
    }
}

/// The settings key of a device's push registration.
pub(crate) fn push_key(device: &DeviceId) -> String {
    format!("push/{device}")
}

const PUSH_PREFIX: &str = "push/";

/// The settings key of a user's settings of a conversation.
fn conv_key(conv: ConvId) -> String {
    format!("{CONV_PREFIX}{conv}")
}

const CONV_PREFIX: &str = "conv/";

/// The settings key of a user's notification preferences.
const PREFS: &str = "notify";

/// Push registrations a user may have: one per device, so the device limit.
const MAX_REGISTRATIONS: usize = 64;

/// Collapse windows held at once; past it a new one is told at once, uncollapsed.
const MAX_PENDING: usize = 100_000;

/// Notifications' texts kept while one round of windows is told.
const MAX_SAID: usize = 10_000;

/// Windows being told at once (each a task waiting on its provider).
const MAX_IN_FLIGHT: usize = 10_000;

/// How long a gap in the queue's places is waited on before it is read past.
const GAP_GRACE: Duration = Duration::from_secs(2);

/// How often an empty queue is looked at again.
const IDLE: Duration = Duration::from_millis(50);

/// How often a process that does not work the queue asks to.
const FOLLOW: Duration = Duration::from_secs(1);

/// Conversations of each kind (1:1, group) a badge counts at most: a user with more
/// conversations holding unread messages gets a badge over these (a floor of the total).
const MAX_BADGE_CONVERSATIONS: usize = 1_000;

/// Longest text put in a notification (the providers' payloads are small: APNs 4 KiB).
const MAX_TEXT: usize = 256;

impl Logic {
    /// The notices a message by `me` to `conv` queues: for a 1:1 message, one for the peer
    /// unless a device of theirs is known to be in the foreground now; for a group
    /// message one, whose members the worker finds.
    pub(crate) fn message_notices(&self, me: UserId, conv: ConvId) -> Vec<Notice> {
        let Some(n) = &self.notify else {
            return Vec::new();
        };
        match conv {
            ConvId::Direct(a, b) => {
                let peer = if a == me { b } else { a };
                let needed = n.wants("message") && self.push.foreground(peer) != Some(true);
                self.admit_notices(needed.then_some(Notice {
                    user: peer,
                    about: NoticeAbout::message(),
                }))
            }
            ConvId::Group(_) if n.wants("message") || n.wants("mention") => {
                self.admit_notices(Some(Notice {
                    user: me,
                    about: NoticeAbout::message(),
                }))
            }
            ConvId::Group(_) => Vec::new(),
        }
    }

    /// The notice a friend request from `from` to `to` queues.
    pub(crate) fn friend_request_notices(&self, from: UserId, to: UserId) -> Vec<Notice> {
        let wanted = self
            .notify
            .as_ref()
            .is_some_and(|n| n.wants("friend_request"));
        self.admit_notices(wanted.then_some(Notice {
            user: to,
            about: NoticeAbout::FriendRequest { from },
        }))
    }

    /// `notice` if the queue has room (else dropped and counted).
    fn admit_notices(&self, notice: Option<Notice>) -> Vec<Notice> {
        let Some(n) = &self.notify else {
            return Vec::new();
        };
        match notice {
            Some(_) if n.full.load(Ordering::Relaxed) => {
                metrics::counter!("xinge_notify_dropped_total", "why" => "full").increment(1);
                Vec::new()
            }
            Some(notice) => vec![notice],
            None => Vec::new(),
        }
    }

    // === the user's side: registrations and settings ===

    /// Registers (or replaces) the calling device's way to be reached while away.
    pub async fn set_push(&self, caller: &Caller, reg: PushRegistration) -> Result<()> {
        check_registration(&reg)?;
        if let PushRegistration::Webpush { endpoint, .. } = &reg {
            let allowed = self
                .cfg
                .notify
                .webpush
                .as_ref()
                .is_some_and(|w| w.allow_private_endpoints);
            if !allowed && names_a_private_host(endpoint) {
                return Err(bad(
                    ErrorCode::InvalidArgument,
                    "the push endpoint names a local or private address",
                ));
            }
        }
        if let Some(n) = &self.notify
            && !n.providers.serves(&reg)
        {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "this server has no such push provider configured",
            ));
        }
        let value =
            serde_json::to_string(&reg).map_err(|_| bad(ErrorCode::Internal, "internal error"))?;
        self.store
            .put_setting(caller.user, &push_key(&caller.device), Some(&value))
            .await?;
        Ok(())
    }

    /// Removes the calling device's registration (none is fine).
    pub async fn remove_push(&self, caller: &Caller) -> Result<()> {
        self.store
            .put_setting(caller.user, &push_key(&caller.device), None)
            .await?;
        Ok(())
    }

    /// The providers this server pushes through, and the VAPID key browsers subscribe with.
    pub fn push_config(&self) -> PushConfigView {
        match &self.notify {
            Some(n) => PushConfigView {
                providers: n.providers.names().into_iter().map(str::to_owned).collect(),
                vapid_public_key: n.providers.vapid_public_key().map(str::to_owned),
            },
            None => PushConfigView {
                providers: Vec::new(),
                vapid_public_key: None,
            },
        }
    }

    pub async fn push_status(&self, caller: &Caller) -> Result<PushStatus> {
        let registration = self
            .store
            .setting(caller.user, &push_key(&caller.device))
            .await?
            .and_then(|v| serde_json::from_str(&v).ok());
        Ok(PushStatus { registration })
    }

    pub async fn notify_prefs(&self, caller: &Caller) -> Result<NotifyPrefs> {
        Ok(self.prefs_of(caller.user).await)
    }

    pub async fn set_notify_prefs(
        &self,
        caller: &Caller,
        prefs: NotifyPrefs,
    ) -> Result<NotifyPrefs> {
        if let Some(q) = &prefs.quiet_hours
            && (q.start_min >= 1440
                || q.end_min >= 1440
                || !(-840..=840).contains(&q.utc_offset_min))
        {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "quiet_hours: start_min and end_min are 0-1439, utc_offset_min -840..840",
            ));
        }
        let value = serde_json::to_string(&prefs)
            .map_err(|_| bad(ErrorCode::Internal, "internal error"))?;
        self.store
            .put_setting(caller.user, PREFS, Some(&value))
            .await?;
        Ok(prefs)
    }

    /// The caller's settings of a conversation they are in.
    pub async fn conversation_settings(
        &self,
        caller: &Caller,
        conv: ConvId,
    ) -> Result<ConversationSettings> {
        self.access(caller, conv).await?;
        Ok(self.conv_settings_of(caller.user, conv).await)
    }

    pub async fn set_conversation_settings(
        &self,
        caller: &Caller,
        conv: ConvId,
        settings: ConversationSettings,
    ) -> Result<ConversationSettings> {
        self.access(caller, conv).await?;
        let key = conv_key(conv);
        match settings == ConversationSettings::default() {
            true => self.store.put_setting(caller.user, &key, None).await?,
            false => {
                let value = serde_json::to_string(&settings)
                    .map_err(|_| bad(ErrorCode::Internal, "internal error"))?;
                self.store
                    .put_setting(caller.user, &key, Some(&value))
                    .await?
            }
        }
        Ok(settings)
    }

    /// A user's settings of their conversations, by conversation: one read (at most twice
    /// as many as a conversation list holds).
    async fn conv_settings(&self, user: UserId) -> Result<HashMap<ConvId, ConversationSettings>> {
        let limit = self.cfg.chat.max_conversations.max(1) * 2;
        let set = self.store.settings(user, CONV_PREFIX, limit).await?;
        Ok(set
            .iter()
            .filter_map(|(k, v)| {
                let conv = k.strip_prefix(CONV_PREFIX)?.parse().ok()?;
                Some((conv, serde_json::from_str(v).ok()?))
            })
            .collect())
    }

    /// Marks the conversations of `list` that `user` pinned or muted: one read of their
    /// conversation settings.
    pub(crate) async fn mark_settings(
        &self,
        user: UserId,
        list: &mut [Conversation],
    ) -> Result<()> {
        if list.is_empty() {
            return Ok(());
        }
        let by_conv = self.conv_settings(user).await?;
        if by_conv.is_empty() {
            return Ok(());
        }
        let now_ms = self.cfg.clock.now_ms();
        for c in list {
            if let Some(s) = by_conv.get(&c.conv) {
                c.pinned = s.pinned;
                c.muted = s.muted_at(now_ms);
            }
        }
        Ok(())
    }

    /// The user's badge: their unread messages, over the conversations they have not muted
    /// (as an app's own badge leaves muted chats out). Read from the store's set of
    /// conversations with news and the user's groups, not from every conversation; `None`
    /// when the store cannot tell (the notification goes without one).
    async fn badge(&self, user: UserId, now_ms: u64) -> Option<u32> {
        let unread = match self.store.unread(user, MAX_BADGE_CONVERSATIONS).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(user = user.0, error = %e, "badge not read");
                return None;
            }
        };
        if unread.is_empty() {
            return Some(0);
        }
        let settings = self.conv_settings(user).await.unwrap_or_default();
        let total: u64 = unread
            .iter()
            .filter(|(conv, _)| !settings.get(conv).is_some_and(|s| s.muted_at(now_ms)))
            .map(|&(_, n)| n)
            .sum();
        Some(u32::try_from(total).unwrap_or(u32::MAX))
    }

    async fn prefs_of(&self, user: UserId) -> NotifyPrefs {
        match self.store.setting(user, PREFS).await {
            Ok(Some(v)) => serde_json::from_str(&v).unwrap_or_default(),
            _ => NotifyPrefs::default(),
        }
    }

    async fn conv_settings_of(&self, user: UserId, conv: ConvId) -> ConversationSettings {
        match self.store.setting(user, &conv_key(conv)).await {
            Ok(Some(v)) => serde_json::from_str(&v).unwrap_or_default(),
            _ => ConversationSettings::default(),
        }
    }

    /// The device on connection `caller.origin` says its app is in the background or not.
    pub async fn set_app_state(&self, caller: &Caller, background: bool) -> Result<()> {
        let Some(conn) = caller.origin else {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "the app state is told on a long connection",
            ));
        };
        self.push
            .set_background(caller.user, conn, background)
            .await;
        Ok(())
    }

    // === the worker ===

    /// Works the notify queue until `shutdown`. Does nothing without a provider.
    pub async fn run_notify(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(n) = &self.notify else {
            return;
        };
        let mut w = Worker::default();
        while !*shutdown.borrow() {
            if !self.store.lead_notices().await.unwrap_or(false) {
                // Another process works the queue: what this one held is its to tell.
                w = Worker::default();
                let _ = tokio::time::timeout(FOLLOW, shutdown.changed()).await;
                continue;
            }
            let batch = match self.store.notices(w.cursor, n.cfg.batch).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "the notify queue could not be read");
                    Vec::new()
                }
            };
            let batch = w.in_order(batch);
            let took = batch.len();
            self.trim_queue(n, &mut w).await;
            for notice in batch {
                self.take_notice(n, &mut w, notice).await;
            }
            self.tell_due(n, &mut w).await;
            if !w.done.is_empty() {
                let done = std::mem::take(&mut w.done);
                if let Err(e) = self.store.notices_done(&done).await {
                    // Told again later: at least once.
                    tracing::warn!(error = %e, "told notices could not be removed");
                }
            }
            metrics::gauge!("xinge_notify_pending").set(w.pending.len() as f64);
            if took < n.cfg.batch {
                let wait = w.next_due().map_or(IDLE, |due| {
                    due.saturating_duration_since(Instant::now()).min(IDLE)
                });
                let _ = tokio::time::timeout(wait, shutdown.changed()).await;
            }
        }
    }

    /// Past `max_queue` notices waiting, the oldest go (counted); below it, the send path
    /// queues again.
    async fn trim_queue(&self, n: &Notify, w: &mut Worker) {
        let Ok(depth) = self.store.notices_depth(w.cursor).await else {
            return;
        };
        metrics::gauge!("xinge_notify_queue_depth").set(depth as f64);
        n.full.store(depth >= n.cfg.max_queue, Ordering::Relaxed);
        let excess = depth.saturating_sub(n.cfg.max_queue);
        if excess == 0 {
            return;
        }
        let Ok(old) = self
            .store
            .notices(w.cursor, excess.min(10_000) as usize)
            .await
        else {
            return;
        };
        if let Some(last) = old.last() {
            w.cursor = last.seq;
        }
        let seqs: Vec<u64> = old.iter().map(|r| r.seq).collect();
        metrics::counter!("xinge_notify_dropped_total", "why" => "oldest")
            .increment(seqs.len() as u64);
        tracing::warn!(
            dropped = seqs.len(),
            "the notify queue is full: its oldest notices dropped"
        );
        w.done.extend(seqs);
    }

    /// Turns one notice into collapse windows for those it tells (none: done at once).
    async fn take_notice(&self, n: &Notify, w: &mut Worker, notice: NoticeRecord) {
        let seq = notice.seq;
        let targets = self.targets(n, &notice).await;
        let now = Instant::now();
        let window = Duration::from_millis(n.cfg.collapse_ms);
        let mut held = 0;
        for (user, mention) in targets {
            let key = (user, collapse_id(&notice.about));
            if !w.pending.contains_key(&key) && w.pending.len() >= MAX_PENDING {
                metrics::counter!("xinge_notify_uncollapsed_total").increment(1);
            }
            let p = w.pending.entry(key).or_insert_with(|| Pending {
                due: now + window,
                count: 0,
                seqs: Vec::new(),
                latest: notice.clone(),
                mention: false,
            });
            p.count += 1;
            p.seqs.push(seq);
            p.latest = notice.clone();
            p.mention |= mention;
            held += 1;
        }
        match held {
            0 => w.done.push(seq),
            _ => {
                w.holds.insert(seq, held);
            }
        }
        // Past the bound, windows end early rather than grow the map.
        if w.pending.len() > MAX_PENDING {
            for p in w.pending.values_mut() {
                p.due = now;
            }
        }
    }

    /// Whom a notice tells, and whether it mentions them: the notice's user, or for a
    /// group message its members (but the sender), only those mentioned past
    /// `max_group_members`.
    async fn targets(&self, n: &Notify, notice: &NoticeRecord) -> Vec<(UserId, bool)> {
        let NoticeAbout::Message {
            conv: ConvId::Group(g),
            conv_seq,
        } = notice.about
        else {
            return vec![(notice.user, false)];
        };
        let conv = ConvId::Group(g);
        let Some(m) = self.message_at(conv, conv_seq).await else {
            return Vec::new();
        };
        let mentioned =
            |u: UserId| m.mentions.contains(&u) || (m.mention_all && n.cfg.mention_all_breaks_mute);
        let count = match self.store.group(g).await {
            Ok(Some(r)) => r.member_count,
            _ => return Vec::new(),
        };
        if count > n.cfg.max_group_members {
            return m
                .mentions
                .iter()
                .filter(|u| **u != m.sender)
                .map(|u| (*u, true))
                .collect();
        }
        // The cached list group signals use (a member list read per message was the
        // worker's largest cost).
        let Some(members) = self.signal_targets(g).await else {
            return Vec::new();
        };
        members
            .iter()
            .filter(|u| **u != m.sender)
            .map(|u| (*u, mentioned(*u)))
            .collect()
    }

    async fn message_at(&self, conv: ConvId, conv_seq: u64) -> Option<Message> {
        let m = self
            .store
            .messages(conv, conv_seq, conv_seq, 1, false)
            .await
            .ok()?;
        m.into_iter().next()
    }

    /// Starts telling every window that has ended, each on a task of its own (at most
    /// [`MAX_IN_FLIGHT`] at once: past it this waits for one to finish), so that a slow
    /// provider holds up only its own notifications.
    async fn tell_due(&self, n: &Notify, w: &mut Worker) {
        let now = Instant::now();
        let due: Vec<(UserId, String)> = w
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(k, _)| k.clone())
            .collect();
        // What each notice's notification says, made once for all whom it tells.
        let mut said = HashMap::new();
        for key in due {
            let Some(p) = w.pending.remove(&key) else {
                continue;
            };
            let notes = self.notifications(n, key.0, &key.1, &p, &mut said).await;
            let permit = loop {
                match w.in_flight.clone().try_acquire_owned() {
                    Ok(permit) => break Some(permit),
                    // Full: finish one, then try again.
                    Err(_) => match w.rounds.join_next().await {
                        Some(done) => w.finish(done),
                        None => break w.in_flight.clone().acquire_owned().await.ok(),
                    },
                }
            };
            let (providers, store, user) = (n.providers.clone(), self.store.clone(), key.0);
            w.rounds.spawn(async move {
                let _permit = permit;
                for (device, reg, note) in notes {
                    let outcome = providers.send(user.0, device.as_str(), &reg, &note).await;
                    if let Outcome::Invalid(why) = outcome {
                        tracing::info!(%user, device = device.as_str(), %why, "push registration no longer valid: removed");
                        remove_registration_if(store.as_ref(), user, &device, &reg).await;
                    }
                }
                p.seqs
            });
        }
        while let Some(done) = w.rounds.try_join_next() {
            w.finish(done);
        }
    }

    /// The notifications one window makes: one per device of the user that has a
    /// registration a provider serves, is still logged in and is not in the foreground;
    /// none in a muted conversation (unless mentioned) or in quiet hours.
    async fn notifications(
        &self,
        n: &Notify,
        user: UserId,
        collapse: &str,
        p: &Pending,
        said: &mut HashMap<(u64, u32, bool), Option<Notification>>,
    ) -> Vec<(DeviceId, PushRegistration, Notification)> {
        let regs = match self
            .store
            .settings(user, PUSH_PREFIX, MAX_REGISTRATIONS)
            .await
        {
            Ok(r) if !r.is_empty() => r,
            _ => return Vec::new(),
        };
        let now_ms = self.cfg.clock.now_ms();
        let prefs = self.prefs_of(user).await;
        if prefs
            .quiet_hours
            .is_some_and(|q| in_quiet_hours(&q, now_ms))
        {
            metrics::counter!("xinge_notify_skipped_total", "why" => "quiet_hours").increment(1);
            return Vec::new();
        }
        let (kind, conv) = match &p.latest.about {
            NoticeAbout::Message { conv, .. } => {
                (if p.mention { "mention" } else { "message" }, Some(*conv))
            }
            NoticeAbout::FriendRequest { .. } => ("friend_request", None),
        };
        if !n.wants(kind) {
            return Vec::new();
        }
        if let Some(conv) = conv
            && !p.mention
            && self.conv_settings_of(user, conv).await.muted_at(now_ms)
        {
            metrics::counter!("xinge_notify_skipped_total", "why" => "muted").increment(1);
            return Vec::new();
        }
        let awake: Vec<DeviceId> = self
            .push
            .devices(user)
            .await
            .into_iter()
            .filter(|d| d.foreground)
            .map(|d| d.device)
            .collect();
        let preview = prefs.preview.unwrap_or(n.cfg.preview);
        let made = match said.get(&(p.latest.seq, p.count, preview)) {
            Some(made) => made.clone(),
            None => {
                let made = self.notification_for(&p.latest, p.count, preview).await;
                if said.len() < MAX_SAID {
                    said.insert((p.latest.seq, p.count, preview), made.clone());
                }
                made
            }
        };
        let Some(mut note) = made else {
            return Vec::new();
        };
        note.collapse_id = collapse.to_owned();
        note.data.insert("kind".into(), kind.into());
        note.badge = self.badge(user, now_ms).await;
        let mut out = Vec::new();
        for (key, value) in regs {
            let Some(device) = key.strip_prefix(PUSH_PREFIX).and_then(DeviceId::parse) else {
                continue;
            };
            let Ok(reg) = serde_json::from_str::<PushRegistration>(&value) else {
                continue;
            };
            if awake.contains(&device) || !n.providers.serves(&reg) {
                continue;
            }
            // A device logged out since it registered: its registration goes too.
            if !matches!(self.store.device_token(user, &device).await, Ok(Some(_))) {
                remove_registration_if(self.store.as_ref(), user, &device, &reg).await;
                continue;
            }
            let mut note = note.clone();
            note.id = format!("{}.{}", p.latest.seq, device.as_str());
            out.push((device, reg, note));
        }
        out
    }

    /// What a notification says: the sender and text when previews are on, else only that
    /// there is something. `None` for a message gone (recalled, deleted) before it was told.
    async fn notification_for(
        &self,
        notice: &NoticeRecord,
        count: u32,
        preview: bool,
    ) -> Option<Notification> {
        let mut data = BTreeMap::new();
        let (title, body) = match &notice.about {
            NoticeAbout::Message { conv, conv_seq } => {
                data.insert("conv".to_owned(), conv.to_string());
                data.insert("conv_seq".to_owned(), conv_seq.to_string());
                let m = self.message_at(*conv, *conv_seq).await?;
                let text = match &m.body {
                    MessageBody::Content { content } => content
                        .get("text")
                        .and_then(|t| t.as_str())
                        .map(|t| cut(t, MAX_TEXT)),
                    _ => return None,
                };
                match preview {
                    true => {
                        let sender = self.display_name(m.sender).await;
                        let title = match conv {
                            ConvId::Group(g) => match self.store.group(*g).await {
                                Ok(Some(r)) => format!("{sender} in {}", r.name),
                                _ => sender,
                            },
                            ConvId::Direct(..) => sender,
                        };
                        let body = match (count, text) {
                            (1, Some(t)) => t,
                            (1, None) => "New message".to_owned(),
                            (n, Some(t)) => format!("{t} (+{} more)", n - 1),
                            (n, None) => format!("{n} new messages"),
                        };
                        (Some(title), body)
                    }
                    false => match count {
                        1 => (None, "New message".to_owned()),
                        n => (None, format!("{n} new messages")),
                    },
                }
            }
            NoticeAbout::FriendRequest { from } => {
                data.insert("from".to_owned(), from.to_string());
                match preview {
                    true => (
                        Some("Friend request".to_owned()),
                        format!("{} wants to be your friend", self.display_name(*from).await),
                    ),
                    false => (None, "New friend request".to_owned()),
                }
            }
        };
        Some(Notification {
            id: String::new(),
            collapse_id: String::new(),
            title,
            body,
            badge: None,
            count,
            data,
        })
    }

    async fn display_name(&self, user: UserId) -> String {
        match self.store.user(user).await {
            Ok(Some(u)) if !u.display_name.is_empty() => cut(&u.display_name, 64),
            Ok(Some(u)) => u.username,
            _ => "Someone".to_owned(),
        }
    }
}

/// Removes a device's registration if it is still `reg` (a new one made meanwhile stays).
async fn remove_registration_if(
    store: &dyn xinge_store::Store,
    user: UserId,
    device: &DeviceId,
    reg: &PushRegistration,
) {
    let key = push_key(device);
    let current = store.setting(user, &key).await.ok().flatten();
    if current
        .and_then(|v| serde_json::from_str::<PushRegistration>(&v).ok())
        .as_ref()
        == Some(reg)
    {
        metrics::counter!("xinge_notify_registrations_removed_total").increment(1);
        let _ = store.put_setting(user, &key, None).await;
    }
}

/// One user's collapse window for one conversation.
struct Pending {
    due: Instant,
    count: u32,
    /// The notices it holds (each leaves the queue once every window holding it is told).
    seqs: Vec<u64>,
    /// The newest notice: what the notification shows.
    latest: NoticeRecord,
    /// Whether any of them mentions the user.
    mention: bool,
}

struct Worker {
    /// The last place read.
    cursor: u64,
    /// Since when the next place has been missing while later ones are there.
    gap_since: Option<Instant>,
    /// Windows being told, each on its task; each gives back the notices it held.
    rounds: tokio::task::JoinSet<Vec<u64>>,
    /// Bounds `rounds`.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Open windows by (user, collapse id).
    pending: HashMap<(UserId, String), Pending>,
    /// For each notice read and not yet done: the windows still holding it.
    holds: HashMap<u64, u32>,
    /// Notices ready to leave the queue.
    done: Vec<u64>,
}

impl Default for Worker {
    fn default() -> Self {
        Self {
            cursor: 0,
            gap_since: None,
            rounds: tokio::task::JoinSet::new(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            pending: HashMap::new(),
            holds: HashMap::new(),
            done: Vec::new(),
        }
    }
}

impl Worker {
    /// Of a batch read after the cursor, the notices up to the first gap in the places,
    /// the cursor moved past them. A gap is read past only once it has stood for
    /// [`GAP_GRACE`]: a PostgreSQL transaction that drew the missing places may not have
    /// committed yet (or it rolled back, and they never come). The first read after a
    /// start takes the oldest as it finds it.
    fn in_order(&mut self, batch: Vec<NoticeRecord>) -> Vec<NoticeRecord> {
        let mut taken = Vec::with_capacity(batch.len());
        for rec in batch {
            if self.cursor != 0 && rec.seq != self.cursor + 1 {
                let since = *self.gap_since.get_or_insert_with(Instant::now);
                if since.elapsed() < GAP_GRACE {
                    break;
                }
            }
            self.gap_since = None;
            self.cursor = rec.seq;
            taken.push(rec);
        }
        taken
    }

    /// A told window's notices: each is done once no window holds it.
    fn finish(&mut self, told: std::result::Result<Vec<u64>, tokio::task::JoinError>) {
        // A task that panicked leaves its notices in the queue, for the next start.
        let Ok(seqs) = told else { return };
        for seq in seqs {
            if let Some(left) = self.holds.get_mut(&seq) {
                *left -= 1;
                if *left == 0 {
                    self.holds.remove(&seq);
                    self.done.push(seq);
                }
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.due).min()
    }
}

/// The collapse id of what a notice is about: its conversation (one per user on the
/// phone), or all friend requests together.
fn collapse_id(about: &NoticeAbout) -> String {
    match about {
        NoticeAbout::Message { conv, .. } => format!("c{conv}"),
        NoticeAbout::FriendRequest { .. } => "friends".to_owned(),
    }
}

/// Whether `now_ms` falls in the daily quiet hours `q`.
fn in_quiet_hours(q: &xinge_proto::api::QuietHours, now_ms: u64) -> bool {
    let local_min = (now_ms / 60_000) as i64 + i64::from(q.utc_offset_min);
    let m = local_min.rem_euclid(1440) as u16;
    match q.start_min <= q.end_min {
        true => (q.start_min..q.end_min).contains(&m),
        false => m >= q.start_min || m < q.end_min,
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Whether a Web Push endpoint's host is an address inside a network (loopback, private,
/// link-local, unspecified, unique-local) or `localhost`, or the URL does not parse. A
/// name that resolves to such an address is not caught here.
fn names_a_private_host(endpoint: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(endpoint) else {
        return true;
    };
    let Some(host) = url.host_str() else {
        return true;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            let unique_local = (ip.segments()[0] & 0xfe00) == 0xfc00;
            let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
            let mapped = ip
                .to_ipv4_mapped()
                .is_some_and(|v4| v4.is_loopback() || v4.is_private() || v4.is_link_local());
            ip.is_loopback() || ip.is_unspecified() || unique_local || link_local || mapped
        }
        Err(_) => {
            let d = host.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
    }
}

/// A registration's fields within bounds (the provider checks the rest when it sends).
fn check_registration(reg: &PushRegistration) -> Result<()> {
    let short = |s: &str, max: usize| !s.is_empty() && s.len() <= max;
    let ok = match reg {
        PushRegistration::Apns { token, topic, .. } => {
            short(token, 200) && token.bytes().all(|b| b.is_ascii_hexdigit()) && short(topic, 200)
        }
        PushRegistration::Fcm { token } => short(token, 4096),
        PushRegistration::Webpush {
            endpoint,
            p256dh,
            auth,
        } => {
            short(endpoint, 2048)
                && (endpoint.starts_with("https://") || endpoint.starts_with("http://"))
                && short(p256dh, 200)
                && short(auth, 100)
        }
        PushRegistration::Webhook { token } => token.as_deref().is_none_or(|t| t.len() <= 4096),
    };
    match ok {
        true => Ok(()),
        false => Err(bad(
            ErrorCode::InvalidArgument,
            "the push registration's fields are empty, too long or malformed",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xinge_proto::api::QuietHours;

    #[test]
    fn quiet_hours_hold_in_local_time_and_across_midnight() {
        let at = |h: u64, m: u64| (h * 60 + m) * 60_000 + 20_000 * 86_400_000;
        let night = QuietHours {
            start_min: 22 * 60,
            end_min: 7 * 60,
            utc_offset_min: 0,
        };
        assert!(in_quiet_hours(&night, at(23, 0)));
        assert!(in_quiet_hours(&night, at(3, 0)));
        assert!(!in_quiet_hours(&night, at(7, 0)));
        assert!(!in_quiet_hours(&night, at(12, 0)));
        // 22:00-07:00 at UTC+8 is 14:00-23:00 UTC.
        let east = QuietHours {
            utc_offset_min: 480,
            ..night
        };
        assert!(in_quiet_hours(&east, at(15, 0)));
        assert!(!in_quiet_hours(&east, at(23, 30)));
        let day = QuietHours {
            start_min: 9 * 60,
            end_min: 17 * 60,
            utc_offset_min: -300,
        };
        assert!(in_quiet_hours(&day, at(14, 0)));
        assert!(!in_quiet_hours(&day, at(12, 0)));
    }

    fn rec(seq: u64) -> NoticeRecord {
        NoticeRecord {
            seq,
            user: UserId(1),
            at_ms: 1,
            about: NoticeAbout::FriendRequest { from: UserId(2) },
        }
    }

    #[test]
    fn the_reader_waits_at_a_gap_then_reads_past_it() {
        let mut w = Worker::default();
        let seqs = |v: Vec<NoticeRecord>| v.iter().map(|r| r.seq).collect::<Vec<_>>();
        // After a start: the oldest as found.
        assert_eq!(seqs(w.in_order(vec![rec(7), rec(8)])), [7, 8]);
        // 9 is missing: what follows waits (and is read again next time).
        assert_eq!(seqs(w.in_order(vec![rec(10), rec(11)])), Vec::<u64>::new());
        assert_eq!(w.cursor, 8);
        // 9 came (its transaction committed): all in order.
        assert_eq!(
            seqs(w.in_order(vec![rec(9), rec(10), rec(11)])),
            [9, 10, 11]
        );
        // 12 never comes (rolled back): read past once the gap is old enough.
        assert!(w.in_order(vec![rec(13)]).is_empty());
        w.gap_since = Some(Instant::now() - GAP_GRACE);
        assert_eq!(seqs(w.in_order(vec![rec(13), rec(14)])), [13, 14]);
        assert_eq!(w.gap_since, None);
    }

    #[test]
    fn endpoints_inside_a_network_are_told_apart() {
        for inside in [
            "https://127.0.0.1:8443/push",
            "https://10.1.2.3/x",
            "https://192.168.0.7/x",
            "https://172.16.5.5/x",
            "https://169.254.169.254/latest",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[fe80::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://0.0.0.0/x",
            "https://localhost:9/x",
            "https://a.localhost/x",
            "not a url",
        ] {
            assert!(names_a_private_host(inside), "{inside}");
        }
        for outside in [
            "https://fcm.googleapis.com/fcm/send/abc",
            "https://updates.push.services.mozilla.com/wpush/v2/x",
            "https://8.8.8.8/x",
            "https://[2001:db8::1]/x",
        ] {
            assert!(!names_a_private_host(outside), "{outside}");
        }
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("hi", 10), "hi");
    }
}
