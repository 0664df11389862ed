//! Backup sources that are not plain file trees: streamed command output (database
//! dumps), SQLite online copies, and log files with their rotated siblings.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use rustic_core::repofile::{Metadata, Node, NodeType, SnapshotFile};
use rustic_core::{
    BackupOptions, IndexedIds, ReadSource, ReadSourceEntry, Repository, RusticResult,
};

use crate::{BackupError, repo_err};

/// Log files matching `patterns`, each with its rotated siblings (`app.log.1`,
/// `app.log.2.gz`, …), sorted and without duplicates.
pub(crate) fn log_files(patterns: &[String]) -> Result<Vec<PathBuf>, BackupError> {
    let mut out = std::collections::BTreeSet::new();
    for pat in patterns {
        let matches = glob::glob(pat)
            .map_err(|e| BackupError::Source(format!("bad pattern `{pat}`: {e}")))?;
        for m in matches.flatten() {
            if !m.is_file() {
                continue;
            }
            let Some(name) = m.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            if let Some(dir) = m.parent()
                && let Ok(rd) = std::fs::read_dir(dir)
            {
                for e in rd.flatten() {
                    let sib = e.file_name().to_string_lossy().into_owned();
                    if is_rotation(&name, &sib) && e.path().is_file() {
                        out.insert(e.path());
                    }
                }
            }
            out.insert(m);
        }
    }
    Ok(out.into_iter().collect())
}

/// `app.log.1`, `app.log.12.gz`, `app.log.gz` are rotations of `app.log`.
fn is_rotation(base: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(base).and_then(|r| r.strip_prefix('.')) else {
        return false;
    };
    let rest = ["gz", "xz", "zst", "bz2"]
        .iter()
        .find_map(|ext| rest.strip_suffix(ext).map(|r| r.trim_end_matches('.')))
        .unwrap_or(rest);
    rest.is_empty() || rest.chars().all(|c| c.is_ascii_digit())
}

/// A consistent copy of a live SQLite database (online backup API), in a private
/// temporary directory that lives as long as the returned value.
pub(crate) struct SqliteCopy {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SqliteCopy {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

pub(crate) fn sqlite_copy(db: &Path) -> Result<SqliteCopy, BackupError> {
    let src_err =
        |e: rusqlite::Error| BackupError::Source(format!("SQLite `{}`: {e}", db.display()));
    if !db.is_file() {
        return Err(BackupError::Source(format!(
            "SQLite database `{}` does not exist",
            db.display()
        )));
    }
    let src = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(src_err)?;
    let dir = tempfile::Builder::new()
        .prefix("steward-sqlite-")
        .tempdir()
        .map_err(|e| BackupError::Source(format!("temporary directory: {e}")))?;
    let path = dir
        .path()
        .join(db.file_name().unwrap_or_else(|| "db.sqlite".as_ref()));
    let mut dst = rusqlite::Connection::open(&path).map_err(src_err)?;
    {
        let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(src_err)?;
        // Small steps let the application keep writing while the copy is made.
        b.run_to_completion(256, std::time::Duration::from_millis(5), None)
            .map_err(src_err)?;
    }
    drop(dst);
    Ok(SqliteCopy { _dir: dir, path })
}

/// Connection settings of a PostgreSQL URL as libpq environment variables, so the
/// password never appears on a command line.
pub(crate) fn pg_env(url: &str) -> Result<Vec<(&'static str, String)>, BackupError> {
    let u = url::Url::parse(url).map_err(|e| BackupError::Source(format!("postgres URL: {e}")))?;
    if !matches!(u.scheme(), "postgres" | "postgresql") {
        return Err(BackupError::Source(
            "postgres URL must start with postgres://".into(),
        ));
    }
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut env = vec![("PGHOST", u.host_str().unwrap_or("localhost").to_string())];
    if let Some(p) = u.port() {
        env.push(("PGPORT", p.to_string()));
    }
    if !u.username().is_empty() {
        env.push(("PGUSER", dec(u.username())));
    }
    if let Some(p) = u.password() {
        env.push(("PGPASSWORD", dec(p)));
    }
    let db = u.path().trim_start_matches('/');
    if !db.is_empty() {
        env.push(("PGDATABASE", dec(db)));
    }
    for (k, v) in u.query_pairs() {
        if k == "sslmode" {
            env.push(("PGSSLMODE", v.into_owned()));
        }
    }
    Ok(env)
}

/// The directory of the newest PostgreSQL client tools installed (Debian keeps
/// each major version under /usr/lib/postgresql/N/bin). A newer pg_dump reads
/// older servers; an older one refuses newer servers.
pub(crate) fn pg_bin(bin_dir: Option<&Path>, tool: &str) -> PathBuf {
    if let Some(d) = bin_dir {
        return d.join(tool);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let p = e.path().join("bin").join(tool);
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .unwrap_or_else(|| PathBuf::from(tool))
}

/// `pg_dump` in custom format (compressed, restorable table by table).
pub(crate) fn pg_dump(url: &str, bin_dir: Option<&Path>) -> Result<Command, BackupError> {
    let mut c = Command::new(pg_bin(bin_dir, "pg_dump"));
    c.args(["--format=custom", "--no-password"]);
    c.envs(pg_env(url)?);
    Ok(c)
}

/// `pg_restore` into the database of `url`, replacing what the dump contains.
pub fn pg_restore(url: &str, bin_dir: Option<&Path>) -> Result<Command, BackupError> {
    let mut c = Command::new(pg_bin(bin_dir, "pg_restore"));
    c.args([
        "--clean",
        "--if-exists",
        "--no-owner",
        "--no-password",
        "--exit-on-error",
    ]);
    let env = pg_env(url)?;
    let db = env
        .iter()
        .find(|(k, _)| *k == "PGDATABASE")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| BackupError::Source("the postgres URL names no database".into()))?;
    c.arg(format!("--dbname={db}"));
    c.envs(env);
    Ok(c)
}

/// Where a database dump sits inside its snapshot.
pub(crate) fn dump_path(url: &str) -> PathBuf {
    let db = url::Url::parse(url)
        .ok()
        .map(|u| u.path().trim_start_matches('/').to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "postgres".into());
    PathBuf::from(format!("/postgres/{db}.dump"))
}

/// The producer's fate, read after the archive finished.
#[derive(Default)]
struct Outcome {
    failed: Option<String>,
}

/// Reads a child's stdout; at end of stream it waits for the child and turns a
/// failed exit into a read error (and a recorded failure).
struct ChildReader {
    out: ChildStdout,
    child: Arc<Mutex<Child>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    outcome: Arc<Mutex<Outcome>>,
    what: String,
}

impl Read for ChildReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.out.read(buf)?;
        if n == 0 {
            let status = self.child.lock().expect("child").wait()?;
            if !status.success() {
                let err = String::from_utf8_lossy(&self.stderr.lock().expect("stderr"))
                    .trim()
                    .to_string();
                let tail: String = err
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join(" / ");
                let msg = format!(
                    "`{}` failed ({status}){}{tail}",
                    self.what,
                    if tail.is_empty() { "" } else { ": " }
                );
                self.outcome.lock().expect("outcome").failed = Some(msg.clone());
                return Err(std::io::Error::other(msg));
            }
        }
        Ok(n)
    }
}

struct StreamSource {
    path: PathBuf,
    reader: Mutex<Option<ChildReader>>,
}

impl ReadSource for StreamSource {
    type Open = ChildReader;
    type Iter = std::iter::Once<RusticResult<ReadSourceEntry<ChildReader>>>;

    fn size(&self) -> RusticResult<Option<u64>> {
        Ok(None)
    }

    fn entries(&self) -> Self::Iter {
        let name = self.path.file_name().unwrap_or_default().to_os_string();
        let meta = Metadata {
            mode: Some(0o100600),
            mtime: Some(rustic_core::jiff::Timestamp::now()),
            ..Metadata::default()
        };
        let node = Node::new_node(&name, NodeType::File, meta);
        std::iter::once(Ok(ReadSourceEntry {
            path: self.path.clone(),
            node,
            open: self.reader.lock().expect("reader").take(),
        }))
    }
}

/// Streams a command's standard output into one file of a new snapshot. When the
/// command fails (or the archive does), no snapshot remains.
pub(crate) fn archive_stream<S: IndexedIds>(
    repo: &Repository<S>,
    opts: &BackupOptions,
    mut cmd: Command,
    path: PathBuf,
    snap: SnapshotFile,
) -> Result<SnapshotFile, BackupError> {
    let what = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BackupError::Source(format!("cannot run `{what}`: {e}")))?;
    let out = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let stderr2 = stderr.clone();
    let collector = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        // Keep the end: that is where tools say what went wrong.
        let start = buf.len().saturating_sub(4096);
        *stderr2.lock().expect("stderr") = buf[start..].to_vec();
    });
    let child = Arc::new(Mutex::new(child));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let src = StreamSource {
        path: path.clone(),
        reader: Mutex::new(Some(ChildReader {
            out,
            child: child.clone(),
            stderr: stderr.clone(),
            outcome: outcome.clone(),
            what: what.clone(),
        })),
    };
    let mut opts = opts.clone();
    opts.parent_opts.force = true;
    let result = repo.archive(&opts, &src, snap, &[path]);
    // The reader may not have reached the end (archive failed): stop the producer.
    {
        let mut c = child.lock().expect("child");
        if c.try_wait().ok().flatten().is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    let _ = collector.join();
    let snap = result.map_err(repo_err)?;
    let failed = outcome.lock().expect("outcome").failed.take();
    if let Some(msg) = failed {
        // rustic keeps going past a failed read; this snapshot must not stay.
        let _ = repo.delete_snapshots(&[snap.id]);
        return Err(BackupError::Source(msg));
    }
    Ok(snap)
}

/// The same connection with another database name.
pub(crate) fn with_database(url: &str, db: &str) -> Result<String, BackupError> {
    let mut u =
        url::Url::parse(url).map_err(|e| BackupError::Source(format!("postgres URL: {e}")))?;
    u.set_path(&format!("/{db}"));
    Ok(u.to_string())
}

/// Runs a PostgreSQL client tool (createdb, dropdb) with the URL's credentials.
pub(crate) fn pg_tool(
    url: &str,
    bin_dir: Option<&Path>,
    tool: &str,
    args: &[&str],
) -> Result<(), BackupError> {
    let mut env = pg_env(url)?;
    // The maintenance database to connect to while creating or dropping another.
    env.retain(|(k, _)| *k != "PGDATABASE");
    env.push(("PGDATABASE", "postgres".into()));
    let out = Command::new(pg_bin(bin_dir, tool))
        .args(args)
        .arg("--no-password")
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BackupError::Source(format!("cannot run {tool}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BackupError::Source(format!(
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Rows a query returns (psql, tuples only).
pub(crate) fn psql_rows(
    url: &str,
    bin_dir: Option<&Path>,
    query: &str,
) -> Result<usize, BackupError> {
    let out = Command::new(pg_bin(bin_dir, "psql"))
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "--no-password",
            "-c",
            query,
        ])
        .envs(pg_env(url)?)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BackupError::Source(format!("cannot run psql: {e}")))?;
    if !out.status.success() {
        return Err(BackupError::Source(format!(
            "verify_query failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .count())
}

/// Regular files and their total size under a directory.
pub(crate) fn tree_size(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_are_recognised() {
        assert!(is_rotation("app.log", "app.log.1"));
        assert!(is_rotation("app.log", "app.log.12.gz"));
        assert!(is_rotation("app.log", "app.log.gz"));
        assert!(!is_rotation("app.log", "app.log.bak"));
        assert!(!is_rotation("app.log", "app.logs"));
        assert!(!is_rotation("app.log", "other.log.1"));
    }

    #[test]
    fn postgres_urls_become_libpq_environment() {
        let env =
            pg_env("postgres://app:p%40ss@db.internal:5433/fractals?sslmode=require").unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGHOST"), Some("db.internal"));
        assert_eq!(get("PGPORT"), Some("5433"));
        assert_eq!(get("PGUSER"), Some("app"));
        assert_eq!(get("PGPASSWORD"), Some("p@ss"));
        assert_eq!(get("PGDATABASE"), Some("fractals"));
        assert_eq!(get("PGSSLMODE"), Some("require"));
    }
}
