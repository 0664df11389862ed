//! The autoscaler controller against a real state database and series
//! store: it reads the metrics, decides, and scales through the fleet's
//! door (`fleet.scaled` by the autoscaler, with the arithmetic), keeps a
//! shrink inside the stabilization window, and in `recommend` mode only
//! records what it would do.

use std::sync::Arc;

use steward_metrics::controller::{Autoscaler, Series, decision_key};
use steward_runtime::Controller;
use steward_state::{
    EventKind, EventLog, EventQuery, FleetState, InstanceRow, InstanceState, Meta, Store,
};

fn spec(autoscale: &str) -> steward_spec::Service {
    let src = format!(
        "[image.app]\nbase = \"empty\"\n\n[service.worker]\nimage = \"app\"\ncommand = [\"app\"]\nreplicas = {{ min = 1, max = 10 }}\nautoscale = {autoscale}\n"
    );
    let spec = steward_spec::Spec::parse(
        "t.toml",
        &src,
        std::path::Path::new("/"),
        &steward_spec::OsResolver,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    spec.services["worker"].clone()
}

fn instance(id: &str, addr: &str) -> InstanceRow {
    InstanceRow {
        id: id.into(),
        service: "worker".into(),
        digest: "d".into(),
        state: InstanceState::Ready,
        addr: addr.into(),
        provider: serde_json::Value::Null,
        created_ms: 0,
        ready_ms: Some(0),
        updated_ms: 0,
        reason: None,
    }
}

fn set(series: &Series, labels: &[(&str, &str)], value: f64) {
    let mut h = series.lock().unwrap();
    let r = h.series_ref(labels);
    h.append(r, steward_state::now_ms(), value).unwrap();
}

fn setup(autoscale: &str) -> (tempfile::TempDir, Arc<Store>, Series, Autoscaler) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    store.fleet_set_replicas("worker", 2, 0).unwrap();
    store
        .fleet_put_instance(&instance("w-1", "127.0.0.1:1001"))
        .unwrap();
    store
        .fleet_put_instance(&instance("w-2", "127.0.0.1:1002"))
        .unwrap();
    let series: Series = Default::default();
    let a = Autoscaler::new(spec(autoscale), store.clone(), series.clone()).unwrap();
    (dir, store, series, a)
}

fn replicas(store: &Store) -> Option<u32> {
    store
        .fleet_service("worker")
        .unwrap()
        .and_then(|r| r.replicas)
}

fn events(store: &Store, kind: EventKind) -> Vec<String> {
    store
        .events(&EventQuery {
            kinds: vec![kind],
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|e| e.event.message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_scales_workers_out_through_the_fleet_and_a_dip_waits_for_the_window() {
    let (_dir, store, series, mut a) =
        setup("{ metrics = [{ expr = \"sum(queue_depth)\", per_instance = 10 }] }");
    set(
        &series,
        &[("__name__", "queue_depth"), ("queue", "render")],
        35.0,
    );
    a.reconcile().await.unwrap();
    assert_eq!(replicas(&store), Some(4), "ceil(35 / 10)");
    let scaled = events(&store, EventKind::FleetScaled);
    assert_eq!(scaled.len(), 1);
    assert!(
        scaled[0].starts_with(
            "worker scaled to 4 by the autoscaler: sum(queue_depth): 35 / (10 per instance × 2)"
        ),
        "{scaled:?}"
    );
    let decision: serde_json::Value =
        serde_json::from_str(&store.meta(&decision_key("worker")).unwrap().unwrap()).unwrap();
    assert_eq!(decision["desired"], 4);
    assert_eq!(decision["current"], 2);
    // The queue drains: the 300 s down-stabilization window keeps 4.
    std::thread::sleep(std::time::Duration::from_millis(5));
    set(
        &series,
        &[("__name__", "queue_depth"), ("queue", "render")],
        0.0,
    );
    a.reconcile().await.unwrap();
    assert_eq!(replicas(&store), Some(4));
    let decision: serde_json::Value =
        serde_json::from_str(&store.meta(&decision_key("worker")).unwrap().unwrap()).unwrap();
    assert_eq!(
        decision["recommendation"], 0,
        "ceil(0 / 10), before the bounds"
    );
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("stabilized to 4"),
        "{decision}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_instance_load_is_read_by_instance_address() {
    let (_dir, store, series, mut a) =
        setup("{ metrics = [{ expr = \"inflight\", per_instance = 5 }] }");
    set(
        &series,
        &[("__name__", "inflight"), ("instance", "127.0.0.1:1001")],
        10.0,
    );
    set(
        &series,
        &[("__name__", "inflight"), ("instance", "127.0.0.1:1002")],
        10.0,
    );
    // Another service's instance does not count.
    set(
        &series,
        &[("__name__", "inflight"), ("instance", "127.0.0.1:9999")],
        1000.0,
    );
    a.reconcile().await.unwrap();
    assert_eq!(replicas(&store), Some(4), "average 10 / target 5 × 2 ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_mode_records_without_scaling() {
    let (_dir, store, series, mut a) = setup(
        "{ metrics = [{ expr = \"sum(queue_depth)\", per_instance = 10 }], mode = \"recommend\" }",
    );
    set(&series, &[("__name__", "queue_depth")], 55.0);
    a.reconcile().await.unwrap();
    a.reconcile().await.unwrap();
    assert_eq!(replicas(&store), Some(2), "nothing changed");
    assert!(events(&store, EventKind::FleetScaled).is_empty());
    let recommended = events(&store, EventKind::AutoscaleRecommended);
    assert_eq!(
        recommended.len(),
        1,
        "once per new recommendation: {recommended:?}"
    );
    assert!(
        recommended[0].starts_with("worker would scale from 2 to 6"),
        "{recommended:?}"
    );
}

#[test]
fn autoscale_specs_are_checked() {
    let src = "[image.app]\nbase = \"empty\"\n\n[service.worker]\nimage = \"app\"\ncommand = [\"app\"]\nautoscale = { metrics = [{ expr = \"sum(\", per_instance = 0 }], mode = \"maybe\" }\n";
    let err = steward_spec::Spec::parse(
        "t.toml",
        src,
        std::path::Path::new("/"),
        &steward_spec::OsResolver,
    )
    .unwrap_err();
    let messages: Vec<String> = err.errors.iter().map(|e| e.message.clone()).collect();
    let all = messages.join("\n");
    assert!(all.contains("autoscale needs a range to move in"), "{all}");
    assert!(all.contains("is not a PromQL expression"), "{all}");
    assert!(all.contains("either `per_instance` or `value`"), "{all}");
    assert!(all.contains("`maybe` is not a mode"), "{all}");
}
