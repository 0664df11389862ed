//! The endpoint served by a real axum server on a loopback port, read with a raw client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use steward_health_endpoint::{HealthEndpoint, HealthResponse, HealthStatus, Observation};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn readiness_fails_while_liveness_passes() {
    let db_up = Arc::new(AtomicBool::new(true));
    let flag = db_up.clone();
    let endpoint = HealthEndpoint::builder()
        .service_id("demo")
        .version("1")
        .timeout(Duration::from_millis(300))
        .check("postgres:connections", "datastore", move || {
            let up = flag.load(Ordering::SeqCst);
            async move {
                if up {
                    Observation::pass().observed(3, "connections")
                } else {
                    Observation::fail("connection refused")
                }
            }
        })
        .check("slow:responseTime", "component", || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Observation::pass()
        })
        .liveness("uptime", || async {
            Observation::pass().observed(12.5, "s")
        })
        .build();
    let app: axum::Router = endpoint.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (code, head, body) = get(addr, "/health").await;
    assert_eq!(code, 503, "the slow check times out and fails readiness");
    assert!(head.contains("content-type: application/health+json"));
    let doc = HealthResponse::parse(body.as_bytes()).unwrap();
    assert_eq!(doc.status, HealthStatus::Fail);
    let pg = &doc.checks["postgres:connections"][0];
    assert_eq!(pg.observed_value, Some(3.into()));
    assert_eq!(pg.observed_unit.as_deref(), Some("connections"));
    assert_eq!(pg.status, Some(HealthStatus::Pass));
    assert!(pg.time.is_some());
    let slow = &doc.checks["slow:responseTime"][0];
    assert!(slow.output.as_deref().unwrap().contains("did not answer"));

    let (code, _, body) = get(addr, "/livez").await;
    assert_eq!((code, body.as_str()), (200, "pass"));

    db_up.store(false, Ordering::SeqCst);
    let (_, _, body) = get(addr, "/health").await;
    let doc = HealthResponse::parse(body.as_bytes()).unwrap();
    assert_eq!(
        doc.checks["postgres:connections"][0].output.as_deref(),
        Some("connection refused")
    );
    let (code, _, _) = get(addr, "/readyz").await;
    assert_eq!(code, 503);
}
