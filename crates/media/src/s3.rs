//! Blobs in an S3 bucket (or any S3-compatible store), for a cluster: every api process
//! reads and writes the same bucket. Objects are `<prefix>/<first two hex digits>/<hash>`.
//! A small blob is one conditional PUT (`If-None-Match: *`, so an existing blob is never
//! rewritten); a large one goes up as a multipart upload after a HEAD finds it absent —
//! two processes racing on the same new blob both write the same bytes, which is harmless
//! because the name is the bytes' hash.

use crate::blob::{BlobStore, ByteStream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetRange, ObjectStore, PutMode, PutOptions, PutPayload, WriteMultipart,
};
use std::io;
use std::ops::Range;
use std::path::Path;
use tokio::io::AsyncReadExt;
use xinge_core::config::S3Config;

pub struct S3Blobs {
    store: AmazonS3,
    prefix: String,
}

/// Blobs up to this size are one PUT; larger ones a multipart upload of parts this size.
const PART: usize = 8 << 20;
/// Parts in flight at once per multipart upload.
const PARTS_IN_FLIGHT: usize = 4;

fn other(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        e => io::Error::other(e),
    }
}

impl S3Blobs {
    /// The bucket `s` names; credentials not given there come from the usual `AWS_*`
    /// environment variables.
    pub fn new(s: &S3Config) -> io::Result<Self> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_allow_http(s.allow_http);
        if let Some(e) = &s.endpoint {
            // Path-style addressing: a local or self-hosted server has no bucket DNS names.
            b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
        }
        if let Some(k) = &s.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &s.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        let store = b.build().map_err(io::Error::other)?;
        Ok(Self {
            store,
            prefix: s.prefix.trim_matches('/').to_owned(),
        })
    }

    fn path(&self, hash: &str) -> io::Result<ObjectPath> {
        if !crate::is_hash(hash) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a blob name",
            ));
        }
        let key = match self.prefix.as_str() {
            "" => format!("{}/{hash}", &hash[..2]),
            p => format!("{p}/{}/{hash}", &hash[..2]),
        };
        Ok(ObjectPath::from(key))
    }

    /// A conditional PUT; false if the object exists.
    async fn create(&self, path: &ObjectPath, bytes: Bytes) -> io::Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from_bytes(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(other(e)),
        }
    }

    async fn multipart(&self, path: &ObjectPath, staged: &Path) -> io::Result<()> {
        let upload = self.store.put_multipart(path).await.map_err(other)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut f = tokio::fs::File::open(staged).await?;
        let mut buf = vec![0; 1 << 20];
        let sent = async {
            loop {
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, io::Error>(());
                }
                w.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(other)?;
                w.write(&buf[..n]);
            }
        }
        .await;
        match sent {
            Ok(()) => w.finish().await.map(drop).map_err(other),
            Err(e) => {
                // Parts already sent are not left to be billed for.
                let _ = w.abort().await;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl BlobStore for S3Blobs {
    async fn put_file(&self, hash: &str, staged: &Path) -> io::Result<bool> {
        let path = self.path(hash)?;
        let len = tokio::fs::metadata(staged).await?.len();
        let new = if len <= PART as u64 {
            let bytes = tokio::fs::read(staged).await?;
            self.create(&path, Bytes::from(bytes)).await?
        } else if self.len(hash).await?.is_some() {
            false
        } else {
            self.multipart(&path, staged).await?;
            true
        };
        tokio::fs::remove_file(staged).await?;
        Ok(new)
    }

    async fn put_bytes(&self, hash: &str, bytes: Bytes) -> io::Result<bool> {
        let path = self.path(hash)?;
        self.create(&path, bytes).await
    }

    async fn len(&self, hash: &str) -> io::Result<Option<u64>> {
        match self.store.head(&self.path(hash)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(other(e)),
        }
    }

    async fn read(&self, hash: &str, range: Range<u64>) -> io::Result<ByteStream> {
        let path = self.path(hash)?;
        if range.start >= range.end {
            // S3 has no empty range; the object must still exist.
            self.store.head(&path).await.map_err(other)?;
            return Ok(futures_util::stream::empty().boxed());
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..Default::default()
        };
        let got = self.store.get_opts(&path, opts).await.map_err(other)?;
        Ok(got.into_stream().map_err(other).boxed())
    }

    async fn delete(&self, hash: &str) -> io::Result<()> {
        match self.store.delete(&self.path(hash)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(other(e)),
        }
    }
}
