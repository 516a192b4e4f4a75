//! TLS for a listener (rustls on ring): the certificate loaded once at start, and a
//! handshake with a deadline. Both accept loops — the TCP gateway's and the HTTP server's,
//! and so WebSocket on `/ws` — run [`Tls::accept`] in the connection's own task, never in
//! the loop, so a client that stalls its handshake holds up nobody but itself, and only
//! until the deadline.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use xinge_core::config::TlsConfig;

/// Why TLS could not be set up. Said at start, with the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tls: {path}: {what}")]
    Pem { path: String, what: String },
    #[error("tls: the certificate and key do not make a server config: {0}")]
    Config(#[from] rustls::Error),
}

/// A listener's TLS: cheap to clone (the config is shared).
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn pem_error(path: &str, what: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

impl Tls {
    /// Loads the certificate and key the config names; `None` when TLS is off.
    pub fn from_config(cfg: &TlsConfig) -> Result<Option<Self>, TlsError> {
        let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
            return Ok(None);
        };
        let timeout = Duration::from_secs(cfg.handshake_timeout_secs.max(1));
        Self::load(cert, key, timeout).map(Some)
    }

    /// Loads a PEM certificate chain (the server's own certificate first) and its key.
    pub fn load(cert: &Path, key: &Path, handshake_timeout: Duration) -> Result<Self, TlsError> {
        Self::from_pem(
            (&cert.display().to_string(), &read(cert)?),
            (&key.display().to_string(), &read(key)?),
            handshake_timeout,
        )
    }

    /// The same from PEM text in memory, each with the name its errors use.
    pub fn from_pem(
        (cert_name, cert): (&str, &[u8]),
        (key_name, key): (&str, &[u8]),
        handshake_timeout: Duration,
    ) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(cert_name, e))?;
        if chain.is_empty() {
            return Err(pem_error(cert_name, "no CERTIFICATE block"));
        }
        let key_der = PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                pem_error(key_name, "no PRIVATE KEY block")
            }
            e => pem_error(key_name, e),
        })?;
        // The provider is named, not taken from a process default: nothing else in the
        // binary has to install one, and a second provider in the tree cannot make this
        // ambiguous.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout,
        })
    }

    /// The same certificate, offering these ALPN protocols (the HTTP server offers
    /// `http/1.1`, the only one it speaks).
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> Self {
        let mut config = (*self.acceptor.config().clone()).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: self.handshake_timeout,
        }
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The server side of the handshake, within the deadline. `None` when the client
    /// failed it (not TLS, a certificate it does not trust, gone) or did not finish in
    /// time; the connection is then dropped, which closes it.
    pub async fn accept(&self, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
        let peer = stream.peer_addr().ok();
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                metrics::counter!("xinge_tls_handshakes_failed_total", "reason" => "error")
                    .increment(1);
                tracing::debug!(error = %e, ?peer, "tls handshake failed");
                None
            }
            Err(_) => {
                metrics::counter!("xinge_tls_handshakes_failed_total", "reason" => "timeout")
                    .increment(1);
                tracing::debug!(?peer, "tls handshake timed out");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Bad input is an error naming the file, never a panic.
    #[test]
    fn bad_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("xinge-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = Duration::from_secs(1);
        let missing = dir.join("missing.pem");
        let junk = write(&dir, "junk.pem", "not a pem file\n");
        let err = Tls::load(&missing, &missing, t).unwrap_err().to_string();
        assert!(
            err.contains("cannot read") && err.contains("missing.pem"),
            "{err}"
        );
        let err = Tls::load(&junk, &junk, t).unwrap_err().to_string();
        assert!(
            err.contains("junk.pem") && err.contains("no CERTIFICATE"),
            "{err}"
        );
        let broken = write(
            &dir,
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n",
        );
        let err = Tls::load(&broken, &junk, t).unwrap_err().to_string();
        assert!(err.contains("broken.pem"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
