//! Leases: a named lock with a holder and an expiry, taken and renewed in one
//! SQLite statement, so two stewards on the same database never both hold it.
//! The leader of a set of stewards is whoever holds the `leader` lease.

use rusqlite::params;

use crate::{StateError, Store};

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// Who holds it.
    pub holder: String,
    /// Until when (Unix ms), unless renewed.
    pub expires_ms: i64,
}

/// Taking, keeping and giving back a named lease. Implemented on SQLite by
/// [`Store`]; a shared database (or another backend) is what lets stewards on
/// several machines agree.
pub trait Lease: Send + Sync {
    /// Takes `name` for `holder` until `now + ttl_ms`, or renews it when
    /// `holder` has it already. `false` while someone else holds it unexpired.
    fn acquire(&self, name: &str, holder: &str, ttl_ms: i64, now: i64) -> Result<bool, StateError>;
    /// Gives it back (only its holder can).
    fn release(&self, name: &str, holder: &str) -> Result<(), StateError>;
    /// Who holds it now, if anyone.
    fn holder(&self, name: &str, now: i64) -> Result<Option<LeaseRow>, StateError>;
}

impl Lease for Store {
    fn acquire(&self, name: &str, holder: &str, ttl_ms: i64, now: i64) -> Result<bool, StateError> {
        // One statement: insert, or take over when ours or expired. SQLite
        // runs it under its write lock, so two stewards cannot both succeed.
        let changed = self
            .writer()
            .execute(
                "INSERT INTO leases (name, holder, expires_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
                 WHERE leases.holder = excluded.holder OR leases.expires_ms <= ?4",
                params![name, holder, now + ttl_ms, now],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed == 1)
    }

    fn release(&self, name: &str, holder: &str) -> Result<(), StateError> {
        self.writer()
            .execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn holder(&self, name: &str, now: i64) -> Result<Option<LeaseRow>, StateError> {
        use rusqlite::OptionalExtension;
        self.reader()
            .query_row(
                "SELECT holder, expires_ms FROM leases WHERE name = ?1 AND expires_ms > ?2",
                params![name, now],
                |r| {
                    Ok(LeaseRow {
                        holder: r.get(0)?,
                        expires_ms: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }
}
