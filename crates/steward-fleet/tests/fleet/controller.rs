//! The fleet controller driven through two providers — the recording one,
//! which fails on command, and the local one, which runs real processes — on
//! the same scenarios: the controller and the planner must not know which
//! provider they drive, and whatever the provider does wrong, the service
//! ends up with what its spec and state ask for and nothing leaks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use steward_fleet::controller::{Fleet, bind};
use steward_fleet::provider::recording::{Call, Faults, Recording};
use steward_fleet::provider::{Local, Provider};
use steward_fleet::requests::DeployKind;
use steward_fleet::requests::request_deploy;
use steward_runtime::Supervisor;
use steward_spec::{OsResolver, Spec};
use steward_state::{EventLog, FleetState, InstanceState, Store};
use tokio_util::sync::CancellationToken;

/// A project: a spec with one service of `replicas` instances from an image
/// whose content is `version`, and its state directory.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(command: &str, replicas: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "v1\n").unwrap();
        let spec = format!(
            r#"
[steward]
state_dir = "state"

[check.ready]
type = "http"
url = "http://127.0.0.1:1/index.html"
interval = "200ms"
timeout = "1s"
conditions = ["[STATUS] == 200"]

[image.app]
base = "empty"
artifacts = [{{ from = "index.html", to = "/index.html" }}]

[service.api]
image = "app"
command = {command}
replicas = {replicas}
readiness = "ready"
health_grace = "1s"
rollout = {{ max_parallel = 1, min_healthy_time = "300ms", healthy_deadline = "3s", progress_deadline = "30s" }}
drain_timeout = "1s"
stop_timeout = "2s"
"#
        );
        std::fs::write(dir.path().join("steward.toml"), spec).unwrap();
        Project { dir }
    }

    fn spec(&self) -> Arc<Spec> {
        Arc::new(Spec::load(&self.dir.path().join("steward.toml")).unwrap())
    }

    /// A new build of the image (a different digest), returned.
    fn new_version(&self, n: u32) -> String {
        new_build(self.dir.path(), n)
    }
}

/// A new build of image `app` of the project in `dir` (its `index.html`
/// says `vN`): its digest.
pub(crate) fn new_build(dir: &std::path::Path, n: u32) -> String {
    std::fs::write(dir.join("index.html"), format!("v{n}\n")).unwrap();
    let spec = Spec::load(&dir.join("steward.toml")).unwrap();
    steward_image::build(&spec, &spec.images["app"], &OsResolver, &mut |_| {})
        .unwrap()
        .manifest
        .digest
}

/// The fleet controller for `api`, under a supervisor, until dropped.
pub(crate) struct Running {
    pub(crate) store: Arc<Store>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn start(p: &Project, provider: Arc<dyn Provider>) -> Running {
        Running::with(p.spec(), provider, Duration::from_secs(1)).await
    }

    /// The fleet of `spec` on `provider`, each provider call cut off after `timeout`.
    pub(crate) async fn with(
        spec: Arc<Spec>,
        provider: Arc<dyn Provider>,
        timeout: Duration,
    ) -> Running {
        let store = Arc::new(Store::open(&spec.settings.state_dir).unwrap());
        let resolver: Arc<dyn steward_spec::Resolver> = Arc::new(OsResolver);
        let fleet = Fleet {
            spec: spec.clone(),
            store: store.clone(),
            resolver: resolver.clone(),
            provider,
            provider_timeout: timeout,
            prober: steward_health::Prober::new(resolver),
            metrics: Default::default(),
            proxy_metrics: Default::default(),
        };
        let cancel = CancellationToken::new();
        let mut sup = Supervisor::new(store.clone(), Supervisor::always_leader())
            .with_backoff(Duration::from_millis(50));
        let bound = bind(&spec).await.unwrap();
        let _no_proxy = fleet.register(bound, &mut sup, cancel.clone()).await;
        let task = tokio::spawn(sup.run(cancel.clone()));
        Running {
            store,
            cancel,
            task: Some(task),
        }
    }

    pub(crate) async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    pub(crate) fn target(&self) -> Option<String> {
        self.store
            .fleet_service("api")
            .unwrap()
            .and_then(|s| s.target)
    }

    /// Instances by state, from the store.
    pub(crate) fn states(&self) -> Vec<(String, InstanceState, String)> {
        self.store
            .fleet_instances(Some("api"))
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.state, r.digest))
            .collect()
    }

    pub(crate) fn desired(&self) -> u32 {
        self.store
            .fleet_service("api")
            .unwrap()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
    }

    /// Converged: as many ready instances of the target as desired, nothing
    /// starting, draining or failed, no deploy running.
    pub(crate) fn settled(&self) -> bool {
        let Some(target) = self.target() else {
            return false;
        };
        let states = self.states();
        let ready = states
            .iter()
            .filter(|(_, s, d)| *s == InstanceState::Ready && *d == target)
            .count() as u32;
        let busy = states
            .iter()
            .any(|(_, s, _)| !matches!(s, InstanceState::Ready | InstanceState::Parked));
        let running_deploy = self
            .store
            .fleet_deploys(Some("api"), 1)
            .unwrap()
            .first()
            .is_some_and(|d| d.result.is_none());
        ready == self.desired() && !busy && !running_deploy
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Polls `f` (async-friendly) until it holds; fails after `secs`.
pub(crate) async fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether something answers HTTP on `addr`.
async fn answers(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    else {
        return false;
    };
    let _ = s
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut out)).await;
    out.starts_with(b"HTTP/1.0 200") || out.starts_with(b"HTTP/1.1 200")
}

/// The provider's own view agrees with the records: every recorded instance
/// exists there and nothing else does.
async fn no_leaks(provider: &dyn Provider, r: &Running) {
    let listed: BTreeSet<String> = provider
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    let recorded: BTreeSet<String> = r.states().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(listed, recorded, "provider and records agree");
}

/// Failures on command: creates that fail, a new version's instance that never
/// answers, a destroy that hangs. The service keeps serving throughout and
/// ends with exactly what it should have, and the provider holds nothing the
/// records do not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_survives_a_provider_that_fails_on_command() {
    let p = Project::new(r#"["unused"]"#, "{ min = 1, max = 3 }");
    let rec = Recording::new();
    rec.inject(Faults {
        create_errors: 2,
        ..Faults::default()
    });
    let r = Running::start(&p, Arc::new(rec.clone())).await;
    until("the first instance despite two failed creates", 30, || {
        r.settled()
    })
    .await;
    let creates = rec
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Create(_)))
        .count();
    assert_eq!(creates, 3, "two refused, one made: {:?}", rec.calls());
    assert_eq!(rec.pending(), Faults::default());
    let v1 = r.target().unwrap();

    // Scale to 3, then a new version whose first instance never answers.
    r.store
        .fleet_set_replicas("api", 3, steward_state::now_ms())
        .unwrap();
    until("three instances", 30, || r.settled()).await;
    rec.inject(Faults {
        unreachable: 1,
        ..Faults::default()
    });
    let v2 = p.new_version(2);
    let spec = p.spec();
    request_deploy(
        &*r.store,
        &spec.services["api"],
        &v2,
        "test",
        DeployKind::Deploy,
    )
    .unwrap();
    // While the deploy fails and is reverted, something always serves.
    let watch_until = Instant::now() + Duration::from_secs(30);
    loop {
        let ready: Vec<String> = r
            .store
            .fleet_instances(Some("api"))
            .unwrap()
            .into_iter()
            .filter(|i| i.state == InstanceState::Ready)
            .map(|i| i.addr)
            .collect();
        assert!(
            ready.len() >= 2,
            "at least two keep serving: {:?}",
            r.states()
        );
        let first = r
            .store
            .fleet_deploys(Some("api"), 10)
            .unwrap()
            .into_iter()
            .find(|d| d.to_digest == v2)
            .and_then(|d| d.result);
        if first.is_some() && r.settled() {
            assert_eq!(first.as_deref(), Some("reverted"));
            break;
        }
        assert!(
            Instant::now() < watch_until,
            "the deploy did not end: {:?}",
            r.states()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(r.target().as_deref(), Some(v1.as_str()), "back on v1");
    for (_, _, digest) in r.states() {
        assert_eq!(digest, v1);
    }

    // A destroy that hangs: cut off by the provider timeout, tried again.
    rec.inject(Faults {
        hanging_destroys: 1,
        ..Faults::default()
    });
    r.store
        .fleet_set_replicas("api", 1, steward_state::now_ms())
        .unwrap();
    until("one instance after the hung destroy", 30, || r.settled()).await;
    assert_eq!(rec.pending(), Faults::default(), "the hang was given");
    let failed = r
        .store
        .events(&steward_state::EventQuery {
            kind_prefix: Some("fleet.destroy_failed".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert!(!failed.is_empty(), "the timeout is on record");
    no_leaks(&rec, &r).await;
    for (_, s, _) in r.states() {
        assert_eq!(s, InstanceState::Ready);
    }
    let addr = r.store.fleet_instances(Some("api")).unwrap()[0]
        .addr
        .clone();
    assert!(answers(&addr).await, "the one left serves");
    r.stop().await;
    // A graceful stop parks what ran.
    let store = Store::open(&p.spec().settings.state_dir).unwrap();
    assert!(
        store
            .fleet_instances(Some("api"))
            .unwrap()
            .iter()
            .all(|i| i.state == InstanceState::Parked)
    );
}

/// One step of a scenario.
#[derive(Debug, Clone)]
enum Op {
    Scale(u32),
    Deploy,
    Fail(Faults),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..=3).prop_map(Op::Scale),
        Just(Op::Deploy),
        (0u32..=2, 0u32..=1, 0u32..=1).prop_map(|(c, u, h)| Op::Fail(Faults {
            create_errors: c,
            unreachable: u,
            hanging_destroys: h,
        })),
    ]
}

/// Runs a scenario against a provider: after every step the service settles
/// with as many ready instances of its target as desired, and the provider
/// holds exactly the recorded instances.
async fn scenario(p: &Project, provider: Arc<dyn Provider>, rec: Option<Recording>, ops: &[Op]) {
    let r = Running::start(p, provider.clone()).await;
    until("the first start", 60, || r.settled()).await;
    let mut version = 1;
    for op in ops {
        match op {
            Op::Scale(n) => r
                .store
                .fleet_set_replicas("api", *n, steward_state::now_ms())
                .unwrap(),
            Op::Deploy => {
                version += 1;
                let digest = p.new_version(version);
                let spec = p.spec();
                request_deploy(
                    &*r.store,
                    &spec.services["api"],
                    &digest,
                    "test",
                    DeployKind::Deploy,
                )
                .unwrap();
            }
            Op::Fail(f) => match &rec {
                Some(rec) => rec.inject(*f),
                None => continue,
            },
        }
        until(&format!("the service to settle after {op:?}"), 60, || {
            r.settled()
        })
        .await;
        no_leaks(provider.as_ref(), &r).await;
        for i in r.store.fleet_instances(Some("api")).unwrap() {
            if i.state == InstanceState::Ready {
                assert!(answers(&i.addr).await, "{} is ready and answers", i.id);
            }
        }
    }
    r.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3,
        max_shrink_iters: 0,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The same random scenarios through the recording provider (with its
    /// failures) and through the local one (real processes; it has no
    /// failures to inject, so it runs the other steps).
    #[test]
    fn any_scenario_settles_on_either_provider(ops in proptest::collection::vec(op(), 1..4)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = Project::new(r#"["unused"]"#, "{ min = 1, max = 3 }");
            let rec = Recording::new();
            scenario(&p, Arc::new(rec.clone()), Some(rec), &ops).await;
            let p = Project::new(
                r#"["python3", "-m", "http.server", "--bind", "127.0.0.1", "{port}"]"#,
                "{ min = 1, max = 3 }",
            );
            let provider = Arc::new(Local::new(&p.spec().settings.state_dir));
            scenario(&p, provider, None, &ops).await;
        });
    }
}
