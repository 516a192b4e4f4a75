//! Blobs: bytes named by their SHA-256, written once, read by range, deleted by the
//! collector when no media refers to them any more.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Where blobs live. Every backend passes the same suite (`tests` below runs it on the
/// filesystem; the S3 backend runs it against a real S3 server process).
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores the file at `staged` as blob `hash`, unless that blob exists; the staged file
    /// is gone afterwards either way. True if the blob is new. Durable when it returns.
    async fn put_file(&self, hash: &str, staged: &Path) -> io::Result<bool>;
    /// Stores `bytes` as blob `hash` unless it exists (thumbnails). True if new.
    async fn put_bytes(&self, hash: &str, bytes: Bytes) -> io::Result<bool>;
    /// The blob's length, or `None` if there is no such blob.
    async fn len(&self, hash: &str) -> io::Result<Option<u64>>;
    /// Bytes `range` of a blob, streamed. `NotFound` if there is no such blob.
    async fn read(&self, hash: &str, range: Range<u64>) -> io::Result<ByteStream>;
    /// Deletes a blob (none is fine).
    async fn delete(&self, hash: &str) -> io::Result<()>;
}

/// Blobs as files under a directory: `<root>/<first two hex digits>/<hash>`, written by
/// renaming a durable staged file into place (the staging directory is on the same
/// filesystem), so a blob is either whole or absent.
pub struct FsBlobs {
    root: PathBuf,
}

/// A read's chunk: large enough that the per-chunk cost (a blocking-pool hop) is small
/// beside the copy.
const READ_CHUNK: usize = 256 * 1024;

impl FsBlobs {
    /// The directory is made with the first blob.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, hash: &str) -> io::Result<PathBuf> {
        if !crate::is_hash(hash) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a blob name",
            ));
        }
        Ok(self.root.join(&hash[..2]).join(hash))
    }

    /// Makes the rename of `path` into its directory durable.
    async fn sync_dir(path: &Path) -> io::Result<()> {
        let dir = path.parent().map(Path::to_path_buf);
        tokio::task::spawn_blocking(move || match dir {
            Some(d) => std::fs::File::open(d)?.sync_all(),
            None => Ok(()),
        })
        .await
        .map_err(io::Error::other)?
    }
}

#[async_trait]
impl BlobStore for FsBlobs {
    async fn put_file(&self, hash: &str, staged: &Path) -> io::Result<bool> {
        let to = self.path(hash)?;
        if tokio::fs::try_exists(&to).await? {
            tokio::fs::remove_file(staged).await?;
            return Ok(false);
        }
        if let Some(dir) = to.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        // The staged file was synced as it was written; the rename makes it the blob.
        tokio::fs::rename(staged, &to).await?;
        Self::sync_dir(&to).await?;
        Ok(true)
    }

    async fn put_bytes(&self, hash: &str, bytes: Bytes) -> io::Result<bool> {
        let to = self.path(hash)?;
        if tokio::fs::try_exists(&to).await? {
            return Ok(false);
        }
        let dir = to.parent().map(Path::to_path_buf).unwrap_or_default();
        tokio::fs::create_dir_all(&dir).await?;
        let tmp = dir.join(format!(".{hash}.{}", std::process::id()));
        let written = tmp.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&written)?;
            f.write_all(&bytes)?;
            f.sync_data()
        })
        .await
        .map_err(io::Error::other)??;
        tokio::fs::rename(&tmp, &to).await?;
        Self::sync_dir(&to).await?;
        Ok(true)
    }

    async fn len(&self, hash: &str) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.path(hash)?).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read(&self, hash: &str, range: Range<u64>) -> io::Result<ByteStream> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut f = tokio::fs::File::open(self.path(hash)?).await?;
        f.seek(io::SeekFrom::Start(range.start)).await?;
        let body = f.take(range.end.saturating_sub(range.start));
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
            body, READ_CHUNK,
        )))
    }

    async fn delete(&self, hash: &str) -> io::Result<()> {
        match tokio::fs::remove_file(self.path(hash)?).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The suite every backend passes (for tests: it panics on the first failure).
#[allow(clippy::unwrap_used)]
pub mod suite {
    use super::*;
    use futures_util::TryStreamExt;

    async fn all(s: &dyn BlobStore, hash: &str, range: Range<u64>) -> Vec<u8> {
        let chunks: Vec<Bytes> = s
            .read(hash, range)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        chunks.concat()
    }

    fn hash_of(b: &[u8]) -> String {
        crate::hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
    }

    /// `scratch`: a directory for staged files.
    pub async fn run(s: &dyn BlobStore, scratch: &Path) {
        // A file, put twice: new once, its bytes by any range, the staged file gone.
        let bytes: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let hash = hash_of(&bytes);
        let staged = scratch.join("a");
        std::fs::write(&staged, &bytes).unwrap();
        assert!(s.put_file(&hash, &staged).await.unwrap());
        assert!(!staged.exists());
        std::fs::write(&staged, &bytes).unwrap();
        assert!(!s.put_file(&hash, &staged).await.unwrap(), "stored once");
        assert!(!staged.exists());
        assert_eq!(s.len(&hash).await.unwrap(), Some(bytes.len() as u64));
        assert_eq!(all(s, &hash, 0..bytes.len() as u64).await, bytes);
        assert_eq!(all(s, &hash, 10..20).await, &bytes[10..20]);
        assert_eq!(all(s, &hash, 300_000..700_000).await, &bytes[300_000..]);
        assert!(all(s, &hash, 5..5).await.is_empty());

        // Small bytes.
        let small = Bytes::from_static(b"thumbnail");
        let sh = hash_of(&small);
        assert!(s.put_bytes(&sh, small.clone()).await.unwrap());
        assert!(!s.put_bytes(&sh, small.clone()).await.unwrap());
        assert_eq!(all(s, &sh, 0..9).await, small);

        // Gone, and gone again; names that are not hashes are refused.
        s.delete(&hash).await.unwrap();
        s.delete(&hash).await.unwrap();
        assert_eq!(s.len(&hash).await.unwrap(), None);
        assert!(s.read(&hash, 0..1).await.is_err());
        assert!(s.len("../../etc/passwd").await.is_err());
        s.delete(&sh).await.unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_filesystem_backend_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FsBlobs::new(dir.path().join("blobs"));
        let scratch = dir.path().join("staging");
        std::fs::create_dir_all(&scratch).unwrap();
        suite::run(&blobs, &scratch).await;
    }
}
