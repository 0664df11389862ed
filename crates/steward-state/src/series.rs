//! Where the metrics store keeps its chunks: `series.db` in the state
//! directory, a SQLite database of its own (a flush of many thousand chunks
//! never waits for, or holds up, the state database's writer).
//!
//! A series is its label set (as JSON, `[["__name__","up"],…]`, sorted by
//! name) and a number; a sealed chunk is one series' compressed samples from
//! `min_t` to `max_t`, a row identified by its series and `min_t` (writing
//! one that is already there replaces it). The chunks still being filled are
//! written together, at every flush, as one snapshot that replaces the last:
//! one row however many series there are. Sealed chunks are also summed up
//! per minute (min, max, sum, count, last), kept longer than they are.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::StateError;

const MIGRATIONS: &[&str] = &[
    // 1: series and their chunks
    "CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        labels TEXT NOT NULL
     );
     CREATE TABLE chunks (
        series INTEGER NOT NULL,
        min_t INTEGER NOT NULL,
        max_t INTEGER NOT NULL,
        count INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (series, min_t)
     ) WITHOUT ROWID;
     CREATE INDEX chunks_max_t ON chunks (max_t);",
    // 2: the chunks still being filled, as one snapshot
    "CREATE TABLE open_chunks (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        data BLOB NOT NULL
     );",
    // 3: per series and minute: min, max, sum, count and the last sample,
    // kept longer than the chunks
    "CREATE TABLE rollups (
        series INTEGER NOT NULL,
        minute INTEGER NOT NULL,
        min REAL NOT NULL,
        max REAL NOT NULL,
        sum REAL NOT NULL,
        count INTEGER NOT NULL,
        last REAL NOT NULL,
        last_t INTEGER NOT NULL,
        PRIMARY KEY (series, minute)
     ) WITHOUT ROWID;
     CREATE INDEX rollups_minute ON rollups (minute);",
];

/// One series' samples of one minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollupRow {
    /// The series' number.
    pub series: i64,
    /// The minute's start (Unix ms, a multiple of 60,000).
    pub minute: i64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of the values.
    pub sum: f64,
    /// Samples.
    pub count: i64,
    /// The minute's last value.
    pub last: f64,
    /// Its time.
    pub last_t: i64,
}

/// A stored chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRow {
    /// The series' number.
    pub series: i64,
    /// Its first sample's time.
    pub min_t: i64,
    /// Its last sample's time.
    pub max_t: i64,
    /// Samples in it.
    pub count: u16,
    /// The encoded samples.
    pub data: Vec<u8>,
}

/// What the metrics store needs to keep its chunks across restarts.
pub trait SeriesChunks: Send + Sync {
    /// One flush, in one transaction: new series (number, labels as JSON)
    /// written, sealed chunks written (replacing any with the same series
    /// and first time), their minutes added to the rollups (a minute split
    /// across two chunks is merged), the snapshot of the open chunks
    /// replaced by `open`, and the series in `dropped` deleted with their
    /// chunks and minutes. Numbers are the caller's to give: one process
    /// writes the file (see [`SeriesDb::open`]).
    fn flush(
        &self,
        new_series: &[(i64, &str)],
        sealed: &[ChunkRow],
        rollups: &mut dyn Iterator<Item = RollupRow>,
        open: &[u8],
        dropped: &[i64],
    ) -> Result<(), StateError>;
    /// A series' minutes from `mint` to `maxt`, in time order.
    fn rollups_of(&self, series: i64, mint: i64, maxt: i64) -> Result<Vec<RollupRow>, StateError>;
    /// Deletes minutes before `before`; returns how many.
    fn drop_rollups_before(&self, before: i64) -> Result<usize, StateError>;
    /// The snapshot of the open chunks the last flush wrote.
    fn open_chunks(&self) -> Result<Option<Vec<u8>>, StateError>;
    /// Every series: number and labels, by number.
    fn all_series(&self) -> Result<Vec<(i64, String)>, StateError>;
    /// Chunks ending at or after `since`, by series and time.
    fn chunks_since(&self, since: i64) -> Result<Vec<ChunkRow>, StateError>;
    /// Per series, the end of its newest chunk ending before `before`.
    fn newest_before(&self, before: i64) -> Result<Vec<(i64, i64)>, StateError>;
    /// A series' chunks that overlap `[mint, maxt]` and end before `below`,
    /// in time order.
    fn chunks_of(
        &self,
        series: i64,
        mint: i64,
        maxt: i64,
        below: i64,
    ) -> Result<Vec<ChunkRow>, StateError>;
    /// Deletes sealed chunks ending before `before`; returns how many. (A
    /// series goes when the store in memory drops it: see `flush`.)
    fn drop_before(&self, before: i64) -> Result<usize, StateError>;
    /// Bytes the database takes on disk.
    fn disk_bytes(&self) -> Result<u64, StateError>;
}

/// The SQLite file `series.db`, held by one process at a time.
pub struct SeriesDb {
    path: PathBuf,
    /// `series.lock`, locked exclusively while this is open.
    _lock: std::fs::File,
    write: Mutex<Connection>,
    read: Mutex<Connection>,
}

impl SeriesDb {
    /// Opens (creating if needed) `series.db` in `dir` (mode 0600, in a
    /// directory of mode 0700), taking the lock `series.lock` beside it:
    /// [`StateError::InUse`] when another process holds it.
    pub fn open(dir: &Path) -> Result<SeriesDb, StateError> {
        crate::create_private_dir(dir).map_err(|source| StateError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock_path = dir.join("series.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StateError::Dir {
                path: lock_path.clone(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StateError::InUse { path: lock_path });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StateError::Dir {
                    path: lock_path,
                    source,
                });
            }
        }
        let path = dir.join("series.db");
        let sq = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        let write = Connection::open(&path).map_err(sq)?;
        crate::restrict_file(&path).map_err(|source| StateError::Dir {
            path: path.clone(),
            source,
        })?;
        // WAL with synchronous=NORMAL: a committed flush survives the
        // process being killed (not necessarily a power cut).
        write
            .execute_batch(
                "PRAGMA busy_timeout=5000; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            )
            .map_err(sq)?;
        crate::schema::migrate_with(&write, &path, MIGRATIONS)?;
        let read = Connection::open(&path).map_err(sq)?;
        read.execute_batch("PRAGMA busy_timeout=5000; PRAGMA query_only=ON;")
            .map_err(sq)?;
        Ok(SeriesDb {
            path,
            _lock: lock,
            write: Mutex::new(write),
            read: Mutex::new(read),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn chunk_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChunkRow> {
    Ok(ChunkRow {
        series: r.get(0)?,
        min_t: r.get(1)?,
        max_t: r.get(2)?,
        count: r.get(3)?,
        data: r.get(4)?,
    })
}

impl SeriesChunks for SeriesDb {
    fn flush(
        &self,
        new_series: &[(i64, &str)],
        sealed: &[ChunkRow],
        rollups: &mut dyn Iterator<Item = RollupRow>,
        open: &[u8],
        dropped: &[i64],
    ) -> Result<(), StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut add = tx
                .prepare_cached("INSERT OR REPLACE INTO series (id, labels) VALUES (?1, ?2)")
                .map_err(|e| self.err(e))?;
            for (id, labels) in new_series {
                add.execute(params![id, labels]).map_err(|e| self.err(e))?;
            }
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO chunks (series, min_t, max_t, count, data)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(|e| self.err(e))?;
            for c in sealed {
                put.execute(params![c.series, c.min_t, c.max_t, c.count, c.data])
                    .map_err(|e| self.err(e))?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO open_chunks (id, data) VALUES (1, ?1)",
                [open],
            )
            .map_err(|e| self.err(e))?;
            let mut minute = tx
                .prepare_cached(
                    "INSERT INTO rollups (series, minute, min, max, sum, count, last, last_t)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (series, minute) DO UPDATE SET
                        min = min(min, excluded.min),
                        max = max(max, excluded.max),
                        sum = sum + excluded.sum,
                        count = count + excluded.count,
                        last = CASE WHEN excluded.last_t >= last_t THEN excluded.last ELSE last END,
                        last_t = max(last_t, excluded.last_t)",
                )
                .map_err(|e| self.err(e))?;
            for r in rollups {
                minute
                    .execute(params![
                        r.series, r.minute, r.min, r.max, r.sum, r.count, r.last, r.last_t
                    ])
                    .map_err(|e| self.err(e))?;
            }
            let mut gone_rollups = tx
                .prepare_cached("DELETE FROM rollups WHERE series = ?1")
                .map_err(|e| self.err(e))?;
            let mut gone_chunks = tx
                .prepare_cached("DELETE FROM chunks WHERE series = ?1")
                .map_err(|e| self.err(e))?;
            let mut gone = tx
                .prepare_cached("DELETE FROM series WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            for id in dropped {
                gone_rollups.execute([id]).map_err(|e| self.err(e))?;
                gone_chunks.execute([id]).map_err(|e| self.err(e))?;
                gone.execute([id]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn open_chunks(&self) -> Result<Option<Vec<u8>>, StateError> {
        let conn = self.reader();
        conn.query_row("SELECT data FROM open_chunks WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| self.err(e))
    }

    fn all_series(&self) -> Result<Vec<(i64, String)>, StateError> {
        let conn = self.reader();
        let mut st = conn
            .prepare("SELECT id, labels FROM series ORDER BY id")
            .map_err(|e| self.err(e))?;
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))
    }

    fn chunks_since(&self, since: i64) -> Result<Vec<ChunkRow>, StateError> {
        let conn = self.reader();
        let mut st = conn
            .prepare(
                "SELECT series, min_t, max_t, count, data FROM chunks
                 WHERE max_t >= ?1 ORDER BY series, min_t",
            )
            .map_err(|e| self.err(e))?;
        st.query_map([since], chunk_row)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))
    }

    fn newest_before(&self, before: i64) -> Result<Vec<(i64, i64)>, StateError> {
        let conn = self.reader();
        let mut st = conn
            .prepare("SELECT series, max(max_t) FROM chunks WHERE max_t < ?1 GROUP BY series")
            .map_err(|e| self.err(e))?;
        st.query_map([before], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))
    }

    fn chunks_of(
        &self,
        series: i64,
        mint: i64,
        maxt: i64,
        below: i64,
    ) -> Result<Vec<ChunkRow>, StateError> {
        let conn = self.reader();
        let mut st = conn
            .prepare_cached(
                "SELECT series, min_t, max_t, count, data FROM chunks
                 WHERE series = ?1 AND min_t <= ?3 AND max_t >= ?2 AND max_t < ?4
                 ORDER BY min_t",
            )
            .map_err(|e| self.err(e))?;
        st.query_map(params![series, mint, maxt, below], chunk_row)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))
    }

    fn drop_before(&self, before: i64) -> Result<usize, StateError> {
        self.writer()
            .execute("DELETE FROM chunks WHERE max_t < ?1", [before])
            .map_err(|e| self.err(e))
    }

    fn rollups_of(&self, series: i64, mint: i64, maxt: i64) -> Result<Vec<RollupRow>, StateError> {
        let conn = self.reader();
        let mut st = conn
            .prepare_cached(
                "SELECT series, minute, min, max, sum, count, last, last_t FROM rollups
                 WHERE series = ?1 AND minute >= ?2 AND minute <= ?3 ORDER BY minute",
            )
            .map_err(|e| self.err(e))?;
        st.query_map(params![series, mint.saturating_sub(59_999), maxt], |r| {
            Ok(RollupRow {
                series: r.get(0)?,
                minute: r.get(1)?,
                min: r.get(2)?,
                max: r.get(3)?,
                sum: r.get(4)?,
                count: r.get(5)?,
                last: r.get(6)?,
                last_t: r.get(7)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.err(e))
    }

    fn drop_rollups_before(&self, before: i64) -> Result<usize, StateError> {
        self.writer()
            .execute("DELETE FROM rollups WHERE minute < ?1", [before])
            .map_err(|e| self.err(e))
    }

    fn disk_bytes(&self) -> Result<u64, StateError> {
        let conn = self.reader();
        let pages: i64 = conn
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        let wal = std::fs::metadata(self.path.with_extension("db-wal")).map_or(0, |m| m.len());
        Ok(pages as u64 + wal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(series: i64, min_t: i64, max_t: i64, count: u16) -> ChunkRow {
        ChunkRow {
            series,
            min_t,
            max_t,
            count,
            data: vec![count as u8; 3],
        }
    }

    #[test]
    fn chunks_and_the_open_snapshot_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = SeriesDb::open(dir.path()).unwrap();
        // One process at a time.
        assert!(matches!(
            SeriesDb::open(dir.path()),
            Err(StateError::InUse { .. })
        ));
        let ids = [1, 2];
        let new = [(1, r#"[["__name__","up"]]"#), (2, r#"[["__name__","x"]]"#)];
        assert_eq!(db.open_chunks().unwrap(), None);
        db.flush(
            &new,
            &[chunk(ids[0], 0, 10, 2), chunk(ids[1], 0, 10, 2)],
            &mut std::iter::empty(),
            b"first",
            &[],
        )
        .unwrap();
        // A rewrite replaces a chunk; the snapshot is replaced whole.
        db.flush(
            &[],
            &[chunk(ids[0], 0, 20, 3), chunk(ids[0], 30, 40, 2)],
            &mut std::iter::empty(),
            b"second",
            &[],
        )
        .unwrap();
        drop(db);
        let db = SeriesDb::open(dir.path()).unwrap();
        assert_eq!(db.open_chunks().unwrap().as_deref(), Some(&b"second"[..]));
        assert_eq!(db.all_series().unwrap().len(), 2);
        let got = db.chunks_since(15).unwrap();
        assert_eq!(got, vec![chunk(ids[0], 0, 20, 3), chunk(ids[0], 30, 40, 2)]);
        assert_eq!(
            db.newest_before(30).unwrap(),
            vec![(ids[0], 20), (ids[1], 10)]
        );
        assert_eq!(
            db.chunks_of(ids[0], 25, 100, 100).unwrap(),
            vec![chunk(ids[0], 30, 40, 2)]
        );
        assert_eq!(db.chunks_of(ids[0], 0, 100, 40).unwrap().len(), 1);
        // Retention: chunks ending before 15 go; a dropped series goes with
        // its chunks.
        assert_eq!(db.drop_before(15).unwrap(), 1);
        db.flush(&[], &[], &mut std::iter::empty(), b"third", &[ids[0]])
            .unwrap();
        assert_eq!(
            db.all_series().unwrap(),
            vec![(ids[1], new[1].1.to_string())]
        );
        assert!(db.chunks_since(i64::MIN).unwrap().is_empty());
        assert!(db.disk_bytes().unwrap() > 0);
    }

    #[test]
    fn a_minute_split_across_two_flushes_is_merged() {
        let dir = tempfile::tempdir().unwrap();
        let db = SeriesDb::open(dir.path()).unwrap();
        let row = |min: f64, max: f64, sum: f64, count: i64, last: f64, last_t: i64| RollupRow {
            series: 7,
            minute: 60_000,
            min,
            max,
            sum,
            count,
            last,
            last_t,
        };
        db.flush(
            &[(7, "[]")],
            &[],
            &mut [row(1.0, 5.0, 9.0, 3, 3.0, 80_000)].into_iter(),
            b"",
            &[],
        )
        .unwrap();
        db.flush(
            &[],
            &[],
            &mut [row(0.5, 4.0, 4.5, 2, 4.0, 110_000)].into_iter(),
            b"",
            &[],
        )
        .unwrap();
        assert_eq!(
            db.rollups_of(7, 60_000, 119_999).unwrap(),
            [row(0.5, 5.0, 13.5, 5, 4.0, 110_000)]
        );
        // A range starting inside the minute still gets it.
        assert_eq!(db.rollups_of(7, 90_000, 200_000).unwrap().len(), 1);
        assert_eq!(db.drop_rollups_before(120_000).unwrap(), 1);
        assert!(db.rollups_of(7, 0, i64::MAX).unwrap().is_empty());
    }
}
