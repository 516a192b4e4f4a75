//! Names of everything the roles share on the engines, all under `cluster.prefix`.
//!
//! Redis keys carry a hash tag (`{…}`) so that what one script touches lives in one Redis
//! Cluster slot: a user's sessions and last-seen time share `{u<id>}`, and every gateway
//! report shares `{gw}` (one slot: the route service reads them all at once).

use xinge_core::{GatewayId, UserId};

#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// `prefix` is validated by the config: letters, digits, `_` and `-`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Business command `cmd` from a gateway to any api process.
    pub fn command(&self, cmd: u16) -> String {
        format!("{}.cmd.{cmd}", self.prefix)
    }

    pub fn all_commands(&self) -> String {
        format!("{}.cmd.*", self.prefix)
    }

    pub fn auth(&self) -> String {
        format!("{}.auth", self.prefix)
    }

    /// Deliveries for the connections of one gateway: only that gateway listens.
    pub fn gateway(&self, id: GatewayId) -> String {
        format!("{}.gw.{id}", self.prefix)
    }

    /// The subject presence transitions are published on (stored by
    /// [`Self::presence_stream`]).
    pub fn presence(&self) -> String {
        format!("{}.presence", self.prefix)
    }

    pub fn presence_stream(&self) -> String {
        format!("{}_PRESENCE", self.prefix.replace('-', "_").to_uppercase())
    }

    /// The subject push events are published on (stored by [`Self::push_stream`]).
    pub fn push_subject(&self) -> String {
        format!("{}.push", self.prefix)
    }

    pub fn push_stream(&self) -> String {
        format!("{}_PUSH", self.prefix.replace('-', "_").to_uppercase())
    }

    pub fn sessions_key(&self, user: UserId) -> String {
        format!("{}:{{u{user}}}:sessions", self.prefix)
    }

    pub fn seen_key(&self, user: UserId) -> String {
        format!("{}:{{u{user}}}:seen", self.prefix)
    }

    /// When each of a user's devices last disconnected (a hash, same slot as the sessions).
    pub fn devices_seen_key(&self, user: UserId) -> String {
        format!("{}:{{u{user}}}:devseen", self.prefix)
    }

    /// A user's connections whose app is in the background (a sorted set of connection
    /// ids scored by when they said so; same slot as the sessions).
    pub fn background_key(&self, user: UserId) -> String {
        format!("{}:{{u{user}}}:bg", self.prefix)
    }

    /// A user's counter of `what` in rate-limit window `window`.
    pub fn limit_key(&self, user: UserId, what: &str, window: u64) -> String {
        format!("{}:{{u{user}}}:rl:{what}:{window}", self.prefix)
    }

    /// The counter of `what` for `key` (an account's name, an address) in window
    /// `window`. Keys past 64 bytes are cut there: names that long are no account's.
    pub fn key_limit_key(&self, key: &str, what: &str, window: u64) -> String {
        let mut end = key.len().min(64);
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}:{{k:{}}}:rl:{what}:{window}", self.prefix, &key[..end])
    }

    pub fn gateway_key(&self, id: GatewayId) -> String {
        format!("{}:{{gw}}:{id}", self.prefix)
    }

    pub fn gateways_key(&self) -> String {
        format!("{}:{{gw}}:all", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_keys_share_one_cluster_slot() {
        let n = Names::new("t-1");
        assert_eq!(n.sessions_key(UserId(7)), "t-1:{u7}:sessions");
        assert_eq!(n.seen_key(UserId(7)), "t-1:{u7}:seen");
        assert_eq!(n.push_stream(), "T_1_PUSH");
        assert_eq!(n.gateway(GatewayId(3)), "t-1.gw.3");
    }
}
