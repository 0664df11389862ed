//! The fleet's memory: which version each service should run and how many
//! instances, every instance steward started (so a restarted steward adopts
//! them), and the deploy history.

use rusqlite::{OptionalExtension, Row, params};

use crate::{StateError, Store};

/// What a service should run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceRow {
    /// Service name.
    pub service: String,
    /// Image digest its instances should run.
    pub target: Option<String>,
    /// Digest it ran before the last deploy (where a rollback goes).
    pub previous: Option<String>,
    /// Desired instance count (`None`: the spec's minimum).
    pub replicas: Option<u32>,
    /// Canaries of the current deploy may be followed by the rest.
    pub promoted: bool,
}

/// What happens to an instance once its drain ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AfterDrain {
    /// Stop it and keep it for a rollback.
    Park,
    /// Stop it and delete it.
    Destroy,
}

/// Where an instance is in its life, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// Created (or revived) and started, not yet ready.
    Starting,
    /// Passing readiness: in the proxy's rotation.
    Ready,
    /// Was ready, now failing readiness: out of rotation.
    Unready,
    /// Out of rotation, finishing its requests; then parked or destroyed.
    Draining(AfterDrain),
    /// Stopped and kept, for a rollback.
    Parked,
    /// Its process ended without being asked to.
    Failed,
}

impl InstanceState {
    /// Every state, in the order reports list them.
    pub const ALL: [InstanceState; 7] = [
        InstanceState::Starting,
        InstanceState::Ready,
        InstanceState::Unready,
        InstanceState::Draining(AfterDrain::Park),
        InstanceState::Draining(AfterDrain::Destroy),
        InstanceState::Parked,
        InstanceState::Failed,
    ];

    /// The name shown and stored (both drains are `draining`).
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Unready => "unready",
            InstanceState::Draining(_) => "draining",
            InstanceState::Parked => "parked",
            InstanceState::Failed => "failed",
        }
    }

    /// Whether its process should be running.
    pub fn runs(self) -> bool {
        matches!(
            self,
            InstanceState::Starting
                | InstanceState::Ready
                | InstanceState::Unready
                | InstanceState::Draining(_)
        )
    }

    fn after_drain(self) -> Option<&'static str> {
        match self {
            InstanceState::Draining(AfterDrain::Park) => Some("park"),
            InstanceState::Draining(AfterDrain::Destroy) => Some("destroy"),
            _ => None,
        }
    }

    fn read(state: &str, after_drain: Option<&str>) -> Option<InstanceState> {
        Some(match (state, after_drain) {
            ("starting", _) => InstanceState::Starting,
            ("ready", _) => InstanceState::Ready,
            ("unready", _) => InstanceState::Unready,
            ("draining", Some("park")) => InstanceState::Draining(AfterDrain::Park),
            ("draining", Some("destroy")) => InstanceState::Draining(AfterDrain::Destroy),
            ("parked", _) => InstanceState::Parked,
            ("failed", _) => InstanceState::Failed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for InstanceState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for InstanceState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One instance, as last recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceRow {
    /// Unique id, e.g. `api-3f9a1c`.
    pub id: String,
    /// Its service.
    pub service: String,
    /// Image digest it runs.
    pub digest: String,
    /// Where it is in its life.
    pub state: InstanceState,
    /// Address it serves on.
    pub addr: String,
    /// Its provider's record (the local provider: directory, pid and the
    /// pid's start time); the fleet stores it and hands it back unread.
    pub provider: serde_json::Value,
    /// Created (ms since the epoch).
    pub created_ms: i64,
    /// First passed readiness (ms since the epoch).
    pub ready_ms: Option<i64>,
    /// Last change.
    pub updated_ms: i64,
    /// Why it is in its state, when that is news (e.g. why it failed).
    pub reason: Option<String>,
}

/// One deploy (or rollback, or automatic revert).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeployRow {
    /// Sequence number.
    pub id: i64,
    /// Service.
    pub service: String,
    /// Digest before.
    pub from_digest: Option<String>,
    /// Digest after.
    pub to_digest: String,
    /// Who asked (user@host, `serve` for automatic ones).
    pub who: String,
    /// `deploy`, `rollback`, `revert`, `rebuild` or `initial`.
    pub kind: String,
    /// Asked for (ms since the epoch).
    pub requested_ms: i64,
    /// A running `serve` took it up.
    pub started_ms: Option<i64>,
    /// Finished.
    pub finished_ms: Option<i64>,
    /// `succeeded`, `reverted`, `failed` or `superseded`; `None` while running.
    pub result: Option<String>,
    /// Why it ended as it did.
    pub reason: Option<String>,
}

fn instance(r: &Row<'_>) -> rusqlite::Result<InstanceRow> {
    let (state, after): (String, Option<String>) = (r.get(3)?, r.get(10)?);
    // A state this steward does not know is an error to see, not a guess.
    let state = InstanceState::read(&state, after.as_deref()).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            3,
            rusqlite::types::Type::Text,
            format!("unknown instance state `{state}` (after drain: {after:?})").into(),
        )
    })?;
    Ok(InstanceRow {
        id: r.get(0)?,
        service: r.get(1)?,
        digest: r.get(2)?,
        state,
        addr: r.get(4)?,
        provider: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or(serde_json::Value::Null),
        created_ms: r.get(6)?,
        ready_ms: r.get(7)?,
        updated_ms: r.get(8)?,
        reason: r.get(9)?,
    })
}

fn deploy(r: &Row<'_>) -> rusqlite::Result<DeployRow> {
    Ok(DeployRow {
        id: r.get(0)?,
        service: r.get(1)?,
        from_digest: r.get(2)?,
        to_digest: r.get(3)?,
        who: r.get(4)?,
        kind: r.get(5)?,
        requested_ms: r.get(6)?,
        started_ms: r.get(7)?,
        finished_ms: r.get(8)?,
        result: r.get(9)?,
        reason: r.get(10)?,
    })
}

const INSTANCE_COLS: &str = "id, service, digest, state, addr, provider, created_ms, ready_ms, updated_ms, reason, after_drain";
const DEPLOY_COLS: &str = "id, service, from_digest, to_digest, who, kind, requested_ms, started_ms, finished_ms, result, reason";

/// Services, deploys and instances: the state boundary of the fleet.
pub trait FleetState: Send + Sync {
    /// What `service` should run (`None` before its first deploy).
    fn fleet_service(&self, service: &str) -> Result<Option<ServiceRow>, StateError>;

    /// Points `service` at `to` and records the deploy; the version it ran so far
    /// becomes the one a rollback returns to. A deploy still running for the
    /// service is superseded. Returns the deploy's id.
    fn fleet_request_deploy(
        &self,
        service: &str,
        to: &str,
        who: &str,
        kind: &str,
        promoted: bool,
        now: i64,
    ) -> Result<i64, StateError>;

    /// Sets the desired instance count.
    fn fleet_set_replicas(&self, service: &str, n: u32, now: i64) -> Result<(), StateError>;

    /// Lets a deploy continue past its canaries.
    fn fleet_promote(&self, service: &str, now: i64) -> Result<bool, StateError>;

    /// Deploys, newest first (`service = None`: all services).
    fn fleet_deploys(
        &self,
        service: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeployRow>, StateError>;

    /// One deploy by id.
    fn fleet_deploy(&self, id: i64) -> Result<Option<DeployRow>, StateError>;

    /// A running `serve` took the deploy up.
    fn fleet_deploy_started(&self, id: i64, now: i64) -> Result<(), StateError>;

    /// The deploy ended.
    fn fleet_deploy_finished(
        &self,
        id: i64,
        result: &str,
        reason: &str,
        now: i64,
    ) -> Result<(), StateError>;

    /// Instances, oldest first (`service = None`: all).
    fn fleet_instances(&self, service: Option<&str>) -> Result<Vec<InstanceRow>, StateError>;

    /// Records an instance (insert or replace).
    fn fleet_put_instance(&self, i: &InstanceRow) -> Result<(), StateError>;

    /// Forgets a destroyed instance.
    fn fleet_delete_instance(&self, id: &str) -> Result<(), StateError>;
}

impl FleetState for Store {
    fn fleet_service(&self, service: &str) -> Result<Option<ServiceRow>, StateError> {
        self.reader()
            .query_row(
                "SELECT service, target, previous, replicas, promoted FROM fleet_service WHERE service = ?1",
                params![service],
                |r| {
                    Ok(ServiceRow {
                        service: r.get(0)?,
                        target: r.get(1)?,
                        previous: r.get(2)?,
                        replicas: r.get(3)?,
                        promoted: r.get::<_, i64>(4)? != 0,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn fleet_request_deploy(
        &self,
        service: &str,
        to: &str,
        who: &str,
        kind: &str,
        promoted: bool,
        now: i64,
    ) -> Result<i64, StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let current: Option<Option<String>> = tx
            .query_row(
                "SELECT target FROM fleet_service WHERE service = ?1",
                params![service],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let current = current.flatten();
        tx.execute(
            "UPDATE fleet_deploy SET result = 'superseded', finished_ms = ?2,
                reason = 'a newer deploy was requested'
             WHERE service = ?1 AND result IS NULL",
            params![service, now],
        )
        .map_err(|e| self.err(e))?;
        // Re-deploying the running version keeps the previous one as it was.
        // A revert goes back; the version it left failed and is no way back.
        let previous_expr = if kind == "revert" {
            "NULL"
        } else if current.as_deref() == Some(to) {
            "previous"
        } else {
            "excluded.previous"
        };
        tx.execute(
            &format!(
                "INSERT INTO fleet_service (service, target, previous, promoted, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (service) DO UPDATE SET target = excluded.target,
                    previous = {previous_expr}, promoted = excluded.promoted, updated_ms = excluded.updated_ms"
            ),
            params![service, to, current, promoted as i64, now],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO fleet_deploy (service, from_digest, to_digest, who, kind, requested_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![service, current, to, who, kind, now],
        )
        .map_err(|e| self.err(e))?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(|e| self.err(e))?;
        Ok(id)
    }

    fn fleet_set_replicas(&self, service: &str, n: u32, now: i64) -> Result<(), StateError> {
        self.writer()
            .execute(
                "INSERT INTO fleet_service (service, replicas, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (service) DO UPDATE SET replicas = excluded.replicas, updated_ms = excluded.updated_ms",
                params![service, n, now],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn fleet_promote(&self, service: &str, now: i64) -> Result<bool, StateError> {
        self.writer()
            .execute(
                "UPDATE fleet_service SET promoted = 1, updated_ms = ?2 WHERE service = ?1 AND promoted = 0",
                params![service, now],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    fn fleet_deploys(
        &self,
        service: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeployRow>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {DEPLOY_COLS} FROM fleet_deploy WHERE ?1 IS NULL OR service = ?1
                 ORDER BY id DESC LIMIT ?2"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![service, limit as i64], deploy)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn fleet_deploy(&self, id: i64) -> Result<Option<DeployRow>, StateError> {
        self.reader()
            .query_row(
                &format!("SELECT {DEPLOY_COLS} FROM fleet_deploy WHERE id = ?1"),
                params![id],
                deploy,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn fleet_deploy_started(&self, id: i64, now: i64) -> Result<(), StateError> {
        self.writer()
            .execute(
                "UPDATE fleet_deploy SET started_ms = ?2 WHERE id = ?1 AND started_ms IS NULL",
                params![id, now],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn fleet_deploy_finished(
        &self,
        id: i64,
        result: &str,
        reason: &str,
        now: i64,
    ) -> Result<(), StateError> {
        self.writer()
            .execute(
                "UPDATE fleet_deploy SET result = ?2, reason = ?3, finished_ms = ?4
                 WHERE id = ?1 AND result IS NULL",
                params![id, result, reason, now],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn fleet_instances(&self, service: Option<&str>) -> Result<Vec<InstanceRow>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {INSTANCE_COLS} FROM fleet_instance WHERE ?1 IS NULL OR service = ?1
                 ORDER BY created_ms, id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![service], instance)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn fleet_put_instance(&self, i: &InstanceRow) -> Result<(), StateError> {
        self.writer()
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO fleet_instance ({INSTANCE_COLS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ),
                params![
                    i.id,
                    i.service,
                    i.digest,
                    i.state.as_str(),
                    i.addr,
                    i.provider.to_string(),
                    i.created_ms,
                    i.ready_ms,
                    i.updated_ms,
                    i.reason,
                    i.state.after_drain()
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn fleet_delete_instance(&self, id: &str) -> Result<(), StateError> {
        self.writer()
            .execute("DELETE FROM fleet_instance WHERE id = ?1", params![id])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploys_remember_the_previous_version_and_supersede_running_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.fleet_service("api").unwrap(), None);
        let a = s
            .fleet_request_deploy("api", "sha256:a", "me", "initial", true, 1)
            .unwrap();
        let b = s
            .fleet_request_deploy("api", "sha256:b", "me", "deploy", true, 2)
            .unwrap();
        let row = s.fleet_service("api").unwrap().unwrap();
        assert_eq!(row.target.as_deref(), Some("sha256:b"));
        assert_eq!(row.previous.as_deref(), Some("sha256:a"));
        assert_eq!(
            s.fleet_deploy(a).unwrap().unwrap().result.as_deref(),
            Some("superseded")
        );
        assert_eq!(s.fleet_deploy(b).unwrap().unwrap().result, None);
        // Deploying the running version again keeps the way back.
        s.fleet_request_deploy("api", "sha256:b", "me", "deploy", true, 3)
            .unwrap();
        let row = s.fleet_service("api").unwrap().unwrap();
        assert_eq!(row.previous.as_deref(), Some("sha256:a"));
        s.fleet_set_replicas("api", 4, 4).unwrap();
        assert_eq!(s.fleet_service("api").unwrap().unwrap().replicas, Some(4));
        assert_eq!(s.fleet_deploys(Some("api"), 10).unwrap().len(), 3);
        assert!(s.fleet_deploys(Some("worker"), 10).unwrap().is_empty());
    }
}
