//! Health monitoring for `serve`, as three supervised controllers:
//!
//! - `health.checks` keeps one task per check running on its interval (a
//!   probe's panic is contained in its task and recorded as a failed run; a
//!   task that ends anyway is restarted by the next step and reported);
//! - `health.writer` batches results, the check states that changed and the
//!   transitions they caused into the state database, one transaction per
//!   batch, on the blocking pool; a batch that cannot be written is kept and
//!   tried again (the step fails, so it is counted and logged);
//! - `health.prune` applies the retention in slices, so the write lock is
//!   never held for long.
//!
//! A board of current states is shared with the API and alerting.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use steward_runtime::{Controller, Next, Step, StepError, Supervisor};
use steward_spec::{Check, Retention};
use steward_state::{
    CheckHistory, CheckStateRow, EventKind, Health, NewEvent, ResultRow, RetentionMs, Severity,
    Status, now_ms,
};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::machine::{Thresholds, Transition, advance, initial};
use crate::{Prober, judge};

/// Current state of every check, shared read-mostly.
pub type Board = Arc<RwLock<BTreeMap<String, CheckStateRow>>>;

type Labels = Vec<(String, String)>;

/// Prometheus metrics of the health controller.
#[derive(Default, Clone)]
pub struct HealthMetrics {
    up: Family<Labels, Gauge>,
    results: Family<Labels, Counter>,
    duration: Family<Labels, Gauge<f64, AtomicU64>>,
    runs: Counter,
    errors: Family<Labels, Counter>,
    late: Counter,
    write_batches: Counter,
    messages: Family<Labels, Gauge>,
    consumers: Family<Labels, Gauge>,
    cert_expiry: Family<Labels, Gauge>,
}

impl HealthMetrics {
    /// Registers every metric (names follow `steward_<controller>_...`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "steward_check_up",
            "1 when the check is up or degraded, 0 when down",
            self.up.clone(),
        );
        r.register(
            "steward_check_results",
            "Check results by status",
            self.results.clone(),
        );
        r.register(
            "steward_check_last_duration_seconds",
            "Latency of the latest run",
            self.duration.clone(),
        );
        r.register(
            "steward_health_runs",
            "Probe runs of the health controller",
            self.runs.clone(),
        );
        r.register(
            "steward_health_errors",
            "Health controller errors by stage",
            self.errors.clone(),
        );
        r.register(
            "steward_health_late_runs",
            "Runs that started more than half an interval after their schedule",
            self.late.clone(),
        );
        r.register(
            "steward_health_write_batches",
            "Result batches written to the state database",
            self.write_batches.clone(),
        );
        r.register(
            "steward_check_queue_messages",
            "Messages ready in the queue an amqp check looked at (its latest run)",
            self.messages.clone(),
        );
        r.register(
            "steward_check_queue_consumers",
            "Consumers of the queue an amqp check looked at (its latest run)",
            self.consumers.clone(),
        );
        r.register(
            "steward_check_certificate_expiry_seconds",
            "Time left on the peer certificate a TLS check saw (its latest run)",
            self.cert_expiry.clone(),
        );
    }
}

struct Record {
    result: ResultRow,
    state: CheckStateRow,
    transition: Option<Transition>,
}

/// Health monitoring, ready to be registered with the supervisor.
pub struct Monitor {
    /// Current states.
    pub board: Board,
    checks: Vec<Arc<Check>>,
    prober: Prober,
    store: Arc<dyn CheckHistory>,
    keep: RetentionMs,
    metrics: HealthMetrics,
    tx: mpsc::UnboundedSender<Record>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Record>>>,
    /// Rung by a check task after it sends a result.
    sent: Arc<Notify>,
}

/// Longest a steadily passing check's stored state may lag its latest result.
const STATE_REFRESH: Duration = Duration::from_secs(30);

/// Most probes in flight at once; beyond this runs queue (and show up as late).
const MAX_CONCURRENT_PROBES: usize = 1024;

/// Most results kept while the database refuses them; beyond this the oldest
/// raw results are dropped (states and transitions are always kept).
const MAX_PENDING_RESULTS: usize = 200_000;

/// How often retention is applied, and how many rows a slice deletes.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const PRUNE_SLICE: usize = 5_000;

impl Monitor {
    /// Restores states from the store (forgetting checks no longer in the
    /// spec); nothing runs until [`Monitor::register`]ed.
    pub fn new(
        checks: Vec<Arc<Check>>,
        prober: Prober,
        store: Arc<dyn CheckHistory>,
        retention: Retention,
        metrics: HealthMetrics,
    ) -> Result<Monitor, steward_state::StateError> {
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        store.forget_checks_except(&names)?;
        let mut saved = store.check_states()?;
        let now = now_ms();
        let board: Board = Arc::new(RwLock::new(
            checks
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        saved
                            .remove(&c.name)
                            .unwrap_or_else(|| initial(&c.name, now)),
                    )
                })
                .collect(),
        ));
        for (name, s) in board.read().unwrap_or_else(|e| e.into_inner()).iter() {
            metrics
                .up
                .get_or_create(&vec![("check".into(), name.clone())])
                .set(i64::from(s.health != Health::Down));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Monitor {
            board,
            checks,
            prober,
            store,
            keep: RetentionMs {
                raw: retention.raw.as_millis_i64(),
                minute: retention.minute.as_millis_i64(),
                hour: retention.hour.as_millis_i64(),
                day: retention.day.as_millis_i64(),
                events: retention.events.as_millis_i64(),
            },
            metrics,
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            sent: Arc::new(Notify::new()),
        })
    }

    /// Adds `health.checks`, `health.writer` and `health.prune` to the
    /// supervisor. They run on every steward (not only the leader).
    pub fn register(self, sup: &mut Supervisor) {
        let Monitor {
            board,
            checks,
            prober,
            store,
            keep,
            metrics,
            tx,
            rx,
            sent,
        } = self;
        // Shared across rebuilds: a rebuilt `health.checks` adopts the tasks
        // that are still running instead of starting a second set.
        let tasks: Arc<Mutex<HashMap<String, JoinHandle<()>>>> = Default::default();
        let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
        let epoch = tokio::time::Instant::now();
        {
            let (metrics, sent) = (metrics.clone(), sent.clone());
            sup.add("health.checks", move |cancel| {
                Box::new(Checks {
                    checks: checks.clone(),
                    tasks: tasks.clone(),
                    ctx: TaskCtx {
                        prober: prober.clone(),
                        board: board.clone(),
                        tx: tx.clone(),
                        metrics: metrics.clone(),
                        limit: limit.clone(),
                        cancel: cancel.clone(),
                        sent: sent.clone(),
                        epoch,
                    },
                })
            });
        }
        {
            let (store, metrics) = (store.clone(), metrics.clone());
            sup.add("health.writer", move |_| {
                Box::new(Writer {
                    rx: rx.clone(),
                    sent: sent.clone(),
                    store: store.clone(),
                    metrics: metrics.clone(),
                    written: HashMap::new(),
                    pending: None,
                })
            });
        }
        sup.add("health.prune", move |_| {
            Box::new(Prune {
                store: store.clone(),
                keep,
            })
        });
    }
}

/// `health.checks`: one running task per check.
struct Checks {
    checks: Vec<Arc<Check>>,
    tasks: Arc<Mutex<HashMap<String, JoinHandle<()>>>>,
    ctx: TaskCtx,
}

impl Controller for Checks {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let mut ended = Vec::new();
            {
                let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
                for check in &self.checks {
                    let alive = tasks.get(&check.name).is_some_and(|t| !t.is_finished());
                    if alive {
                        continue;
                    }
                    if let Some(dead) = tasks.remove(&check.name) {
                        ended.push((check.name.clone(), dead));
                    }
                    if self.ctx.cancel.is_cancelled() {
                        continue;
                    }
                    let ctx = self.ctx.clone();
                    tasks.insert(
                        check.name.clone(),
                        tokio::spawn(check_loop(check.clone(), ctx)),
                    );
                }
            }
            if ended.is_empty() {
                return Ok(Next::After(Duration::from_secs(1)));
            }
            let mut why = Vec::new();
            for (name, task) in ended {
                let how = match task.await {
                    Err(e) if e.is_panic() => "panicked",
                    _ => "ended",
                };
                why.push(format!(
                    "the task of check `{name}` {how} and was restarted"
                ));
            }
            Err(StepError::new("probe", why.join("; ")))
        })
    }

    fn stop(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let tasks: Vec<JoinHandle<()>> = self
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .map(|(_, t)| t)
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        })
    }
}

#[derive(Clone)]
struct TaskCtx {
    prober: Prober,
    board: Board,
    tx: mpsc::UnboundedSender<Record>,
    metrics: HealthMetrics,
    limit: Arc<Semaphore>,
    cancel: CancellationToken,
    sent: Arc<Notify>,
    /// One start instant for all checks, so slot-aligned schedules stay aligned.
    epoch: tokio::time::Instant,
}

/// Spreads first runs over the interval (up to 5 s) so thousands of checks do
/// not fire at once, in 50 ms slots: checks sharing a slot wake together,
/// which saves a thread wake-up per probe.
fn initial_delay(name: &str, interval: Duration) -> Duration {
    const SLOT_MS: u64 = 50;
    let h = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    let span = (interval.as_millis() as u64).min(5_000);
    let slots = (span / SLOT_MS).max(1);
    Duration::from_millis((h % slots) * SLOT_MS)
}

async fn check_loop(check: Arc<Check>, ctx: TaskCtx) {
    let interval = check.interval.0;
    // Label sets are built once: per-run allocations add up at thousands of checks.
    let labels: Labels = vec![("check".into(), check.name.clone())];
    let status_labels: [Labels; 3] = [Status::Pass, Status::Warn, Status::Fail].map(|s| {
        vec![
            ("check".into(), check.name.clone()),
            ("status".into(), s.as_str().into()),
        ]
    });
    let th = Thresholds {
        failure: check.failure_threshold,
        success: check.success_threshold,
    };
    let mut next = ctx.epoch + initial_delay(&check.name, interval);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = ctx.cancel.cancelled() => return,
        }
        let Ok(_permit) = ctx.limit.acquire().await else {
            return;
        };
        let started = tokio::time::Instant::now();
        if started.saturating_duration_since(next) > interval / 2 {
            ctx.metrics.late.inc();
        }
        let ts = now_ms();
        // A panic in a probe is contained here and recorded as a failed run.
        // Boxed: an idle check task then holds only a pointer, not the largest
        // probe's state machine (this is most of the memory at 10,000 checks).
        let outcome = std::panic::AssertUnwindSafe(Box::pin(async {
            let out = ctx.prober.run(&check).await;
            let j = judge(&check, &out);
            (out.elapsed, j)
        }))
        .catch_unwind()
        .await;
        let (elapsed, j) = match outcome {
            Ok(v) => v,
            Err(_) => {
                ctx.metrics
                    .errors
                    .get_or_create(&vec![("stage".into(), "probe".into())])
                    .inc();
                tracing::error!(check = %check.name, "probe panicked");
                (
                    started.elapsed(),
                    crate::Judgement {
                        status: Status::Fail,
                        error: Some("internal error: the probe panicked".into()),
                        observed: serde_json::Value::Null,
                    },
                )
            }
        };
        ctx.metrics.runs.inc();
        let idx = match j.status {
            Status::Pass => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        };
        ctx.metrics.results.get_or_create(&status_labels[idx]).inc();
        ctx.metrics
            .duration
            .get_or_create(&labels)
            .set(elapsed.as_secs_f64());
        // What a check observed that is worth a series of its own (a queue's
        // depth to scale workers on, a certificate's time left).
        for (key, family) in [
            ("messages", &ctx.metrics.messages),
            ("consumers", &ctx.metrics.consumers),
            ("certificate_expires_in_s", &ctx.metrics.cert_expiry),
        ] {
            if let Some(v) = j.observed.get(key).and_then(|v| v.as_i64()) {
                family.get_or_create(&labels).set(v);
            }
        }
        let result = ResultRow {
            check: check.name.clone(),
            ts,
            status: j.status,
            duration_us: elapsed.as_micros() as i64,
            error: j.error,
            observed: serde_json::value::RawValue::from_string(j.observed.to_string()).ok(),
        };
        let (state, transition) = {
            let mut board = ctx.board.write().unwrap_or_else(|e| e.into_inner());
            let prev = board
                .get(&check.name)
                .cloned()
                .unwrap_or_else(|| initial(&check.name, ts));
            let (state, transition) = advance(&prev, result.clone(), th);
            board.insert(check.name.clone(), state.clone());
            (state, transition)
        };
        ctx.metrics
            .up
            .get_or_create(&labels)
            .set(i64::from(state.health != Health::Down));
        if let Some(t) = transition {
            tracing::info!(check = %check.name, from = t.from.as_str(), to = t.to.as_str(), error = ?result.error, "health changed");
        }
        if ctx
            .tx
            .send(Record {
                result,
                state,
                transition,
            })
            .is_err()
        {
            return;
        }
        ctx.sent.notify_one();
        next += interval;
        let now = tokio::time::Instant::now();
        if next < now {
            // Fell behind (machine suspended, overloaded): skip missed runs.
            next = now + interval;
        }
    }
}

fn transition_event(check: &str, t: Transition, state: &CheckStateRow) -> NewEvent {
    let error = state.last.as_ref().and_then(|l| l.error.clone());
    let severity = match t.to {
        Health::Down => Severity::Error,
        Health::Degraded => Severity::Warning,
        _ => Severity::Info,
    };
    let message = match (&error, t.to) {
        (Some(e), Health::Down | Health::Degraded) => format!("{check} is {}: {e}", t.to.as_str()),
        _ => format!("{check} is {}", t.to.as_str()),
    };
    NewEvent {
        ts: state.since,
        kind: EventKind::check(t.to),
        subject: check.to_string(),
        severity,
        message,
        data: serde_json::json!({"from": t.from.as_str(), "to": t.to.as_str(), "error": error}),
    }
}

/// A batch on its way to the database.
#[derive(Default)]
struct Batch {
    results: Vec<ResultRow>,
    states: BTreeMap<String, CheckStateRow>,
    events: Vec<NewEvent>,
}

/// `health.writer`: results into the database, a batch per transaction.
struct Writer {
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Record>>>,
    sent: Arc<Notify>,
    store: Arc<dyn CheckHistory>,
    metrics: HealthMetrics,
    /// What was last written per check, and when (see [`STATE_REFRESH`]).
    written: HashMap<String, ((Health, u32, bool), Instant)>,
    /// A batch the database refused, tried again first.
    pending: Option<Batch>,
}

impl Writer {
    /// Adds a record to the batch. The last state per check wins; results
    /// are all kept. A state is written when it matters after a restart
    /// (health or failure count changed) and otherwise at most every
    /// STATE_REFRESH, which spares a write and a JSON encoding per steady
    /// passing run. Transitions go into the log with their results;
    /// alerting reads them from there.
    fn add(&mut self, batch: &mut Batch, r: Record) {
        if let Some(t) = r.transition {
            batch
                .events
                .push(transition_event(&r.result.check, t, &r.state));
        }
        let st = r.state;
        let key = (
            st.health,
            st.consecutive_failures,
            st.health == Health::Down && st.consecutive_successes > 0,
        );
        let now = Instant::now();
        let due = match self.written.get(&st.check) {
            Some((k, at)) => *k != key || now.duration_since(*at) >= STATE_REFRESH,
            None => true,
        };
        if due || batch.states.contains_key(&st.check) {
            self.written.insert(st.check.clone(), (key, now));
            batch.states.insert(st.check.clone(), st);
        }
        batch.results.push(r.result);
    }

    /// Everything waiting in the channel now, added to `batch`.
    fn drain(&mut self, rx: &mut mpsc::UnboundedReceiver<Record>, batch: &mut Batch) {
        while let Ok(r) = rx.try_recv() {
            self.add(batch, r);
        }
        if batch.results.len() > MAX_PENDING_RESULTS {
            let drop = batch.results.len() - MAX_PENDING_RESULTS;
            batch.results.drain(..drop);
            self.metrics
                .errors
                .get_or_create(&vec![("stage".into(), "dropped".into())])
                .inc();
            tracing::error!(
                results = drop,
                "the state database refuses writes: oldest check results dropped"
            );
        }
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StepError> {
        let batch = Arc::new(batch);
        let b = batch.clone();
        let states: Vec<CheckStateRow> = b.states.values().cloned().collect();
        let written = steward_state::off_thread(&self.store, move |s| {
            s.write_batch(&b.results, &states, &b.events)
        })
        .await;
        match written {
            Ok(_) => {
                self.metrics.write_batches.inc();
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .errors
                    .get_or_create(&vec![("stage".into(), "store".into())])
                    .inc();
                let n = batch.results.len();
                self.pending = Some(Arc::try_unwrap(batch).unwrap_or_default());
                Err(StepError::new(
                    "state",
                    format!("cannot write {n} check results (kept, tried again): {e}"),
                ))
            }
        }
    }
}

impl Controller for Writer {
    /// Writes what has arrived (and what was refused last time), then waits
    /// for the next result plus 100 ms, so what arrives in that moment goes
    /// into the same transaction: one wake-up and one commit per batch, not
    /// per result.
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let mut batch = self.pending.take().unwrap_or_default();
            {
                let rx = self.rx.clone();
                let mut rx = rx.lock().await;
                self.drain(&mut rx, &mut batch);
            }
            if !batch.results.is_empty() || !batch.events.is_empty() {
                self.write(batch).await?;
            }
            let sent = self.sent.clone();
            Ok(Next::When(Box::pin(async move {
                sent.notified().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            })))
        })
    }

    /// Writes what the check tasks sent before they stopped (they end with
    /// the same cancellation; a probe in flight may take up to its timeout).
    fn stop(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let rx = self.rx.clone();
            let mut rx = rx.lock().await;
            let mut batch = self.pending.take().unwrap_or_default();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while let Ok(Some(r)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                self.add(&mut batch, r);
            }
            drop(rx);
            if (!batch.results.is_empty() || !batch.events.is_empty())
                && let Err(e) = self.write(batch).await
            {
                tracing::error!(error = %e.message, "check results lost at shutdown");
            }
        })
    }
}

/// `health.prune`: the retention, applied every ten minutes in slices.
struct Prune {
    store: Arc<dyn CheckHistory>,
    keep: RetentionMs,
}

impl Controller for Prune {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let (now, keep) = (now_ms(), self.keep);
            let mut total = 0;
            loop {
                let n = steward_state::off_thread(&self.store, move |s| {
                    s.prune_slice(now, keep, PRUNE_SLICE)
                })
                .await
                .map_err(|e| StepError::new("state", format!("cannot prune history: {e}")))?;
                if n == 0 {
                    break;
                }
                total += n;
            }
            if total > 0 {
                tracing::info!(rows = total, "pruned old history");
            }
            Ok(Next::After(PRUNE_EVERY))
        })
    }
}

/// Runs each check once, concurrently, and judges it (for `steward check`).
pub async fn run_once(
    checks: &[Arc<Check>],
    prober: &Prober,
) -> Vec<(String, crate::Judgement, Duration)> {
    let runs = checks.iter().map(|c| {
        let p = prober.clone();
        let c = c.clone();
        async move {
            let name = c.name.clone();
            let handle = tokio::spawn(async move {
                let out = p.run(&c).await;
                (judge(&c, &out), out.elapsed)
            });
            match handle.await {
                Ok((j, d)) => (name, j, d),
                Err(_) => (
                    name,
                    crate::Judgement {
                        status: Status::Fail,
                        error: Some("internal error: probe task failed".into()),
                        observed: serde_json::Value::Null,
                    },
                    Duration::ZERO,
                ),
            }
        }
    });
    futures_util::future::join_all(runs).await
}
