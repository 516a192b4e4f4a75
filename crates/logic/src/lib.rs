//! The IM layer: accounts, friends, 1:1 chat and groups, inboxes, conversations, read
//! state and presence. Stateless over the store: everything it knows is in the [`Store`];
//! after each commit it hands the new inbox entries to the push layer as signals.
//!
//! ```text
//! error.rs          Error: a refusal or a store failure, mapped to the wire error once
//! token.rs          signed, expiring tokens naming user and device
//! limits.rs         sends and pulls per user: a Limiter trait, token buckets in one process
//! signal.rs         commit, then signal each new inbox entry; coalescing keys
//! access.rs         who may see which conversation, and which part of its timeline
//! account.rs        register, login, logout, profile, authenticate
//! admin.rs          the app's server: create users, issue tokens, ban, devices
//! devices.rs        a user's devices: list, log one out, change the password; ending the
//!                   long connections of a device whose access ended
//! friend.rs         requests, accept/decline, remove, block
//! hooks.rs          webhooks to the app's server: the before-send hook, signing
//! events.rs         events after the fact: the outbox each commit writes, its delivery
//! chat.rs           send and recall: drafts appended idempotently by client_msg_id
//! inbox.rs          sync: a device's pull of its inbox (and large groups' heads)
//! conversations.rs  the conversation list, a conversation's history
//! receipts.rs       read cursors and who has read a message
//! presence.rs       typing, presence, friends told of online/offline
//! group/manage.rs   create, join, members, roles, mute, update, dismiss
//! group/signals.rs  the paced "group advanced" signals of large (read fan-out) groups
//! ```
//! Every operation takes the caller's identity first and returns [`Error`]; it reaches the
//! client as an `ApiError` with a stable code, internal failures only as `internal`.

mod access;
mod account;
mod admin;
mod chat;
mod conversations;
mod devices;
mod error;
mod events;
mod friend;
mod group;
pub mod hooks;
mod inbox;
pub mod limits;
pub mod media;
mod notify;
mod presence;
mod receipts;
mod signal;
pub mod token;

pub use admin::FindBy;
pub use error::{Error, Result};
pub use signal::{inbox_signal_body, message_signal_body};

use std::sync::Arc;
use std::time::Duration;
use xinge_core::config::Config;
use xinge_core::{ConnId, UserId};
use xinge_push::Signals;
use xinge_store::Store;

/// Who is calling: the user and device from their token, and the long connection the
/// request came on (none over HTTP).
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: UserId,
    pub device: xinge_core::DeviceId,
    pub origin: Option<ConnId>,
    /// The id of the caller's token (a password changed on this device keeps it valid).
    pub token: u64,
}

pub struct Logic {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) limiter: Arc<dyn limits::Limiter>,
    pub(crate) push: Arc<dyn Signals>,
    pub(crate) cfg: Config,
    pub(crate) tokens: token::TokenSigner,
    /// Group ids: time-ordered and unique across processes (node id inside).
    pub(crate) ids: xinge_core::idgen::IdGen,
    pub(crate) group_signals: group::GroupSignals,
    /// Password hashes computed at once (see `Logic::hash_off_runtime`).
    pub(crate) hashing: Arc<tokio::sync::Semaphore>,
    /// What a login for an unknown username is checked against (see `Logic::login`).
    pub(crate) decoy: tokio::sync::OnceCell<String>,
    /// The webhooks to the app's server, if any is configured.
    pub(crate) hooks: Option<hooks::Hooks>,
    /// The after-events webhook's outbox, if configured.
    pub(crate) outbox: Option<events::Outbox>,
    /// Offline push, if a provider is configured.
    pub(crate) notify: Option<notify::Notify>,
    /// Uploads and media bytes.
    pub(crate) media: media::Media,
}

impl Logic {
    /// The IM layer with per-user limits kept in this process. An error if a configured
    /// push provider's key cannot be used.
    pub fn new(
        store: Arc<dyn Store>,
        push: Arc<dyn Signals>,
        cfg: Config,
        token_secret: Vec<u8>,
    ) -> std::result::Result<Arc<Self>, String> {
        let limiter = Arc::new(limits::LocalLimiter::new(&cfg.limits, cfg.clock.clone()));
        Self::with_limiter(store, push, limiter, cfg, token_secret)
    }

    /// The IM layer with a given limiter (the distributed api shares one in Redis).
    pub fn with_limiter(
        store: Arc<dyn Store>,
        push: Arc<dyn Signals>,
        limiter: Arc<dyn limits::Limiter>,
        cfg: Config,
        token_secret: Vec<u8>,
    ) -> std::result::Result<Arc<Self>, String> {
        Ok(Arc::new(Self {
            store,
            limiter,
            push,
            ids: xinge_core::idgen::IdGen::new(cfg.server.node_id),
            group_signals: group::GroupSignals::new(
                Duration::from_millis(cfg.chat.group_signal_window_ms),
                cfg.chat.group_signal_rate,
            ),
            hashing: Arc::new(tokio::sync::Semaphore::new(account::hashing_permits())),
            decoy: tokio::sync::OnceCell::new(),
            hooks: hooks::Hooks::new(&cfg.webhooks),
            outbox: events::Outbox::new(&cfg.webhooks),
            notify: notify::Notify::new(&cfg)?,
            media: media::Media::new(&cfg, &token_secret)?,
            cfg,
            tokens: token::TokenSigner::new(token_secret),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
}
