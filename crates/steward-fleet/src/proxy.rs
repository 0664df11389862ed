//! The reverse proxy in front of a service: HTTP/1.1 with keep-alive on both
//! sides, WebSocket (and any `Upgrade`) passthrough, routing to ready instances
//! only (the least busy first), draining, and a retry on another instance when
//! a connection fails before anything was sent.
//!
//! Written on hyper directly: the proxy is the hot path and needs exactly these
//! behaviours (drain accounting, retry-before-send, per-instance metrics), which
//! the maintained general-purpose proxy crates either lack or bury under a
//! framework.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type Body = BoxBody<Bytes, hyper::Error>;

/// Requests with bodies up to this size are buffered so they can be retried.
const RETRY_BODY_LIMIT: u64 = 64 * 1024;
/// An instance must send response headers within this.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// One instance the proxy may send requests to.
#[derive(Debug)]
pub struct Upstream {
    /// Instance id.
    pub id: String,
    /// Its address.
    pub addr: SocketAddr,
    authority: hyper::http::uri::Authority,
    inflight: AtomicU64,
    /// Its request and error counters, looked up once.
    counters: std::sync::OnceLock<(Counter, Counter)>,
}

impl Upstream {
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
                            authority: addr
                                .to_string()
                                .parse()
                                .expect("a socket address is an authority"),
                            inflight: AtomicU64::new(0),
                            counters: std::sync::OnceLock::new(),
                        })
                    })
            })
            .collect();
        *ready = Arc::new(next);
    }

    /// Takes an instance out of rotation; returns it so its in-flight requests
    /// can be waited for.
    pub fn remove(&self, id: &str) -> Option<Arc<Upstream>> {
        let mut ready = self.ready.write().unwrap_or_else(|e| e.into_inner());
        let found = ready.iter().find(|u| u.id == id).cloned();
        if found.is_some() {
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
    client: Client<HttpConnector, Body>,
    metrics: ProxyMetrics,
    /// Per status class (index 1 = 1xx ... 5 = 5xx), looked up once: the hot
    /// path must not hash label sets.
    by_class: Arc<[Counter; 6]>,
    duration: Histogram,
    retries: Counter,
}

fn client() -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .build(connector)
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
            client: client(),
            by_class,
            duration,
            retries,
            metrics,
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
                let svc = hyper::service::service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, peer).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = cancel.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
            });
        }
    }

    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        add_forwarded(&mut parts.headers, peer);
        // Bodies small enough (or absent) are kept so a failed connection can be retried.
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
        let mut buffered: Option<Bytes> = None;
        let mut streaming: Option<Incoming> = None;
        match (length, chunked) {
            (Some(n), false) if n <= RETRY_BODY_LIMIT => match body.collect().await {
                Ok(b) => buffered = Some(b.to_bytes()),
                Err(_) => {
                    return self.answer(started, error(StatusCode::BAD_REQUEST, "request body"));
                }
            },
            (None, false) => buffered = Some(Bytes::new()),
            _ => streaming = Some(body),
        }
        let mut tried: Vec<String> = Vec::new();
        loop {
            let Some(up) = self.pool.pick(&tried) else {
                let msg = if tried.is_empty() {
                    "no instance of this service is ready"
                } else {
                    "every ready instance refused the connection"
                };
                return self.answer(started, error(StatusCode::SERVICE_UNAVAILABLE, msg));
            };
            let body: Body = match (&buffered, streaming.take()) {
                (Some(b), _) => Full::new(b.clone()).map_err(|never| match never {}).boxed(),
                (None, Some(s)) => s.boxed(),
                (None, None) => unreachable!("a streamed body is only sent once"),
            };
            let uri = hyper::Uri::builder()
                .scheme(hyper::http::uri::Scheme::HTTP)
                .authority(up.authority.clone())
                .path_and_query(
                    parts
                        .uri
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/")),
                )
                .build()
                .expect("a valid upstream URI");
            let mut builder = Request::builder()
                .method(parts.method.clone())
                .uri(uri)
                .version(hyper::Version::HTTP_11);
            if let Some(h) = builder.headers_mut() {
                *h = parts.headers.clone();
            }
            let out = builder.body(body).expect("a valid request");
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
            sent_counter.inc();
            up.inflight.fetch_add(1, Ordering::Relaxed);
            let guard = Inflight(up.clone());
            let sent = tokio::time::timeout(UPSTREAM_TIMEOUT, self.client.request(out)).await;
            match sent {
                Ok(Ok(mut resp)) => {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(client_side) = client_upgrade
                    {
                        let upstream_side = hyper::upgrade::on(&mut resp);
                        tokio::spawn(async move {
                            let _guard = guard;
                            if let (Ok(a), Ok(b)) = (client_side.await, upstream_side.await) {
                                let _ = tokio::io::copy_bidirectional(
                                    &mut TokioIo::new(a),
                                    &mut TokioIo::new(b),
                                )
                                .await;
                            }
                        });
                        let (mut p, _) = resp.into_parts();
                        p.headers.remove(header::CONTENT_LENGTH);
                        return self.answer(started, Response::from_parts(p, empty()));
                    }
                    let (mut p, b) = resp.into_parts();
                    strip_hop_by_hop(&mut p.headers, false);
                    let body = b.map_frame(|f| f).boxed();
                    // The in-flight count lasts until the body is fully sent.
                    let body = Tracked {
                        inner: body,
                        _guard: guard,
                    }
                    .boxed();
                    return self.answer(started, Response::from_parts(p, body));
                }
                Ok(Err(e)) => {
                    drop(guard);
                    error_counter.inc();
                    // Nothing reached the instance: safe to try another.
                    if e.is_connect() && buffered.is_some() {
                        tracing::debug!(instance = %up.id, "connect failed, retrying elsewhere: {e}");
                        self.retries.inc();
                        tried.push(up.id.clone());
                        continue;
                    }
                    tracing::warn!(instance = %up.id, "upstream request failed: {e}");
                    return self.answer(
                        started,
                        error(StatusCode::BAD_GATEWAY, "the instance failed"),
                    );
                }
                Err(_) => {
                    drop(guard);
                    error_counter.inc();
                    return self.answer(
                        started,
                        error(
                            StatusCode::GATEWAY_TIMEOUT,
                            "the instance did not answer in time",
                        ),
                    );
                }
            }
        }
    }

    fn answer(&self, started: Instant, resp: Response<Body>) -> Response<Body> {
        let class = (resp.status().as_u16() / 100).min(5) as usize;
        self.by_class[class].inc();
        self.duration.observe(started.elapsed().as_secs_f64());
        resp
    }
}

struct Inflight(Arc<Upstream>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A body that holds an in-flight guard until it is done.
struct Tracked {
    inner: Body,
    _guard: Inflight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

fn error(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
                .unwrap_or(false)
        })
}

/// Removes the headers that describe one connection (RFC 9110 §7.6.1), keeping
/// `Connection: upgrade` and `Upgrade` when passing an upgrade through.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "proxy-authenticate",
        "proxy-authorization",
    ] {
        h.remove(n);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

fn add_forwarded(h: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let value = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert("x-forwarded-for", v);
    }
    if let Some(host) = h.get(header::HOST).cloned() {
        h.insert("x-forwarded-host", host);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_upgrades_stay() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-private").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get("x-app").unwrap(), "kept");

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
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
        // Setting the same set again keeps counters.
        pool.set(&[("a".into(), a), ("b".into(), b)]);
        assert_eq!(pool.ready().iter().map(|u| u.inflight()).sum::<u64>(), 1);
        assert!(pool.remove("a").is_some());
        assert_eq!(pool.ready().len(), 1);
    }
}
