//! Backups in restic's repository format, through `rustic_core`, on steward's
//! object stores: a local directory, OpenStack Swift.
//!
//! One `[backup.NAME]` has one source and one repository; every run makes one
//! snapshot tagged `steward:NAME`. Streams (a database dump, a command's output)
//! go straight into the repository without a temporary file, and a stream whose
//! producer fails never becomes a snapshot. Retention is decided by the pure
//! [`retention::select_kept`]; everything else is rustic's, so the repository can
//! always be read and restored with restic itself.

mod backend;
pub mod controller;
mod progress;
mod restore;
/// Retention is a pure policy over `Keep`, shared with server snapshots.
pub use steward_spec::retention;
mod sources;
mod unreadable;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rustic_core::repofile::SnapshotFile;
use rustic_core::{
    BackupOptions, CheckOptions, ConfigOptions, Credentials, KeyOptions, OpenStatus, PathList,
    PruneOptions, Repository, RepositoryBackends, RepositoryOptions, SnapshotOptions,
};
use serde::Serialize;
use steward_objects::{ObjectStore, Prefixed};
use steward_spec::{Backup, Resolver, Source, Spec};

pub use progress::enable_terminal_progress;
pub use retention::{Decision, Snap, select_kept};

/// Why a backup operation failed. Never contains the password or store keys.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A secret reference could not be resolved.
    #[error("{0}")]
    Secret(String),
    /// The store could not be set up.
    #[error("store `{store}`: {source}")]
    Store {
        /// Store name.
        store: String,
        /// What failed.
        source: steward_objects::StoreError,
    },
    /// The repository password is wrong.
    #[error("wrong password for repository {location} (or no key in it matches)")]
    WrongPassword {
        /// Where the repository is.
        location: String,
    },
    /// There is no repository yet (nothing was ever backed up).
    #[error("no repository at {location} yet; `steward backup run {backup}` creates it")]
    NoRepository {
        /// Where it would be.
        location: String,
        /// Backup name.
        backup: String,
    },
    /// The source could not be read (a failed dump, a missing path).
    #[error("source: {0}")]
    Source(String),
    /// rustic reported an error.
    #[error("{0}")]
    Repo(String),
    /// No snapshot matched.
    #[error("{0}")]
    NoSnapshot(String),
}

#[allow(clippy::boxed_local)] // rustic's errors arrive boxed
fn repo_err(e: Box<rustic_core::RusticError>) -> BackupError {
    BackupError::Repo(concise(&e.display_log()))
}

/// rustic's reports run to pages (context, backtrace); people need the first line
/// and the message — in steward's words: its advice names `rustic` commands a
/// steward user does not have.
fn concise(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default().to_string();
    let message = text
        .split_once("Message:")
        .and_then(|(_, rest)| rest.lines().map(str::trim).find(|l| !l.is_empty()))
        .filter(|m| !first.contains(m));
    steward_words(&match message {
        Some(m) => format!("{first} {m}"),
        None => first,
    })
}

/// rustic_core's advice, said with steward's commands.
fn steward_words(text: &str) -> String {
    const REPAIR: &str = "To repair: 'rustic repair index'.";
    let advice = if !text.contains(REPAIR) {
        ""
    } else if text.contains("not referenced in index") {
        "`steward backup prune` removes it."
    } else if text.contains("not present") {
        "Its data is lost: `steward backup check --read-data` lists what is damaged, and `steward backup run` stores the current data again."
    } else {
        "`steward backup check --read-data` tells whether its content is intact."
    };
    let text = text
        .replace(REPAIR, advice)
        .replace(
            "You can also try to run `rustic check --read-data` to check for corruption. This may take a long time.",
            "`steward backup check --read-data` finds every damaged pack (it reads them all).",
        )
        .replace(
            "You can also try to run `rustic check` to check for corruption.",
            "`steward backup check` looks for damage.",
        )
        .replace("`rustic_core` experienced an error", "The repository had an error");
    // Whatever other advice names a rustic command goes.
    text.split_inclusive(". ")
        .filter(|sentence| !sentence.contains("`rustic ") && !sentence.contains("'rustic "))
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// A backup's repository, opened.
pub struct Opened {
    repo: Repository<OpenStatus>,
    /// Where it is (no credentials).
    pub location: String,
    backup: Backup,
}

/// Opens a backup's repository; with `create`, initialises it when missing.
pub fn open(
    spec: &Spec,
    backup: &Backup,
    resolver: &dyn Resolver,
    create: bool,
) -> Result<Opened, BackupError> {
    let store = steward_objects::open(spec, &backup.store, resolver).map_err(|e| match e {
        steward_objects::OpenError::Store { store, source } => BackupError::Store { store, source },
        other => BackupError::Secret(other.to_string()),
    })?;
    let store: Arc<dyn ObjectStore> = Arc::new(Prefixed::new(store, &backup.repository));
    open_store(
        store,
        backup,
        resolver,
        create,
        Some(&spec.settings.state_dir.join("backup-cache")),
    )
}

/// Opens (or creates) the repository in `store` for `backup`.
/// `cache`: where rustic keeps decrypted index and snapshot files (none: no cache).
pub fn open_store(
    store: Arc<dyn ObjectStore>,
    backup: &Backup,
    resolver: &dyn Resolver,
    create: bool,
    cache: Option<&Path>,
) -> Result<Opened, BackupError> {
    let location = store.location();
    let password = backup
        .password
        .resolve(resolver)
        .map_err(|e| BackupError::Secret(format!("backup `{}` password: {e}", backup.name)))?;
    let be = Arc::new(backend::ResticBackend::new(store));
    let backends = RepositoryBackends::new(be, None);
    let mut opts = RepositoryOptions::default();
    match cache {
        Some(dir) => opts.cache_dir = Some(dir.to_path_buf()),
        None => opts.no_cache = true,
    }
    let repo = if progress::enabled() {
        Repository::new_with_progress(&opts, &backends, progress::TerminalProgress)
    } else {
        Repository::new(&opts, &backends)
    }
    .map_err(repo_err)?;
    let creds = Credentials::password(password.expose());
    let exists = repo.config_id().map_err(repo_err)?.is_some();
    let repo = if exists {
        repo.open(&creds).map_err(|e| {
            if e.is_incorrect_password() {
                BackupError::WrongPassword {
                    location: location.clone(),
                }
            } else {
                repo_err(e)
            }
        })?
    } else if create {
        repo.init(&creds, &KeyOptions::default(), &ConfigOptions::default())
            .map_err(repo_err)?
    } else {
        return Err(BackupError::NoRepository {
            location,
            backup: backup.name.clone(),
        });
    };
    Ok(Opened {
        repo,
        location,
        backup: backup.clone(),
    })
}

/// The tag every snapshot of a backup carries.
pub fn tag(backup: &str) -> String {
    format!("steward:{backup}")
}

/// A snapshot, as steward shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    /// Short id (8 hex digits, as restic prints it).
    pub short_id: String,
    /// Full id.
    pub id: String,
    /// When (RFC 3339).
    pub time: String,
    /// Unix ms.
    pub time_ms: i64,
    /// Paths in the snapshot.
    pub paths: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Host that made it.
    pub hostname: String,
    /// Bytes read from the source.
    pub bytes: u64,
    /// Bytes it added to the repository (before compression).
    pub added: u64,
    /// Files in it.
    pub files: u64,
}

fn info(s: &SnapshotFile) -> SnapshotInfo {
    let id = s.id.to_hex().to_string();
    SnapshotInfo {
        short_id: id[..8].to_string(),
        id,
        time: s.time.strftime("%Y-%m-%d %H:%M:%S %Z").to_string(),
        time_ms: s.time.timestamp().as_millisecond(),
        paths: s.paths.iter().cloned().collect(),
        tags: s.tags.iter().cloned().collect(),
        hostname: s.hostname.clone(),
        bytes: s
            .summary
            .as_ref()
            .map(|x| x.total_bytes_processed)
            .unwrap_or(0),
        added: s.summary.as_ref().map(|x| x.data_added).unwrap_or(0),
        files: s
            .summary
            .as_ref()
            .map(|x| x.total_files_processed)
            .unwrap_or(0),
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The new snapshot.
    pub snapshot: SnapshotInfo,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Files and directories that could not be read, so are not in the
    /// snapshot (it is then tagged `partial`).
    pub unreadable: u64,
    /// The first of them, as `path: reason`.
    pub unreadable_first: Vec<String>,
}

/// The tag of a snapshot that lacks entries its source could not read.
pub const PARTIAL: &str = "partial";

impl RunReport {
    /// For a partial snapshot, what it lacks, in one sentence.
    pub fn partial_note(&self) -> Option<String> {
        (self.unreadable > 0).then(|| {
            format!(
                "partial: {} file(s) or folder(s) could not be read and are not in it ({}{})",
                self.unreadable,
                self.unreadable_first.join("; "),
                if self.unreadable > self.unreadable_first.len() as u64 {
                    "; …"
                } else {
                    ""
                }
            )
        })
    }

    /// The severity of its event: a partial snapshot is a warning.
    pub fn severity(&self) -> steward_state::Severity {
        if self.unreadable > 0 {
            steward_state::Severity::Warning
        } else {
            steward_state::Severity::Info
        }
    }
}

/// Re-saves `saved` with the `partial` tag, as restic's `tag` does (a new
/// snapshot file with the same content, the old one removed), and returns it.
fn mark_partial<S: rustic_core::IndexedIds>(
    repo: &Repository<S>,
    saved: SnapshotFile,
) -> Result<SnapshotFile, BackupError> {
    let old = saved.id;
    let mut snap = saved;
    snap.tags.add(PARTIAL.to_string());
    repo.save_snapshots(vec![snap.clone()]).map_err(repo_err)?;
    repo.delete_snapshots(&[old]).map_err(repo_err)?;
    repo.get_all_snapshots()
        .map_err(repo_err)?
        .into_iter()
        .find(|s| s.id != old && s.time == snap.time && s.tags.contains(PARTIAL))
        .ok_or_else(|| BackupError::Repo("the partial snapshot was not saved".into()))
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The snapshot restored.
    pub snapshot: SnapshotInfo,
    /// Where to.
    pub target: String,
    /// Wall time in seconds.
    pub seconds: f64,
}

impl Opened {
    /// This backup's snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, BackupError> {
        Ok(self.snapshot_files()?.iter().map(info).collect())
    }

    fn snapshot_files(&self) -> Result<Vec<SnapshotFile>, BackupError> {
        let t = tag(&self.backup.name);
        let mut snaps = self
            .repo
            .get_matching_snapshots(|s| s.tags.contains(&t))
            .map_err(repo_err)?;
        snaps.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(snaps)
    }

    /// Every snapshot in the repository, whatever made it (restic included).
    pub fn all_snapshots(&self) -> Result<Vec<SnapshotInfo>, BackupError> {
        let mut snaps = self.repo.get_all_snapshots().map_err(repo_err)?;
        snaps.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(snaps.iter().map(info).collect())
    }

    fn find(&self, snapshot: Option<&str>) -> Result<SnapshotFile, BackupError> {
        let snaps = self.snapshot_files()?;
        match snapshot {
            None | Some("latest") => snaps.into_iter().next_back().ok_or_else(|| {
                BackupError::NoSnapshot(format!(
                    "backup `{}` has no snapshot yet",
                    self.backup.name
                ))
            }),
            Some(id) => {
                let all = self.repo.get_all_snapshots().map_err(repo_err)?;
                let matches: Vec<SnapshotFile> = all
                    .into_iter()
                    .filter(|s| s.id.to_hex().starts_with(id))
                    .collect();
                match matches.len() {
                    1 => Ok(matches.into_iter().next().expect("one")),
                    0 => Err(BackupError::NoSnapshot(format!(
                        "no snapshot `{id}` in {}",
                        self.location
                    ))),
                    n => Err(BackupError::NoSnapshot(format!(
                        "`{id}` matches {n} snapshots; give more digits"
                    ))),
                }
            }
        }
    }

    /// Runs the backup: one new snapshot.
    pub fn run(self, resolver: &dyn Resolver) -> Result<RunReport, BackupError> {
        let started = Instant::now();
        let mut snap_opts = SnapshotOptions::default();
        let mut tags = rustic_core::StringList::default();
        tags.add(tag(&self.backup.name));
        tags.add(format!("source:{}", self.backup.source.kind()));
        snap_opts.tags = vec![tags];
        let snap = snap_opts.to_snapshot().map_err(repo_err)?;
        let repo = self.repo.to_indexed_ids().map_err(repo_err)?;
        let mut opts = BackupOptions::default();
        // The size scan only feeds the progress bar's ETA: skip the extra walk
        // when nobody watches.
        opts.no_scan = !progress::enabled();
        let mut skipped = unreadable::Skipped::default();
        let saved = match &self.backup.source {
            Source::Paths { paths, exclude } => {
                // Absolute paths in the snapshot: what restic shows and restores.
                let paths: Vec<PathBuf> = paths
                    .iter()
                    .map(|p| {
                        p.canonicalize()
                            .map_err(|e| BackupError::Source(format!("`{}`: {e}", p.display())))
                    })
                    .collect::<Result<_, _>>()?;
                opts.excludes.globs = exclude.iter().map(|g| format!("!{g}")).collect();
                let list = PathList::from_iter(paths.iter().cloned())
                    .sanitize()
                    .map_err(|e| BackupError::Source(e.to_string()))?;
                // rustic's own `backup` over a local source that counts what
                // it cannot read (rustic only logs and skips it).
                let backup_paths = list.paths();
                let src = unreadable::Counting::new(
                    rustic_core::LocalSource::new(
                        opts.ignore_save_opts,
                        &opts.excludes,
                        &opts.ignore_filter_opts,
                        &backup_paths,
                    )
                    .map_err(repo_err)?,
                );
                let saved = repo
                    .archive(&opts, &src, snap, &backup_paths)
                    .map_err(repo_err)?;
                skipped = src.skipped();
                if skipped.count > 0 {
                    mark_partial(&repo, saved)?
                } else {
                    saved
                }
            }
            Source::Logs { paths } => {
                let files = sources::log_files(paths)?;
                if files.is_empty() {
                    return Err(BackupError::Source(format!(
                        "no log file matches {}",
                        paths.join(", ")
                    )));
                }
                let list = PathList::from_iter(files)
                    .sanitize()
                    .map_err(|e| BackupError::Source(e.to_string()))?;
                repo.backup(&opts, &list, snap).map_err(repo_err)?
            }
            Source::Sqlite { path } => {
                let copy = sources::sqlite_copy(path)?;
                opts.as_path = Some(path.clone());
                let list = PathList::from_iter([copy.path().to_path_buf()])
                    .sanitize()
                    .map_err(|e| BackupError::Source(e.to_string()))?;
                repo.backup(&opts, &list, snap).map_err(repo_err)?
            }
            Source::Postgres { url, bin_dir } => {
                let url = url
                    .resolve(resolver)
                    .map_err(|e| BackupError::Secret(format!("postgres url: {e}")))?;
                let cmd = sources::pg_dump(url.expose(), bin_dir.as_deref())?;
                sources::archive_stream(&repo, &opts, cmd, sources::dump_path(url.expose()), snap)?
            }
            Source::Command { command, filename } => {
                let mut cmd = std::process::Command::new(&command[0]);
                cmd.args(&command[1..]);
                sources::archive_stream(
                    &repo,
                    &opts,
                    cmd,
                    PathBuf::from(format!("/{filename}")),
                    snap,
                )?
            }
        };
        Ok(RunReport {
            snapshot: info(&saved),
            seconds: started.elapsed().as_secs_f64(),
            unreadable: skipped.count,
            unreadable_first: skipped.first,
        })
    }

    /// Restores a snapshot (default: the newest) into `target`.
    pub fn restore(
        self,
        snapshot: Option<&str>,
        target: &Path,
    ) -> Result<RestoreReport, BackupError> {
        let started = Instant::now();
        let snap = self.find(snapshot)?;
        let repo = self.repo.to_indexed().map_err(repo_err)?;
        let node = repo
            .node_from_snapshot_and_path(&snap, "")
            .map_err(repo_err)?;
        std::fs::create_dir_all(target).map_err(|e| {
            BackupError::Source(format!("cannot create `{}`: {e}", target.display()))
        })?;
        restore::restore_tree(&repo, &node, target)?;
        Ok(RestoreReport {
            snapshot: info(&snap),
            target: target.display().to_string(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Streams the one file of a stream snapshot (a dump, a command's output) into `w`.
    pub fn dump_stream(
        self,
        snapshot: Option<&str>,
        w: &mut dyn std::io::Write,
    ) -> Result<SnapshotInfo, BackupError> {
        let snap = self.find(snapshot)?;
        let repo = self.repo.to_indexed().map_err(repo_err)?;
        let path = snap.paths.iter().next().cloned().unwrap_or_default();
        let node = repo
            .node_from_snapshot_and_path(&snap, &path)
            .map_err(repo_err)?;
        let mut w = w;
        repo.dump(&node, &mut w).map_err(repo_err)?;
        Ok(info(&snap))
    }

    /// Applies the retention policy: what goes and why the rest stays. With
    /// `dry_run`, nothing is removed.
    pub fn forget(self, dry_run: bool) -> Result<Vec<(SnapshotInfo, Decision)>, BackupError> {
        let files = self.snapshot_files()?;
        let snaps: Vec<Snap> = files
            .iter()
            .map(|s| Snap {
                id: s.id.to_hex().to_string(),
                // The time as stamped, with its offset: retention buckets by it.
                time: chrono::DateTime::from_timestamp_millis(s.time.timestamp().as_millisecond())
                    .unwrap_or_default()
                    .with_timezone(
                        &chrono::FixedOffset::east_opt(s.time.offset().seconds())
                            .unwrap_or(chrono::FixedOffset::east_opt(0).expect("UTC")),
                    ),
                tags: s.tags.iter().cloned().collect(),
            })
            .collect();
        let decisions = select_kept(&snaps, &self.backup.keep);
        let gone: Vec<_> = files
            .iter()
            .filter(|f| {
                decisions
                    .iter()
                    .any(|d| !d.keep && d.id == f.id.to_hex().as_str())
            })
            .map(|f| f.id)
            .collect();
        if !dry_run && !gone.is_empty() {
            self.repo.delete_snapshots(&gone).map_err(repo_err)?;
        }
        Ok(decisions
            .into_iter()
            .filter_map(|d| {
                files
                    .iter()
                    .find(|f| f.id.to_hex().as_str() == d.id)
                    .map(|f| (info(f), d))
            })
            .collect())
    }

    /// Removes data no snapshot references any more.
    pub fn prune(self) -> Result<PruneReport, BackupError> {
        let opts = PruneOptions::default();
        let plan = self.repo.prune_plan(&opts).map_err(repo_err)?;
        let report = PruneReport {
            packs_removed: plan.stats.packs_to_delete.remove,
            repacked: plan.stats.packs.repack,
        };
        self.repo.prune(&opts, plan).map_err(repo_err)?;
        Ok(report)
    }

    /// Checks the repository's structure (and, with `read_data`, every pack's
    /// content). Errors mean data is damaged or missing; warnings are leftovers
    /// (packs of an interrupted backup) that `prune` removes.
    pub fn check(self, read_data: bool) -> Result<CheckReport, BackupError> {
        let opts = CheckOptions::default().read_data(read_data);
        let results = self.repo.check(opts).map_err(repo_err)?;
        let mut report = CheckReport::default();
        for (level, e) in &results.0 {
            let line = concise(&e.to_string());
            // rustic does not export the level's type; its Debug name is stable.
            if format!("{level:?}") == "Error" {
                report.errors.push(line);
            } else {
                report.warnings.push(line);
            }
        }
        report.errors.dedup();
        report.warnings.sort();
        report.warnings.dedup();
        Ok(report)
    }
}

/// What a check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Damaged or missing data.
    pub errors: Vec<String>,
    /// Leftovers and oddities that do not lose data.
    pub warnings: Vec<String>,
}

/// What a prune removed.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Packs deleted.
    pub packs_removed: u64,
    /// Packs rewritten without their unused parts.
    pub repacked: u64,
}

pub use sources::pg_restore;

/// Streams the newest (or given) dump of a postgres backup into `pg_restore`
/// against `url`: tables in the dump are replaced, nothing goes through a file.
pub fn restore_into_postgres(
    opened: Opened,
    snapshot: Option<&str>,
    url: &str,
    bin_dir: Option<&Path>,
) -> Result<SnapshotInfo, BackupError> {
    use std::io::Read;
    let mut cmd = sources::pg_restore(url, bin_dir)?;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| BackupError::Source(format!("cannot run pg_restore: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let collector = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let dumped = opened.dump_stream(snapshot, &mut stdin);
    drop(stdin);
    let status = child
        .wait()
        .map_err(|e| BackupError::Source(format!("pg_restore: {e}")))?;
    let err = collector.join().unwrap_or_default();
    let snap = dumped?;
    if !status.success() {
        let tail: Vec<&str> = err.trim().lines().rev().take(3).collect();
        return Err(BackupError::Source(format!(
            "pg_restore failed ({status}): {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )));
    }
    Ok(snap)
}

/// The result of a restore drill.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// The snapshot restored.
    pub snapshot: SnapshotInfo,
    /// Restore plus verification, in seconds: the measured restore time.
    pub seconds: f64,
    /// What was verified, one line each.
    pub verified: Vec<String>,
}

/// A restore drill: restores the newest snapshot somewhere harmless (a temporary
/// directory; for PostgreSQL a scratch database on the same server, dropped
/// afterwards) and verifies it.
pub fn drill(
    spec: &Spec,
    backup: &Backup,
    resolver: &dyn Resolver,
) -> Result<DrillReport, BackupError> {
    let started = Instant::now();
    let opened = open(spec, backup, resolver, false)?;
    let mut verified = Vec::new();
    let drill = backup.drill.clone().unwrap_or(steward_spec::Drill {
        schedule: None,
        verify_query: None,
        verify_command: None,
    });
    let scratch = tempfile::Builder::new()
        .prefix("steward-drill-")
        .tempdir()
        .map_err(|e| BackupError::Source(format!("temporary directory: {e}")))?;
    let snapshot = match &backup.source {
        Source::Postgres { url, bin_dir } => {
            let url = url
                .resolve(resolver)
                .map_err(|e| BackupError::Secret(format!("postgres url: {e}")))?;
            let db = format!(
                "steward_drill_{}_{}",
                backup.name.replace('-', "_"),
                std::process::id()
            );
            let scratch_url = sources::with_database(url.expose(), &db)?;
            sources::pg_tool(url.expose(), bin_dir.as_deref(), "createdb", &[&db])?;
            let result = (|| {
                let snap = restore_into_postgres(opened, None, &scratch_url, bin_dir.as_deref())?;
                verified.push(format!("pg_restore into scratch database `{db}` succeeded"));
                if let Some(q) = &drill.verify_query {
                    let rows = sources::psql_rows(&scratch_url, bin_dir.as_deref(), q)?;
                    if rows == 0 {
                        return Err(BackupError::Source(format!(
                            "verify_query returned no rows: {q}"
                        )));
                    }
                    verified.push(format!("verify_query returned {rows} row(s)"));
                }
                Ok(snap)
            })();
            let dropped = sources::pg_tool(
                url.expose(),
                bin_dir.as_deref(),
                "dropdb",
                &["--if-exists", &db],
            );
            let snap = result?;
            dropped?;
            snap
        }
        _ => {
            let report = opened.restore(None, scratch.path())?;
            let (files, bytes) = sources::tree_size(scratch.path());
            let want_files = report.snapshot.files;
            if want_files > 0 && files != want_files {
                return Err(BackupError::Source(format!(
                    "restored {files} files, the snapshot records {want_files}"
                )));
            }
            if report.snapshot.bytes > 0 && bytes != report.snapshot.bytes {
                return Err(BackupError::Source(format!(
                    "restored {bytes} bytes, the snapshot records {}",
                    report.snapshot.bytes
                )));
            }
            verified.push(format!("{files} files, {bytes} bytes restored as recorded"));
            if let Source::Sqlite { path } = &backup.source {
                let copy = scratch.path().join(path.strip_prefix("/").unwrap_or(path));
                let conn = rusqlite::Connection::open(&copy)
                    .map_err(|e| BackupError::Source(format!("restored SQLite: {e}")))?;
                let verdict: String = conn
                    .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                    .map_err(|e| BackupError::Source(format!("restored SQLite: {e}")))?;
                if verdict != "ok" {
                    return Err(BackupError::Source(format!(
                        "restored SQLite fails integrity_check: {verdict}"
                    )));
                }
                verified.push("SQLite integrity_check ok".into());
            }
            report.snapshot
        }
    };
    if let Some(cmd) = &drill.verify_command {
        let status = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .current_dir(scratch.path())
            .env("STEWARD_DRILL_DIR", scratch.path())
            .stdin(std::process::Stdio::null())
            .status()
            .map_err(|e| BackupError::Source(format!("verify_command: {e}")))?;
        if !status.success() {
            return Err(BackupError::Source(format!(
                "verify_command failed ({status})"
            )));
        }
        verified.push(format!("verify_command `{}` passed", cmd.join(" ")));
    }
    Ok(DrillReport {
        snapshot,
        seconds: started.elapsed().as_secs_f64(),
        verified,
    })
}

#[cfg(test)]
mod words {
    use super::steward_words;

    /// rustic_core 0.13's own texts (its check errors and decryption errors).
    #[test]
    fn advice_names_steward_commands() {
        for (rustic, steward) in [
            (
                "pack 1a2b3c4d not referenced in index. Can be a parallel backup job. To repair: 'rustic repair index'.",
                "`steward backup prune` removes it.",
            ),
            (
                "pack 1a2b3c4d marked to-delete: false is referenced by the index with size 12 but not present! To repair: 'rustic repair index'.",
                "`steward backup run` stores the current data again.",
            ),
            (
                "pack 1a2b3c4d marked to delete: false: size computed by index: 10, actual size: 12. To repair: 'rustic repair index'.",
                "`steward backup check --read-data` tells",
            ),
            (
                "Verification failed: After decrypting and decompressing the data changed! The data may be corrupted. Please check the backend for corruption and try again. You can also try to run `rustic check --read-data` to check for corruption. This may take a long time.",
                "`steward backup check --read-data` finds every damaged pack",
            ),
            (
                "Decoding zstd compressed data failed. This can happen if the data is corrupted. Please check the backend for corruption and try again. You can also try to run `rustic check` to check for corruption.",
                "`steward backup check` looks for damage.",
            ),
            (
                "Something failed. Run `rustic unlock` to go on. Then retry.",
                "Something failed. Then retry.",
            ),
        ] {
            let said = steward_words(rustic);
            assert!(said.contains(steward), "{rustic}\n=> {said}");
            assert!(!said.contains("rustic"), "{said}");
        }
    }
}
