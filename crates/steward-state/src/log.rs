//! The event log and the alert deliveries: the state boundary of the
//! controllers that talk through events (all of them) and of alerting.

use super::*;

/// The event log: what controllers use to talk to each other. Every consumer
/// follows it from a durable cursor of its own, so nothing is lost to a
/// restart or to falling behind.
pub trait EventLog: Send + Sync {
    /// Appends one event to the log and returns its id.
    fn append_event(&self, e: &NewEvent) -> Result<i64, StateError>;

    /// Appends an event for a caller that cannot do better than report a
    /// failure: it is logged as an error and counted
    /// ([`Store::write_errors`], registered by `serve` as
    /// `steward_state_write_errors_total`), never dropped without a trace.
    fn record(&self, e: &NewEvent);

    /// Reads the event log.
    fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StateError>;

    /// Where a consumer of the event log stands: the id of the last event it
    /// finished with. `None` for a consumer that has never stood anywhere.
    fn event_cursor(&self, consumer: &str) -> Result<Option<i64>, StateError>;

    /// Moves a consumer's cursor forward to `after` (never back: a late write
    /// from a slower path cannot make a consumer handle events twice).
    fn set_event_cursor(&self, consumer: &str, after: i64) -> Result<(), StateError>;

    /// The newest event's id (0 for an empty log).
    fn last_event_id(&self) -> Result<i64, StateError>;

    /// A receiver that sees the id of the newest event this process wrote. A
    /// doorbell only: consumers read the log itself from their cursor, so they
    /// miss nothing however far behind they fall (and events written by other
    /// processes are found by reading the log).
    fn event_bell(&self) -> tokio::sync::watch::Receiver<i64>;

    /// The newest event of exactly this kind about this subject.
    fn latest_event(&self, kind: EventKind, subject: &str) -> Result<Option<Event>, StateError>;
}

impl EventLog for Store {
    fn append_event(&self, e: &NewEvent) -> Result<i64, StateError> {
        let id = insert_event(&self.writer(), e).map_err(|e| self.err(e))?;
        self.ring(id);
        Ok(id)
    }

    fn record(&self, e: &NewEvent) {
        if let Err(err) = self.append_event(e) {
            self.write_errors.inc();
            tracing::error!(error = %err, kind = %e.kind, subject = %e.subject, "cannot record an event");
        }
    }

    fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StateError> {
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

    fn event_cursor(&self, consumer: &str) -> Result<Option<i64>, StateError> {
        self.reader()
            .prepare_cached("SELECT after_id FROM event_cursors WHERE consumer = ?1")
            .and_then(|mut st| st.query_row([consumer], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    fn set_event_cursor(&self, consumer: &str, after: i64) -> Result<(), StateError> {
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

    fn last_event_id(&self) -> Result<i64, StateError> {
        self.reader()
            .query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    fn event_bell(&self) -> tokio::sync::watch::Receiver<i64> {
        self.bell.subscribe()
    }

    fn latest_event(&self, kind: EventKind, subject: &str) -> Result<Option<Event>, StateError> {
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
}

/// Alert deliveries: every attempt, for the API and for reminders.
pub trait AlertLog: Send + Sync {
    /// Records an alert delivery attempt.
    fn record_delivery(&self, d: &Delivery) -> Result<(), StateError>;

    /// Time of the latest successful delivery per check (for reminders).
    fn last_delivered(&self) -> Result<BTreeMap<String, i64>, StateError>;

    /// Delivery attempts, newest first.
    fn deliveries(&self, limit: usize) -> Result<Vec<Delivery>, StateError>;
}

impl AlertLog for Store {
    fn record_delivery(&self, d: &Delivery) -> Result<(), StateError> {
        let conn = self.writer();
        conn.prepare_cached(
            "INSERT INTO deliveries (ts, alert, check_name, event_id, attempt, ok, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| s.execute(params![d.ts, d.alert, d.check, d.event_id, d.attempt, d.ok, d.error]))
        .map(|_| ())
        .map_err(|e| self.err(e))
    }

    fn last_delivered(&self) -> Result<BTreeMap<String, i64>, StateError> {
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

    fn deliveries(&self, limit: usize) -> Result<Vec<Delivery>, StateError> {
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
}
