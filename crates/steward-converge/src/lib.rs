//! Configuration management: observe a host (or a root directory), compare it with a
//! [`ConvergeSet`] and change what differs.
//!
//! [`Converger::plan`] observes and reports; it changes nothing (exec guards, which
//! the spec promises are read-only, are run). [`Converger::apply`] walks the same
//! resources in dependency order and, for each, observes again right before acting,
//! so a resource sees what earlier ones did. Every file write is atomic. A failed
//! resource stops its dependents only. Refreshes owed to services and commands are
//! journaled in the state database before the resource they wait on runs, so a run
//! that dies in between still performs them next time.

pub mod drift;
mod edit;
mod exec;
mod facts;
mod fsx;
mod kinds;
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use steward_spec::{Content, ConvergeSet, Ensure, Perms, Resolver, Resource, ResourceKind, Text};
use steward_state::ConvergeJournal;

pub use edit::{edit_block, edit_line};
pub use exec::installed_packages;
pub use facts::Facts;
pub use fsx::Target;

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Something is created.
    Create,
    /// Something existing is changed.
    Update,
    /// Something is removed.
    Remove,
    /// A command runs.
    Run,
    /// A service restarts or a command runs because something it watches changed.
    Refresh,
}

/// One pending change in a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedChange {
    /// `kind:name`.
    pub id: String,
    /// What kind of change.
    pub action: Action,
    /// One line per difference (`mode 0600 → 0644`, `install nginx`).
    pub details: Vec<String>,
    /// Unified diff of a file's content (hidden for secrets unless asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// A resource that could not be observed or would fail.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceError {
    /// `kind:name`.
    pub id: String,
    /// Why.
    pub message: String,
}

/// What `apply` would do.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Converge set.
    pub set: String,
    /// Root directory (`/` for the host).
    pub root: String,
    /// Changes, in apply order.
    pub changes: Vec<PlannedChange>,
    /// Resources that cannot be planned.
    pub errors: Vec<ResourceError>,
    /// Resources an earlier run managed that the spec no longer names (left in place).
    pub orphans: Vec<String>,
}

impl Plan {
    /// Nothing to change and nothing wrong.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.errors.is_empty()
    }
}

/// How one resource fared in an apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Already as described.
    Unchanged,
    /// Changed (or run, or refreshed).
    Changed,
    /// Failed; its dependents are skipped.
    Failed,
    /// Not attempted because a dependency failed.
    Skipped,
}

/// One resource's result in an apply.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `kind:name`.
    pub id: String,
    /// Result.
    pub status: Status,
    /// What changed.
    pub details: Vec<String>,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The result of an apply.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Converge set.
    pub set: String,
    /// Root directory.
    pub root: String,
    /// Per resource, in apply order.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Count of resources with this status.
    pub fn count(&self, s: Status) -> usize {
        self.outcomes.iter().filter(|o| o.status == s).count()
    }
}

/// Why a converge run could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    /// Another apply holds the lock.
    #[error("another `steward converge apply` is running (lock `{0}` is held)")]
    Locked(PathBuf),
    /// The lock file could not be used.
    #[error("cannot lock `{path}`: {source}")]
    Lock {
        /// Lock file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The root directory does not exist.
    #[error("root `{0}` is not a directory")]
    NoRoot(PathBuf),
    /// Facts changed between planning and applying.
    #[error("facts changed since the plan was made ({0}); run again")]
    FactsChanged(String),
    /// The state database failed.
    #[error(transparent)]
    State(#[from] steward_state::StateError),
}

/// Held while an apply runs; two applies on one state directory never overlap.
#[derive(Debug)]
pub struct RunLock {
    _file: fs::File,
}

impl RunLock {
    /// Takes `converge.lock` in the state directory, failing at once when held.
    pub fn acquire(state_dir: &Path) -> Result<RunLock, ConvergeError> {
        let path = state_dir.join("converge.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ConvergeError::Lock {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(ConvergeError::Locked(path)),
            Err(fs::TryLockError::Error(source)) => Err(ConvergeError::Lock { path, source }),
        }
    }
}

/// An action on the target, decided by observation, carried out by [`Converger::apply`].
#[derive(Debug, Clone)]
enum Op {
    Write {
        path: PathBuf,
        content: Vec<u8>,
        perms: Perms,
        default_mode: u32,
    },
    Perms {
        path: PathBuf,
        perms: Perms,
    },
    MkDir {
        path: PathBuf,
        perms: Perms,
    },
    Remove {
        path: PathBuf,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
    },
    Apt {
        args: Vec<String>,
    },
    /// A command; `in_root` runs it inside the root, otherwise on the host.
    Cmd {
        argv: Vec<String>,
        in_root: bool,
        env: BTreeMap<String, Text>,
        cwd: Option<PathBuf>,
    },
    Download {
        url: String,
        path: PathBuf,
        sha256: String,
        perms: Perms,
    },
    SysctlLive {
        key: String,
        value: String,
    },
}

/// The observed difference for one resource.
#[derive(Debug, Default)]
struct Eval {
    ops: Vec<Op>,
    action: Option<Action>,
    details: Vec<String>,
    diff: Option<String>,
    /// The resource was owed a refresh and this evaluation settles it.
    settles_refresh: bool,
    /// The outcome is decided only once earlier resources ran (e.g. a unit file a
    /// package will install): counts as a change in a plan, re-observed in apply.
    deferred: bool,
}

impl Eval {
    fn none() -> Eval {
        Eval::default()
    }

    fn is_change(&self) -> bool {
        !self.ops.is_empty() || self.settles_refresh || self.deferred
    }
}

/// Plans and applies one converge set on one target.
pub struct Converger<'a> {
    set: &'a ConvergeSet,
    target: Target,
    resolver: &'a dyn Resolver,
    store: Option<&'a dyn ConvergeJournal>,
    facts: Facts,
    show_secrets: bool,
    templates: render::Templates,
    /// Paths every resource of the set touches (spec paths), for purging.
    touched: BTreeSet<PathBuf>,
}

impl<'a> Converger<'a> {
    /// Prepares a run: gathers facts and compiles the set's templates.
    pub fn new(
        set: &'a ConvergeSet,
        target: Target,
        resolver: &'a dyn Resolver,
        store: Option<&'a dyn ConvergeJournal>,
    ) -> Result<Converger<'a>, ConvergeError> {
        if !target.dir().is_dir() {
            return Err(ConvergeError::NoRoot(target.dir().to_path_buf()));
        }
        let facts = Facts::gather(&target);
        let templates = render::Templates::new(set);
        let touched = set
            .resources
            .iter()
            .filter_map(|r| r.kind.touched_path().map(Path::to_path_buf))
            .chain(set.resources.iter().filter_map(|r| match &r.kind {
                ResourceKind::Cron { name, .. } => Some(cron_path(name)),
                ResourceKind::Sysctl { key, .. } => Some(sysctl_path(key)),
                _ => None,
            }))
            .collect();
        Ok(Converger {
            set,
            target,
            resolver,
            store,
            facts,
            show_secrets: false,
            templates,
            touched,
        })
    }

    /// Show diffs of content that comes from secret references.
    pub fn show_secrets(mut self, yes: bool) -> Self {
        self.show_secrets = yes;
        self
    }

    /// The facts templates see.
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    fn root_key(&self) -> String {
        self.target.dir().display().to_string()
    }

    fn owed_from_store(&self) -> Result<BTreeMap<String, Vec<String>>, ConvergeError> {
        let mut owed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Some(store) = self.store {
            for (target, source) in store.converge_owed(&self.root_key(), &self.set.name)? {
                owed.entry(target).or_default().push(source);
            }
        }
        Ok(owed)
    }

    fn orphans(&self) -> Result<Vec<steward_state::Managed>, ConvergeError> {
        let Some(store) = self.store else {
            return Ok(Vec::new());
        };
        let ids: BTreeSet<&str> = self.set.resources.iter().map(|r| r.id.as_str()).collect();
        Ok(store
            .converge_managed(&self.root_key(), &self.set.name)?
            .into_iter()
            .filter(|m| !ids.contains(m.id.as_str()))
            .collect())
    }

    /// What `apply` would change. Changes nothing.
    pub fn plan(&self) -> Result<Plan, ConvergeError> {
        let mut owed = self.owed_from_store()?;
        let mut plan = Plan {
            set: self.set.name.clone(),
            root: self.root_key(),
            changes: Vec::new(),
            errors: Vec::new(),
            orphans: self.orphans()?.into_iter().map(|m| m.id).collect(),
        };
        for res in &self.set.resources {
            let by = owed.get(&res.id).cloned();
            match self.eval(res, by.as_deref()) {
                Ok(ev) if ev.is_change() => {
                    for n in &res.notify {
                        owed.entry(n.clone()).or_default().push(res.id.clone());
                    }
                    plan.changes.push(PlannedChange {
                        id: res.id.clone(),
                        action: ev.action.unwrap_or(Action::Update),
                        details: ev.details,
                        diff: ev.diff,
                    });
                }
                Ok(_) => {}
                Err(message) => plan.errors.push(ResourceError {
                    id: res.id.clone(),
                    message,
                }),
            }
        }
        Ok(plan)
    }

    /// Converges: every resource in order, observed right before it is acted on.
    /// `progress` sees each outcome as it happens.
    pub fn apply(
        &self,
        _lock: &RunLock,
        progress: &mut dyn FnMut(&Outcome),
    ) -> Result<Report, ConvergeError> {
        let now = Facts::gather(&self.target);
        if now != self.facts {
            return Err(ConvergeError::FactsChanged(facts_delta(&self.facts, &now)));
        }
        let root = self.root_key();
        let mut owed = self.owed_from_store()?;
        let mut failed: BTreeSet<&str> = BTreeSet::new();
        let mut report = Report {
            set: self.set.name.clone(),
            root: root.clone(),
            outcomes: Vec::new(),
        };
        for res in &self.set.resources {
            let outcome = if let Some(dep) = res.after.iter().find(|a| failed.contains(a.as_str()))
            {
                failed.insert(&res.id);
                Outcome {
                    id: res.id.clone(),
                    status: Status::Skipped,
                    details: Vec::new(),
                    message: Some(format!("skipped: `{dep}` failed")),
                }
            } else {
                let by = owed.get(&res.id).cloned();
                match self.eval(res, by.as_deref()) {
                    Err(e) => {
                        failed.insert(&res.id);
                        Outcome {
                            id: res.id.clone(),
                            status: Status::Failed,
                            details: Vec::new(),
                            message: Some(e),
                        }
                    }
                    Ok(ev) => {
                        let mut result = Ok(());
                        for op in &ev.ops {
                            result = self.execute(op);
                            if result.is_err() {
                                break;
                            }
                        }
                        match result {
                            Err(e) => {
                                failed.insert(&res.id);
                                Outcome {
                                    id: res.id.clone(),
                                    status: Status::Failed,
                                    details: ev.details,
                                    message: Some(e),
                                }
                            }
                            Ok(()) => {
                                if !ev.ops.is_empty() {
                                    for n in &res.notify {
                                        if let Some(store) = self.store {
                                            store.converge_owe(
                                                &root,
                                                &self.set.name,
                                                n,
                                                &res.id,
                                                steward_state::now_ms(),
                                            )?;
                                        }
                                        owed.entry(n.clone()).or_default().push(res.id.clone());
                                    }
                                }
                                if by.is_some() && ev.settles_refresh {
                                    if let Some(store) = self.store {
                                        store.converge_paid(&root, &self.set.name, &res.id)?;
                                    }
                                    owed.remove(&res.id);
                                }
                                Outcome {
                                    id: res.id.clone(),
                                    status: if ev.ops.is_empty() && !ev.settles_refresh {
                                        Status::Unchanged
                                    } else {
                                        Status::Changed
                                    },
                                    details: ev.details,
                                    message: None,
                                }
                            }
                        }
                    }
                }
            };
            progress(&outcome);
            report.outcomes.push(outcome);
        }
        self.record(&report)?;
        Ok(report)
    }

    /// Remembers what the set manages; forgets orphans that are gone from the host.
    fn record(&self, report: &Report) -> Result<(), ConvergeError> {
        let Some(store) = self.store else {
            return Ok(());
        };
        let ok: BTreeSet<&str> = report
            .outcomes
            .iter()
            .filter(|o| matches!(o.status, Status::Unchanged | Status::Changed))
            .map(|o| o.id.as_str())
            .collect();
        let managed: Vec<(String, Option<String>)> = self
            .set
            .resources
            .iter()
            .filter(|r| ok.contains(r.id.as_str()))
            .map(|r| {
                (
                    r.id.clone(),
                    r.kind.owned_path().map(|p| p.display().to_string()),
                )
            })
            .collect();
        let forget: Vec<String> = self
            .orphans()?
            .into_iter()
            .filter(|m| {
                m.path
                    .as_ref()
                    .is_some_and(|p| fs::symlink_metadata(self.target.path(Path::new(p))).is_err())
            })
            .map(|m| m.id)
            .collect();
        store.converge_record(
            &self.root_key(),
            &self.set.name,
            &managed,
            &forget,
            steward_state::now_ms(),
        )?;
        Ok(())
    }

    /// Observes one resource and decides what would change. `owed` names the
    /// resources whose changes this one must react to (services and execs).
    fn eval(&self, res: &Resource, owed: Option<&[String]>) -> Result<Eval, String> {
        match &res.kind {
            ResourceKind::File {
                path,
                content,
                perms,
                ensure,
            } => {
                let p = self.target.path(path);
                if *ensure == Ensure::Absent {
                    return self.removal(&p, path, false);
                }
                let (want, secret) = match content {
                    Some(Content::Inline(t)) => (
                        Some(
                            t.resolve(self.resolver)
                                .map_err(|e| e.to_string())?
                                .expose()
                                .as_bytes()
                                .to_vec(),
                        ),
                        t.has_references(),
                    ),
                    Some(Content::Source(s)) => (
                        Some(
                            fs::read(s)
                                .map_err(|e| format!("cannot read `{}`: {e}", s.display()))?,
                        ),
                        false,
                    ),
                    None => (None, false),
                };
                let default_mode = if secret { 0o600 } else { 0o644 };
                self.file_state(path, want, perms, secret, default_mode)
            }
            ResourceKind::Template {
                path, perms, vars, ..
            } => {
                let (text, secret) = self.templates.render(
                    &res.id,
                    &self.set.vars,
                    vars,
                    &self.facts,
                    self.resolver,
                )?;
                self.file_state(path, Some(text.into_bytes()), perms, secret, 0o644)
            }
            ResourceKind::Directory {
                path,
                perms,
                purge,
                ensure,
            } => {
                let p = self.target.path(path);
                if *ensure == Ensure::Absent {
                    return self.removal(&p, path, true);
                }
                let mut ev = Eval::none();
                match fs::symlink_metadata(&p) {
                    Err(_) => {
                        let pending = self.check_accounts(perms)?;
                        ev.action = Some(Action::Create);
                        ev.details.push("create directory".into());
                        ev.details.extend(pending);
                        ev.ops.push(Op::MkDir {
                            path: p.clone(),
                            perms: perms.clone(),
                        });
                    }
                    Ok(m) if !m.is_dir() => {
                        return Err(format!(
                            "`{}` exists and is not a directory",
                            path.display()
                        ));
                    }
                    Ok(m) => {
                        let diff = self.perm_diff(&m, perms)?;
                        if !diff.is_empty() {
                            ev.action = Some(Action::Update);
                            ev.details.extend(diff);
                            ev.ops.push(Op::Perms {
                                path: p.clone(),
                                perms: perms.clone(),
                            });
                        }
                        if *purge {
                            for gone in self.purge_list(path) {
                                ev.action.get_or_insert(Action::Update);
                                ev.details.push(format!("purge {}", gone.display()));
                                ev.ops.push(Op::Remove {
                                    path: self.target.path(&gone),
                                });
                            }
                        }
                    }
                }
                Ok(ev)
            }
            ResourceKind::Symlink {
                path,
                target,
                ensure,
            } => {
                let p = self.target.path(path);
                let mut ev = Eval::none();
                match (fs::symlink_metadata(&p), ensure) {
                    (Err(_), Ensure::Absent) => {}
                    (Ok(m), Ensure::Absent) if m.file_type().is_symlink() => {
                        ev.action = Some(Action::Remove);
                        ev.details.push("remove link".into());
                        ev.ops.push(Op::Remove { path: p });
                    }
                    (Ok(_), Ensure::Absent) => {
                        return Err(format!(
                            "`{}` is not a symlink; not removing it",
                            path.display()
                        ));
                    }
                    (Err(_), Ensure::Present) => {
                        ev.action = Some(Action::Create);
                        ev.details.push(format!("link → {}", target.display()));
                        ev.ops.push(Op::Symlink {
                            path: p,
                            target: target.clone(),
                        });
                    }
                    (Ok(m), Ensure::Present) if m.file_type().is_symlink() => {
                        let cur = fs::read_link(&p).map_err(|e| e.to_string())?;
                        if &cur != target {
                            ev.action = Some(Action::Update);
                            ev.details.push(format!(
                                "link {} → {}",
                                cur.display(),
                                target.display()
                            ));
                            ev.ops.push(Op::Symlink {
                                path: p,
                                target: target.clone(),
                            });
                        }
                    }
                    (Ok(_), Ensure::Present) => {
                        return Err(format!(
                            "`{}` exists and is not a symlink; remove it or manage it as a file",
                            path.display()
                        ));
                    }
                }
                Ok(ev)
            }
            ResourceKind::Line {
                path,
                line,
                regexp,
                ensure,
            } => {
                let re = match regexp {
                    Some(r) => Some(regex::Regex::new(r).map_err(|e| e.to_string())?),
                    None => None,
                };
                let cur = self.read_text(path)?;
                let new = edit_line(
                    cur.as_deref().unwrap_or(""),
                    line,
                    re.as_ref(),
                    *ensure == Ensure::Present,
                );
                self.edit_state(path, cur, new)
            }
            ResourceKind::Block {
                path,
                block,
                marker,
                ensure,
            } => {
                let cur = self.read_text(path)?;
                let new = edit_block(
                    cur.as_deref().unwrap_or(""),
                    block,
                    marker,
                    *ensure == Ensure::Present,
                );
                self.edit_state(path, cur, new)
            }
            ResourceKind::Package {
                name,
                version,
                ensure,
            } => {
                let installed = exec::dpkg_installed(&self.target, name);
                let mut ev = Eval::none();
                match (ensure, installed) {
                    (Ensure::Present, None) => {
                        ev.action = Some(Action::Create);
                        let spec = match version {
                            Some(v) => format!("{name}={v}"),
                            None => name.clone(),
                        };
                        ev.details.push(format!("install {spec}"));
                        ev.ops.push(Op::Apt {
                            args: vec!["install".into(), spec],
                        });
                    }
                    (Ensure::Present, Some(have)) => {
                        if let Some(v) = version
                            && *v != have
                        {
                            ev.action = Some(Action::Update);
                            ev.details.push(format!("version {have} → {v}"));
                            ev.ops.push(Op::Apt {
                                args: vec![
                                    "install".into(),
                                    "--allow-downgrades".into(),
                                    format!("{name}={v}"),
                                ],
                            });
                        }
                    }
                    (Ensure::Absent, Some(have)) => {
                        ev.action = Some(Action::Remove);
                        ev.details.push(format!("remove {name} {have}"));
                        ev.ops.push(Op::Apt {
                            args: vec!["remove".into(), name.clone()],
                        });
                    }
                    (Ensure::Absent, None) => {}
                }
                Ok(ev)
            }
            ResourceKind::Service {
                name,
                enabled,
                state,
            } => self.service(res, name, *enabled, *state, owed),
            ResourceKind::User { .. } | ResourceKind::Group { .. } => self.account(res),
            ResourceKind::Cron {
                name,
                schedule,
                command,
                user,
                ensure,
            } => {
                let path = cron_path(name);
                if *ensure == Ensure::Absent {
                    return self.removal(&self.target.path(&path), &path, false);
                }
                let content = format!(
                    "# Managed by steward (converge set `{}`, cron:{name}); edits are overwritten.\n\
                     SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
                     {schedule} {user} {command}\n",
                    self.set.name
                );
                let perms = Perms {
                    owner: Some("0".into()),
                    group: Some("0".into()),
                    mode: Some(0o644),
                };
                self.file_state(&path, Some(content.into_bytes()), &perms, false, 0o644)
            }
            ResourceKind::Sysctl { key, value } => {
                let path = sysctl_path(key);
                let perms = Perms {
                    mode: Some(0o644),
                    ..Perms::default()
                };
                let mut ev = self.file_state(
                    &path,
                    Some(format!("{key} = {value}\n").into_bytes()),
                    &perms,
                    false,
                    0o644,
                )?;
                if self.target.is_host() {
                    let live = Path::new("/proc/sys").join(key.replace('.', "/"));
                    let cur = fs::read_to_string(&live)
                        .map_err(|e| format!("cannot read `{}`: {e}", live.display()))?;
                    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
                    if norm(&cur) != norm(value) {
                        ev.action.get_or_insert(Action::Update);
                        ev.details
                            .push(format!("live {} → {}", norm(&cur), norm(value)));
                        ev.ops.push(Op::SysctlLive {
                            key: key.clone(),
                            value: value.clone(),
                        });
                    }
                }
                Ok(ev)
            }
            ResourceKind::Download {
                url,
                path,
                sha256,
                perms,
            } => {
                let p = self.target.path(path);
                let mut ev = Eval::none();
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_file() => {
                        let have =
                            hex::encode(Sha256::digest(fs::read(&p).map_err(|e| e.to_string())?));
                        if have != *sha256 {
                            ev.action = Some(Action::Update);
                            ev.details
                                .push(format!("sha256 {} → {}", &have[..12], &sha256[..12]));
                        } else {
                            let diff = self.perm_diff(&m, perms)?;
                            if !diff.is_empty() {
                                ev.action = Some(Action::Update);
                                ev.details.extend(diff);
                                ev.ops.push(Op::Perms {
                                    path: p,
                                    perms: perms.clone(),
                                });
                            }
                            return Ok(ev);
                        }
                    }
                    Ok(_) => return Err(format!("`{}` is not a regular file", path.display())),
                    Err(_) => {
                        ev.action = Some(Action::Create);
                        ev.details.extend(self.check_accounts(perms)?);
                    }
                }
                ev.details.push(format!("download {url}"));
                ev.ops.push(Op::Download {
                    url: url.clone(),
                    path: p,
                    sha256: sha256.clone(),
                    perms: perms.clone(),
                });
                Ok(ev)
            }
            ResourceKind::Exec {
                command,
                creates,
                unless,
                onlyif,
                refresh_only,
                cwd,
                env,
            } => {
                let mut ev = Eval::none();
                if owed.is_some() {
                    ev.settles_refresh = true;
                }
                if *refresh_only && owed.is_none() {
                    return Ok(Eval::none());
                }
                if let Some(c) = creates
                    && fs::symlink_metadata(self.target.path(c)).is_ok()
                {
                    return Ok(ev);
                }
                if let Some(g) = onlyif
                    && !self.guard(g, cwd, env)?
                {
                    return Ok(ev);
                }
                if let Some(g) = unless
                    && self.guard(g, cwd, env)?
                {
                    return Ok(ev);
                }
                ev.action = Some(if owed.is_some() {
                    Action::Refresh
                } else {
                    Action::Run
                });
                ev.details.push(format!("run `{}`", command.join(" ")));
                if let Some(by) = owed {
                    ev.details.push(format!("notified by {}", by.join(", ")));
                }
                if let Some(g) = unless {
                    ev.details
                        .push(format!("guard `{}` failed (unless)", g.join(" ")));
                }
                if let Some(g) = onlyif {
                    ev.details
                        .push(format!("guard `{}` passed (onlyif)", g.join(" ")));
                }
                ev.ops.push(Op::Cmd {
                    argv: command.clone(),
                    in_root: true,
                    env: env.clone(),
                    cwd: cwd.clone(),
                });
                Ok(ev)
            }
        }
    }

    fn root_prefix(&self) -> String {
        if self.target.is_host() {
            String::new()
        } else {
            self.target.dir().display().to_string()
        }
    }

    fn guard(
        &self,
        argv: &[String],
        cwd: &Option<PathBuf>,
        env: &BTreeMap<String, Text>,
    ) -> Result<bool, String> {
        let mut c = exec::command(&self.target, argv, cwd.as_deref());
        for (k, v) in env {
            c.env(
                k,
                v.resolve(self.resolver)
                    .map_err(|e| e.to_string())?
                    .expose(),
            );
        }
        c.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c.status()
            .map(|s| s.success())
            .map_err(|e| format!("guard `{}`: {e}", argv.join(" ")))
    }
}

fn systemctl(verb: &str, name: &str) -> Op {
    Op::Cmd {
        argv: vec!["systemctl".into(), verb.into(), format!("{name}.service")],
        in_root: false,
        env: BTreeMap::new(),
        cwd: None,
    }
}

/// Where a `cron` resource lives.
pub fn cron_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/etc/cron.d/steward-{name}"))
}

/// Where a `sysctl` resource persists its value.
pub fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from(format!("/etc/sysctl.d/60-steward-{key}.conf"))
}

fn facts_delta(a: &Facts, b: &Facts) -> String {
    let (a, b) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return String::new();
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect::<Vec<_>>()
        .join(", ")
}
