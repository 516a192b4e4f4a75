//! The push layer: which connections a user has, and getting a signal to exactly those.
//!
//! Two narrow traits are all the other layers see of it:
//!
//! ```text
//! Signals    (the IM layer)  signal(users, frame), presence(user), end_sessions(end)
//! Sessions   (a gateway)     bind(user, session), unbind(user, conn)
//! ```
//! [`Push`] implements both in one process (`xinge serve`): a sharded in-memory registry,
//! one bounded delivery queue per gateway ([`Push::attach_gateway`]) and a stream of
//! online/offline transitions ([`Push::presence_changes`]). The distributed roles implement
//! the same traits on Redis and NATS (crate `cluster`).
//!
//! A signal goes only to the gateways that hold one of the user's connections, never to all
//! of them. A user who gets signals faster than the limit has them coalesced ([`throttle`]).
//! Signals may be lost (a full gateway queue, a gateway that just died): the
//! push-then-pull contract makes that harmless, since the next pull repairs it.

mod end;
pub mod throttle;
pub mod wire;

pub use end::{EndReason, SessionEnd};
pub use throttle::{Coalesce, Throttle, ThrottleConfig};

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use xinge_core::{ConnId, DeviceId, GatewayId, UserId};
use xinge_proto::Frame;

const SHARDS: usize = 64;

/// A frame for some connections of one gateway.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub conns: Vec<ConnId>,
    pub frame: Frame,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub conn: ConnId,
    pub gateway: GatewayId,
    pub device: DeviceId,
}

/// One of a user's devices as the push layer knows it: connected now, or when it last was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSeen {
    pub device: DeviceId,
    pub online: bool,
    /// Connected, and not every connection of it told the server its app is in the
    /// background (`Signals::set_background`): it needs no offline push.
    pub foreground: bool,
    /// Now for a connected device; when its last connection ended otherwise (0: unknown).
    pub last_seen_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceChange {
    pub user: UserId,
    pub online: bool,
    pub at_ms: u64,
}

/// The push layer as the IM layer sees it.
#[async_trait]
pub trait Signals: Send + Sync + 'static {
    /// Hands `frame` to every online device of each of `users`. A hint: it may be lost
    /// (the contract repairs that by pull), so this neither waits nor fails. `how` says
    /// what may become of it when a user is over the signal rate. Returns the work it made
    /// here: the connections it was handed to where this process holds them (one process),
    /// else the users it was passed on for — what a caller paces a large fan-out by.
    fn signal(&self, users: &[UserId], frame: &Frame, how: Coalesce) -> usize;
    /// [`Signals::signal`] to one user's devices but connection `except`: the one whose
    /// request made the entry, which gets the entry in its answer instead. Skipping it is
    /// a saving, not a promise: an implementation may still signal it (this default does),
    /// and a client ignores a signal for an entry it already has.
    fn signal_except(&self, user: UserId, frame: &Frame, how: Coalesce, except: ConnId) {
        let _ = except;
        self.signal(&[user], frame, how);
    }
    /// `(online, last_seen_ms)`; last seen is now for an online user, 0 if unknown.
    async fn presence(&self, user: UserId) -> (bool, u64);
    /// Closes the sessions `end` names, on whichever gateways hold them. Unlike a signal it
    /// is never coalesced or dropped by the rate; it is lost only with the gateway that
    /// held the connections (which closes them anyway).
    async fn end_sessions(&self, end: &SessionEnd);
    /// The user's devices that are connected now or were lately (at most the sessions a
    /// user may have, each device once).
    async fn devices(&self, user: UserId) -> Vec<DeviceSeen>;
    /// Who is connected now, as this push layer can count it.
    async fn online(&self) -> Online;
    /// Connection `conn` of `user` says its app went to the background (`true`) or came
    /// back: a device all of whose connections are in the background is notified as if
    /// it were not connected. Forgotten with the connection. This default keeps no such
    /// state (every connected device counts as in the foreground).
    async fn set_background(&self, user: UserId, conn: ConnId, background: bool) {
        let _ = (user, conn, background);
    }
    /// Whether `user` has a device in the foreground now, if this process can tell at
    /// once (without a round trip): what decides, on the send path, whether a message
    /// may need an offline push at all. `None`: it cannot (then it may).
    fn foreground(&self, user: UserId) -> Option<bool> {
        let _ = user;
        None
    }
}

/// Users (where counted), connections and gateways connected now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Online {
    pub users: Option<u64>,
    pub connections: u64,
    pub gateways: u64,
}

/// The push layer as a gateway sees it: sessions come and go.
pub trait Sessions: Send + Sync + 'static {
    fn bind(&self, user: UserId, session: Session);
    fn unbind(&self, user: UserId, conn: ConnId);
}

#[derive(Default)]
struct Entry {
    sessions: Vec<Session>,
    last_seen_ms: u64,
    /// When each device's last connection ended, newest last; at most
    /// `max_sessions_per_user` devices (the longest unseen is forgotten).
    devices_seen: Vec<(DeviceId, u64)>,
    /// The connections (of `sessions`) whose app is in the background.
    background: Vec<ConnId>,
}

#[derive(Clone, Debug)]
pub struct PushConfig {
    /// Deliveries waiting for one gateway; when full, further signals for it are dropped
    /// (and counted) — clients repair by pulling.
    pub gateway_queue: usize,
    /// Users whose presence is remembered; offline entries beyond this are forgotten
    /// (their last-seen time becomes unknown).
    pub max_users: usize,
    /// Sessions one user may have at once; the oldest is unbound past this.
    pub max_sessions_per_user: usize,
    /// Signals per user per second, coalesced past the rate.
    pub throttle: ThrottleConfig,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            gateway_queue: 65_536,
            max_users: 2_000_000,
            max_sessions_per_user: 16,
            throttle: ThrottleConfig::default(),
        }
    }
}

pub struct Push {
    cfg: PushConfig,
    shards: Vec<Mutex<HashMap<UserId, Entry>>>,
    gateways: Mutex<HashMap<GatewayId, mpsc::Sender<Delivery>>>,
    presence_tx: mpsc::Sender<PresenceChange>,
    presence_rx: Mutex<Option<mpsc::Receiver<PresenceChange>>>,
    dropped: std::sync::atomic::AtomicU64,
    throttle: Throttle,
}

impl Push {
    pub fn new(cfg: PushConfig) -> Self {
        let (presence_tx, presence_rx) = mpsc::channel(4096);
        Self {
            throttle: Throttle::new(cfg.throttle),
            cfg,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            gateways: Mutex::new(HashMap::new()),
            presence_tx,
            presence_rx: Mutex::new(Some(presence_rx)),
            dropped: Default::default(),
        }
    }

    /// Starts releasing the signals the throttle held, as users' rates allow. The task
    /// ends when the `Push` is dropped.
    pub fn start(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELEASE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(push) = me.upgrade() else { return };
                for (user, frames) in push.throttle.due(Instant::now()) {
                    for f in &frames {
                        push.signal_user(user, f, None);
                    }
                }
            }
        });
    }

    fn shard(&self, user: UserId) -> std::sync::MutexGuard<'_, HashMap<UserId, Entry>> {
        let i = (user.0 as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a gateway and returns the queue its deliveries arrive on.
    pub fn attach_gateway(&self, id: GatewayId) -> mpsc::Receiver<Delivery> {
        let (tx, rx) = mpsc::channel(self.cfg.gateway_queue.max(1));
        self.gateways
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        rx
    }

    /// The stream of online/offline transitions; can be taken once.
    pub fn presence_changes(&self) -> Option<mpsc::Receiver<PresenceChange>> {
        self.presence_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn bind_session(&self, user: UserId, session: Session) {
        let now = xinge_core::now_ms();
        let came_online = {
            let mut shard = self.shard(user);
            if shard.len() >= self.cfg.max_users / SHARDS {
                shard.retain(|_, e| !e.sessions.is_empty());
            }
            let e = shard.entry(user).or_default();
            let was_offline = e.sessions.is_empty();
            if e.sessions.len() >= self.cfg.max_sessions_per_user {
                let gone = e.sessions.remove(0).conn;
                e.background.retain(|c| *c != gone);
            }
            // Most users have one or two devices: grow one slot at a time, not by Vec's
            // default of four (about 150 bytes per online user).
            e.sessions.reserve_exact(1);
            e.sessions.push(session);
            e.last_seen_ms = now;
            was_offline
        };
        if came_online {
            let _ = self.presence_tx.try_send(PresenceChange {
                user,
                online: true,
                at_ms: now,
            });
        }
    }

    fn unbind_session(&self, user: UserId, conn: ConnId) {
        let now = xinge_core::now_ms();
        let went_offline = {
            let mut shard = self.shard(user);
            let Some(e) = shard.get_mut(&user) else {
                return;
            };
            let before = e.sessions.len();
            e.background.retain(|c| *c != conn);
            if let Some(i) = e.sessions.iter().position(|s| s.conn == conn) {
                let device = e.sessions.remove(i).device;
                e.devices_seen.retain(|(d, _)| *d != device);
                if e.devices_seen.len() >= self.cfg.max_sessions_per_user.max(1) {
                    e.devices_seen.remove(0);
                }
                e.devices_seen.push((device, now));
            }
            e.last_seen_ms = now;
            before > 0 && e.sessions.is_empty()
        };
        if went_offline {
            let _ = self.presence_tx.try_send(PresenceChange {
                user,
                online: false,
                at_ms: now,
            });
        }
    }

    pub fn sessions(&self, user: UserId) -> Vec<Session> {
        self.shard(user)
            .get(&user)
            .map(|e| e.sessions.clone())
            .unwrap_or_default()
    }

    fn presence_now(&self, user: UserId) -> (bool, u64) {
        match self.shard(user).get(&user) {
            Some(e) if !e.sessions.is_empty() => (true, xinge_core::now_ms()),
            Some(e) => (false, e.last_seen_ms),
            None => (false, 0),
        }
    }

    /// Sends `frame` to every online connection of `user` but `except`. Returns how many
    /// connections it was handed to.
    pub fn signal_user(&self, user: UserId, frame: &Frame, except: Option<ConnId>) -> usize {
        // Where the sessions are, copied under the shard's lock (not the sessions: their
        // device names are not needed), then grouped by gateway: this runs per signal.
        let mut targets: Vec<(GatewayId, ConnId)> = match self.shard(user).get(&user) {
            Some(e) => e
                .sessions
                .iter()
                .filter(|s| Some(s.conn) != except)
                .map(|s| (s.gateway, s.conn))
                .collect(),
            None => return 0,
        };
        if targets.is_empty() {
            return 0;
        }
        let mut sent = 0;
        let gateways = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        for (gw, conns) in by_gateway(&mut targets) {
            let n = conns.len();
            let ok = gateways.get(&gw).is_some_and(|tx| {
                tx.try_send(Delivery {
                    conns,
                    frame: frame.clone(),
                })
                .is_ok()
            });
            if ok {
                sent += n;
                metrics::counter!("xinge_signals_total").increment(n as u64);
            } else {
                metrics::counter!("xinge_signals_dropped_total").increment(n as u64);
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(gateway = %gw, %user, "signal dropped: gateway queue full or gone");
            }
        }
        sent
    }

    /// Deliveries dropped because a gateway queue was full or the gateway unknown.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl Signals for Push {
    fn signal(&self, users: &[UserId], frame: &Frame, how: Coalesce) -> usize {
        let now = Instant::now();
        let mut sent = 0;
        for &user in users {
            if self.throttle.admit(user, frame, how, now) {
                sent += self.signal_user(user, frame, None);
            }
        }
        sent
    }

    fn signal_except(&self, user: UserId, frame: &Frame, how: Coalesce, except: ConnId) {
        // A signal the throttle holds is released later to every connection, `except`'s
        // too: harmless, it already has the entry.
        if self.throttle.admit(user, frame, how, Instant::now()) {
            self.signal_user(user, frame, Some(except));
        }
    }

    async fn presence(&self, user: UserId) -> (bool, u64) {
        self.presence_now(user)
    }

    async fn end_sessions(&self, end: &SessionEnd) {
        let mut targets: Vec<(GatewayId, ConnId)> = match self.shard(end.user).get(&end.user) {
            Some(e) => e
                .sessions
                .iter()
                .filter(|s| end.device.as_ref().is_none_or(|d| *d == s.device))
                .map(|s| (s.gateway, s.conn))
                .collect(),
            None => return,
        };
        let frame = end.frame();
        let mut sends = Vec::new();
        {
            let gateways = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
            for (gw, conns) in by_gateway(&mut targets) {
                if let Some(tx) = gateways.get(&gw) {
                    sends.push((
                        tx.clone(),
                        Delivery {
                            conns,
                            frame: frame.clone(),
                        },
                    ));
                }
            }
        }
        // Waits for room in a full gateway queue (a signal would be dropped there), but
        // not forever: a gateway that takes nothing for this long is stuck, and its
        // connections are being closed as slow consumers anyway.
        for (tx, d) in sends {
            if tokio::time::timeout(END_WAIT, tx.send(d)).await.is_err() {
                metrics::counter!("xinge_session_ends_dropped_total").increment(1);
                tracing::warn!(user = %end.user, "a session end found its gateway's queue full");
            }
        }
    }

    async fn online(&self) -> Online {
        let (mut users, mut connections) = (0, 0);
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for e in shard.values().filter(|e| !e.sessions.is_empty()) {
                users += 1;
                connections += e.sessions.len() as u64;
            }
        }
        let gateways = self
            .gateways
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u64;
        Online {
            users: Some(users),
            connections,
            gateways,
        }
    }

    async fn devices(&self, user: UserId) -> Vec<DeviceSeen> {
        let now = xinge_core::now_ms();
        let shard = self.shard(user);
        let Some(e) = shard.get(&user) else {
            return Vec::new();
        };
        let mut out: Vec<DeviceSeen> = Vec::with_capacity(e.sessions.len() + e.devices_seen.len());
        for s in &e.sessions {
            let foreground = !e.background.contains(&s.conn);
            match out.iter_mut().find(|d| d.device == s.device) {
                Some(d) => d.foreground |= foreground,
                None => out.push(DeviceSeen {
                    device: s.device.clone(),
                    online: true,
                    foreground,
                    last_seen_ms: now,
                }),
            }
        }
        for (device, at) in &e.devices_seen {
            if !out.iter().any(|d| d.device == *device) {
                out.push(DeviceSeen {
                    device: device.clone(),
                    online: false,
                    foreground: false,
                    last_seen_ms: *at,
                });
            }
        }
        out
    }

    fn foreground(&self, user: UserId) -> Option<bool> {
        Some(
            self.shard(user)
                .get(&user)
                .is_some_and(|e| e.sessions.iter().any(|s| !e.background.contains(&s.conn))),
        )
    }

    async fn set_background(&self, user: UserId, conn: ConnId, background: bool) {
        let mut shard = self.shard(user);
        let Some(e) = shard.get_mut(&user) else {
            return;
        };
        e.background.retain(|c| *c != conn);
        // Only a connection it holds: the list stays within the user's sessions.
        if background && e.sessions.iter().any(|s| s.conn == conn) {
            e.background.push(conn);
        }
    }
}

/// How long a session end waits for room in a full gateway queue.
const END_WAIT: Duration = Duration::from_secs(1);

/// `targets` (where each connection is) grouped by gateway: every gateway once, with its
/// connections in the order given, so that each gets one delivery for all of them. Sorts
/// `targets` by gateway. The in-process push and the cluster's push worker both route
/// through this.
pub fn by_gateway(
    targets: &mut [(GatewayId, ConnId)],
) -> impl Iterator<Item = (GatewayId, Vec<ConnId>)> + '_ {
    targets.sort_by_key(|t| t.0); // stable: a gateway's connections keep their order
    targets
        .chunk_by(|a, b| a.0 == b.0)
        .map(|group| (group[0].0, group.iter().map(|t| t.1).collect()))
}

/// How often held signals are looked at ([`Throttle::due`]); a held signal waits at most
/// this much longer than its user's rate requires.
pub const RELEASE_EVERY: Duration = Duration::from_millis(25);

impl Sessions for Push {
    fn bind(&self, user: UserId, session: Session) {
        self.bind_session(user, session);
    }

    fn unbind(&self, user: UserId, conn: ConnId) {
        self.unbind_session(user, conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(conn: u64, gw: u16) -> Session {
        Session {
            conn: ConnId(conn),
            gateway: GatewayId(gw),
            device: DeviceId::parse("d").unwrap(),
        }
    }

    #[tokio::test]
    async fn signals_reach_only_the_gateways_holding_the_user() {
        let push = Push::new(PushConfig::default());
        let mut g1 = push.attach_gateway(GatewayId(1));
        let mut g2 = push.attach_gateway(GatewayId(2));
        let mut presence = push.presence_changes().unwrap();
        push.bind(UserId(7), session(10, 1));
        push.bind(UserId(7), session(11, 1));
        assert!(presence.recv().await.unwrap().online);
        let f = Frame::request(4, 0, &b"{}"[..]);
        assert_eq!(push.signal_user(UserId(7), &f, None), 2);
        let d = g1.recv().await.unwrap();
        assert_eq!(d.conns, vec![ConnId(10), ConnId(11)]);
        assert!(
            g2.try_recv().is_err(),
            "gateway 2 holds nobody and gets nothing"
        );
        assert_eq!(push.signal_user(UserId(8), &f, None), 0);
        push.unbind(UserId(7), ConnId(10));
        assert!(push.presence(UserId(7)).await.0);
        push.unbind(UserId(7), ConnId(11));
        let (online, seen) = push.presence(UserId(7)).await;
        assert!(!online && seen > 0);
        assert!(!presence.recv().await.unwrap().online);
    }

    #[tokio::test]
    async fn a_signal_can_skip_the_connection_that_made_it() {
        let push = Push::new(PushConfig::default());
        let mut g1 = push.attach_gateway(GatewayId(1));
        let mut g2 = push.attach_gateway(GatewayId(2));
        push.bind(UserId(7), session(10, 1));
        push.bind(UserId(7), session(20, 2));
        let f = Frame::request(4, 0, &b"{}"[..]);
        push.signal_except(UserId(7), &f, Coalesce::Drop, ConnId(10));
        assert_eq!(g2.recv().await.unwrap().conns, vec![ConnId(20)]);
        assert!(g1.try_recv().is_err(), "the sending connection is skipped");
        // Its only connection skipped, a user gets nothing at all.
        push.unbind(UserId(7), ConnId(20));
        assert_eq!(push.signal_user(UserId(7), &f, Some(ConnId(10))), 0);
        assert!(g1.try_recv().is_err() && g2.try_recv().is_err());
    }

    #[test]
    fn connections_are_grouped_by_gateway_in_their_order() {
        let t = |gw, conn| (GatewayId(gw), ConnId(conn));
        let mut targets = vec![t(2, 5), t(1, 9), t(2, 3), t(1, 1), t(3, 7)];
        let groups: Vec<_> = by_gateway(&mut targets).collect();
        let conns = |c: &[u64]| c.iter().copied().map(ConnId).collect::<Vec<_>>();
        assert_eq!(
            groups,
            vec![
                (GatewayId(1), conns(&[9, 1])),
                (GatewayId(2), conns(&[5, 3])),
                (GatewayId(3), conns(&[7])),
            ]
        );
        assert_eq!(by_gateway(&mut []).count(), 0);
    }

    #[tokio::test]
    async fn a_session_end_reaches_the_gateways_of_the_named_device_only() {
        let push = Push::new(PushConfig::default());
        let mut g1 = push.attach_gateway(GatewayId(1));
        let mut g2 = push.attach_gateway(GatewayId(2));
        let at = |conn, gw, dev: &str| Session {
            conn: ConnId(conn),
            gateway: GatewayId(gw),
            device: DeviceId::parse(dev).unwrap(),
        };
        push.bind(UserId(7), at(10, 1, "phone"));
        push.bind(UserId(7), at(20, 2, "laptop"));
        let end = SessionEnd {
            user: UserId(7),
            device: DeviceId::parse("phone"),
            keep: None,
            why: EndReason::LoggedOut,
        };
        push.end_sessions(&end).await;
        let d = g1.recv().await.unwrap();
        assert_eq!(d.conns, vec![ConnId(10)]);
        assert_eq!(SessionEnd::from_frame(&d.frame), Some(end.clone()));
        assert!(g2.try_recv().is_err(), "the laptop's gateway is not told");
        // A full gateway queue is waited on, not skipped.
        let small = Arc::new(Push::new(PushConfig {
            gateway_queue: 1,
            ..Default::default()
        }));
        let mut q = small.attach_gateway(GatewayId(1));
        small.bind(UserId(7), at(10, 1, "phone"));
        small.signal_user(UserId(7), &Frame::request(4, 0, &b"{}"[..]), None);
        let waiting = tokio::spawn({
            let small = small.clone();
            let end = end.clone();
            async move { small.end_sessions(&end).await }
        });
        assert_eq!(q.recv().await.unwrap().frame.cmd, 4);
        assert_eq!(
            q.recv().await.unwrap().frame.cmd,
            xinge_proto::cmd::END_SESSIONS
        );
        waiting.await.unwrap();
        // The devices: both were connected; the phone's connection ended.
        push.unbind(UserId(7), ConnId(10));
        let seen = push.devices(UserId(7)).await;
        let names: Vec<_> = seen.iter().map(|d| (d.device.as_str(), d.online)).collect();
        assert_eq!(names, vec![("laptop", true), ("phone", false)]);
        assert!(seen[1].last_seen_ms > 0);
        assert!(push.devices(UserId(8)).await.is_empty());
    }

    #[test]
    fn sessions_per_user_are_bounded() {
        let push = Push::new(PushConfig {
            max_sessions_per_user: 2,
            ..Default::default()
        });
        for c in 0..5 {
            push.bind(UserId(1), session(c, 1));
        }
        let conns: Vec<_> = push.sessions(UserId(1)).iter().map(|s| s.conn.0).collect();
        assert_eq!(conns, vec![3, 4]);
    }
}
