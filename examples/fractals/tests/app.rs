//! The demo application end to end: an API and a worker process sharing a data
//! directory; a job goes in, a PNG comes out.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fractals");

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ok(client: &reqwest::Client, url: &str) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never answered");
}

#[tokio::test]
async fn a_job_is_rendered_by_a_worker_and_served_by_the_api() {
    let data = std::env::temp_dir().join(format!("fractals-test-{}", port()));
    let (api_port, worker_port) = (port(), port());
    let _api = Kill(
        Command::new(BIN)
            .args(["--data", data.to_str().unwrap(), "api", "--listen"])
            .arg(format!("127.0.0.1:{api_port}"))
            .spawn()
            .unwrap(),
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{api_port}");
    wait_ok(&client, &format!("{api}/health")).await;
    let health: serde_json::Value = client
        .get(format!("{api}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "pass");

    let created: serde_json::Value = client
        .post(format!("{api}/fractals"))
        .json(&serde_json::json!({"kind": "julia", "width": 64, "height": 48, "iterations": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let metrics = client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("fractals_queue_depth 1"), "{metrics}");
    let bad = client
        .post(format!("{api}/fractals"))
        .json(&serde_json::json!({"kind": "koch"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Only now a worker: the job waited in the queue.
    let _worker = Kill(
        Command::new(BIN)
            .args(["--data", data.to_str().unwrap(), "worker", "--listen"])
            .arg(format!("127.0.0.1:{worker_port}"))
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    loop {
        let job: serde_json::Value = client
            .get(format!("{api}/fractals/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "done" {
            assert!(job["worker"].is_string());
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "never rendered: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let png = client
        .get(format!("{api}/fractals/{id}/image"))
        .send()
        .await
        .unwrap();
    assert_eq!(png.headers()["content-type"], "image/png");
    let bytes = png.bytes().await.unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let gallery = client
        .get(format!("{api}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(gallery.contains(&id));
    let metrics = client
        .get(format!("http://127.0.0.1:{worker_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("fractals_rendered_total 1"), "{metrics}");
    let _ = std::fs::remove_dir_all(&data);
}
