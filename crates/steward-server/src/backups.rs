//! Backups on the dashboard and in the API: what the event log says about each
//! `[backup.*]` (the repositories themselves need the password and are not read).

use serde::Serialize;
use steward_spec::Spec;
use steward_state::{Event, EventKind, EventLog, Store};

/// One backup as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BackupView {
    /// Its name.
    pub(crate) name: String,
    /// Source kind (`paths`, `postgres`, …).
    pub(crate) source: String,
    /// Store name.
    pub(crate) store: String,
    /// Cron schedule, if any.
    pub(crate) schedule: Option<String>,
    /// Next scheduled run (RFC 3339).
    pub(crate) next_run: Option<String>,
    /// `ok`, `failed` or `never`.
    pub(crate) state: String,
    /// Latest run (Unix ms).
    pub(crate) last_run: Option<i64>,
    /// Latest successful run (Unix ms).
    pub(crate) last_success: Option<i64>,
    /// Newest snapshot id (short).
    pub(crate) last_snapshot: Option<String>,
    /// Bytes the latest successful run added.
    pub(crate) last_added: Option<u64>,
    /// Seconds the latest successful run took.
    pub(crate) last_seconds: Option<f64>,
    /// Why the latest run failed.
    pub(crate) last_error: Option<String>,
    /// Latest passed restore drill (Unix ms).
    pub(crate) last_drill: Option<i64>,
    /// Its restore time in seconds.
    pub(crate) last_drill_seconds: Option<f64>,
    /// Whether the latest drill failed.
    pub(crate) drill_failed: bool,
}

fn latest(store: &Store, kind: EventKind, name: &str) -> Option<Event> {
    store.latest_event(kind, name).ok().flatten()
}

/// Every backup of the spec with its latest runs and drills. Blocking (SQLite).
pub(crate) fn backup_views(spec: &Spec, store: &Store) -> Vec<BackupView> {
    let now = chrono::Utc::now();
    spec.backups
        .values()
        .map(|b| {
            let ok = latest(store, EventKind::BackupSucceeded, &b.name);
            let failed = latest(store, EventKind::BackupFailed, &b.name);
            let drill = latest(store, EventKind::DrillSucceeded, &b.name);
            let drill_failed = latest(store, EventKind::DrillFailed, &b.name);
            let ok_ts = ok.as_ref().map(|e| e.event.ts);
            let failed_ts = failed.as_ref().map(|e| e.event.ts);
            let state = match (ok_ts, failed_ts) {
                (None, None) => "never",
                (_, Some(f)) if Some(f) > ok_ts => "failed",
                _ => "ok",
            };
            let data = ok.as_ref().map(|e| &e.event.data);
            BackupView {
                name: b.name.clone(),
                source: b.source.kind().into(),
                store: b.store.clone(),
                schedule: b.schedule_text.clone(),
                next_run: b
                    .schedule
                    .as_ref()
                    .and_then(|s| s.find_next_occurrence(&now, false).ok())
                    .map(|t| t.to_rfc3339()),
                state: state.into(),
                last_run: ok_ts.max(failed_ts),
                last_success: ok_ts,
                last_snapshot: data
                    .and_then(|d| d["snapshot"]["short_id"].as_str().map(String::from)),
                last_added: data.and_then(|d| d["snapshot"]["added"].as_u64()),
                last_seconds: data.and_then(|d| d["seconds"].as_f64()),
                last_error: (state == "failed")
                    .then(|| failed.as_ref().map(|e| e.event.message.clone()))
                    .flatten(),
                last_drill: drill.as_ref().map(|e| e.event.ts),
                last_drill_seconds: drill
                    .as_ref()
                    .and_then(|e| e.event.data["seconds"].as_f64()),
                drill_failed: drill_failed.as_ref().map(|e| e.event.ts)
                    > drill.as_ref().map(|e| e.event.ts),
            }
        })
        .collect()
}
