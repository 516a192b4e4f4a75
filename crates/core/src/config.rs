//! The one typed configuration. Read from a TOML file (every field optional), then the
//! command line and `XINGE_*` variables override the addresses and the data directory.
//! Every default works on a laptop: loopback addresses and a `./data` directory.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub chat: ChatConfig,
    pub gateway: GatewayConfig,
    pub store: StoreConfig,
    pub cluster: ClusterConfig,
    /// Connection admission at the route service.
    pub route: AdmissionConfig,
    pub limits: LimitsConfig,
    pub tls: TlsConfig,
    pub admin: AdminConfig,
    pub webhooks: WebhooksConfig,
    pub notify: NotifyConfig,
    pub media: MediaConfig,
    /// The time every layer reads (not configurable: a test that starts a server shares
    /// one with it and moves it forward instead of waiting out a window).
    #[serde(skip)]
    pub clock: crate::clock::Clock,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Node id (0-1023) of this process; it is part of every message and connection id,
    /// so two processes of one deployment must never share it.
    pub node_id: u16,
    /// HTTP API, route service and WebSocket gateway (`/ws`).
    pub http_addr: SocketAddr,
    /// TCP gateway.
    pub tcp_addr: SocketAddr,
    /// Where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// Region and zone this process reports to the route service.
    pub region: String,
    pub zone: String,
    /// Host name clients should use to reach the gateways; defaults to the listen address.
    pub public_host: Option<String>,
    /// Largest HTTP request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// HTTP connections held at once (WebSocket connections on `/ws` included); past this
    /// the server stops accepting until one closes.
    pub max_http_connections: usize,
    /// Time a client has to send a request's headers (also between kept-alive requests);
    /// then the connection is closed. Slowloris protection.
    pub header_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tcp_addr: SocketAddr::from(([127, 0, 0, 1], 8090)),
            data_dir: PathBuf::from("data"),
            region: "local".into(),
            zone: "local-a".into(),
            public_host: None,
            max_body_bytes: 64 * 1024,
            max_http_connections: 19_500,
            header_timeout_secs: 10,
        }
    }
}

/// TLS on this process's listeners: the HTTP port (so also WebSocket on `/ws`) and the TCP
/// gateway port. Off unless both `cert` and `key` are set; then those ports speak TLS only.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, the server's own certificate first.
    pub cert: Option<PathBuf>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Time a new connection has to finish the TLS handshake; then it is closed.
    pub handshake_timeout_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            handshake_timeout_secs: 10,
        }
    }
}

/// The admin API (`/admin/v1/…`), for the app's own server. Off until a key is set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Its own listener: loopback by default, so that only the app's server on the same
    /// host (or through a tunnel) reaches it.
    pub http_addr: SocketAddr,
    /// Serve it on the main HTTP listener instead (`server.http_addr`): for a deployment
    /// whose proxy already restricts `/admin/`.
    pub on_main_listener: bool,
    /// The keys, as `name:sha256` — the key's name (written in the log of every action it
    /// takes) and the hex SHA-256 of the key itself, which is never stored. Several, so
    /// that one can be replaced while the other still works. `xinge admin-key NAME` makes
    /// one. Also `XINGE_ADMIN_KEYS` (comma-separated), added to these.
    pub keys: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            on_main_listener: false,
            keys: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// The configured keys as `(name, sha256)`, or why one is malformed.
    pub fn parsed_keys(&self) -> Result<Vec<(String, [u8; 32])>, ConfigError> {
        self.keys
            .iter()
            .map(|entry| {
                let bad = || {
                    ConfigError::Invalid(format!(
                        "admin.keys: {entry:?} is not NAME:SHA256 (64 hex digits)"
                    ))
                };
                let (name, hex) = entry.split_once(':').ok_or_else(bad)?;
                if name.is_empty() || hex.len() != 64 {
                    return Err(bad());
                }
                let mut hash = [0u8; 32];
                for (i, byte) in hash.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                        .map_err(|_| bad())?;
                }
                Ok((name.to_owned(), hash))
            })
            .collect()
    }
}

/// Webhooks to the app's own server. Every request is signed (HMAC-SHA256 over the
/// timestamp and the exact body) with each of `secrets`: two may be valid at once, so that
/// one can be replaced while receivers still accept the other.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// At least 16 bytes each; required as soon as a hook is set.
    pub secrets: Vec<String>,
    pub before_send: BeforeSendConfig,
    pub after: AfterConfig,
}

/// Events told to the app's server after they happened: written to an outbox in the same
/// store write as the change (so a crash loses none), delivered in batches in the order
/// they were written, at least once, retried with exponential back-off and jitter, and
/// kept as dead letters once the attempts run out.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AfterConfig {
    /// Where to POST; unset, no event is written.
    pub url: Option<String>,
    /// The event types to tell (`message.sent`, `message.recalled`, `message.deleted`,
    /// `group.changed`, `friend.added`, `friend.removed`, `account.created`,
    /// `account.banned`, `account.unbanned`, `account.deleted`, `user.online`,
    /// `user.offline`); empty: all of them but the two `user.` ones, which are told only
    /// when listed.
    pub events: Vec<String>,
    /// Events in one request, at most.
    pub batch: usize,
    pub timeout_ms: u64,
    /// Tries of one batch before its events become dead letters.
    pub max_attempts: u32,
    /// The first retry's wait; each next one doubles, up to `backoff_max_ms`; each is
    /// jittered by up to half.
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
    /// Events the outbox holds at most: past it, new events are dropped (and counted)
    /// rather than let a slow or dead receiver grow it without bound; sends never wait.
    pub max_outbox: u64,
}

impl Default for AfterConfig {
    fn default() -> Self {
        Self {
            url: None,
            events: Vec::new(),
            batch: 100,
            timeout_ms: 5_000,
            max_attempts: 8,
            backoff_ms: 500,
            backoff_max_ms: 60_000,
            max_outbox: 1_000_000,
        }
    }
}

/// Media: resumable uploads, where their bytes are kept, and the limits on them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Where blobs live; `<data_dir>/media/blobs` when unset. Uploads in progress are
    /// staged in `<data_dir>/media/uploads` (the same filesystem, so finishing one is a
    /// rename).
    pub dir: Option<PathBuf>,
    /// Where uploads in progress are staged; `<data_dir>/media/uploads` when unset. On the
    /// same filesystem as `dir` (finishing an upload is a rename there). Both on a disk of
    /// their own keep the uploads' `fsync`s from delaying the store's.
    pub staging_dir: Option<PathBuf>,
    /// The largest upload of any kind (a file or a video).
    pub max_upload_bytes: u64,
    /// The largest image (larger ones may still be sent as files).
    pub max_image_bytes: u64,
    /// The largest voice note.
    pub max_voice_bytes: u64,
    /// An image's width × height at most, and either side at most: larger ones are
    /// refused from their header, before any decoding.
    pub max_image_pixels: u64,
    pub max_image_side: u32,
    /// Thumbnails' long side.
    pub thumb_px: u32,
    /// Thumbnails made at once (each decodes a whole image).
    pub thumb_workers: usize,
    /// Bytes per second all uploads of a process take in together (0: unpaced). Past it
    /// request bodies are read more slowly and TCP slows the clients: uploads at full
    /// speed leave the messages their share of the CPU.
    pub upload_bytes_per_sec: u64,
    /// Bytes of media one user may own (0: no quota).
    pub quota_bytes: u64,
    /// An unfinished upload is removed, bytes and all, this long after it was created.
    pub upload_expiry_secs: u64,
    /// Uploads whose running hash is kept in memory at most (past it an idle one's is
    /// rebuilt from its file when it goes on).
    pub max_open_uploads: usize,
    /// Download URLs are valid this long.
    pub url_ttl_secs: u64,
    /// A blob no media refers to any more is deleted after this long.
    pub blob_grace_secs: u64,
    /// How often expired uploads and unreferenced blobs are looked for.
    pub gc_every_secs: u64,
    /// Blobs in an S3 bucket instead of `dir` (what a cluster's api processes share).
    pub s3: Option<S3Config>,
}

/// An S3 (or S3-compatible) bucket for media blobs. Keys not given here come from the
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` environment variables.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// e.g. `http://127.0.0.1:9000`; unset: AWS.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Key prefix of every blob.
    pub prefix: String,
    /// Allow a plain-http endpoint.
    pub allow_http: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            bucket: String::new(),
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            prefix: "blobs".into(),
            allow_http: false,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            dir: None,
            staging_dir: None,
            max_upload_bytes: 100 << 20,
            max_image_bytes: 20 << 20,
            max_voice_bytes: 10 << 20,
            max_image_pixels: 50_000_000,
            max_image_side: 20_000,
            thumb_px: 320,
            thumb_workers: 2,
            // 64 MiB/s, about 512 Mbit/s: a few percent of a core here (docs/BENCHMARKS.md).
            upload_bytes_per_sec: 64 << 20,
            quota_bytes: 1 << 30,
            upload_expiry_secs: 24 * 3600,
            max_open_uploads: 10_000,
            url_ttl_secs: 600,
            blob_grace_secs: 3600,
            gc_every_secs: 60,
            s3: None,
        }
    }
}

/// Offline push: notifications to the devices of a user that are not connected, or told
/// the server they are in the background, through the providers configured here. With
/// none configured nothing is queued.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// What is notified: `message` (every new message), `mention` (a message that
    /// mentions the user; heard through a mute), `friend_request`.
    pub kinds: Vec<String>,
    /// At most one notification per conversation and device in this window; what arrives
    /// within it is told once, when it ends, with the count.
    pub collapse_ms: u64,
    /// Notifications waiting at most: past it the oldest are dropped (and counted), so a
    /// provider's outage never holds sends up.
    pub max_queue: u64,
    /// Notifications taken from the queue at once.
    pub batch: usize,
    /// Whether notifications show the sender and text (a user may choose otherwise);
    /// otherwise only "New message".
    pub preview: bool,
    /// Whether `@all` breaks through a mute as a mention of the user does.
    pub mention_all_breaks_mute: bool,
    /// Groups with more members than this notify only mentions (a message to a crowd
    /// would otherwise be a notification to each of them).
    pub max_group_members: u64,
    pub apns: Option<ApnsConfig>,
    pub fcm: Option<FcmConfig>,
    pub webpush: Option<WebPushConfig>,
    pub webhook: Option<NotifyWebhookConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            kinds: vec!["message".into(), "mention".into(), "friend_request".into()],
            collapse_ms: 1_000,
            max_queue: 1_000_000,
            batch: 256,
            preview: true,
            mention_all_breaks_mute: true,
            max_group_members: 500,
            apns: None,
            fcm: None,
            webpush: None,
            webhook: None,
        }
    }
}

impl NotifyConfig {
    /// Whether any provider is configured (otherwise nothing is queued).
    pub fn enabled(&self) -> bool {
        self.apns.is_some()
            || self.fcm.is_some()
            || self.webpush.is_some()
            || self.webhook.is_some()
    }
}

/// What every provider client shares: where to reach it, how hard to press it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderLimits {
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Requests per second at most (a token bucket with a second's burst).
    pub per_sec: f64,
    pub timeout_ms: u64,
    /// Tries of one notification on 429 and 5xx answers (waiting as `Retry-After` says, or
    /// backing off) before it is given up on.
    pub max_attempts: u32,
    /// A PEM file of extra root certificates to trust (a local stand-in in tests).
    pub ca_file: Option<PathBuf>,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        Self {
            concurrency: 64,
            per_sec: 5_000.0,
            timeout_ms: 10_000,
            max_attempts: 5,
            ca_file: None,
        }
    }
}

/// Apple Push Notification service, token-based: an ES256 provider key (`.p8`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// The `.p8` key file (PKCS#8 PEM) and its key id, and the team id.
    pub key_file: PathBuf,
    pub key_id: String,
    pub team_id: String,
    #[serde(default = "apns_url")]
    pub url: String,
    #[serde(default = "apns_sandbox_url")]
    pub sandbox_url: String,
    #[serde(default, flatten)]
    pub limits: ProviderLimits,
}

fn apns_url() -> String {
    "https://api.push.apple.com".into()
}

fn apns_sandbox_url() -> String {
    "https://api.sandbox.push.apple.com".into()
}

/// Firebase Cloud Messaging, HTTP v1, with a service account's OAuth2 access token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The service account's JSON key (`project_id`, `client_email`, `private_key`,
    /// `token_uri`).
    pub service_account_file: PathBuf,
    #[serde(default = "fcm_url")]
    pub url: String,
    /// Overrides the key file's `token_uri`.
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default, flatten)]
    pub limits: ProviderLimits,
}

fn fcm_url() -> String {
    "https://fcm.googleapis.com".into()
}

/// Web Push (RFC 8030) with VAPID (RFC 8292) and encrypted payloads (RFC 8291).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// The VAPID key: a P-256 private key, PKCS#8 PEM.
    pub vapid_key_file: PathBuf,
    /// A `mailto:` or `https:` contact for the push services.
    pub subject: String,
    /// How long a push service keeps an undelivered notification.
    #[serde(default = "webpush_ttl")]
    pub ttl_secs: u64,
    /// Whether a subscription may name a loopback, private or link-local address (a local
    /// push service, in tests). Off, such an endpoint is refused at registration: the
    /// endpoint is the user's to choose, and the server would POST to hosts inside its own
    /// network on their behalf.
    #[serde(default)]
    pub allow_private_endpoints: bool,
    #[serde(default, flatten)]
    pub limits: ProviderLimits,
}

fn webpush_ttl() -> u64 {
    86_400
}

/// The app's own push service: each notification POSTed, signed as the other webhooks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyWebhookConfig {
    pub url: String,
    #[serde(default, flatten)]
    pub limits: ProviderLimits,
}

/// A hook asked before a message is stored: it allows it, rejects it (the sender gets
/// `rejected` with the app's reason), or replaces its content.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BeforeSendConfig {
    /// Where to POST; unset, the hook is off.
    pub url: Option<String>,
    /// Which sends ask it: 1:1 messages, group messages.
    pub direct: bool,
    pub group: bool,
    /// How long to wait for the answer.
    pub timeout_ms: u64,
    /// On a timeout, an error or an answer that does not parse: `allow` the message as
    /// it is, or `reject` it (the sender gets `unavailable` and may retry).
    pub on_failure: HookFailure,
}

impl Default for BeforeSendConfig {
    fn default() -> Self {
        Self {
            url: None,
            direct: true,
            group: true,
            timeout_ms: 1000,
            on_failure: HookFailure::Allow,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookFailure {
    #[default]
    Allow,
    Reject,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Secret that signs tokens (at least 32 bytes). When absent, a random one is created
    /// once and kept in `<data_dir>/token.key`, so tokens survive restarts.
    pub token_secret: Option<String>,
    /// How long a login token is valid.
    pub token_ttl_secs: u64,
    /// Argon2id memory cost in KiB (OWASP's minimum is 19,456).
    pub argon2_memory_kib: u32,
    /// Argon2id passes.
    pub argon2_iterations: u32,
    /// Devices one account may be logged in on at once; a login on one more logs out the
    /// device whose login is oldest (its connections are closed).
    pub max_devices: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_secret: None,
            token_ttl_secs: 7 * 24 * 3600,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            max_devices: 32,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Allow 1:1 messages between users who are not friends.
    pub allow_strangers: bool,
    /// How long after sending a sender may recall a message.
    pub recall_window_secs: u64,
    /// Largest message content, in bytes of its JSON form.
    pub max_content_bytes: usize,
    /// Messages up to this size ride inline in the signal; larger ones are pulled.
    pub inline_max_bytes: usize,
    /// Most entries one sync or history call returns.
    pub max_page: usize,
    /// Most conversations listed for one user.
    pub max_conversations: usize,
    /// Groups with at most this many members use write fan-out (an inbox entry per
    /// member); larger ones read fan-out (members pull the group timeline).
    pub fanout_threshold: u64,
    /// Largest group.
    pub max_group_members: u64,
    /// Whether a new group member may read the history from before they joined.
    pub group_full_history: bool,
    /// "Group advanced" signals of large groups are coalesced over this window.
    pub group_signal_window_ms: u64,
    /// Large groups' signals sent per second at most, over all groups (0: as fast as the
    /// process can). A fan-out faster than this is spread out, and what a member misses
    /// meanwhile rides in its next signal.
    pub group_signal_rate: u64,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            allow_strangers: false,
            recall_window_secs: 120,
            max_content_bytes: 16 * 1024,
            inline_max_bytes: 2 * 1024,
            max_page: 500,
            max_conversations: 1_000,
            fanout_threshold: 500,
            max_group_members: 100_000,
            group_full_history: false,
            group_signal_window_ms: 50,
            group_signal_rate: 50_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// A connection that sends nothing (not even a heartbeat) for this long is closed.
    pub heartbeat_timeout_secs: u32,
    /// Time a new connection has to authenticate.
    pub auth_timeout_secs: u32,
    /// Frames waiting to be written to one connection; past this the client is too slow and
    /// is disconnected (it catches up by pull after reconnecting).
    pub send_queue: usize,
    /// Largest frame accepted from a client, in bytes.
    pub max_frame_bytes: usize,
    /// Most connections this gateway holds at once; more are refused with `unavailable`.
    pub max_connections: usize,
    /// New connections per source IP and in all, before authentication.
    pub admission: AdmissionConfig,
    /// Frames one user may send per second over all their connections to this gateway.
    /// Past it the gateway stops reading that user's connections until the rate allows:
    /// TCP's own flow control slows the client down, at no cost to anyone else.
    pub frames_per_sec: f64,
    pub frames_burst: f64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout_secs: 90,
            auth_timeout_secs: 10,
            send_queue: 256,
            max_frame_bytes: 64 * 1024,
            max_connections: 19_000,
            admission: AdmissionConfig::default(),
            frames_per_sec: 100.0,
            frames_burst: 400.0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Embedded store: most commits gathered into one durable write (group commit).
    pub max_batch: usize,
    /// Embedded store: commits waiting for the writer; senders wait when it is full.
    pub queue: usize,
    /// Embedded store: while commits overlap (the last durable write carried more than
    /// one), the writer starts the next durable write no sooner than this many
    /// microseconds after the last one began, so that more commits share one fdatasync.
    /// A lone commit is written at once. 0 writes as soon as the writer is free.
    pub commit_interval_us: u64,
    /// Embedded store: a read cursor moved by a 1:1 send is held in memory and written at
    /// most about this many milliseconds later (a crash loses at most that much of such
    /// moves; docs/ARCHITECTURE.md, "Read state"). 0 writes it with its message.
    pub cursor_flush_ms: u64,
    /// Embedded store: each keyspace's memtable (the sorted skiplist every write is
    /// inserted into) is written out as a table at this many MiB. Larger: fewer tables to
    /// compact; smaller: a shallower skiplist, each insert touching fewer cold nodes. Only
    /// keyspaces created afterwards take a new value (fjall keeps it per keyspace).
    pub memtable_mib: u64,
    /// Embedded store: fjall's block cache (data, index and filter blocks of the tables on
    /// disk, shared by every keyspace), in MiB. A block that is not in it is read from the
    /// file and its checksum verified on every read, so a store much larger than the cache
    /// spends its writer's time there; the cache is the larger part of the server's memory
    /// beyond its connections.
    pub cache_mib: u64,
    /// Use PostgreSQL instead of the embedded store, e.g.
    /// `postgres://postgres@127.0.0.1:5432/test` (also `XINGE_POSTGRES_URL`).
    pub postgres_url: Option<String>,
    /// PostgreSQL schema for xinge's tables (created and migrated at start).
    pub postgres_schema: String,
    /// PostgreSQL connections per process.
    pub postgres_pool: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_batch: 256,
            queue: 4_096,
            commit_interval_us: 2_000,
            cursor_flush_ms: 1_000,
            memtable_mib: 64,
            cache_mib: 256,
            postgres_url: None,
            postgres_schema: "xinge".into(),
            postgres_pool: 16,
        }
    }
}

/// Per-user rate limits at the api, so that one user cannot take the server's capacity:
/// token buckets, a burst then a rate. A caller over the limit gets `rate_limited` (HTTP
/// 429 with `retry-after`); the SDK waits and retries with the same `client_msg_id`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub sends_per_sec: f64,
    pub sends_burst: f64,
    /// Inbox syncs and history pages.
    pub pulls_per_sec: f64,
    pub pulls_burst: f64,
    /// Signals to one user (push layer, per push process); past the rate they are
    /// coalesced — newer inbox, group and presence signals replace older ones, typing is
    /// dropped — and released as the rate allows.
    pub signals_per_sec: f64,
    pub signals_burst: f64,
    /// Failed logins for one account, from every address together: a burst, then this
    /// rate. Past it the account's logins are refused with `rate_limited` until a token is
    /// there — the right password too, or guessing would go on. One address alone cannot
    /// empty it: its own limit (below) is slower than this one refills.
    pub login_failures_per_account_per_sec: f64,
    pub login_failures_per_account_burst: f64,
    /// Failed logins from one address, for any accounts.
    pub login_failures_per_ip_per_sec: f64,
    pub login_failures_per_ip_burst: f64,
    /// New accounts from one address.
    pub registrations_per_ip_per_sec: f64,
    pub registrations_per_ip_burst: f64,
    /// New media uploads by one user (`/v1/uploads`).
    pub uploads_per_sec: f64,
    pub uploads_burst: f64,
    /// Users tracked at once per process; past that, idle ones are forgotten, and if none
    /// is idle a new user is not limited until room frees up. The same bound holds for
    /// the accounts and addresses the login and registration limits track.
    pub max_users: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            sends_per_sec: 20.0,
            sends_burst: 100.0,
            pulls_per_sec: 50.0,
            pulls_burst: 200.0,
            signals_per_sec: 200.0,
            signals_burst: 400.0,
            // 20 wrong passwords at once, then one every 6 s (600 an hour).
            login_failures_per_account_per_sec: 1.0 / 6.0,
            login_failures_per_account_burst: 20.0,
            // 10 at once, then one every 10 s: fewer than an account holds, and slower than
            // it refills, so that one stranger cannot lock anybody out.
            login_failures_per_ip_per_sec: 0.1,
            login_failures_per_ip_burst: 10.0,
            // 20 accounts at once, then one a minute.
            registrations_per_ip_per_sec: 1.0 / 60.0,
            registrations_per_ip_burst: 20.0,
            // 30 at once (an album), then one a second.
            uploads_per_sec: 1.0,
            uploads_burst: 30.0,
            max_users: 1_000_000,
        }
    }
}

/// Connection admission, so that a reconnect storm cannot swamp a process, at the route
/// service (`[route]`) and at each gateway (`[gateway.admission]`): token buckets per source IP and in all; a refused
/// client gets `rate_limited` and a retry-after. Per-IP limits are generous because many
/// mobile clients share a carrier's NAT address; the global burst lets a whole gateway's
/// clients come back at once after a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    pub per_ip_per_sec: f64,
    pub per_ip_burst: f64,
    pub global_per_sec: f64,
    pub global_burst: f64,
    /// Source IPs tracked at once; past that, idle ones are forgotten, and if none is idle
    /// a new IP is held to the global limit only.
    pub max_ips: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            per_ip_per_sec: 50.0,
            per_ip_burst: 200.0,
            global_per_sec: 20_000.0,
            global_burst: 50_000.0,
            max_ips: 100_000,
        }
    }
}

/// The engines of the distributed roles (`xinge route|gateway|api|push`); unused by
/// `xinge serve`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server(s) for the bus between roles; several comma-separated for a cluster
    /// (also `XINGE_NATS_URL`).
    pub nats_url: String,
    /// Redis for sessions, presence and gateway load: one URL, or several comma-separated
    /// for a Redis Cluster (also `XINGE_REDIS_URL`).
    pub redis_url: String,
    /// Prefix of every NATS subject, JetStream stream and Redis key, so several
    /// deployments (or test runs) can share engines. Letters, digits, `_` and `-`.
    pub prefix: String,
    /// A session in the registry expires this long after its gateway last refreshed it,
    /// so a dead gateway's sessions go by themselves.
    pub session_ttl_secs: u64,
    /// How often a gateway refreshes its sessions and reports its load.
    pub refresh_secs: u64,
    /// How long a gateway waits for an api process to answer a command.
    pub request_timeout_ms: u64,
    /// Commands one api process handles at once; more wait in NATS.
    pub max_inflight: usize,
    /// JetStream replicas of the push stream (3 on a 3-node NATS cluster).
    pub stream_replicas: usize,
    /// Stream messages (each a pack of up to 64 push events) the stream holds at most; past
    /// that, or past `stream_max_bytes`, new signals are refused and counted (clients
    /// repair by pull).
    pub stream_max_msgs: i64,
    /// Bytes the push stream holds at most.
    pub stream_max_bytes: i64,
    /// How long the push role has to hand a push event on before JetStream redelivers it.
    pub push_ack_wait_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            prefix: "xinge".into(),
            session_ttl_secs: 30,
            refresh_secs: 10,
            request_timeout_ms: 5_000,
            max_inflight: 1_024,
            stream_replicas: 1,
            stream_max_msgs: 1_000_000,
            stream_max_bytes: 1 << 30,
            push_ack_wait_ms: 5_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; a missing `path` gives the defaults.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.server.node_id > crate::idgen::MAX_NODE {
            return bad("server.node_id must be at most 1023");
        }
        if let Some(s) = &self.auth.token_secret
            && s.len() < 32
        {
            return bad("auth.token_secret must be at least 32 bytes");
        }
        if self.gateway.send_queue == 0 || self.store.max_batch == 0 || self.store.queue == 0 {
            return bad("queue sizes must be positive");
        }
        if self.store.commit_interval_us > 100_000 {
            return bad("store.commit_interval_us must be at most 100000");
        }
        if !(1..=1_024).contains(&self.store.memtable_mib) {
            return bad("store.memtable_mib must be 1-1024");
        }
        if !(8..=1_048_576).contains(&self.store.cache_mib) {
            return bad("store.cache_mib must be 8-1048576");
        }
        if self.store.cursor_flush_ms > 60_000 {
            return bad("store.cursor_flush_ms must be at most 60000");
        }
        if self.gateway.heartbeat_timeout_secs == 0 || self.gateway.heartbeat_timeout_secs > 3600 {
            return bad("gateway.heartbeat_timeout_secs must be 1-3600");
        }
        if self.server.max_http_connections == 0 || self.server.header_timeout_secs == 0 {
            return bad(
                "server.max_http_connections and server.header_timeout_secs must be positive",
            );
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls.cert and tls.key go together: set both, or neither");
        }
        if self.tls.handshake_timeout_secs == 0 {
            return bad("tls.handshake_timeout_secs must be positive");
        }
        self.admin.parsed_keys()?;
        let w = &self.webhooks;
        if w.after.batch == 0 || w.after.max_attempts == 0 || w.after.timeout_ms == 0 {
            return bad("webhooks.after: batch, max_attempts and timeout_ms must be positive");
        }
        if (w.before_send.url.is_some() || w.after.url.is_some()) && w.secrets.is_empty() {
            return bad("webhooks.secrets: every webhook is signed; set at least one secret");
        }
        if w.secrets.iter().any(|s| s.len() < 16) {
            return bad("webhooks.secrets must be at least 16 bytes each");
        }
        if w.before_send.timeout_ms == 0 || w.before_send.timeout_ms > 30_000 {
            return bad("webhooks.before_send.timeout_ms must be 1-30000");
        }
        let m = &self.media;
        if m.max_upload_bytes == 0
            || m.thumb_px == 0
            || m.thumb_workers == 0
            || m.max_open_uploads == 0
            || m.url_ttl_secs == 0
            || m.upload_expiry_secs == 0
            || m.gc_every_secs == 0
        {
            return bad(
                "media: max_upload_bytes, thumb_px, thumb_workers, max_open_uploads, url_ttl_secs, \
                 upload_expiry_secs and gc_every_secs must be positive",
            );
        }
        if m.s3.as_ref().is_some_and(|s| s.bucket.is_empty()) {
            return bad("media.s3.bucket must be set");
        }
        let n = &self.notify;
        if n.webhook.is_some() && w.secrets.is_empty() {
            return bad("notify.webhook is signed with webhooks.secrets; set at least one secret");
        }
        if n.batch == 0 || n.max_queue == 0 || n.collapse_ms > 3_600_000 {
            return bad(
                "notify: batch and max_queue must be positive, collapse_ms at most 3600000",
            );
        }
        if let Some(k) = n
            .kinds
            .iter()
            .find(|k| !matches!(k.as_str(), "message" | "mention" | "friend_request"))
        {
            return bad(&format!(
                "notify.kinds: unknown kind {k:?} (message, mention, friend_request)"
            ));
        }
        let limits = [
            n.apns.as_ref().map(|p| &p.limits),
            n.fcm.as_ref().map(|p| &p.limits),
            n.webpush.as_ref().map(|p| &p.limits),
            n.webhook.as_ref().map(|p| &p.limits),
        ];
        if limits.into_iter().flatten().any(|l| {
            l.concurrency == 0
                || l.per_sec.is_nan()
                || l.per_sec <= 0.0
                || l.timeout_ms == 0
                || l.max_attempts == 0
        }) {
            return bad(
                "notify providers: concurrency, per_sec, timeout_ms and max_attempts must be positive",
            );
        }
        let r = &self.route;
        if !(r.per_ip_per_sec > 0.0
            && r.per_ip_burst >= 1.0
            && r.global_per_sec > 0.0
            && r.global_burst >= 1.0
            && r.max_ips > 0)
        {
            return bad("route admission rates must be positive and bursts at least 1");
        }
        let l = &self.limits;
        if !(l.sends_per_sec > 0.0
            && l.sends_burst >= 1.0
            && l.pulls_per_sec > 0.0
            && l.pulls_burst >= 1.0
            && l.max_users > 0)
        {
            return bad("limits: rates must be positive and bursts at least 1");
        }
        let c = &self.cluster;
        if c.prefix.is_empty()
            || c.prefix.len() > 64
            || !c
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return bad("cluster.prefix must be 1-64 letters, digits, '_' or '-'");
        }
        if c.refresh_secs == 0 || c.session_ttl_secs <= c.refresh_secs {
            return bad("cluster.session_ttl_secs must be longer than cluster.refresh_secs > 0");
        }
        if c.max_inflight == 0
            || c.stream_replicas == 0
            || c.stream_max_msgs <= 0
            || c.stream_max_bytes <= 0
        {
            return bad("cluster sizes must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_toml_keeps_defaults() {
        let c: Config = toml::from_str("[chat]\nallow_strangers = true\n").unwrap();
        assert!(c.chat.allow_strangers);
        assert_eq!(c.chat.recall_window_secs, 120);
        assert_eq!(c.server.http_addr.port(), 8080);
        c.validate().unwrap();
    }

    #[test]
    fn tls_is_off_by_default_and_needs_cert_and_key() {
        let c = Config::default();
        assert!(!c.tls.enabled());
        let c: Config = toml::from_str("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n").unwrap();
        assert!(c.tls.enabled());
        c.validate().unwrap();
        let c: Config = toml::from_str("[tls]\ncert = \"c.pem\"\n").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_memtable_size_out_of_range_is_refused() {
        for (mib, ok) in [
            (0, false),
            (1, true),
            (64, true),
            (1_024, true),
            (1_025, false),
        ] {
            let mut c = Config::default();
            c.store.memtable_mib = mib;
            assert_eq!(c.validate().is_ok(), ok, "{mib}");
        }
    }

    #[test]
    fn a_cache_size_out_of_range_is_refused() {
        for (mib, ok) in [
            (0, false),
            (7, false),
            (8, true),
            (256, true),
            (1 << 21, false),
        ] {
            let mut c = Config::default();
            c.store.cache_mib = mib;
            assert_eq!(c.validate().is_ok(), ok, "{mib}");
        }
    }

    #[test]
    fn unknown_fields_are_errors() {
        assert!(toml::from_str::<Config>("[chat]\nallow_strangerz = true\n").is_err());
    }
}
