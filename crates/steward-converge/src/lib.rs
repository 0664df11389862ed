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
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use steward_spec::{
    Content, ConvergeSet, Ensure, Perms, Resolver, Resource, ResourceKind, ServiceState, Text,
};
use steward_state::Store;

pub use edit::{edit_block, edit_line};
pub use exec::installed_packages;
pub use facts::Facts;
pub use fsx::Target;

use fsx::{Accounts, Owned};

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
    store: Option<&'a Store>,
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
        store: Option<&'a Store>,
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

    fn read_text(&self, path: &Path) -> Result<Option<String>, String> {
        match fs::read(self.target.path(path)) {
            Ok(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| format!("`{}` is not UTF-8 text", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read `{}`: {e}", path.display())),
        }
    }

    /// A line or block edit: writes the new text when it differs.
    fn edit_state(&self, path: &Path, cur: Option<String>, new: String) -> Result<Eval, String> {
        let mut ev = Eval::none();
        let old = cur.as_deref().unwrap_or("");
        if cur.is_some() && old == new || cur.is_none() && new.is_empty() {
            return Ok(ev);
        }
        ev.action = Some(if cur.is_none() {
            Action::Create
        } else {
            Action::Update
        });
        ev.diff = render::unified(path, old.as_bytes(), new.as_bytes());
        ev.details.push(if cur.is_none() {
            "create file".into()
        } else {
            "edit".into()
        });
        ev.ops.push(Op::Write {
            path: self.target.path(path),
            content: new.into_bytes(),
            perms: Perms::default(),
            default_mode: 0o644,
        });
        Ok(ev)
    }

    /// A whole file with wanted content (or only existence) and permissions.
    fn file_state(
        &self,
        path: &Path,
        want: Option<Vec<u8>>,
        perms: &Perms,
        secret: bool,
        default_mode: u32,
    ) -> Result<Eval, String> {
        let p = self.target.path(path);
        let mut ev = Eval::none();
        let hidden = secret && !self.show_secrets;
        match fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let content = want.unwrap_or_default();
                let pending = self.check_accounts(perms)?;
                ev.action = Some(Action::Create);
                ev.details
                    .push(format!("create file ({} bytes)", content.len()));
                ev.details.extend(pending);
                ev.diff = if hidden {
                    Some(render::HIDDEN.into())
                } else {
                    render::unified(path, b"", &content)
                };
                ev.ops.push(Op::Write {
                    path: p,
                    content,
                    perms: perms.clone(),
                    default_mode,
                });
            }
            Err(e) => return Err(format!("cannot inspect `{}`: {e}", path.display())),
            Ok(m) if m.is_dir() => {
                return Err(format!("`{}` is a directory, not a file", path.display()));
            }
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "`{}` is a symlink; steward does not write through links",
                    path.display()
                ));
            }
            Ok(m) => {
                let perm_diff = self.perm_diff(&m, perms)?;
                let mut write = None;
                if let Some(want) = want {
                    let cur = fs::read(&p)
                        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
                    if cur != want {
                        ev.details.push("content".into());
                        ev.diff = if hidden {
                            Some(render::HIDDEN.into())
                        } else {
                            render::unified(path, &cur, &want)
                        };
                        write = Some(want);
                    }
                }
                if write.is_some() || !perm_diff.is_empty() {
                    ev.action = Some(Action::Update);
                }
                ev.details.extend(perm_diff.iter().cloned());
                match write {
                    Some(content) => ev.ops.push(Op::Write {
                        path: p,
                        content,
                        perms: perms.clone(),
                        default_mode,
                    }),
                    None if !perm_diff.is_empty() => ev.ops.push(Op::Perms {
                        path: p,
                        perms: perms.clone(),
                    }),
                    None => {}
                }
            }
        }
        Ok(ev)
    }

    fn removal(&self, p: &Path, spec_path: &Path, dir: bool) -> Result<Eval, String> {
        let mut ev = Eval::none();
        match fs::symlink_metadata(p) {
            Err(_) => {}
            Ok(m) if m.is_dir() && !dir => {
                return Err(format!(
                    "`{}` is a directory; remove it with a `directory` resource",
                    spec_path.display()
                ));
            }
            Ok(_) => {
                ev.action = Some(Action::Remove);
                ev.details.push(format!("remove {}", spec_path.display()));
                ev.ops.push(Op::Remove {
                    path: p.to_path_buf(),
                });
            }
        }
        Ok(ev)
    }

    /// Users or groups named in `perms` that a resource of this set will create.
    fn pending_account(&self, kind: &str, name: &str) -> bool {
        self.set
            .resources
            .iter()
            .any(|r| r.id == format!("{kind}:{name}"))
    }

    fn resolve(&self, perms: &Perms, acc: &Accounts) -> Result<(Owned, Vec<String>), String> {
        let mut pending = Vec::new();
        let uid = match &perms.owner {
            None => None,
            Some(o) => match acc.uid(o) {
                Some(u) => Some(u),
                None if self.pending_account("user", o) => {
                    pending.push(format!("owner → {o} (created by user:{o})"));
                    None
                }
                None => {
                    return Err(format!(
                        "unknown user `{o}`: not in {}/etc/passwd and no `user` resource creates it",
                        self.root_prefix()
                    ));
                }
            },
        };
        let gid = match &perms.group {
            None => None,
            Some(g) => match acc.gid(g) {
                Some(x) => Some(x),
                None if self.pending_account("group", g) => {
                    pending.push(format!("group → {g} (created by group:{g})"));
                    None
                }
                None => {
                    return Err(format!(
                        "unknown group `{g}`: not in {}/etc/group and no `group` resource creates it",
                        self.root_prefix()
                    ));
                }
            },
        };
        Ok((
            Owned {
                uid,
                gid,
                mode: perms.mode,
            },
            pending,
        ))
    }

    /// Fails when an owner or group exists nowhere; notes those the set will create.
    fn check_accounts(&self, perms: &Perms) -> Result<Vec<String>, String> {
        if perms.owner.is_none() && perms.group.is_none() {
            return Ok(Vec::new());
        }
        self.resolve(perms, &Accounts::read(&self.target))
            .map(|(_, pending)| pending)
    }

    fn root_prefix(&self) -> String {
        if self.target.is_host() {
            String::new()
        } else {
            self.target.dir().display().to_string()
        }
    }

    fn perm_diff(&self, meta: &fs::Metadata, perms: &Perms) -> Result<Vec<String>, String> {
        if perms.owner.is_none() && perms.group.is_none() && perms.mode.is_none() {
            return Ok(Vec::new());
        }
        let acc = Accounts::read(&self.target);
        let (owned, mut pending) = self.resolve(perms, &acc)?;
        let mut out = fsx::owned_diff(meta, owned);
        out.append(&mut pending);
        Ok(out)
    }

    /// Entries under a purged directory that no resource of the set touches.
    /// Managed subdirectories decide for themselves (their own `purge`).
    fn purge_list(&self, dir: &Path) -> Vec<PathBuf> {
        let mut gone = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(self.target.path(&d)) else {
                continue;
            };
            let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
            names.sort();
            for name in names {
                let name_str = name.to_string_lossy();
                // Our own atomic-write temporaries are in flight, not strays.
                if name_str.starts_with('.') && name_str.contains(".steward-") {
                    continue;
                }
                let p = d.join(&name);
                if self.touched.contains(&p) {
                    continue;
                }
                if self.touched.iter().any(|t| t.starts_with(&p)) {
                    stack.push(p);
                } else {
                    gone.push(p);
                }
            }
        }
        gone.sort();
        gone
    }

    fn service(
        &self,
        res: &Resource,
        name: &str,
        enabled: Option<bool>,
        state: Option<ServiceState>,
        owed: Option<&[String]>,
    ) -> Result<Eval, String> {
        let mut ev = Eval::none();
        if let Some(want) = enabled {
            match exec::find_unit(&self.target, name)? {
                None if want && self.package_pending(res) => {
                    ev.action = Some(Action::Update);
                    ev.details
                        .push("enable (its unit comes with a package installed first)".into());
                    ev.deferred = true;
                }
                None if want => {
                    return Err(format!(
                        "unit `{name}.service` not found under {}/{{etc,lib,usr/lib}}/systemd/system",
                        self.root_prefix()
                    ));
                }
                None => {}
                Some(unit) => {
                    if unit.links.is_empty() && want {
                        return Err(format!(
                            "`{name}.service` has no [Install] section; it cannot be enabled"
                        ));
                    }
                    for (link, dest) in &unit.links {
                        let real = self.target.path(link);
                        let exists = fs::symlink_metadata(&real).is_ok();
                        if want && !exists {
                            ev.ops.push(Op::Symlink {
                                path: real,
                                target: dest.clone(),
                            });
                        } else if !want && exists {
                            ev.ops.push(Op::Remove { path: real });
                        }
                    }
                    if !ev.ops.is_empty() {
                        ev.action = Some(Action::Update);
                        ev.details
                            .push(if want { "enable" } else { "disable" }.into());
                    }
                }
            }
        }
        let systemd = self.target.is_host() && Path::new("/run/systemd/system").is_dir();
        let mut started = false;
        if let Some(want) = state
            && self.target.is_host()
        {
            if !systemd {
                return Err(
                    "`state` needs systemd running as PID 1, and it is not here; manage `enabled` only"
                        .into(),
                );
            }
            let active = exec::quiet_ok(&self.target, &["systemctl", "is-active", "--quiet", name]);
            let verb = match (want, active) {
                (ServiceState::Running, false) => Some("start"),
                (ServiceState::Stopped, true) => Some("stop"),
                _ => None,
            };
            if let Some(verb) = verb {
                started = verb == "start";
                ev.action = Some(Action::Update);
                ev.details.push(verb.into());
                ev.ops.push(systemctl(verb, name));
            }
        }
        if let Some(by) = owed {
            ev.settles_refresh = true;
            ev.action.get_or_insert(Action::Refresh);
            if !systemd {
                ev.details.push(format!(
                    "restart skipped: systemd is not running here (notified by {})",
                    by.join(", ")
                ));
            } else if !started && state != Some(ServiceState::Stopped) {
                ev.details
                    .push(format!("restart (notified by {})", by.join(", ")));
                ev.ops.push(systemctl("restart", name));
            }
        }
        Ok(ev)
    }

    /// Whether a package resource earlier in the set is about to be installed.
    fn package_pending(&self, res: &Resource) -> bool {
        self.set.resources.iter().any(|r| {
            res.after.contains(&r.id)
                && matches!(&r.kind, ResourceKind::Package { name, ensure: Ensure::Present, .. }
                    if exec::dpkg_installed(&self.target, name).is_none())
        })
    }

    fn account(&self, res: &Resource) -> Result<Eval, String> {
        let acc = Accounts::read(&self.target);
        let mut ev = Eval::none();
        let root_args: Vec<String> = if self.target.is_host() {
            Vec::new()
        } else {
            vec!["--root".into(), self.target.dir().display().to_string()]
        };
        let cmd = |prog: &str, args: Vec<String>| {
            let mut argv = vec![prog.to_string()];
            argv.extend(root_args.iter().cloned());
            argv.extend(args);
            Op::Cmd {
                argv,
                in_root: false,
                env: BTreeMap::new(),
                cwd: None,
            }
        };
        match &res.kind {
            ResourceKind::Group {
                name,
                gid,
                system,
                ensure,
            } => match (acc.group(name), ensure) {
                (None, Ensure::Present) => {
                    let mut args = Vec::new();
                    if let Some(g) = gid {
                        args.extend(["--gid".into(), g.to_string()]);
                    }
                    if *system {
                        args.push("--system".into());
                    }
                    args.push(name.clone());
                    ev.action = Some(Action::Create);
                    ev.details.push(format!("create group {name}"));
                    ev.ops.push(cmd("groupadd", args));
                }
                (Some(g), Ensure::Present) => {
                    if let Some(want) = gid
                        && g.id != *want
                    {
                        ev.action = Some(Action::Update);
                        ev.details.push(format!("gid {} → {want}", g.id));
                        ev.ops.push(cmd(
                            "groupmod",
                            vec!["--gid".into(), want.to_string(), name.clone()],
                        ));
                    }
                }
                (Some(_), Ensure::Absent) => {
                    ev.action = Some(Action::Remove);
                    ev.details.push(format!("remove group {name}"));
                    ev.ops.push(cmd("groupdel", vec![name.clone()]));
                }
                (None, Ensure::Absent) => {}
            },
            ResourceKind::User {
                name,
                uid,
                group,
                groups,
                home,
                shell,
                system,
                ensure,
            } => {
                let current = acc.user(name);
                if *ensure == Ensure::Absent {
                    if current.is_some() {
                        ev.action = Some(Action::Remove);
                        ev.details.push(format!("remove user {name}"));
                        ev.ops.push(cmd("userdel", vec![name.clone()]));
                    }
                    return Ok(ev);
                }
                for g in group.iter().chain(groups) {
                    if acc.gid(g).is_none() && !self.pending_account("group", g) {
                        return Err(format!(
                            "unknown group `{g}`: not in {}/etc/group and no `group` resource creates it",
                            self.root_prefix()
                        ));
                    }
                }
                let mut args = Vec::new();
                let Some(u) = current else {
                    if let Some(x) = uid {
                        args.extend(["--uid".into(), x.to_string()]);
                    }
                    if let Some(g) = group {
                        args.extend(["--gid".into(), g.clone()]);
                    }
                    if !groups.is_empty() {
                        args.extend(["--groups".into(), groups.join(",")]);
                    }
                    if let Some(h) = home {
                        args.extend(["--home-dir".into(), h.clone()]);
                    }
                    if let Some(s) = shell {
                        args.extend(["--shell".into(), s.clone()]);
                    }
                    if *system {
                        args.push("--system".into());
                    } else {
                        args.push("--create-home".into());
                    }
                    args.push(name.clone());
                    ev.action = Some(Action::Create);
                    ev.details.push(format!("create user {name}"));
                    ev.ops.push(cmd("useradd", args));
                    return Ok(ev);
                };
                if let Some(x) = uid
                    && u.id != *x
                {
                    ev.details.push(format!("uid {} → {x}", u.id));
                    args.extend(["--uid".into(), x.to_string()]);
                }
                if let Some(g) = group
                    && acc.gid(g) != Some(u.gid)
                {
                    ev.details.push(format!("primary group → {g}"));
                    args.extend(["--gid".into(), g.clone()]);
                }
                if !groups.is_empty() {
                    let have: BTreeSet<&str> = acc
                        .groups
                        .iter()
                        .filter(|g| g.members.iter().any(|m| m == name))
                        .map(|g| g.name.as_str())
                        .collect();
                    let want: BTreeSet<&str> = groups.iter().map(String::as_str).collect();
                    if have != want {
                        ev.details.push(format!(
                            "groups {} → {}",
                            have.into_iter().collect::<Vec<_>>().join(","),
                            groups.join(",")
                        ));
                        args.extend(["--groups".into(), groups.join(",")]);
                    }
                }
                if let Some(h) = home
                    && u.home != *h
                {
                    ev.details.push(format!("home {} → {h}", u.home));
                    args.extend(["--home".into(), h.clone()]);
                }
                if let Some(s) = shell
                    && u.shell != *s
                {
                    ev.details.push(format!("shell {} → {s}", u.shell));
                    args.extend(["--shell".into(), s.clone()]);
                }
                if !args.is_empty() {
                    args.push(name.clone());
                    ev.action = Some(Action::Update);
                    ev.ops.push(cmd("usermod", args));
                }
            }
            _ => unreachable!("account() is called for users and groups"),
        }
        Ok(ev)
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

    fn execute(&self, op: &Op) -> Result<(), String> {
        let show = |p: &Path| p.display().to_string();
        match op {
            Op::Write {
                path,
                content,
                perms,
                default_mode,
            } => {
                let acc = Accounts::read(&self.target);
                let (mut owned, pending) = self.resolve(perms, &acc)?;
                if let Some(p) = pending.first() {
                    return Err(format!("{p}: it does not exist yet"));
                }
                match fs::symlink_metadata(path) {
                    Ok(m) => {
                        owned.uid = owned.uid.or(Some(m.uid()));
                        owned.gid = owned.gid.or(Some(m.gid()));
                        owned.mode = owned.mode.or(Some(m.mode() & 0o7777));
                    }
                    Err(_) => owned.mode = owned.mode.or(Some(*default_mode)),
                }
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| format!("cannot create `{}`: {e}", show(parent)))?;
                }
                fsx::write_atomic(path, content, owned)
                    .map_err(|e| format!("cannot write `{}`: {e}", show(path)))
            }
            Op::Perms { path, perms } => {
                let acc = Accounts::read(&self.target);
                let (owned, _) = self.resolve(perms, &acc)?;
                fsx::set_owned(path, owned).map_err(|e| format!("`{}`: {e}", show(path)))
            }
            Op::MkDir { path, perms } => {
                fs::create_dir_all(path)
                    .map_err(|e| format!("cannot create `{}`: {e}", show(path)))?;
                let acc = Accounts::read(&self.target);
                let (owned, _) = self.resolve(perms, &acc)?;
                fsx::set_owned(path, owned).map_err(|e| format!("`{}`: {e}", show(path)))
            }
            Op::Remove { path } => {
                fsx::remove_any(path).map_err(|e| format!("cannot remove `{}`: {e}", show(path)))
            }
            Op::Symlink { path, target } => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| format!("cannot create `{}`: {e}", show(parent)))?;
                }
                fsx::symlink_atomic(path, target)
                    .map_err(|e| format!("cannot link `{}`: {e}", show(path)))
            }
            Op::Apt { args } => exec::apt(&self.target, args),
            Op::Cmd {
                argv,
                in_root,
                env,
                cwd,
            } => {
                let mut c = if *in_root {
                    exec::command(&self.target, argv, cwd.as_deref())
                } else {
                    exec::command(&Target::host(), argv, None)
                };
                for (k, v) in env {
                    c.env(
                        k,
                        v.resolve(self.resolver)
                            .map_err(|e| e.to_string())?
                            .expose(),
                    );
                }
                exec::run(c, &argv.join(" "))
            }
            Op::Download {
                url,
                path,
                sha256,
                perms,
            } => {
                let acc = Accounts::read(&self.target);
                let (mut owned, _) = self.resolve(perms, &acc)?;
                owned.mode = owned.mode.or(Some(0o644));
                exec::download(url, path, sha256, owned)
            }
            Op::SysctlLive { key, value } => {
                let live = Path::new("/proc/sys").join(key.replace('.', "/"));
                fs::write(&live, value).map_err(|e| format!("cannot set {key}: {e}"))
            }
        }
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
