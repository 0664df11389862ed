//! The health controller for `serve`: one task per check on its interval, a
//! writer thread that batches results into the state database, and a board of
//! current states that the API and the alerting controller read.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock, mpsc};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use steward_spec::{Check, Retention};
use steward_state::{
    CheckHistory, CheckStateRow, EventKind, Health, NewEvent, ResultRow, RetentionMs, Severity,
    Status, now_ms,
};
use tokio::sync::Semaphore;
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
    }
}

struct Record {
    result: ResultRow,
    state: CheckStateRow,
    transition: Option<Transition>,
}

/// A running health controller.
pub struct Monitor {
    /// Current states.
    pub board: Board,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<()>>,
    tx: Option<mpsc::Sender<Record>>,
}

/// Longest a steadily passing check's stored state may lag its latest result.
const STATE_REFRESH: Duration = Duration::from_secs(30);

/// Most probes in flight at once; beyond this runs queue (and show up as late).
const MAX_CONCURRENT_PROBES: usize = 1024;

impl Monitor {
    /// Restores states from the store and starts one task per check.
    pub fn start(
        checks: Vec<Arc<Check>>,
        prober: Prober,
        store: Arc<dyn CheckHistory>,
        retention: Retention,
        metrics: HealthMetrics,
        cancel: CancellationToken,
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
        let (tx, rx) = mpsc::channel::<Record>();
        let writer = {
            let store = store.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("steward-writer".into())
                .spawn(move || write_loop(rx, &*store, &metrics, retention))
                .expect("spawn writer thread")
        };
        let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
        let epoch = tokio::time::Instant::now();
        let tasks = checks
            .into_iter()
            .map(|check| {
                let ctx = TaskCtx {
                    prober: prober.clone(),
                    board: board.clone(),
                    tx: tx.clone(),
                    metrics: metrics.clone(),
                    limit: limit.clone(),
                    cancel: cancel.clone(),
                    epoch,
                };
                tokio::spawn(check_loop(check, ctx))
            })
            .collect();
        Ok(Monitor {
            board,
            tasks,
            writer: Some(writer),
            tx: Some(tx),
        })
    }

    /// Waits for every check task to stop (after cancellation) and flushes the writer.
    pub async fn join(mut self) {
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
    }
}

struct TaskCtx {
    prober: Prober,
    board: Board,
    tx: mpsc::Sender<Record>,
    metrics: HealthMetrics,
    limit: Arc<Semaphore>,
    cancel: CancellationToken,
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

fn write_loop(
    rx: mpsc::Receiver<Record>,
    store: &dyn CheckHistory,
    metrics: &HealthMetrics,
    retention: Retention,
) {
    let keep = RetentionMs {
        raw: retention.raw.as_millis_i64(),
        minute: retention.minute.as_millis_i64(),
        hour: retention.hour.as_millis_i64(),
        day: retention.day.as_millis_i64(),
        events: retention.events.as_millis_i64(),
    };
    let mut last_prune = Instant::now();
    let mut written: std::collections::HashMap<String, ((Health, u32, bool), Instant)> =
        Default::default();
    let mut pruned_once = false;
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(r) => Some(r),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch: Vec<Record> = first.into_iter().collect();
        // Gather what arrives in the next moment into the same transaction.
        // Sleeping, then draining, wakes this thread once per batch instead of
        // once per result.
        if !batch.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
            while let Ok(r) = rx.try_recv() {
                batch.push(r);
            }
        }
        if !batch.is_empty() {
            // The last state per check wins; results are all kept. A state is
            // written when it matters after a restart (health or failure count
            // changed) and otherwise at most every STATE_REFRESH, which spares
            // a write and a JSON encoding per steady passing run.
            let mut latest: BTreeMap<&str, &CheckStateRow> = BTreeMap::new();
            for r in &batch {
                latest.insert(&r.result.check, &r.state);
            }
            let now = Instant::now();
            let states: Vec<CheckStateRow> = latest
                .into_values()
                .filter(|st| {
                    let key = (
                        st.health,
                        st.consecutive_failures,
                        st.health == Health::Down && st.consecutive_successes > 0,
                    );
                    match written.get(&st.check) {
                        Some((k, at)) if *k == key && now.duration_since(*at) < STATE_REFRESH => {
                            false
                        }
                        _ => {
                            written.insert(st.check.clone(), (key, now));
                            true
                        }
                    }
                })
                .cloned()
                .collect();
            let results: Vec<ResultRow> = batch.iter().map(|r| r.result.clone()).collect();
            // Transitions go into the log with their results; alerting reads
            // them from there (the store rings its bell after the commit).
            let new_events: Vec<NewEvent> = batch
                .iter()
                .filter_map(|r| {
                    r.transition
                        .map(|t| transition_event(&r.result.check, t, &r.state))
                })
                .collect();
            match store.write_batch(&results, &states, &new_events) {
                Ok(_) => {
                    metrics.write_batches.inc();
                }
                Err(e) => {
                    metrics
                        .errors
                        .get_or_create(&vec![("stage".into(), "store".into())])
                        .inc();
                    tracing::error!(error = %e, results = results.len(), "cannot write check results");
                }
            }
        }
        if !pruned_once || last_prune.elapsed() > Duration::from_secs(600) {
            pruned_once = true;
            last_prune = Instant::now();
            match store.prune(now_ms(), keep) {
                Ok(n) if n > 0 => tracing::info!(rows = n, "pruned old history"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot prune history"),
            }
        }
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
