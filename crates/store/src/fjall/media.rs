//! Media metadata in the embedded store: one keyspace, `media`, its keys told apart by a
//! first byte. Writes go through the writer thread like every other write (so a blob's
//! count and the owner's usage move in the same durable batch as the record); reads go to
//! the keyspace directly.
//!
//! ```text
//! u ++ upload id                → UploadRecord
//! x ++ expires_ms ++ upload id  → ()          uploads by expiry
//! m ++ media id                 → MediaRecord
//! b ++ hash                     → BlobRefs
//! f ++ unreferenced_ms ++ hash  → ()          unreferenced blobs, oldest first
//! q ++ user                     → bytes used
//! ```

use super::tx::{Space, Tx};
use super::writer::Out;
use super::{FjallStore, Spaces, backend, decode, encode, writer};
use crate::media::{BlobRefs, MediaRecord, MediaStore, UploadRecord};
use crate::{Result, StoreError};
use async_trait::async_trait;
use xinge_core::UserId;

pub(crate) enum MediaOp {
    PutUpload(UploadRecord),
    RemoveUpload(String),
    AddMedia(MediaRecord),
    RemoveMedia(String, u64),
    ForgetBlob(String),
}

const SPACE: Space = |s: &Spaces| &s.media;

fn key(kind: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(kind);
    k.extend_from_slice(id.as_bytes());
    k
}

/// `kind ++ ms ++ id`: ordered by time.
fn timed_key(kind: u8, ms: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + id.len());
    k.push(kind);
    k.extend_from_slice(&ms.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn usage_key(user: UserId) -> Vec<u8> {
    let mut k = vec![b'q'];
    k.extend_from_slice(&user.0.to_be_bytes());
    k
}

fn u64_of(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn refs(tx: &Tx<'_>, hash: &str) -> Result<BlobRefs> {
    match tx.get(SPACE, &key(b'b', hash))? {
        Some(v) => decode(&v),
        None => Ok(BlobRefs::default()),
    }
}

fn add_usage(tx: &mut Tx<'_>, user: UserId, delta: i128) -> Result<()> {
    let k = usage_key(user);
    let now = tx.get(SPACE, &k)?.map_or(0, |v| u64_of(&v));
    let next = (i128::from(now) + delta).clamp(0, i128::from(u64::MAX)) as u64;
    tx.put(SPACE, k, next.to_be_bytes().to_vec());
    Ok(())
}

/// One media write, inside the writer's batch.
pub(super) fn apply(tx: &mut Tx<'_>, op: &mut MediaOp) -> Result<Out> {
    match op {
        MediaOp::PutUpload(up) => {
            tx.put(SPACE, key(b'u', &up.id), encode(up));
            tx.put(SPACE, timed_key(b'x', up.expires_ms, &up.id), Vec::new());
            Ok(Out::Unit)
        }
        MediaOp::RemoveUpload(id) => {
            if let Some(v) = tx.get(SPACE, &key(b'u', id))? {
                let up: UploadRecord = decode(&v)?;
                tx.delete(SPACE, timed_key(b'x', up.expires_ms, id));
                tx.delete(SPACE, key(b'u', id));
            }
            Ok(Out::Unit)
        }
        MediaOp::AddMedia(m) => {
            let k = key(b'm', &m.id);
            if tx.get(SPACE, &k)?.is_some() {
                return Err(StoreError::Conflict);
            }
            for hash in m.blobs() {
                let mut r = refs(tx, hash)?;
                if let Some(since) = r.unreferenced_ms.take() {
                    tx.delete(SPACE, timed_key(b'f', since, hash));
                }
                r.refs += 1;
                tx.put(SPACE, key(b'b', hash), encode(&r));
            }
            add_usage(tx, m.owner, i128::from(m.charged()))?;
            tx.put(SPACE, k, encode(m));
            Ok(Out::Unit)
        }
        MediaOp::RemoveMedia(id, at_ms) => {
            let k = key(b'm', id);
            let Some(v) = tx.get(SPACE, &k)? else {
                return Ok(Out::Media(None));
            };
            let m: MediaRecord = decode(&v)?;
            for hash in m.blobs() {
                let mut r = refs(tx, hash)?;
                r.refs = r.refs.saturating_sub(1);
                if r.refs == 0 && r.unreferenced_ms.is_none() {
                    r.unreferenced_ms = Some(*at_ms);
                    tx.put(SPACE, timed_key(b'f', *at_ms, hash), Vec::new());
                }
                tx.put(SPACE, key(b'b', hash), encode(&r));
            }
            add_usage(tx, m.owner, -i128::from(m.charged()))?;
            tx.delete(SPACE, k);
            Ok(Out::Media(Some(Box::new(m))))
        }
        MediaOp::ForgetBlob(hash) => {
            let k = key(b'b', hash);
            let Some(v) = tx.get(SPACE, &k)? else {
                return Ok(Out::Flag(false));
            };
            let r: BlobRefs = decode(&v)?;
            if r.refs > 0 {
                return Ok(Out::Flag(false));
            }
            if let Some(since) = r.unreferenced_ms {
                tx.delete(SPACE, timed_key(b'f', since, hash));
            }
            tx.delete(SPACE, k);
            Ok(Out::Flag(true))
        }
    }
}

fn get<T: serde::de::DeserializeOwned>(s: &Spaces, k: &[u8]) -> Result<Option<T>> {
    match s.media.get(k).map_err(backend)? {
        Some(v) => decode(&v).map(Some),
        None => Ok(None),
    }
}

/// Ids after the `kind ++ ms` part of timed keys below `before_ms`, oldest first.
fn timed_ids(s: &Spaces, kind: u8, before_ms: u64, limit: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for kv in s
        .media
        .range(vec![kind]..timed_key(kind, before_ms, ""))
        .take(limit)
    {
        let (k, _) = kv.into_inner().map_err(backend)?;
        let id = k.get(9..).unwrap_or_default();
        out.push(String::from_utf8(id.to_vec()).map_err(backend)?);
    }
    Ok(out)
}

impl FjallStore {
    async fn media_write(&self, op: MediaOp) -> Result<Out> {
        self.write(writer::Op::Media(op)).await
    }
}

#[async_trait]
impl MediaStore for FjallStore {
    async fn put_upload(&self, up: &UploadRecord) -> Result<()> {
        self.media_write(MediaOp::PutUpload(up.clone()))
            .await
            .map(drop)
    }

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        get(&self.spaces, &key(b'u', id))
    }

    async fn remove_upload(&self, id: &str) -> Result<()> {
        self.media_write(MediaOp::RemoveUpload(id.to_owned()))
            .await
            .map(drop)
    }

    async fn expired_uploads(&self, now_ms: u64, limit: usize) -> Result<Vec<UploadRecord>> {
        let mut out = Vec::new();
        for id in timed_ids(&self.spaces, b'x', now_ms, limit)? {
            if let Some(up) = get(&self.spaces, &key(b'u', &id))? {
                out.push(up);
            }
        }
        Ok(out)
    }

    async fn add_media(&self, m: &MediaRecord) -> Result<()> {
        self.media_write(MediaOp::AddMedia(m.clone()))
            .await
            .map(drop)
    }

    async fn media(&self, id: &str) -> Result<Option<MediaRecord>> {
        get(&self.spaces, &key(b'm', id))
    }

    async fn remove_media(&self, id: &str, at_ms: u64) -> Result<Option<MediaRecord>> {
        match self
            .media_write(MediaOp::RemoveMedia(id.to_owned(), at_ms))
            .await?
        {
            Out::Media(m) => Ok(m.map(|m| *m)),
            _ => Err(backend("unexpected writer answer")),
        }
    }

    async fn media_usage(&self, owner: UserId) -> Result<u64> {
        Ok(self
            .spaces
            .media
            .get(usage_key(owner))
            .map_err(backend)?
            .map_or(0, |v| u64_of(&v)))
    }

    async fn blob_refs(&self, hash: &str) -> Result<u64> {
        Ok(get::<BlobRefs>(&self.spaces, &key(b'b', hash))?.map_or(0, |r| r.refs))
    }

    async fn unreferenced_blobs(&self, before_ms: u64, limit: usize) -> Result<Vec<String>> {
        timed_ids(&self.spaces, b'f', before_ms, limit)
    }

    async fn forget_blob(&self, hash: &str) -> Result<bool> {
        match self
            .media_write(MediaOp::ForgetBlob(hash.to_owned()))
            .await?
        {
            Out::Flag(f) => Ok(f),
            _ => Err(backend("unexpected writer answer")),
        }
    }
}
