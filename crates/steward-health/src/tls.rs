//! TLS for probes: the handshake on a probe's socket and certificate expiry
//! (the client configuration itself is `steward_net::client_config`).

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

/// TLS handshake on a connected socket; marks the observation connected and
/// records how long the peer's certificate has left.
pub(crate) async fn handshake(
    cfg: Arc<ClientConfig>,
    host: &str,
    tcp: tokio::net::TcpStream,
    obs: &mut steward_spec::Observed,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| format!("`{host}` is not a valid TLS server name"))?;
    let stream = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    obs.connected = true;
    if let Some(cert) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        obs.certificate_expiration_ms = expires_in_ms(cert, steward_state::now_ms());
    }
    Ok(stream)
}

/// Milliseconds until the certificate's notAfter (negative once expired).
pub fn expires_in_ms(der: &[u8], now_ms: i64) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp() * 1000 - now_ms)
}
