//! Media: resumable uploads (the tus protocol's state; the HTTP of it is the api crate's),
//! the media they become, media messages, and who may download what.
//!
//! An upload is staged in a file and hashed as it streams in; when its last byte is there
//! it is looked at (type sniffed from the bytes; an image decoded under limits, its
//! metadata stripped and a thumbnail made), recorded with a reference on its blob, and the
//! staged file becomes the blob — unless a blob with those bytes exists, which is then
//! shared. Media ids, not hashes, are what users see, so sharing a blob tells nobody that
//! somebody else has the same file.
//!
//! Who may download: the uploader; and a member of a conversation where a message that
//! still carries the media was sent, from the part of the timeline they can read. A
//! download URL names that message and is checked again at each use, so a recall, an
//! admin delete, leaving the group or a ban ends access at once.

use crate::{Caller, Logic, Result, error::bad};
use bytes::Bytes;
use futures_util::Stream;
use ring::hmac;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use xinge_core::config::MediaConfig;
use xinge_core::{ConvId, ErrorCode, UserId};
use xinge_media::staging::{AppendError, Checksum, Staging};
use xinge_media::{BlobStore, FsBlobs, picture, sniff};
use xinge_proto::api::{MediaView, MessageBody, UploadStatus};
use xinge_store::{MediaRecord, StoreError, UploadRecord};

/// `Upload-Metadata` kept at most.
pub const MAX_METADATA: usize = 4096;
/// A file name kept at most (bytes).
const MAX_NAME: usize = 255;
/// Stripes of the blob locks.
const BLOB_LOCKS: usize = 64;
/// Expired uploads and unreferenced blobs collected per round.
const GC_BATCH: usize = 500;

pub(crate) struct Media {
    pub(crate) blobs: Arc<dyn BlobStore>,
    staging: Staging,
    thumbs: Arc<tokio::sync::Semaphore>,
    /// Locks by blob, striped: held while a finished upload takes a reference and puts
    /// its blob, and while the collector forgets a blob and deletes its bytes, so that
    /// in one process a blob is never deleted under an upload of the same bytes.
    blob_locks: Vec<tokio::sync::Mutex<()>>,
    url_key: hmac::Key,
}

fn io(e: std::io::Error) -> crate::Error {
    crate::Error::Store(StoreError::Backend(format!("media: {e}")))
}

fn no_media() -> crate::Error {
    // Whether it exists is none of their business.
    bad(ErrorCode::NotFound, "no such media")
}

fn no_upload() -> crate::Error {
    bad(ErrorCode::NotFound, "no such upload (or it has expired)")
}

/// A random, unguessable id: 128 bits in hex.
fn new_id() -> String {
    xinge_media::hex(&rand::random::<[u8; 16]>())
}

fn is_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

pub use xinge_media::parse_metadata;

fn meta<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// A file name as it is kept: its last path component, without control characters,
/// bounded.
fn clean_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut out: String = base.chars().filter(|c| !c.is_control()).collect();
    while out.len() > MAX_NAME {
        out.pop();
    }
    (!out.is_empty() && out != "." && out != "..").then_some(out)
}

/// An upload's progress as the protocol tells it, with its media once complete.
pub fn status(up: &UploadRecord, media: Option<MediaView>) -> UploadStatus {
    UploadStatus {
        offset: up.offset,
        length: up.length,
        expires_ms: up.expires_ms,
        metadata: up.metadata.clone(),
        media,
    }
}

pub fn view(m: &MediaRecord) -> MediaView {
    MediaView {
        id: m.id.clone(),
        kind: m.kind.clone(),
        mime: m.mime.clone(),
        size: m.size,
        name: m.name.clone(),
        width: m.width,
        height: m.height,
        duration_ms: m.duration_ms,
        thumb: m.thumb.is_some(),
    }
}

/// What a download serves.
pub struct Download {
    pub hash: String,
    pub size: u64,
    pub mime: String,
    /// `Content-Disposition`.
    pub disposition: String,
    /// Seconds the URL has left (for `Cache-Control`).
    pub max_age: u64,
}

/// What a download URL grants, and its signature: the HTTP layer spells it as a URL and
/// reads it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The conversation and message the access comes from ("" and 0 for the uploader).
    pub conv: String,
    pub seq: u64,
    pub user: u64,
    pub expires_ms: u64,
    /// Hex HMAC-SHA256 of the rest, with the media id and variant.
    pub sig: String,
}

impl Grant {
    /// What the signature covers.
    fn text(&self, id: &str, variant: &str) -> String {
        format!(
            "{id}\n{variant}\n{}\n{}\n{}\n{}",
            self.conv, self.seq, self.user, self.expires_ms
        )
    }
}

impl Media {
    pub(crate) fn new(
        cfg: &xinge_core::config::Config,
        token_secret: &[u8],
    ) -> std::result::Result<Self, String> {
        let m = &cfg.media;
        let root = cfg.server.data_dir.join("media");
        let blobs: Arc<dyn BlobStore> = match &m.s3 {
            Some(s) => {
                let s3 = xinge_media::s3::S3Blobs::new(s).map_err(|e| format!("media.s3: {e}"))?;
                Arc::new(s3)
            }
            None => Arc::new(FsBlobs::new(
                m.dir.clone().unwrap_or_else(|| root.join("blobs")),
            )),
        };
        // A key of its own, derived from the token secret: a URL's signature is no token.
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, token_secret),
            b"xinge media download urls",
        );
        Ok(Self {
            blobs,
            staging: Staging::new(
                m.staging_dir
                    .clone()
                    .unwrap_or_else(|| root.join("uploads")),
                m.max_open_uploads,
            )
            .paced(m.upload_bytes_per_sec),
            thumbs: Arc::new(tokio::sync::Semaphore::new(m.thumb_workers)),
            blob_locks: (0..BLOB_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            url_key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        })
    }

    fn sign(&self, id: &str, variant: &str, q: &Grant) -> String {
        let text = q.text(id, variant);
        xinge_media::hex(hmac::sign(&self.url_key, text.as_bytes()).as_ref())
    }

    /// The locks of these blobs, taken in stripe order (so two holders of overlapping
    /// sets cannot deadlock).
    async fn lock_blobs(&self, hashes: &[&str]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let stripe = |h: &str| {
            h.get(..2)
                .and_then(|b| usize::from_str_radix(b, 16).ok())
                .unwrap_or(0)
                % BLOB_LOCKS
        };
        let mut stripes: Vec<usize> = hashes.iter().map(|h| stripe(h)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut held = Vec::with_capacity(stripes.len());
        for i in stripes {
            held.push(self.blob_locks[i].lock().await);
        }
        held
    }

    /// Whether `q.sig` (hex) signs the rest; compared in constant time.
    fn verify(&self, id: &str, variant: &str, q: &Grant) -> bool {
        let text = q.text(id, variant);
        let tag: Option<Vec<u8>> = (q.sig.len() == 64)
            .then(|| {
                (0..64)
                    .step_by(2)
                    .map(|i| u8::from_str_radix(q.sig.get(i..i + 2)?, 16).ok())
                    .collect()
            })
            .flatten();
        tag.is_some_and(|t| hmac::verify(&self.url_key, text.as_bytes(), &t).is_ok())
    }
}

impl Logic {
    fn media_cfg(&self) -> &MediaConfig {
        &self.cfg.media
    }

    /// Starts an upload of `length` bytes (tus creation).
    pub async fn create_upload(
        &self,
        caller: &Caller,
        length: u64,
        metadata: &str,
    ) -> Result<UploadRecord> {
        self.limit(caller.user, crate::limits::Limited::Upload)
            .await?;
        let cfg = self.media_cfg();
        if length > cfg.max_upload_bytes {
            return Err(bad(
                ErrorCode::TooLarge,
                format!("uploads are at most {} bytes", cfg.max_upload_bytes),
            ));
        }
        if metadata.len() > MAX_METADATA || parse_metadata(metadata).is_none() {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "Upload-Metadata must be at most 4096 bytes of `key base64` pairs",
            ));
        }
        self.check_quota(caller.user, length).await?;
        let now = self.cfg.clock.now_ms();
        let up = UploadRecord {
            id: new_id(),
            owner: caller.user,
            length,
            offset: 0,
            metadata: metadata.to_owned(),
            created_ms: now,
            expires_ms: now + cfg.upload_expiry_secs * 1000,
            media: None,
        };
        self.media.staging.create(&up.id).await.map_err(io)?;
        self.store.put_upload(&up).await?;
        metrics::counter!("xinge_uploads_total", "what" => "created").increment(1);
        Ok(up)
    }

    async fn check_quota(&self, user: UserId, more: u64) -> Result<()> {
        let quota = self.media_cfg().quota_bytes;
        if quota > 0 && self.store.media_usage(user).await?.saturating_add(more) > quota {
            return Err(bad(
                ErrorCode::QuotaExceeded,
                format!("your media would be over your quota of {quota} bytes"),
            ));
        }
        Ok(())
    }

    /// The caller's upload that has not expired.
    async fn own_upload(&self, caller: &Caller, id: &str) -> Result<UploadRecord> {
        if !is_id(id) {
            return Err(no_upload());
        }
        match self.store.upload(id).await? {
            Some(up) if up.owner == caller.user && up.expires_ms > self.cfg.clock.now_ms() => {
                Ok(up)
            }
            _ => Err(no_upload()),
        }
    }

    /// An unfinished upload whose bytes this process does not have (staged by another api
    /// process with a staging directory of its own, or lost with a disk) is not found
    /// here: a tus client then starts a new upload, which this process can finish.
    async fn staged_here(&self, up: &UploadRecord) -> Result<()> {
        if up.media.is_none() && !self.media.staging.holds(&up.id).await {
            return Err(bad(
                ErrorCode::NotFound,
                "this upload's bytes are not on this server; start a new upload",
            ));
        }
        Ok(())
    }

    /// An upload's progress (tus HEAD), and its media once complete.
    pub async fn upload_status(&self, caller: &Caller, id: &str) -> Result<UploadStatus> {
        let up = self.own_upload(caller, id).await?;
        self.staged_here(&up).await?;
        let media = match &up.media {
            Some(m) => self.store.media(m).await?.as_ref().map(view),
            None => None,
        };
        Ok(status(&up, media))
    }

    /// Appends a request's bytes at `offset` (tus PATCH). Concurrent appends to one upload
    /// run one after the other; the second then finds the offset moved (`conflict`). In
    /// another process sharing the staging directory, the second is refused at once
    /// (`conflict`) while the first holds the staged file's claim. The
    /// append that brings the last byte finishes the upload: its answer carries the media.
    pub async fn append_upload<E>(
        &self,
        caller: &Caller,
        id: &str,
        offset: u64,
        body: impl Stream<Item = std::result::Result<Bytes, E>>,
        checksum: Option<Checksum>,
    ) -> Result<UploadStatus> {
        self.own_upload(caller, id).await?;
        let state = self.media.staging.state(id).ok_or_else(|| {
            bad(
                ErrorCode::Unavailable,
                "too many uploads in progress; retry soon",
            )
        })?;
        let mut st = state.lock().await;
        // Another process sharing the staging directory may be writing it: claimed until
        // the new offset is recorded (dropped at the end of this function).
        let mut claim = match self.media.staging.claim(id).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(bad(
                    ErrorCode::Conflict,
                    "another request is writing this upload right now",
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Finished meanwhile (409 below, with the offset), or not staged here.
                let up = self.own_upload(caller, id).await?;
                self.staged_here(&up).await?;
                return Err(bad(
                    ErrorCode::Conflict,
                    format!("Upload-Offset must be {}", up.offset),
                ));
            }
            Err(e) => return Err(io(e)),
        };
        // Read again under the lock and the claim: the offset is what the last writer left.
        let mut up = self.own_upload(caller, id).await?;
        if up.media.is_some() || offset != up.offset {
            return Err(bad(
                ErrorCode::Conflict,
                format!("Upload-Offset must be {}", up.offset),
            ));
        }
        let at = self
            .media
            .staging
            .append(&mut claim, &mut st, offset, up.length, body, checksum)
            .await;
        let at = match at {
            Ok(at) => at,
            Err(AppendError::Io(e)) => return Err(io(e)),
            Err(AppendError::ChecksumMismatch) => {
                return Err(bad(
                    ErrorCode::ChecksumMismatch,
                    "the bytes do not match Upload-Checksum; none were kept",
                ));
            }
            Err(AppendError::TooLong) => {
                return Err(bad(
                    ErrorCode::TooLarge,
                    "the bytes go past Upload-Length; none were kept",
                ));
            }
            Err(AppendError::Interrupted) => {
                return Err(bad(
                    ErrorCode::BadRequest,
                    "the request ended before its checksum could be checked",
                ));
            }
        };
        metrics::counter!("xinge_upload_bytes_total").increment(at - offset);
        up.offset = at;
        if at < up.length {
            self.store.put_upload(&up).await?;
            return Ok(status(&up, None));
        }
        let finished = self.finish_upload(&up, &mut st).await;
        drop(st);
        match finished {
            Ok(m) => {
                up.media = Some(m.id.clone());
                self.store.put_upload(&up).await?;
                self.media.staging.forget(id);
                metrics::counter!("xinge_uploads_total", "what" => "completed").increment(1);
                Ok(status(&up, Some(view(&m))))
            }
            Err(e) => {
                // The bytes are all there and refused: resuming cannot help.
                self.store.remove_upload(id).await?;
                self.media.staging.remove(id).await.map_err(io)?;
                metrics::counter!("xinge_uploads_total", "what" => "refused").increment(1);
                Err(e)
            }
        }
    }

    /// Cancels an upload (tus termination); its bytes go.
    pub async fn delete_upload(&self, caller: &Caller, id: &str) -> Result<()> {
        let up = self.own_upload(caller, id).await?;
        let state = self.media.staging.state(id);
        let _writer = match &state {
            Some(s) => Some(s.lock().await),
            None => None,
        };
        self.store.remove_upload(&up.id).await?;
        self.media.staging.remove(&up.id).await.map_err(io)
    }

    /// A complete upload becomes media: what it is, its thumbnail, its record and blob.
    async fn finish_upload(
        &self,
        up: &UploadRecord,
        st: &mut xinge_media::staging::State,
    ) -> Result<MediaRecord> {
        let cfg = self.media_cfg();
        let staging = &self.media.staging;
        let path = staging.path(&up.id);
        let mut hash = staging.digest(&up.id, st, up.length).await.map_err(io)?;
        let head = read_head(&path).await.map_err(io)?;
        let sniffed = sniff::mime(&head);
        let pairs = parse_metadata(&up.metadata).unwrap_or_default();
        let hint = meta(&pairs, "kind");
        let unsupported = |what: &str| bad(ErrorCode::UnsupportedMedia, what.to_owned());
        let is_image = matches!(
            sniffed,
            "image/jpeg" | "image/png" | "image/gif" | "image/webp"
        );
        let (kind, mime) = match hint {
            Some("file") => ("file", sniffed),
            Some("voice") if sniff::may_be_voice(sniffed) => ("voice", sniff::as_audio(sniffed)),
            Some("voice") => return Err(unsupported("a voice note must be audio")),
            Some("image") if !is_image => {
                return Err(unsupported("images must be JPEG, PNG, GIF or WebP"));
            }
            Some("video") if !sniffed.starts_with("video/") => {
                return Err(unsupported("not a video"));
            }
            _ if is_image => ("image", sniffed),
            _ if sniffed.starts_with("video/") => ("video", sniffed),
            _ => ("file", sniffed),
        };
        let max = match kind {
            "image" => cfg.max_image_bytes,
            "voice" => cfg.max_voice_bytes,
            _ => cfg.max_upload_bytes,
        };
        if up.length > max {
            return Err(bad(
                ErrorCode::TooLarge,
                format!("{kind}s are at most {max} bytes"),
            ));
        }
        let mut size = up.length;
        let (mut width, mut height, mut thumb) = (None, None, None);
        if kind == "image" {
            let shot = self.look_at_image(&path, mime).await?;
            if let Some((stripped_hash, stripped_len)) = shot.stripped {
                hash = stripped_hash;
                size = stripped_len;
            }
            width = Some(shot.width);
            height = Some(shot.height);
            let thumb_hash =
                xinge_media::hex(ring::digest::digest(&ring::digest::SHA256, &shot.thumb).as_ref());
            thumb = Some((thumb_hash, shot.thumb));
        }
        let duration_ms = match kind {
            // The client's word: nothing here parses audio or video containers.
            "voice" | "video" => meta(&pairs, "duration_ms")
                .and_then(|d| d.parse::<u64>().ok())
                .map(|d| d.min(24 * 3600 * 1000)),
            _ => None,
        };
        self.check_quota(up.owner, size).await?;
        let rec = MediaRecord {
            id: new_id(),
            owner: up.owner,
            hash: hash.clone(),
            size,
            mime: mime.to_owned(),
            kind: kind.to_owned(),
            name: meta(&pairs, "filename")
                .or_else(|| meta(&pairs, "name"))
                .and_then(clean_name),
            width,
            height,
            duration_ms,
            thumb: thumb.as_ref().map(|(h, _)| h.clone()),
            created_ms: self.cfg.clock.now_ms(),
        };
        // The reference first: from then on the collector leaves the blob alone (and in
        // this process it waits for the blob's lock, held until the bytes are in place).
        let blobs: Vec<&str> = rec.blobs().collect();
        let _locked = self.media.lock_blobs(&blobs).await;
        self.store.add_media(&rec).await?;
        let stored = async {
            self.media.blobs.put_file(&hash, &path).await?;
            if let Some((h, bytes)) = thumb {
                self.media.blobs.put_bytes(&h, Bytes::from(bytes)).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        if let Err(e) = stored.await {
            self.store
                .remove_media(&rec.id, self.cfg.clock.now_ms())
                .await?;
            return Err(io(e));
        }
        Ok(rec)
    }

    /// An image's dimensions and thumbnail, made in the bounded pool; if it carried
    /// metadata, the staged file is replaced by the file without it (hashed anew: the
    /// only second pass, and only over an image).
    async fn look_at_image(&self, path: &std::path::Path, mime: &str) -> Result<Looked> {
        let _permit = self
            .media
            .thumbs
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| bad(ErrorCode::Unavailable, "shutting down"))?;
        let cfg = self.media_cfg();
        let limits = picture::Limits::for_pixels(cfg.max_image_pixels, cfg.max_image_side);
        let (thumb_px, path, mime) = (cfg.thumb_px, path.to_path_buf(), mime.to_owned());
        let started = std::time::Instant::now();
        let looked = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let bytes = std::fs::read(&path)?;
            let stripped = match picture::strip_metadata(&mime, &bytes) {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            let shown = stripped.as_deref().unwrap_or(&bytes);
            let inspected = match picture::inspect(shown, &limits, thumb_px) {
                Ok(i) => i,
                Err(e) => return Ok(Err(e)),
            };
            let stripped = match stripped {
                Some(s) => {
                    use std::io::Write;
                    let hash =
                        xinge_media::hex(ring::digest::digest(&ring::digest::SHA256, &s).as_ref());
                    let mut f = std::fs::File::create(&path)?;
                    f.write_all(&s)?;
                    f.sync_data()?;
                    Some((hash, s.len() as u64))
                }
                None => None,
            };
            Ok(Ok(Looked {
                width: inspected.width,
                height: inspected.height,
                thumb: inspected.thumb,
                stripped,
            }))
        })
        .await
        .map_err(|e| io(std::io::Error::other(e)))?
        .map_err(io)?;
        metrics::histogram!("xinge_thumbnail_seconds").record(started.elapsed().as_secs_f64());
        looked.map_err(|e| match e {
            picture::PictureError::TooLarge => bad(
                ErrorCode::TooLarge,
                format!(
                    "images are at most {} pixels and {} on a side",
                    cfg.max_image_pixels, cfg.max_image_side
                ),
            ),
            picture::PictureError::Undecodable(_) => {
                bad(ErrorCode::UnsupportedMedia, "the image cannot be decoded")
            }
        })
    }

    /// Replaces a message content's `media` id by the media it names: the sender's own
    /// media only (a forward uploads nothing new but names media the sender can see).
    pub(crate) async fn attach_media(
        &self,
        caller: &Caller,
        content: &mut serde_json::Value,
    ) -> Result<()> {
        let Some(named) = content.get("media") else {
            return Ok(());
        };
        let id = match named {
            serde_json::Value::String(id) => id.clone(),
            serde_json::Value::Object(o) => match o.get("id") {
                Some(serde_json::Value::String(id)) => id.clone(),
                _ => {
                    return Err(bad(
                        ErrorCode::InvalidArgument,
                        "media must name a media id",
                    ));
                }
            },
            _ => return Err(bad(ErrorCode::InvalidArgument, "media must be a media id")),
        };
        let rec = match is_id(&id) {
            true => self.store.media(&id).await?,
            false => None,
        };
        let rec = rec
            .filter(|m| m.owner == caller.user)
            .ok_or_else(no_media)?;
        content["media"] =
            serde_json::to_value(view(&rec)).map_err(|e| io(std::io::Error::other(e)))?;
        Ok(())
    }

    /// The media, if `user` may see it: theirs, or carried by message `seq` of `conv`
    /// in the part of it they can read, not recalled or deleted.
    async fn visible_media(
        &self,
        user: UserId,
        id: &str,
        from: Option<(ConvId, u64)>,
    ) -> Result<MediaRecord> {
        if !is_id(id) {
            return Err(no_media());
        }
        let rec = self.store.media(id).await?.ok_or_else(no_media)?;
        if rec.owner == user {
            return Ok(rec);
        }
        let Some((conv, seq)) = from else {
            return Err(no_media());
        };
        let access = self.access_of(user, conv).await.map_err(|_| no_media())?;
        if seq <= self.visible_from(&access) {
            return Err(no_media());
        }
        let msg = self.store.messages(conv, seq, seq, 1, false).await?;
        let carries = msg.first().is_some_and(|m| match &m.body {
            MessageBody::Content { content } => content["media"]["id"].as_str() == Some(id),
            _ => false,
        });
        if !carries {
            return Err(no_media());
        }
        Ok(rec)
    }

    /// Deletes the caller's own media: messages that carried it show it as gone from then
    /// on, and its bytes go once no other media shares them.
    pub async fn delete_media(&self, caller: &Caller, id: &str) -> Result<()> {
        if !is_id(id) {
            return Err(no_media());
        }
        match self.store.media(id).await? {
            Some(m) if m.owner == caller.user => {
                self.store.remove_media(id, self.cfg.clock.now_ms()).await?;
                Ok(())
            }
            _ => Err(no_media()),
        }
    }

    /// What the media is (for the uploader, or a reader of a message carrying it).
    pub async fn media_info(
        &self,
        caller: &Caller,
        id: &str,
        from: Option<(ConvId, u64)>,
    ) -> Result<MediaView> {
        Ok(view(&self.visible_media(caller.user, id, from).await?))
    }

    /// A signed grant to download the original or the thumbnail (a URL, once the HTTP
    /// layer spells it).
    pub async fn media_url(
        &self,
        caller: &Caller,
        id: &str,
        variant: &str,
        from: Option<(ConvId, u64)>,
    ) -> Result<Grant> {
        let rec = self.visible_media(caller.user, id, from).await?;
        match variant {
            "original" => {}
            "thumb" if rec.thumb.is_some() => {}
            "thumb" => return Err(bad(ErrorCode::NotFound, "this media has no thumbnail")),
            _ => {
                return Err(bad(
                    ErrorCode::InvalidArgument,
                    "variant is `original` or `thumb`",
                ));
            }
        }
        let exp = self.cfg.clock.now_ms() + self.media_cfg().url_ttl_secs * 1000;
        let (conv, seq) = match from {
            Some((c, s)) => (c.to_string(), s),
            None => (String::new(), 0),
        };
        let mut grant = Grant {
            conv,
            seq,
            user: caller.user.0,
            expires_ms: exp,
            sig: String::new(),
        };
        grant.sig = self.media.sign(id, variant, &grant);
        Ok(grant)
    }

    /// What a signed grant serves, checked: the signature, the expiry, and the access
    /// itself again (the user not banned, the message still carrying the media).
    pub async fn media_download(&self, id: &str, variant: &str, q: &Grant) -> Result<Download> {
        let now = self.cfg.clock.now_ms();
        if !self.media.verify(id, variant, q) || q.expires_ms <= now {
            return Err(bad(
                ErrorCode::Forbidden,
                "the link is not valid (or has expired)",
            ));
        }
        let user = UserId(q.user);
        match self.store.user(user).await? {
            Some(u) if !u.banned => {}
            _ => return Err(bad(ErrorCode::Forbidden, "the link is not valid")),
        }
        let from = match q.conv.as_str() {
            "" => None,
            c => Some((c.parse::<ConvId>().map_err(|_| no_media())?, q.seq)),
        };
        let rec = self.visible_media(user, id, from).await?;
        let (hash, mime, size) = match variant {
            "thumb" => {
                let h = rec.thumb.clone().ok_or_else(no_media)?;
                let size = self
                    .media
                    .blobs
                    .len(&h)
                    .await
                    .map_err(io)?
                    .ok_or_else(no_media)?;
                (h, "image/jpeg".to_owned(), size)
            }
            _ => (rec.hash.clone(), rec.mime.clone(), rec.size),
        };
        let inline = variant == "thumb" || matches!(rec.kind.as_str(), "image" | "video" | "voice");
        let name = rec.name.as_deref().unwrap_or("file");
        Ok(Download {
            hash,
            size,
            mime,
            disposition: disposition(inline, name),
            max_age: q.expires_ms.saturating_sub(now) / 1000,
        })
    }

    /// A blob's bytes in `range`.
    pub async fn media_bytes(
        &self,
        hash: &str,
        range: Range<u64>,
    ) -> Result<xinge_media::blob::ByteStream> {
        self.media.blobs.read(hash, range).await.map_err(io)
    }

    /// Removes expired uploads and blobs unreferenced for longer than the grace time, in
    /// rounds, until the process ends.
    pub async fn run_media_gc(self: Arc<Self>) {
        let every = Duration::from_secs(self.media_cfg().gc_every_secs);
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = self.collect_media().await {
                tracing::warn!(error = %e, "media collection failed; retrying next round");
            }
        }
    }

    /// One round of collection; returns (uploads, blobs) removed.
    pub async fn collect_media(&self) -> Result<(usize, usize)> {
        let now = self.cfg.clock.now_ms();
        let mut uploads = 0;
        for up in self.store.expired_uploads(now, GC_BATCH).await? {
            self.media.staging.remove(&up.id).await.map_err(io)?;
            self.store.remove_upload(&up.id).await?;
            uploads += 1;
        }
        // Staged files this process holds for uploads whose records another process
        // removed (in one process the loop above removed them already).
        let expiry = Duration::from_secs(self.media_cfg().upload_expiry_secs);
        uploads += self
            .media
            .staging
            .sweep(expiry, GC_BATCH)
            .await
            .map_err(io)?;
        let before = now.saturating_sub(self.media_cfg().blob_grace_secs * 1000);
        let mut blobs = 0;
        for hash in self.store.unreferenced_blobs(before, GC_BATCH).await? {
            let _locked = self.media.lock_blobs(&[&hash]).await;
            if self.store.forget_blob(&hash).await? {
                self.media.blobs.delete(&hash).await.map_err(io)?;
                blobs += 1;
            }
        }
        metrics::counter!("xinge_media_collected_total", "what" => "uploads")
            .increment(uploads as u64);
        metrics::counter!("xinge_media_collected_total", "what" => "blobs").increment(blobs as u64);
        Ok((uploads, blobs))
    }
}

struct Looked {
    width: u32,
    height: u32,
    thumb: Vec<u8>,
    /// The hash and length of the file without its metadata, if it had any.
    stripped: Option<(String, u64)>,
}

async fn read_head(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let f = tokio::fs::File::open(path).await?;
    let mut head = Vec::with_capacity(sniff::SNIFF_LEN);
    f.take(sniff::SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .await?;
    Ok(head)
}

/// `Content-Disposition` with the name both as plain ASCII and RFC 8187-encoded.
fn disposition(inline: bool, name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let how = if inline { "inline" } else { "attachment" };
    format!("{how}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_paths_and_control_characters() {
        assert_eq!(clean_name("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(clean_name("C:\\x\\a\u{0}b.txt").as_deref(), Some("ab.txt"));
        assert_eq!(clean_name(".."), None);
        assert_eq!(clean_name(&"é".repeat(300)).map(|n| n.len()), Some(254));
        assert_eq!(
            disposition(false, "résumé \"1\".pdf"),
            "attachment; filename=\"r_sum_ _1_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%221%22.pdf"
        );
    }
}
