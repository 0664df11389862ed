//! The reverse proxy in front of a service: HTTP/1.1 with keep-alive on both
//! sides, `Upgrade` (WebSocket) passthrough, routing to ready instances only
//! (the least busy first), draining, and a retry on another instance when a
//! connection fails before anything was sent.
//!
//! It speaks HTTP/1.1 itself, on the bytes: one task per client connection
//! reads a request head, forwards head and body to a pooled connection of the
//! chosen instance, reads the response head and streams the body back. Nothing
//! crosses a task or a channel per request, and a small response goes out in
//! one write. (A hyper server + client pair measured 0.65× nginx's requests
//! per CPU here; `benches/proxy.sh`.)
//!
//! Framing is decided by `steward-http1` (RFC 9112, strictly: anything ambiguous is
//! refused with 400 — or 502 from an instance — and the connection closed),
//! and what is forwarded is re-serialised from that decision, so a client and
//! an instance can never read one byte stream as different requests. The
//! instances and their idle connections are in [`pool`].

mod pool;

pub use pool::{Pool, Upstream};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use steward_http1 as h1;
use steward_http1::{BodyFraming, Chunked, FramingError, Head, Kind, ResponseFraming, Via};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Requests with bodies up to this size are read whole before they are sent,
/// so they can be retried (and a chunked one is checked to its end first).
const RETRY_BODY_LIMIT: usize = 64 * 1024;
/// An instance must send response headers within this.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// A client has this long to send a request head (also the keep-alive idle limit).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to an instance.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Interim (1xx) responses passed on before the final one, at most.
const MAX_INTERIM: usize = 16;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    service: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabel {
    service: String,
    instance: String,
}

/// The proxy's metrics, shared by every service's proxy.
#[derive(Clone)]
pub struct ProxyMetrics {
    requests: Family<StatusLabel, Counter>,
    duration: Family<ServiceLabel, Histogram>,
    upstream_requests: Family<InstanceLabel, Counter>,
    upstream_errors: Family<InstanceLabel, Counter>,
    retries: Family<ServiceLabel, Counter>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        ProxyMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
            }),
            upstream_requests: Family::default(),
            upstream_errors: Family::default(),
            retries: Family::default(),
        }
    }
}

impl ProxyMetrics {
    /// Adds them to `/metrics`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "steward_proxy_requests",
            "Requests answered by the proxy, by service and status class",
            self.requests.clone(),
        );
        r.register(
            "steward_proxy_request_duration_seconds",
            "Time from request to response headers, by service",
            self.duration.clone(),
        );
        r.register(
            "steward_proxy_upstream_requests",
            "Requests sent to each instance",
            self.upstream_requests.clone(),
        );
        r.register(
            "steward_proxy_upstream_errors",
            "Requests to an instance that failed (connection refused, reset, timeout)",
            self.upstream_errors.clone(),
        );
        r.register(
            "steward_proxy_retries",
            "Requests retried on another instance after a connection failure",
            self.retries.clone(),
        );
    }
}

/// One service's proxy.
#[derive(Clone)]
pub struct Proxy {
    service: Arc<str>,
    pool: Arc<Pool>,
    metrics: ProxyMetrics,
    /// Per status class (index 1 = 1xx ... 5 = 5xx), looked up once: the hot
    /// path must not hash label sets.
    by_class: Arc<[Counter; 6]>,
    duration: Histogram,
    retries: Counter,
}

/// A connection with what has been read from it but not used yet.
#[derive(Debug)]
pub(crate) struct Conn {
    s: TcpStream,
    buf: BytesMut,
}

impl Conn {
    fn new(s: TcpStream) -> Self {
        Conn {
            s,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Reads more; 0 at end of stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8 * 1024);
        }
        self.s.read_buf(&mut self.buf).await
    }
}

#[derive(Debug)]
enum HeadError {
    /// The peer closed (or reset) before a complete head.
    Closed {
        got_bytes: bool,
    },
    TooLarge,
    Invalid(FramingError),
    Timeout,
}

/// Reads one head from `c` within `limit`.
async fn read_head(c: &mut Conn, kind: Kind, limit: Duration) -> Result<Head, HeadError> {
    let work = async {
        loop {
            if !c.buf.is_empty() {
                let parsed = match kind {
                    Kind::Request => h1::parse_request(&c.buf),
                    Kind::Response => h1::parse_response(&c.buf),
                };
                if let Some((n, head)) = parsed.map_err(HeadError::Invalid)? {
                    c.buf.advance(n);
                    return Ok(head);
                }
                if c.buf.len() > h1::MAX_HEAD {
                    return Err(HeadError::TooLarge);
                }
            }
            let had = !c.buf.is_empty();
            match c.fill().await {
                Ok(0) | Err(_) => return Err(HeadError::Closed { got_bytes: had }),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(HeadError::Timeout))
}

/// A body that could not be passed on.
#[derive(Debug)]
enum BodyError {
    Io(std::io::Error),
    /// The sender's chunked framing broke mid-body.
    Framing(FramingError),
}

impl From<std::io::Error> for BodyError {
    fn from(e: std::io::Error) -> Self {
        BodyError::Io(e)
    }
}

/// Copies exactly `n` body bytes from `src` (its buffer first) to `dst`.
async fn copy_len(src: &mut Conn, dst: &mut TcpStream, mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        if src.buf.is_empty() && src.fill().await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let take = (src.buf.len() as u64).min(n) as usize;
        dst.write_all(&src.buf[..take]).await?;
        src.buf.advance(take);
        n -= take as u64;
    }
    Ok(())
}

/// Decodes the rest of a chunked body from `src` and writes what `dec` makes
/// of it (re-chunked or plain) to `dst`.
async fn copy_chunked(
    src: &mut Conn,
    dst: &mut TcpStream,
    dec: &mut Chunked,
) -> Result<(), BodyError> {
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        let used = dec.decode(&src.buf, &mut out).map_err(BodyError::Framing)?;
        src.buf.advance(used);
        if !out.is_empty() {
            dst.write_all(&out).await?;
            out.clear();
        }
        if dec.done() {
            return Ok(());
        }
        if src.fill().await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

/// Copies until `src` closes.
async fn copy_to_end(src: &mut Conn, dst: &mut TcpStream) -> std::io::Result<()> {
    loop {
        if !src.buf.is_empty() {
            dst.write_all(&src.buf).await?;
            src.buf.clear();
        }
        if src.fill().await? == 0 {
            return Ok(());
        }
    }
}

/// A complete small response from the proxy itself.
fn answer(status: u16, reason: &str, msg: &str, close: bool) -> Vec<u8> {
    let body = format!("{msg}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

struct Inflight(Arc<Upstream>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What became of one request.
enum Outcome {
    /// Answered; keep the client connection for the next request.
    KeepAlive,
    /// Answered (or not); close the client connection.
    Close,
}

impl Proxy {
    /// A proxy for `service` routing to `pool`.
    pub fn new(service: &str, pool: Arc<Pool>, metrics: ProxyMetrics) -> Self {
        let label = |code: &str| StatusLabel {
            service: service.to_string(),
            code: code.to_string(),
        };
        let by_class = Arc::new(std::array::from_fn(|i| {
            metrics
                .requests
                .get_or_create(&label(&format!("{i}xx")))
                .clone()
        }));
        let service_label = ServiceLabel {
            service: service.to_string(),
        };
        let duration = metrics.duration.get_or_create(&service_label).clone();
        let retries = metrics.retries.get_or_create(&service_label).clone();
        Proxy {
            service: service.into(),
            pool,
            metrics,
            by_class,
            duration,
            retries,
        }
    }

    /// Accepts connections until `cancel`.
    pub async fn serve(self, listener: TcpListener, cancel: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(service = %self.service, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = cancel.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = proxy.connection(Conn::new(stream), peer) => {}
                    // Give requests in flight a moment, then go.
                    _ = async { cancel.cancelled().await; tokio::time::sleep(Duration::from_secs(5)).await } => {}
                }
            });
        }
    }

    fn count(&self, started: Instant, status: u16) {
        self.by_class[(status / 100).min(5) as usize].inc();
        self.duration.observe(started.elapsed().as_secs_f64());
    }

    /// Answers a request the proxy refuses itself, and closes.
    async fn refuse(&self, client: &mut Conn, started: Instant, e: &FramingError) -> Outcome {
        let (status, reason) = match e {
            FramingError::TooManyHeaders => (431, "Request Header Fields Too Large"),
            FramingError::Connect => (405, "Method Not Allowed"),
            _ => (400, "Bad Request"),
        };
        let _ = client
            .s
            .write_all(&answer(status, reason, &format!("bad request: {e}"), true))
            .await;
        self.count(started, status);
        Outcome::Close
    }

    async fn connection(&self, mut client: Conn, peer: SocketAddr) {
        let peer = peer.ip().to_string();
        let local = client
            .s
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "localhost".into());
        let via = Via {
            client: &peer,
            host: &local,
        };
        loop {
            let head = match read_head(&mut client, Kind::Request, CLIENT_TIMEOUT).await {
                Ok(h) => h,
                Err(HeadError::Closed { .. }) | Err(HeadError::Timeout) => return,
                Err(HeadError::TooLarge) => {
                    let _ = client
                        .s
                        .write_all(&answer(
                            431,
                            "Request Header Fields Too Large",
                            "request head too large",
                            true,
                        ))
                        .await;
                    return;
                }
                Err(HeadError::Invalid(e)) => {
                    self.refuse(&mut client, Instant::now(), &e).await;
                    return;
                }
            };
            match self.request(&mut client, head, &via).await {
                Outcome::KeepAlive => {}
                Outcome::Close => return,
            }
        }
    }

    async fn request(&self, client: &mut Conn, head: Head, via: &Via<'_>) -> Outcome {
        let started = Instant::now();
        let framing = head.request_framing();
        let client_close = head.closes();
        if head.expects_continue() {
            // Answered here: the body is read (or streamed) right after.
            if client
                .s
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return Outcome::Close;
            }
        }
        // The head the instance gets, re-serialised from the decided framing.
        let mut out = Vec::with_capacity(512);
        head.write_request(&mut out, via, framing);
        let head_len = out.len();
        // Small bodies are read now, so a failed connection can be retried;
        // a chunked one is decoded (and so checked) up to the limit first.
        let mut chunked = Chunked::new(true);
        let retryable = match framing {
            BodyFraming::None => true,
            BodyFraming::Length(n) if n <= RETRY_BODY_LIMIT as u64 => {
                while (client.buf.len() as u64) < n {
                    match client.fill().await {
                        Ok(0) | Err(_) => return Outcome::Close,
                        Ok(_) => {}
                    }
                }
                out.extend_from_slice(&client.buf[..n as usize]);
                client.buf.advance(n as usize);
                true
            }
            BodyFraming::Length(_) => false,
            BodyFraming::Chunked => loop {
                match chunked.decode(&client.buf, &mut out) {
                    Ok(used) => client.buf.advance(used),
                    Err(e) => return self.refuse(client, started, &e).await,
                }
                if chunked.done() {
                    break true;
                }
                if out.len() - head_len > RETRY_BODY_LIMIT {
                    break false;
                }
                match client.fill().await {
                    Ok(0) | Err(_) => return Outcome::Close,
                    Ok(_) => {}
                }
            },
        };

        let mut tried: Vec<String> = Vec::new();
        let mut stale_retries = 0;
        loop {
            let Some(up) = self.pool.pick(&tried) else {
                let msg = if tried.is_empty() {
                    "no instance of this service is ready"
                } else {
                    "every ready instance refused the connection"
                };
                let _ = client
                    .s
                    .write_all(&answer(503, "Service Unavailable", msg, client_close))
                    .await;
                self.count(started, 503);
                return if client_close || !retryable {
                    Outcome::Close
                } else {
                    Outcome::KeepAlive
                };
            };
            let (sent_counter, error_counter) = up.counters.get_or_init(|| {
                let labels = InstanceLabel {
                    service: self.service.to_string(),
                    instance: up.id.clone(),
                };
                (
                    self.metrics
                        .upstream_requests
                        .get_or_create(&labels)
                        .clone(),
                    self.metrics.upstream_errors.get_or_create(&labels).clone(),
                )
            });
            let pooled = if stale_retries == 0 {
                up.take_idle()
            } else {
                None
            };
            let reused = pooled.is_some();
            let mut upstream = match pooled {
                Some(c) => c,
                None => {
                    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(up.addr)).await {
                        Ok(Ok(s)) => {
                            let _ = s.set_nodelay(true);
                            Conn::new(s)
                        }
                        _ => {
                            // Nothing reached the instance: try another.
                            error_counter.inc();
                            if retryable {
                                self.retries.inc();
                                tried.push(up.id.clone());
                                continue;
                            }
                            let _ = client
                                .s
                                .write_all(&answer(
                                    502,
                                    "Bad Gateway",
                                    "the instance refused the connection",
                                    true,
                                ))
                                .await;
                            self.count(started, 502);
                            return Outcome::Close;
                        }
                    }
                }
            };
            sent_counter.inc();
            up.inflight.fetch_add(1, Ordering::Relaxed);
            let guard = Inflight(up.clone());
            // Send the head (and a buffered body); stream a larger one.
            let sent = async {
                upstream.s.write_all(&out).await?;
                match framing {
                    _ if retryable => Ok(()),
                    BodyFraming::Length(n) => Ok(copy_len(client, &mut upstream.s, n).await?),
                    BodyFraming::Chunked => {
                        copy_chunked(client, &mut upstream.s, &mut chunked).await
                    }
                    BodyFraming::None => Ok(()),
                }
            }
            .await;
            match sent {
                Ok(()) => {}
                Err(BodyError::Framing(e)) => {
                    // The instance got part of a body that will never end:
                    // its connection goes with the client's.
                    drop(guard);
                    return self.refuse(client, started, &e).await;
                }
                Err(BodyError::Io(e)) => {
                    drop(guard);
                    if reused && retryable && stale_retries < 3 {
                        // A kept-alive connection the instance had closed.
                        stale_retries += 1;
                        continue;
                    }
                    error_counter.inc();
                    tracing::warn!(instance = %up.id, "sending the request failed: {e}");
                    let _ = client
                        .s
                        .write_all(&answer(502, "Bad Gateway", "the instance failed", true))
                        .await;
                    self.count(started, 502);
                    return Outcome::Close;
                }
            }
            // The response head; interim 1xx ones are passed on (but 100,
            // which the proxy answered itself, and none to HTTP/1.0 clients).
            let mut interim = 0;
            let resp = loop {
                let h = match read_head(&mut upstream, Kind::Response, UPSTREAM_TIMEOUT).await {
                    Ok(h) => h,
                    Err(e) => break Err(e),
                };
                match h.response_framing(&head) {
                    Ok(ResponseFraming::Interim) if interim < MAX_INTERIM => {
                        interim += 1;
                        if h.status() != 100 && head.minor() >= 1 {
                            let mut bytes = Vec::with_capacity(128);
                            h.write_interim(&mut bytes);
                            if client.s.write_all(&bytes).await.is_err() {
                                return Outcome::Close;
                            }
                        }
                    }
                    Ok(ResponseFraming::Interim) => {
                        break Err(HeadError::Invalid(FramingError::Syntax(
                            "too many interim responses",
                        )));
                    }
                    Ok(f) => break Ok((h, f)),
                    Err(e) => break Err(HeadError::Invalid(e)),
                }
            };
            let (resp, resp_framing) = match resp {
                Ok(r) => r,
                Err(HeadError::Closed { got_bytes: false })
                    if reused && retryable && stale_retries < 3 && interim == 0 =>
                {
                    drop(guard);
                    stale_retries += 1;
                    continue;
                }
                Err(e) => {
                    drop(guard);
                    error_counter.inc();
                    let (status, reason, msg) = match e {
                        HeadError::Timeout => (
                            504,
                            "Gateway Timeout",
                            "the instance did not answer in time",
                        ),
                        HeadError::Invalid(_) => {
                            (502, "Bad Gateway", "the instance sent an invalid response")
                        }
                        _ => (502, "Bad Gateway", "the instance failed"),
                    };
                    tracing::warn!(instance = %up.id, "upstream request failed: {e:?}");
                    let _ = client.s.write_all(&answer(status, reason, msg, true)).await;
                    self.count(started, status);
                    return Outcome::Close;
                }
            };
            return self
                .respond(
                    client,
                    upstream,
                    resp,
                    resp_framing,
                    &head,
                    client_close,
                    started,
                    guard,
                )
                .await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &self,
        client: &mut Conn,
        mut upstream: Conn,
        resp: Head,
        framing: ResponseFraming,
        req: &Head,
        client_close: bool,
        started: Instant,
        guard: Inflight,
    ) -> Outcome {
        self.count(started, resp.status());
        let mut out = Vec::with_capacity(512);
        if framing == ResponseFraming::Switch {
            resp.write_response(&mut out, framing, framing, false, req.minor());
            out.extend_from_slice(&upstream.buf);
            upstream.buf.clear();
            if client.s.write_all(&out).await.is_err() {
                return Outcome::Close;
            }
            if !client.buf.is_empty() {
                if upstream.s.write_all(&client.buf).await.is_err() {
                    return Outcome::Close;
                }
                client.buf.clear();
            }
            let _guard = guard;
            let _ = tokio::io::copy_bidirectional(&mut client.s, &mut upstream.s).await;
            return Outcome::Close;
        }
        // An HTTP/1.0 client cannot read chunks: it gets the body plain,
        // delimited by the end of the connection.
        let to = match framing {
            ResponseFraming::Chunked if req.minor() == 0 => ResponseFraming::Close,
            f => f,
        };
        let close = client_close || to == ResponseFraming::Close;
        resp.write_response(&mut out, framing, to, close, req.minor());
        // A body already read (a small response) goes out with its head.
        let mut dec = Chunked::new(to == ResponseFraming::Chunked);
        let mut rest = framing;
        match framing {
            ResponseFraming::Length(n) if (upstream.buf.len() as u64) >= n => {
                out.extend_from_slice(&upstream.buf[..n as usize]);
                upstream.buf.advance(n as usize);
                rest = ResponseFraming::None;
            }
            ResponseFraming::Chunked => match dec.decode(&upstream.buf, &mut out) {
                Ok(used) => {
                    upstream.buf.advance(used);
                    if dec.done() {
                        rest = ResponseFraming::None;
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = %guard.0.id, "invalid chunked response: {e}");
                    drop(guard);
                    let _ = client
                        .s
                        .write_all(&answer(
                            502,
                            "Bad Gateway",
                            "the instance sent an invalid response",
                            true,
                        ))
                        .await;
                    return Outcome::Close;
                }
            },
            _ => {}
        }
        let copied = async {
            client.s.write_all(&out).await?;
            match rest {
                ResponseFraming::Length(n) => Ok(copy_len(&mut upstream, &mut client.s, n).await?),
                ResponseFraming::Chunked => {
                    copy_chunked(&mut upstream, &mut client.s, &mut dec).await
                }
                ResponseFraming::Close => Ok(copy_to_end(&mut upstream, &mut client.s).await?),
                _ => Ok(()),
            }
        }
        .await;
        let up = guard.0.clone();
        drop(guard);
        if copied.is_err() {
            // A body cut short (or broken mid-way) cannot be mended: the
            // client's connection ends so it sees the truncation.
            return Outcome::Close;
        }
        // Back to the pool when the instance keeps it, nothing is left over,
        // and no body bytes beyond the framing may follow.
        if !resp.closes()
            && framing != ResponseFraming::Close
            && upstream.buf.is_empty()
            && !resp.leaves_doubt(framing, req)
        {
            up.keep_idle(upstream);
        }
        if close {
            Outcome::Close
        } else {
            Outcome::KeepAlive
        }
    }
}
