//! The fleet end to end: real instances (the fractals demo app) behind steward's
//! proxy, real traffic from a bounded load generator, rollouts, rollbacks,
//! failed deploys, scaling, and kill -9 of instances and of steward itself.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{BIN, Serve, events, free_port, steward};

/// The demo app, built next to steward by `cargo build --workspace`.
fn fractals_bin() -> PathBuf {
    let p = Path::new(BIN).with_file_name("fractals");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, as scripts/test does)",
        p.display()
    );
    p
}

struct Project {
    _dir: tempfile::TempDir,
    root: PathBuf,
    spec: PathBuf,
    proxy: String,
}

/// Instances outlive a killed steward by design; a test must not leave them
/// (or their sandboxes) behind: `steward down` takes them all away.
impl Drop for Project {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .arg("-f")
            .arg(&self.spec)
            .arg("down")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Project {
    /// A spec with an `api` service of the fractals app (2 to 4 instances)
    /// behind a proxy on a free port; `app` is the artifact, `base/release`
    /// makes versions differ.
    fn new(extra_rollout: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("base/etc")).unwrap();
        std::fs::write(root.join("base/etc/release"), "v1\n").unwrap();
        std::fs::copy(fractals_bin(), root.join("app")).unwrap();
        let proxy = format!("127.0.0.1:{}", free_port());
        let spec = format!(
            r#"
[steward]
state_dir = "state"

[check.api]
type = "http"
url = "http://{proxy}/health"
interval = "1s"
timeout = "2s"
conditions = ["[STATUS] == 200", "[BODY].status == pass"]

[image.app]
base = "dir:base"
artifacts = [{{ from = "app", to = "/usr/local/bin/fractals", mode = "0755" }}]

[service.api]
image = "app"
command = ["/usr/local/bin/fractals", "api", "--listen", "{{addr}}"]
env = {{ FRACTALS_DATA = "{{state_dir}}/data" }}
replicas = {{ min = 2, max = 4 }}
listen = "{proxy}"
readiness = "api"
rollout = {{ max_parallel = 1, min_healthy_time = "1s", healthy_deadline = "8s", progress_deadline = "60s"{extra_rollout} }}
drain_timeout = "5s"
stop_timeout = "5s"
"#
        );
        std::fs::write(root.join("steward.toml"), spec).unwrap();
        Project {
            spec: root.join("steward.toml"),
            root,
            proxy,
            _dir: dir,
        }
    }

    fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    fn steward(&self, args: &[&str]) -> (i32, String, String) {
        steward(&self.spec, args, &[])
    }

    fn status(&self) -> serde_json::Value {
        let (code, out, err) = self.steward(&["fleet", "status", "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
    }

    /// Instances of `api` in `state`, with their digests.
    fn instances(&self, state: &str) -> Vec<(String, String)> {
        self.status()["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["state"] == state)
            .map(|i| {
                (
                    i["id"].as_str().unwrap().to_string(),
                    i["digest"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn wait_ready(&self, n: usize, digest: Option<&str>) {
        wait_long(&format!("{n} ready instances"), || {
            let ready = self.instances("ready");
            ready.len() == n && digest.is_none_or(|d| ready.iter().all(|(_, x)| x == d))
        });
    }

    fn target(&self) -> String {
        self.status()["target"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn serve(&self) -> Serve {
        common::serve(&self.spec, &[])
    }
}

/// Polls for up to 90 s (rollouts take several health gates).
fn wait_long(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Project {
    /// Like [`wait_long`], printing the fleet's state and events on a timeout.
    fn wait(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !f() {
            if Instant::now() > deadline {
                let events: Vec<String> = events(&self.state(), "", None)
                    .into_iter()
                    .filter(|e| !e.event.kind.as_str().starts_with("check."))
                    .map(|e| format!("{} {}", e.event.kind, e.event.message))
                    .collect();
                panic!(
                    "timed out waiting for {what}\nstatus: {:#}\nevents:\n{}",
                    self.status(),
                    events.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A bounded load generator: two keep-alive clients sending requests through
/// the proxy until stopped (or 200,000 requests), counting failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str) -> Load {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f, e, url) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            errors.clone(),
            format!("http://{addr}"),
        );
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut tasks = Vec::new();
                for n in 0..2 {
                    let (s, o, f, e, url, client) =
                        (s.clone(), o.clone(), f.clone(), e.clone(), url.clone(), client.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut i = 0u64;
                        while !s.load(Ordering::Relaxed) && i < 100_000 {
                            i += 1;
                            // A mix of reads and small writes (writes are retried
                            // only when nothing reached an instance).
                            let r = if (i + n).is_multiple_of(5) {
                                client
                                    .post(format!("{url}/fractals"))
                                    .json(&serde_json::json!({"width": 16, "height": 16, "iterations": 10}))
                                    .send()
                                    .await
                            } else {
                                client.get(format!("{url}/health")).send().await
                            };
                            match r {
                                Ok(r) if r.status().is_success() => {
                                    let _ = r.bytes().await;
                                    o.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(r) => {
                                    f.fetch_add(1, Ordering::Relaxed);
                                    let status = r.status();
                                    let body = r.text().await.unwrap_or_default();
                                    e.lock().unwrap().push(format!("{status}: {body}"));
                                }
                                Err(err) => {
                                    f.fetch_add(1, Ordering::Relaxed);
                                    e.lock().unwrap().push(err.to_string());
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        Load {
            stop,
            ok,
            failed,
            errors,
            thread: Some(thread),
        }
    }

    /// Stops and returns (succeeded, failed, first errors).
    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let errors = self
            .errors
            .lock()
            .unwrap()
            .iter()
            .take(5)
            .cloned()
            .collect();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

fn release_id(proxy: &str) -> String {
    let body = common::http_get(proxy, "/health");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["releaseId"].as_str().unwrap_or_default().to_string()
}

/// POSTs JSON over plain HTTP/1.0: status code and body.
fn http_post(addr: &str, path: &str, json: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        code,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

fn pid_alive(pid: i64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
}

#[test]
fn up_rolls_a_new_version_out_under_load_and_rolls_back_instantly() {
    let p = Project::new("");
    // `steward up DIR`: builds the image, starts the instances, serves.
    let up = Serve {
        child: Command::new(BIN)
            .args(["--log-format", "json", "up"])
            .arg(&p.root)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        addr: String::new(),
        log: Default::default(),
    };
    p.wait_ready(2, None);
    wait_long("the first deploy to finish", || {
        p.status()["deploy"]["result"] == "succeeded"
    });
    let v1 = p.target();
    assert_eq!(release_id(&p.proxy), v1, "the proxy reaches the instances");

    let load = Load::start(&p.proxy);
    std::fs::write(p.root.join("base/etc/release"), "v2\n").unwrap();
    let (code, out, err) = p.steward(&["deploy", "api"]);
    assert_eq!(code, 0, "deploy failed:\n{out}\n{err}");
    assert!(out.contains("succeeded"), "{out}");
    let v2 = p.target();
    assert_ne!(v1, v2);
    p.wait_ready(2, Some(&v2));
    // Red/black: the old version's instances are kept, stopped.
    wait_long("the old instances parked", || {
        p.instances("parked").len() == 2
    });
    assert!(p.instances("parked").iter().all(|(_, d)| d == &v1));
    assert_eq!(release_id(&p.proxy), v2);

    // Rollback starts the parked instances again instead of making new ones.
    let (code, out, err) = p.steward(&["rollback", "api"]);
    assert_eq!(code, 0, "rollback failed:\n{out}\n{err}");
    p.wait_ready(2, Some(&v1));
    assert_eq!(
        events(&p.state(), "fleet.instance_revived", Some("api")).len(),
        2
    );
    let (ok, failed, errors) = load.finish();
    assert!(ok > 100, "the load generator ran ({ok} requests)");
    assert_eq!(
        failed, 0,
        "failed requests during rollout and rollback: {errors:?}"
    );

    let (code, out, _) = p.steward(&["fleet", "history"]);
    assert_eq!(code, 0);
    for kind in ["initial", "deploy", "rollback"] {
        assert!(out.contains(kind), "{out}");
    }
    assert_eq!(out.matches("succeeded").count(), 3, "{out}");

    // Deploy v3 over v1: the parked instances kept are v1's (where a rollback
    // now goes), not v2's though those are newer; rolling back revives them.
    std::fs::write(p.root.join("base/etc/release"), "v3\n").unwrap();
    let (code, out, err) = p.steward(&["deploy", "api"]);
    assert_eq!(code, 0, "deploy failed:\n{out}\n{err}");
    let v3 = p.target();
    assert!(v3 != v1 && v3 != v2);
    wait_long("only v1's instances parked", || {
        let parked = p.instances("parked");
        parked.len() == 2 && parked.iter().all(|(_, d)| d == &v1)
    });
    let (code, out, err) = p.steward(&["rollback", "api"]);
    assert_eq!(code, 0, "rollback failed:\n{out}\n{err}");
    p.wait_ready(2, Some(&v1));
    assert_eq!(
        events(&p.state(), "fleet.instance_revived", Some("api")).len(),
        4,
        "the second rollback revived v1's parked instances too"
    );
    drop(up);
}

#[test]
fn a_version_that_never_gets_ready_is_reverted_without_failed_requests() {
    let p = Project::new("");
    let serve = p.serve();
    p.wait_ready(2, None);
    let v1 = p.target();
    let load = Load::start(&p.proxy);
    // The new "version" runs but never answers.
    std::fs::write(p.root.join("app"), "#!/bin/sh\nexec sleep 600\n").unwrap();
    let started = Instant::now();
    let (code, out, err) = p.steward(&["deploy", "api"]);
    assert_eq!(code, 1, "the deploy must fail:\n{out}\n{err}");
    assert!(err.contains("reverted"), "{err}");
    assert!(err.contains("not ready within healthy_deadline"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "halted within the health deadline, not the progress deadline"
    );
    p.wait_ready(2, Some(&v1));
    assert_eq!(p.target(), v1, "the service points back at the old version");
    wait_long("the broken instance destroyed", || {
        p.status()["instances"].as_array().unwrap().len() == 2
    });
    let (ok, failed, errors) = load.finish();
    assert!(ok > 50);
    assert_eq!(failed, 0, "{errors:?}");
    assert_eq!(events(&p.state(), "deploy.reverted", Some("api")).len(), 1);
    drop(serve);
}

#[test]
fn a_killed_instance_is_replaced_and_scaling_drains_first() {
    let p = Project::new("");
    let serve = p.serve();
    p.wait_ready(2, None);
    let load = Load::start(&p.proxy);

    // Scale out and in under load.
    let (code, _, err) = p.steward(&["scale", "api", "4"]);
    assert_eq!(code, 0, "{err}");
    p.wait_ready(4, None);
    let (code, _, err) = p.steward(&["scale", "api", "2"]);
    assert_eq!(code, 0, "{err}");
    p.wait_ready(2, None);
    wait_long("two instances left", || {
        p.status()["instances"].as_array().unwrap().len() == 2
    });
    let drained = events(&p.state(), "fleet.instance_draining", Some("api"));
    assert_eq!(drained.len(), 2, "scale-in drains before it stops");
    let (ok, failed, errors) = load.finish();
    assert!(ok > 50);
    assert_eq!(failed, 0, "{errors:?}");
    let (code, _, err) = p.steward(&["scale", "api", "9"]);
    assert_eq!(code, 2);
    assert!(err.contains("between 2 and 4"), "{err}");

    // The same interface through the API (what an autoscaler calls), and the dashboard.
    let (status, body) = http_post(
        &serve.addr,
        "/api/v1/services/api/scale",
        r#"{"replicas": 3}"#,
    );
    assert_eq!(status, 200, "{body}");
    p.wait_ready(3, None);
    let (status, body) = http_post(
        &serve.addr,
        "/api/v1/services/api/scale",
        r#"{"replicas": 5}"#,
    );
    assert_eq!(status, 422, "{body}");
    let services: serde_json::Value =
        serde_json::from_str(&common::http_get(&serve.addr, "/api/v1/services")).unwrap();
    assert_eq!(services[0]["desired"], 3);
    let page = common::http_get(&serve.addr, "/");
    assert!(
        page.contains("data-service=\"api\"") && page.contains("3/3"),
        "{page}"
    );
    let (code, _, _) = p.steward(&["scale", "api", "2"]);
    assert_eq!(code, 0);
    p.wait("back to two", || {
        p.status()["instances"].as_array().unwrap().len() == 2
    });

    // kill -9 one instance: it is replaced.
    let victim = &p.status()["instances"][0];
    let (id, pid) = (
        victim["id"].as_str().unwrap().to_string(),
        victim["provider"]["pid"].as_i64().unwrap(),
    );
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    p.wait("the killed instance replaced", || {
        let ready = p.instances("ready");
        ready.len() == 2 && !ready.iter().any(|(i, _)| i == &id)
    });
    assert!(!events(&p.state(), "fleet.instance_exited", Some("api")).is_empty());
    // Its output is kept until it goes; the replacement's is there.
    let (code, out, _) = p.steward(&["logs", "api"]);
    assert_eq!(code, 0);
    assert!(out.contains("listening on"), "{out}");
    drop(serve);
}

#[test]
fn kill_9_of_steward_mid_rollout_resumes_and_finishes() {
    let p = Project::new("");
    let mut serve = p.serve();
    p.wait_ready(2, None);
    let v1 = p.target();
    std::fs::write(p.root.join("base/etc/release"), "v2\n").unwrap();
    let (code, _, err) = p.steward(&["deploy", "api", "--no-wait"]);
    assert_eq!(code, 0, "{err}");
    // Wait until the rollout is under way: a new instance exists.
    wait_long("a new instance", || {
        let st = p.status();
        st["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["digest"].as_str() != Some(v1.as_str()))
    });
    serve.child.kill().unwrap(); // SIGKILL
    serve.child.wait().unwrap();
    // The instances outlive steward (their own process groups).
    let running: Vec<i64> = p.status()["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["provider"]["pid"].as_i64())
        .collect();
    assert!(running.len() >= 2);
    assert!(
        running.iter().all(|pid| pid_alive(*pid)),
        "instances survived"
    );

    let serve = p.serve();
    let v2 = p.status()["target"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    p.wait_ready(2, Some(&v2));
    wait_long("the deploy recorded as succeeded", || {
        p.status()["deploy"]["result"] == "succeeded"
    });
    // Every process steward knows of is accounted for: v2 running, v1 parked.
    wait_long("old instances parked", || p.instances("parked").len() == 2);
    for (_, d) in p.instances("parked") {
        assert_eq!(d, v1);
    }
    for pid in running {
        let adopted = p.status()["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["provider"]["pid"].as_i64() == Some(pid));
        assert!(
            adopted || !pid_alive(pid),
            "process {pid} was left running unmanaged"
        );
    }
    // No directory without a record.
    let dirs = std::fs::read_dir(p.state().join("fleet/instances"))
        .unwrap()
        .count();
    assert_eq!(dirs, p.status()["instances"].as_array().unwrap().len());
    drop(serve);
}

#[test]
fn a_stale_image_is_rebuilt_and_rolled_out_by_itself() {
    let p = Project::new("");
    let spec = std::fs::read_to_string(&p.spec).unwrap().replace(
        "base = \"dir:base\"\n",
        "base = \"dir:base\"\naudit = { every = \"1s\", max_age = \"1s\", auto_rebuild = true }\n",
    );
    std::fs::write(&p.spec, spec).unwrap();
    let (code, _, err) = p.steward(&["image", "build"]);
    assert_eq!(code, 0, "{err}");
    // What the next build would bring (in real life: security updates).
    std::fs::write(p.root.join("base/etc/release"), "v2\n").unwrap();
    let serve = p.serve();
    p.wait_ready(2, None);
    let v1 = p.target();
    p.wait("the rebuilt image rolled out", || {
        let t = p.target();
        t != v1 && p.instances("ready").iter().filter(|(_, d)| d == &t).count() == 2
    });
    assert!(!events(&p.state(), "image.stale", Some("app")).is_empty());
    assert_eq!(events(&p.state(), "image.rebuilt", Some("app")).len(), 1);
    let (_, out, _) = p.steward(&["fleet", "history"]);
    assert!(
        out.contains("rebuild") && out.contains("serve (auto_rebuild)"),
        "{out}"
    );
    drop(serve);
}

/// As root: each instance in its own overlay root over a Debian image, its own
/// network namespace and address, a memory cgroup, under bubblewrap.
#[test]
fn isolated_instances_get_their_own_root_network_and_memory_limit() {
    let debian = common::testbed("STEWARD_TEST_DEBIAN_ROOT");
    let p = Project::new("");
    let spec = std::fs::read_to_string(&p.spec)
        .unwrap()
        .replace("base = \"dir:base\"", "base = \"debian\"")
        .replace(
            "env = { FRACTALS_DATA = \"{state_dir}/data\" }",
            "env = { FRACTALS_DATA = \"/data\" }\nisolate = true\nmemory = \"256M\"\nmounts = [\"{state_dir}/data:/data\"]",
        );
    std::fs::write(&p.spec, spec).unwrap();
    let env = [("STEWARD_DEBIAN_ROOT".to_string(), debian)];
    let (code, _, err) = steward(&p.spec, &["image", "build"], &env);
    assert_eq!(code, 0, "{err}");
    let serve = common::serve(&p.spec, &env);
    p.wait_ready(2, None);
    let st = p.status();
    let instances = st["instances"].as_array().unwrap().clone();
    for i in &instances {
        let addr = i["addr"].as_str().unwrap();
        assert!(
            addr.starts_with("10.213.") && addr.ends_with(":8080"),
            "{addr}"
        );
        let pid = i["provider"]["pid"].as_i64().unwrap();
        // The instance's own network namespace and overlay root.
        let ns = |p: i64, what: &str| std::fs::read_link(format!("/proc/{p}/ns/{what}")).unwrap();
        assert_ne!(ns(pid, "net"), ns(std::process::id() as i64, "net"));
        let dir = p
            .state()
            .join("fleet/instances")
            .join(i["id"].as_str().unwrap());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            mounts.contains(&format!("{} ", dir.join("root").display())),
            "overlay mounted"
        );
        let sandbox: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("sandbox.json")).unwrap()).unwrap();
        let cg = sandbox["cgroup"].as_str().unwrap();
        assert_eq!(
            std::fs::read_to_string(format!("{cg}/memory.limit_in_bytes"))
                .unwrap()
                .trim(),
            (256u64 << 20).to_string()
        );
        assert!(
            !std::fs::read_to_string(format!("{cg}/cgroup.procs"))
                .unwrap()
                .trim()
                .is_empty()
        );
    }
    // Through the proxy, and the shared data directory works across instances.
    let (status, body) = http_post(&p.proxy, "/fractals", r#"{"width": 16, "height": 16}"#);
    assert_eq!(status, 201, "{body}");
    assert!(
        p.state().join("data/fractals.db").exists(),
        "the mount reached the host"
    );
    // What an instance writes stays in its upper layer, never in the image.
    let first = instances[0]["id"].as_str().unwrap();
    let upper = p.state().join("fleet/instances").join(first).join("upper");
    assert!(upper.is_dir());

    // Scaling in destroys one: its mount, namespace and cgroup go with it.
    let (code, _, _) = p.steward(&["scale", "api", "2"]);
    assert_eq!(code, 0);
    let (code, _, _) = p.steward(&["scale", "api", "3"]);
    assert_eq!(code, 0);
    p.wait_ready(3, None);
    let before: Vec<String> = p.instances("ready").into_iter().map(|(i, _)| i).collect();
    let (code, _, _) = p.steward(&["scale", "api", "2"]);
    assert_eq!(code, 0);
    p.wait("one instance destroyed", || {
        p.status()["instances"].as_array().unwrap().len() == 2
    });
    let gone = before
        .iter()
        .find(|i| !p.instances("ready").iter().any(|(x, _)| &x == i))
        .unwrap()
        .clone();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&gone), "its overlay is unmounted");
    assert!(!p.state().join("fleet/instances").join(&gone).exists());

    // `steward down` takes the rest away, sandboxes included.
    drop(serve);
    let netns: Vec<String> = instances
        .iter()
        .map(|i| {
            let dir = p
                .state()
                .join("fleet/instances")
                .join(i["id"].as_str().unwrap());
            let sb: serde_json::Value = serde_json::from_slice(
                &std::fs::read(dir.join("sandbox.json")).unwrap_or_default(),
            )
            .unwrap_or_default();
            sb["netns"].as_str().unwrap_or_default().to_string()
        })
        .filter(|n| !n.is_empty())
        .collect();
    let (code, out, err) = p.steward(&["down"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&p.state().join("fleet/instances").display().to_string()));
    for n in netns {
        assert!(!Path::new("/run/netns").join(&n).exists(), "{n} deleted");
    }
    assert_eq!(p.status()["instances"].as_array().unwrap().len(), 0);
}

#[test]
fn a_canary_waits_for_promotion_next_to_the_old_version() {
    let p = Project::new(", canary = 1, auto_promote = false");
    let serve = p.serve();
    p.wait_ready(2, None);
    let v1 = p.target();
    std::fs::write(p.root.join("base/etc/release"), "v2\n").unwrap();
    let (code, _, err) = p.steward(&["deploy", "api", "--no-wait"]);
    assert_eq!(code, 0, "{err}");
    let v2 = p.target();
    p.wait("a healthy canary", || {
        let ready = p.instances("ready");
        ready.iter().filter(|(_, d)| d == &v2).count() == 1
            && ready.iter().filter(|(_, d)| d == &v1).count() == 2
    });
    // It stays that way: one canary, both old instances serving, deploy running.
    std::thread::sleep(Duration::from_secs(3));
    let ready = p.instances("ready");
    assert_eq!(ready.len(), 3, "{ready:?}");
    assert!(p.status()["deploy"]["result"].is_null());
    let (code, out, err) = p.steward(&["deploy", "api", "--promote"]);
    assert_eq!(code, 0, "{out}{err}");
    p.wait_ready(2, Some(&v2));
    p.wait("the deploy finished", || {
        p.status()["deploy"]["result"] == "succeeded"
    });
    let (code, _, err) = p.steward(&["deploy", "api", "--promote"]);
    assert_eq!(code, 1, "nothing left to promote: {err}");

    // The same pause for a deploy asked for through the API (the dashboard's
    // way): every door decides it in one place.
    std::fs::write(p.root.join("base/etc/release"), "v3\n").unwrap();
    let (code, out, err) = p.steward(&["image", "build", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let (status, body) = http_post(&serve.addr, "/api/v1/services/api/deploy", "{}");
    assert_eq!(status, 200, "{body}");
    let v3 = p.target();
    assert_ne!(v3, v2);
    p.wait("a healthy canary of the API's deploy", || {
        let ready = p.instances("ready");
        ready.iter().filter(|(_, d)| d == &v3).count() == 1
            && ready.iter().filter(|(_, d)| d == &v2).count() == 2
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(p.instances("ready").len(), 3);
    assert!(p.status()["deploy"]["result"].is_null());
    let (code, out, err) = p.steward(&["deploy", "api", "--promote"]);
    assert_eq!(code, 0, "{out}{err}");
    p.wait_ready(2, Some(&v3));
    drop(serve);
}

/// The autoscaler follows the proxy's request rate, which steward stores
/// from its own metrics: under load the api grows from 2 to its maximum of 4
/// with every request answered, the change is recorded as made by the
/// autoscaler with its arithmetic, and `steward scale --explain` prints it.
#[test]
fn the_api_scales_out_on_its_request_rate() {
    let p = Project::new("");
    let spec = std::fs::read_to_string(&p.spec).unwrap();
    let spec = spec.replace(
        "[steward]\nstate_dir = \"state\"",
        "[steward]\nstate_dir = \"state\"\nself_scrape_interval = \"1s\"",
    );
    let spec = format!(
        "{spec}autoscale = {{ interval = \"1s\", metrics = [{{ expr = \"sum(rate(steward_proxy_requests_total{{service=\\\"api\\\"}}[5s]))\", per_instance = 20 }}], scale_down = {{ stabilization = \"10m\" }} }}\n"
    );
    std::fs::write(&p.spec, spec).unwrap();
    let (code, out, err) = p.steward(&["validate"]);
    assert_eq!(code, 0, "{out}{err}");
    let serve = p.serve();
    p.wait_ready(2, None);
    // Only the readiness probes so far: the autoscaler keeps the minimum.
    let (code, out, err) = p.steward(&["scale", "--explain", "api"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("api: 2 → 2"), "{out}");
    let load = Load::start(&p.proxy);
    p.wait_ready(4, None);
    let (ok, failed, errors) = load.finish();
    assert!(ok > 100, "{ok}");
    assert_eq!(failed, 0, "{errors:?}");
    let scaled = events(&p.state(), "fleet.scaled", Some("api"));
    let by_autoscaler: Vec<&str> = scaled
        .iter()
        .map(|e| e.event.message.as_str())
        .filter(|m| m.contains("by the autoscaler: sum(rate("))
        .collect();
    assert!(!by_autoscaler.is_empty(), "{scaled:?}");
    let (code, out, _) = p.steward(&["scale", "--explain", "api"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("sum(rate(steward_proxy_requests_total"),
        "{out}"
    );
    eprintln!("{ok} requests, none failed; {}\n{out}", by_autoscaler[0]);
    // What each instance uses, on /metrics (and so as series), read every
    // 5 s.
    let mut metrics = String::new();
    let mut memory: Vec<f64> = Vec::new();
    wait_long("usage of 4 instances", || {
        metrics = common::http_get(&serve.addr, "/metrics");
        memory = metrics
            .lines()
            .filter(|l| l.starts_with("steward_instance_memory_bytes{service=\"api\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        memory.len() == 4
    });
    assert!(memory.iter().all(|m| *m > 1e6), "{memory:?}");
    assert!(
        metrics.contains("steward_instance_cpu_seconds_total{service=\"api\""),
        "{metrics}"
    );
    // The status page shows the traffic, as a person sees it in Chromium:
    // rate, errors, latency percentiles, an hour's chart with the scale
    // events marked, and the autoscaler's latest decision.
    let dom = common::chromium_dom(&serve.url("/"));
    let start = dom
        .find("data-service=\"api\"")
        .unwrap_or_else(|| panic!("no api row: {dom}"));
    let row = &dom[start..start + dom[start..].find("</tr>").unwrap()];
    let cell = |class: &str| {
        let at = row
            .find(&format!("class=\"{class}\">"))
            .unwrap_or_else(|| panic!("no {class}: {row}"));
        let text = &row[at + class.len() + 9..];
        text[..text.find("</td>").unwrap()].to_string()
    };
    assert!(
        cell("rate").ends_with("/s") && cell("rate") != "0/s",
        "{row}"
    );
    // The load saw no failure; the health check through the proxy may
    // have met a 503 before the first instance was ready.
    let errors: f64 = cell("errors")
        .strip_suffix('%')
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("{row}"));
    assert!(errors < 5.0, "{row}");
    assert!(cell("latency").matches(" ms").count() == 3, "{row}");
    assert!(row.contains("<polyline"), "request chart: {row}");
    assert!(row.contains("class=\"mark\""), "scale events marked: {row}");
    assert!(row.contains("autoscaler: "), "{row}");
    // The query page draws any expression over the stored series.
    let dom = common::chromium_dom(&serve.url(
        "/query?expr=sum+by+(service)+(rate(steward_proxy_requests_total%5B10s%5D))&range=15m",
    ));
    assert!(dom.contains("1 series over the last 15m"), "{dom}");
    assert!(dom.contains("<polyline"), "{dom}");
    assert!(dom.contains("{service=\"api\"}"), "{dom}");
    let bad = common::chromium_dom(&serve.url("/query?expr=sum(&range=1h"));
    assert!(bad.contains("id=\"query-error\""), "{bad}");
    // `steward top`: once, as a table; then live in a terminal (tmux),
    // quit with q.
    let url = format!("http://{}", serve.addr);
    let (code, out, err) = p.steward(&["top", "--once", "--url", &url]);
    assert_eq!(code, 0, "{err}");
    let api = out
        .lines()
        .find(|l| l.starts_with("api "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(out.starts_with("SERVICE"), "{out}");
    assert!(
        api.contains("4/4") && api.contains("/s") && api.contains(" ms"),
        "{out}"
    );
    assert!(api.contains("→"), "the autoscaler's decision: {out}");
    let socket = format!("steward-top-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .unwrap()
    };
    let cmd = format!(
        "{BIN} -f {} top --interval 0.5 --url {url}",
        p.spec.display()
    );
    let started = tmux(&["new-session", "-d", "-x", "160", "-y", "20", &cmd]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let mut screen = String::new();
    for _ in 0..100 {
        screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p"]).stdout).into_owned();
        if screen.contains("SERVICE") && screen.contains("4/4") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        screen.contains("steward top") && screen.contains("q quits"),
        "{screen}"
    );
    assert!(
        screen
            .lines()
            .any(|l| l.contains("api") && l.contains("4/4")),
        "{screen}"
    );
    tmux(&["send-keys", "q"]);
    let mut gone = false;
    for _ in 0..50 {
        if !tmux(&["has-session"]).status.success() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !gone {
        tmux(&["kill-server"]);
    }
    assert!(gone, "q did not quit steward top");
    drop(serve);
}

#[test]
fn workers_wake_on_the_queue_scale_out_and_rest_at_zero_again() {
    let p = Project::new("");
    let spec = std::fs::read_to_string(&p.spec).unwrap();
    // The API's instances are scraped (they report the queue depth); the
    // workers rest at zero until there is work, grow with the backlog, and
    // go back to zero once it is gone and the cooldown has passed.
    let spec = format!(
        r#"{spec}metrics = {{ path = "/metrics", interval = "1s" }}

[service.worker]
image = "app"
command = ["/usr/local/bin/fractals", "worker", "--listen", "{{addr}}"]
env = {{ FRACTALS_DATA = "{{state_dir}}/data" }}
replicas = {{ min = 0, max = 3 }}
stop_timeout = "5s"
autoscale = {{ interval = "1s", metrics = [{{ expr = 'max(fractals_jobs{{status="queued"}}) + max(fractals_jobs{{status="running"}})', per_instance = 2, activation = 0 }}], scale_down = {{ stabilization = "3s" }}, cooldown = "3s" }}
"#
    );
    std::fs::write(&p.spec, spec).unwrap();
    let (code, out, err) = p.steward(&["validate"]);
    assert_eq!(code, 0, "{out}{err}");
    let serve = p.serve();
    p.wait_ready(2, None);
    let workers = |state: &str| -> usize {
        let (code, out, err) = p.steward(&["fleet", "status", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == "worker")
            .map(|s| {
                s["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|i| state.is_empty() || i["state"] == state)
                    .count()
            })
            .unwrap_or(0)
    };
    // Nothing queued: no worker runs.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(workers(""), 0, "a worker started with an empty queue");
    // The demo's load script, bounded: one burst of 24 jobs (smaller jobs
    // than its default, for a busy test machine), all queued before a
    // worker can have started, so the backlog the autoscaler first sees is
    // the whole burst, however fast the workers render.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fractals/load.sh");
    let load = Command::new("sh")
        .arg(&script)
        .args(["1", "24", &format!("http://{}", p.proxy)])
        .env(
            "FRACTALS_JOB",
            r#"{"kind":"mandelbrot","width":320,"height":240,"iterations":2000}"#,
        )
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&load.stdout).to_string();
    assert!(
        load.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let submitted: u64 = printed
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("submitted "))
        .and_then(|l| l.strip_suffix(" jobs"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(submitted >= 20, "{printed}");
    // Woken and scaled out: 24 waiting at 2 a worker is more than the
    // maximum of 3.
    wait_long("workers woken by the queue", || workers("") >= 2);
    let scaled = events(&p.state(), "fleet.scaled", Some("worker"));
    assert!(
        scaled
            .iter()
            .any(|e| e.event.message.contains("by the autoscaler")),
        "{scaled:?}"
    );
    // Every job rendered, then the workers rest again.
    wait_long("every job done", || {
        let m = common::http_get(&p.proxy, "/metrics");
        m.lines()
            .any(|l| l == format!("fractals_jobs{{status=\"done\"}} {submitted}"))
    });
    wait_long("workers back at rest", || workers("") == 0);
    let (_, out, _) = p.steward(&["scale", "--explain", "worker"]);
    assert!(out.contains("rest at 0"), "{out}");
    drop(serve);
}
