//! The reverse proxy in front of a service: HTTP/1.1 with keep-alive on both
//! sides, `Upgrade` (WebSocket) passthrough, routing to ready instances only
//! (the least busy first), draining, and a retry on another instance when a
//! connection fails before anything was sent.
//!
//! It speaks HTTP/1.1 itself, on the bytes: one task per client connection
//! reads a request head (httparse), forwards head and body to a pooled
//! connection of the chosen instance, reads the response head and streams the
//! body back by its framing (length, chunked, or until close). Nothing crosses
//! a task or a channel per request, and a small response goes out in one write.
//! (A hyper server + client pair measured 0.65× nginx's requests per CPU here;
//! `benches/proxy.sh`.) Framing follows RFC 9112: `Transfer-Encoding` wins over
//! `Content-Length`; responses to HEAD and 1xx/204/304 have no body; a response
//! without either ends when the instance closes (the client connection is then
//! closed too). `Expect: 100-continue` is answered by the proxy itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Requests with bodies up to this size are buffered so they can be retried.
const RETRY_BODY_LIMIT: u64 = 64 * 1024;
/// An instance must send response headers within this.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// A client has this long to send a request head (also the keep-alive idle limit).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to an instance.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request or response head.
const MAX_HEAD: usize = 64 * 1024;
/// Idle connections kept per instance.
const MAX_IDLE: usize = 128;
/// Headers that describe one connection (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// One instance the proxy may send requests to.
#[derive(Debug)]
pub struct Upstream {
    /// Instance id.
    pub id: String,
    /// Its address.
    pub addr: SocketAddr,
    inflight: AtomicU64,
    /// Idle keep-alive connections to it.
    idle: Mutex<Vec<Conn>>,
    /// Out of rotation: its connections are not kept any more.
    retired: std::sync::atomic::AtomicBool,
    /// Its request and error counters, looked up once.
    counters: std::sync::OnceLock<(Counter, Counter)>,
}

impl Upstream {
    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Requests it is handling now.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// The instances taking traffic. The controller sets it; the proxy reads it.
#[derive(Debug, Default)]
pub struct Pool {
    ready: RwLock<Arc<Vec<Arc<Upstream>>>>,
    next: AtomicUsize,
}

impl Pool {
    /// Sets the instances that take traffic (ids with addresses). Instances kept
    /// keep their in-flight counts.
    pub fn set(&self, wanted: &[(String, SocketAddr)]) {
        let mut ready = self.ready.write().unwrap_or_else(|e| e.into_inner());
        if ready.len() == wanted.len()
            && ready
                .iter()
                .zip(wanted)
                .all(|(u, (id, addr))| &u.id == id && u.addr == *addr)
        {
            return;
        }
        let next: Vec<Arc<Upstream>> = wanted
            .iter()
            .map(|(id, addr)| {
                ready
                    .iter()
                    .find(|u| &u.id == id && u.addr == *addr)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Upstream {
                            id: id.clone(),
                            addr: *addr,
                            inflight: AtomicU64::new(0),
                            idle: Mutex::default(),
                            retired: Default::default(),
                            counters: std::sync::OnceLock::new(),
                        })
                    })
            })
            .collect();
        for gone in ready
            .iter()
            .filter(|u| !next.iter().any(|n| Arc::ptr_eq(n, u)))
        {
            gone.retire();
        }
        *ready = Arc::new(next);
    }

    /// Takes an instance out of rotation; returns it so its in-flight requests
    /// can be waited for.
    pub fn remove(&self, id: &str) -> Option<Arc<Upstream>> {
        let mut ready = self.ready.write().unwrap_or_else(|e| e.into_inner());
        let found = ready.iter().find(|u| u.id == id).cloned();
        if let Some(u) = &found {
            u.retire();
            let rest: Vec<_> = ready.iter().filter(|u| u.id != id).cloned().collect();
            *ready = Arc::new(rest);
        }
        found
    }

    /// Instances in rotation.
    pub fn ready(&self) -> Arc<Vec<Arc<Upstream>>> {
        self.ready.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The least busy instance not in `skip`, round-robin among equals.
    fn pick(&self, skip: &[String]) -> Option<Arc<Upstream>> {
        let ready = self.ready();
        let n = ready.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &ready[(start + i) % n])
            .filter(|u| !skip.contains(&u.id))
            .min_by_key(|u| u.inflight())
            .cloned()
    }
}

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
struct Conn {
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

/// A parsed message head (request or response): the head's bytes and where
/// each part lies in them, plus what the proxy asks of it, worked out once.
#[derive(Debug, Default)]
struct Head {
    raw: bytes::Bytes,
    /// Request: method. Response: reason phrase.
    first: std::ops::Range<usize>,
    /// Request: target.
    target: std::ops::Range<usize>,
    /// Response: status.
    status: u16,
    /// HTTP/1.x minor version.
    minor: u8,
    headers: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    conn_close: bool,
    conn_keep_alive: bool,
    conn_upgrade: bool,
    /// `Connection` names other headers (rare): they are dropped too.
    conn_named: Vec<String>,
    /// `Transfer-Encoding` present, and whether its last coding is chunked.
    te: Option<bool>,
    /// Content-Length.
    length: Option<u64>,
    /// Content-Length invalid or conflicting.
    bad_length: bool,
    expect_continue: bool,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

#[derive(Debug)]
enum HeadError {
    /// The peer closed (or reset) before a complete head.
    Closed {
        got_bytes: bool,
    },
    TooLarge,
    Invalid(String),
    Timeout,
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

impl Head {
    fn bytes(&self, r: &std::ops::Range<usize>) -> &[u8] {
        &self.raw[r.clone()]
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| self.raw[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &self.raw[v.clone()])
    }

    /// Works out connection options, framing and expectations from the headers.
    fn derive(&mut self) {
        let mut te_last = None;
        let mut length: Result<Option<u64>, ()> = Ok(None);
        for (n, v) in &self.headers {
            let (name, value) = (&self.raw[n.clone()], &self.raw[v.clone()]);
            if name.eq_ignore_ascii_case(b"connection") {
                for t in tokens(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        self.conn_close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        self.conn_keep_alive = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        self.conn_upgrade = true;
                    } else {
                        self.conn_named
                            .push(String::from_utf8_lossy(t).to_ascii_lowercase());
                    }
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                if let Some(last) = tokens(value).last() {
                    te_last = Some(last.eq_ignore_ascii_case(b"chunked"));
                }
            } else if name.eq_ignore_ascii_case(b"content-length") {
                let parsed = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok());
                length = match (length, parsed) {
                    (Ok(None), Some(n)) => Ok(Some(n)),
                    (Ok(Some(m)), Some(n)) if m == n => Ok(Some(n)),
                    _ => Err(()),
                };
            } else if name.eq_ignore_ascii_case(b"expect") {
                self.expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
        }
        self.te = te_last;
        match length {
            Ok(l) => self.length = l,
            Err(()) => self.bad_length = true,
        }
    }

    /// Body framing per RFC 9112 §6.3 (`request` decides the no-length case).
    fn framing(&self, request: bool) -> Result<Framing, String> {
        match self.te {
            Some(true) => return Ok(Framing::Chunked),
            Some(false) if request => {
                return Err("a request body must be chunked when transfer-encoded".into());
            }
            Some(false) => return Ok(Framing::Close),
            None => {}
        }
        match (self.bad_length, self.length) {
            (true, _) => Err("invalid or conflicting Content-Length".into()),
            (false, Some(n)) => Ok(Framing::Length(n)),
            (false, None) if request => Ok(Framing::None),
            (false, None) => Ok(Framing::Close),
        }
    }

    fn upgrade(&self) -> Option<&[u8]> {
        if self.conn_upgrade {
            self.get("upgrade")
        } else {
            None
        }
    }

    /// Whether the sender wants the connection closed after this message.
    fn closes(&self) -> bool {
        self.conn_close || (self.minor == 0 && !self.conn_keep_alive)
    }

    /// The headers to forward: without hop-by-hop ones and those `Connection` names.
    fn end_to_end(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
            .filter(|(n, _)| {
                !is_hop_by_hop(n)
                    && (self.conn_named.is_empty()
                        || !self
                            .conn_named
                            .iter()
                            .any(|c| c.as_bytes().eq_ignore_ascii_case(n)))
            })
    }
}

fn parse_head(buf: &[u8], request: bool) -> Result<Option<(usize, Head)>, HeadError> {
    let mut raw = [httparse::EMPTY_HEADER; 128];
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let ranges =
        |raw: &[httparse::Header<'_>]| -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
            raw.iter()
                .map(|h| (at(h.name.as_bytes()), at(h.value)))
                .collect()
        };
    let mut head = if request {
        let mut req = httparse::Request::new(&mut raw);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => (
                n,
                Head {
                    first: at(req.method.unwrap_or_default().as_bytes()),
                    target: at(req.path.unwrap_or_default().as_bytes()),
                    minor: req.version.unwrap_or(1),
                    headers: ranges(req.headers),
                    ..Head::default()
                },
            ),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(HeadError::Invalid(e.to_string())),
        }
    } else {
        let mut resp = httparse::Response::new(&mut raw);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => (
                n,
                Head {
                    first: resp.reason.map(|r| at(r.as_bytes())).unwrap_or(0..0),
                    status: resp.code.unwrap_or(502),
                    minor: resp.version.unwrap_or(1),
                    headers: ranges(resp.headers),
                    ..Head::default()
                },
            ),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(HeadError::Invalid(e.to_string())),
        }
    };
    head.1.raw = bytes::Bytes::copy_from_slice(&buf[..head.0]);
    head.1.derive();
    Ok(Some(head))
}

/// Reads one head from `c` within `limit`.
async fn read_head(c: &mut Conn, request: bool, limit: Duration) -> Result<Head, HeadError> {
    let work = async {
        loop {
            if !c.buf.is_empty() {
                if let Some((n, head)) = parse_head(&c.buf, request)? {
                    c.buf.advance(n);
                    return Ok(head);
                }
                if c.buf.len() > MAX_HEAD {
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

/// One CRLF-terminated line from `src` (the CRLF included), at most 8 KiB.
async fn line(src: &mut Conn) -> std::io::Result<Vec<u8>> {
    loop {
        if let Some(i) = src.buf.windows(2).position(|w| w == b"\r\n") {
            let l = src.buf[..i + 2].to_vec();
            src.buf.advance(i + 2);
            return Ok(l);
        }
        if src.buf.len() > 8 * 1024 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "chunk line too long",
            ));
        }
        if src.fill().await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Copies a chunked body as it is (sizes, extensions, trailers) to `dst`,
/// parsing only enough to know where it ends.
async fn copy_chunked(src: &mut Conn, dst: &mut TcpStream) -> std::io::Result<()> {
    loop {
        let size_line = line(src).await?;
        let text = String::from_utf8_lossy(&size_line[..size_line.len() - 2]).to_string();
        let hex = text.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(hex, 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
        dst.write_all(&size_line).await?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let l = line(src).await?;
                dst.write_all(&l).await?;
                if l == b"\r\n" {
                    return Ok(());
                }
            }
        }
        copy_len(src, dst, size + 2).await?;
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

async fn copy_body(src: &mut Conn, dst: &mut TcpStream, f: Framing) -> std::io::Result<()> {
    match f {
        Framing::None => Ok(()),
        Framing::Length(n) => copy_len(src, dst, n).await,
        Framing::Chunked => copy_chunked(src, dst).await,
        Framing::Close => copy_to_end(src, dst).await,
    }
}

/// A status code's three digits.
fn itoa3(n: u16) -> [u8; 3] {
    [
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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

    async fn connection(&self, mut client: Conn, peer: SocketAddr) {
        let peer = peer.ip().to_string();
        loop {
            let head = match read_head(&mut client, true, CLIENT_TIMEOUT).await {
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
                    let _ = client
                        .s
                        .write_all(&answer(
                            400,
                            "Bad Request",
                            &format!("bad request: {e}"),
                            true,
                        ))
                        .await;
                    return;
                }
            };
            match self.request(&mut client, head, &peer).await {
                Outcome::KeepAlive => {}
                Outcome::Close => return,
            }
        }
    }

    async fn request(&self, client: &mut Conn, head: Head, peer: &str) -> Outcome {
        let started = Instant::now();
        let framing = match head.framing(true) {
            Ok(f) => f,
            Err(e) => {
                let _ = client
                    .s
                    .write_all(&answer(400, "Bad Request", &e, true))
                    .await;
                self.count(started, 400);
                return Outcome::Close;
            }
        };
        let client_close = head.closes();
        let upgrade = head.upgrade().map(<[u8]>::to_vec);
        if head.expect_continue {
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
        // The head the instance gets.
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(head.bytes(&head.first));
        out.push(b' ');
        out.extend_from_slice(head.bytes(&head.target));
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut forwarded_for = std::borrow::Cow::Borrowed(peer);
        for (n, v) in head.end_to_end() {
            if n.eq_ignore_ascii_case(b"x-forwarded-for") {
                forwarded_for = format!("{}, {peer}", String::from_utf8_lossy(v)).into();
                continue;
            }
            if n.eq_ignore_ascii_case(b"expect")
                || n.eq_ignore_ascii_case(b"x-forwarded-host")
                || n.eq_ignore_ascii_case(b"x-forwarded-proto")
            {
                continue;
            }
            push_header(&mut out, n, v);
        }
        push_header(&mut out, b"x-forwarded-for", forwarded_for.as_bytes());
        if let Some(host) = head.get("host") {
            push_header(&mut out, b"x-forwarded-host", host);
        }
        push_header(&mut out, b"x-forwarded-proto", b"http");
        if framing == Framing::Chunked {
            push_header(&mut out, b"transfer-encoding", b"chunked");
        }
        if let Some(u) = &upgrade {
            push_header(&mut out, b"connection", b"upgrade");
            push_header(&mut out, b"upgrade", u);
        }
        out.extend_from_slice(b"\r\n");
        // Small bodies are read now, so a failed connection can be retried.
        let retryable = match framing {
            Framing::None => true,
            Framing::Length(n) if n <= RETRY_BODY_LIMIT => {
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
            _ => false,
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
                up.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
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
                if !retryable {
                    copy_body(client, &mut upstream.s, framing).await?;
                }
                Ok::<(), std::io::Error>(())
            }
            .await;
            if sent.is_err() {
                drop(guard);
                if reused && retryable && stale_retries < 3 {
                    // A kept-alive connection the instance had closed.
                    stale_retries += 1;
                    continue;
                }
                error_counter.inc();
                let _ = client
                    .s
                    .write_all(&answer(502, "Bad Gateway", "the instance failed", true))
                    .await;
                self.count(started, 502);
                return Outcome::Close;
            }
            // The response head; interim 1xx ones are passed on.
            let resp = loop {
                match read_head(&mut upstream, false, UPSTREAM_TIMEOUT).await {
                    Ok(h) if (100..200).contains(&h.status) && h.status != 101 => {
                        let mut interim = format!("HTTP/1.1 {} ", h.status).into_bytes();
                        interim.extend_from_slice(h.bytes(&h.first));
                        interim.extend_from_slice(b"\r\n");
                        for (n, v) in h.end_to_end() {
                            push_header(&mut interim, n, v);
                        }
                        interim.extend_from_slice(b"\r\n");
                        if client.s.write_all(&interim).await.is_err() {
                            return Outcome::Close;
                        }
                    }
                    other => break other,
                }
            };
            let resp = match resp {
                Ok(h) => h,
                Err(HeadError::Closed { got_bytes: false })
                    if reused && retryable && stale_retries < 3 =>
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
                    &head,
                    upgrade.is_some(),
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
        req: &Head,
        upgrade: bool,
        client_close: bool,
        started: Instant,
        guard: Inflight,
    ) -> Outcome {
        let status = resp.status;
        self.count(started, status);
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa3(status).as_slice());
        out.push(b' ');
        out.extend_from_slice(resp.bytes(&resp.first));
        out.extend_from_slice(b"\r\n");
        for (n, v) in resp.end_to_end() {
            push_header(&mut out, n, v);
        }
        if status == 101 && upgrade {
            push_header(&mut out, b"connection", b"upgrade");
            if let Some(u) = resp.get("upgrade") {
                push_header(&mut out, b"upgrade", u);
            }
            out.extend_from_slice(b"\r\n");
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
        let no_body = req.bytes(&req.first).eq_ignore_ascii_case(b"HEAD")
            || status == 204
            || status == 304
            || (100..200).contains(&status);
        let framing = if no_body {
            Framing::None
        } else {
            match resp.framing(false) {
                Ok(f) => f,
                Err(_) => {
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
            }
        };
        let upstream_close = resp.closes();
        let close = client_close || framing == Framing::Close;
        if framing == Framing::Chunked {
            push_header(&mut out, b"transfer-encoding", b"chunked");
        }
        if close {
            push_header(&mut out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        // A body already read (a small response) goes out with its head.
        let mut framing = framing;
        if let Framing::Length(n) = framing
            && (upstream.buf.len() as u64) >= n
        {
            out.extend_from_slice(&upstream.buf[..n as usize]);
            upstream.buf.advance(n as usize);
            framing = Framing::None;
        }
        let copied = async {
            client.s.write_all(&out).await?;
            copy_body(&mut upstream, &mut client.s, framing).await
        }
        .await;
        let up = guard.0.clone();
        drop(guard);
        if copied.is_err() {
            return Outcome::Close;
        }
        // Back to the pool when the instance keeps it, nothing is left over,
        // and it still takes traffic.
        let reusable = !upstream_close && framing != Framing::Close && upstream.buf.is_empty();
        if reusable && !up.retired.load(Ordering::Relaxed) {
            let mut idle = up.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(upstream);
            }
        }
        if close {
            Outcome::Close
        } else {
            Outcome::KeepAlive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, request: bool) -> Head {
        parse_head(raw.as_bytes(), request).unwrap().unwrap().1
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!(h.framing(true).unwrap(), Framing::Length(5));
        let h = head(
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n",
            true,
        );
        assert_eq!(
            h.framing(true).unwrap(),
            Framing::Chunked,
            "transfer-encoding wins"
        );
        let h = head("GET / HTTP/1.1\r\n\r\n", true);
        assert_eq!(h.framing(true).unwrap(), Framing::None);
        let h = head("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(
            h.framing(false).unwrap(),
            Framing::Close,
            "a response without length ends at close"
        );
        let h = head(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            true,
        );
        assert!(h.framing(true).is_err());
        let h = head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", true);
        assert!(h.framing(true).is_err());
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost", true),
            Ok(None)
        ));
        assert!(matches!(
            parse_head(b"\x01\x02 nonsense\r\n\r\n", true),
            Err(HeadError::Invalid(_))
        ));
    }

    #[test]
    fn hop_by_hop_headers_go_and_upgrades_are_seen() {
        let h = head(
            "GET / HTTP/1.1\r\nConnection: keep-alive, x-private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nX-App: kept\r\nTE: trailers\r\n\r\n",
            true,
        );
        let names: Vec<&[u8]> = h.end_to_end().map(|(n, _)| n).collect();
        assert_eq!(names, vec![&b"X-App"[..]]);
        let h = head(
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            true,
        );
        assert_eq!(h.upgrade(), Some(&b"websocket"[..]));
        let h = head("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", true);
        assert_eq!(
            h.upgrade(),
            None,
            "Upgrade without Connection: upgrade is not one"
        );
    }

    #[test]
    fn picks_the_least_busy_and_skips_tried_ones() {
        let pool = Pool::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        pool.set(&[("a".into(), a), ("b".into(), b)]);
        let first = pool.pick(&[]).unwrap();
        first.inflight.fetch_add(1, Ordering::Relaxed);
        let second = pool.pick(&[]).unwrap();
        assert_ne!(first.id, second.id, "the idle one is picked");
        assert_eq!(
            pool.pick(&["a".into(), "b".into()]).map(|u| u.id.clone()),
            None
        );
        pool.set(&[("a".into(), a), ("b".into(), b)]);
        assert_eq!(pool.ready().iter().map(|u| u.inflight()).sum::<u64>(), 1);
        assert!(pool.remove("a").is_some());
        assert_eq!(pool.ready().len(), 1);
    }
}
