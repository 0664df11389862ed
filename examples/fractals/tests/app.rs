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

/// GET as JSON.
async fn get_json<T: serde::de::DeserializeOwned>(client: &reqwest::Client, url: &str) -> T {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// GET as text.
async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
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
    let health: serde_json::Value = get_json(&client, &format!("{api}/health")).await;
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
    let metrics = get_text(&client, &format!("{api}/metrics")).await;
    assert!(metrics.contains("fractals_queue_depth 1"), "{metrics}");
    let bad = client
        .post(format!("{api}/fractals"))
        .json(&serde_json::json!({"kind": "koch"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // The gallery shows the job waiting, and has a form for another.
    let gallery = get_text(&client, &format!("{api}/")).await;
    assert!(
        gallery.contains(&format!("<tr data-job=\"{id}\">"))
            && gallery.contains("<td class=queued>queued</td>"),
        "{gallery}"
    );
    assert!(
        gallery.contains("<form method=post action=/new>"),
        "{gallery}"
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let posted = no_redirects
        .post(format!("{api}/new"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("kind=mandelbrot")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 303, "back to the gallery");
    assert_eq!(posted.headers()["location"], "/");
    let jobs: serde_json::Value = get_json(&client, &format!("{api}/fractals")).await;
    assert_eq!(jobs.as_array().map(Vec::len), Some(2), "{jobs}");

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
        let job: serde_json::Value = get_json(&client, &format!("{api}/fractals/{id}")).await;
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
    let gallery = get_text(&client, &format!("{api}/")).await;
    assert!(
        gallery.contains(&format!("<img src=\"/fractals/{id}/image\"")),
        "{gallery}"
    );
    assert!(gallery.contains("<td class=done>done</td>"), "{gallery}");
    let metrics = get_text(&client, &format!("http://127.0.0.1:{worker_port}/metrics")).await;
    // This job and (perhaps already) the one from the form.
    let rendered: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fractals_rendered_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=2).contains(&rendered), "{metrics}");
    let _ = std::fs::remove_dir_all(&data);
}

/// With RabbitMQ (the test bed's) as the queue: jobs published by the API are
/// rendered by consuming workers, and a worker killed mid-queue loses nothing.
#[tokio::test]
async fn jobs_go_through_rabbitmq_when_configured() {
    let amqp = std::env::var("STEWARD_TEST_AMQP_URL").expect(
        "STEWARD_TEST_AMQP_URL is not set: start the test servers with `scripts/testbed up` and source `scripts/testbed env`",
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = std::env::temp_dir().join(format!("fractals-amqp-{}", port()));
    let api_port = port();
    let spawn = |args: &[&str], name: &str| {
        Kill(
            Command::new(BIN)
                .args(["--data", data.to_str().unwrap(), "--amqp", &amqp])
                .args(args)
                .env("STEWARD_INSTANCE", name)
                .spawn()
                .unwrap(),
        )
    };
    let _api = spawn(
        &["api", "--listen", &format!("127.0.0.1:{api_port}")],
        "api",
    );
    let client = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{api_port}");
    wait_ok(&client, &format!("{api}/health")).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        // The first one takes a while: the worker that takes it dies mid-render.
        let size = if n == 0 { 1024 } else { 64 };
        let r: serde_json::Value = client
            .post(format!("{api}/fractals"))
            .json(&serde_json::json!({"width": size, "height": size, "iterations": 5000}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    // A worker killed (SIGKILL) while it renders the first job, then two that stay.
    let mut doomed = spawn(&["worker"], "doomed");
    let t = Instant::now();
    loop {
        let job: serde_json::Value = get_json(&client, &format!("{api}/fractals/{}", ids[0])).await;
        if job["status"] == "running" && job["worker"] == "doomed" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the first worker never took the job: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = doomed.0.kill();
    let _ = doomed.0.wait();
    let _a = spawn(&["worker"], "a");
    let _b = spawn(&["worker"], "b");
    let t = Instant::now();
    loop {
        let jobs: Vec<serde_json::Value> = get_json(&client, &format!("{api}/fractals")).await;
        let done = jobs
            .iter()
            .filter(|j| {
                ids.contains(&j["id"].as_str().unwrap().to_string()) && j["status"] == "done"
            })
            .count();
        if done == ids.len() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{done} of {} rendered",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        let png = client
            .get(format!("{api}/fractals/{id}/image"))
            .send()
            .await
            .unwrap();
        assert_eq!(png.status(), 200);
    }
    let first: serde_json::Value = get_json(&client, &format!("{api}/fractals/{}", ids[0])).await;
    assert_ne!(first["worker"], "doomed", "redelivered to a live worker");
    let _ = std::fs::remove_dir_all(&data);
}
