//! `[store.NAME]` (object stores) and `[backup.NAME]` (what is backed up, where,
//! how often, how long it is kept, and how restores are drilled).

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::diag::Diagnostics;
use crate::duration::Dur;
use crate::secret::{Resolver, Text};

/// The store every spec has without declaring it: `STATE_DIR/objects`.
pub const DEFAULT_STORE: &str = "local";

/// An object store.
#[derive(Debug, Clone)]
pub struct Store {
    /// Its name.
    pub name: String,
    /// Where and how.
    pub kind: StoreKind,
}

/// Object store kinds.
#[derive(Debug, Clone)]
pub enum StoreKind {
    /// A directory on this machine.
    Local {
        /// The directory.
        path: PathBuf,
    },
    /// An S3-compatible bucket.
    S3 {
        /// Endpoint URL.
        endpoint: String,
        /// The bucket (must exist).
        bucket: String,
        /// Signing region.
        region: String,
        /// Access key id (may be a reference).
        access_key: Text,
        /// Secret access key (a reference).
        secret_key: Text,
        /// Virtual-host-style addressing.
        virtual_host_style: bool,
    },
    /// OpenStack Swift.
    Swift {
        /// tempauth (`…/auth/v1.0`) or Keystone (`…/v3`) URL.
        auth_url: String,
        /// tempauth `account:user`, or Keystone user name.
        user: Text,
        /// tempauth key or Keystone password.
        key: Text,
        /// Keystone project (absent: tempauth).
        project: Option<String>,
        /// Keystone user domain.
        user_domain: String,
        /// Keystone project domain.
        project_domain: String,
        /// Keystone catalog region.
        region: Option<String>,
        /// Container.
        container: String,
    },
}

/// A backup: one source, one repository, a schedule, retention and drills.
#[derive(Debug, Clone)]
pub struct Backup {
    /// Its name (also the snapshot tag `steward:NAME`).
    pub name: String,
    /// What is backed up.
    pub source: Source,
    /// Store name.
    pub store: String,
    /// Repository path inside the store.
    pub repository: String,
    /// Repository password (a reference).
    pub password: Text,
    /// When `serve` runs it.
    pub schedule: Option<croner::Cron>,
    /// The schedule as written.
    pub schedule_text: Option<String>,
    /// What `forget` keeps.
    pub keep: Keep,
    /// Older than this, the backup is overdue (alert).
    pub max_age: Option<Dur>,
    /// Restore drills.
    pub drill: Option<Drill>,
    /// Alert channels told about failures and overdue backups.
    pub alerts: Vec<String>,
}

/// What a backup reads.
#[derive(Debug, Clone)]
pub enum Source {
    /// Files and directories.
    Paths {
        /// Absolute paths.
        paths: Vec<PathBuf>,
        /// Glob patterns (gitignore syntax) left out.
        exclude: Vec<String>,
    },
    /// A PostgreSQL database, dumped with `pg_dump --format=custom` straight into the backup.
    Postgres {
        /// Connection URL (usually a reference).
        url: Text,
        /// Directory of `pg_dump`/`pg_restore` matching the server version.
        bin_dir: Option<PathBuf>,
    },
    /// An SQLite database, copied with SQLite's online backup API.
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A command's standard output, streamed.
    Command {
        /// Program and arguments.
        command: Vec<String>,
        /// Name of the file in the snapshot.
        filename: String,
    },
    /// Log files, with their rotated siblings (`.1`, `.2.gz`, …).
    Logs {
        /// Files or glob patterns.
        paths: Vec<String>,
    },
}

impl Source {
    /// Short kind name.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Paths { .. } => "paths",
            Source::Postgres { .. } => "postgres",
            Source::Sqlite { .. } => "sqlite",
            Source::Command { .. } => "command",
            Source::Logs { .. } => "logs",
        }
    }
}

/// Retention (restic's `--keep-*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keep {
    /// The newest N.
    pub last: u32,
    /// The newest of each of the last N hours.
    pub hourly: u32,
    /// … days.
    pub daily: u32,
    /// … ISO weeks.
    pub weekly: u32,
    /// … months.
    pub monthly: u32,
    /// … years.
    pub yearly: u32,
    /// Everything this close to the newest snapshot.
    pub within: Option<Dur>,
    /// Snapshots with any of these tags.
    pub tags: Vec<String>,
}

impl Keep {
    /// Whether the policy keeps anything at all (an empty policy keeps all).
    pub fn is_empty(&self) -> bool {
        *self == Keep::default()
    }
}

impl From<RawKeep> for Keep {
    fn from(keep: RawKeep) -> Keep {
        Keep {
            last: keep.last.unwrap_or(0),
            hourly: keep.hourly.unwrap_or(0),
            daily: keep.daily.unwrap_or(0),
            weekly: keep.weekly.unwrap_or(0),
            monthly: keep.monthly.unwrap_or(0),
            yearly: keep.yearly.unwrap_or(0),
            within: keep.within,
            tags: keep.tags.unwrap_or_default(),
        }
    }
}

/// Restore drills: restore the newest snapshot somewhere harmless and verify it.
#[derive(Debug, Clone)]
pub struct Drill {
    /// When `serve` runs one.
    pub schedule: Option<croner::Cron>,
    /// For PostgreSQL: a query that must return at least one row in the restored copy.
    pub verify_query: Option<String>,
    /// A command run in the restored directory that must exit 0.
    pub verify_command: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    path: Option<String>,
    auth_url: Option<Spanned<String>>,
    user: Option<Spanned<Text>>,
    key: Option<Spanned<Text>>,
    password: Option<Spanned<Text>>,
    project: Option<String>,
    user_domain: Option<String>,
    project_domain: Option<String>,
    region: Option<String>,
    container: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    bucket: Option<Spanned<String>>,
    access_key: Option<Spanned<Text>>,
    secret_key: Option<Spanned<Text>>,
    virtual_host_style: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackup {
    source: Spanned<RawSource>,
    store: Option<Spanned<String>>,
    repository: Option<Spanned<String>>,
    password: Spanned<Text>,
    schedule: Option<Spanned<String>>,
    keep: Option<RawKeep>,
    max_age: Option<Dur>,
    drill: Option<RawDrill>,
    #[serde(default)]
    alerts: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    paths: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    postgres: Option<Text>,
    bin_dir: Option<String>,
    sqlite: Option<String>,
    command: Option<Vec<String>>,
    filename: Option<String>,
    logs: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKeep {
    last: Option<u32>,
    hourly: Option<u32>,
    daily: Option<u32>,
    weekly: Option<u32>,
    monthly: Option<u32>,
    yearly: Option<u32>,
    within: Option<Dur>,
    tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrill {
    schedule: Option<Spanned<String>>,
    verify_query: Option<String>,
    verify_command: Option<Vec<String>>,
}

pub(crate) fn cron(d: &mut Diagnostics, s: &Spanned<String>) -> Option<croner::Cron> {
    match croner::parser::CronParser::new().parse(s.get_ref()) {
        Ok(c) => Some(c),
        Err(_) => {
            d.error(
                s.span(),
                format!("invalid cron expression `{}`", s.get_ref()),
                "not a cron expression",
                Some(
                    "five fields: minute hour day-of-month month day-of-week, e.g. `0 3 * * *`"
                        .into(),
                ),
            );
            None
        }
    }
}

pub(crate) fn store(
    d: &mut Diagnostics,
    name: &str,
    span: Range<usize>,
    raw: RawStore,
    base_dir: &Path,
    resolver: &dyn Resolver,
) -> Option<Store> {
    let kind = match raw.kind.get_ref().as_str() {
        "local" => {
            let Some(path) = raw.path else {
                d.error(
                    span,
                    format!("local store `{name}` needs a `path`"),
                    "no path",
                    None,
                );
                return None;
            };
            StoreKind::Local {
                path: base_dir.join(path),
            }
        }
        "swift" => {
            let mut missing = Vec::new();
            if raw.auth_url.is_none() {
                missing.push("auth_url");
            }
            if raw.user.is_none() {
                missing.push("user");
            }
            if raw.key.is_none() && raw.password.is_none() {
                missing.push("key (tempauth) or password (Keystone)");
            }
            if raw.container.is_none() {
                missing.push("container");
            }
            if !missing.is_empty() {
                d.error(
                    span,
                    format!("swift store `{name}` needs {}", missing.join(", ")),
                    "incomplete",
                    None,
                );
                return None;
            }
            let auth_url = raw.auth_url.expect("checked");
            let keystone = raw.project.is_some();
            if keystone
                == auth_url
                    .get_ref()
                    .trim_end_matches('/')
                    .ends_with("auth/v1.0")
            {
                d.error(
                    auth_url.span(),
                    "a tempauth URL (…/auth/v1.0) takes `key`; a Keystone URL (…/v3) takes `password` and `project`",
                    "auth kind unclear",
                    None,
                );
            }
            let key = raw.key.or(raw.password).expect("checked");
            let user = raw.user.expect("checked");
            for t in [&user, &key] {
                if let Err(e) = t.get_ref().check(resolver) {
                    d.error(
                        t.span(),
                        format!("cannot resolve reference: {e}"),
                        "unresolvable",
                        None,
                    );
                }
            }
            let (user, key) = (user.into_inner(), key.into_inner());
            let container = raw.container.expect("checked");
            if container.get_ref().is_empty() || container.get_ref().contains('/') {
                d.error(
                    container.span(),
                    "a container name is not empty and has no `/`",
                    "invalid",
                    None,
                );
            }
            StoreKind::Swift {
                auth_url: auth_url.into_inner(),
                user,
                key,
                project: raw.project,
                user_domain: raw.user_domain.unwrap_or_else(|| "Default".into()),
                project_domain: raw.project_domain.unwrap_or_else(|| "Default".into()),
                region: raw.region,
                container: container.into_inner(),
            }
        }
        "s3" => {
            let (Some(endpoint), Some(bucket), Some(access_key), Some(secret_key)) =
                (raw.endpoint, raw.bucket, raw.access_key, raw.secret_key)
            else {
                d.error(
                    span,
                    format!("s3 store `{name}` needs endpoint, bucket, access_key and secret_key"),
                    "incomplete",
                    None,
                );
                return None;
            };
            if !(endpoint.get_ref().starts_with("http://")
                || endpoint.get_ref().starts_with("https://"))
            {
                d.error(
                    endpoint.span(),
                    "an S3 endpoint is an http:// or https:// URL",
                    "not a URL",
                    None,
                );
            }
            if !secret_key.get_ref().has_references() {
                d.error(
                    secret_key.span(),
                    "an S3 secret_key must be a reference, not written in the spec",
                    "inline secret",
                    Some("use `${env:NAME}` or `${file:/path}`".into()),
                );
            }
            for t in [&access_key, &secret_key] {
                if let Err(e) = t.get_ref().check(resolver) {
                    d.error(
                        t.span(),
                        format!("cannot resolve reference: {e}"),
                        "unresolvable",
                        None,
                    );
                }
            }
            let (access_key, secret_key) = (access_key.into_inner(), secret_key.into_inner());
            StoreKind::S3 {
                endpoint: endpoint.into_inner(),
                bucket: bucket.into_inner(),
                region: raw.region.unwrap_or_else(|| "us-east-1".into()),
                access_key,
                secret_key,
                virtual_host_style: raw.virtual_host_style.unwrap_or(false),
            }
        }
        other => {
            d.error(
                raw.kind.span(),
                format!("unknown store type `{other}`"),
                "unknown",
                Some("store types: local, swift, s3".into()),
            );
            return None;
        }
    };
    Some(Store {
        name: name.to_string(),
        kind,
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backup(
    d: &mut Diagnostics,
    name: &str,
    raw: RawBackup,
    base_dir: &Path,
    resolver: &dyn Resolver,
    stores: &BTreeSet<&str>,
    alerts: &BTreeSet<&str>,
) -> Option<Backup> {
    let before = d.errors.len();
    let sspan = raw.source.span();
    let s = raw.source.into_inner();
    let given: Vec<&str> = [
        ("paths", s.paths.is_some()),
        ("postgres", s.postgres.is_some()),
        ("sqlite", s.sqlite.is_some()),
        ("command", s.command.is_some()),
        ("logs", s.logs.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| *k)
    .collect();
    if given.len() != 1 {
        d.error(
            sspan.clone(),
            if given.is_empty() {
                "a backup source needs one of `paths`, `postgres`, `sqlite`, `command`, `logs`"
                    .to_string()
            } else {
                format!(
                    "a backup has exactly one source; this one sets {}",
                    given.join(" and ")
                )
            },
            "source",
            Some("declare one [backup.NAME] per source".into()),
        );
    }
    let abs = |p: &str| base_dir.join(p);
    let has_exclude = s.exclude.is_some();
    let source = if given.len() != 1 {
        // Reported above; keep checking the rest of the entry.
        Source::Paths {
            paths: Vec::new(),
            exclude: Vec::new(),
        }
    } else if let Some(paths) = s.paths {
        if paths.is_empty() {
            d.error(
                sspan.clone(),
                "`paths` is empty",
                "nothing to back up",
                None,
            );
        }
        Source::Paths {
            paths: paths.iter().map(|p| abs(p)).collect(),
            exclude: s.exclude.unwrap_or_default(),
        }
    } else if let Some(url) = s.postgres {
        if let Err(e) = url.check(resolver) {
            d.error(
                sspan.clone(),
                format!("cannot resolve reference: {e}"),
                "unresolvable",
                None,
            );
        }
        Source::Postgres {
            url,
            bin_dir: s.bin_dir.map(|b| abs(&b)),
        }
    } else if let Some(p) = s.sqlite {
        Source::Sqlite { path: abs(&p) }
    } else if let Some(command) = s.command {
        if command.is_empty() {
            d.error(sspan.clone(), "empty `command`", "nothing to run", None);
        }
        Source::Command {
            filename: s.filename.unwrap_or_else(|| format!("{name}.out")),
            command,
        }
    } else {
        Source::Logs {
            paths: s
                .logs
                .unwrap_or_default()
                .iter()
                .map(|p| abs(p).display().to_string())
                .collect(),
        }
    };
    if !matches!(source, Source::Paths { .. }) && has_exclude {
        d.error(
            sspan.clone(),
            "`exclude` applies to `paths` sources only",
            "not here",
            None,
        );
    }
    let store = raw
        .store
        .as_ref()
        .map(|s| s.get_ref().clone())
        .unwrap_or_else(|| DEFAULT_STORE.into());
    if let Some(s) = &raw.store
        && !stores.contains(s.get_ref().as_str())
    {
        let help = crate::diag::did_you_mean(s.get_ref(), stores.iter().copied())
            .map(|b| format!("did you mean `{b}`?"))
            .unwrap_or_else(|| {
                format!(
                    "defined: {}",
                    stores.iter().copied().collect::<Vec<_>>().join(", ")
                )
            });
        d.error(
            s.span(),
            format!("unknown store `{}`", s.get_ref()),
            "no such store",
            Some(help),
        );
    }
    let repository = raw
        .repository
        .as_ref()
        .map(|r| r.get_ref().trim_matches('/').to_string())
        .unwrap_or_else(|| name.to_string());
    if let Some(r) = &raw.repository
        && (repository.is_empty()
            || repository.split('/').any(|c| c == ".." || c.is_empty())
            || !repository
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)))
    {
        d.error(
            r.span(),
            format!("invalid repository path `{}`", r.get_ref()),
            "invalid",
            Some("letters, digits, `.`, `_`, `-` and `/`, no `..`".into()),
        );
    }
    if !raw.password.get_ref().has_references() {
        d.error(
            raw.password.span(),
            "a backup password must be a reference, not written in the spec",
            "inline secret",
            Some(
                "use `${env:NAME}` or `${file:/path}`; whoever has it can read every backup".into(),
            ),
        );
    } else if let Err(e) = raw.password.get_ref().check(resolver) {
        d.error(
            raw.password.span(),
            format!("cannot resolve reference: {e}"),
            "unresolvable",
            None,
        );
    }
    let schedule = raw.schedule.as_ref().and_then(|s| cron(d, s));
    let keep = Keep::from(raw.keep.unwrap_or_default());
    let drill = raw.drill.map(|dr| Drill {
        schedule: dr.schedule.as_ref().and_then(|s| cron(d, s)),
        verify_query: dr.verify_query,
        verify_command: dr.verify_command,
    });
    if let Some(dr) = &drill
        && dr.verify_query.is_some()
        && !matches!(source, Source::Postgres { .. })
    {
        d.error(
            sspan,
            "`verify_query` needs a `postgres` source",
            "not a database",
            None,
        );
    }
    for a in &raw.alerts {
        if !alerts.contains(a.get_ref().as_str()) {
            d.error(
                a.span(),
                format!("unknown alert `{}`", a.get_ref()),
                "no such alert",
                None,
            );
        }
    }
    if d.errors.len() > before {
        return None;
    }
    Some(Backup {
        name: name.to_string(),
        source,
        store,
        repository,
        password: raw.password.into_inner(),
        schedule_text: raw.schedule.map(|s| s.into_inner()),
        schedule,
        keep,
        max_age: raw.max_age,
        drill,
        alerts: raw.alerts.into_iter().map(|a| a.into_inner()).collect(),
    })
}

/// The default store: a directory in the state directory.
pub(crate) fn default_store(state_dir: &Path) -> Store {
    Store {
        name: DEFAULT_STORE.into(),
        kind: StoreKind::Local {
            path: state_dir.join("objects"),
        },
    }
}

/// Used by validate to list declared plus default store names.
pub(crate) fn store_names<'a>(declared: impl Iterator<Item = &'a str>) -> BTreeSet<&'a str> {
    let mut s: BTreeSet<&str> = declared.collect();
    s.insert(DEFAULT_STORE);
    s
}
