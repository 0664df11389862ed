//! The differential framing test: every case of the corpus is sent, byte for
//! byte, to three places — hyper's HTTP/1 server directly, nginx (Debian's)
//! as a reverse proxy, and steward's proxy — each in front of an instance that
//! records exactly the requests it parsed (hyper's server again). For every
//! case: if a reference (hyper or nginx) refuses it, steward refuses it and
//! closes the connection, having forwarded at most the requests before the
//! refused one; otherwise the instance behind steward saw exactly the
//! requests hyper read from the client's bytes (method, target, end-to-end
//! fields, body), one for one. Cases marked `strict` steward refuses even
//! where the references accept them; they are listed when the test runs.

mod corpus;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use steward_fleet::proxy::{Pool, Proxy, ProxyMetrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a client waits for more bytes before it counts the exchange as over.
const IDLE: Duration = Duration::from_secs(1);

/// A request as an instance parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    /// Lower-case names, in order.
    fields: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// Fields that describe a hop, which each intermediary rewrites.
const HOP_FIELDS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
    "expect",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-peer-port",
];

impl Seen {
    /// The fields a `Connection` field of this request names.
    fn named(&self) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(n, _)| n == "connection")
            .flat_map(|(_, v)| {
                String::from_utf8_lossy(v)
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// End-to-end fields only (what every hop must pass on unchanged), less
    /// those the client's `Connection` fields named.
    fn end_to_end(&self, named: &[String]) -> Seen {
        Seen {
            fields: self
                .fields
                .iter()
                .filter(|(n, _)| !HOP_FIELDS.contains(&n.as_str()) && !named.contains(n))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }
}

/// An instance built on hyper's server that records what it parsed, keyed by
/// the `x-peer-port` field (nginx adds it) or 0, and answers with an empty
/// 200 that says it came from here.
#[derive(Clone)]
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(u16, Seen)>>>,
    errors: Arc<AtomicUsize>,
}

impl Recorder {
    async fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Recorder {
            addr: l.local_addr().unwrap(),
            seen: Arc::default(),
            errors: Arc::default(),
        };
        let rec = r.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let svc_rec = rec.clone();
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let rec = svc_rec.clone();
                        async move { rec.record(req).await }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc);
                    if conn.await.is_err() {
                        rec.errors.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        r
    }

    async fn record(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let (parts, body) = req.into_parts();
        // A body that does not arrive whole is no request: counted, not seen.
        let body = match body.collect().await {
            Ok(b) => b.to_bytes().to_vec(),
            Err(_) => {
                self.errors.fetch_add(1, Ordering::SeqCst);
                return Ok(Response::new(Full::new(Bytes::new())));
            }
        };
        let fields = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let key = parts
            .headers
            .get("x-peer-port")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        self.seen.lock().unwrap().push((
            key,
            Seen {
                method: parts.method.to_string(),
                target: parts.uri.to_string(),
                fields,
                body,
            },
        ));
        Ok(Response::builder()
            .header("x-recorder", "1")
            .body(Full::new(Bytes::new()))
            .unwrap())
    }

    fn take(&self, key: u16) -> Vec<Seen> {
        let mut seen = self.seen.lock().unwrap();
        let (mine, rest): (Vec<_>, Vec<_>) = seen.drain(..).partition(|(k, _)| *k == key);
        *seen = rest;
        mine.into_iter().map(|(_, s)| s).collect()
    }
}

/// What one place made of one case.
#[derive(Debug)]
struct Observed {
    seen: Vec<Seen>,
    /// It answered a request itself with an error, or its parser failed.
    refused: bool,
    /// It closed the connection (rather than the client giving up).
    closed: bool,
}

/// Sends `bytes` on a new connection and reads until the server closes or
/// goes quiet; returns the client's port, what came back and whether the
/// server closed.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (u16, Vec<u8>, bool, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let port = s.local_addr().unwrap().port();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout(IDLE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (port, out, closed, s)
}

/// Whether any final response in `raw` did not come from a recorder.
fn answered_by_intermediary(raw: &[u8]) -> bool {
    let mut at = 0;
    while at < raw.len() {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut fields);
        let n = match resp.parse(&raw[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return false,
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) {
            at += n;
            continue;
        }
        if !resp
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("x-recorder"))
        {
            return true;
        }
        let len: usize = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
            .unwrap_or(0);
        at += n + len;
    }
    false
}

/// A reference reverse proxy (nginx, HAProxy) run privately for the test,
/// proxying to a recorder; killed on drop.
struct Reference {
    addr: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.exists())
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts `program` with `args` (`{conf}` replaced by the config file's path)
/// and waits for it to listen on `port`.
async fn reference(
    program: PathBuf,
    conf: String,
    args: &[&str],
    dir: tempfile::TempDir,
    port: u16,
) -> Reference {
    let conf_path = dir.path().join("proxy.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut child = std::process::Command::new(&program)
        .args(
            args.iter()
                .map(|a| a.replace("{conf}", &conf_path.display().to_string())),
        )
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return Reference {
                addr,
                child,
                _dir: dir,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{} did not start on {addr}", program.display());
}

/// nginx (Debian's) in front of `upstream`, with the same limits as steward
/// (64 KiB heads, no body limit: framing is under test, not sizes); the
/// client's port goes to the instance so each case finds its own requests.
async fn nginx(upstream: SocketAddr) -> Reference {
    let program = binary("nginx")
        .expect("nginx is needed for the differential framing test (scripts/testbed install)");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path().display();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1;
error_log {d}/error.log; pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  client_header_buffer_size 64k; large_client_header_buffers 4 64k;
  client_max_body_size 0;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://{upstream};
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header X-Peer-Port $remote_port;
    }}
  }}
}}
"
    );
    let prefix = d.to_string();
    reference(program, conf, &["-c", "{conf}", "-p", &prefix], dir, port).await
}

/// HAProxy (Debian's) in front of `upstream`, for the comparison
/// `benches/smuggling.sh` reports (not asserted: a point of comparison).
async fn haproxy(upstream: SocketAddr) -> Reference {
    let program = binary("haproxy").expect("haproxy (scripts/testbed install)");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = format!(
        "global
  maxconn 1024
  tune.bufsize 131072
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend f
  bind 127.0.0.1:{port}
  http-request set-header X-Peer-Port %[src_port]
  default_backend b
backend b
  server s {upstream}
"
    );
    reference(program, conf, &["-f", "{conf}", "-db"], dir, port).await
}

async fn direct(case: &corpus::Case) -> Observed {
    let rec = Recorder::start().await;
    let (_, out, closed, s) = exchange(rec.addr, &case.bytes).await;
    // Errors the client's own hang-up would cause are not refusals.
    let errors = rec.errors.load(Ordering::SeqCst);
    drop(s);
    Observed {
        seen: rec.take(0),
        refused: errors > 0 || answered_by_intermediary(&out),
        closed,
    }
}

async fn through(proxy: &Reference, rec: &Recorder, case: &corpus::Case) -> Observed {
    let (port, out, closed, s) = exchange(proxy.addr, &case.bytes).await;
    drop(s);
    Observed {
        seen: rec.take(port),
        refused: answered_by_intermediary(&out),
        closed,
    }
}

async fn through_steward(case: &corpus::Case) -> (Observed, usize) {
    let rec = Recorder::start().await;
    let pool = Arc::new(Pool::default());
    pool.set(&[("i".into(), rec.addr)]);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(Proxy::new("smuggling", pool, ProxyMetrics::default()).serve(l, cancel.clone()));
    let (_, out, closed, s) = exchange(addr, &case.bytes).await;
    let errors = rec.errors.load(Ordering::SeqCst);
    drop(s);
    cancel.cancel();
    (
        Observed {
            seen: rec.take(0),
            refused: answered_by_intermediary(&out),
            closed,
        },
        errors,
    )
}

fn show(bytes: &[u8]) -> String {
    let s = bytes.escape_ascii().to_string();
    if s.len() > 300 {
        format!("{}…", &s[..300])
    } else {
        s
    }
}

fn methods_and_bodies(seen: &[Seen]) -> Vec<(String, Vec<u8>)> {
    seen.iter()
        .map(|s| (s.method.clone(), s.body.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_matches_the_reference_parsers_on_every_case() {
    let cases = corpus::cases();
    assert!(cases.len() >= 200, "the corpus has {} cases", cases.len());
    // The fuzz target's seeds are this corpus: `STEWARD_DUMP_CORPUS=DIR` writes it.
    if let Some(dir) = std::env::var_os("STEWARD_DUMP_CORPUS") {
        for c in &cases {
            std::fs::write(PathBuf::from(&dir).join(&c.name), &c.bytes).unwrap();
        }
    }
    let mut names = HashMap::new();
    for c in &cases {
        assert!(
            names.insert(c.name.clone(), ()).is_none(),
            "two cases named {}",
            c.name
        );
    }
    let nginx_rec = Recorder::start().await;
    let nginx = Arc::new(nginx(nginx_rec.addr).await);
    // HAProxy is a point of comparison only (benches/smuggling.sh).
    let haproxy_rec = Recorder::start().await;
    let haproxy = match std::env::var_os("STEWARD_HAPROXY") {
        Some(_) => Some(Arc::new(haproxy(haproxy_rec.addr).await)),
        None => None,
    };

    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut runs = Vec::new();
    for case in cases {
        let (limit, nginx, nginx_rec) = (limit.clone(), nginx.clone(), nginx_rec.clone());
        let (haproxy, haproxy_rec) = (haproxy.clone(), haproxy_rec.clone());
        runs.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let (h, n, (s, s_errors), ha) = tokio::join!(
                direct(&case),
                through(&nginx, &nginx_rec, &case),
                through_steward(&case),
                async {
                    match &haproxy {
                        Some(p) => Some(through(p, &haproxy_rec, &case).await),
                        None => None,
                    }
                }
            );
            (case, h, n, s, s_errors, ha)
        }));
    }

    let mut failures = Vec::new();
    let (mut forwarded, mut refused, mut stricter) = (0, 0, Vec::new());
    let mut versus_haproxy = Vec::new();
    for run in runs {
        let (case, hyper, nginx, steward, steward_errors, haproxy) = run.await.unwrap();
        if let Some(ha) = &haproxy {
            let outcome = |o: &Observed| {
                if o.refused {
                    format!("refused after {} request(s)", o.seen.len())
                } else {
                    format!("forwarded {} request(s)", o.seen.len())
                }
            };
            let same = ha.refused == steward.refused
                && methods_and_bodies(&ha.seen) == methods_and_bodies(&steward.seen);
            if !same {
                versus_haproxy.push(format!(
                    "{:<44} steward {:<28} haproxy {:<28} {}",
                    case.name,
                    outcome(&steward),
                    outcome(ha),
                    case.strict.unwrap_or("")
                ));
            }
        }
        let mut fail = |why: String| {
            failures.push(format!(
                "{}: {why}\n  bytes:   {}\n  hyper:   {hyper:?}\n  nginx:   {nginx:?}\n  steward: {steward:?}",
                case.name,
                show(&case.bytes)
            ))
        };
        let named: Vec<String> = hyper.seen.iter().flat_map(Seen::named).collect();
        let meant: Vec<Seen> = hyper.seen.iter().map(|s| s.end_to_end(&named)).collect();
        // An HTTP/1.0 request without Host gets one from steward (HTTP/1.1
        // requires it): that Host is the proxy's, not the client's.
        let got: Vec<Seen> = steward
            .seen
            .iter()
            .zip(meant.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|(s, m)| {
                let mut s = s.end_to_end(&named);
                if m.is_some_and(|m| !m.fields.iter().any(|(n, _)| n == "host")) {
                    s.fields.retain(|(n, _)| n != "host");
                }
                s
            })
            .collect();
        if steward.refused {
            refused += 1;
        } else {
            forwarded += 1;
        }
        if steward_errors > 0 && !steward.refused {
            fail(format!(
                "the instance behind steward failed to parse what steward forwarded ({steward_errors} errors)"
            ));
        }
        let references_refuse = hyper.refused || nginx.refused;
        // The references read the bytes as different requests: ambiguous.
        let references_differ = !references_refuse
            && methods_and_bodies(&hyper.seen) != methods_and_bodies(&nginx.seen);
        if references_refuse || references_differ || case.strict.is_some() {
            if !steward.refused {
                fail("a reference refused (or the references disagreed, or the case is strict), steward did not".into());
            } else if !steward.closed {
                fail("steward refused but kept the connection open".into());
            }
            if !meant.starts_with(&got) {
                fail("steward forwarded requests beyond, or other than, those before the refused one".into());
            }
            if let Some(why) = case
                .strict
                .filter(|_| !references_refuse && !references_differ)
            {
                stricter.push(format!("{} ({why})", case.name));
            }
        } else {
            if steward.refused {
                fail("no reference refused, steward did".into());
            }
            if got != meant {
                fail("the instance behind steward saw other requests than the client sent".into());
            }
        }
    }
    eprintln!(
        "framing corpus: {} cases; steward forwarded {forwarded}, refused {refused}; \
         refused on purpose where hyper and nginx accept: {}",
        forwarded + refused,
        stricter.len()
    );
    for s in &stricter {
        eprintln!("  stricter: {s}");
    }
    if haproxy.is_some() {
        eprintln!(
            "versus HAProxy: {} of {} cases differ",
            versus_haproxy.len(),
            forwarded + refused
        );
        for d in &versus_haproxy {
            eprintln!("  differs: {d}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the corpus' cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(
        forwarded >= 60 && refused >= 60,
        "the corpus must exercise both outcomes"
    );
}
