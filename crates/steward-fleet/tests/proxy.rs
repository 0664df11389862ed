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

/// An upstream that answers plain requests with its name (after `delay`) and
/// `Upgrade: echo` requests with 101, then echoes bytes back.
async fn upstream(name: &'static str, delay: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
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
            });
        }
    });
    addr
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
