//! Media in the SDK: resumable uploads by the tus protocol (resumed from the server's
//! offset after a failure; chunk checksums on request), and downloads through signed URLs.

use crate::{ClientError, Http, Result};
use base64::Engine;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use sha2::Digest;
use std::ops::Range;
use xinge_core::ConvId;
use xinge_proto::api::{MediaUrl, MediaView, UploadStatus};

/// An upload made on the server: where it is, and how long it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    /// Its path, `/v1/uploads/<id>`.
    pub path: String,
    pub length: u64,
}

/// Chunks sent per upload request by [`Http::upload`].
pub const DEFAULT_CHUNK: usize = 4 << 20;
/// Failed requests [`Http::upload`] resumes after, in a row, before it gives up.
const RETRIES: u32 = 5;

async fn api_error(resp: reqwest::Response) -> ClientError {
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap_or_default();
    crate::http::refusal(&bytes, || format!("HTTP {status}"))
}

fn header_u64(resp: &reqwest::Response, name: &str) -> Result<u64> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("no {name} in the answer")))
}

fn from_query(from: Option<(ConvId, u64)>) -> String {
    from.map(|(c, s)| format!("conv={c}&seq={s}"))
        .unwrap_or_default()
}

impl Http {
    fn tus(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("tus-resumable", "1.0.0");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    /// Starts an upload of `length` bytes; `metadata` as tus pairs (`filename`,
    /// `filetype`, `kind`, `duration_ms`).
    pub async fn create_upload(&self, length: u64, metadata: &[(&str, &str)]) -> Result<Upload> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let meta: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("{k} {}", b64.encode(v)))
            .collect();
        let resp = self
            .tus(Method::POST, "/v1/uploads")
            .header("upload-length", length)
            .header("upload-metadata", meta.join(","))
            .send()
            .await
            .map_err(crate::http::transport)?;
        if resp.status() != StatusCode::CREATED {
            return Err(api_error(resp).await);
        }
        let path = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Protocol("no Location in the answer".into()))?
            .to_owned();
        Ok(Upload { path, length })
    }

    /// How many bytes of the upload the server has (tus HEAD).
    pub async fn upload_offset(&self, up: &Upload) -> Result<u64> {
        let resp = self
            .tus(Method::HEAD, &up.path)
            .send()
            .await
            .map_err(crate::http::transport)?;
        if !resp.status().is_success() {
            return Err(match resp.status() {
                StatusCode::NOT_FOUND => ClientError::Protocol("no such upload".into()),
                s => ClientError::Protocol(format!("HTTP {s}")),
            });
        }
        header_u64(&resp, "upload-offset")
    }

    /// Sends `bytes` at `offset`; the server's new offset. The connection's own integrity
    /// (TCP, TLS) is trusted: see [`Http::upload_chunk_checked`] for a chunk checksum.
    pub async fn upload_chunk(&self, up: &Upload, offset: u64, bytes: Bytes) -> Result<u64> {
        self.patch(up, offset, bytes, None).await
    }

    /// [`Http::upload_chunk`] with the chunk's SHA-256 (tus `Upload-Checksum`): the server
    /// keeps none of it unless all of it came and matches.
    pub async fn upload_chunk_checked(
        &self,
        up: &Upload,
        offset: u64,
        bytes: Bytes,
    ) -> Result<u64> {
        let sum = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&bytes));
        self.patch(up, offset, bytes, Some(format!("sha256 {sum}")))
            .await
    }

    async fn patch(
        &self,
        up: &Upload,
        offset: u64,
        bytes: Bytes,
        checksum: Option<String>,
    ) -> Result<u64> {
        let mut req = self
            .tus(Method::PATCH, &up.path)
            .header("upload-offset", offset)
            .header("content-type", "application/offset+octet-stream");
        if let Some(sum) = checksum {
            req = req.header("upload-checksum", sum);
        }
        let resp = req
            .body(bytes)
            .send()
            .await
            .map_err(crate::http::transport)?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Err(api_error(resp).await);
        }
        header_u64(&resp, "upload-offset")
    }

    /// The upload's progress, and its media once complete.
    pub async fn upload_status(&self, up: &Upload) -> Result<UploadStatus> {
        self.get(&up.path).await
    }

    /// Cancels an upload (tus termination).
    pub async fn cancel_upload(&self, up: &Upload) -> Result<()> {
        let resp = self
            .tus(Method::DELETE, &up.path)
            .send()
            .await
            .map_err(crate::http::transport)?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Err(api_error(resp).await);
        }
        Ok(())
    }

    /// Uploads `bytes` as new media, in chunks of `chunk` bytes.
    pub async fn upload(
        &self,
        bytes: Bytes,
        metadata: &[(&str, &str)],
        chunk: usize,
    ) -> Result<MediaView> {
        let up = self.create_upload(bytes.len() as u64, metadata).await?;
        self.resume_upload(&up, bytes, chunk).await
    }

    /// Sends what the server does not have yet of `bytes` (all of the upload), resuming
    /// from the server's offset after a transport failure, and returns the media.
    pub async fn resume_upload(
        &self,
        up: &Upload,
        bytes: Bytes,
        chunk: usize,
    ) -> Result<MediaView> {
        let chunk = chunk.max(1);
        let mut offset = self.upload_offset(up).await?;
        let mut failures = 0;
        while offset < up.length {
            let end = (offset as usize + chunk).min(bytes.len());
            match self
                .upload_chunk(up, offset, bytes.slice(offset as usize..end))
                .await
            {
                Ok(at) => {
                    offset = at;
                    failures = 0;
                }
                Err(ClientError::Transport(_)) if failures < RETRIES => {
                    failures += 1;
                    let wait = 100u64 << failures;
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                    offset = self.upload_offset(up).await?;
                }
                Err(e) => return Err(e),
            }
        }
        self.upload_status(up)
            .await?
            .media
            .ok_or_else(|| ClientError::Protocol("the upload is complete but has no media".into()))
    }

    /// What a piece of media is: the caller's own, or one carried by message `from`.
    pub async fn media(&self, id: &str, from: Option<(ConvId, u64)>) -> Result<MediaView> {
        self.get(&format!("/v1/media/{id}?{}", from_query(from)))
            .await
    }

    /// Deletes the caller's own media.
    pub async fn delete_media(&self, id: &str) -> Result<()> {
        let _: serde_json::Value = self
            .call::<(), _>(Method::DELETE, &format!("/v1/media/{id}"), None)
            .await?;
        Ok(())
    }

    /// A signed download URL (a path on the server) for `variant` (`original`, `thumb`).
    pub async fn media_url(
        &self,
        id: &str,
        variant: &str,
        from: Option<(ConvId, u64)>,
    ) -> Result<MediaUrl> {
        self.get(&format!(
            "/v1/media/{id}/url?variant={variant}&{}",
            from_query(from)
        ))
        .await
    }

    /// The bytes behind a signed URL, all or `range`.
    pub async fn download(&self, url: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let mut req = self.client.get(format!("{}{url}", self.base));
        if let Some(r) = range {
            req = req.header(
                "range",
                format!("bytes={}-{}", r.start, r.end.saturating_sub(1)),
            );
        }
        let resp = req.send().await.map_err(crate::http::transport)?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        resp.bytes().await.map_err(crate::http::transport)
    }
}
