//! steward's outbound networking, in one place: the rustls client
//! configuration every TLS client uses (ring, the system's trust roots plus an
//! optional CA file, or no verification for a check that asks for it) and the
//! HTTP clients built on it (alert deliveries, object stores, converge
//! downloads). Probes build their own connections on [`client_config`].

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why a client could not be made; callers branch on the kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// The TLS configuration itself (protocol versions, provider).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A CA file that cannot be read or holds no usable certificate.
    #[error("{0}")]
    Ca(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// How an HTTP client behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpOptions {
    /// Longest a whole request may take (`None`: no bound).
    pub timeout: Option<Duration>,
    /// Longest a connection may take to open.
    pub connect_timeout: Option<Duration>,
    /// Ignore `HTTP_PROXY` and friends (alert receivers on loopback must be
    /// reached directly).
    pub no_proxy: bool,
}

/// The user agent every steward client sends.
pub const USER_AGENT: &str = concat!("steward/", env!("CARGO_PKG_VERSION"));

/// Applies the shared settings to either reqwest builder (they are two
/// types with the same methods).
macro_rules! configured {
    ($builder:expr, $o:expr) => {{
        let mut b = $builder
            .tls_backend_preconfigured(client_config(None, false)?)
            .user_agent(USER_AGENT);
        if let Some(t) = $o.timeout {
            b = b.timeout(t);
        }
        if let Some(t) = $o.connect_timeout {
            b = b.connect_timeout(t);
        }
        if $o.no_proxy {
            b = b.no_proxy();
        }
        b.build().map_err(|e| NetError::Client(e.to_string()))
    }};
}

/// An async HTTP client over [`client_config`] with the system's roots.
pub fn http(o: HttpOptions) -> Result<reqwest::Client, NetError> {
    configured!(reqwest::Client::builder(), o)
}

/// A blocking HTTP client over [`client_config`] with the system's roots.
pub fn blocking_http(o: HttpOptions) -> Result<reqwest::blocking::Client, NetError> {
    configured!(reqwest::blocking::Client::builder(), o)
}

fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn system_roots() -> Arc<RootCertStore> {
    static R: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    R.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for err in &found.errors {
            tracing::debug!(error = %err, "skipping a system certificate");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "loaded system trust roots");
        Arc::new(roots)
    })
    .clone()
}

/// Builds a client config: system roots plus `ca_file`, or no verification at all.
pub fn client_config(ca_file: Option<&Path>, insecure: bool) -> Result<ClientConfig, NetError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = (*system_roots()).clone();
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| {
                    NetError::Ca(format!("cannot read CA file `{}`: {e}", path.display()))
                })?
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    NetError::Ca(format!("bad PEM in CA file `{}`: {e}", path.display()))
                })?;
            if certs.is_empty() {
                return Err(NetError::Ca(format!(
                    "CA file `{}` holds no certificate",
                    path.display()
                )));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| NetError::Ca(format!("CA file `{}`: {e}", path.display())))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Accepts any certificate but still checks handshake signatures, so the
/// connection is encrypted and the certificate's expiry can be observed.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Joins an error with its sources: "error sending request: connection refused".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let t = src.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = src.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_are_checked_and_typed() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(
            matches!(client_config(Some(&empty), false), Err(NetError::Ca(m)) if m.contains("holds no certificate"))
        );
        let missing = dir.path().join("missing.pem");
        assert!(
            matches!(client_config(Some(&missing), false), Err(NetError::Ca(m)) if m.contains("cannot read"))
        );
        assert!(client_config(None, false).is_ok());
        assert!(client_config(None, true).is_ok());
        assert!(http(HttpOptions::default()).is_ok());
        assert!(blocking_http(HttpOptions::default()).is_ok());
    }
}
