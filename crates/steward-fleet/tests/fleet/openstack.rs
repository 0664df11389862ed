//! The fleet controller on the test bed's real OpenStack (Keystone, Glance,
//! Nova with the fake driver): the same controller and planner as for local
//! instances, through the OpenStack provider.
//!
//! FakeDriver servers are database rows with no process, so nothing runs the
//! service's command. The test plays the application instead: for each of the
//! fleet's ACTIVE servers it listens on the server's fixed address (a loopback
//! address the Neutron stand-in gave it) and the service's port, and answers
//! the readiness check — except for servers of a build it was told is broken.
//! Health gating, rollouts and reverts then run exactly as they would against
//! real servers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_fleet::provider::{Local, Provider, Providers, digest_tag, fleet_tag};
use steward_fleet::requests::{DeployKind, request_deploy};
use steward_openstack::{Compute, Images, Session};
use steward_spec::{OsResolver, Spec};
use steward_state::{FleetState, InstanceState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use steward_state::EventLog;

use crate::controller::Running;

/// The fleet's last events, oldest first: what a failed wait prints.
fn story(r: &Running) -> String {
    story_of(&r.store)
}

fn story_of(store: &steward_state::Store) -> String {
    let mut events = store
        .events(&steward_state::EventQuery {
            limit: 60,
            ..Default::default()
        })
        .unwrap();
    events.reverse();
    events
        .iter()
        .map(|e| format!("  {} {}", e.event.kind, e.event.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls until `f` holds; fails after `secs` with the fleet's story.
async fn until(r: &Running, what: &str, secs: u64, f: impl Fn(&Running) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f(r) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}\n{}",
            r.states(),
            story(r)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Project {
    dir: tempfile::TempDir,
    port: u16,
}

impl Project {
    fn new() -> Project {
        Project::as_user("demo", "${env:STEWARD_TEST_OS_DEMO_PASSWORD}")
    }

    /// A project whose cloud logs in as `user` (project of the same name).
    fn as_user(user: &str, password: &str) -> Project {
        for v in ["STEWARD_TEST_OS_AUTH_URL", "STEWARD_TEST_OS_DEMO_PASSWORD"] {
            assert!(
                std::env::var(v).is_ok(),
                "{v} is not set: run the tests through scripts/test (or source <(scripts/testbed env))"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("index.html"), "v1\n").unwrap();
        let spec = format!(
            r#"
[steward]
state_dir = "state"

[cloud.test]
auth_url = "${{env:STEWARD_TEST_OS_AUTH_URL}}"
username = "{user}"
password = "{password}"
project = "{user}"
region = "RegionOne"
boot_timeout = "150s"

[check.ready]
type = "http"
url = "http://127.0.0.1:1/index.html"
interval = "300ms"
timeout = "3s"
conditions = ["[STATUS] == 200"]

[image.app]
base = "empty"
artifacts = [{{ from = "index.html", to = "/index.html" }}]

[service.api]
provider = "openstack"
flavor = "steward.tiny"
networks = ["steward-test"]
port = {port}
image = "app"
command = ["/bin/app", "--listen", "{{addr}}"]
replicas = 2
readiness = "ready"
health_grace = "10s"
rollout = {{ max_parallel = 1, min_healthy_time = "500ms", healthy_deadline = "15s", progress_deadline = "600s" }}
drain_timeout = "1s"
stop_timeout = "2s"
"#
        );
        std::fs::write(dir.path().join("steward.toml"), spec).unwrap();
        Project { dir, port }
    }

    fn spec(&self) -> Arc<Spec> {
        Arc::new(Spec::load(&self.dir.path().join("steward.toml")).unwrap())
    }

    fn new_version(&self, n: u32) -> String {
        crate::controller::new_build(self.dir.path(), n)
    }
}

/// The cloud as the test sees it (the same project steward uses).
fn nova(spec: &Spec) -> Compute {
    let config = steward_fleet::provider::cloud_config(&spec.clouds["test"], &OsResolver).unwrap();
    Compute::new(Arc::new(Session::new(config).unwrap()))
}

/// Plays the application of every ACTIVE server of the fleet: listens on its
/// address and the service's port and answers 200, unless its build is in
/// `broken`. Stops with the returned guard.
struct App {
    broken: Arc<Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    fn start(nova: Compute, tag: String, port: u16) -> App {
        let broken: Arc<Mutex<BTreeSet<String>>> = Default::default();
        let b = broken.clone();
        let task = tokio::spawn(async move {
            let mut serving: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
            loop {
                if let Ok(servers) = nova.list(&tag).await {
                    let live: BTreeSet<String> = servers.iter().map(|s| s.id.clone()).collect();
                    serving.retain(|id, t| {
                        let keep = live.contains(id);
                        if !keep {
                            t.abort();
                        }
                        keep
                    });
                    for s in servers.iter().filter(|s| s.status == "ACTIVE") {
                        let digest = s
                            .metadata
                            .get("steward_digest")
                            .cloned()
                            .unwrap_or_default();
                        if serving.contains_key(&s.id) || b.lock().unwrap().contains(&digest) {
                            continue;
                        }
                        let Some(ip) = s.fixed_ipv4(Some("steward-test")) else {
                            continue;
                        };
                        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
                        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
                            serving.insert(s.id.clone(), tokio::spawn(answer(l, digest)));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        App { broken, task }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(l: tokio::net::TcpListener, digest: String) {
    while let Ok((mut s, _)) = l.accept().await {
        let body = format!("{digest}\n");
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
        });
    }
}

/// The fleet's servers in Nova: instance id → (server status, digest).
async fn servers(nova: &Compute, tag: &str) -> BTreeMap<String, (String, String)> {
    nova.list(tag)
        .await
        .unwrap()
        .into_iter()
        .map(|s| {
            (
                s.metadata["steward_instance"].clone(),
                (s.status.clone(), s.metadata["steward_digest"].clone()),
            )
        })
        .collect()
}

/// Nova holds exactly what the records say: every recorded instance is a
/// server of the same build, ACTIVE when ready, SHUTOFF when parked, and no
/// server of the fleet is unrecorded. Returns the ready instances' builds.
async fn agrees(r: &Running, nova: &Compute, tag: &str) -> Vec<String> {
    let in_nova = servers(nova, tag).await;
    let rows = r.store.fleet_instances(Some("api")).unwrap();
    let recorded: BTreeSet<&String> = rows.iter().map(|r| &r.id).collect();
    assert_eq!(
        in_nova.keys().collect::<BTreeSet<_>>(),
        recorded,
        "Nova and the records: {in_nova:?}"
    );
    let mut ready = Vec::new();
    for row in &rows {
        let (status, digest) = &in_nova[&row.id];
        assert_eq!(digest, &row.digest, "{}", row.id);
        match row.state {
            InstanceState::Ready => {
                assert_eq!(status, "ACTIVE", "{}", row.id);
                ready.push(row.digest.clone());
            }
            InstanceState::Parked => assert_eq!(status, "SHUTOFF", "{}", row.id),
            other => panic!("{} is {other:?} after the fleet settled", row.id),
        }
    }
    ready
}

/// One deploy to `digest`, watched until it ends: its result.
async fn deploy(r: &Running, spec: &Spec, digest: &str, watch: impl Fn(&Running)) -> String {
    request_deploy(
        &*r.store,
        &spec.services["api"],
        digest,
        "test",
        DeployKind::Deploy,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        watch(r);
        let result = r
            .store
            .fleet_deploys(Some("api"), 10)
            .unwrap()
            .into_iter()
            .find(|d| d.to_digest == digest)
            .and_then(|d| d.result);
        if let Some(result) = result
            && r.settled()
        {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "the deploy did not end: {:?}\n{}",
            r.states(),
            story(r)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A project's fleet running on the test cloud, with the test playing its
/// servers' application.
struct OnNova {
    spec: Arc<Spec>,
    tag: String,
    nova: Compute,
    provider: Arc<dyn Provider>,
    r: Running,
    app: App,
}

impl OnNova {
    async fn start(p: &Project) -> OnNova {
        let spec = p.spec();
        let tag = fleet_tag(&spec.settings.state_dir);
        let nova = nova(&spec);
        let app = App::start(nova.clone(), tag.clone(), p.port);
        let provider: Arc<dyn Provider> = Arc::new(Providers::for_spec(
            &spec,
            Arc::new(OsResolver),
            Arc::new(Local::new(&spec.settings.state_dir)),
        ));
        let r = Running::with(spec.clone(), provider.clone(), Duration::from_secs(200)).await;
        OnNova {
            spec,
            tag,
            nova,
            provider,
            r,
            app,
        }
    }

    /// Everything goes, Nova's side included: the fleet stopped, every
    /// recorded instance destroyed, then no server of the fleet may be left;
    /// its images are deleted.
    async fn tear_down(self) {
        self.r.stop().await;
        let store = steward_state::Store::open(&self.spec.settings.state_dir).unwrap();
        for row in store.fleet_instances(None).unwrap() {
            let h = steward_fleet::controller::handle(&row);
            self.provider.destroy(&h).await.unwrap();
        }
        let left = servers(&self.nova, &self.tag).await;
        assert!(
            left.is_empty(),
            "servers left after every record was destroyed: {left:?}\n{}",
            story_of(&store)
        );
        let images = Images::new(self.nova.session().clone());
        for i in images.with_tag(&self.tag).await.unwrap() {
            images.delete(&i.id).await.unwrap();
        }
        drop(self.app);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_roll_to_v2_a_broken_v3_is_reverted_and_parked_v1_comes_back() {
    let p = Project::new();
    let on = OnNova::start(&p).await;
    let (spec, tag, nova, provider, r, app) =
        (&on.spec, &on.tag, &on.nova, &on.provider, &on.r, &on.app);

    // Two servers of v1, ready through the readiness check on their addresses.
    r.store
        .fleet_set_replicas("api", 2, steward_state::now_ms())
        .unwrap();
    until(r, "two ready servers of v1", 300, |r| r.settled()).await;
    let v1 = r.target().unwrap();
    let rows = r.store.fleet_instances(Some("api")).unwrap();
    for row in &rows {
        let addr: SocketAddr = row.addr.parse().unwrap();
        assert_eq!(addr.port(), p.port);
        assert!(
            addr.ip().to_string().starts_with("127.0.1."),
            "{}",
            row.addr
        );
        assert!(
            provider
                .describe(&steward_fleet::controller::handle(row))
                .contains("on cloud test")
        );
    }
    assert_eq!(agrees(r, nova, tag).await, [v1.clone(), v1.clone()]);
    let first: BTreeSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    let images = Images::new(nova.session().clone());
    let v1_images = images.with_tag(&digest_tag(&v1)).await.unwrap();
    assert_eq!(v1_images.len(), 1, "one Glance image per build");
    assert_eq!(v1_images[0].properties["steward_image"], "app");

    // v2 replaces them one by one; two stay ready throughout.
    let v2 = p.new_version(2);
    let result = deploy(r, spec, &v2, |r| {
        let ready = r
            .states()
            .iter()
            .filter(|(_, s, _)| *s == InstanceState::Ready)
            .count();
        assert!(ready >= 2, "two keep serving: {:?}", r.states());
    })
    .await;
    assert_eq!(result, "succeeded");
    assert_eq!(agrees(r, nova, tag).await, [v2.clone(), v2.clone()]);
    let ready_now: Vec<String> = r
        .states()
        .into_iter()
        .filter(|(_, s, _)| *s == InstanceState::Ready)
        .map(|(id, _, _)| id)
        .collect();
    assert!(
        ready_now.iter().all(|id| !first.contains(id)),
        "new servers serve v2"
    );

    // v3's application never answers: its server fails the gate, the deploy
    // is reverted, and no server of v3 is left in Nova.
    let v3 = p.new_version(3);
    app.broken.lock().unwrap().insert(v3.clone());
    let result = deploy(r, spec, &v3, |_| {}).await;
    assert_eq!(result, "reverted");
    assert_eq!(r.target().as_deref(), Some(v2.as_str()));
    assert_eq!(agrees(r, nova, tag).await, [v2.clone(), v2.clone()]);
    assert!(
        servers(nova, tag).await.values().all(|(_, d)| *d != v3),
        "no server of v3 is left"
    );

    // A rollback to v1 starts the parked v1 servers again (SHUTOFF → os-start
    // → ACTIVE) instead of booting new ones.
    request_deploy(
        &*r.store,
        &spec.services["api"],
        &v1,
        "test",
        DeployKind::Rollback,
    )
    .unwrap();
    until(r, "the rollback to v1", 300, |r| {
        r.settled() && r.target().as_deref() == Some(v1.as_str())
    })
    .await;
    assert_eq!(agrees(r, nova, tag).await, [v1.clone(), v1.clone()]);
    let revived: BTreeSet<String> = r
        .states()
        .into_iter()
        .filter(|(_, s, _)| *s == InstanceState::Ready)
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(revived, first, "the first servers, started again");

    on.tear_down().await;
}

/// The project's quota allows no server: each try fails with Nova's message,
/// recorded as the instance's failure, and nothing is left in Nova or in the
/// records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_quota_fails_each_start_with_nova_s_message_and_leaves_nothing() {
    let p = Project::as_user("quota", "quota");
    let spec = p.spec();
    let tag = fleet_tag(&spec.settings.state_dir);
    let nova = nova(&spec);
    let provider: Arc<dyn Provider> = Arc::new(Providers::for_spec(
        &spec,
        Arc::new(OsResolver),
        Arc::new(Local::new(&spec.settings.state_dir)),
    ));
    let r = Running::with(spec.clone(), provider, Duration::from_secs(200)).await;
    let failed = |r: &Running| {
        r.store
            .events(&steward_state::EventQuery {
                kind_prefix: Some("fleet.start_failed".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap()
    };
    until(&r, "a failed start", 120, |r| !failed(r).is_empty()).await;
    let message = &failed(&r)[0].event.message;
    assert!(message.contains("Quota exceeded"), "{message}");
    assert!(message.contains("HTTP 403"), "{message}");
    r.stop().await;
    let store = steward_state::Store::open(&spec.settings.state_dir).unwrap();
    assert!(
        store.fleet_instances(None).unwrap().is_empty(),
        "no record stays"
    );
    assert!(servers(&nova, &tag).await.is_empty(), "no server stays");
    let images = Images::new(nova.session().clone());
    for i in images.with_tag(&tag).await.unwrap() {
        images.delete(&i.id).await.unwrap();
    }
}

/// Scaling a service on Nova: out to three servers (each booted and ready
/// through its readiness check), back in to one (the extra servers drained,
/// stopped and deleted in Nova) — records and Nova agree at every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_on_nova_scales_out_and_in_and_nova_agrees() {
    let p = Project::new();
    let path = p.dir.path().join("steward.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("replicas = 2\n"));
    std::fs::write(
        &path,
        text.replace("replicas = 2\n", "replicas = { min = 1, max = 3 }\n"),
    )
    .unwrap();
    let on = OnNova::start(&p).await;
    let (tag, nova, r) = (&on.tag, &on.nova, &on.r);
    let ready = |r: &Running| {
        r.states()
            .iter()
            .filter(|(_, s, _)| *s == InstanceState::Ready)
            .count()
    };
    for n in [1usize, 3, 1] {
        r.store
            .fleet_set_replicas("api", n as u32, steward_state::now_ms())
            .unwrap();
        until(r, &format!("{n} ready server(s)"), 300, |r| {
            r.settled() && ready(r) == n && r.states().len() == n
        })
        .await;
        let target = r.target().unwrap();
        assert_eq!(agrees(r, nova, tag).await, vec![target; n], "{}", story(r));
    }

    on.tear_down().await;
}
