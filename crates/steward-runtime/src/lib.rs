//! The controller runtime: every controller in `serve` is a [`Controller`] —
//! a reconcile step that observes, decides (with a pure function of the
//! controller's own) and acts, and says when it wants to run next — and one
//! [`Supervisor`] runs them all the same way:
//!
//! - each step runs as a task of its own, so a panic ends that step only: it is
//!   counted, written to the log as `controller.panicked`, and the controller is
//!   built afresh from its factory (its state is re-read from the store) after
//!   a backoff of 1 s, doubling to 60 s;
//! - a step that returns an error is counted by stage and retried after the
//!   same backoff; the first of a streak is written as `controller.failed`;
//! - metrics `steward_controller_runs_total{controller}`,
//!   `steward_controller_errors_total{controller,stage}` and
//!   `steward_controller_duration_seconds{controller}` (a histogram of steps);
//! - [`Health`] says which controllers fail: three panics in a row make
//!   steward's own `/health` `fail` with the last error;
//! - a controller registered as leader-only steps only while the leadership
//!   watch says this steward leads (always, until high availability arrives);
//! - on shutdown each controller finishes its step and then [`Controller::stop`]s.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use steward_state::{
    Event, EventKind, EventLog, EventQuery, Lease, NewEvent, Severity, StateError, now_ms,
    off_thread,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a controller waits for before its next step.
pub type Wake = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One reconcile step in progress.
pub type Step<'a> = Pin<Box<dyn Future<Output = Result<Next, StepError>> + Send + 'a>>;

/// When a controller runs again.
pub enum Next {
    /// After this long.
    After(Duration),
    /// When this completes (a bell, a deadline, whichever first).
    When(Wake),
    /// Never: the controller has nothing more to do (it is stopped at shutdown).
    Finished,
}

impl Next {
    /// At this instant (now, when it has passed).
    pub fn at(when: Instant) -> Next {
        Next::After(when.saturating_duration_since(Instant::now()))
    }
}

/// Why a step failed: the stage (`observe`, `act`, `state`, …) labels the error
/// metric; the message goes to the log and to `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    /// Where in the step.
    pub stage: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// When to try again, for a step too costly to repeat on the supervisor's
    /// backoff (1 s doubling to 60 s).
    pub retry_after: Option<Duration>,
}

impl StepError {
    /// A failure at `stage`.
    pub fn new(stage: &'static str, message: impl std::fmt::Display) -> StepError {
        StepError {
            stage,
            message: message.to_string(),
            retry_after: None,
        }
    }

    /// The same failure, tried again after `wait` rather than the backoff.
    pub fn retry_after(mut self, wait: Duration) -> StepError {
        self.retry_after = Some(wait);
        self
    }
}

/// A controller: the spec's desired state against what it observes.
pub trait Controller: Send + 'static {
    /// One step: observe, decide, act. Returns when to run next.
    fn reconcile(&mut self) -> Step<'_>;

    /// Called once on shutdown, after the last step (e.g. the fleet parks its
    /// instances). Nothing by default.
    fn stop(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// A controller that could not be built (a secret that does not resolve,
/// say): every step fails with the reason, tried again each minute, so it
/// shows on `/health` and in the log like any failing controller.
pub struct Failing {
    stage: &'static str,
    message: String,
}

impl Failing {
    /// Fails at `stage` with `message`.
    pub fn new(stage: &'static str, message: impl std::fmt::Display) -> Failing {
        Failing {
            stage,
            message: message.to_string(),
        }
    }
}

impl Controller for Failing {
    fn reconcile(&mut self) -> Step<'_> {
        let e = StepError::new(self.stage, &self.message).retry_after(Duration::from_secs(60));
        Box::pin(async move { Err(e) })
    }
}

/// Builds a controller; called again after a panic.
pub type Factory = Box<dyn Fn(&CancellationToken) -> Box<dyn Controller> + Send + Sync>;

/// Prometheus metrics of the runtime.
#[derive(Clone)]
pub struct RuntimeMetrics {
    runs: Family<Vec<(String, String)>, Counter>,
    errors: Family<Vec<(String, String)>, Counter>,
    duration: Family<Vec<(String, String)>, Histogram>,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        RuntimeMetrics {
            runs: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_5, 4.0, 10))
            }),
        }
    }
}

impl RuntimeMetrics {
    /// Registers `steward_controller_{runs,errors}_total` and
    /// `steward_controller_duration_seconds`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "steward_controller_runs",
            "Reconcile steps by controller",
            self.runs.clone(),
        );
        r.register(
            "steward_controller_errors",
            "Failed reconcile steps by controller and stage (`panic` for a panic)",
            self.errors.clone(),
        );
        r.register(
            "steward_controller_duration_seconds",
            "How long reconcile steps take, by controller",
            self.duration.clone(),
        );
    }
}

/// How one controller is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerHealth {
    /// Steps that panicked in a row (0 after a step completes).
    pub panics_in_a_row: u32,
    /// Steps that failed in a row.
    pub errors_in_a_row: u32,
    /// The latest failure, kept until a step completes.
    pub last_error: Option<String>,
    /// When the latest step completed (Unix ms).
    pub last_ok_ms: Option<i64>,
}

/// Panics in a row after which a controller counts as failing.
pub const FAILING_AFTER_PANICS: u32 = 3;

/// The health of every supervised controller, shared with `/health`.
#[derive(Clone, Default)]
pub struct Health(Arc<RwLock<BTreeMap<String, ControllerHealth>>>);

impl Health {
    /// Every controller by name.
    pub fn snapshot(&self) -> BTreeMap<String, ControllerHealth> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Controllers that panic in a loop, with their last error.
    pub fn failing(&self) -> Vec<(String, ControllerHealth)> {
        self.snapshot()
            .into_iter()
            .filter(|(_, h)| h.panics_in_a_row >= FAILING_AFTER_PANICS)
            .collect()
    }

    /// Controllers whose latest step failed or panicked (not yet failing).
    pub fn troubled(&self) -> Vec<(String, ControllerHealth)> {
        self.snapshot()
            .into_iter()
            .filter(|(_, h)| {
                h.panics_in_a_row < FAILING_AFTER_PANICS
                    && (h.panics_in_a_row > 0 || h.errors_in_a_row > 0)
            })
            .collect()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut ControllerHealth)) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        f(map.entry(name.to_string()).or_default());
    }
}

struct Entry {
    name: String,
    leader_only: bool,
    make: Factory,
}

/// Runs controllers with the same isolation, restarts, metrics, events and
/// health.
pub struct Supervisor {
    store: Arc<dyn EventLog>,
    metrics: RuntimeMetrics,
    health: Health,
    leader: watch::Receiver<bool>,
    entries: Vec<Entry>,
    backoff_floor: Duration,
}

impl Supervisor {
    /// A supervisor writing its events to `store`; `leader` says whether this
    /// steward leads (leader-only controllers wait while it is `false`).
    pub fn new(store: Arc<dyn EventLog>, leader: watch::Receiver<bool>) -> Supervisor {
        Supervisor {
            store,
            metrics: RuntimeMetrics::default(),
            health: Health::default(),
            leader,
            entries: Vec::new(),
            backoff_floor: Duration::from_secs(1),
        }
    }

    /// A leadership watch for a steward that always leads (one machine).
    pub fn always_leader() -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(true);
        // The sender is kept alive for the life of the process.
        std::mem::forget(tx);
        rx
    }

    /// The first backoff after a failure (doubling to 60 s); 1 s by default.
    pub fn with_backoff(mut self, floor: Duration) -> Supervisor {
        self.backoff_floor = floor;
        self
    }

    /// Adds a controller that runs on every steward.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        make: impl Fn(&CancellationToken) -> Box<dyn Controller> + Send + Sync + 'static,
    ) {
        self.push(name.into(), false, Box::new(make));
    }

    /// Adds a controller that acts only while this steward leads (it changes
    /// instances, runs backups, alerts: things two stewards must not both do).
    pub fn add_leader_only(
        &mut self,
        name: impl Into<String>,
        make: impl Fn(&CancellationToken) -> Box<dyn Controller> + Send + Sync + 'static,
    ) {
        self.push(name.into(), true, Box::new(make));
    }

    fn push(&mut self, name: String, leader_only: bool, make: Factory) {
        self.health.update(&name, |_| {});
        self.entries.push(Entry {
            name,
            leader_only,
            make,
        });
    }

    /// The shared health view (for `/health`).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The metrics to register.
    pub fn metrics(&self) -> &RuntimeMetrics {
        &self.metrics
    }

    /// Runs every controller until `cancel`, then stops each.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        let shared = Arc::new(Shared {
            store: self.store,
            metrics: self.metrics,
            health: self.health,
            backoff_floor: self.backoff_floor,
        });
        for entry in self.entries {
            let (shared, cancel, leader) = (shared.clone(), cancel.clone(), self.leader.clone());
            tasks.spawn(async move { shared.supervise(entry, leader, cancel).await });
        }
        while tasks.join_next().await.is_some() {}
    }
}

struct Shared {
    store: Arc<dyn EventLog>,
    metrics: RuntimeMetrics,
    health: Health,
    backoff_floor: Duration,
}

impl Shared {
    async fn supervise(
        &self,
        entry: Entry,
        mut leader: watch::Receiver<bool>,
        cancel: CancellationToken,
    ) {
        let labels = vec![("controller".to_string(), entry.name.clone())];
        let mut current: Option<Box<dyn Controller>> = None;
        let mut failures = 0u32;
        let mut last_failure: Option<String> = None;
        while !cancel.is_cancelled() {
            if entry.leader_only && !*leader.borrow_and_update() {
                tokio::select! {
                    _ = leader.changed() => {}
                    _ = cancel.cancelled() => break,
                }
                continue;
            }
            let mut controller = current.take().unwrap_or_else(|| (entry.make)(&cancel));
            let started = Instant::now();
            let step = tokio::spawn(async move {
                let result = controller.reconcile().await;
                (controller, result)
            });
            let outcome = step.await;
            self.metrics.runs.get_or_create(&labels).inc();
            self.metrics
                .duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            let wait = match outcome {
                Ok((controller, Ok(next))) => {
                    current = Some(controller);
                    failures = 0;
                    last_failure = None;
                    self.health.update(&entry.name, |h| {
                        *h = ControllerHealth {
                            last_ok_ms: Some(now_ms()),
                            ..ControllerHealth::default()
                        }
                    });
                    next
                }
                Ok((controller, Err(e))) => {
                    current = Some(controller);
                    failures += 1;
                    self.failed(&entry.name, e.stage, &e.message, &mut last_failure)
                        .await;
                    self.health.update(&entry.name, |h| {
                        h.errors_in_a_row += 1;
                        h.last_error = Some(format!("{}: {}", e.stage, e.message));
                    });
                    Next::After(e.retry_after.unwrap_or_else(|| self.backoff(failures)))
                }
                Err(e) if e.is_panic() => {
                    failures += 1;
                    let message = panic_message(e.into_panic());
                    self.panicked(&entry.name, &message).await;
                    self.health.update(&entry.name, |h| {
                        h.panics_in_a_row += 1;
                        h.last_error = Some(format!("panicked: {message}"));
                    });
                    Next::After(self.backoff(failures))
                }
                Err(_) => break,
            };
            let slept = match wait {
                Next::After(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => true,
                        _ = cancel.cancelled() => false,
                    }
                }
                Next::When(wake) => {
                    tokio::select! {
                        _ = wake => true,
                        _ = cancel.cancelled() => false,
                    }
                }
                Next::Finished => {
                    cancel.cancelled().await;
                    false
                }
            };
            if !slept {
                break;
            }
        }
        if let Some(mut c) = current {
            c.stop().await;
        }
    }

    /// Writes an event on the blocking pool, never on the runtime's thread.
    async fn record(&self, e: NewEvent) {
        steward_state::record_off_thread(&self.store, e).await;
    }

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(6);
        (self.backoff_floor * factor).min(Duration::from_secs(60))
    }

    async fn failed(&self, name: &str, stage: &str, message: &str, last: &mut Option<String>) {
        let labels = vec![
            ("controller".to_string(), name.to_string()),
            ("stage".to_string(), stage.to_string()),
        ];
        self.metrics.errors.get_or_create(&labels).inc();
        tracing::warn!(
            controller = name,
            stage,
            error = message,
            "controller step failed"
        );
        // One event per streak of the same failure, not one per retry.
        if last.as_deref() != Some(message) {
            *last = Some(message.to_string());
            self.record(NewEvent::now(
                EventKind::ControllerFailed,
                name,
                Severity::Error,
                format!("{name} failed at {stage}: {message}"),
                serde_json::json!({"controller": name, "stage": stage, "error": message}),
            ))
            .await;
        }
    }

    async fn panicked(&self, name: &str, message: &str) {
        let labels = vec![
            ("controller".to_string(), name.to_string()),
            ("stage".to_string(), "panic".to_string()),
        ];
        self.metrics.errors.get_or_create(&labels).inc();
        tracing::error!(
            controller = name,
            error = message,
            "controller panicked; starting it again"
        );
        self.record(NewEvent::now(
            EventKind::ControllerPanicked,
            name,
            Severity::Error,
            format!("{name} panicked and was started again: {message}"),
            serde_json::json!({"controller": name, "error": message}),
        ))
        .await;
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Competes for a lease and says, through a watch, whether this steward
/// leads: the leadership a [`Supervisor`] gates its leader-only controllers
/// on when several stewards share one state database.
///
/// The lease is renewed every third of its time to live; a renewal that fails
/// (the database is unreachable, someone else took it after an expiry) ends
/// leadership at once, and a graceful stop gives the lease back so another
/// steward takes over without waiting for it to expire.
pub struct Elector {
    /// Where the lease lives.
    pub lease: Arc<dyn Lease>,
    /// The lease's name (`leader`).
    pub name: String,
    /// Who this steward is (e.g. `host:pid`).
    pub holder: String,
    /// How long the lease lasts without renewal.
    pub ttl: Duration,
}

impl Elector {
    /// Starts competing; the watch says whether this steward leads. The task
    /// ends (giving the lease back) when `cancel` fires.
    pub fn spawn(
        self,
        cancel: CancellationToken,
    ) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let ttl_ms = self.ttl.as_millis() as i64;
            loop {
                let (lease, name, holder) =
                    (self.lease.clone(), self.name.clone(), self.holder.clone());
                let held = tokio::task::spawn_blocking(move || {
                    lease.acquire(&name, &holder, ttl_ms, now_ms())
                })
                .await;
                let leads = match held {
                    Ok(Ok(h)) => h,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot renew the leader lease; not leading");
                        false
                    }
                    Err(_) => false,
                };
                tx.send_if_modified(|was| {
                    let changed = *was != leads;
                    if changed {
                        tracing::info!(leads, holder = %self.holder, "leadership changed");
                    }
                    *was = leads;
                    changed
                });
                tokio::select! {
                    _ = tokio::time::sleep(self.ttl / 3) => {}
                    _ = cancel.cancelled() => break,
                }
            }
            tx.send_replace(false);
            let (lease, name, holder) =
                (self.lease.clone(), self.name.clone(), self.holder.clone());
            let _ = tokio::task::spawn_blocking(move || lease.release(&name, &holder)).await;
        });
        (rx, task)
    }
}

/// Where a consumer with no stored position starts.
type StartAt = Arc<dyn Fn() -> Result<i64, StateError> + Send + Sync>;

/// Where a consumer of the event log stands, kept in the state database: the
/// one way controllers follow the log (alert channels, `auto_rebuild`, the
/// coming autoscaler).
///
/// [`next_batch`](LogCursor::next_batch) reads the consumer's kinds after its
/// position; the consumer marks what it finished with
/// [`handled`](LogCursor::handled) and stores it with
/// [`save`](LogCursor::save) — before its next side effect when a repeat
/// matters. [`wake`](LogCursor::wake) is what to wait for when the log has
/// nothing new: this process's bell, or a poll for other processes' writes.
pub struct LogCursor {
    store: Arc<dyn EventLog>,
    consumer: String,
    kinds: Vec<EventKind>,
    batch: usize,
    poll: Duration,
    bell: watch::Receiver<i64>,
    start: StartAt,
    after: Option<i64>,
    stored: i64,
}

impl LogCursor {
    /// A cursor named `consumer` over `kinds`. A consumer with no stored
    /// position starts at the end of the log (it is not owed the history from
    /// before it existed).
    pub fn new(
        store: Arc<dyn EventLog>,
        consumer: &str,
        kinds: Vec<EventKind>,
        poll: Duration,
    ) -> Self {
        let log = store.clone();
        LogCursor {
            bell: store.event_bell(),
            store,
            consumer: consumer.to_string(),
            kinds,
            batch: 256,
            poll,
            start: Arc::new(move || log.last_event_id()),
            after: None,
            stored: 0,
        }
    }

    /// Where a consumer with no stored position starts instead (called on
    /// the blocking pool).
    pub fn starting_at(
        mut self,
        start: impl Fn() -> Result<i64, StateError> + Send + Sync + 'static,
    ) -> Self {
        self.start = Arc::new(start);
        self
    }

    /// The next events after the position (empty: nothing new). The first
    /// call reads the stored position, or stores the start.
    pub async fn next_batch(&mut self) -> Result<Vec<Event>, StateError> {
        let after = match self.after {
            Some(a) => a,
            None => {
                let (consumer, start) = (self.consumer.clone(), self.start.clone());
                let a = off_thread(&self.store, move |s| match s.event_cursor(&consumer)? {
                    Some(a) => Ok(a),
                    None => {
                        let a = start()?;
                        s.set_event_cursor(&consumer, a)?;
                        Ok(a)
                    }
                })
                .await?;
                self.after = Some(a);
                self.stored = a;
                a
            }
        };
        self.bell.mark_unchanged();
        let q = EventQuery {
            after: Some(after),
            kinds: self.kinds.clone(),
            limit: self.batch,
            ..EventQuery::default()
        };
        off_thread(&self.store, move |s| s.events(&q)).await
    }

    /// The consumer is done with event `id` (in memory until [`save`](Self::save)).
    pub fn handled(&mut self, id: i64) {
        self.after = Some(self.after.map_or(id, |a| a.max(id)));
    }

    /// Stores the position when it moved.
    pub async fn save(&mut self) -> Result<(), StateError> {
        let Some(after) = self.after.filter(|a| *a > self.stored) else {
            return Ok(());
        };
        let consumer = self.consumer.clone();
        off_thread(&self.store, move |s| s.set_event_cursor(&consumer, after)).await?;
        self.stored = after;
        Ok(())
    }

    /// What to wait for when the log has nothing new.
    pub fn wake(&self) -> Wake {
        let (mut bell, poll) = (self.bell.clone(), self.poll);
        Box::pin(async move {
            tokio::select! {
                _ = bell.changed() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        })
    }
}
