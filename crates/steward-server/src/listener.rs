//! The listening socket of `serve`: plain TCP, or TLS (rustls) whose
//! certificate can be replaced on SIGHUP without closing the socket.
//!
//! TLS handshakes run in their own tasks, so a slow or silent client never
//! holds up the accept loop; finished connections are handed to axum through a
//! channel.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The address of the peer, as `ConnectInfo` for handlers and middleware.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Certificate and key files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Swaps the TLS configuration of a running listener.
#[derive(Clone)]
pub struct TlsReloader {
    files: TlsFiles,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl TlsReloader {
    /// Reads the files again; on error the old certificate stays in use.
    pub fn reload(&self) -> Result<(), String> {
        let cfg = load(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cfg);
        Ok(())
    }
}

/// Loads a rustls server configuration from PEM files.
pub(crate) fn load(files: &TlsFiles) -> Result<ServerConfig, String> {
    let read_err =
        |p: &Path, e: &dyn std::fmt::Display| format!("cannot read `{}`: {e}", p.display());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| read_err(&files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(&files.cert, &e))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| read_err(&files.key, &e))?;
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map(|mut c| {
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            c
        })
        .map_err(|e| {
            format!(
                "certificate `{}` and key `{}` do not fit: {e}",
                files.cert.display(),
                files.key.display()
            )
        })
}

/// What `serve` listens on.
pub enum StewardListener {
    /// Plain HTTP.
    Plain(TcpListener),
    /// HTTPS: connections after their handshake.
    Tls {
        /// Bound address.
        local: SocketAddr,
        /// Handshaken connections.
        rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    },
}

impl StewardListener {
    /// Wraps a bound socket; with `tls`, starts the handshake loop and returns
    /// the handle that replaces the certificate.
    pub fn new(
        tcp: TcpListener,
        tls: Option<&TlsFiles>,
    ) -> Result<(StewardListener, Option<TlsReloader>), String> {
        let Some(files) = tls else {
            return Ok((StewardListener::Plain(tcp), None));
        };
        let current = Arc::new(RwLock::new(Arc::new(load(files)?)));
        let reloader = TlsReloader {
            files: files.clone(),
            current: current.clone(),
        };
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel(128);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let cfg = current.read().unwrap_or_else(|e| e.into_inner()).clone();
                let done = tx.clone();
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok((StewardListener::Tls { local, rx }, Some(reloader)))
    }
}

impl Listener for StewardListener {
    type Io = Either<TcpStream, TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self {
            StewardListener::Plain(l) => loop {
                match TcpListener::accept(l).await {
                    Ok((s, a)) => return (Either::Left(s), a),
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
            StewardListener::Tls { rx, .. } => match rx.recv().await {
                Some((s, a)) => (Either::Right(s), a),
                // The handshake loop ended: never resolve, shutdown ends serving.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            StewardListener::Plain(l) => l.local_addr(),
            StewardListener::Tls { local, .. } => Ok(*local),
        }
    }
}

impl Connected<IncomingStream<'_, StewardListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, StewardListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}
