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
mod history;
mod lease;
mod log;
mod schema;
mod series;
mod tokens;

pub use converge::{ConvergeJournal, Managed};
pub use events::{EventKind, Severity};
pub use fleet::{AfterDrain, DeployRow, FleetState, InstanceRow, InstanceState, ServiceRow};
pub use history::CheckHistory;
pub use lease::{Lease, LeaseRow};
pub use log::{AlertLog, EventLog};
pub use series::{ChunkRow, RollupRow, SeriesChunks, SeriesDb};
pub use tokens::{Scope, TokenError, TokenInfo, Tokens, token_hash};

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
    /// Another process holds the file.
    #[error("`{path}` is held by another steward")]
    InUse {
        /// The lock file.
        path: PathBuf,
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

    /// The count of events [`EventLog::record`] could not write since this store
    /// was opened: a handle to the live counter, for a metrics registry.
    pub fn write_errors(&self) -> prometheus_client::metrics::counter::Counter {
        self.write_errors.clone()
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
/// own thread. Works on any of the state traits (`Arc<dyn FleetState>`, …) as
/// well as on the store itself. A panic inside `f` is passed on to the caller.
pub async fn off_thread<S, T>(
    store: &std::sync::Arc<S>,
    f: impl FnOnce(&S) -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError>
where
    S: ?Sized + Send + Sync + 'static,
    T: Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// [`EventLog::record`] from async code, on the blocking pool.
pub async fn record_off_thread<S: ?Sized + EventLog + 'static>(
    store: &std::sync::Arc<S>,
    e: NewEvent,
) {
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

/// A small key/value table for facts that have no table of their own
/// (the schema version, `serve`'s heartbeat, handled rebuild requests).
pub trait Meta: Send + Sync {
    /// A value from the key/value table.
    fn meta(&self, key: &str) -> Result<Option<String>, StateError>;

    /// Sets a value in the key/value table.
    fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError>;
}

impl Meta for Store {
    fn meta(&self, key: &str) -> Result<Option<String>, StateError> {
        let conn = self.reader();
        conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| self.err(e))
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError> {
        let conn = self.writer();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .map(|_| ())
        .map_err(|e| self.err(e))
    }
}
