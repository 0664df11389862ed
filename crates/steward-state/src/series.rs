//! Where the metrics store keeps its chunks: `series.db` in the state
//! directory, a SQLite database of its own (a flush of many thousand chunks
//! never waits for, or holds up, the state database's writer).
//!
//! A series is its label set (as JSON, `[["__name__","up"],…]`, sorted by
//! name) and a number; a chunk is one series' compressed samples from
//! `min_t` to `max_t`, identified by its series and `min_t`. Writing a chunk
//! that is already there replaces it: a chunk still being filled is written
//! again at every flush until it is sealed.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, params};

use crate::StateError;

const MIGRATIONS: &[&str] = &[
    // 1: series and their chunks
    "CREATE TABLE series (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        labels TEXT NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL
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
];

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
    /// The numbers of these label sets (JSON), each created when new.
    fn series_ids(&self, labels: &[String], now_ms: i64) -> Result<Vec<i64>, StateError>;
    /// Writes chunks in one transaction, replacing any with the same series
    /// and first time.
    fn write_chunks(&self, chunks: &[ChunkRow]) -> Result<(), StateError>;
    /// Every series: number and labels.
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
    /// Deletes chunks ending before `before`, then series created before
    /// it that have no chunk left. Returns (chunks, series) deleted.
    fn drop_before(&self, before: i64) -> Result<(usize, usize), StateError>;
    /// Bytes the database takes on disk.
    fn disk_bytes(&self) -> Result<u64, StateError>;
}

/// The SQLite file `series.db`.
pub struct SeriesDb {
    path: PathBuf,
    write: Mutex<Connection>,
    read: Mutex<Connection>,
}

impl SeriesDb {
    /// Opens (creating if needed) `series.db` in `dir` (mode 0600, in a
    /// directory of mode 0700).
    pub fn open(dir: &Path) -> Result<SeriesDb, StateError> {
        crate::create_private_dir(dir).map_err(|source| StateError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
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
    fn series_ids(&self, labels: &[String], now_ms: i64) -> Result<Vec<i64>, StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(labels.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO series (labels, created_ms) VALUES (?1, ?2)
                     ON CONFLICT (labels) DO UPDATE SET created_ms = created_ms
                     RETURNING id",
                )
                .map_err(|e| self.err(e))?;
            for l in labels {
                out.push(
                    insert
                        .query_row(params![l, now_ms], |r| r.get(0))
                        .map_err(|e| self.err(e))?,
                );
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn write_chunks(&self, chunks: &[ChunkRow]) -> Result<(), StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO chunks (series, min_t, max_t, count, data)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(|e| self.err(e))?;
            for c in chunks {
                put.execute(params![c.series, c.min_t, c.max_t, c.count, c.data])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
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

    fn drop_before(&self, before: i64) -> Result<(usize, usize), StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let chunks = tx
            .execute("DELETE FROM chunks WHERE max_t < ?1", [before])
            .map_err(|e| self.err(e))?;
        let series = tx
            .execute(
                "DELETE FROM series WHERE created_ms < ?1
                 AND NOT EXISTS (SELECT 1 FROM chunks WHERE chunks.series = series.id)",
                [before],
            )
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok((chunks, series))
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
    fn chunks_survive_a_reopen_and_a_rewrite_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = SeriesDb::open(dir.path()).unwrap();
        let ids = db
            .series_ids(
                &[
                    r#"[["__name__","up"]]"#.into(),
                    r#"[["__name__","x"]]"#.into(),
                ],
                1,
            )
            .unwrap();
        assert_ne!(ids[0], ids[1]);
        // The same labels again: the same number.
        assert_eq!(
            db.series_ids(&[r#"[["__name__","x"]]"#.into()], 2).unwrap(),
            vec![ids[1]]
        );
        db.write_chunks(&[chunk(ids[0], 0, 10, 2), chunk(ids[1], 0, 10, 2)])
            .unwrap();
        // The open chunk grows and is written again; a sealed one follows.
        db.write_chunks(&[chunk(ids[0], 0, 20, 3), chunk(ids[0], 30, 40, 2)])
            .unwrap();
        drop(db);
        let db = SeriesDb::open(dir.path()).unwrap();
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
        // Retention: chunks ending before 15 go, and with them the series
        // left with none (created before the cut).
        assert_eq!(db.drop_before(15).unwrap(), (1, 1));
        assert_eq!(
            db.all_series().unwrap(),
            vec![(ids[0], r#"[["__name__","up"]]"#.into())]
        );
        assert!(db.disk_bytes().unwrap() > 0);
    }
}
