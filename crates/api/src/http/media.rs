//! Media over HTTP: resumable uploads by the tus 1.0.0 protocol (core, creation,
//! creation-with-upload, checksum, expiration, termination) at `/v1/uploads`, what a
//! piece of media is, signed download URLs, and the downloads themselves (with ranges).
//! Upload state and every check are `Logic`'s (logic/src/media.rs); this file speaks the
//! protocol's headers.

use super::{DONE, Done, conv_param};
use crate::{ApiState, Auth, HttpError, HttpResult, Path, Query};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xinge_core::ConvId;
use xinge_core::ErrorCode;
use xinge_core::error::ApiError;
use xinge_logic::media::{Grant, MAX_METADATA};
use xinge_media::staging::{Checksum, ChecksumAlgorithm};
use xinge_proto::api::*;

pub fn routes() -> OpenApiRouter<ApiState> {
    let uploads = OpenApiRouter::new()
        .routes(routes!(tus_options, create_upload))
        .routes(routes!(
            upload_offset,
            upload_status,
            append_upload,
            delete_upload
        ))
        .layer(axum::middleware::map_response(tus_answer));
    OpenApiRouter::new()
        .merge(uploads)
        .routes(routes!(media_info, delete_media))
        .routes(routes!(media_url))
        .routes(routes!(download))
}

const TUS_VERSION: &str = "1.0.0";
const TUS_EXTENSIONS: &str = "creation,creation-with-upload,checksum,expiration,termination";
const OFFSET_OCTETS: &str = "application/offset+octet-stream";

fn refuse(code: ErrorCode, message: &str) -> HttpError {
    HttpError(ApiError::new(code, message))
}

/// Every tus request but OPTIONS names the protocol version: 412 otherwise (the layer
/// adds the versions this server speaks).
fn tus_version(headers: &HeaderMap) -> Result<(), HttpError> {
    match headers.get("tus-resumable").map(HeaderValue::as_bytes) {
        Some(v) if v == TUS_VERSION.as_bytes() => Ok(()),
        _ => Err(refuse(
            ErrorCode::PreconditionFailed,
            "send Tus-Resumable: 1.0.0 (the tus version this server speaks)",
        )),
    }
}

/// Every answer at `/v1/uploads` names the tus version, refusals made before the handler
/// (no token) included, and a 412 the versions this server speaks. A refused request that
/// carries bytes is answered with `Connection: close`: its body may not have been read, so
/// the connection cannot carry another request, and the client is told so rather than
/// finding it closed.
async fn tus_answer(method: axum::http::Method, mut r: Response) -> Response {
    let status = r.status();
    let h = r.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    if status == StatusCode::PRECONDITION_FAILED {
        h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    }
    let with_body = matches!(method, axum::http::Method::POST | axum::http::Method::PATCH);
    if with_body && !status.is_success() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// A request's body is tus bytes (`application/offset+octet-stream`).
fn offset_octets(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == OFFSET_OCTETS.as_bytes())
}

/// A header that must be there and be a non-negative integer.
fn required_u64(headers: &HeaderMap, name: &str) -> Result<u64, HttpError> {
    header_u64(headers, name)?
        .ok_or_else(|| refuse(ErrorCode::BadRequest, &format!("{name} is required")))
}

fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>, HttpError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                refuse(
                    ErrorCode::BadRequest,
                    &format!("{name} must be a non-negative integer"),
                )
            }),
    }
}

fn checksum(headers: &HeaderMap) -> Result<Option<Checksum>, HttpError> {
    let Some(v) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let bad = || {
        refuse(
            ErrorCode::BadRequest,
            "Upload-Checksum must be `sha1 <base64>` or `sha256 <base64>`",
        )
    };
    let (name, digest) = v
        .to_str()
        .ok()
        .and_then(|s| s.split_once(' '))
        .ok_or_else(bad)?;
    let algorithm = ChecksumAlgorithm::parse(name).ok_or_else(bad)?;
    let digest = base64::engine::general_purpose::STANDARD
        .decode(digest.trim())
        .map_err(|_| bad())?;
    Ok(Some(Checksum { algorithm, digest }))
}

fn http_date(ms: u64) -> HeaderValue {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap_or(HeaderValue::from_static(""))
}

fn offset_answer(status: StatusCode, s: &UploadStatus) -> Response {
    let mut r = status.into_response();
    let h = r.headers_mut();
    h.insert("upload-offset", HeaderValue::from(s.offset));
    h.insert("upload-expires", http_date(s.expires_ms));
    if let Some(m) = &s.media
        && let Ok(v) = HeaderValue::from_str(&m.id)
    {
        h.insert("xinge-media-id", v);
    }
    r
}

/// What this server supports of tus (no token needed).
#[utoipa::path(options, path = "/v1/uploads", responses((status = 204, description = "Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm")))]
pub async fn tus_options(State(s): State<ApiState>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    h.insert(
        "tus-max-size",
        HeaderValue::from(s.logic.config().media.max_upload_bytes),
    );
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static("sha1,sha256"),
    );
    r
}

/// Start a resumable upload (tus creation; with a body of `application/offset+octet-stream`
/// also creation-with-upload). `Upload-Length` is required; `Upload-Metadata` may carry
/// `filename`, `filetype`, `kind` (`image`, `video`, `voice`, `file`) and `duration_ms`.
/// Answers `Location: /v1/uploads/{id}`. 403 `quota_exceeded`, 413 `too_large`, 412 without
/// `Tus-Resumable: 1.0.0`, 429 over the upload rate.
#[utoipa::path(post, path = "/v1/uploads",
    params(
        ("Tus-Resumable" = String, Header, description = "1.0.0"),
        ("Upload-Length" = u64, Header),
        ("Upload-Metadata" = Option<String>, Header),
    ),
    responses(
        (status = 201, description = "Created: Location, Upload-Offset, Upload-Expires"),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 412, body = ApiError), (status = 413, body = ApiError), (status = 415, body = ApiError),
        (status = 429, body = ApiError), (status = 460, body = ApiError)))]
pub async fn create_upload(
    State(s): State<ApiState>,
    Auth(c): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    tus_version(&headers)?;
    if headers.contains_key("upload-defer-length") {
        return Err(refuse(
            ErrorCode::BadRequest,
            "Upload-Defer-Length is not supported: send Upload-Length",
        ));
    }
    let length = required_u64(&headers, "upload-length")?;
    let metadata = match headers.get("upload-metadata") {
        None => "",
        Some(v) => v
            .to_str()
            .ok()
            .filter(|m| m.len() <= MAX_METADATA)
            .ok_or_else(|| {
                refuse(
                    ErrorCode::InvalidArgument,
                    "Upload-Metadata must be at most 4096 bytes of ASCII",
                )
            })?,
    };
    let sum = checksum(&headers)?;
    let up = s.logic.create_upload(&c, length, metadata).await?;
    // Bytes that came with the creation (or an empty upload, complete as it is made): an
    // error here still leaves the upload made, so the client resumes it from the offset a
    // HEAD reports.
    let status = if offset_octets(&headers) || length == 0 {
        let stream = body.into_data_stream();
        s.logic.append_upload(&c, &up.id, 0, stream, sum).await?
    } else {
        xinge_logic::media::status(&up, None)
    };
    let mut r = offset_answer(StatusCode::CREATED, &status);
    let location = HeaderValue::from_str(&format!("/v1/uploads/{}", up.id))
        .map_err(|_| refuse(ErrorCode::Internal, "internal error"))?;
    r.headers_mut().insert(header::LOCATION, location);
    Ok(r)
}

/// An upload's offset (tus HEAD): `Upload-Offset`, `Upload-Length`, `Upload-Expires`.
/// 404 for an upload that is not the caller's or has expired.
#[utoipa::path(head, path = "/v1/uploads/{id}",
    params(("id" = String, Path), ("Tus-Resumable" = String, Header, description = "1.0.0")),
    responses((status = 200, description = "Upload-Offset, Upload-Length"), (status = 401), (status = 404), (status = 412)))]
pub async fn upload_offset(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    tus_version(&headers)?;
    let st = s.logic.upload_status(&c, &id).await?;
    let mut r = offset_answer(StatusCode::OK, &st);
    let h = r.headers_mut();
    h.insert("upload-length", HeaderValue::from(st.length));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !st.metadata.is_empty()
        && let Ok(v) = HeaderValue::from_str(&st.metadata)
    {
        h.insert("upload-metadata", v);
    }
    Ok(r)
}

/// An upload's progress as JSON, and once complete the media it became.
#[utoipa::path(get, path = "/v1/uploads/{id}", params(("id" = String, Path)),
    responses((status = 200, body = UploadStatus), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn upload_status(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> HttpResult<UploadStatus> {
    Ok(Json(s.logic.upload_status(&c, &id).await?))
}

/// Append bytes at `Upload-Offset` (tus PATCH, `Content-Type:
/// application/offset+octet-stream`; `Upload-Checksum: sha1|sha256 <base64>` optional).
/// Answers 204 with the new `Upload-Offset`; the request bringing the last byte finishes
/// the upload and its answer names the media (`Xinge-Media-Id`). 409 `conflict` at the
/// wrong offset, 460 `checksum_mismatch` (nothing kept), 413 past `Upload-Length`, 415
/// `unsupported_media` for an image that does not decode.
#[utoipa::path(patch, path = "/v1/uploads/{id}",
    params(("id" = String, Path), ("Tus-Resumable" = String, Header, description = "1.0.0"),
        ("Upload-Offset" = u64, Header), ("Upload-Checksum" = Option<String>, Header)),
    responses((status = 204, description = "Upload-Offset; Xinge-Media-Id once complete"),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 412, body = ApiError),
        (status = 413, body = ApiError), (status = 415, body = ApiError), (status = 460, body = ApiError),
        (status = 503, body = ApiError)))]
pub async fn append_upload(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    tus_version(&headers)?;
    if !offset_octets(&headers) {
        return Err(refuse(
            ErrorCode::UnsupportedMedia,
            "Content-Type must be application/offset+octet-stream",
        ));
    }
    let offset = required_u64(&headers, "upload-offset")?;
    let sum = checksum(&headers)?;
    let stream = body.into_data_stream();
    let st = s.logic.append_upload(&c, &id, offset, stream, sum).await?;
    Ok(offset_answer(StatusCode::NO_CONTENT, &st))
}

/// Cancel an upload (tus termination): its bytes go, its URL answers 404 from then on.
#[utoipa::path(delete, path = "/v1/uploads/{id}",
    params(("id" = String, Path), ("Tus-Resumable" = String, Header, description = "1.0.0")),
    responses((status = 204), (status = 401, body = ApiError), (status = 404, body = ApiError), (status = 412, body = ApiError)))]
pub async fn delete_upload(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    tus_version(&headers)?;
    s.logic.delete_upload(&c, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Where a piece of media was seen: the message carrying it. The uploader needs neither.
#[derive(Deserialize, IntoParams)]
pub struct FromMessage {
    /// The conversation of the message carrying the media.
    conv: Option<String>,
    /// That message's conv_seq.
    seq: Option<u64>,
    /// `original` (default) or `thumb`.
    variant: Option<String>,
}

impl FromMessage {
    fn from(&self) -> Result<Option<(ConvId, u64)>, HttpError> {
        match (&self.conv, self.seq) {
            (Some(c), Some(s)) => Ok(Some((conv_param(c)?, s))),
            (None, None) => Ok(None),
            _ => Err(refuse(
                ErrorCode::InvalidArgument,
                "give conv and seq together",
            )),
        }
    }
}

/// What a piece of media is. The uploader asks with its id alone; anyone else names the
/// message that carries it (`conv`, `seq`) in a conversation they can read. 404 otherwise.
#[utoipa::path(get, path = "/v1/media/{id}", params(("id" = String, Path), FromMessage),
    responses((status = 200, body = MediaView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn media_info(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    Query(q): Query<FromMessage>,
) -> HttpResult<MediaView> {
    Ok(Json(s.logic.media_info(&c, &id, q.from()?).await?))
}

/// Delete the caller's own media: messages that carried it show it as gone (404 to every
/// download) from then on.
#[utoipa::path(delete, path = "/v1/media/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Done), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn delete_media(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> HttpResult<Done> {
    s.logic.delete_media(&c, &id).await?;
    Ok(Json(DONE))
}

/// A download URL for the media (`variant=original`) or its thumbnail (`variant=thumb`),
/// on the same terms as `GET /v1/media/{id}`. It needs no token and is valid for
/// `media.url_ttl_secs`; every use checks the access again.
#[utoipa::path(get, path = "/v1/media/{id}/url", params(("id" = String, Path), FromMessage),
    responses((status = 200, body = MediaUrl), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn media_url(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    Query(q): Query<FromMessage>,
) -> HttpResult<MediaUrl> {
    let variant = q.variant.as_deref().unwrap_or("original");
    let g = s.logic.media_url(&c, &id, variant, q.from()?).await?;
    Ok(Json(MediaUrl {
        url: format!(
            "/media/{id}/{variant}?c={}&s={}&u={}&e={}&sig={}",
            g.conv, g.seq, g.user, g.expires_ms, g.sig
        ),
        expires_ms: g.expires_ms,
    }))
}

/// A download URL's query: the grant, in short names.
#[derive(Deserialize)]
pub struct Signed {
    #[serde(default)]
    c: String,
    #[serde(default)]
    s: u64,
    u: u64,
    e: u64,
    sig: String,
}

/// A single byte range of a `Range` header, resolved against `size`: `Ok(None)` for no
/// (or an ignored) header, `Err` for an unsatisfiable one.
fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    // Several ranges are allowed to be answered with the whole file.
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.trim().split_once('-').ok_or(())?;
    let num = |s: &str| s.parse::<u64>().map_err(|_| ());
    let range = match (a, b) {
        ("", n) => {
            let n = num(n)?.min(size);
            size - n..size
        }
        (a, "") => num(a)?..size,
        (a, b) => num(a)?..num(b)?.saturating_add(1).min(size),
    };
    if range.start >= size || range.start >= range.end {
        return Err(());
    }
    Ok(Some(range))
}

/// The bytes behind a signed URL (from `GET /v1/media/{id}/url`): `Range` answered with
/// 206, `If-None-Match` with 304; `Content-Disposition: attachment` for files. 403 for a
/// URL that is tampered with or expired, 404 once the access is gone.
#[utoipa::path(get, path = "/media/{id}/{variant}",
    params(("id" = String, Path), ("variant" = String, Path),
        ("c" = Option<String>, Query), ("s" = Option<u64>, Query), ("u" = u64, Query),
        ("e" = u64, Query), ("sig" = String, Query)),
    responses((status = 200, description = "the bytes", content_type = "application/octet-stream"),
        (status = 206, description = "a range of the bytes"), (status = 304),
        (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 416, body = ApiError)))]
pub async fn download(
    State(s): State<ApiState>,
    Path((id, variant)): Path<(String, String)>,
    Query(q): Query<Signed>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let grant = Grant {
        conv: q.c,
        seq: q.s,
        user: q.u,
        expires_ms: q.e,
        sig: q.sig,
    };
    let d = s.logic.media_download(&id, &variant, &grant).await?;
    let etag = format!("\"{}\"", d.hash);
    let mut r = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let range = match byte_range(&headers, d.size) {
            Ok(r) => r,
            Err(()) => {
                let mut r = refuse(
                    ErrorCode::RangeNotSatisfiable,
                    "the range is not within the file",
                )
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", d.size)) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(r);
            }
        };
        let (status, span) = match &range {
            Some(r) => (StatusCode::PARTIAL_CONTENT, r.clone()),
            None => (StatusCode::OK, 0..d.size),
        };
        let bytes = s.logic.media_bytes(&d.hash, span.clone()).await?;
        let mut r = Response::new(Body::from_stream(
            bytes.map(|c| c.map_err(axum::Error::new)),
        ));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(span.end - span.start),
        );
        if range.is_some()
            && let Ok(v) =
                HeaderValue::from_str(&format!("bytes {}-{}/{}", span.start, span.end - 1, d.size))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
        let ct = HeaderValue::from_str(&d.mime)
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        h.insert(header::CONTENT_TYPE, ct);
        if let Ok(v) = HeaderValue::from_str(&d.disposition) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        r
    };
    let h = r.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("private, max-age={}", d.max_age)) {
        h.insert(header::CACHE_CONTROL, v);
    }
    // Served as what it was sniffed to be, never re-sniffed, and never run as a page.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_against_the_size() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::RANGE, v.parse().unwrap());
            byte_range(&h, 100)
        };
        assert_eq!(byte_range(&HeaderMap::new(), 100), Ok(None));
        assert_eq!(with("bytes=0-9"), Ok(Some(0..10)));
        assert_eq!(with("bytes=90-"), Ok(Some(90..100)));
        assert_eq!(with("bytes=-5"), Ok(Some(95..100)));
        assert_eq!(with("bytes=50-1000"), Ok(Some(50..100)));
        assert_eq!(with("bytes=0-1,5-6"), Ok(None));
        assert_eq!(with("bytes=100-"), Err(()));
        assert_eq!(with("bytes=9-3"), Err(()));
        assert_eq!(with("bytes=x-3"), Err(()));
        assert_eq!(with("items=0-3"), Ok(None));
    }
}
