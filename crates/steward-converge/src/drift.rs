//! The converge controller inside `serve`: plans each set with a `drift_check`
//! interval, records drift as events and metrics, and applies the set when
//! `auto_correct` is on.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use steward_runtime::{Controller, Next, Step};
use steward_spec::{ConvergeSet, Resolver};

use crate::{Converger, RunLock, Status, Target};
use steward_state::{ConvergeJournal, EventKind, EventLog, NewEvent, Severity};

type Labels = Vec<(String, String)>;

/// Prometheus metrics of the converge controller.
#[derive(Default, Clone)]
pub struct ConvergeMetrics {
    runs: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    drift: Family<Labels, Gauge>,
    duration: Family<Labels, Gauge<f64, AtomicU64>>,
}

impl ConvergeMetrics {
    /// Registers every metric (names follow `steward_<controller>_...`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "steward_converge_runs",
            "Converge runs by set and mode (plan, apply)",
            self.runs.clone(),
        );
        r.register(
            "steward_converge_errors",
            "Converge errors by set and stage",
            self.errors.clone(),
        );
        r.register(
            "steward_converge_drift_resources",
            "Resources of a set that differ from the spec at the latest drift check",
            self.drift.clone(),
        );
        r.register(
            "steward_converge_last_duration_seconds",
            "Duration of the latest run by set and mode",
            self.duration.clone(),
        );
    }
}

/// What a drift check needs of the state database: converge's journal (what
/// is owed and managed) and the event log it reports drift to.
pub trait DriftStore: ConvergeJournal + EventLog {}

impl<T: ConvergeJournal + EventLog + ?Sized> DriftStore for T {}

/// Everything one set's drift loop needs.
pub struct DriftCheck {
    /// The set; must have `drift_check`.
    pub set: ConvergeSet,
    /// State database (journal, events).
    pub store: Arc<dyn DriftStore>,
    /// State directory (the apply lock lives there).
    pub state_dir: std::path::PathBuf,
    /// Secret resolution.
    pub resolver: Arc<dyn Resolver>,
    /// Metrics.
    pub metrics: ConvergeMetrics,
}

/// A [`DriftCheck`] as a supervised controller: one plan (and correction)
/// per step, every `drift_check` interval (at least a second).
pub struct DriftController {
    check: Arc<DriftCheck>,
    previous: Option<usize>,
}

impl DriftController {
    /// The controller for one set (which must have `drift_check`).
    pub fn new(check: Arc<DriftCheck>) -> DriftController {
        DriftController {
            check,
            previous: None,
        }
    }
}

impl Controller for DriftController {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let every = self
                .check
                .set
                .drift_check
                .map_or(Duration::from_secs(60), |d| d.0)
                .max(Duration::from_secs(1));
            let (check, previous) = (self.check.clone(), self.previous);
            let n = tokio::task::spawn_blocking(move || check.once(previous))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            self.previous = n.or(self.previous);
            Ok(Next::After(every))
        })
    }
}

impl DriftCheck {
    /// One drift check (and correction). Returns the drift count, or None on error.
    fn once(&self, previous: Option<usize>) -> Option<usize> {
        let set = &self.set.name;
        let labels = |mode: &str| {
            vec![
                ("set".to_string(), set.clone()),
                ("mode".to_string(), mode.to_string()),
            ]
        };
        let stage = |s: &str| {
            vec![
                ("set".to_string(), set.clone()),
                ("stage".to_string(), s.to_string()),
            ]
        };
        let started = Instant::now();
        let conv = match Converger::new(
            &self.set,
            Target::host(),
            self.resolver.as_ref(),
            Some(&*self.store as &dyn ConvergeJournal),
        ) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.errors.get_or_create(&stage("plan")).inc();
                tracing::warn!(set, error = %e, "drift check failed");
                return None;
            }
        };
        let plan = match conv.plan() {
            Ok(p) => p,
            Err(e) => {
                self.metrics.errors.get_or_create(&stage("plan")).inc();
                tracing::warn!(set, error = %e, "drift check failed");
                return None;
            }
        };
        self.metrics.runs.get_or_create(&labels("plan")).inc();
        self.metrics
            .duration
            .get_or_create(&labels("plan"))
            .set(started.elapsed().as_secs_f64());
        if !plan.errors.is_empty() {
            self.metrics.errors.get_or_create(&stage("observe")).inc();
        }
        let drift = plan.changes.len() + plan.errors.len();
        self.metrics
            .drift
            .get_or_create(&vec![("set".to_string(), set.clone())])
            .set(drift as i64);
        let ids: Vec<&str> = plan
            .changes
            .iter()
            .map(|c| c.id.as_str())
            .chain(plan.errors.iter().map(|e| e.id.as_str()))
            .collect();
        if drift > 0 && previous != Some(drift) {
            self.store.record(&NewEvent::now(
                EventKind::ConvergeDrift,
                set,
                Severity::Warning,
                format!(
                    "{drift} resource(s) differ from the spec: {}",
                    ids.join(", ")
                ),
                serde_json::to_value(&plan).unwrap_or_default(),
            ));
        } else if drift == 0 && previous.is_some_and(|p| p > 0) {
            self.store.record(&NewEvent::now(
                EventKind::ConvergeConverged,
                set,
                Severity::Info,
                "no drift: the host matches the spec again".into(),
                serde_json::json!({}),
            ));
        }
        if drift == 0 || !self.set.auto_correct || plan.changes.is_empty() {
            return Some(drift);
        }
        let lock = match RunLock::acquire(&self.state_dir) {
            Ok(l) => l,
            Err(e) => {
                tracing::info!(set, error = %e, "auto-correct postponed");
                return Some(drift);
            }
        };
        let started = Instant::now();
        match conv.apply(&lock, &mut |_| {}) {
            Ok(report) => {
                self.metrics.runs.get_or_create(&labels("apply")).inc();
                self.metrics
                    .duration
                    .get_or_create(&labels("apply"))
                    .set(started.elapsed().as_secs_f64());
                let failed = report.count(Status::Failed) + report.count(Status::Skipped);
                if failed > 0 {
                    self.metrics.errors.get_or_create(&stage("apply")).inc();
                }
                self.store.record(&NewEvent::now(
                    if failed > 0 {
                        EventKind::ConvergeFailed
                    } else {
                        EventKind::ConvergeCorrected
                    },
                    set,
                    if failed > 0 {
                        Severity::Error
                    } else {
                        Severity::Info
                    },
                    format!(
                        "auto-correct: {} changed, {failed} failed or skipped",
                        report.count(Status::Changed)
                    ),
                    serde_json::to_value(&report).unwrap_or_default(),
                ));
                // The next tick's plan sees the corrected state (and says so).
                Some(drift)
            }
            Err(e) => {
                self.metrics.errors.get_or_create(&stage("apply")).inc();
                tracing::warn!(set, error = %e, "auto-correct failed");
                Some(drift)
            }
        }
    }
}
