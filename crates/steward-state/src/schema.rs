//! Numbered schema migrations. Append only: never edit a released step.

use std::path::Path;

use rusqlite::Connection;

use crate::StateError;

const MIGRATIONS: &[&str] = &[
    // 1: health monitoring and the event log
    "CREATE TABLE results (
        check_name TEXT NOT NULL,
        ts INTEGER NOT NULL,
        status INTEGER NOT NULL,
        duration_us INTEGER NOT NULL,
        error TEXT,
        observed TEXT
     );
     CREATE INDEX results_check_ts ON results (check_name, ts);
     CREATE INDEX results_ts ON results (ts);
     CREATE TABLE rollups (
        check_name TEXT NOT NULL,
        res INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        n INTEGER NOT NULL,
        n_pass INTEGER NOT NULL,
        n_warn INTEGER NOT NULL,
        n_fail INTEGER NOT NULL,
        sum_ms REAL NOT NULL,
        max_ms REAL NOT NULL,
        PRIMARY KEY (check_name, res, bucket)
     ) WITHOUT ROWID;
     -- Covering index: uptime over all checks reads only this index.
     CREATE INDEX rollups_res_bucket ON rollups (res, bucket, check_name, n, n_pass, n_warn);
     CREATE TABLE check_state (
        check_name TEXT PRIMARY KEY,
        health TEXT NOT NULL,
        since INTEGER NOT NULL,
        consecutive_failures INTEGER NOT NULL,
        consecutive_successes INTEGER NOT NULL,
        last TEXT
     );
     CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        severity TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT NOT NULL
     );
     CREATE INDEX events_ts ON events (ts);
     CREATE INDEX events_subject ON events (subject, id);
     CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        alert TEXT NOT NULL,
        check_name TEXT NOT NULL,
        event_id INTEGER,
        attempt INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        error TEXT
     );
     CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // 2: API tokens, stored only as SHA-256 hashes
    "CREATE TABLE tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        hash BLOB NOT NULL UNIQUE,
        created INTEGER NOT NULL,
        last_used INTEGER,
        revoked INTEGER
     );",
    // 3: configuration management: refreshes owed (survive a failed run) and what
    // was managed, per root and set
    "CREATE TABLE converge_pending (
        root TEXT NOT NULL,
        set_name TEXT NOT NULL,
        target TEXT NOT NULL,
        source TEXT NOT NULL,
        ts INTEGER NOT NULL,
        PRIMARY KEY (root, set_name, target, source)
     );
     CREATE TABLE converge_managed (
        root TEXT NOT NULL,
        set_name TEXT NOT NULL,
        id TEXT NOT NULL,
        path TEXT,
        ts INTEGER NOT NULL,
        PRIMARY KEY (root, set_name, id)
     );",
    // v4: the fleet — what each service should run, its instances, deploy history.
    "CREATE TABLE fleet_service (
        service TEXT PRIMARY KEY,
        target TEXT,
        previous TEXT,
        replicas INTEGER,
        promoted INTEGER NOT NULL DEFAULT 1,
        updated_ms INTEGER NOT NULL
     );
     CREATE TABLE fleet_instance (
        id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        digest TEXT NOT NULL,
        state TEXT NOT NULL,
        addr TEXT NOT NULL,
        pid INTEGER,
        pid_start INTEGER,
        dir TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        ready_ms INTEGER,
        updated_ms INTEGER NOT NULL,
        reason TEXT
     );
     CREATE INDEX fleet_instance_service ON fleet_instance (service);
     CREATE TABLE fleet_deploy (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        from_digest TEXT,
        to_digest TEXT NOT NULL,
        who TEXT NOT NULL,
        kind TEXT NOT NULL,
        requested_ms INTEGER NOT NULL,
        started_ms INTEGER,
        finished_ms INTEGER,
        result TEXT,
        reason TEXT
     );
     CREATE INDEX fleet_deploy_service ON fleet_deploy (service, id);",
    // v5: where each consumer of the event log stands (alert channels, the
    // fleet's auto_rebuild), so none misses or repeats an event across restarts.
    "CREATE TABLE event_cursors (
        consumer TEXT PRIMARY KEY,
        after_id INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
     );",
    // v6: what follows a drain is a column, no longer read from the free-text
    // reason (drains recorded before said `park…` or `destroy…` there).
    "ALTER TABLE fleet_instance ADD COLUMN after_drain TEXT;
     UPDATE fleet_instance SET after_drain =
        CASE WHEN reason LIKE 'park%' THEN 'park' ELSE 'destroy' END
     WHERE state = 'draining';",
    // v7: where an instance runs is its provider's record, kept whole and
    // unread by the fleet (the local provider's directory, pid and start time
    // move into it).
    "ALTER TABLE fleet_instance ADD COLUMN provider TEXT NOT NULL DEFAULT '{}';
     UPDATE fleet_instance SET provider = json_object('dir', dir, 'pid', pid, 'pid_start', pid_start);
     ALTER TABLE fleet_instance DROP COLUMN pid;
     ALTER TABLE fleet_instance DROP COLUMN pid_start;
     ALTER TABLE fleet_instance DROP COLUMN dir;",
    // v8: leases, so that of several stewards on one database exactly one
    // leads (runs the controllers that change the world).
    "CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_ms INTEGER NOT NULL
     );",
];

/// Applies the state database's migrations.
pub(crate) fn migrate(conn: &Connection, path: &Path) -> Result<(), StateError> {
    migrate_with(conn, path, MIGRATIONS)
}

/// Applies numbered migrations (`PRAGMA user_version` counts those done).
pub(crate) fn migrate_with(
    conn: &Connection,
    path: &Path,
    migrations: &[&str],
) -> Result<(), StateError> {
    let version_known = migrations.len() as i64;
    let sq = |source| StateError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sq)?;
    if current > version_known {
        return Err(StateError::TooNew {
            path: path.to_path_buf(),
            found: current,
            known: version_known,
        });
    }
    for (i, step) in migrations.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        // Each step and its version bump commit together: a crash mid-way
        // leaves the previous version intact. The write lock is taken before the
        // version is read again, so two processes opening a new database at the
        // same moment apply each step once (the second finds it done).
        conn.execute_batch("BEGIN IMMEDIATE").map_err(sq)?;
        let result = (|| {
            let now: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if now < version {
                conn.execute_batch(step)?;
                conn.pragma_update(None, "user_version", version)?;
            }
            conn.execute_batch("COMMIT")
        })();
        if let Err(e) = result {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(sq(e));
        }
        tracing::debug!(version, "state database migrated");
    }
    // A new database is not news; an upgraded one is worth a line.
    if current > 0 && current < version_known {
        tracing::info!(from = current, to = version_known, path = %path.display(), "state database upgraded");
    }
    Ok(())
}
