//! The browser client (`web/` at the repository root), embedded at compile time and served at
//! `/`. It is buildless — plain ES modules and one stylesheet — so `cargo build` needs no
//! JavaScript tooling, and it talks to the server only through the public HTTP API and the
//! WebSocket gateway.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::OnceLock;
use xinge_core::ErrorCode;
use xinge_core::error::ApiError;

/// One embedded file: its name under `/`, its content type and its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $ty:expr) => {
        Asset {
            name: $name,
            content_type: $ty,
            bytes: include_bytes!(concat!("../../../web/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("client.js", JS),
    asset!("view.js", JS),
    asset!("icon.svg", "image/svg+xml"),
    asset!("admin.html", "text/html; charset=utf-8"),
    asset!("admin.js", JS),
    asset!("sw.js", JS),
];

/// Same-origin only: the client loads nothing from elsewhere and talks only to this server.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                   style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'";

/// A strong validator per asset: the files change only with the binary, so a hash of the
/// bytes lets browsers revalidate cheaply (`no-cache` + `ETag` → 304) and never run a
/// stale client against a newer server.
fn etag(i: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    &TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                // FNV-1a, 64 bit: not for security, only to tell versions apart.
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in a.bytes {
                    h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
                }
                format!("\"{h:016x}\"")
            })
            .collect()
    })[i]
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return crate::HttpError(ApiError::new(ErrorCode::NotFound, "no such endpoint"))
            .into_response();
    };
    let asset = &ASSETS[i];
    let tag = etag(i);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.bytes.into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    resp
}

/// `/`, `/sw.js` and `/web/{file}`.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/sw.js", get(service_worker))
        .merge(files())
}

/// `/web/{file}`: the scripts, stylesheet and icon, for the client and the admin page.
pub fn files() -> Router {
    Router::new().route("/web/{file}", get(file))
}

/// `/admin/`: the admin page (it talks to the admin API on the same origin).
pub fn admin_page() -> Router {
    Router::new().route(
        "/admin/",
        get(|headers: HeaderMap| async move { serve("admin.html", &headers) }),
    )
}

/// `GET /`: the client's page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /sw.js`: the service worker that shows Web Push notifications. Served from the root
/// so that its scope is the whole origin, the page at `/` included.
pub async fn service_worker(headers: HeaderMap) -> Response {
    serve("sw.js", &headers)
}

/// `GET /web/{file}`: the client's scripts, stylesheet and icon.
pub async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}
