//! steward's state: one SQLite database in the state directory.
//!
//! Holds check results (raw, and rolled up per minute and per hour so long
//! ranges stay cheap), the current state of every check, the event log that
//! controllers use to talk to each other, and alert deliveries. Schema changes
//! are numbered migrations applied at open (`PRAGMA user_version`).
//!
//! All times are Unix milliseconds (`i64`).

mod converge;
mod events;
mod fleet;
mod lease;
mod schema;
mod tokens;

pub use converge::Managed;
pub use events::{EventKind, Severity};
pub use fleet::{AfterDrain, DeployRow, InstanceRow, InstanceState, ServiceRow};
pub use lease::{Lease, LeaseRow};
pub use tokens::{Scope, TokenError, TokenInfo, token_hash};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Failures of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Creating or opening the state directory failed.
    #[error("cannot use state directory `{path}`: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("state database `{path}`: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The database was written by a newer steward.
    #[error(
        "state database `{path}` has schema version {found}, newer than this steward understands ({known}); upgrade steward"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Version in the file.
        found: i64,
        /// Newest version known here.
        known: i64,
    },
}

/// Result of one check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// All conditions held.
    Pass,
    /// Conditions held, a warn condition did not (or the target said `warn`).
    Warn,
    /// A condition failed or the probe could not complete.
    Fail,
}

impl Status {
    /// Lowercase name, as in `application/health+json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
    fn code(self) -> i64 {
        match self {
            Status::Pass => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }
    }
    fn from_code(c: i64) -> Status {
        match c {
            0 => Status::Pass,
            1 => Status::Warn,
            _ => Status::Fail,
        }
    }
}

/// The state of a check after thresholds are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not enough results yet.
    Unknown,
    /// Passing.
    Up,
    /// Passing with warnings.
    Degraded,
    /// Failing beyond the failure threshold.
    Down,
}

impl Health {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Degraded => "degraded",
            Health::Down => "down",
        }
    }
    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Health {
        match s {
            "up" => Health::Up,
            "degraded" => Health::Degraded,
            "down" => Health::Down,
            _ => Health::Unknown,
        }
    }
}

/// One stored check result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultRow {
    /// Check name.
    pub check: String,
    /// When the run started (Unix ms).
    pub ts: i64,
    /// Outcome.
    pub status: Status,
    /// Latency in microseconds.
    pub duration_us: i64,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Observed values (a JSON object), kept as text: results are cloned and
    /// stored far more often than they are inspected.
    pub observed: Option<Box<serde_json::value::RawValue>>,
}

/// Persisted state-machine state of one check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckStateRow {
    /// Check name.
    pub check: String,
    /// Current health.
    pub health: Health,
    /// Since when (Unix ms).
    pub since: i64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Successes in a row.
    pub consecutive_successes: u32,
    /// Latest result, if any.
    pub last: Option<ResultRow>,
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// When (Unix ms).
    pub ts: i64,
    /// What happened.
    pub kind: EventKind,
    /// What it is about, e.g. a check name.
    pub subject: String,
    /// How much it matters.
    pub severity: Severity,
    /// One line for people.
    pub message: String,
    /// Details for machines.
    pub data: serde_json::Value,
}

impl NewEvent {
    /// An event stamped with the current time.
    pub fn now(
        kind: EventKind,
        subject: &str,
        severity: Severity,
        message: String,
        data: serde_json::Value,
    ) -> Self {
        NewEvent {
            ts: now_ms(),
            kind,
            subject: subject.into(),
            severity,
            message,
            data,
        }
    }
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log; increases monotonically.
    pub id: i64,
    /// The event.
    #[serde(flatten)]
    pub event: NewEvent,
}

/// Filter for reading the event log.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only events with a greater id (for followers).
    pub after: Option<i64>,
    /// Only events with a smaller id (for paging backwards).
    pub before: Option<i64>,
    /// Kind prefix, e.g. `check.`.
    pub kind_prefix: Option<String>,
    /// Only these kinds (all when empty).
    pub kinds: Vec<EventKind>,
    /// Exact subject.
    pub subject: Option<String>,
    /// At most this many (newest first unless `after` is set).
    pub limit: usize,
}

/// An aggregated time bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Bucket start (Unix ms).
    pub ts: i64,
    /// Runs.
    pub n: i64,
    /// Passing runs.
    pub pass: i64,
    /// Warning runs.
    pub warn: i64,
    /// Failing runs.
    pub fail: i64,
    /// Mean latency (ms).
    pub avg_ms: f64,
    /// Highest latency (ms).
    pub max_ms: f64,
}

/// Uptime ratios (0..=1) over standard windows; `None` when no data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Uptime {
    /// Last hour.
    pub h1: Option<f64>,
    /// Last 24 hours.
    pub h24: Option<f64>,
    /// Last 7 days.
    pub d7: Option<f64>,
    /// Last 30 days.
    pub d30: Option<f64>,
}

/// How long each kind of history is kept, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct RetentionMs {
    /// Raw results.
    pub raw: i64,
    /// Minute buckets.
    pub minute: i64,
    /// Hour buckets.
    pub hour: i64,
    /// Day buckets.
    pub day: i64,
    /// Events.
    pub events: i64,
}

/// One alert delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// When (Unix ms).
    pub ts: i64,
    /// Alert channel name.
    pub alert: String,
    /// Check it was about.
    pub check: String,
    /// Event that caused it.
    pub event_id: Option<i64>,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Delivered?
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
}

/// The state database.
pub struct Store {
    path: PathBuf,
    write: Mutex<Connection>,
    read: Mutex<Connection>,
    bell: tokio::sync::watch::Sender<i64>,
    write_errors: prometheus_client::metrics::counter::Counter,
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

impl Store {
    /// Opens (creating if needed) `state.db` in `dir`, applying migrations.
    /// The directory is created with mode 0700 and the database 0600.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        create_private_dir(dir).map_err(|source| StateError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("state.db");
        let sq = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        let write = Connection::open(&path).map_err(sq)?;
        restrict_file(&path).map_err(|source| StateError::Dir {
            path: path.clone(),
            source,
        })?;
        // Another steward may be creating this database at the same moment: some
        // of this (switching to WAL) fails with SQLITE_BUSY without waiting, so
        // the set-up is retried for a while.
        let mut attempts = 0;
        loop {
            let setup = write
                .execute_batch(
                    "PRAGMA busy_timeout=5000; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
                )
                .map_err(sq)
                .and_then(|_| schema::migrate(&write, &path));
            match setup {
                Err(StateError::Sqlite {
                    source: rusqlite::Error::SqliteFailure(e, _),
                    ..
                }) if e.code == rusqlite::ErrorCode::DatabaseBusy && attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other?,
            }
        }
        let read = Connection::open(&path).map_err(sq)?;
        read.execute_batch("PRAGMA busy_timeout=5000; PRAGMA query_only=ON;")
            .map_err(sq)?;
        Ok(Store {
            path,
            write: Mutex::new(write),
            read: Mutex::new(read),
            bell: tokio::sync::watch::Sender::new(0),
            write_errors: Default::default(),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    pub(crate) fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes results (with their rollups), check states and events in one
    /// transaction, so a crash never leaves a transition without its event.
    /// Returns the ids of the appended events, in order.
    pub fn write_batch(
        &self,
        results: &[ResultRow],
        states: &[CheckStateRow],
        events: &[NewEvent],
    ) -> Result<Vec<i64>, StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let ids = (|| -> rusqlite::Result<Vec<i64>> {
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO results (check_name, ts, status, duration_us, error, observed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                let mut roll = tx.prepare_cached(
                    "INSERT INTO rollups (check_name, res, bucket, n, n_pass, n_warn, n_fail, sum_ms, max_ms)
                     VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?7)
                     ON CONFLICT (check_name, res, bucket) DO UPDATE SET
                       n = n + 1, n_pass = n_pass + excluded.n_pass, n_warn = n_warn + excluded.n_warn,
                       n_fail = n_fail + excluded.n_fail, sum_ms = sum_ms + excluded.sum_ms,
                       max_ms = max(max_ms, excluded.max_ms)",
                )?;
                for r in results {
                    ins.execute(params![
                        r.check,
                        r.ts,
                        r.status.code(),
                        r.duration_us,
                        r.error,
                        r.observed.as_ref().map(|o| o.get())
                    ])?;
                    let ms = r.duration_us as f64 / 1000.0;
                    let (p, w, f) = match r.status {
                        Status::Pass => (1, 0, 0),
                        Status::Warn => (0, 1, 0),
                        Status::Fail => (0, 0, 1),
                    };
                    for res in [MINUTE, HOUR, DAY] {
                        roll.execute(params![r.check, res / 1000, r.ts - r.ts.rem_euclid(res), p, w, f, ms])?;
                    }
                }
                let mut st = tx.prepare_cached(
                    "INSERT INTO check_state (check_name, health, since, consecutive_failures, consecutive_successes, last)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (check_name) DO UPDATE SET health = excluded.health, since = excluded.since,
                       consecutive_failures = excluded.consecutive_failures,
                       consecutive_successes = excluded.consecutive_successes,
                       last = excluded.last",
                )?;
                for s in states {
                    st.execute(params![
                        s.check,
                        s.health.as_str(),
                        s.since,
                        s.consecutive_failures,
                        s.consecutive_successes,
                        s.last.as_ref().map(|l| serde_json::to_string(l).unwrap_or_default()),
                    ])?;
                }
            }
            let mut ids = Vec::with_capacity(events.len());
            for e in events {
                ids.push(insert_event(&tx, e)?);
            }
            Ok(ids)
        })()
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(conn);
        if let Some(&last) = ids.last() {
            self.ring(last);
        }
        Ok(ids)
    }

    /// Appends an event for a caller that cannot do better than report a
    /// failure: it is logged as an error and counted
    /// ([`Store::write_errors`], registered by `serve` as
    /// `steward_state_write_errors_total`), never dropped without a trace.
    pub fn record(&self, e: &NewEvent) {
        if let Err(err) = self.append_event(e) {
            self.write_errors.inc();
            tracing::error!(error = %err, kind = %e.kind, subject = %e.subject, "cannot record an event");
        }
    }

    /// The count of events [`Store::record`] could not write since this store
    /// was opened: a handle to the live counter, for a metrics registry.
    pub fn write_errors(&self) -> prometheus_client::metrics::counter::Counter {
        self.write_errors.clone()
    }

    /// Appends one event to the log and returns its id.
    pub fn append_event(&self, e: &NewEvent) -> Result<i64, StateError> {
        let id = insert_event(&self.writer(), e).map_err(|e| self.err(e))?;
        self.ring(id);
        Ok(id)
    }

    /// Reads the event log.
    pub fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StateError> {
        let conn = self.reader();
        let mut sql = String::from(
            "SELECT id, ts, kind, subject, severity, message, data FROM events WHERE 1=1",
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(a) = q.after {
            sql.push_str(" AND id > ?");
            args.push(a.into());
        }
        if let Some(b) = q.before {
            sql.push_str(" AND id < ?");
            args.push(b.into());
        }
        if let Some(k) = &q.kind_prefix {
            sql.push_str(" AND substr(kind, 1, ?) = ?");
            args.push((k.len() as i64).into());
            args.push(k.clone().into());
        }
        if !q.kinds.is_empty() {
            sql.push_str(" AND kind IN (");
            for (i, k) in q.kinds.iter().enumerate() {
                sql.push_str(if i == 0 { "?" } else { ", ?" });
                args.push(k.as_str().to_string().into());
            }
            sql.push(')');
        }
        if let Some(s) = &q.subject {
            sql.push_str(" AND subject = ?");
            args.push(s.clone().into());
        }
        sql.push_str(if q.after.is_some() {
            " ORDER BY id ASC"
        } else {
            " ORDER BY id DESC"
        });
        sql.push_str(" LIMIT ?");
        args.push((q.limit.clamp(1, 10_000) as i64).into());
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), event_row)
            .map_err(|e| self.err(e))?;
        let rows: Vec<Option<Event>> = rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
        Ok(rows.into_iter().flatten().collect())
    }

    /// Where a consumer of the event log stands: the id of the last event it
    /// finished with. `None` for a consumer that has never stood anywhere.
    pub fn event_cursor(&self, consumer: &str) -> Result<Option<i64>, StateError> {
        self.reader()
            .prepare_cached("SELECT after_id FROM event_cursors WHERE consumer = ?1")
            .and_then(|mut st| st.query_row([consumer], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    /// Moves a consumer's cursor forward to `after` (never back: a late write
    /// from a slower path cannot make a consumer handle events twice).
    pub fn set_event_cursor(&self, consumer: &str, after: i64) -> Result<(), StateError> {
        self.writer()
            .prepare_cached(
                "INSERT INTO event_cursors (consumer, after_id, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (consumer) DO UPDATE SET after_id = max(after_id, excluded.after_id),
                   updated_ms = excluded.updated_ms",
            )
            .and_then(|mut st| st.execute(params![consumer, after, now_ms()]))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The newest event's id (0 for an empty log).
    pub fn last_event_id(&self) -> Result<i64, StateError> {
        self.reader()
            .query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// A receiver that sees the id of the newest event this process wrote. A
    /// doorbell only: consumers read the log itself from their cursor, so they
    /// miss nothing however far behind they fall (and events written by other
    /// processes are found by reading the log).
    pub fn event_bell(&self) -> tokio::sync::watch::Receiver<i64> {
        self.bell.subscribe()
    }

    fn ring(&self, id: i64) {
        self.bell.send_if_modified(|last| {
            let newer = id > *last;
            if newer {
                *last = id;
            }
            newer
        });
    }

    /// The newest event of exactly this kind about this subject.
    pub fn latest_event(
        &self,
        kind: EventKind,
        subject: &str,
    ) -> Result<Option<Event>, StateError> {
        self.reader()
            .prepare_cached(
                "SELECT id, ts, kind, subject, severity, message, data FROM events
                 WHERE kind = ?1 AND subject = ?2 ORDER BY id DESC LIMIT 1",
            )
            .and_then(|mut st| {
                st.query_row(params![kind.as_str(), subject], event_row)
                    .optional()
            })
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    /// Persisted state of every check.
    pub fn check_states(&self) -> Result<BTreeMap<String, CheckStateRow>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT check_name, health, since, consecutive_failures, consecutive_successes, last FROM check_state",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let last: Option<String> = r.get(5)?;
                Ok(CheckStateRow {
                    check: r.get(0)?,
                    health: Health::parse(&r.get::<_, String>(1)?),
                    since: r.get(2)?,
                    consecutive_failures: r.get(3)?,
                    consecutive_successes: r.get(4)?,
                    last: last.and_then(|l| serde_json::from_str(&l).ok()),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.map(|r| r.map(|s| (s.check.clone(), s)))
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Raw results of a check in `[from, to)`, newest first, at most `limit`.
    pub fn results(
        &self,
        check: &str,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<Vec<ResultRow>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT check_name, ts, status, duration_us, error, observed FROM results
                 WHERE check_name = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY ts DESC LIMIT ?4",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![check, from, to, limit.clamp(1, 10_000) as i64],
                |r| {
                    let observed: Option<String> = r.get(5)?;
                    Ok(ResultRow {
                        check: r.get(0)?,
                        ts: r.get(1)?,
                        status: Status::from_code(r.get(2)?),
                        duration_us: r.get(3)?,
                        error: r.get(4)?,
                        observed: observed
                            .and_then(|o| serde_json::value::RawValue::from_string(o).ok()),
                    })
                },
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Aggregated buckets of a check in `[from, to)`, oldest first; `hourly`
    /// picks hour buckets instead of minute buckets.
    pub fn series(
        &self,
        check: &str,
        from: i64,
        to: i64,
        hourly: bool,
    ) -> Result<Vec<Bucket>, StateError> {
        let res = if hourly { HOUR } else { MINUTE };
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT bucket, n, n_pass, n_warn, n_fail, sum_ms, max_ms FROM rollups
                 WHERE check_name = ?1 AND res = ?2 AND bucket >= ?3 AND bucket < ?4 ORDER BY bucket",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![check, res / 1000, from - from.rem_euclid(res), to],
                |r| bucket_at(r, 0),
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Buckets of every check since `from`, grouped by check, oldest first.
    pub fn series_all(
        &self,
        from: i64,
        hourly: bool,
    ) -> Result<BTreeMap<String, Vec<Bucket>>, StateError> {
        let res = if hourly { HOUR } else { MINUTE };
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT check_name, bucket, n, n_pass, n_warn, n_fail, sum_ms, max_ms FROM rollups
                 WHERE res = ?1 AND bucket >= ?2 ORDER BY check_name, bucket",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![res / 1000, from - from.rem_euclid(res)], |r| {
                Ok((r.get::<_, String>(0)?, bucket_at(r, 1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out: BTreeMap<String, Vec<Bucket>> = BTreeMap::new();
        for row in rows {
            let (name, b) = row.map_err(|e| self.err(e))?;
            out.entry(name).or_default().push(b);
        }
        Ok(out)
    }

    /// Uptime of every check over 1h (minute buckets), 24h (hour buckets) and
    /// 7d/30d (day buckets, so the oldest day counts whole). Warn counts as up.
    /// Reads at most 60 + 25 + 31 rows per check, whatever the history length.
    pub fn uptime_all(&self, now: i64) -> Result<BTreeMap<String, Uptime>, StateError> {
        let conn = self.reader();
        let mut out: BTreeMap<String, Uptime> = BTreeMap::new();
        let windows: [(i64, i64, u8); 4] = [
            (MINUTE, HOUR, 0),
            (HOUR, 24 * HOUR, 1),
            (DAY, 7 * DAY, 2),
            (DAY, 30 * DAY, 3),
        ];
        let mut stmt = conn
            .prepare_cached(
                "SELECT check_name, sum(n), sum(n_pass + n_warn) FROM rollups
                 WHERE res = ?1 AND bucket >= ?2 GROUP BY check_name",
            )
            .map_err(|e| self.err(e))?;
        for (res, span, slot) in windows {
            let start = now - span;
            let start = start - start.rem_euclid(res);
            let rows = stmt
                .query_map(params![res / 1000, start], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (name, n, up) = row.map_err(|e| self.err(e))?;
                let ratio = (n > 0).then(|| up as f64 / n as f64);
                let u = out.entry(name).or_default();
                match slot {
                    0 => u.h1 = ratio,
                    1 => u.h24 = ratio,
                    2 => u.d7 = ratio,
                    _ => u.d30 = ratio,
                }
            }
        }
        Ok(out)
    }

    /// Records an alert delivery attempt.
    pub fn record_delivery(&self, d: &Delivery) -> Result<(), StateError> {
        let conn = self.writer();
        conn.prepare_cached(
            "INSERT INTO deliveries (ts, alert, check_name, event_id, attempt, ok, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| s.execute(params![d.ts, d.alert, d.check, d.event_id, d.attempt, d.ok, d.error]))
        .map(|_| ())
        .map_err(|e| self.err(e))
    }

    /// Time of the latest successful delivery per check (for reminders).
    pub fn last_delivered(&self) -> Result<BTreeMap<String, i64>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT check_name, max(ts) FROM deliveries WHERE ok = 1 GROUP BY check_name",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Delivery attempts, newest first.
    pub fn deliveries(&self, limit: usize) -> Result<Vec<Delivery>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT ts, alert, check_name, event_id, attempt, ok, error FROM deliveries ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![limit.clamp(1, 10_000) as i64], |r| {
                Ok(Delivery {
                    ts: r.get(0)?,
                    alert: r.get(1)?,
                    check: r.get(2)?,
                    event_id: r.get(3)?,
                    attempt: r.get(4)?,
                    ok: r.get(5)?,
                    error: r.get(6)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Removes check state rows for checks no longer in the spec.
    pub fn forget_checks_except(&self, keep: &[&str]) -> Result<usize, StateError> {
        let conn = self.writer();
        let names: Vec<String> = conn
            .prepare("SELECT check_name FROM check_state")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| self.err(e))?;
        let mut n = 0;
        for name in names.iter().filter(|n| !keep.contains(&n.as_str())) {
            n += conn
                .execute(
                    "DELETE FROM check_state WHERE check_name = ?1",
                    params![name],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(n)
    }

    /// Deletes history older than the retention allows. Returns rows removed.
    pub fn prune(&self, now: i64, keep: RetentionMs) -> Result<usize, StateError> {
        let conn = self.writer();
        let mut n = 0;
        let run = |sql: &str, p: &[&dyn rusqlite::ToSql]| conn.execute(sql, p);
        n += run("DELETE FROM results WHERE ts < ?1", &[&(now - keep.raw)])
            .map_err(|e| self.err(e))?;
        n += run(
            "DELETE FROM rollups WHERE res = 60 AND bucket < ?1",
            &[&(now - keep.minute)],
        )
        .map_err(|e| self.err(e))?;
        n += run(
            "DELETE FROM rollups WHERE res = 3600 AND bucket < ?1",
            &[&(now - keep.hour)],
        )
        .map_err(|e| self.err(e))?;
        n += run("DELETE FROM events WHERE ts < ?1", &[&(now - keep.events)])
            .map_err(|e| self.err(e))?;
        n += run(
            "DELETE FROM deliveries WHERE ts < ?1",
            &[&(now - keep.events)],
        )
        .map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// A value from the key/value table.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StateError> {
        let conn = self.reader();
        conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| self.err(e))
    }

    /// Sets a value in the key/value table.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError> {
        let conn = self.writer();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .map(|_| ())
        .map_err(|e| self.err(e))
    }
}

/// A bucket from the columns `bucket, n, n_pass, n_warn, n_fail, sum_ms, max_ms`
/// starting at `at`.
fn bucket_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Bucket> {
    let n: i64 = r.get(at + 1)?;
    let sum: f64 = r.get(at + 5)?;
    Ok(Bucket {
        ts: r.get(at)?,
        n,
        pass: r.get(at + 2)?,
        warn: r.get(at + 3)?,
        fail: r.get(at + 4)?,
        avg_ms: if n > 0 { sum / n as f64 } else { 0.0 },
        max_ms: r.get(at + 6)?,
    })
}

fn insert_event(conn: &Connection, e: &NewEvent) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO events (ts, kind, subject, severity, message, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![e.ts, e.kind.as_str(), e.subject, e.severity.as_str(), e.message, e.data.to_string()])?;
    Ok(conn.last_insert_rowid())
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn restrict_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict_file(_: &Path) -> std::io::Result<()> {
    Ok(())
}

/// The async front of the store: runs `f` on tokio's blocking pool, so async
/// code (a controller's step, an HTTP handler) never waits for SQLite on its
/// own thread. A panic inside `f` is passed on to the caller.
pub async fn off_thread<T: Send + 'static>(
    store: &std::sync::Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// [`Store::record`] from async code, on the blocking pool.
pub async fn record_off_thread(store: &std::sync::Arc<Store>, e: NewEvent) {
    let store = store.clone();
    let _ = tokio::task::spawn_blocking(move || store.record(&e)).await;
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A stored event, or `None` for a kind this steward does not know (one a
/// newer steward wrote into the same database): readers pass over it.
fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<Event>> {
    let kind: String = r.get(2)?;
    let Some(kind) = EventKind::parse(&kind) else {
        tracing::debug!(kind, "event of an unknown kind passed over");
        return Ok(None);
    };
    let data: String = r.get(6)?;
    Ok(Some(Event {
        id: r.get(0)?,
        event: NewEvent {
            ts: r.get(1)?,
            kind,
            subject: r.get(3)?,
            severity: Severity::parse(&r.get::<_, String>(4)?),
            message: r.get(5)?,
            data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
        },
    }))
}
