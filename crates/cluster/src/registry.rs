//! The session registry, presence and gateway load on Redis.
//!
//! A user's sessions are a sorted set `{u<id>}:sessions` of `gateway:conn:device`, scored
//! by the time each expires. The gateway holding a session refreshes it every
//! `cluster.refresh_secs`; a gateway that dies stops refreshing, and its sessions are gone
//! `cluster.session_ttl_secs` later without anyone cleaning up. The same refresh re-creates
//! everything after a Redis restart (Redis here keeps nothing on disk). Each change is one
//! script on one key's slot, so it works the same on a Redis Cluster.

use crate::presence::PresencePublisher;
use crate::{ClusterError, Names, Redis};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use xinge_core::{ConnId, DeviceId, GatewayId, UserId};
use xinge_push::{DeviceSeen, PresenceChange, Session, Sessions};
use xinge_route::GatewayReport;

/// Last-seen times are kept this long after a user goes offline.
const SEEN_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Registry writes one gateway may have waiting; past that a bind or unbind is dropped and
/// counted (a dropped bind is repaired by the next refresh, a dropped unbind expires).
const WRITE_QUEUE: usize = 65_536;
/// Redis commands one gateway or push process has in flight at once.
const IN_FLIGHT: usize = 64;

const BIND: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return before";

/// Devices whose last disconnection a user's hash remembers; past that it starts afresh.
const DEVICES_SEEN: usize = 64;

const UNBIND: &str = r"
local removed = redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if removed == 1 then
  if redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[5]) then
    redis.call('DEL', KEYS[3])
  end
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[1])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
local left = redis.call('ZCARD', KEYS[1])
if removed == 1 and left == 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0";

const REFRESH: &str = r"
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1";

pub struct Registry {
    redis: Redis,
    names: Names,
    ttl_ms: u64,
    bind: redis::Script,
    unbind: redis::Script,
    refresh: redis::Script,
}

/// How long a connection's background state is kept.
const BACKGROUND_KEPT_MS: u64 = 86_400_000;

/// Connections in the background remembered per user.
const MAX_BACKGROUND: usize = 64;

fn member(s: &Session) -> String {
    format!("{}:{}:{}", s.gateway, s.conn, s.device)
}

fn parse_member(m: &str) -> Option<(GatewayId, ConnId)> {
    let mut it = m.splitn(3, ':');
    let gw = it.next()?.parse().ok()?;
    let conn = it.next()?.parse().ok()?;
    Some((GatewayId(gw), ConnId(conn)))
}

/// Users' live connections, by user: where each is, gateway and connection.
pub type Live = HashMap<UserId, Vec<(GatewayId, ConnId)>>;

impl Registry {
    pub fn new(redis: Redis, names: Names, ttl: Duration) -> Self {
        Self {
            redis,
            names,
            ttl_ms: ttl.as_millis() as u64,
            bind: redis::Script::new(BIND),
            unbind: redis::Script::new(UNBIND),
            refresh: redis::Script::new(REFRESH),
        }
    }

    /// The Redis connection, for other users of the same engine.
    pub fn redis(&self) -> Redis {
        self.redis.clone()
    }

    /// Adds a session; true if the user had none (came online).
    pub async fn bind(&self, user: UserId, s: &Session) -> Result<bool, ClusterError> {
        let now = xinge_core::now_ms();
        let before: u64 = self
            .bind
            .key(self.names.sessions_key(user))
            .arg(now)
            .arg(now + self.ttl_ms)
            .arg(member(s))
            .arg(self.ttl_ms)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(before == 0)
    }

    /// Removes a session; true if it was the user's last (went offline).
    pub async fn unbind(&self, user: UserId, s: &Session) -> Result<bool, ClusterError> {
        let gone: u64 = self
            .unbind
            .key(self.names.sessions_key(user))
            .key(self.names.seen_key(user))
            .key(self.names.devices_seen_key(user))
            .arg(xinge_core::now_ms())
            .arg(member(s))
            .arg(SEEN_TTL_MS)
            .arg(s.device.as_str())
            .arg(DEVICES_SEEN)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(gone == 1)
    }

    async fn refresh_one(&self, user: UserId, s: &Session) -> Result<(), ClusterError> {
        let _: u64 = self
            .refresh
            .key(self.names.sessions_key(user))
            .arg(xinge_core::now_ms() + self.ttl_ms)
            .arg(member(s))
            .arg(self.ttl_ms)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// The live connections of each user (users without one are absent).
    pub async fn sessions(&self, users: &[UserId]) -> Result<Live, ClusterError> {
        let now = xinge_core::now_ms();
        let mut out = Live::new();
        for chunk in users.chunks(IN_FLIGHT) {
            let mut lookups = Vec::with_capacity(chunk.len());
            for &u in chunk {
                let mut conn = self.redis.clone();
                let key = self.names.sessions_key(u);
                lookups.push(async move {
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(key)
                        .arg(now)
                        .arg("+inf")
                        .query_async::<Vec<String>>(&mut conn)
                        .await
                        .map(|found| (u, found))
                });
            }
            for r in futures_util::future::join_all(lookups).await {
                let (u, found) = r?;
                let live: Vec<_> = found.iter().filter_map(|m| parse_member(m)).collect();
                if !live.is_empty() {
                    out.insert(u, live);
                }
            }
        }
        Ok(out)
    }

    /// `(online, last_seen_ms)`, as the push layer's `Signals::presence` answers.
    pub async fn presence(&self, user: UserId) -> Result<(bool, u64), ClusterError> {
        let now = xinge_core::now_ms();
        let mut conn = self.redis.clone();
        let live: u64 = redis::cmd("ZCOUNT")
            .arg(self.names.sessions_key(user))
            .arg(now)
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        if live > 0 {
            return Ok((true, now));
        }
        let seen: Option<u64> = redis::cmd("GET")
            .arg(self.names.seen_key(user))
            .query_async(&mut conn)
            .await?;
        Ok((false, seen.unwrap_or(0)))
    }

    /// Connection `conn` of `user` says its app is in the background (`true`) or not.
    /// Kept a day at most (a connection that ends stays listed, harmlessly: connection ids
    /// are never reused); at most [`MAX_BACKGROUND`] per user, the oldest forgotten.
    pub async fn set_background(
        &self,
        user: UserId,
        conn: ConnId,
        background: bool,
    ) -> Result<(), ClusterError> {
        let key = self.names.background_key(user);
        let now = xinge_core::now_ms();
        let mut c = self.redis.clone();
        let mut pipe = redis::pipe();
        match background {
            true => pipe.cmd("ZADD").arg(&key).arg(now).arg(conn.to_string()),
            false => pipe.cmd("ZREM").arg(&key).arg(conn.to_string()),
        };
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now.saturating_sub(BACKGROUND_KEPT_MS))
            .cmd("ZREMRANGEBYRANK")
            .arg(&key)
            .arg(0)
            .arg(-(MAX_BACKGROUND as i64) - 1)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(BACKGROUND_KEPT_MS)
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    /// The user's devices connected now, then those that were (from when each last
    /// disconnected), each once: what the push layer's `Signals::devices` answers.
    pub async fn devices(&self, user: UserId) -> Result<Vec<DeviceSeen>, ClusterError> {
        let now = xinge_core::now_ms();
        let mut conn = self.redis.clone();
        let (live, seen, background): (Vec<String>, HashMap<String, u64>, Vec<String>) =
            redis::pipe()
                .cmd("ZRANGEBYSCORE")
                .arg(self.names.sessions_key(user))
                .arg(now)
                .arg("+inf")
                .cmd("HGETALL")
                .arg(self.names.devices_seen_key(user))
                .cmd("ZRANGE")
                .arg(self.names.background_key(user))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await?;
        let mut out: Vec<DeviceSeen> = Vec::new();
        for m in &live {
            let mut parts = m.splitn(3, ':');
            let (Some(_), Some(conn), Some(device)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Some(device) = DeviceId::parse(device) else {
                continue;
            };
            let foreground = !background.iter().any(|c| c == conn);
            match out.iter_mut().find(|d| d.device == device) {
                Some(d) => d.foreground |= foreground,
                None => out.push(DeviceSeen {
                    device,
                    online: true,
                    foreground,
                    last_seen_ms: now,
                }),
            }
        }
        for (device, at) in seen {
            let Some(device) = DeviceId::parse(&device) else {
                continue;
            };
            if !out.iter().any(|d| d.device == device) {
                out.push(DeviceSeen {
                    device,
                    online: false,
                    foreground: false,
                    last_seen_ms: at,
                });
            }
        }
        Ok(out)
    }

    /// A gateway's load report, kept for three refresh periods.
    pub async fn report_gateway(
        &self,
        r: &GatewayReport,
        keep: Duration,
    ) -> Result<(), ClusterError> {
        let json = serde_json::to_string(r).unwrap_or_default();
        let mut conn = self.redis.clone();
        redis::cmd("SET")
            .arg(self.names.gateway_key(r.id))
            .arg(json)
            .arg("PX")
            .arg(keep.as_millis() as u64)
            .query_async::<()>(&mut conn)
            .await?;
        redis::cmd("SADD")
            .arg(self.names.gateways_key())
            .arg(r.id.0)
            .query_async::<()>(&mut conn)
            .await?;
        // The list goes too once no gateway has reported for a while.
        redis::cmd("PEXPIRE")
            .arg(self.names.gateways_key())
            .arg(keep.as_millis() as u64 * 10)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Every gateway whose report has not expired; forgets the others.
    pub async fn gateways(&self) -> Result<Vec<GatewayReport>, ClusterError> {
        let mut conn = self.redis.clone();
        let ids: Vec<u16> = redis::cmd("SMEMBERS")
            .arg(self.names.gateways_key())
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|&id| self.names.gateway_key(GatewayId(id)))
            .collect();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut out = Vec::new();
        for (id, v) in ids.into_iter().zip(values) {
            match v.and_then(|j| serde_json::from_str(&j).ok()) {
                Some(r) => out.push(r),
                None => {
                    redis::cmd("SREM")
                        .arg(self.names.gateways_key())
                        .arg(id)
                        .query_async::<()>(&mut conn)
                        .await?;
                }
            }
        }
        Ok(out)
    }
}

// === impl GatewaySessions ===

enum Write {
    Bind(UserId, Session),
    Unbind(UserId, Session),
}

/// The push layer's `Sessions` for a gateway process: keeps its own sessions in memory
/// (to refresh them), and writes binds and unbinds to Redis in order on one task,
/// publishing presence transitions on the presence stream for the api processes.
pub struct GatewaySessions {
    live: Mutex<HashMap<ConnId, (UserId, Session)>>,
    writes: mpsc::Sender<Write>,
}

impl GatewaySessions {
    pub fn start(
        registry: Arc<Registry>,
        presence: PresencePublisher,
        refresh: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel(WRITE_QUEUE);
        let me = Arc::new(Self {
            live: Mutex::new(HashMap::new()),
            writes: tx,
        });
        let reg = registry.clone();
        tokio::spawn(async move {
            while let Some(w) = rx.recv().await {
                let (user, online, r) = match &w {
                    Write::Bind(u, s) => (*u, true, reg.bind(*u, s).await),
                    Write::Unbind(u, s) => (*u, false, reg.unbind(*u, s).await),
                };
                match r {
                    Ok(true) => {
                        let ch = PresenceChange {
                            user,
                            online,
                            at_ms: xinge_core::now_ms(),
                        };
                        presence.publish(&ch).await;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        metrics::counter!("xinge_registry_errors_total").increment(1);
                        tracing::warn!(error = %e, %user, "registry write failed; the refresh repairs it");
                    }
                }
            }
        });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                let Some(me) = weak.upgrade() else { return };
                let all: Vec<(UserId, Session)> = me
                    .live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect();
                drop(me);
                let reg = &registry;
                let failed = futures_util::stream::iter(all)
                    .map(|(u, s)| async move { reg.refresh_one(u, &s).await.is_err() })
                    .buffer_unordered(IN_FLIGHT)
                    .filter(|failed| std::future::ready(*failed))
                    .count()
                    .await;
                if failed > 0 {
                    metrics::counter!("xinge_registry_errors_total").increment(failed as u64);
                    tracing::warn!(failed, "session refresh failed for some sessions");
                }
            }
        });
        me
    }

    fn write(&self, w: Write) {
        if self.writes.try_send(w).is_err() {
            metrics::counter!("xinge_registry_dropped_total").increment(1);
        }
        crate::queues::queue_depth("registry_writes", &self.writes);
    }
}

impl Sessions for GatewaySessions {
    fn bind(&self, user: UserId, session: Session) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.conn, (user, session.clone()));
        self.write(Write::Bind(user, session));
    }

    fn unbind(&self, user: UserId, conn: ConnId) {
        let removed = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn);
        if let Some((_, session)) = removed {
            self.write(Write::Unbind(user, session));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(gw: u16, conn: u64, device: &str) -> Session {
        Session {
            conn: ConnId(conn),
            gateway: GatewayId(gw),
            device: DeviceId::parse(device).unwrap(),
        }
    }

    #[test]
    fn a_session_member_names_where_the_connection_is() {
        let s = session(3, 77, "laptop");
        assert_eq!(member(&s), "3:77:laptop");
        assert_eq!(parse_member(&member(&s)), Some((GatewayId(3), ConnId(77))));
        let top = session(u16::MAX, u64::MAX, "d");
        assert_eq!(
            parse_member(&member(&top)),
            Some((GatewayId(u16::MAX), ConnId(u64::MAX)))
        );
        assert_eq!(
            parse_member("3:77"),
            Some((GatewayId(3), ConnId(77))),
            "no device"
        );
        for bad in ["", "3", "x:1:d", "3:y:d", "65536:1:d", "-1:1:d", "3::d"] {
            assert_eq!(parse_member(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_scripts_touch_only_the_keys_they_are_given() {
        // One script, one slot: each names its keys as KEYS[n] (a user's sessions, and for
        // UNBIND the same user's last-seen keys), never a key built inside the script.
        for (script, keys, args) in [(BIND, 1, 4), (UNBIND, 3, 5), (REFRESH, 1, 3)] {
            let highest = |what: &str| {
                (1..=9)
                    .filter(|i| script.contains(&format!("{what}[{i}]")))
                    .max()
                    .unwrap_or(0)
            };
            assert_eq!(highest("KEYS"), keys, "{script}");
            assert_eq!(highest("ARGV"), args, "{script}");
            assert!(
                !script.contains(".."),
                "no key built by concatenation: {script}"
            );
        }
    }
}
