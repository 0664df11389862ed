//! The supervisor over real tasks and a real state database.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use steward_runtime::{Controller, Next, Step, StepError, Supervisor};
use steward_state::{EventKind, EventLog, EventQuery, Store};
use tokio_util::sync::CancellationToken;

/// A controller that behaves as its script says, step by step.
struct Scripted {
    steps: Arc<AtomicUsize>,
    stopped: Arc<AtomicUsize>,
    script: fn(usize) -> Result<(), StepError>,
}

impl Controller for Scripted {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let n = self.steps.fetch_add(1, Ordering::SeqCst);
            (self.script)(n)?;
            Ok(Next::After(Duration::from_millis(5)))
        })
    }

    fn stop(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let stopped = self.stopped.clone();
        Box::pin(async move {
            stopped.fetch_add(1, Ordering::SeqCst);
        })
    }
}

struct Probe {
    steps: Arc<AtomicUsize>,
    built: Arc<AtomicUsize>,
    stopped: Arc<AtomicUsize>,
}

fn add(sup: &mut Supervisor, name: &str, script: fn(usize) -> Result<(), StepError>) -> Probe {
    let p = Probe {
        steps: Arc::default(),
        built: Arc::default(),
        stopped: Arc::default(),
    };
    let (steps, built, stopped) = (p.steps.clone(), p.built.clone(), p.stopped.clone());
    sup.add(name, move |_| {
        built.fetch_add(1, Ordering::SeqCst);
        Box::new(Scripted {
            steps: steps.clone(),
            stopped: stopped.clone(),
            script,
        })
    });
    p
}

/// A leader-only controller that always succeeds; returns its step count.
fn add_leader_only(sup: &mut Supervisor, name: &str) -> Arc<AtomicUsize> {
    let steps = Arc::new(AtomicUsize::new(0));
    let s2 = steps.clone();
    sup.add_leader_only(name, move |_| {
        Box::new(Scripted {
            steps: s2.clone(),
            stopped: Arc::default(),
            script: |_| Ok(()),
        })
    });
    steps
}

fn kinds(store: &Store, subject: &str) -> Vec<EventKind> {
    store
        .events(&EventQuery {
            after: Some(0),
            subject: Some(subject.into()),
            limit: 1000,
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind)
        .collect()
}

async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_contained_restarted_and_a_panic_loop_is_failing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let mut sup = Supervisor::new(store.clone(), Supervisor::always_leader())
        .with_backoff(Duration::from_millis(10));
    let looping = add(&mut sup, "looping", |_| panic!("the disk is on fire"));
    let once = add(&mut sup, "once", |n| {
        assert!(n != 0, "first step only");
        Ok(())
    });
    let steady = add(&mut sup, "steady", |_| Ok(()));
    let health = sup.health();
    let mut registry = prometheus_client::registry::Registry::default();
    sup.metrics().register(&mut registry);
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sup.run(cancel.clone()));

    until("three panics in a row", || {
        looping.steps.load(Ordering::SeqCst) >= 3
    })
    .await;
    until("the second controller to run again", || {
        once.steps.load(Ordering::SeqCst) >= 3
    })
    .await;
    // The third panic is counted once its step has been dealt with.
    until("the panic loop to count as failing", || {
        !health.failing().is_empty()
    })
    .await;
    let failing = health.failing();
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(failing[0].0, "looping");
    assert!(
        failing[0]
            .1
            .last_error
            .as_deref()
            .unwrap()
            .contains("the disk is on fire")
    );
    assert!(
        looping.built.load(Ordering::SeqCst) >= 3,
        "built afresh after every panic"
    );
    assert_eq!(
        once.built.load(Ordering::SeqCst),
        2,
        "one panic, one rebuild"
    );
    let snap = health.snapshot();
    assert_eq!(
        snap["once"].panics_in_a_row, 0,
        "a completed step clears it"
    );
    assert!(snap["steady"].last_ok_ms.is_some());
    assert!(
        steady.steps.load(Ordering::SeqCst) > 3,
        "others never stopped"
    );

    cancel.cancel();
    run.await.unwrap();
    assert_eq!(
        steady.stopped.load(Ordering::SeqCst),
        1,
        "stopped once at shutdown"
    );
    let looping_events = kinds(&store, "looping");
    assert!(
        looping_events.len() >= 3
            && looping_events
                .iter()
                .all(|k| *k == EventKind::ControllerPanicked),
        "{looping_events:?}"
    );
    assert_eq!(kinds(&store, "once"), [EventKind::ControllerPanicked]);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"steward_controller_errors_total{controller="once",stage="panic"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"steward_controller_duration_seconds_count{controller="steady"}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_steps_are_retried_and_logged_once_per_streak() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let mut sup = Supervisor::new(store.clone(), Supervisor::always_leader())
        .with_backoff(Duration::from_millis(5));
    let flaky = add(&mut sup, "flaky", |n| match n {
        0..=3 => Err(StepError::new("observe", "database is locked")),
        4 => Err(StepError::new("act", "permission denied")),
        _ => Ok(()),
    });
    let health = sup.health();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sup.run(cancel.clone()));
    until("recovery", || flaky.steps.load(Ordering::SeqCst) >= 7).await;
    cancel.cancel();
    run.await.unwrap();
    assert_eq!(
        kinds(&store, "flaky"),
        [EventKind::ControllerFailed, EventKind::ControllerFailed],
        "one event per different failure, none per retry"
    );
    assert_eq!(
        flaky.built.load(Ordering::SeqCst),
        1,
        "an error is not a panic: no rebuild"
    );
    assert!(health.failing().is_empty() && health.troubled().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_only_controllers_wait_for_leadership() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let (lead, leader) = tokio::sync::watch::channel(false);
    let mut sup = Supervisor::new(store, leader);
    let steps = add_leader_only(&mut sup, "backups");
    let everywhere = add(&mut sup, "monitor", |_| Ok(()));
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sup.run(cancel.clone()));
    until("the unrestricted controller to run", || {
        everywhere.steps.load(Ordering::SeqCst) >= 5
    })
    .await;
    assert_eq!(steps.load(Ordering::SeqCst), 0, "not the leader: no step");
    lead.send(true).unwrap();
    until("the leader-only controller to run", || {
        steps.load(Ordering::SeqCst) >= 1
    })
    .await;
    cancel.cancel();
    run.await.unwrap();
}

/// Two stewards on one state database: exactly one runs the leader-only
/// controllers; when the leader stops, the other takes over; a leader that
/// dies without giving the lease back is replaced once the lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_stewards_leads_and_the_other_takes_over() {
    use steward_runtime::Elector;
    let dir = tempfile::tempdir().unwrap();
    // Two handles on one database, as two processes would have.
    let a_store = Arc::new(Store::open(dir.path()).unwrap());
    let b_store = Arc::new(Store::open(dir.path()).unwrap());
    let ttl = Duration::from_millis(600);
    let steward = |store: Arc<Store>, holder: &str, cancel: &CancellationToken| {
        let (leader, elector) = Elector {
            lease: store.clone(),
            name: "leader".into(),
            holder: holder.into(),
            ttl,
        }
        .spawn(cancel.clone());
        let mut sup = Supervisor::new(store, leader.clone());
        let steps = add_leader_only(&mut sup, "backups");
        (
            tokio::spawn(sup.run(cancel.clone())),
            steps,
            leader,
            elector,
        )
    };
    let (a_cancel, b_cancel) = (CancellationToken::new(), CancellationToken::new());
    let (a_run, a_steps, a_leads, _a_elector) = steward(a_store.clone(), "a", &a_cancel);
    until("a to lead", || *a_leads.borrow()).await;
    let (b_run, b_steps, b_leads, b_elector) = steward(b_store.clone(), "b", &b_cancel);
    until("a to run its controller", || {
        a_steps.load(Ordering::SeqCst) > 3
    })
    .await;
    tokio::time::sleep(ttl * 2).await;
    assert!(!*b_leads.borrow(), "b does not lead while a renews");
    assert_eq!(
        b_steps.load(Ordering::SeqCst),
        0,
        "b's leader-only controller waits"
    );

    // a stops gracefully: it gives the lease back and b takes over.
    a_cancel.cancel();
    a_run.await.unwrap();
    until("b to lead", || *b_leads.borrow()).await;
    until("b to run its controller", || {
        b_steps.load(Ordering::SeqCst) > 0
    })
    .await;

    // b dies without giving the lease back: its elector stops renewing and
    // never releases. A new steward leads only once the lease has expired.
    b_elector.abort();
    b_run.abort();
    let held_until = steward_state::Lease::holder(&*a_store, "leader", steward_state::now_ms())
        .unwrap()
        .expect("b's lease outlives b")
        .expires_ms;
    let c_cancel = CancellationToken::new();
    let (c_run, c_steps, c_leads, _c_elector) = steward(a_store.clone(), "c", &c_cancel);
    until("c to lead after the expiry", || *c_leads.borrow()).await;
    assert!(
        steward_state::now_ms() >= held_until,
        "not before b's lease ran out"
    );
    until("c to run its controller", || {
        c_steps.load(Ordering::SeqCst) > 0
    })
    .await;
    c_cancel.cancel();
    c_run.await.unwrap();
}
