//! The HTTP surface over a real socket.

use std::sync::Arc;
use std::time::Duration;

use steward_runtime::{Controller, Next, Step, Supervisor};
use tokio_util::sync::CancellationToken;

struct Panicky;

impl Controller for Panicky {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async { panic!("cannot read /var/lib/steward/fleet: Input/output error") })
    }
}

struct Fine;

impl Controller for Fine {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async { Ok(Next::After(Duration::from_millis(10))) })
    }
}

async fn health(addr: std::net::SocketAddr) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// A controller that panics in a loop makes steward's own `/health` fail,
/// naming it and its last error; until then (and for a healthy set) it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_panicking_in_a_loop_fails_stewards_health() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let spec = steward_spec::Spec::parse(
        "steward.toml",
        "[steward]\nname = \"demo\"\n",
        dir.path(),
        &steward_spec::OsResolver,
    )
    .unwrap();
    let store = Arc::new(steward_state::Store::open(&dir.path().join("state")).unwrap());
    let mut sup = Supervisor::new(store.clone(), Supervisor::always_leader())
        .with_backoff(Duration::from_millis(20));
    sup.add("fleet.api", |_| Box::new(Panicky));
    sup.add("image.app", |_| Box::new(Fine));
    let state = steward_server::AppState::new(
        Arc::new(spec),
        store,
        steward_health::Board::default(),
        Arc::new(prometheus_client::registry::Registry::default()),
    )
    .with_controllers(sup.health());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (l, _) = steward_server::StewardListener::new(l, None).unwrap();
    tokio::spawn(async move {
        axum::serve(
            l,
            steward_server::router(state)
                .into_make_service_with_connect_info::<steward_server::PeerAddr>(),
        )
        .await
        .unwrap()
    });

    let (code, body) = health(addr).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("pass")),
        "{body}"
    );

    let cancel = CancellationToken::new();
    let run = tokio::spawn(sup.run(cancel.clone()));
    let mut last = serde_json::Value::Null;
    for _ in 0..300 {
        let (code, body) = health(addr).await;
        if code == 503 {
            last = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last["status"], "fail", "{last}");
    let output = last["checks"]["controllers"][0]["output"].as_str().unwrap();
    assert!(
        output.contains("fleet.api") && output.contains("Input/output error"),
        "{output}"
    );
    cancel.cancel();
    run.await.unwrap();
}
