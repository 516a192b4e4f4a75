//! `bench notify`: 1:1 traffic where a share of the recipients are away — logged in,
//! registered for APNs, never connected — so that every message to them goes through the
//! offline-push pipeline (notice in the commit, the worker, the APNs client) to a local
//! APNs stand-in in this process: HTTP/2 over TLS, answering 200 and counting. The rest of
//! the pairs are online and measured as in `direct`; `--away-pct 0` is the same run with
//! push configured and nobody away, to compare with.

use crate::BenchError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_rustls::rustls;

/// Notifications the stand-in took.
pub static TAKEN: AtomicU64 = AtomicU64::new(0);

/// Starts the APNs stand-in and writes its CA and a provider key into `dir`; the TOML that
/// points the spawned server at it (`collapse_ms`: the server's collapse window).
pub async fn apns(dir: &std::path::Path, collapse_ms: u64) -> Result<String, BenchError> {
    let setup = |e: rcgen::Error| BenchError::Setup(format!("APNs stand-in: {e}"));
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(setup)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().map_err(setup)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(setup)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().map_err(setup)?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .map_err(setup)?
        .signed_by(&key, &issuer)
        .map_err(setup)?;
    let provider_key = rcgen::KeyPair::generate().map_err(setup)?;
    let (ca_file, key_file) = (dir.join("apns-ca.pem"), dir.join("apns-key.p8"));
    std::fs::write(&ca_file, ca_cert.pem())?;
    std::fs::write(&key_file, provider_key.serialize_pem())?;

    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| BenchError::Setup(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], der)
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    // The body is read (as Apple does) and dropped.
                    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                    TAKEN.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(1000)
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(format!(
        "[notify]\ncollapse_ms = {collapse_ms}\n\
         [notify.apns]\nkey_file = {key:?}\nkey_id = \"BENCHKEY01\"\nteam_id = \"BENCHTEAM1\"\n\
         url = \"https://{addr}\"\nca_file = {ca:?}\nconcurrency = 256\nper_sec = 1000000.0\n",
        key = key_file.display().to_string(),
        ca = ca_file.display().to_string(),
    ))
}

/// The registration an away user's device makes: an APNs token of its own.
pub fn registration(i: usize) -> xinge_proto::api::PushRegistration {
    xinge_proto::api::PushRegistration::Apns {
        token: format!("{i:064x}"),
        topic: "com.example.bench".into(),
        sandbox: false,
    }
}

/// Waits until the stand-in has taken nothing new for a second (at most `max`); how many
/// it took in all and when the last came (seconds after the call).
pub async fn drained(max: std::time::Duration) -> (u64, f64) {
    let start = std::time::Instant::now();
    let mut last = (TAKEN.load(Ordering::Relaxed), 0.0);
    while start.elapsed() < max {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = TAKEN.load(Ordering::Relaxed);
        if now == last.0 {
            return last;
        }
        last = (now, start.elapsed().as_secs_f64());
    }
    last
}
