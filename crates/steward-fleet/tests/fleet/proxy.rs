//! The proxy over real sockets: upgrades (WebSocket-style) pass through, a
//! refused connection is retried on another instance, drains wait for
//! responses in flight, and nothing ready means 503.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use steward_fleet::proxy::{Pool, Proxy, ProxyMetrics};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A loopback server running `each` on every connection it accepts.
async fn listen<F, Fut>(each: F) -> SocketAddr
where
    F: Fn(BufReader<TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(each(BufReader::new(s)));
        }
    });
    addr
}

/// A request head's lines up to the empty one; `None` once the peer is gone.
async fn head_lines(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some(head);
        }
        head.push_str(&line);
    }
}

/// An upstream that answers plain requests with its name (after `delay`) and
/// `Upgrade: echo` requests with 101, then echoes bytes back.
async fn upstream(name: &'static str, delay: Duration) -> SocketAddr {
    listen(move |mut r| async move {
                loop {
                    let Some(head) = head_lines(&mut r).await else {
                        return;
                    };
                    let upgrade = head.to_ascii_lowercase().contains("upgrade: echo");
                    let s = r.get_mut();
                    if upgrade {
                        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
                            .await
                            .unwrap();
                        let mut buf = [0u8; 1024];
                        loop {
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if r.get_mut().write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                    tokio::time::sleep(delay).await;
                    let body = name.as_bytes();
                    let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    if s.write_all(resp.as_bytes()).await.is_err()
                        || s.write_all(body).await.is_err()
                    {
                        return;
                    }
                }
    })
    .await
}

async fn proxy(pool: Arc<Pool>) -> (SocketAddr, CancellationToken) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let p = Proxy::new("t", pool, ProxyMetrics::default());
    tokio::spawn(p.serve(l, cancel.clone()));
    (addr, cancel)
}

/// One HTTP/1.1 request on a fresh connection: status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out.split_once("\r\n\r\n").unwrap().1.to_string())
}

fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn upgrades_pass_through_both_ways() {
    let a = upstream("a", Duration::ZERO).await;
    let pool = Arc::new(Pool::default());
    pool.set(&[("a".into(), a)]);
    let (addr, cancel) = proxy(pool).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    for msg in [&b"hello"[..], b"through the proxy"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    cancel.cancel();
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_instance() {
    let live = upstream("live", Duration::ZERO).await;
    let pool = Arc::new(Pool::default());
    pool.set(&[("dead".into(), closed_port()), ("live".into(), live)]);
    let (addr, cancel) = proxy(pool).await;
    for _ in 0..6 {
        assert_eq!(get(addr, "/").await, (200, "live".into()));
    }
    cancel.cancel();
}

#[tokio::test]
async fn nothing_ready_is_503_and_every_instance_down_too() {
    let pool = Arc::new(Pool::default());
    let (addr, cancel) = proxy(pool.clone()).await;
    let (status, body) = get(addr, "/").await;
    assert_eq!(status, 503);
    assert!(body.contains("no instance"), "{body}");
    pool.set(&[("dead".into(), closed_port())]);
    let (status, body) = get(addr, "/").await;
    assert_eq!(status, 503);
    assert!(body.contains("refused"), "{body}");
    cancel.cancel();
}

#[tokio::test]
async fn a_removed_instance_finishes_what_it_has_and_gets_nothing_new() {
    let slow = upstream("slow", Duration::from_millis(500)).await;
    let fast = upstream("fast", Duration::ZERO).await;
    let pool = Arc::new(Pool::default());
    pool.set(&[("slow".into(), slow)]);
    let (addr, cancel) = proxy(pool.clone()).await;
    let pending = tokio::spawn(get(addr, "/"));
    // Wait until the request is in flight on `slow`, then take it out.
    let mut up = None;
    for _ in 0..100 {
        if let Some(u) = pool.ready().iter().find(|u| u.inflight() > 0) {
            up = Some(u.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let up = up.expect("a request in flight");
    pool.set(&[("fast".into(), fast)]);
    assert_eq!(up.inflight(), 1, "still counted while draining");
    assert_eq!(
        get(addr, "/").await,
        (200, "fast".into()),
        "new requests go elsewhere"
    );
    assert_eq!(
        pending.await.unwrap(),
        (200, "slow".into()),
        "the drained one finishes"
    );
    assert_eq!(up.inflight(), 0);
    cancel.cancel();
}

/// An upstream that reads request bodies by Content-Length and answers by
/// path: `/chunked` (a chunked body with a trailer), `/big` (1 MiB; headers
/// only for HEAD), `/close` (no length: the body ends when it closes), and
/// anything else with the size of the body it got.
async fn framing_upstream() -> SocketAddr {
    listen(move |mut r| async move {
                loop {
                    let Some(head) = head_lines(&mut r).await else {
                        return;
                    };
                    let lower = head.to_ascii_lowercase();
                    let len: usize = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    r.read_exact(&mut body).await.unwrap();
                    if lower.contains("transfer-encoding: chunked") {
                        loop {
                            let mut size = String::new();
                            r.read_line(&mut size).await.unwrap();
                            let n = usize::from_str_radix(size.trim(), 16).unwrap();
                            if n == 0 {
                                let mut end = String::new();
                                r.read_line(&mut end).await.unwrap();
                                break;
                            }
                            let mut chunk = vec![0u8; n + 2];
                            r.read_exact(&mut chunk).await.unwrap();
                            body.extend_from_slice(&chunk[..n]);
                        }
                    }
                    let (method, path) = {
                        let mut parts = head.split(' ');
                        (
                            parts.next().unwrap().to_string(),
                            parts.next().unwrap().to_string(),
                        )
                    };
                    let s = r.get_mut();
                    let out: Vec<u8> = match path.as_str() {
                        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 11\r\n\r\n".to_vec(),
                        "/big" if method == "HEAD" => b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec(),
                        "/big" => {
                            let mut v = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
                            v.extend(std::iter::repeat_n(b'x', 1 << 20));
                            v
                        }
                        "/close" => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end").await;
                            return;
                        }
                        _ => {
                            let b = format!("got {}", body.len());
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len()).into_bytes()
                        }
                    };
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
    })
    .await
}

/// Sends `req` raw and reads until the proxy closes.
async fn exchange(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn bodies_keep_their_framing_both_ways() {
    let up = framing_upstream().await;
    let pool = Arc::new(Pool::default());
    pool.set(&[("u".into(), up)]);
    let (addr, cancel) = proxy(pool).await;

    // A chunked response is re-chunked with the sizes the instance sent:
    // extensions dropped, trailers re-written field by field.
    let out = exchange(
        addr,
        b"GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    assert!(
        text.ends_with("5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n"),
        "{text}"
    );

    // A large response by length.
    let out = exchange(
        addr,
        b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let body = &out[out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    assert_eq!(body.len(), 1 << 20);

    // A large request body is streamed (beyond what is buffered for retries).
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        200 * 1024
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(b'y', 200 * 1024));
    let out = exchange(addr, &req).await;
    assert!(String::from_utf8_lossy(&out).ends_with("got 204800"));

    // A chunked request body arrives whole.
    let out = exchange(
        addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.ends_with("got 3"), "{text}");

    // HEAD: a length but no body, and the connection stays usable.
    let out = exchange(
        addr,
        b"HEAD /big HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert!(text.ends_with("got 0"), "{text}");

    // No length: the body ends when the instance closes, and so does the client's connection.
    let out = exchange(addr, b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.ends_with("until the end"), "{text}");

    // Expect: 100-continue is answered by the proxy.
    let out = exchange(
        addr,
        b"POST /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"),
        "{text}"
    );
    assert!(text.ends_with("got 4"), "{text}");

    // Nonsense gets a 400, not a hang.
    let out = exchange(addr, b"\x01\x02 what\r\n\r\n").await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"));
    cancel.cancel();
}

/// An instance that answers each path with crafted response bytes (see
/// `responses_are_framed_as_strictly_as_requests`), keeping its connection
/// open for the next request; any other path is echoed back.
async fn crafted_upstream() -> SocketAddr {
    listen(move |mut r| async move {
        loop {
            let Some(head) = head_lines(&mut r).await else {
                return;
            };
            let path = head.split(' ').nth(1).unwrap_or("/").to_string();
            let s = r.get_mut();
            let out: Vec<u8> = match path.as_str() {
                "/both" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
                "/gzip" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok".to_vec(),
                "/badlen" => b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nok".to_vec(),
                "/twolens" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok".to_vec(),
                "/te-http10" => b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
                "/switch" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n".to_vec(),
                "/hints" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                "/interim-flood" => {
                    let mut v = b"HTTP/1.1 103 Early Hints\r\n\r\n".repeat(20);
                    v.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    v
                }
                "/head-body" | "/no-content" => {
                    let status = if path == "/head-body" { "200 OK" } else { "204 No Content" };
                    format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\nhello").into_bytes()
                }
                "/not-modified" => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\n".to_vec(),
                "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
                "/overlong" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npoison".to_vec(),
                "/poison-later" => {
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npoison".to_vec()
                }
                "/bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n".to_vec(),
                "/bad-chunk-later" => {
                    if s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    b"zz\r\n".to_vec()
                }
                other => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{other}", other.len()).into_bytes(),
            };
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// `exchange`, but failing instead of hanging when the proxy keeps the
/// connection open.
async fn exchange_closed(addr: SocketAddr, req: &[u8]) -> String {
    let out = tokio::time::timeout(Duration::from_secs(5), exchange(addr, req))
        .await
        .unwrap_or_else(|_| panic!("the proxy kept the connection open after {req:?}"));
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn responses_are_framed_as_strictly_as_requests() {
    let up = crafted_upstream().await;
    let pool = Arc::new(Pool::default());
    pool.set(&[("u".into(), up)]);
    let (addr, cancel) = proxy(pool).await;
    let then_after = |first: &str| {
        format!(
            "{first}\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    };

    // Responses whose framing is ambiguous are refused (502) and the client's
    // connection ends, so nothing after them is read as their body.
    for path in [
        "/both",
        "/gzip",
        "/badlen",
        "/twolens",
        "/te-http10",
        "/switch",
    ] {
        let text =
            exchange_closed(addr, then_after(&format!("GET {path} HTTP/1.1")).as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 502"), "{path}: {text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{path}: {text}");
        assert!(!text.contains("/after"), "{path}: {text}");
    }

    // An endless stream of interim responses ends in a 502 after 16.
    let text = exchange_closed(addr, then_after("GET /interim-flood HTTP/1.1").as_bytes()).await;
    assert_eq!(text.matches("HTTP/1.1 103").count(), 16, "{text}");
    assert!(
        text.contains("HTTP/1.1 502") && !text.contains("/after"),
        "{text}"
    );

    // Interim responses: 103 goes on, 100 (the proxy answers Expect itself) does
    // not, and an HTTP/1.0 client gets neither (RFC 9110 §15.2).
    let text = exchange_closed(
        addr,
        b"GET /hints HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        text.starts_with(
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"
        ),
        "{text}"
    );
    assert!(
        !text.contains("100 Continue") && text.ends_with("ok"),
        "{text}"
    );
    let text = exchange_closed(addr, b"GET /hints HTTP/1.0\r\n\r\n").await;
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("ok"),
        "{text}"
    );

    // No body on HEAD, 204 and 304 whatever the instance sends; a 204 loses its
    // length, a HEAD and a 304 keep theirs; the next request on the same client
    // connection gets its own answer, not the stray body.
    let text = exchange_closed(addr, then_after("HEAD /head-body HTTP/1.1").as_bytes()).await;
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nHTTP/1.1 200"),
        "{text}"
    );
    assert!(
        text.ends_with("/after") && !text.contains("hello"),
        "{text}"
    );
    let text = exchange_closed(addr, then_after("GET /no-content HTTP/1.1").as_bytes()).await;
    assert!(
        text.starts_with("HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200"),
        "{text}"
    );
    assert!(
        text.ends_with("/after") && !text.contains("hello"),
        "{text}"
    );
    let text = exchange_closed(addr, then_after("GET /not-modified HTTP/1.1").as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{text}");
    assert!(
        text.contains("content-length: 5\r\n") && text.ends_with("/after"),
        "{text}"
    );

    // An HTTP/1.0 client cannot read chunks: the body comes plain, ended by close.
    let text = exchange_closed(addr, b"GET /chunked HTTP/1.0\r\n\r\n").await;
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
    assert!(
        text.contains("connection: close\r\n") && text.ends_with("\r\n\r\nhello"),
        "{text}"
    );

    // Bytes beyond a response's framing — at once or later, on an idle pooled
    // connection — never become the answer to another client's request.
    for path in ["/overlong", "/poison-later"] {
        for _ in 0..3 {
            let (status, body) = get(addr, path).await;
            assert_eq!((status, body.as_str()), (200, "ok"), "{path}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (status, body) = get(addr, "/after").await;
            assert_eq!((status, body.as_str()), (200, "/after"), "after {path}");
        }
    }

    // A chunked body already broken when its head arrives is a 502; one that
    // breaks mid-way ends the client's connection before its last chunk, so
    // the truncation shows.
    let text = exchange_closed(addr, b"GET /bad-chunk HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    let text = exchange_closed(addr, b"GET /bad-chunk-later HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("5\r\nhello\r\n"),
        "{text}"
    );
    cancel.cancel();
}

/// An instance that tells how each request's body arrived.
#[tokio::test]
async fn refused_requests_reach_no_instance_and_close_the_connection() {
    let up = framing_upstream().await;
    let pool = Arc::new(Pool::default());
    pool.set(&[("u".into(), up)]);
    let (addr, cancel) = proxy(pool.clone()).await;
    for (req, status) in [
        (&b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"[..], "400"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n-1\r\n", "400"),
        (b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", "405"),
    ] {
        let text = exchange_closed(addr, req).await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
        assert!(text.contains("connection: close"), "{text}");
        assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
    }
    // A chunked body too large to check first is streamed; when it breaks, the
    // instance's connection goes too (its request never completes) and the
    // client gets a 400.
    let mut req = b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(format!("{:x}\r\n", 100 * 1024).as_bytes());
    req.extend(std::iter::repeat_n(b'y', 100 * 1024));
    req.extend_from_slice(b"\r\nnot-a-size\r\n");
    let text = exchange_closed(addr, &req).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(
        pool.ready().iter().map(|u| u.inflight()).sum::<u64>(),
        0,
        "nothing left in flight"
    );
    cancel.cancel();
}
