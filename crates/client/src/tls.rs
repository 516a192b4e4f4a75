//! TLS in the SDK (rustls on ring): whom to trust, for HTTPS, `wss://` and TLS over TCP.
//! Only the root certificates the app gives are trusted — no system or bundled roots —
//! so a deployment with its own CA (and the tests, with a CA made at test time) needs
//! nothing else.

use crate::{ClientError, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// A client handshake that takes longer than this has failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificates a TLS server's chain must lead to. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tls {
    roots: Arc<[CertificateDer<'static>]>,
    config: Arc<rustls::ClientConfig>,
}

impl Tls {
    /// Trusts the certificates in `pem` (one or more `CERTIFICATE` blocks) as roots, and
    /// nothing else.
    pub fn with_roots_pem(pem: &[u8]) -> Result<Self> {
        let bad = |e: String| ClientError::Config(format!("tls roots: {e}"));
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if roots.is_empty() {
            return Err(bad("no CERTIFICATE block".into()));
        }
        let mut store = rustls::RootCertStore::empty();
        for cert in &roots {
            store.add(cert.clone()).map_err(|e| bad(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(Self {
            roots: roots.into(),
            config: Arc::new(config),
        })
    }

    pub(crate) fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The client side of the handshake on `stream`, checking the server's certificate
    /// against `host` (a DNS name or an IP address).
    pub(crate) async fn connect(
        &self,
        host: &str,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| ClientError::Transport(format!("tls: server name {host:?}: {e}")))?;
        let connector = TlsConnector::from(self.config.clone());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ClientError::Transport(format!("tls: {e}"))),
            Err(_) => Err(ClientError::Transport("tls: handshake timed out".into())),
        }
    }
}

/// The host part of `host:port` (`[v6]:port` too), for the server name.
pub(crate) fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_an_address() {
        assert_eq!(host_of("127.0.0.1:8090"), "127.0.0.1");
        assert_eq!(host_of("im.example.com:443"), "im.example.com");
        assert_eq!(host_of("[::1]:8090"), "::1");
    }

    #[test]
    fn roots_must_be_certificates() {
        assert!(matches!(
            Tls::with_roots_pem(b"nothing here"),
            Err(ClientError::Config(_))
        ));
    }
}
