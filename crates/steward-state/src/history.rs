//! Check results and rollups: the state boundary of health monitoring.

use super::*;

/// Check results, their rollups and each check's current state: the state
/// boundary of health monitoring. Results are written in batches, with the
/// transitions they caused, in one transaction.
pub trait CheckHistory: Send + Sync {
    /// Writes results (with their rollups), check states and events in one
    /// transaction, so a crash never leaves a transition without its event.
    /// Returns the ids of the appended events, in order.
    fn write_batch(
        &self,
        results: &[ResultRow],
        states: &[CheckStateRow],
        events: &[NewEvent],
    ) -> Result<Vec<i64>, StateError>;

    /// Persisted state of every check.
    fn check_states(&self) -> Result<BTreeMap<String, CheckStateRow>, StateError>;

    /// Raw results of a check in `[from, to)`, newest first, at most `limit`.
    fn results(
        &self,
        check: &str,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<Vec<ResultRow>, StateError>;

    /// Aggregated buckets of a check in `[from, to)`, oldest first; `hourly`
    /// picks hour buckets instead of minute buckets.
    fn series(
        &self,
        check: &str,
        from: i64,
        to: i64,
        hourly: bool,
    ) -> Result<Vec<Bucket>, StateError>;

    /// Buckets of every check since `from`, grouped by check, oldest first.
    fn series_all(
        &self,
        from: i64,
        hourly: bool,
    ) -> Result<BTreeMap<String, Vec<Bucket>>, StateError>;

    /// Uptime of every check over 1h (minute buckets), 24h (hour buckets) and
    /// 7d/30d (day buckets, so the oldest day counts whole). Warn counts as up.
    /// Reads at most 60 + 25 + 31 rows per check, whatever the history length.
    fn uptime_all(&self, now: i64) -> Result<BTreeMap<String, Uptime>, StateError>;

    /// Removes check state rows for checks no longer in the spec.
    fn forget_checks_except(&self, keep: &[&str]) -> Result<usize, StateError>;

    /// Deletes at most `limit` rows of each kind of history older than the
    /// retention allows (raw results, minute, hour and day rollups, events,
    /// deliveries), each kind in a transaction of its own, so the write lock
    /// is never held for long. Returns rows removed; call again until 0.
    fn prune_slice(&self, now: i64, keep: RetentionMs, limit: usize) -> Result<usize, StateError>;

    /// Deletes all history older than the retention allows, slice by slice.
    /// Returns rows removed.
    fn prune(&self, now: i64, keep: RetentionMs) -> Result<usize, StateError> {
        let mut total = 0;
        loop {
            match self.prune_slice(now, keep, 10_000)? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }
}

impl CheckHistory for Store {
    fn write_batch(
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

    fn check_states(&self) -> Result<BTreeMap<String, CheckStateRow>, StateError> {
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

    fn results(
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

    fn series(
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

    fn series_all(
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

    fn uptime_all(&self, now: i64) -> Result<BTreeMap<String, Uptime>, StateError> {
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

    fn forget_checks_except(&self, keep: &[&str]) -> Result<usize, StateError> {
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

    fn prune_slice(&self, now: i64, keep: RetentionMs, limit: usize) -> Result<usize, StateError> {
        // (table, key, condition, cutoff): each DELETE takes at most `limit`
        // rows through the time index and commits on its own. Rollups have
        // no rowid; their key is the primary key.
        const ROLLUP: &str = "(check_name, res, bucket)";
        let cuts: [(&str, &str, &str, i64); 6] = [
            ("results", "rowid", "ts", now - keep.raw),
            ("rollups", ROLLUP, "res = 60 AND bucket", now - keep.minute),
            ("rollups", ROLLUP, "res = 3600 AND bucket", now - keep.hour),
            ("rollups", ROLLUP, "res = 86400 AND bucket", now - keep.day),
            ("events", "rowid", "ts", now - keep.events),
            ("deliveries", "rowid", "ts", now - keep.events),
        ];
        let mut n = 0;
        for (table, key, cond, cutoff) in cuts {
            let inner = key.trim_matches(|c| c == '(' || c == ')');
            let sql = format!(
                "DELETE FROM {table} WHERE {key} IN (SELECT {inner} FROM {table} WHERE {cond} < ?1 LIMIT ?2)"
            );
            n += self
                .writer()
                .prepare_cached(&sql)
                .and_then(|mut st| st.execute(params![cutoff, limit as i64]))
                .map_err(|e| self.err(e))?;
        }
        Ok(n)
    }
}
