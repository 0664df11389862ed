//! The backup controller inside `serve`: scheduled runs with retention after each,
//! scheduled restore drills, overdue detection, events, metrics and alerts.
//!
//! Every run happens on a blocking thread (rustic is synchronous); a failing or
//! panicking run is recorded and never stops the other backups or controllers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use steward_runtime::{Controller, Next, Step, Supervisor};
use steward_spec::{Backup, Resolver, Spec};
use steward_state::{EventKind, EventLog, Health, NewEvent, Severity, now_ms};

type Labels = Vec<(String, String)>;

/// Prometheus metrics of the backup controller.
#[derive(Default, Clone)]
pub struct BackupMetrics {
    runs: Family<Labels, Counter>,
    last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    duration: Family<Labels, Gauge<f64, AtomicU64>>,
    added: Family<Labels, Gauge>,
    unreadable: Family<Labels, Gauge>,
    snapshots: Family<Labels, Gauge>,
    drills: Family<Labels, Counter>,
    drill_success: Family<Labels, Gauge<f64, AtomicU64>>,
    drill_duration: Family<Labels, Gauge<f64, AtomicU64>>,
    overdue: Family<Labels, Gauge>,
}

impl BackupMetrics {
    /// Registers every metric (names follow `steward_<controller>_...`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "steward_backup_runs",
            "Backup runs by backup and outcome",
            self.runs.clone(),
        );
        r.register(
            "steward_backup_last_success_timestamp_seconds",
            "When the latest successful run finished (Unix seconds)",
            self.last_success.clone(),
        );
        r.register(
            "steward_backup_last_duration_seconds",
            "Duration of the latest run",
            self.duration.clone(),
        );
        r.register(
            "steward_backup_last_added_bytes",
            "Bytes the latest run added to the repository",
            self.added.clone(),
        );
        r.register(
            "steward_backup_last_unreadable_files",
            "Files and folders the latest run could not read (its snapshot is partial)",
            self.unreadable.clone(),
        );
        r.register(
            "steward_backup_snapshots",
            "Snapshots kept after retention",
            self.snapshots.clone(),
        );
        r.register(
            "steward_backup_drills",
            "Restore drills by backup and outcome",
            self.drills.clone(),
        );
        r.register(
            "steward_backup_drill_last_success_timestamp_seconds",
            "When the latest successful restore drill finished (Unix seconds)",
            self.drill_success.clone(),
        );
        r.register(
            "steward_backup_drill_last_duration_seconds",
            "Restore plus verification time of the latest drill (the measured restore time)",
            self.drill_duration.clone(),
        );
        r.register(
            "steward_backup_overdue",
            "1 when a backup is older than its schedule allows",
            self.overdue.clone(),
        );
    }
}

/// Runs backups and drills on their schedules until cancelled.
pub struct BackupController {
    /// The spec.
    pub spec: Arc<Spec>,
    /// State database.
    pub store: Arc<dyn EventLog>,
    /// Secret resolution.
    pub resolver: Arc<dyn Resolver>,
    /// Metrics.
    pub metrics: BackupMetrics,
}

/// Event data, with the move of the backup's health when the event is one
/// (`from`, `to`): alerting turns exactly those into notices for the backup's
/// channels.
fn moved(mut data: serde_json::Value, change: Option<(Health, Health)>) -> serde_json::Value {
    if let (Some((from, to)), Some(map)) = (change, data.as_object_mut()) {
        map.insert("from".into(), from.as_str().into());
        map.insert("to".into(), to.as_str().into());
    }
    data
}

fn labels(backup: &str) -> Labels {
    vec![("backup".into(), backup.into())]
}

/// The latest event of a kind for a backup (Unix ms).
pub fn last_event(store: &dyn EventLog, kind: EventKind, backup: &str) -> Option<i64> {
    store
        .latest_event(kind, backup)
        .ok()
        .flatten()
        .map(|e| e.event.ts)
}

/// How old a backup may get before it is overdue: `max_age`, else twice the gap
/// between two scheduled runs plus an hour.
pub fn allowed_age_ms(b: &Backup, now: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    if let Some(m) = b.max_age {
        return Some(m.0.as_millis() as i64);
    }
    let s = b.schedule.as_ref()?;
    let first = s.find_next_occurrence(&now, false).ok()?;
    let second = s.find_next_occurrence(&first, false).ok()?;
    Some(2 * (second - first).num_milliseconds() + 3_600_000)
}

/// Which job a [`Scheduled`] controller runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Job {
    Backup,
    Drill,
}

/// A backup's or a drill's schedule as a supervised controller: each step
/// runs the job if it is due (never at start: the first step only waits for
/// the first occurrence) and sleeps until the next occurrence. A job that
/// panics is not run again before its next occurrence.
struct Scheduled {
    me: Arc<BackupController>,
    name: String,
    job: Job,
    schedule: croner::Cron,
    due: bool,
}

impl Controller for Scheduled {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            if self.due {
                self.due = false;
                let (me, name, job) = (self.me.clone(), self.name.clone(), self.job);
                tokio::task::spawn_blocking(move || match job {
                    Job::Backup => me.run_once(&name),
                    Job::Drill => me.drill_once(&name),
                })
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            }
            let now = chrono::Utc::now();
            let Ok(next) = self.schedule.find_next_occurrence(&now, false) else {
                return Ok(Next::Finished);
            };
            self.due = true;
            Ok(Next::After((next - now).to_std().unwrap_or(Duration::ZERO)))
        })
    }
}

/// The overdue watch as a supervised controller.
struct Overdue {
    me: Arc<BackupController>,
    overdue: BTreeMap<String, bool>,
    every: Duration,
}

impl Controller for Overdue {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let (me, state) = (self.me.clone(), self.overdue.clone());
            self.overdue = tokio::task::spawn_blocking(move || me.check_overdue(state))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            Ok(Next::After(self.every))
        })
    }
}

impl BackupController {
    /// Adds a controller per scheduled backup (`backup.NAME`) and drill
    /// (`drill.NAME`), and the overdue watch (`backup.overdue`), all leader-only.
    pub fn register(self, sup: &mut Supervisor) {
        let me = Arc::new(self);
        for b in me.spec.backups.values() {
            let jobs = [
                (Job::Backup, "backup", b.schedule.clone()),
                (
                    Job::Drill,
                    "drill",
                    b.drill.as_ref().and_then(|d| d.schedule.clone()),
                ),
            ];
            for (job, what, schedule) in jobs {
                let Some(schedule) = schedule else {
                    continue;
                };
                let (me, name) = (me.clone(), b.name.clone());
                sup.add_leader_only(format!("{what}.{}", b.name), move |_| {
                    Box::new(Scheduled {
                        me: me.clone(),
                        name: name.clone(),
                        job,
                        schedule: schedule.clone(),
                        due: false,
                    })
                });
            }
        }
        if me.spec.backups.is_empty() {
            return;
        }
        // Look at least twice per the shortest allowed age, at most once a minute.
        let now = chrono::Utc::now();
        let shortest = me
            .spec
            .backups
            .values()
            .filter_map(|b| allowed_age_ms(b, now))
            .min()
            .unwrap_or(120_000);
        let every = Duration::from_millis((shortest / 2).clamp(1_000, 60_000) as u64);
        sup.add_leader_only("backup.overdue", move |_| {
            Box::new(Overdue {
                me: me.clone(),
                overdue: BTreeMap::new(),
                every,
            })
        });
    }

    /// One scheduled run: back up, then apply retention; record and alert.
    pub fn run_once(&self, name: &str) {
        let Some(b) = self.spec.backups.get(name) else {
            return;
        };
        let l = labels(name);
        let outcome = crate::open(&self.spec, b, self.resolver.as_ref(), true)
            .and_then(|o| o.run(self.resolver.as_ref()));
        match outcome {
            Ok(r) => {
                self.metrics
                    .runs
                    .get_or_create(&vec![
                        ("backup".into(), name.into()),
                        ("outcome".into(), "success".into()),
                    ])
                    .inc();
                self.metrics
                    .last_success
                    .get_or_create(&l)
                    .set(now_ms() as f64 / 1000.0);
                self.metrics.duration.get_or_create(&l).set(r.seconds);
                self.metrics
                    .added
                    .get_or_create(&l)
                    .set(r.snapshot.added as i64);
                self.metrics
                    .unreadable
                    .get_or_create(&l)
                    .set(r.unreadable as i64);
                let recovered = self.failing(name);
                let mut message = format!("snapshot {} in {:.1} s", r.snapshot.short_id, r.seconds);
                if let Some(note) = r.partial_note() {
                    message = format!("{message}; {note}");
                }
                self.store.record(&NewEvent::now(
                    EventKind::BackupSucceeded,
                    name,
                    r.severity(),
                    message,
                    moved(
                        serde_json::to_value(&r).unwrap_or_default(),
                        recovered.then_some((Health::Down, Health::Up)),
                    ),
                ));
                // Retention after every successful run.
                match crate::open(&self.spec, b, self.resolver.as_ref(), false)
                    .and_then(|o| o.forget(false))
                {
                    Ok(decisions) => {
                        let kept = decisions.iter().filter(|(_, d)| d.keep).count();
                        let gone = decisions.len() - kept;
                        self.metrics.snapshots.get_or_create(&l).set(kept as i64);
                        if gone > 0 {
                            self.store.record(&NewEvent::now(
                                EventKind::BackupForgot,
                                name,
                                Severity::Info,
                                format!("{gone} snapshot(s) removed by retention, {kept} kept"),
                                serde_json::json!({"removed": gone, "kept": kept}),
                            ));
                        }
                    }
                    Err(e) => tracing::warn!(backup = name, error = %e, "retention failed"),
                }
            }
            Err(e) => {
                self.metrics
                    .runs
                    .get_or_create(&vec![
                        ("backup".into(), name.into()),
                        ("outcome".into(), "failure".into()),
                    ])
                    .inc();
                let first = !self.failing(name);
                self.store.record(&NewEvent::now(
                    EventKind::BackupFailed,
                    name,
                    Severity::Error,
                    e.to_string(),
                    moved(
                        serde_json::json!({"error": e.to_string()}),
                        first.then_some((Health::Up, Health::Down)),
                    ),
                ));
                tracing::warn!(backup = name, error = %e, "backup failed");
            }
        }
    }

    /// Whether the latest run of a backup failed.
    fn failing(&self, name: &str) -> bool {
        let f = last_event(&*self.store, EventKind::BackupFailed, name);
        let s = last_event(&*self.store, EventKind::BackupSucceeded, name);
        f.is_some() && f > s
    }

    /// One scheduled restore drill.
    pub fn drill_once(&self, name: &str) {
        let Some(b) = self.spec.backups.get(name) else {
            return;
        };
        let l = labels(name);
        match crate::drill(&self.spec, b, self.resolver.as_ref()) {
            Ok(r) => {
                self.metrics
                    .drills
                    .get_or_create(&vec![
                        ("backup".into(), name.into()),
                        ("outcome".into(), "success".into()),
                    ])
                    .inc();
                self.metrics
                    .drill_success
                    .get_or_create(&l)
                    .set(now_ms() as f64 / 1000.0);
                self.metrics.drill_duration.get_or_create(&l).set(r.seconds);
                self.store.record(&NewEvent::now(
                    EventKind::DrillSucceeded,
                    name,
                    Severity::Info,
                    format!(
                        "snapshot {} restored and verified in {:.1} s",
                        r.snapshot.short_id, r.seconds
                    ),
                    serde_json::to_value(&r).unwrap_or_default(),
                ));
            }
            Err(e) => {
                self.metrics
                    .drills
                    .get_or_create(&vec![
                        ("backup".into(), name.into()),
                        ("outcome".into(), "failure".into()),
                    ])
                    .inc();
                self.store.record(&NewEvent::now(
                    EventKind::DrillFailed,
                    name,
                    Severity::Error,
                    e.to_string(),
                    moved(
                        serde_json::json!({"error": e.to_string()}),
                        Some((Health::Up, Health::Down)),
                    ),
                ));
            }
        }
    }

    /// Marks backups whose newest success is older than allowed; alerts once.
    pub fn check_overdue(&self, mut state: BTreeMap<String, bool>) -> BTreeMap<String, bool> {
        let now = chrono::Utc::now();
        for b in self.spec.backups.values() {
            let Some(allowed) = allowed_age_ms(b, now) else {
                continue;
            };
            let last = last_event(&*self.store, EventKind::BackupSucceeded, &b.name)
                // Never succeeded: count from when serve started watching.
                .or_else(|| last_event(&*self.store, EventKind::ServeStarted, "steward"))
                .unwrap_or(now.timestamp_millis());
            let is_overdue = now.timestamp_millis() - last > allowed;
            self.metrics
                .overdue
                .get_or_create(&labels(&b.name))
                .set(is_overdue as i64);
            let was = state.insert(b.name.clone(), is_overdue).unwrap_or(false);
            if is_overdue && !was {
                let age_h = (now.timestamp_millis() - last) as f64 / 3_600_000.0;
                let msg = format!(
                    "no successful backup for {age_h:.1} h (allowed: {:.1} h)",
                    allowed as f64 / 3_600_000.0
                );
                self.store.record(&NewEvent::now(
                    EventKind::BackupOverdue,
                    &b.name,
                    Severity::Warning,
                    msg,
                    moved(serde_json::json!({}), Some((Health::Up, Health::Down))),
                ));
            }
        }
        state
    }
}
