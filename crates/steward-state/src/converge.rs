//! Configuration management's memory: refreshes owed to services and commands, and
//! which resources a set managed, per converged root.

use rusqlite::params;

use crate::{StateError, Store};

/// A resource a converge run managed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    /// `kind:name`.
    pub id: String,
    /// The file-system path it owns, if any.
    pub path: Option<String>,
    /// When it was last applied (ms since the epoch).
    pub ts: i64,
}

/// What converge changed and still owes: the state boundary of converge.
pub trait ConvergeJournal: Send + Sync {
    /// Records that `target` owes a refresh because `source` changed. Written before
    /// the target runs, so a run that fails in between still refreshes next time.
    fn converge_owe(
        &self,
        root: &str,
        set: &str,
        target: &str,
        source: &str,
        now: i64,
    ) -> Result<(), StateError>;

    /// Refreshes owed in a set: `(target, source)` pairs, oldest first.
    fn converge_owed(&self, root: &str, set: &str) -> Result<Vec<(String, String)>, StateError>;

    /// The refresh of `target` happened (or is moot): forget what it owed.
    fn converge_paid(&self, root: &str, set: &str, target: &str) -> Result<(), StateError>;

    /// Resources a set managed in a root, by id.
    fn converge_managed(&self, root: &str, set: &str) -> Result<Vec<Managed>, StateError>;

    /// Records a run: `managed` resources are upserted, `forget` ones dropped (they
    /// were removed from the host); resources dropped from the spec but not from the
    /// host stay remembered, so plans keep naming them.
    fn converge_record(
        &self,
        root: &str,
        set: &str,
        managed: &[(String, Option<String>)],
        forget: &[String],
        now: i64,
    ) -> Result<(), StateError>;
}

impl ConvergeJournal for Store {
    fn converge_owe(
        &self,
        root: &str,
        set: &str,
        target: &str,
        source: &str,
        now: i64,
    ) -> Result<(), StateError> {
        self.writer()
            .execute(
                "INSERT OR IGNORE INTO converge_pending (root, set_name, target, source, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![root, set, target, source, now],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn converge_owed(&self, root: &str, set: &str) -> Result<Vec<(String, String)>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT target, source FROM converge_pending WHERE root = ?1 AND set_name = ?2
                 ORDER BY ts, target, source",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![root, set], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn converge_paid(&self, root: &str, set: &str, target: &str) -> Result<(), StateError> {
        self.writer()
            .execute(
                "DELETE FROM converge_pending WHERE root = ?1 AND set_name = ?2 AND target = ?3",
                params![root, set, target],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn converge_managed(&self, root: &str, set: &str) -> Result<Vec<Managed>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, path, ts FROM converge_managed WHERE root = ?1 AND set_name = ?2
                 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![root, set], |r| {
                Ok(Managed {
                    id: r.get(0)?,
                    path: r.get(1)?,
                    ts: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn converge_record(
        &self,
        root: &str,
        set: &str,
        managed: &[(String, Option<String>)],
        forget: &[String],
        now: i64,
    ) -> Result<(), StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut del = tx
                .prepare_cached(
                    "DELETE FROM converge_managed WHERE root = ?1 AND set_name = ?2 AND id = ?3",
                )
                .map_err(|e| self.err(e))?;
            for id in forget {
                del.execute(params![root, set, id])
                    .map_err(|e| self.err(e))?;
            }
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO converge_managed (root, set_name, id, path, ts)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (root, set_name, id) DO UPDATE SET path = ?4, ts = ?5",
                )
                .map_err(|e| self.err(e))?;
            for (id, path) in managed {
                ins.execute(params![root, set, id, path, now])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }
}
