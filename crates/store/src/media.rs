//! Media metadata: resumable uploads in progress, the media they became, and the blobs
//! (content-addressed bytes) media refer to, with a reference count per blob so that one
//! blob serves every upload of the same bytes and is collected when nothing refers to it.
//! The bytes themselves are not here: they are in a blob store (the `xinge-media` crate).

use crate::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use xinge_core::UserId;

/// A resumable (tus) upload that has not expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Random, unguessable; the upload's URL.
    pub id: String,
    pub owner: UserId,
    /// The whole upload's length, declared when it was created.
    pub length: u64,
    /// Bytes received and made durable so far.
    pub offset: u64,
    /// `Upload-Metadata` as the client sent it (bounded by the API).
    pub metadata: String,
    pub created_ms: u64,
    /// Unfinished by then, the upload and its bytes are removed.
    pub expires_ms: u64,
    /// The media it became, once complete.
    pub media: Option<String>,
}

/// A piece of media: one user's upload of some bytes, what they are, and its thumbnail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// Random, unguessable; what messages and URLs name (never the hash, which would tell
    /// a user that somebody else has the same file).
    pub id: String,
    pub owner: UserId,
    /// The blob: lowercase hex SHA-256 of the bytes.
    pub hash: String,
    pub size: u64,
    /// Sniffed from the bytes, not taken from the client.
    pub mime: String,
    /// `image`, `video`, `voice` or `file`.
    pub kind: String,
    pub name: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration_ms: Option<u64>,
    /// The thumbnail's blob (a JPEG), when one was made.
    pub thumb: Option<String>,
    pub created_ms: u64,
}

impl MediaRecord {
    /// The blobs this media holds a reference on.
    pub fn blobs(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.hash.as_str()).chain(self.thumb.as_deref())
    }

    /// What counts against the owner's quota.
    pub fn charged(&self) -> u64 {
        self.size
    }
}

/// Uploads, media and blob references, in the same store as everything else (so a
/// cluster's api processes share them).
#[async_trait]
pub trait MediaStore: Send + Sync {
    /// Writes an upload's record: a new one, or its offset moved.
    async fn put_upload(&self, up: &UploadRecord) -> Result<()>;
    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>>;
    /// Removes an upload's record (none is fine).
    async fn remove_upload(&self, id: &str) -> Result<()>;
    /// Uploads that expired before `now_ms`, soonest expired first.
    async fn expired_uploads(&self, now_ms: u64, limit: usize) -> Result<Vec<UploadRecord>>;
    /// Records new media in one write: the record, a reference on each of its blobs, and
    /// its size added to the owner's usage. `Conflict` if the id exists.
    async fn add_media(&self, m: &MediaRecord) -> Result<()>;
    async fn media(&self, id: &str) -> Result<Option<MediaRecord>>;
    /// Removes media in one write, releasing its references and usage; `None` if there
    /// was none. A blob whose last reference goes is from then on "unreferenced since
    /// `at_ms`".
    async fn remove_media(&self, id: &str, at_ms: u64) -> Result<Option<MediaRecord>>;
    /// Bytes of media the user owns.
    async fn media_usage(&self, owner: UserId) -> Result<u64>;
    /// References on a blob (0 for one never seen or forgotten).
    async fn blob_refs(&self, hash: &str) -> Result<u64>;
    /// Blobs unreferenced since before `before_ms`, longest unreferenced first.
    async fn unreferenced_blobs(&self, before_ms: u64, limit: usize) -> Result<Vec<String>>;
    /// Forgets a blob if it is still unreferenced (true: its bytes may now be deleted).
    async fn forget_blob(&self, hash: &str) -> Result<bool>;
}

/// A blob's reference count, and since when it has had none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRefs {
    pub refs: u64,
    pub unreferenced_ms: Option<u64>,
}
