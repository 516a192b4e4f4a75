//! A logged-in device that stays connected and delivers its inbox exactly once, in order.
//!
//! The device keeps a cursor (the last inbox seq it delivered). On every (re)connection it
//! pulls everything after the cursor; then it applies each signal that carries exactly the
//! next entry, holds one that is ahead for a moment (signals for one inbox can arrive out
//! of order, see [`crate::Reorder`]), and pulls when a gap outlasts that moment or a
//! signal carries no entry. A periodic pull doubles as the heartbeat and repairs any lost
//! signal. Entries are handed to the app strictly in seq
//! order, each once, whatever the network does.

use crate::conn::{Connection, Transport, lock};
use crate::{ClientError, Http, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use xinge_core::{ConvId, ErrorCode};
use xinge_proto::api::{
    AppState, Event, HistoryRequest, HistoryResponse, InboxEntry, Message, SendRequest,
    SendResponse, Signal, SyncRequest, SyncResponse,
};
use xinge_proto::cmd;

#[derive(Clone, Debug)]
pub struct DeviceOptions {
    pub transport: Transport,
    /// Resume after this inbox seq (0: from the beginning).
    pub cursor: u64,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How often to pull even without a signal (also the heartbeat, capped by the
    /// server's heartbeat timeout / 3).
    pub repair_interval: Duration,
    /// How long `send` keeps retrying through reconnections.
    pub send_deadline: Duration,
    /// Hand every inbox entry to `next_event`.
    pub inbox_events: bool,
    /// Hand every conversation message to `next_message`: each exactly once, in conv_seq
    /// order per conversation, whether it came through the inbox (1:1, small groups) or
    /// by pulling a large group's timeline.
    pub messages: bool,
    /// Base URL of the route service, when it is not the API's (a distributed deployment).
    pub route: Option<String>,
    /// TLS for the long connection: TCP speaks TLS, and `wss://` gateways are trusted by
    /// these roots. (HTTPS is the `Http`'s: [`Http::with_tls`].)
    pub tls: Option<crate::Tls>,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            transport: Transport::Tcp,
            cursor: 0,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            repair_interval: Duration::from_secs(20),
            send_deadline: Duration::from_secs(30),
            inbox_events: true,
            messages: false,
            route: None,
            tls: None,
        }
    }
}

struct Shared {
    conn: Mutex<Option<Arc<Connection>>>,
    /// Set with `send_replace`: `send` leaves the value as it was when nobody is
    /// subscribed, and the session would read its own new connection as dropped.
    connected: watch::Sender<bool>,
    cursor: AtomicU64,
    connects: AtomicU64,
    /// Set when the server refused the token for good.
    fatal: Mutex<Option<ClientError>>,
    /// Whether the app said it is in the background (told again on every new connection:
    /// the server forgets it with the connection).
    background: std::sync::atomic::AtomicBool,
}

pub struct Device {
    http: Http,
    shared: Arc<Shared>,
    events: tokio::sync::Mutex<mpsc::Receiver<InboxEntry>>,
    messages: tokio::sync::Mutex<mpsc::Receiver<Message>>,
    others: tokio::sync::Mutex<mpsc::Receiver<Signal>>,
    stop: watch::Sender<bool>,
    opts: DeviceOptions,
}

impl Device {
    /// Starts connecting in the background. `http` must carry the device's token.
    pub fn start(http: Http, opts: DeviceOptions) -> Self {
        let (connected, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            conn: Mutex::new(None),
            connected,
            cursor: AtomicU64::new(opts.cursor),
            connects: AtomicU64::new(0),
            fatal: Mutex::new(None),
            background: std::sync::atomic::AtomicBool::new(false),
        });
        let (ev_tx, ev_rx) = mpsc::channel(65_536);
        let (msg_tx, msg_rx) = mpsc::channel(65_536);
        let (other_tx, other_rx) = mpsc::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        let runner = Runner {
            route: opts
                .route
                .as_deref()
                .map_or_else(|| http.clone(), |r| http.at(r)),
            http: http.clone(),
            shared: shared.clone(),
            events: ev_tx,
            messages: msg_tx,
            convs: HashMap::new(),
            others: other_tx,
            opts: opts.clone(),
            last_addr: None,
            told_to_wait: None,
        };
        tokio::spawn(runner.run(stop_rx));
        Self {
            http,
            shared,
            events: tokio::sync::Mutex::new(ev_rx),
            messages: tokio::sync::Mutex::new(msg_rx),
            others: tokio::sync::Mutex::new(other_rx),
            stop,
            opts,
        }
    }

    pub fn http(&self) -> &Http {
        &self.http
    }

    /// The last inbox seq delivered to the app.
    pub fn cursor(&self) -> u64 {
        self.shared.cursor.load(Ordering::Acquire)
    }

    /// How many times the device has connected (1 after the first connection).
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::Relaxed)
    }

    /// The gateway the device is connected to (`host:port` or a `ws://…` URL), if it is.
    pub fn address(&self) -> Option<String> {
        let conn = lock(&self.shared.conn);
        conn.as_ref().map(|c| c.address.clone())
    }

    /// The next inbox entry, or `None` if none came within `wait`.
    pub async fn next_event(&self, wait: Duration) -> Option<InboxEntry> {
        tokio::time::timeout(wait, self.events.lock().await.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next conversation message (see `DeviceOptions::messages`), or `None` if none
    /// came within `wait`.
    pub async fn next_message(&self, wait: Duration) -> Option<Message> {
        tokio::time::timeout(wait, self.messages.lock().await.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next typing or presence signal, or `None` if none came within `wait`.
    pub async fn next_signal(&self, wait: Duration) -> Option<Signal> {
        tokio::time::timeout(wait, self.others.lock().await.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits until connected (or `wait` passes); false if not connected.
    pub async fn wait_connected(&self, wait: Duration) -> bool {
        let mut rx = self.shared.connected.subscribe();
        tokio::time::timeout(wait, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Tells the server the app went to the background (it then gets offline push
    /// notifications as if it were not connected) or came back; remembered and told again
    /// on every reconnection.
    pub async fn set_background(&self, background: bool) -> Result<()> {
        self.shared.background.store(background, Ordering::Relaxed);
        self.call::<_, serde_json::Value>(cmd::APP_STATE, &AppState { background })
            .await
            .map(drop)
    }

    /// A request over the current connection, without retries.
    pub async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        command: u16,
        body: &B,
    ) -> Result<R> {
        let conn = lock(&self.shared.conn).clone();
        match conn {
            Some(c) => c.request(command, body).await,
            None => Err(ClientError::Transport("not connected".into())),
        }
    }

    /// Sends over the long connection, retrying through disconnections with the same
    /// client_msg_id until the server answers (so a retry never duplicates).
    pub async fn send(&self, req: &SendRequest) -> Result<SendResponse> {
        let deadline = tokio::time::Instant::now() + self.opts.send_deadline;
        loop {
            if let Some(e) = lock(&self.shared.fatal).clone() {
                return Err(e);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ClientError::Transport("send deadline passed".into()));
            }
            self.wait_connected(left).await;
            match self.call(cmd::SEND, req).await {
                Ok(r) => return Ok(r),
                // Over the server's rate limit: wait a little, then the same send again.
                Err(ClientError::Api(e)) if e.code == ErrorCode::RateLimited => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(ClientError::Api(e))
                    if e.code != ErrorCode::Unavailable && e.code != ErrorCode::SlowConsumer =>
                {
                    return Err(ClientError::Api(e));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Drops the current connection (as a network failure would); the device reconnects.
    pub fn drop_connection(&self) {
        lock(&self.shared.conn).take();
        self.shared.connected.send_replace(false);
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Runner {
    http: Http,
    /// Where to ask for gateways.
    route: Http,
    shared: Arc<Shared>,
    events: mpsc::Sender<InboxEntry>,
    messages: mpsc::Sender<Message>,
    /// The last conv_seq handed out per conversation.
    convs: HashMap<ConvId, u64>,
    others: mpsc::Sender<Signal>,
    opts: DeviceOptions,
    last_addr: Option<String>,
    /// The server's `retry_after_ms` when it last refused us with `rate_limited`.
    told_to_wait: Option<Duration>,
}

enum Ended {
    Retry,
    Stop,
}

impl Runner {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut attempt: u32 = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            let connects_before = self.shared.connects.load(Ordering::Relaxed);
            let ended = tokio::select! {
                e = self.session() => e,
                _ = stop.changed() => Ended::Stop,
            };
            lock(&self.shared.conn).take();
            self.shared.connected.send_replace(false);
            if matches!(ended, Ended::Stop) {
                return;
            }
            // A session that got connected resets the back-off; failures in a row grow it.
            let was_connected = self.shared.connects.load(Ordering::Relaxed) > connects_before;
            attempt = if was_connected {
                0
            } else {
                attempt.saturating_add(1)
            };
            // A server that said when to come back is believed (with jitter on top, so a
            // crowd refused together does not return together).
            let delay = match self.told_to_wait.take() {
                Some(wait) => wait + self.backoff(attempt),
                None => self.backoff(attempt),
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
        }
    }

    fn note_refusal(&mut self, e: &ClientError) {
        if let ClientError::Api(e) = e
            && let Some(ms) = e.retry_after_ms
        {
            self.told_to_wait = Some(Duration::from_millis(ms.min(60_000)));
        }
    }

    /// Exponential back-off with jitter: a uniform pick in [d/2, d], d doubling per failure.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .opts
            .min_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.opts.max_backoff);
        let half = base / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    async fn pick_address(&mut self) -> Option<String> {
        let want = match self.opts.transport {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
        };
        let list = match self.route.route().await {
            Ok(r) => r.gateways,
            Err(e) => {
                self.note_refusal(&e);
                return None;
            }
        };
        let addrs: Vec<String> = list
            .into_iter()
            .filter(|g| g.transport == want)
            .map(|g| g.address)
            .collect();
        // Prefer the gateway we were on: our session state is warm there.
        match &self.last_addr {
            Some(a) if addrs.contains(a) => Some(a.clone()),
            _ => addrs.into_iter().next(),
        }
    }

    async fn session(&mut self) -> Ended {
        let Some(addr) = self.pick_address().await else {
            return Ended::Retry;
        };
        let token = self.http.token().unwrap_or_default().to_owned();
        let connecting =
            Connection::connect_with(self.opts.transport, &addr, &token, self.opts.tls.as_ref());
        let (conn, mut signals) = match connecting.await {
            Ok(v) => v,
            Err(ClientError::Api(e))
                if matches!(
                    e.code,
                    ErrorCode::Unauthenticated | ErrorCode::TokenExpired | ErrorCode::TokenRevoked
                ) =>
            {
                *lock(&self.shared.fatal) = Some(ClientError::Api(e));
                return Ended::Stop;
            }
            Err(e) => {
                self.note_refusal(&e);
                return Ended::Retry;
            }
        };
        self.last_addr = Some(addr);
        let conn = Arc::new(conn);
        let hb = Duration::from_secs(u64::from(conn.auth.heartbeat_timeout_secs.max(3)) / 3);
        let mut tick = tokio::time::interval(self.opts.repair_interval.min(hb));
        tick.tick().await;
        if self.pull_patiently(&conn).await.is_err() {
            return Ended::Retry;
        }
        if self.shared.background.load(Ordering::Relaxed)
            && conn
                .request::<_, serde_json::Value>(cmd::APP_STATE, &AppState { background: true })
                .await
                .is_err()
        {
            return Ended::Retry;
        }
        *lock(&self.shared.conn) = Some(conn.clone());
        self.shared.connects.fetch_add(1, Ordering::Relaxed);
        self.shared.connected.send_replace(true);
        // A pull between connecting and publishing may have missed a signal: pull again.
        if self.pull_patiently(&conn).await.is_err() {
            return Ended::Retry;
        }
        let mut dropped = self.shared.connected.subscribe();
        let mut ahead = crate::Reorder::default();
        loop {
            let wait = ahead.deadline();
            tokio::select! {
                s = signals.recv() => match s {
                    None => return Ended::Retry,
                    Some(Signal::Inbox { seq, entry }) => {
                        let cursor = self.shared.cursor.load(Ordering::Acquire);
                        if seq <= cursor {
                            continue;
                        }
                        let pull = match entry {
                            Some(e) if e.seq == cursor + 1 => {
                                if self.deliver(&conn, *e).await.is_err() {
                                    return Ended::Retry;
                                }
                                false
                            }
                            Some(e) => !ahead.hold(*e),
                            None => true,
                        };
                        if pull {
                            ahead.clear();
                            if self.pull_patiently(&conn).await.is_err() {
                                return Ended::Retry;
                            }
                        }
                        // What was held and now follows the cursor.
                        while let Some(e) = ahead.next_after(self.shared.cursor.load(Ordering::Acquire)) {
                            if self.deliver(&conn, e).await.is_err() {
                                return Ended::Retry;
                            }
                        }
                    }
                    Some(Signal::Group { conv, seq, messages }) => {
                        if self.opts.messages && self.on_group_signal(&conn, conv, seq, messages).await.is_err() {
                            return Ended::Retry;
                        }
                    }
                    Some(other) => {
                        let _ = self.others.try_send(other);
                    }
                },
                // A gap held open too long: a signal was lost or coalesced.
                _ = tokio::time::sleep_until(wait.unwrap_or_else(tokio::time::Instant::now)), if wait.is_some() => {
                    ahead.clear();
                    if self.pull_patiently(&conn).await.is_err() {
                        return Ended::Retry;
                    }
                }
                _ = tick.tick() => {
                    ahead.clear();
                    if self.pull_patiently(&conn).await.is_err() {
                        return Ended::Retry;
                    }
                }
                _ = async { dropped.wait_for(|c| !*c).await.is_ok() } => return Ended::Retry,
            }
        }
    }

    async fn deliver(&mut self, conn: &Connection, e: InboxEntry) -> Result<()> {
        let seq = e.seq;
        if let Event::Message { message } = &e.event {
            self.on_message(conn, message.clone()).await?;
        }
        if self.opts.inbox_events {
            self.events.send(e).await.map_err(|_| stopped())?;
        }
        self.shared.cursor.store(seq, Ordering::Release);
        Ok(())
    }

    /// A message seen in the inbox: the next of its conversation, a repeat, or past a gap
    /// (a large group's messages, or history from before one joined) that a pull fills.
    async fn on_message(&mut self, conn: &Connection, m: Message) -> Result<()> {
        if !self.opts.messages {
            return Ok(());
        }
        let cursor = self.convs.get(&m.conv).copied().unwrap_or(0);
        if m.conv_seq <= cursor {
            return Ok(());
        }
        if m.conv_seq > cursor + 1 {
            self.pull_conv(conn, m.conv).await?;
        }
        // Usually the pull brought this message too; when it could not (the message that
        // ends one's membership lies past what one may still pull), hand it out now.
        if m.conv_seq > self.convs.get(&m.conv).copied().unwrap_or(0) {
            self.convs.insert(m.conv, m.conv_seq);
            self.messages.send(m).await.map_err(|_| stopped())?;
        }
        Ok(())
    }

    /// A large group advanced to `seq`: apply the messages that came along if they continue
    /// our cursor, else pull.
    async fn on_group_signal(
        &mut self,
        conn: &Connection,
        conv: ConvId,
        seq: u64,
        messages: Vec<Message>,
    ) -> Result<()> {
        let cursor = self.convs.get(&conv).copied().unwrap_or(0);
        if seq <= cursor {
            return Ok(());
        }
        let continues = cursor > 0 && messages.first().is_some_and(|m| m.conv_seq <= cursor + 1);
        if continues && messages.last().is_some_and(|m| m.conv_seq == seq) {
            for m in messages.into_iter().filter(|m| m.conv_seq > cursor) {
                self.convs.insert(conv, m.conv_seq);
                self.messages.send(m).await.map_err(|_| stopped())?;
            }
            return Ok(());
        }
        self.pull_conv(conn, conv).await
    }

    /// Pulls a conversation's timeline after our cursor for it.
    async fn pull_conv(&mut self, conn: &Connection, conv: ConvId) -> Result<()> {
        loop {
            let after = self.convs.get(&conv).copied().unwrap_or(0);
            let req = HistoryRequest {
                conv,
                before: None,
                after: Some(after),
                limit: Some(500),
            };
            let resp: HistoryResponse = match conn.request(cmd::HISTORY, &req).await {
                Ok(r) => r,
                // No longer ours (removed, dismissed): nothing more to read.
                Err(ClientError::Api(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            for m in resp.messages {
                if m.conv_seq > self.convs.get(&conv).copied().unwrap_or(0) {
                    self.convs.insert(conv, m.conv_seq);
                    self.messages.send(m).await.map_err(|_| stopped())?;
                }
            }
            if !resp.has_more {
                return Ok(());
            }
        }
    }

    /// Pulls everything after the cursor, then (when handing out messages) the large groups
    /// that are ahead of us.
    /// Pulls; when the server answers but cannot serve the pull now (`unavailable`,
    /// `rate_limited`, `internal`: an overloaded api, a store hiccup), waits and tries again
    /// on the same connection, a few times, rather than dropping a good connection and
    /// adding a reconnection to the load.
    async fn pull_patiently(&mut self, conn: &Connection) -> Result<()> {
        let mut attempt = 0;
        loop {
            let e = match self.pull(conn).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let wait = match &e {
                ClientError::Api(api)
                    if attempt < 5
                        && matches!(
                            api.code,
                            ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::Internal
                        ) =>
                {
                    api.retry_after_ms.map(Duration::from_millis)
                }
                _ => return Err(e),
            };
            attempt += 1;
            tokio::time::sleep(wait.unwrap_or_default() + self.backoff(attempt + 2)).await;
        }
    }

    async fn pull(&mut self, conn: &Connection) -> Result<()> {
        loop {
            let after = self.shared.cursor.load(Ordering::Acquire);
            let req = SyncRequest {
                after,
                limit: Some(500),
                groups: false,
            };
            let resp: SyncResponse = conn.request(cmd::SYNC, &req).await?;
            for e in resp.entries {
                let cursor = self.shared.cursor.load(Ordering::Acquire);
                if e.seq == cursor + 1 {
                    self.deliver(conn, e).await?;
                } else if e.seq > cursor + 1 {
                    return Err(ClientError::Protocol(format!(
                        "gap in inbox: {cursor} then {}",
                        e.seq
                    )));
                }
            }
            if !resp.has_more {
                break;
            }
        }
        if self.opts.messages {
            let after = self.shared.cursor.load(Ordering::Acquire);
            let req = SyncRequest {
                after,
                limit: Some(1),
                groups: true,
            };
            let resp: SyncResponse = conn.request(cmd::SYNC, &req).await?;
            for g in resp.groups {
                if g.head > self.convs.get(&g.conv).copied().unwrap_or(0) {
                    self.pull_conv(conn, g.conv).await?;
                }
            }
        }
        Ok(())
    }
}

fn stopped() -> ClientError {
    ClientError::Transport("device stopped".into())
}
