//! The `steward` binary end to end: real processes, real sockets, a real
//! webhook receiver, SMTP sink and headless Chromium.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post};
use steward_state::EventLog;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::common::{self, BIN, Serve};

/// A temp directory with a spec in it.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(spec: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("steward.toml"), spec).unwrap();
        Project { dir }
    }

    fn spec(&self) -> PathBuf {
        self.dir.path().join("steward.toml")
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_env(&[], args)
    }

    fn run_env(&self, env: &[(&str, String)], args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .arg("-f")
            .arg(self.spec())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn serve(&self) -> Serve {
        self.serve_env(&[], &[])
    }

    fn serve_env(&self, env: &[(&str, String)], extra: &[&str]) -> Serve {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        common::serve_with(&self.spec(), &env, extra)
    }
}

/// reqwest is built without a default TLS provider (steward picks ring itself).
fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn fetch(url: &str) -> reqwest::Response {
    http().get(url).send().await.unwrap()
}

async fn get_json(url: &str) -> serde_json::Value {
    fetch(url).await.json().await.unwrap()
}

/// Polls until `f` holds; panics with `what` after a generous bound.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn bind() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// An HTTP target whose health can be switched, and a receiver for webhooks.
#[derive(Clone, Default)]
struct World {
    healthy: Arc<AtomicBool>,
    hooks: Arc<Mutex<Vec<serde_json::Value>>>,
    slack: Arc<Mutex<Vec<serde_json::Value>>>,
    mails: Arc<Mutex<Vec<String>>>,
}

impl World {
    async fn start() -> (World, SocketAddr, SocketAddr) {
        let w = World::default();
        w.healthy.store(true, Ordering::SeqCst);
        let (l, http) = bind().await;
        let (h, hooks, slack) = (w.healthy.clone(), w.hooks.clone(), w.slack.clone());
        let app = axum::Router::new()
            .route(
                "/health",
                get(move || {
                    let up = h.load(Ordering::SeqCst);
                    async move {
                        if up {
                            (axum::http::StatusCode::OK, "ok")
                        } else {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down")
                        }
                    }
                }),
            )
            .route(
                "/hook",
                post(
                    move |axum::Json(v): axum::Json<serde_json::Value>| async move {
                        hooks.lock().unwrap().push(v);
                    },
                ),
            )
            .route(
                "/slack",
                post(
                    move |axum::Json(v): axum::Json<serde_json::Value>| async move {
                        slack.lock().unwrap().push(v);
                    },
                ),
            );
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let (l, smtp) = bind().await;
        let mails = w.mails.clone();
        tokio::spawn(smtp_sink(l, mails));
        (w, http, smtp)
    }

    fn hooks_of(&self, kind: &str) -> usize {
        self.hooks
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["kind"] == kind)
            .count()
    }
}

/// A minimal SMTP server (RFC 5321 happy path) that keeps each message's data.
async fn smtp_sink(l: tokio::net::TcpListener, mails: Arc<Mutex<Vec<String>>>) {
    while let Ok((s, _)) = l.accept().await {
        let mails = mails.clone();
        tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            let mut lines = tokio::io::BufReader::new(r).lines();
            let _ = w.write_all(b"220 sink ESMTP\r\n").await;
            let mut data: Option<String> = None;
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(d) = data.as_mut() {
                    if line == "." {
                        mails.lock().unwrap().push(data.take().unwrap());
                        let _ = w.write_all(b"250 queued\r\n").await;
                    } else {
                        d.push_str(&line);
                        d.push('\n');
                    }
                    continue;
                }
                let verb = line
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "EHLO" | "HELO" => b"250 sink\r\n",
                    "DATA" => {
                        data = Some(String::new());
                        b"354 go on\r\n"
                    }
                    "QUIT" => {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    }
                    _ => b"250 ok\r\n",
                };
                let _ = w.write_all(reply).await;
            }
        });
    }
}

/// The four channels of the alert tests: `hook` (webhook), `chat` (Slack)
/// and `mail` (SMTP) at the world's receivers, `broken` at a closed port.
fn alert_channels(http: SocketAddr, smtp: SocketAddr, closed: SocketAddr) -> String {
    format!(
        r#"[alert.hook]
type = "webhook"
url = "http://{http}/hook"

[alert.chat]
type = "slack"
url = "http://{http}/slack"

[alert.mail]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_tls = "none"
from = "steward@example.test"
to = ["ops@example.test"]

[alert.broken]
type = "webhook"
url = "http://{closed}/nowhere"
"#,
        port = smtp.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_alerts_once_per_transition_and_keeps_history_across_restarts() {
    let (world, http, smtp) = World::start().await;
    let closed = bind().await.1; // nothing listens here once the listener is dropped
    let spec = format!(
        r#"
[steward]
name = "e2e"
state_dir = "state"

{channels}
[check.api]
type = "http"
url = "http://{http}/health"
interval = "200ms"
timeout = "1s"
failure_threshold = 2
conditions = ["[STATUS] == 200"]
alerts = ["hook", "chat", "mail", "broken"]
"#,
        channels = alert_channels(http, smtp, closed)
    );
    let p = Project::new(&spec);
    let serve = p.serve();
    let api = serve.url("/api/v1/checks/api");
    eventually("api up", || async {
        get_json(&api).await["health"] == "up"
    })
    .await;

    world.healthy.store(false, Ordering::SeqCst);
    eventually("down webhook", || async { world.hooks_of("down") == 1 }).await;
    world.healthy.store(true, Ordering::SeqCst);
    eventually("recovered webhook", || async {
        world.hooks_of("recovered") == 1
    })
    .await;
    eventually("two mails", || async {
        world.mails.lock().unwrap().len() == 2
    })
    .await;
    eventually("two slack messages", || async {
        world.slack.lock().unwrap().len() == 2
    })
    .await;
    // Stay healthy a while: no more notices may arrive.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        world.hooks.lock().unwrap().len(),
        2,
        "exactly one notice per transition: {:?}",
        world.hooks.lock().unwrap()
    );
    let down = world.hooks.lock().unwrap()[0].clone();
    assert_eq!(down["check"], "api");
    assert_eq!(down["status"], "down");
    assert!(
        down["error"]
            .as_str()
            .unwrap()
            .contains("[STATUS] (503) == 200"),
        "{down}"
    );
    let mails = world.mails.lock().unwrap().clone();
    assert!(
        mails[0].contains("Subject: [steward] [e2e] api is DOWN"),
        "{}",
        mails[0]
    );
    assert!(mails[1].contains("api has RECOVERED"));
    assert!(
        world.slack.lock().unwrap()[0]["text"]
            .as_str()
            .unwrap()
            .contains("api is DOWN")
    );

    // The broken channel failed without stopping anything, and it is on record.
    let deliveries = get_json(&serve.url("/api/v1/deliveries")).await;
    let failed: Vec<_> = deliveries
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["alert"] == "broken")
        .collect();
    assert!(
        !failed.is_empty() && failed.iter().all(|d| d["ok"] == false),
        "{deliveries}"
    );
    let events = get_json(&serve.url("/api/v1/events?subject=api")).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"check.down")
            && kinds.contains(&"check.up")
            && kinds.contains(&"alert.sent"),
        "{kinds:?}"
    );

    let metrics = fetch(&serve.url("/metrics")).await.text().await.unwrap();
    assert!(
        metrics.contains("steward_alert_deliveries_total{alert=\"hook\",outcome=\"delivered\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("steward_alert_deliveries_total{alert=\"broken\",outcome=\"retry\"}"),
        "{metrics}"
    );
    let history = get_json(&serve.url("/api/v1/checks/api/history?limit=1000")).await;
    let before = history["results"].as_array().unwrap().len();
    assert!(before >= 5, "{history}");
    let since = get_json(&api).await["since"].clone();
    assert_eq!(serve.stop(), 0, "graceful shutdown exits 0");

    // Restart on the same state directory: history and state survive, nothing is re-alerted.
    let serve = p.serve();
    let history = get_json(&serve.url("/api/v1/checks/api/history?limit=1000")).await;
    assert!(history["results"].as_array().unwrap().len() >= before);
    let view = get_json(&serve.url("/api/v1/checks/api")).await;
    assert_eq!(view["health"], "up");
    assert_eq!(view["since"], since, "state restored, not reset");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        world.hooks.lock().unwrap().len(),
        2,
        "a restart sends no alert"
    );
    let uptime = view["uptime"]["h1"].as_f64().unwrap();
    assert!(
        uptime > 0.0 && uptime < 1.0,
        "uptime counts the outage: {uptime}"
    );
    let log = serve.log.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_health_metrics_and_api_paging() {
    let (l, up) = bind().await;
    tokio::spawn(async move {
        loop {
            let _ = l.accept().await;
        }
    });
    let p = Project::new(&format!(
        "[check.up]\ntype = \"tcp\"\naddress = \"{up}\"\ninterval = \"100ms\"\n\n[check.down]\ntype = \"tcp\"\naddress = \"127.0.0.1:9\"\ninterval = \"100ms\"\nfailure_threshold = 1\n"
    ));
    let serve = p.serve();
    eventually("both checks judged", || async {
        let v = get_json(&serve.url("/api/v1/checks")).await;
        v.as_array()
            .unwrap()
            .iter()
            .all(|c| c["health"] != "unknown")
    })
    .await;
    let page = fetch(&serve.url("/")).await;
    let h = page.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'")
            && !csp.contains("unsafe-inline")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let resp = fetch(&serve.url("/health")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/health+json");
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        doc["status"], "warn",
        "a monitored check is down: steward itself is fine but says so"
    );
    assert_eq!(doc["checks"]["checks:down"][0]["observedValue"], 1);
    assert_eq!(doc["checks"]["state:database"][0]["status"], "pass");
    assert_eq!(fetch(&serve.url("/livez")).await.status(), 200);
    assert_eq!(fetch(&serve.url("/readyz")).await.status(), 200);

    let metrics = fetch(&serve.url("/metrics")).await.text().await.unwrap();
    assert!(
        metrics.contains("steward_check_up{check=\"up\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("steward_check_up{check=\"down\"} 0"));
    assert!(metrics.contains("steward_check_results_total{check=\"down\",status=\"fail\"}"));
    assert!(metrics.contains("process_resident_memory_bytes"));
    assert!(
        metrics.contains("steward_state_write_errors_total 0"),
        "failed event writes are counted: {metrics}"
    );

    eventually("ten results", || async {
        get_json(&serve.url("/api/v1/checks/up/history?limit=1000")).await["results"]
            .as_array()
            .unwrap()
            .len()
            >= 10
    })
    .await;
    let page1 = get_json(&serve.url("/api/v1/checks/up/history?limit=4")).await;
    let next = page1["next_before"].as_i64().expect("more pages");
    let page2 =
        get_json(&serve.url(&format!("/api/v1/checks/up/history?limit=4&before={next}"))).await;
    let t1 = page1["results"][3]["time"].as_str().unwrap().to_string();
    let t2 = page2["results"][0]["time"].as_str().unwrap().to_string();
    assert!(t2 < t1, "page 2 is older than page 1");
    let series = get_json(&serve.url("/api/v1/checks/up/series")).await;
    assert_eq!(series["resolution"], "hour");
    assert!(series["buckets"][0]["n"].as_i64().unwrap() >= 10);
    let missing = fetch(&serve.url("/api/v1/checks/nope")).await;
    assert_eq!(missing.status(), 404);
    let bad = fetch(&serve.url("/api/v1/checks/up/history?from=yesterday")).await;
    assert_eq!(bad.status(), 400);
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let (l, up) = bind().await;
    tokio::spawn(async move {
        loop {
            let _ = l.accept().await;
        }
    });
    let p = Project::new(&format!(
        r#"
[steward]
name = "Fractal Shop"
[check.web]
type = "tcp"
description = "the shop's front door"
address = "{up}"
interval = "100ms"
group = "edge"
[check.db]
type = "tcp"
address = "127.0.0.1:9"
interval = "100ms"
failure_threshold = 1
group = "data"
"#
    ));
    let serve = p.serve();
    eventually("db down", || async {
        get_json(&serve.url("/api/v1/checks/db")).await["health"] == "down"
    })
    .await;
    eventually("web up", || async {
        get_json(&serve.url("/api/v1/checks/web")).await["health"] == "up"
    })
    .await;

    let dom = common::chromium_dom(&serve.url("/"));
    // What a person sees: the app, the overall verdict, each check with its state,
    // uptime, chart and last error; and the script ran (CSP allows it, no inline code).
    assert!(dom.contains("<h1>Fractal Shop</h1>"), "{dom}");
    assert!(dom.contains("1 of 2 checks down"), "{dom}");
    let row = |name: &str| {
        let start = dom
            .find(&format!("data-check=\"{name}\""))
            .unwrap_or_else(|| panic!("no row for {name}: {dom}"));
        dom[start..start + dom[start..].find("</tr>").unwrap()].to_string()
    };
    let web = row("web");
    assert!(web.contains("badge up") && web.contains(">up<"), "{web}");
    assert!(web.contains("the shop's front door"));
    assert!(web.contains("100%"), "{web}");
    assert!(web.contains("<polyline"), "response-time chart: {web}");
    let db = row("db");
    assert!(db.contains("badge down") && db.contains(">down<"), "{db}");
    assert!(
        db.contains("cannot connect to 127.0.0.1:9"),
        "last error shown: {db}"
    );
    assert!(db.contains("0.00%"), "{db}");
    assert!(dom.contains("<h2>edge</h2>") && dom.contains("<h2>data</h2>"));
    // The doctor panel: this spec alerts nobody.
    assert!(
        dom.contains("Operational gaps") && dom.contains("no-alert-channel"),
        "{dom}"
    );
    let findings = get_json(&serve.url("/api/v1/doctor")).await;
    assert!(
        findings
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["rule"] == "no-alert-channel" && f["severity"] == "error")
    );
    assert!(
        !findings.to_string().contains("not-monitoring"),
        "serve itself is running"
    );
    // The server renders a timestamp; only status.js turns it into "just now".
    assert!(
        dom.contains(">just now</time>") || dom.contains(" s ago</time>"),
        "status.js ran: {dom}"
    );
    serve.stop();
}

#[test]
fn validate_reports_every_problem_and_exits_2() {
    let p = Project::new(
        "[check.api]\ntype = \"http\"\nurl = \"http://127.0.0.1/\"\nintervl = \"10s\"\n\n[check.db]\ntype = \"postgres\"\nurl = \"${env:STEWARD_SURELY_UNSET_1234}\"\n",
    );
    let (code, stdout, stderr) = p.run(&["validate"]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    let stderr = stderr.replace(&p.spec().display().to_string(), "[SPEC]");
    insta::assert_snapshot!(stderr);
}

/// Hostile spec files get a short, precise report and exit 2: a 50 KB line
/// (a window around the error, its real line and column), an empty file
/// (nothing to do), bytes that are not UTF-8 (the first one's position).
#[test]
fn validate_reports_hostile_files_briefly_and_precisely() {
    let long = "x".repeat(50_000);
    let p = Project::new(&format!(
        "[steward]\nname = \"{long}\"\n\n[check.a]\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"{long}\"\n"
    ));
    let (code, _, err) = p.run(&["validate"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.len() < 4_000, "{} bytes of report", err.len());
    assert!(err.contains("steward.toml:7:12]"), "{err}");
    assert!(err.contains('…'), "{err}");

    let p = Project::new("# nothing here yet\n");
    let (code, _, err) = p.run(&["validate"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the spec is empty"), "{err}");

    let p = Project::new("");
    std::fs::write(p.spec(), b"[steward]\nname = \"caf\xe9\"\n").unwrap();
    let (code, _, err) = p.run(&["validate"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not valid UTF-8") && err.contains("steward.toml:2:12]"),
        "{err}"
    );

    std::fs::remove_file(p.spec()).unwrap();
    std::fs::create_dir(p.spec()).unwrap();
    let (code, _, err) = p.run(&["validate"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Is a directory"), "{err}");
}

/// `validate` changes nothing on disk, also for a refused spec: a
/// `${generated:…}` secret is made by the first command that uses it.
#[test]
fn validate_leaves_the_disk_as_it_was() {
    let spec = |extra: &str| {
        format!(
            "[backup.files]\nsource = {{ paths = [\"data\"] }}\npassword = \"${{generated:secrets/backup-password}}\"\n{extra}"
        )
    };
    let p = Project::new(&spec("bogus = 1\n"));
    std::fs::create_dir(p.dir.path().join("data")).unwrap();
    std::fs::write(p.dir.path().join("data/a.txt"), "a").unwrap();
    let (code, _, err) = p.run(&["validate"]);
    assert_eq!(code, 2, "{err}");
    std::fs::write(p.spec(), spec("")).unwrap();
    let (code, out, err) = p.run(&["validate"]);
    assert_eq!(code, 0, "{out}{err}");
    let secret = p.dir.path().join("secrets/backup-password");
    assert!(
        !p.dir.path().join("secrets").exists(),
        "validate made {}",
        secret.display()
    );
    assert!(
        !p.dir.path().join(".steward").exists(),
        "validate made a state directory"
    );
    let (code, out, err) = p.run(&["backup", "run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap().trim().len(), 32);
}

#[test]
fn validate_ok_and_missing_file() {
    let p = Project::new("[check.api]\ntype = \"tcp\"\naddress = \"127.0.0.1:80\"\n");
    let (code, stdout, _) = p.run(&["validate"]);
    assert_eq!(
        (
            code,
            stdout.trim_end().ends_with(
                "valid (1 checks, 0 alert channels, 0 maintenance windows, 0 converge sets, 0 backups, 0 images, 0 services)"
            )
        ),
        (0, true),
        "{stdout}"
    );
    let out = Command::new(BIN)
        .args(["validate", "/nonexistent/steward.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read spec `/nonexistent/steward.toml`")
    );
}

/// With no spec where steward looks, it says where that was (the whole
/// path, not just `steward.toml`) and how to point it elsewhere.
#[test]
fn a_missing_spec_says_where_steward_looked_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .current_dir(dir.path())
        .env_remove("STEWARD_SPEC")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // miette wraps long lines; the words are what count.
    let err = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let looked = dir.path().join("steward.toml");
    assert!(
        err.contains(&format!("cannot read spec `{}`", looked.display())),
        "{err}"
    );
    assert!(
        err.contains(
            "help: point steward at a spec with `-f PATH` or the STEWARD_SPEC environment variable"
        ),
        "{err}"
    );
    assert!(!err.contains("steward::spec::read"), "{err}");
}

/// A reader that goes away (`steward … | head`) ends the command quietly
/// with SIGPIPE's status, as it ends `ls`: no panic message.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let p = Project::new("[check.a]\ntype = \"http\"\nurl = \"http://127.0.0.1:1/\"\n");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .arg("-f")
        .arg(p.spec())
        .arg("validate")
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(141));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// Logs written anywhere but a terminal carry no colour codes.
#[test]
fn logs_to_a_file_have_no_colour() {
    let p = Project::new(&format!(
        "[steward]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{}\"\n",
        common::free_port()
    ));
    let log = p.dir.path().join("serve.log");
    let mut child = Command::new(BIN)
        .arg("-f")
        .arg(p.spec())
        .arg("serve")
        .env_remove("NO_COLOR")
        .env("STEWARD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    common::wait_for("serve's first log lines", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("serving"))
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\x1b'), "{text:?}");
}

#[test]
fn check_exit_codes_and_json() {
    let ok = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = Project::new(&format!(
        "[check.ok]\ntype = \"tcp\"\naddress = \"{}\"\n[check.bad]\ntype = \"tcp\"\naddress = \"127.0.0.1:9\"\ntimeout = \"2s\"\n",
        ok.local_addr().unwrap()
    ));
    let (code, stdout, _) = p.run(&["check", "ok"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("1 passed, 0 failed"));
    let (code, stdout, _) = p.run(&["check", "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let bad = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bad")
        .unwrap();
    assert_eq!(bad["status"], "fail");
    assert!(bad["error"].as_str().unwrap().contains("cannot connect"));
    let (code, _, stderr) = p.run(&["check", "okk"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("did you mean `ok`?"), "{stderr}");
}

#[test]
fn doctor_finds_gaps_and_exits_1_on_errors() {
    let p = Project::new(
        "[check.db]\ntype = \"postgres\"\nurl = \"postgres://app:hunter2@127.0.0.1/app\"\n",
    );
    let (code, stdout, _) = p.run(&["doctor", "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rules: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"inline-secret")
            && rules.contains(&"no-alert-channel")
            && rules.contains(&"not-monitoring"),
        "{rules:?}"
    );
    assert!(
        !stdout.contains("hunter2"),
        "doctor never prints the secret it found"
    );
    let (_, human, _) = p.run(&["doctor"]);
    assert!(human.contains("fix: "), "{human}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_scopes_sessions_csrf_and_rate_limits() {
    let p = Project::new(
        "[steward]\nauth = \"token\"\nstate_dir = \"state\"\n[check.t]\ntype = \"tcp\"\naddress = \"127.0.0.1:9\"\n",
    );
    let (code, read_token, _) = p.run(&["token", "create", "--name", "dash", "--scope", "read"]);
    assert_eq!(code, 0);
    let read_token = read_token.trim().to_string();
    let (_, op_token, _) = p.run(&[
        "token", "create", "--name", "deployer", "--scope", "operate",
    ]);
    let op_token = op_token.trim().to_string();
    let (code, _, err) = p.run(&["token", "create", "--name", "dash"]);
    assert_eq!(code, 2, "{err}");
    let serve = p.serve();
    let c = http();
    let get = |path: &str, token: Option<&str>| {
        let mut r = c.get(serve.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // Open and closed routes.
    assert_eq!(get("/health", None).await.unwrap().status(), 200);
    assert_eq!(get("/livez", None).await.unwrap().status(), 200);
    let no = get("/api/v1/checks", None).await.unwrap();
    assert_eq!(no.status(), 401);
    assert!(no.headers().contains_key("www-authenticate"));
    assert_eq!(get("/metrics", None).await.unwrap().status(), 401);
    assert_eq!(
        get("/api/v1/checks", Some("stw_0000"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        get("/api/v1/checks", Some(&read_token))
            .await
            .unwrap()
            .status(),
        200
    );
    // A read token on a mutating route is refused before routing; operate passes the gate.
    let post = |token: &str| {
        c.post(serve.url("/api/v1/checks"))
            .bearer_auth(token.to_string())
            .send()
    };
    assert_eq!(post(&read_token).await.unwrap().status(), 403);
    assert_eq!(
        post(&op_token).await.unwrap().status(),
        405,
        "operate passes auth; the route has no POST"
    );
    // The dashboard: redirect to sign-in, cookie session, CSRF on sign-out.
    let page = c.get(serve.url("/")).send().await.unwrap();
    assert!(
        page.url().path() == "/login" || page.status() == 303,
        "{:?}",
        page.url()
    );
    let login = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = login
        .post(serve.url("/login"))
        .form(&[("token", read_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.headers());
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let session = set_cookie.split(';').next().unwrap().to_string();
    let page = login
        .get(serve.url("/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("signed in as dash"));
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let r = login
        .post(serve.url("/logout"))
        .header("cookie", &session)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "sign-out without the CSRF token is refused"
    );
    let r = login
        .post(serve.url("/api/v1/checks"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "a cookie-borne mutating request needs the CSRF header"
    );
    let r = login
        .post(serve.url("/logout"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = login
        .get(serve.url("/api/v1/checks"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the session ended");
    // Cross-site sign-in is refused.
    let r = login
        .post(serve.url("/login"))
        .header("origin", "http://evil.example")
        .form(&[("token", read_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Revocation takes effect on the next request.
    let (code, _, _) = p.run(&["token", "revoke", "dash"]);
    assert_eq!(code, 0);
    assert_eq!(
        get("/api/v1/checks", Some(&read_token))
            .await
            .unwrap()
            .status(),
        401
    );
    let (_, list, _) = p.run(&["token", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert!(list[0]["revoked"].is_i64() && list[1]["revoked"].is_null());
    assert!(
        !list.to_string().contains("stw_"),
        "token list never shows secrets"
    );
    // Repeated failures from one address are turned away.
    let mut last = 0;
    for _ in 0..12 {
        last = get("/api/v1/checks", Some("stw_guess"))
            .await
            .unwrap()
            .status()
            .as_u16();
    }
    assert_eq!(last, 429);
    assert_eq!(
        get("/api/v1/checks", Some(&op_token))
            .await
            .unwrap()
            .status(),
        429,
        "the address is blocked for a minute"
    );
    // Audit trail: logins, failures and mutating requests, never a token value.
    let db = std::fs::read(p.dir.path().join("state/state.db")).unwrap_or_default();
    let wal = std::fs::read(p.dir.path().join("state/state.db-wal")).unwrap_or_default();
    for secret in [&read_token, &op_token] {
        assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));
        assert!(!wal.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    serve.stop();
    let store = steward_state::Store::open(&p.dir.path().join("state")).unwrap();
    let kinds: Vec<String> = store
        .events(&steward_state::EventQuery {
            limit: 1000,
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind.to_string())
        .collect();
    for k in [
        "auth.login",
        "auth.failed",
        "api.request",
        "api.denied",
        "token.created",
        "token.revoked",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} event in {kinds:?}");
    }
}

#[test]
fn refuses_an_unauthenticated_listener_for_other_machines() {
    let p = Project::new(
        "[steward]\nlisten = \"0.0.0.0:0\"\n[check.t]\ntype = \"tcp\"\naddress = \"127.0.0.1:9\"\n",
    );
    let (code, _, err) = p.run(&["validate"]);
    assert_eq!(code, 2);
    assert!(err.contains("steward would serve its API"), "{err}");
    let ok = Project::new(
        "[steward]\nlisten = \"127.0.0.1:0\"\n[check.t]\ntype = \"tcp\"\naddress = \"127.0.0.1:9\"\n",
    );
    let out = Command::new(BIN)
        .arg("-f")
        .arg(ok.spec())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "the --listen override is held to the same rule"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to serve"));
}

/// The scenario of issue 6: checks with credentials, alerts delivered, then
/// everything steward wrote or answered is searched for the secret values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leak_into_logs_state_api_or_alerts() {
    let (world, http, _smtp) = World::start().await;
    let pg = std::env::var("STEWARD_TEST_PG_URL").expect("scripts/testbed env");
    let pg_addr = pg.rsplit('@').next().unwrap().to_string(); // 127.0.0.1:PORT/steward
    let secrets: Vec<(&str, String)> = vec![
        ("API_TOKEN", "sekrit-api-token-7f3a".into()),
        ("HOOK_AUTH", "sekrit-hook-auth-91c2".into()),
        ("HOOK_KEY", "sekrit-hook-key-55d0".into()),
        ("EXEC_SECRET", "sekrit-exec-env-0a9b".into()),
        ("WRONG_PW", "sekrit-wrong-pw-77e1".into()),
        ("URL_PW", "sekrit-url-pw-3c4d".into()),
    ];
    let p = Project::new("");
    let pw_file = p.dir.path().join("pg-password");
    std::fs::write(&pw_file, "steward-test-pw\n").unwrap();
    std::fs::set_permissions(
        &pw_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let spec = format!(
        r#"
[steward]
state_dir = "state"
[alert.hook]
type = "webhook"
url = "http://{http}/hook?key=${{env:HOOK_KEY}}"
headers = {{ Authorization = "${{env:HOOK_AUTH}}" }}
[check.api]
type = "http"
url = "http://{http}/health"
headers = {{ Authorization = "Bearer ${{env:API_TOKEN}}" }}
interval = "200ms"
failure_threshold = 1
alerts = ["hook"]
[check.db]
type = "postgres"
url = "postgres://steward:${{file:{pw}}}@{pg_addr}"
interval = "300ms"
[check.db-wrong]
type = "postgres"
url = "postgres://steward:${{env:WRONG_PW}}@{pg_addr}"
interval = "300ms"
[check.basic]
type = "http"
url = "http://admin:${{env:URL_PW}}@127.0.0.1:9/"
interval = "300ms"
[check.job]
type = "exec"
command = ["sh", "-c", "test -n \"$EXEC_SECRET\" && echo ok"]
env = {{ EXEC_SECRET = "${{env:EXEC_SECRET}}" }}
interval = "300ms"
"#,
        pw = pw_file.display()
    );
    std::fs::write(p.spec(), spec).unwrap();
    let mut haystack = String::new();
    for args in [
        vec!["validate"],
        vec!["check", "--json"],
        vec!["doctor", "--json"],
    ] {
        let (_, out, err) = p.run_env(&secrets, &args);
        haystack.push_str(&out);
        haystack.push_str(&err);
    }
    let serve = p.serve_env(&secrets, &["-vv"]);
    eventually("db checked", || async {
        get_json(&serve.url("/api/v1/checks/db")).await["health"] == "up"
    })
    .await;
    eventually("job ran", || async {
        get_json(&serve.url("/api/v1/checks/job")).await["health"] == "up"
    })
    .await;
    world.healthy.store(false, Ordering::SeqCst);
    eventually("down alert", || async { world.hooks_of("down") == 1 }).await;
    world.healthy.store(true, Ordering::SeqCst);
    eventually("recovered alert", || async {
        world.hooks_of("recovered") == 1
    })
    .await;
    eventually("wrong password judged", || async {
        get_json(&serve.url("/api/v1/checks/db-wrong")).await["health"] == "down"
    })
    .await;
    for path in [
        "/",
        "/health",
        "/metrics",
        "/api/v1/checks",
        "/api/v1/events?limit=1000",
        "/api/v1/deliveries",
        "/api/v1/checks/api/history?limit=1000",
        "/api/v1/checks/db-wrong/history?limit=1000",
        "/api/v1/checks/basic/history",
        "/api/v1/checks/job/history",
        "/api/v1/checks/db/series",
    ] {
        haystack.push_str(&fetch(&serve.url(path)).await.text().await.unwrap());
    }
    let db_wrong = get_json(&serve.url("/api/v1/checks/db-wrong")).await;
    assert!(
        db_wrong["last"]["error"]
            .as_str()
            .unwrap()
            .contains("password authentication failed"),
        "{db_wrong}"
    );
    for hook in world.hooks.lock().unwrap().iter() {
        haystack.push_str(&hook.to_string());
    }
    let log = serve.log.lock().unwrap().clone();
    assert!(log.lines().count() > 5, "debug logging was on: {log}");
    haystack.push_str(&log);
    serve.stop();
    let mut files = String::new();
    for entry in std::fs::read_dir(p.dir.path().join("state")).unwrap() {
        files.push_str(&String::from_utf8_lossy(
            &std::fs::read(entry.unwrap().path()).unwrap(),
        ));
    }
    haystack.push_str(&files);
    // Positive controls: the haystack holds what it should.
    assert!(
        haystack.contains("[STATUS] (503)")
            && haystack.contains("api is DOWN")
            && files.contains("check.down")
    );
    let mut all: Vec<String> = secrets.iter().map(|(_, v)| v.clone()).collect();
    all.push("steward-test-pw".into());
    for secret in all {
        assert!(!haystack.contains(&secret), "secret `{secret}` leaked");
    }
}

#[test]
fn secret_files_readable_by_everyone_are_refused() {
    let p = Project::new("");
    let f = p.dir.path().join("hook-url");
    std::fs::write(&f, "http://127.0.0.1:9/hook\n").unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(
        p.spec(),
        format!(
            "[alert.ops]\ntype = \"slack\"\nurl = \"${{file:{}}}\"\n",
            f.display()
        ),
    )
    .unwrap();
    let (code, _, err) = p.run(&["validate"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("accessible to every user") && err.contains("chmod o-rwx"),
        "{err}"
    );
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(p.run(&["validate"]).0, 0);
}

/// A self-signed certificate for 127.0.0.1 and localhost: (cert PEM, key PEM, cert DER).
fn self_signed() -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// Connects over TLS trusting `roots`, returns the served certificate and the status line of /livez.
async fn tls_get(addr: SocketAddr, roots: &[&[u8]]) -> (Vec<u8>, String) {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(r.to_vec()))
            .unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    (served, text.lines().next().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_its_certificate_and_reloads_on_sighup() {
    let p = Project::new("");
    let (cert_a, key_a, der_a) = self_signed();
    let (cert_b, key_b, der_b) = self_signed();
    let (cert, key) = (p.dir.path().join("cert.pem"), p.dir.path().join("key.pem"));
    std::fs::write(&cert, &cert_a).unwrap();
    std::fs::write(&key, &key_a).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(
        p.spec(),
        format!("[steward]\nstate_dir = \"state\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n[check.t]\ntype = \"tcp\"\naddress = \"127.0.0.1:9\"\n", cert.display(), key.display()),
    )
    .unwrap();
    let serve = p.serve();
    let (served, status) = tls_get(serve.socket(), &[&der_a, &der_b]).await;
    assert_eq!(served, der_a);
    assert_eq!(status, "HTTP/1.1 200 OK");
    // A plain-text client gets no HTTP answer from the TLS port.
    let mut plain = tokio::net::TcpStream::connect(serve.socket())
        .await
        .unwrap();
    plain
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut buf),
    )
    .await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // Replace the files, SIGHUP: the same socket now serves certificate B.
    std::fs::write(&cert, &cert_b).unwrap();
    std::fs::write(&key, &key_b).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &serve.child.id().to_string()])
        .status();
    eventually("certificate B served", || async {
        tls_get(serve.socket(), &[&der_a, &der_b]).await.0 == der_b
    })
    .await;
    // A broken file on the next reload keeps B in service.
    std::fs::write(&cert, "not a certificate").unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &serve.child.id().to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tls_get(serve.socket(), &[&der_a, &der_b]).await.0, der_b);
    assert_eq!(serve.stop(), 0);
    let store = steward_state::Store::open(&p.dir.path().join("state")).unwrap();
    let kinds: Vec<String> = store
        .events(&steward_state::EventQuery {
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind.to_string())
        .collect();
    assert!(
        kinds.contains(&"serve.tls_reloaded".to_string())
            && kinds.contains(&"serve.tls_reload_failed".to_string()),
        "{kinds:?}"
    );
}

/// kill -9 in the middle of serving: the next start recovers the database and
/// the history written so far, and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_recovers_after_kill_9() {
    let (l, up) = bind().await;
    tokio::spawn(async move {
        loop {
            let _ = l.accept().await;
        }
    });
    let mut spec = String::from("[steward]\nstate_dir = \"state\"\n");
    for i in 0..50 {
        spec.push_str(&format!(
            "[check.c{i}]\ntype = \"tcp\"\naddress = \"{up}\"\ninterval = \"100ms\"\n"
        ));
    }
    let p = Project::new(&spec);
    let serve = p.serve();
    eventually("results written", || async {
        get_json(&serve.url("/api/v1/checks/c0/history?limit=1000")).await["results"]
            .as_array()
            .unwrap()
            .len()
            >= 10
    })
    .await;
    let mut serve = serve;
    serve.child.kill().unwrap(); // SIGKILL: no shutdown, writes possibly mid-transaction
    serve.child.wait().unwrap();
    drop(serve);
    let again = p.serve();
    let history = get_json(&again.url("/api/v1/checks/c0/history?limit=1000")).await;
    let before = history["results"].as_array().unwrap().len();
    assert!(
        before >= 10,
        "history written before the kill survives: {history}"
    );
    eventually("new results after restart", || async {
        get_json(&again.url("/api/v1/checks/c0/history?limit=1000")).await["results"]
            .as_array()
            .unwrap()
            .len()
            > before
    })
    .await;
    assert_eq!(
        get_json(&again.url("/api/v1/checks/c49")).await["health"],
        "up"
    );
    assert_eq!(again.stop(), 0);
}

/// What a slow webhook receiver saw: each notice's event id (header and body
/// must agree), in arrival order.
#[derive(Clone, Default)]
struct SlowReceiver {
    ids: Arc<Mutex<Vec<i64>>>,
}

impl SlowReceiver {
    async fn start(delay: Duration) -> (SlowReceiver, SocketAddr) {
        let r = SlowReceiver::default();
        let ids = r.ids.clone();
        let (l, addr) = bind().await;
        let app = axum::Router::new().route(
            "/hook",
            post(
                move |headers: axum::http::HeaderMap,
                      axum::Json(v): axum::Json<serde_json::Value>| async move {
                    let header: i64 = headers["x-steward-event-id"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert_eq!(Some(header), v["event_id"].as_i64(), "{v}");
                    // Recorded on arrival: a notice whose sender dies before the
                    // answer still counts as received.
                    ids.lock().unwrap().push(header);
                    tokio::time::sleep(delay).await;
                },
            ),
        );
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (r, addr)
    }

    fn ids(&self) -> Vec<i64> {
        self.ids.lock().unwrap().clone()
    }
}

/// Alerting reads the event log from a durable cursor: 2,000 transitions in a
/// burst into a slow channel, a `kill -9` half-way through the deliveries, and
/// after the restart every transition has reached the channel, in order, none
/// lost, and at most the one notice in flight at the kill arrived twice (with
/// the same `X-Steward-Event-Id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_neither_lost_nor_repeated_across_a_burst_and_kill_9() {
    const CHECKS: usize = 200;
    const FLIPS: usize = 10;
    let (world, http, _smtp) = World::start().await;
    let (receiver, hook) = SlowReceiver::start(Duration::from_millis(5)).await;
    let mut spec = format!(
        r#"
[steward]
state_dir = "state"

[alert.slow]
type = "webhook"
url = "http://{hook}/hook"
"#
    );
    for i in 0..CHECKS {
        spec.push_str(&format!(
            r#"
[check.c{i:03}]
type = "http"
url = "http://{http}/health"
interval = "200ms"
timeout = "1s"
failure_threshold = 1
conditions = ["[STATUS] == 200"]
alerts = ["slow"]
"#
        ));
    }
    let p = Project::new(&spec);
    let state = p.dir.path().join("state");
    let serve = p.serve();
    let checks = serve.url("/api/v1/checks");
    let all_are = |health: &'static str| {
        let checks = checks.clone();
        async move {
            let v = get_json(&checks).await;
            let list = v.as_array().unwrap();
            list.len() == CHECKS && list.iter().all(|c| c["health"] == health)
        }
    };
    eventually("every check up", || all_are("up")).await;

    // The burst: every check goes down and up again, five times over.
    for flip in 0..FLIPS {
        let up = flip % 2 == 1;
        world.healthy.store(up, Ordering::SeqCst);
        eventually("every check to follow", || {
            all_are(if up { "up" } else { "down" })
        })
        .await;
    }
    // Every transition is in the log before the kill.
    let alerted = || {
        let store = steward_state::Store::open(&state).unwrap();
        store
            .events(&steward_state::EventQuery {
                after: Some(0),
                kind_prefix: Some("check.".into()),
                limit: 10_000,
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .filter(|e| e.event.data["from"] != "unknown")
            .map(|e| e.id)
            .collect::<Vec<i64>>()
    };
    eventually("2,000 transitions stored", || async {
        alerted().len() == CHECKS * FLIPS
    })
    .await;
    let before_kill = receiver.ids().len();
    assert!(
        before_kill > 0 && before_kill < CHECKS * FLIPS,
        "the kill must fall in the middle of the deliveries: {before_kill} delivered"
    );
    drop(serve); // SIGKILL

    let serve = p.serve();
    let expected = alerted();
    eventually("every transition delivered after the restart", || async {
        let got: std::collections::BTreeSet<i64> = receiver.ids().into_iter().collect();
        expected.iter().all(|id| got.contains(id))
    })
    .await;
    // Nothing more arrives once the log is done with.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = receiver.ids();
    let mut seen = std::collections::BTreeMap::<i64, usize>::new();
    for id in &ids {
        *seen.entry(*id).or_default() += 1;
    }
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        expected,
        "exactly the transitions, no other notice"
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.len() <= 1 && twice.iter().all(|(_, n)| **n == 2),
        "only the delivery in flight at the kill may come twice: {twice:?}"
    );
    let mut first: Vec<i64> = Vec::new();
    for id in ids {
        if !first.contains(&id) {
            first.push(id);
        }
    }
    assert!(
        first.windows(2).all(|w| w[0] < w[1]),
        "a channel hears things in the order they happened"
    );
    let log = serve.log.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");
    serve.stop();
}

/// `%`-encodes a query parameter value.
fn q(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `serve` stores metrics as series: a `[scrape.NAME]` target (an exposition
/// file the test bed's nginx serves) with its labels and `up`, and steward's
/// own metrics — lists them through Prometheus's series API and answers
/// PromQL queries over them, with Prometheus's answer and error shapes.
#[test]
fn serve_scrapes_targets_and_itself_into_series() {
    let www = common::testbed("STEWARD_TEST_WWW");
    let file = format!("e2e-metrics-{}.txt", std::process::id());
    std::fs::write(
        Path::new(&www).join(&file),
        "# TYPE jobs_waiting gauge\njobs_waiting{queue=\"render\"} 4\n",
    )
    .unwrap();
    let nginx = common::testbed("STEWARD_TEST_NGINX_URL");
    let p = Project::new(&format!(
        "[steward]\nstate_dir = \"state\"\n\n[scrape.web]\nurl = \"{nginx}/{file}\"\ninterval = \"1s\"\nlabels = {{ env = \"test\" }}\n"
    ));
    let serve = common::serve(&p.spec(), &[]);
    let api = |path: &str| -> serde_json::Value {
        let body = common::http_get(&serve.addr, path);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let found = loop {
        let v = api(&format!(
            "/api/v1/series?match[]={}",
            q("jobs_waiting{env=\"test\"}")
        ));
        if v["data"].as_array().is_some_and(|d| !d.is_empty()) {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "never scraped: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(found["status"], "success");
    let series = &found["data"][0];
    assert_eq!(series["__name__"], "jobs_waiting");
    assert_eq!(series["queue"], "render");
    assert_eq!(series["job"], "web");
    assert_eq!(series["instance"], nginx.trim_start_matches("http://"));
    let up = api(&format!("/api/v1/series?match[]={}", q("up{job=\"web\"}")));
    assert_eq!(up["data"].as_array().unwrap().len(), 1, "{up}");
    // steward's own metrics are series too (stored every 15 s, the first at start).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = api("/api/v1/label/job/values");
        let jobs: Vec<&str> = jobs["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        if jobs == ["steward", "web"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "jobs: {jobs:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let own = api(&format!(
        "/api/v1/series?match[]={}",
        q("steward_health_runs_total")
    ));
    assert_eq!(own["data"][0]["job"], "steward", "{own}");
    let names = api("/api/v1/labels");
    for n in ["__name__", "env", "instance", "job", "queue"] {
        assert!(
            names["data"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(n)),
            "{names}"
        );
    }
    // Prometheus's error shape for a selector that does not parse.
    let bad = api(&format!("/api/v1/series?match[]={}", q("up{")));
    assert_eq!(bad["status"], "error");
    assert_eq!(bad["errorType"], "bad_data");
    let none = api("/api/v1/series");
    assert_eq!(none["error"], "no match[] parameter provided");
    // PromQL over them, with Prometheus's answer shapes.
    let v = api(&format!(
        "/api/v1/query?query={}",
        q("sum by (queue) (jobs_waiting) * 2")
    ));
    assert_eq!(v["data"]["resultType"], "vector", "{v}");
    assert_eq!(
        v["data"]["result"][0]["metric"],
        serde_json::json!({"queue": "render"})
    );
    assert_eq!(v["data"]["result"][0]["value"][1], "8");
    // A range query over the last 5 s, once `web` has been up that long.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let v = api(&format!(
            "/api/v1/query_range?query={}&start={}&end={now}&step=1s",
            q("up{job=\"web\"}"),
            now - 5
        ));
        assert_eq!(v["data"]["resultType"], "matrix", "{v}");
        let values = v["data"]["result"][0]["values"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if values.len() == 6 {
            assert!(values.iter().all(|p| p[1] == "1"), "{v}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Grafana POSTs its queries as a form.
    let body = format!("query={}", q("scalar(jobs_waiting)"));
    let posted = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&serve.addr).unwrap();
        write!(
            s,
            "POST /api/v1/query HTTP/1.0\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let (_, posted) = posted.split_once("\r\n\r\n").unwrap();
    let posted: serde_json::Value = serde_json::from_str(posted).unwrap();
    assert_eq!(posted["data"]["resultType"], "scalar", "{posted}");
    assert_eq!(posted["data"]["result"][1], "4");
    let bad = api(&format!("/api/v1/query?query={}", q("sum(")));
    assert_eq!(bad["errorType"], "bad_data", "{bad}");
    let unsupported = api(&format!("/api/v1/query?query={}", q("rate(up[5m:1m])")));
    assert_eq!(unsupported["errorType"], "execution", "{unsupported}");
    let _ = std::fs::remove_file(Path::new(&www).join(&file));
}

/// `count_over_time(EXPR[1h])` at `at` (Unix seconds) as `serve` answers it.
fn count_at(serve: &Serve, expr: &str, at: f64) -> f64 {
    prom_count(&serve.addr, expr, "1h", at)
}

#[test]
fn scraped_series_outlive_a_restart_and_a_kill_loses_at_most_one_flush_interval() {
    let www = common::testbed("STEWARD_TEST_WWW");
    let file = format!("e2e-persist-{}.txt", std::process::id());
    std::fs::write(Path::new(&www).join(&file), "jobs_waiting 3\n").unwrap();
    let nginx = common::testbed("STEWARD_TEST_NGINX_URL");
    let p = Project::new(&format!(
        "[steward]\nstate_dir = \"state\"\nmetrics_flush_interval = \"2s\"\n\n[scrape.web]\nurl = \"{nginx}/{file}\"\ninterval = \"1s\"\n"
    ));
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let expr = "jobs_waiting{job=\"web\"}";
    let wait_for = |serve: &Serve, n: f64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let at = now();
            let c = count_at(serve, expr, at);
            if c >= n {
                return (at, c);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{c} samples after a minute"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // A clean stop writes everything: the same samples after a restart.
    let serve = common::serve(&p.spec(), &[]);
    let (at, before) = wait_for(&serve, 5.0);
    assert_eq!(serve.stop(), 0);
    assert!(p.dir.path().join("state/series.db").exists());
    let serve = common::serve(&p.spec(), &[]);
    assert_eq!(count_at(&serve, expr, at), before, "after SIGTERM");
    // New samples join the old ones in the same series.
    let (_, grown) = wait_for(&serve, before + 5.0);
    // kill -9: at most the last 2 s flush interval (and the flush under
    // way, one more scrape) of samples are lost.
    std::thread::sleep(Duration::from_secs(3));
    let at = now();
    let seen = count_at(&serve, expr, at);
    assert!(seen > grown);
    drop(serve); // SIGKILL
    let serve = common::serve(&p.spec(), &[]);
    let kept = count_at(&serve, expr, at);
    assert!(
        kept >= seen - 3.0 && kept <= seen,
        "{seen} samples before the kill, {kept} after"
    );
    let log = serve.log.lock().unwrap().clone();
    assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
    let _ = std::fs::remove_file(Path::new(&www).join(&file));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_rule_fires_and_resolves_through_the_alert_channels() {
    let (world, http, _) = World::start().await;
    let www = common::testbed("STEWARD_TEST_WWW");
    let nginx = common::testbed("STEWARD_TEST_NGINX_URL");
    let file = format!("e2e-rule-{}.txt", std::process::id());
    let path = Path::new(&www).join(&file);
    let write = |n: u32| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("jobs_waiting{{queue=\"render\"}} {n}\n")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    write(4);
    let p = Project::new(&format!(
        r#"
[steward]
state_dir = "state"

[alert.hook]
type = "webhook"
url = "http://{http}/hook"

[scrape.app]
url = "{nginx}/{file}"
interval = "1s"

[rule.backlog]
expr = "jobs_waiting > 10"
for = "2s"
interval = "1s"
labels = {{ severity = "page" }}
annotations = {{ summary = "{{{{ labels.queue }}}} has {{{{ value }}}} jobs waiting" }}
alerts = ["hook"]
"#
    ));
    let serve = p.serve();
    let query = |q_: &str| {
        let url = serve.url(&format!("/api/v1/query?query={}", q(q_)));
        async move { get_json(&url).await }
    };
    eventually("scraped", || async {
        query("jobs_waiting").await["data"]["result"][0]["value"][1] == "4"
    })
    .await;
    write(20);
    // Pending first (ALERTS says so), firing once `for` has passed.
    eventually("pending or firing", || async {
        !query("ALERTS{alertname=\"backlog\"}").await["data"]["result"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    eventually("firing webhook", || async { world.hooks_of("firing") == 1 }).await;
    let hook = world
        .hooks
        .lock()
        .unwrap()
        .iter()
        .find(|h| h["kind"] == "firing")
        .cloned()
        .unwrap();
    let subject = hook["check"].as_str().unwrap();
    assert!(subject.starts_with("backlog{"), "{hook}");
    assert!(
        subject.contains("queue=\"render\"") && subject.contains("severity=\"page\""),
        "{hook}"
    );
    assert_eq!(hook["error"], "render has 20.0 jobs waiting", "{hook}");
    assert!(
        hook["message"].as_str().unwrap().ends_with("is FIRING"),
        "{hook}"
    );
    let firing = query("ALERTS{alertname=\"backlog\",alertstate=\"firing\"}").await;
    assert_eq!(
        firing["data"]["result"][0]["metric"]["queue"], "render",
        "{firing}"
    );
    // A restart keeps the alert firing: no second notice, and its
    // resolution still reaches the channel.
    assert_eq!(serve.stop(), 0);
    let serve = p.serve();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(world.hooks_of("firing"), 1, "fired again after a restart");
    write(3);
    eventually("resolved webhook", || async {
        world.hooks_of("resolved") == 1
    })
    .await;
    // Once each: the alert fired and resolved once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.hooks_of("firing"), 1);
    assert_eq!(world.hooks_of("resolved"), 1);
    let events = get_json(&serve.url("/api/v1/events?limit=100")).await;
    let kinds: Vec<&str> = events
        .as_array()
        .or_else(|| events["events"].as_array())
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| k.starts_with("rule."))
        .collect();
    assert_eq!(kinds.len(), 2, "{events}");
    assert!(kinds.contains(&"rule.firing") && kinds.contains(&"rule.resolved"));
    let _ = std::fs::remove_file(&path);
}

/// Debian's Prometheus as a remote-write receiver on `addr`, storing in `dir`.
fn receiver(dir: &Path, addr: &str) -> std::process::Child {
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global: {}\n").unwrap();
    Command::new(common::testbed("STEWARD_TEST_PROMETHEUS"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--web.enable-remote-write-receiver")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `count_over_time(EXPR[WINDOW])` at `at` as the Prometheus query API at
/// `addr` (steward's or Prometheus's) answers it (0 when nothing is there,
/// or it does not answer).
fn prom_count(addr: &str, expr: &str, window: &str, at: f64) -> f64 {
    use std::io::{Read, Write};
    let path = format!(
        "/api/v1/query?query={}&time={at}",
        q(&format!("count_over_time({expr}[{window}])"))
    );
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0.0;
    };
    let mut out = String::new();
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err()
        || s.read_to_string(&mut out).is_err()
    {
        return 0.0;
    }
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn remote_write_reaches_prometheus_and_loses_nothing_across_its_restart() {
    let www = common::testbed("STEWARD_TEST_WWW");
    let nginx = common::testbed("STEWARD_TEST_NGINX_URL");
    let file = format!("e2e-remote-{}.txt", std::process::id());
    std::fs::write(Path::new(&www).join(&file), "jobs_waiting 7\n").unwrap();
    let prom_dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut prom = receiver(prom_dir.path(), &addr);
    let p = Project::new(&format!(
        "[steward]\nstate_dir = \"state\"\n\n[scrape.app]\nurl = \"{nginx}/{file}\"\ninterval = \"1s\"\n\n[remote_write.longterm]\nurl = \"http://{addr}/api/v1/write\"\nbatch_send_deadline = \"500ms\"\nmin_backoff = \"100ms\"\nmax_backoff = \"1s\"\n"
    ));
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let serve = common::serve(&p.spec(), &[]);
    let expr = "jobs_waiting{job=\"app\"}";
    let until = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    until("samples at the receiver", &|| {
        prom_count(&addr, expr, "1h", now()) >= 3.0
    });
    // The receiver goes away for a while and comes back: what was scraped
    // meanwhile waits in steward's queue and arrives.
    let _ = Command::new("kill")
        .args(["-TERM", &prom.id().to_string()])
        .status();
    prom.wait().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let mut prom = receiver(prom_dir.path(), &addr);
    std::thread::sleep(Duration::from_secs(2));
    let at = now();
    let ours = count_at(&serve, expr, at);
    assert!(ours >= 10.0, "{ours}");
    until("every sample steward stored", &|| {
        prom_count(&addr, expr, "1h", at) == ours
    });
    let metrics = common::http_get(&serve.addr, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("steward_remote_write_retries_total{remote=\"longterm\"}")),
        "the outage was retried: {metrics}"
    );
    let _ = prom.kill();
    let _ = prom.wait();
    let _ = std::fs::remove_file(Path::new(&www).join(&file));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_an_amqp_check_watches_becomes_a_series() {
    use amqprs::BasicProperties;
    use amqprs::channel::{BasicPublishArguments, QueueDeclareArguments};
    use amqprs::connection::{Connection, OpenConnectionArguments};
    let url = common::testbed("STEWARD_TEST_AMQP_URL");
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let queue = format!("steward-e2e-series-{}", std::process::id());
    let conn = Connection::open(&OpenConnectionArguments::new(
        "127.0.0.1",
        port,
        "guest",
        "guest",
    ))
    .await
    .unwrap();
    let ch = conn.open_channel(None).await.unwrap();
    ch.queue_declare(
        QueueDeclareArguments::new(&queue)
            .auto_delete(true)
            .finish(),
    )
    .await
    .unwrap();
    for i in 0..5 {
        ch.basic_publish(
            BasicProperties::default(),
            format!("job {i}").into_bytes(),
            BasicPublishArguments::new("", &queue),
        )
        .await
        .unwrap();
    }
    let p = Project::new(&format!(
        "[steward]\nstate_dir = \"state\"\nself_scrape_interval = \"1s\"\n\n[check.jobs]\ntype = \"amqp\"\nurl = \"{url}\"\nqueue = \"{queue}\"\ninterval = \"500ms\"\n"
    ));
    let serve = p.serve();
    // The check's observation is a series: what an autoscaler or a rule
    // reads, e.g. workers per 5 messages waiting.
    let query = serve.url(&format!(
        "/api/v1/query?query={}",
        q("steward_check_queue_messages{check=\"jobs\"}")
    ));
    eventually("queue depth as a series", || async {
        get_json(&query).await["data"]["result"][0]["value"][1] == "5"
    })
    .await;
    let consumers = get_json(&serve.url(&format!(
        "/api/v1/query?query={}",
        q("steward_check_queue_consumers{check=\"jobs\"}")
    )))
    .await;
    assert_eq!(
        consumers["data"]["result"][0]["value"][1], "0",
        "{consumers}"
    );
    let _ = ch.close().await;
    let _ = conn.close().await;
}

/// `steward --version` names the version and the commit it was built from.
#[test]
fn version_names_the_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert!(
        text.starts_with(&format!("steward {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(!head.is_empty() && text.contains(&head), "{text} / {head}");
}

/// `steward alert test` sends a test notice through each channel, the way
/// real notices go (webhook JSON, Slack text, mail), names a channel that
/// could not be reached and fails, and helps with an unknown name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_test_proves_each_channel() {
    let (world, http, smtp) = World::start().await;
    let closed = bind().await.1;
    let p = Project::new(&format!(
        r#"
[steward]
name = "e2e"
state_dir = "state"

{channels}
[check.x]
type = "tcp"
address = "127.0.0.1:1"
"#,
        channels = alert_channels(http, smtp, closed)
    ));
    let run = |args: &'static [&'static str]| {
        let p = p.spec();
        async move {
            tokio::task::spawn_blocking(move || common::steward(&p, args, &[]))
                .await
                .unwrap()
        }
    };
    let (code, out, err) = run(&["alert", "test", "hook"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "hook: test notice sent\n");
    {
        let hooks = world.hooks.lock().unwrap();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0]["kind"], "test");
        assert_eq!(hooks[0]["app"], "e2e");
        assert_eq!(hooks[0]["message"], "test notice: alert channel hook works");
    }

    // All channels: three arrive, the fourth is named as undelivered.
    let (code, out, err) = run(&["alert", "test"]).await;
    assert_eq!(code, 1, "{out}{err}");
    for c in ["hook", "chat", "mail"] {
        assert!(out.contains(&format!("{c}: test notice sent")), "{out}");
    }
    assert!(
        err.contains("broken: the test notice was not delivered"),
        "{err}"
    );
    assert_eq!(world.hooks.lock().unwrap().len(), 2);
    let slack = world.slack.lock().unwrap().clone();
    assert!(
        slack[0]["text"]
            .as_str()
            .unwrap()
            .contains("test notice: alert channel chat works"),
        "{slack:?}"
    );
    let mails = world.mails.lock().unwrap().clone();
    assert!(
        mails[0].contains("test notice: alert channel mail works"),
        "{mails:?}"
    );

    let (code, _, err) = run(&["alert", "test", "hok"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("no alert channel `hok`"), "{err}");
    assert!(err.contains("did you mean `hook`?"), "{err}");

    let none = Project::new("[check.x]\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\n");
    let (code, _, err) = none.run(&["alert", "test"]);
    assert_eq!(code, 2);
    assert!(err.contains("the spec has no alert channel"), "{err}");
}

/// The README's quick start, run as written: each `steward` line of its code
/// block (the built binary standing for the alias), `serve &` in the
/// background, `sleep`, `kill %1`; from a copy of the example so the state
/// lands in a temporary directory. Every command must succeed, `check`
/// included (steward's own checks watch the `serve` started just before);
/// `doctor` names the one gap left, the alert channel.
#[test]
fn the_readme_quick_start_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = &readme[readme.find("## Quick start").unwrap()..];
    let block = &section[section.find("```sh\n").unwrap() + 6..];
    let block = &block[..block.find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("examples")).unwrap();
    std::fs::copy(
        root.join("examples/quickstart.toml"),
        dir.path().join("examples/quickstart.toml"),
    )
    .unwrap();
    /// Killed if the test fails before the block's `kill %1`.
    struct Background(Option<std::process::Child>);
    impl Drop for Background {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut serve = Background(None);
    let mut ran = Vec::new();
    for line in block.lines() {
        let command = line.split(" #").next().unwrap().trim();
        if let Some(rest) = command.strip_prefix("steward ") {
            let background = rest.ends_with(" &");
            let args: Vec<&str> = rest.trim_end_matches(" &").split_whitespace().collect();
            let mut cmd = Command::new(BIN);
            cmd.args(&args).current_dir(dir.path()).env("NO_COLOR", "1");
            if background {
                cmd.stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
                serve.0 = Some(cmd.spawn().unwrap());
            } else {
                let out = cmd.output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                if args[2] == "doctor" {
                    // Its findings are the point: the one gap a fresh
                    // quick start has is the alert channel (exit 1).
                    assert_eq!(out.status.code(), Some(1), "{text}");
                    assert!(text.contains("no-alert-channel"), "{text}");
                } else {
                    assert!(out.status.success(), "`{command}` failed: {text}");
                }
            }
            ran.push(args[2].to_string());
        } else if let Some(secs) = command.strip_prefix("sleep ") {
            std::thread::sleep(Duration::from_secs(secs.parse().unwrap()));
        } else if command == "kill %1" {
            let child = serve.0.as_mut().expect("a background serve to stop");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            let status = child.wait().unwrap();
            assert!(status.success(), "serve ends cleanly on SIGTERM: {status}");
            serve.0 = None;
        }
    }
    assert_eq!(ran, ["validate", "serve", "check", "doctor"]);
    assert!(serve.0.is_none(), "the block stops what it started");
}

/// The README's converge example, run as written (from the repository root,
/// the built binary standing for the alias, `export`s as the environment):
/// the plan of the example's converge set on an empty directory.
#[test]
fn the_readme_converge_example_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let at = readme.find("try the converge set safely").unwrap();
    let block = &readme[at..];
    let block = &block[block.find("```sh\n").unwrap() + 6..];
    let block = &block[..block.find("```").unwrap()];
    let mut env: Vec<(String, String)> = Vec::new();
    let mut planned = false;
    for line in block.lines() {
        if let Some(dir) = line.strip_prefix("mkdir -p ") {
            std::fs::create_dir_all(dir).unwrap();
        } else if let Some(vars) = line.strip_prefix("export ") {
            for v in vars.split_whitespace() {
                let (k, val) = v.split_once('=').unwrap();
                env.push((k.to_string(), val.to_string()));
            }
        } else if let Some(rest) = line.strip_prefix("steward ") {
            let args: Vec<&str> = rest.split_whitespace().collect();
            let out = Command::new(BIN)
                .args(&args)
                .current_dir(&root)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("NO_COLOR", "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "changes pending: {text}");
            assert!(text.contains("Plan: 8 to create"), "{text}");
            planned = true;
        }
    }
    assert!(planned, "the block runs a plan");
}
