//! `[converge.NAME]`: resource sets describing a host's desired state.
//!
//! Parsing and validation live here so every problem that can be known from the
//! spec alone (a bad regexp, a template that does not parse, a missing source file,
//! a reference to an unknown resource, a cycle) is reported with the rest of the
//! spec, before anything runs. Observing and changing a host is `steward-converge`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{Diagnostics, did_you_mean};
use crate::duration::Dur;
use crate::secret::{Resolver, Text};

/// A named set of resources, converged together (`steward converge apply NAME`).
#[derive(Debug, Clone)]
pub struct ConvergeSet {
    /// The key in `[converge.NAME]`.
    pub name: String,
    /// Variables for templates (`{{ vars.x }}`), as JSON values.
    pub vars: serde_json::Map<String, serde_json::Value>,
    /// Resources in the order they are applied (dependencies first).
    pub resources: Vec<Resource>,
    /// `serve` plans this set this often and records drift.
    pub drift_check: Option<Dur>,
    /// `serve` applies the set when drift is found.
    pub auto_correct: bool,
}

/// Whether a resource should exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ensure {
    /// Make it exist as described.
    #[default]
    Present,
    /// Remove it.
    Absent,
}

/// Desired run state of a systemd service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// Started.
    Running,
    /// Stopped.
    Stopped,
}

/// One resource of a set.
#[derive(Debug, Clone)]
pub struct Resource {
    /// `kind:name`, e.g. `file:/etc/app.conf`, `package:nginx`, `exec:migrate`.
    pub id: String,
    /// What it manages.
    pub kind: ResourceKind,
    /// Resources applied before this one (explicit and automatic edges).
    pub after: Vec<String>,
    /// Resources refreshed (service restart, `refresh_only` exec) when this one changes.
    pub notify: Vec<String>,
    /// 1-based spec line, for messages.
    pub line: usize,
}

/// Ownership and permissions of a file system object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Perms {
    /// User name or numeric uid.
    pub owner: Option<String>,
    /// Group name or numeric gid.
    pub group: Option<String>,
    /// Permission bits.
    pub mode: Option<u32>,
}

/// Where a file's content comes from.
#[derive(Debug, Clone)]
pub enum Content {
    /// Written in the spec (possibly a secret reference).
    Inline(Text),
    /// Copied from a file next to the spec.
    Source(PathBuf),
}

/// The kinds of resources.
#[derive(Debug, Clone)]
pub enum ResourceKind {
    /// A regular file with given content.
    File {
        /// Absolute path (under the root).
        path: PathBuf,
        /// Content; `None` manages only existence and permissions.
        content: Option<Content>,
        /// Owner, group, mode.
        perms: Perms,
        /// Present or absent.
        ensure: Ensure,
    },
    /// A file rendered from a Jinja2 template.
    Template {
        /// Absolute path (under the root).
        path: PathBuf,
        /// Template file (for messages).
        source: PathBuf,
        /// Template text, read at validation.
        text: String,
        /// Variables for this template only (override the set's).
        vars: serde_json::Map<String, serde_json::Value>,
        /// Owner, group, mode.
        perms: Perms,
    },
    /// A directory.
    Directory {
        /// Absolute path (under the root).
        path: PathBuf,
        /// Owner, group, mode.
        perms: Perms,
        /// Remove entries no resource of the set manages.
        purge: bool,
        /// Present or absent (absent removes the tree).
        ensure: Ensure,
    },
    /// A symbolic link.
    Symlink {
        /// Absolute path of the link (under the root).
        path: PathBuf,
        /// What it points to, as written into the link.
        target: PathBuf,
        /// Present or absent.
        ensure: Ensure,
    },
    /// One line in a file.
    Line {
        /// File edited.
        path: PathBuf,
        /// The line, without its newline.
        line: String,
        /// Lines this matches are replaced (present) or removed (absent).
        regexp: Option<String>,
        /// Present or absent.
        ensure: Ensure,
    },
    /// A block between marker lines.
    Block {
        /// File edited.
        path: PathBuf,
        /// Block content (lines).
        block: String,
        /// Marker line prefix/suffix around `BEGIN`/`END`.
        marker: String,
        /// Present or absent.
        ensure: Ensure,
    },
    /// A Debian package (apt).
    Package {
        /// Package name.
        name: String,
        /// Exact version wanted.
        version: Option<String>,
        /// Present or absent.
        ensure: Ensure,
    },
    /// A systemd service.
    Service {
        /// Unit name without `.service`.
        name: String,
        /// Enabled at boot.
        enabled: Option<bool>,
        /// Running or stopped now (needs systemd as PID 1).
        state: Option<ServiceState>,
    },
    /// A local user account.
    User {
        /// Login name.
        name: String,
        /// Numeric uid.
        uid: Option<u32>,
        /// Primary group.
        group: Option<String>,
        /// Supplementary groups.
        groups: Vec<String>,
        /// Home directory.
        home: Option<String>,
        /// Login shell.
        shell: Option<String>,
        /// A system account (low uid, no aging).
        system: bool,
        /// Present or absent.
        ensure: Ensure,
    },
    /// A local group.
    Group {
        /// Group name.
        name: String,
        /// Numeric gid.
        gid: Option<u32>,
        /// A system group.
        system: bool,
        /// Present or absent.
        ensure: Ensure,
    },
    /// A cron job, as `/etc/cron.d/steward-NAME`.
    Cron {
        /// Job name.
        name: String,
        /// Five-field schedule.
        schedule: String,
        /// Command line.
        command: String,
        /// Runs as this user.
        user: String,
        /// Present or absent.
        ensure: Ensure,
    },
    /// A kernel parameter, persisted in `/etc/sysctl.d/` and set live on `/`.
    Sysctl {
        /// Dotted key, e.g. `net.core.somaxconn`.
        key: String,
        /// Value.
        value: String,
    },
    /// A file fetched from a URL and verified.
    Download {
        /// Source URL.
        url: String,
        /// Absolute path (under the root).
        path: PathBuf,
        /// Expected SHA-256, lowercase hex.
        sha256: String,
        /// Owner, group, mode.
        perms: Perms,
    },
    /// A command, run when its guards say so.
    Exec {
        /// Program and arguments.
        command: Vec<String>,
        /// Skip when this path exists (under the root).
        creates: Option<PathBuf>,
        /// Skip when this command succeeds.
        unless: Option<Vec<String>>,
        /// Run only when this command succeeds.
        onlyif: Option<Vec<String>>,
        /// Run only when notified.
        refresh_only: bool,
        /// Working directory.
        cwd: Option<PathBuf>,
        /// Extra environment.
        env: BTreeMap<String, Text>,
    },
}

impl ResourceKind {
    /// The kind's name as written in the spec.
    pub fn kind_name(&self) -> &'static str {
        match self {
            ResourceKind::File { .. } => "file",
            ResourceKind::Template { .. } => "template",
            ResourceKind::Directory { .. } => "directory",
            ResourceKind::Symlink { .. } => "symlink",
            ResourceKind::Line { .. } => "line",
            ResourceKind::Block { .. } => "block",
            ResourceKind::Package { .. } => "package",
            ResourceKind::Service { .. } => "service",
            ResourceKind::User { .. } => "user",
            ResourceKind::Group { .. } => "group",
            ResourceKind::Cron { .. } => "cron",
            ResourceKind::Sysctl { .. } => "sysctl",
            ResourceKind::Download { .. } => "download",
            ResourceKind::Exec { .. } => "exec",
        }
    }

    /// The path a file-system resource owns (whole object, not an edit).
    pub fn owned_path(&self) -> Option<&Path> {
        match self {
            ResourceKind::File { path, .. }
            | ResourceKind::Template { path, .. }
            | ResourceKind::Directory { path, .. }
            | ResourceKind::Symlink { path, .. }
            | ResourceKind::Download { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The path a resource writes to, owned or edited.
    pub fn touched_path(&self) -> Option<&Path> {
        match self {
            ResourceKind::Line { path, .. } | ResourceKind::Block { path, .. } => Some(path),
            _ => self.owned_path(),
        }
    }

    fn perms(&self) -> Option<&Perms> {
        match self {
            ResourceKind::File { perms, .. }
            | ResourceKind::Template { perms, .. }
            | ResourceKind::Directory { perms, .. }
            | ResourceKind::Download { perms, .. } => Some(perms),
            _ => None,
        }
    }
}

/// Keys every resource accepts.
macro_rules! resource {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct $name {
            $(pub(crate) $field: $ty,)*
            #[serde(default)]
            pub(crate) requires: Vec<Spanned<String>>,
            #[serde(default)]
            pub(crate) before: Vec<Spanned<String>>,
            #[serde(default)]
            pub(crate) notify: Vec<Spanned<String>>,
        }
    };
}

resource!(RawFile { path: Spanned<String>, content: Option<Text>, source: Option<Spanned<String>>, owner: Option<String>, group: Option<String>, mode: Option<Spanned<String>>, ensure: Option<Ensure> });
resource!(RawTemplate { path: Spanned<String>, source: Spanned<String>, vars: Option<toml::Table>, owner: Option<String>, group: Option<String>, mode: Option<Spanned<String>> });
resource!(RawDirectory { path: Spanned<String>, owner: Option<String>, group: Option<String>, mode: Option<Spanned<String>>, purge: Option<bool>, ensure: Option<Ensure> });
resource!(RawSymlink { path: Spanned<String>, target: String, ensure: Option<Ensure> });
resource!(RawLine { path: Spanned<String>, line: String, regexp: Option<Spanned<String>>, ensure: Option<Ensure>, name: Option<String> });
resource!(RawBlock { path: Spanned<String>, block: String, marker: Option<Spanned<String>>, ensure: Option<Ensure>, name: Option<String> });
resource!(RawPackage { name: Spanned<String>, version: Option<String>, ensure: Option<Ensure> });
resource!(RawService { name: Spanned<String>, enabled: Option<bool>, state: Option<ServiceState> });
resource!(RawUser { name: Spanned<String>, uid: Option<u32>, group: Option<String>, groups: Option<Vec<String>>, home: Option<String>, shell: Option<String>, system: Option<bool>, ensure: Option<Ensure> });
resource!(RawGroup { name: Spanned<String>, gid: Option<u32>, system: Option<bool>, ensure: Option<Ensure> });
resource!(RawCron { name: Spanned<String>, schedule: Spanned<String>, command: String, user: Option<String>, ensure: Option<Ensure> });
resource!(RawSysctl { key: Spanned<String>, value: String });
resource!(RawDownload { url: Spanned<String>, path: Spanned<String>, sha256: Spanned<String>, owner: Option<String>, group: Option<String>, mode: Option<Spanned<String>> });
resource!(RawExec { name: Option<String>, command: Spanned<Vec<String>>, creates: Option<Spanned<String>>, unless: Option<Vec<String>>, onlyif: Option<Vec<String>>, refresh_only: Option<bool>, cwd: Option<String>, env: Option<BTreeMap<String, Text>> });

/// `[converge.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConverge {
    pub(crate) include: Option<Vec<Spanned<String>>>,
    pub(crate) vars: Option<toml::Table>,
    pub(crate) drift_check: Option<Dur>,
    pub(crate) auto_correct: Option<bool>,
    #[serde(default)]
    pub(crate) file: Vec<Spanned<RawFile>>,
    #[serde(default)]
    pub(crate) template: Vec<Spanned<RawTemplate>>,
    #[serde(default)]
    pub(crate) directory: Vec<Spanned<RawDirectory>>,
    #[serde(default)]
    pub(crate) symlink: Vec<Spanned<RawSymlink>>,
    #[serde(default)]
    pub(crate) line: Vec<Spanned<RawLine>>,
    #[serde(default)]
    pub(crate) block: Vec<Spanned<RawBlock>>,
    #[serde(default)]
    pub(crate) package: Vec<Spanned<RawPackage>>,
    #[serde(default)]
    pub(crate) service: Vec<Spanned<RawService>>,
    #[serde(default)]
    pub(crate) user: Vec<Spanned<RawUser>>,
    #[serde(default)]
    pub(crate) group: Vec<Spanned<RawGroup>>,
    #[serde(default)]
    pub(crate) cron: Vec<Spanned<RawCron>>,
    #[serde(default)]
    pub(crate) sysctl: Vec<Spanned<RawSysctl>>,
    #[serde(default)]
    pub(crate) download: Vec<Spanned<RawDownload>>,
    #[serde(default)]
    pub(crate) exec: Vec<Spanned<RawExec>>,
}

/// Whether two `line` resources on one file undo each other, and how: one's
/// regexp (or exact line) takes the other's line away or rewrites it.
fn lines_fight(a: &ResourceKind, b: &ResourceKind) -> Option<String> {
    let (
        ResourceKind::Line {
            path: pa,
            line: la,
            regexp: ra,
            ensure: ea,
        },
        ResourceKind::Line {
            path: pb,
            line: lb,
            regexp: rb,
            ensure: eb,
        },
    ) = (a, b)
    else {
        return None;
    };
    if pa != pb {
        return None;
    }
    let present = |e: &Ensure| *e != Ensure::Absent;
    // Whether a resource rewrites or removes `other`: its regexp matches it
    // (without a regexp, only its exact line is its own).
    let touches = |re: &Option<String>, own: &str, other: &str| match re {
        Some(re) => regex::Regex::new(re).is_ok_and(|r| r.is_match(other)),
        None => own == other,
    };
    match (present(ea), present(eb)) {
        // One removes what the other adds.
        (false, true) if touches(ra, la, lb) => {
            Some(format!("one removes `{lb}`, which the other adds"))
        }
        (true, false) if touches(rb, lb, la) => {
            Some(format!("one removes `{la}`, which the other adds"))
        }
        // Each rewrites the other's line into its own (a line already
        // present is left alone, so one-sided overlap settles after a run).
        (true, true) if la != lb && touches(ra, la, lb) && touches(rb, lb, la) => Some(format!(
            "each rewrites the other's line (`{la}` and `{lb}`) into its own"
        )),
        _ => None,
    }
}

/// A resource under construction: its model plus the spans of its references.
struct Pending {
    /// Which file it was written in: 0 the spec, 1.. included files in order.
    src: usize,
    res: Resource,
    span: Range<usize>,
    requires: Vec<Spanned<String>>,
    before: Vec<Spanned<String>>,
    notify: Vec<Spanned<String>>,
}

pub(crate) fn converge_set(
    d: &mut Diagnostics,
    name: &str,
    set_span: Range<usize>,
    mut raw: RawConverge,
    base_dir: &Path,
    resolver: &dyn Resolver,
) -> Option<ConvergeSet> {
    let before_errors = d.errors.len();
    let mut pend: Vec<Pending> = Vec::new();
    let (include, drift_check, auto_correct) =
        (raw.include.take(), raw.drift_check, raw.auto_correct);
    let mut vars = serde_json::Map::new();
    let own_vars = raw.vars.take();
    collect(d, 0, name, raw, base_dir, resolver, &mut pend);
    // Included files: resources (and vars) of this set written elsewhere; their
    // problems are reported against their own file, line and column.
    let mut extra: Vec<Diagnostics> = Vec::new();
    for inc in include.unwrap_or_default() {
        let path = base_dir.join(inc.get_ref());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                d.error(
                    inc.span(),
                    format!("cannot read included file `{}`: {e}", path.display()),
                    "unreadable",
                    Some("included paths are relative to the spec file".into()),
                );
                continue;
            }
        };
        let mut di = Diagnostics::new(&path.display().to_string(), &text);
        let (root, syntax) = toml::de::DeTable::parse_recoverable(&text);
        for e in &syntax {
            di.toml(e, 0..0, None);
        }
        if syntax.is_empty() {
            let span = root.span();
            let value = Spanned::new(span.clone(), toml::de::DeValue::Table(root.into_inner()));
            match RawConverge::deserialize(toml::de::ValueDeserializer::from(value)) {
                Err(e) => di.toml(&e, span, None),
                Ok(mut inner) => {
                    if inner.include.is_some()
                        || inner.drift_check.is_some()
                        || inner.auto_correct.is_some()
                    {
                        di.error(
                            0..0,
                            "`include`, `drift_check` and `auto_correct` belong in the spec's [converge.NAME], not in an included file",
                            "set-level key",
                            None,
                        );
                    }
                    if let Some(v) = inner.vars.take() {
                        vars.extend(table_json(&v));
                    }
                    let dir = path.parent().unwrap_or(base_dir).to_path_buf();
                    collect(
                        &mut di,
                        extra.len() + 1,
                        name,
                        inner,
                        &dir,
                        resolver,
                        &mut pend,
                    );
                }
            }
        }
        extra.push(di);
    }
    if let Some(v) = own_vars {
        vars.extend(table_json(&v));
    }
    let set = finish_set(
        d,
        &mut extra,
        name,
        set_span,
        pend,
        vars,
        drift_check,
        auto_correct,
    );
    let extra_errors: usize = extra.iter().map(|x| x.errors.len()).sum();
    for x in extra {
        d.errors.extend(x.errors);
    }
    if d.errors.len() > before_errors || extra_errors > 0 {
        return None;
    }
    set
}

/// Picks one file's diagnostics: 0 is the spec, 1.. the included files.
fn dg<'a>(d: &'a mut Diagnostics, extra: &'a mut [Diagnostics], src: usize) -> &'a mut Diagnostics {
    if src == 0 { d } else { &mut extra[src - 1] }
}

/// One file's resources of a set, checked one by one.
fn collect(
    d: &mut Diagnostics,
    src: usize,
    name: &str,
    raw: RawConverge,
    base_dir: &Path,
    resolver: &dyn Resolver,
    pend: &mut Vec<Pending>,
) {
    let line_of = |d: &Diagnostics, span: &Range<usize>| d.line_of(span.start);
    macro_rules! push {
        ($d:expr, $r:expr, $id:expr, $kind:expr) => {{
            let span = $r.span();
            let line = line_of($d, &span);
            let r = $r.into_inner();
            pend.push(Pending {
                src,
                res: Resource {
                    id: $id,
                    kind: $kind,
                    after: Vec::new(),
                    notify: Vec::new(),
                    line,
                },
                span,
                requires: r.requires,
                before: r.before,
                notify: r.notify,
            });
        }};
    }

    for r in raw.file {
        let f = r.get_ref();
        let path = abs_path(d, &f.path);
        let perms = perms(d, &f.owner, &f.group, &f.mode);
        let content = match (&f.content, &f.source) {
            (Some(_), Some(s)) => {
                d.error(
                    s.span(),
                    "a file takes `content` or `source`, not both",
                    "second content",
                    None,
                );
                None
            }
            (Some(t), None) => {
                if t.has_references()
                    && let Err(e) = t.check(resolver)
                {
                    d.error(
                        r.span(),
                        format!("cannot resolve reference: {e}"),
                        "unresolvable",
                        None,
                    );
                }
                Some(Content::Inline(t.clone()))
            }
            (None, Some(s)) => source_file(d, s, base_dir).map(Content::Source),
            (None, None) => None,
        };
        let ensure = f.ensure.unwrap_or_default();
        push!(
            d,
            r,
            format!("file:{}", path.display()),
            ResourceKind::File {
                path,
                content,
                perms,
                ensure
            }
        );
    }
    for r in raw.template {
        let t = r.get_ref();
        let path = abs_path(d, &t.path);
        let perms = perms(d, &t.owner, &t.group, &t.mode);
        let vars = t.vars.as_ref().map(table_json).unwrap_or_default();
        let Some(source) = source_file(d, &t.source, base_dir) else {
            continue;
        };
        let text = match std::fs::read_to_string(&source) {
            Ok(text) => text,
            Err(e) => {
                d.error(
                    t.source.span(),
                    format!("cannot read template `{}`: {e}", source.display()),
                    "unreadable",
                    None,
                );
                continue;
            }
        };
        if let Err(e) = template_env().template_from_named_str(&source.display().to_string(), &text)
        {
            d.error(
                t.source.span(),
                format!(
                    "template `{}` line {}: {}",
                    source.display(),
                    e.line().unwrap_or(0),
                    e.detail().unwrap_or("syntax error")
                ),
                "does not parse",
                None,
            );
            continue;
        }
        push!(
            d,
            r,
            format!("template:{}", path.display()),
            ResourceKind::Template {
                path,
                source,
                text,
                vars,
                perms
            }
        );
    }
    for r in raw.directory {
        let t = r.get_ref();
        let path = abs_path(d, &t.path);
        let perms = perms(d, &t.owner, &t.group, &t.mode);
        let (purge, ensure) = (t.purge.unwrap_or(false), t.ensure.unwrap_or_default());
        if path == Path::new("/") && (purge || ensure == Ensure::Absent) {
            d.error(
                t.path.span(),
                "refusing to purge or remove `/`",
                "the whole root",
                None,
            );
        }
        push!(
            d,
            r,
            format!("directory:{}", path.display()),
            ResourceKind::Directory {
                path,
                perms,
                purge,
                ensure
            }
        );
    }
    for r in raw.symlink {
        let t = r.get_ref();
        let path = abs_path(d, &t.path);
        let (target, ensure) = (PathBuf::from(&t.target), t.ensure.unwrap_or_default());
        push!(
            d,
            r,
            format!("symlink:{}", path.display()),
            ResourceKind::Symlink {
                path,
                target,
                ensure
            }
        );
    }
    for r in raw.line {
        let t = r.get_ref();
        let path = abs_path(d, &t.path);
        if t.line.contains('\n') {
            d.error(
                r.span(),
                "`line` must be a single line",
                "contains a newline",
                Some("use a `block` resource for several lines".into()),
            );
        }
        if let Some(re) = &t.regexp
            && let Err(e) = regex::Regex::new(re.get_ref())
        {
            d.error(
                re.span(),
                format!("invalid regexp: {}", regex_reason(&e)),
                "does not compile",
                None,
            );
        }
        let id = format!(
            "line:{}",
            t.name
                .clone()
                .unwrap_or_else(|| format!("{}:{}", path.display(), t.line))
        );
        let (line, regexp, ensure) = (
            t.line.clone(),
            t.regexp.as_ref().map(|r| r.get_ref().clone()),
            t.ensure.unwrap_or_default(),
        );
        push!(
            d,
            r,
            id,
            ResourceKind::Line {
                path,
                line,
                regexp,
                ensure
            }
        );
    }
    for r in raw.block {
        let t = r.get_ref();
        let path = abs_path(d, &t.path);
        let block_name = t.name.clone().unwrap_or_else(|| name.to_string());
        let marker = match &t.marker {
            Some(m) if !m.get_ref().contains("{mark}") => {
                d.error(
                    m.span(),
                    "`marker` must contain `{mark}` (replaced by BEGIN and END)",
                    "no {mark}",
                    Some("e.g. `# {mark} managed by steward`".into()),
                );
                String::new()
            }
            Some(m) => m.get_ref().clone(),
            None => format!("# {{mark}} steward {block_name}"),
        };
        let (block, ensure) = (t.block.clone(), t.ensure.unwrap_or_default());
        push!(
            d,
            r,
            format!("block:{}:{block_name}", path.display()),
            ResourceKind::Block {
                path,
                block,
                marker,
                ensure
            }
        );
    }
    for r in raw.package {
        let t = r.get_ref();
        let pname = t.name.get_ref().clone();
        if !pname
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
            || pname.is_empty()
        {
            d.error(
                t.name.span(),
                format!("`{pname}` is not a Debian package name"),
                "invalid",
                Some("package names use lowercase letters, digits, `+`, `-` and `.`".into()),
            );
        }
        let (version, ensure) = (t.version.clone(), t.ensure.unwrap_or_default());
        push!(
            d,
            r,
            format!("package:{pname}"),
            ResourceKind::Package {
                name: pname,
                version,
                ensure
            }
        );
    }
    for r in raw.service {
        let t = r.get_ref();
        let sname = t.name.get_ref().trim_end_matches(".service").to_string();
        if t.enabled.is_none() && t.state.is_none() {
            d.error(
                r.span(),
                format!("service `{sname}` says nothing to do"),
                "no `enabled` or `state`",
                Some("set `enabled = true` and/or `state = \"running\"`".into()),
            );
        }
        let (enabled, state) = (t.enabled, t.state);
        push!(
            d,
            r,
            format!("service:{sname}"),
            ResourceKind::Service {
                name: sname,
                enabled,
                state
            }
        );
    }
    for r in raw.user {
        let t = r.get_ref();
        let uname = account_name(d, &t.name);
        let kind = ResourceKind::User {
            name: uname.clone(),
            uid: t.uid,
            group: t.group.clone(),
            groups: t.groups.clone().unwrap_or_default(),
            home: t.home.clone(),
            shell: t.shell.clone(),
            system: t.system.unwrap_or(false),
            ensure: t.ensure.unwrap_or_default(),
        };
        push!(d, r, format!("user:{uname}"), kind);
    }
    for r in raw.group {
        let t = r.get_ref();
        let gname = account_name(d, &t.name);
        let kind = ResourceKind::Group {
            name: gname.clone(),
            gid: t.gid,
            system: t.system.unwrap_or(false),
            ensure: t.ensure.unwrap_or_default(),
        };
        push!(d, r, format!("group:{gname}"), kind);
    }
    for r in raw.cron {
        let t = r.get_ref();
        let cname = t.name.get_ref().clone();
        if !cname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            d.error(
                t.name.span(),
                format!("cron job name `{cname}` may use only letters, digits, `-` and `_`"),
                "invalid",
                Some(
                    "it becomes a file name in /etc/cron.d, where cron ignores names with dots"
                        .into(),
                ),
            );
        }
        let sched = t.schedule.get_ref();
        let macro_ok = sched.starts_with('@');
        if !macro_ok
            && (sched.split_whitespace().count() != 5
                || croner::parser::CronParser::new().parse(sched).is_err())
        {
            d.error(
                t.schedule.span(),
                format!("invalid cron schedule `{sched}`"),
                "not a cron expression",
                Some("five fields: minute hour day-of-month month day-of-week".into()),
            );
        }
        let kind = ResourceKind::Cron {
            name: cname.clone(),
            schedule: sched.clone(),
            command: t.command.clone(),
            user: t.user.clone().unwrap_or_else(|| "root".into()),
            ensure: t.ensure.unwrap_or_default(),
        };
        push!(d, r, format!("cron:{cname}"), kind);
    }
    for r in raw.sysctl {
        let t = r.get_ref();
        let key = t.key.get_ref().clone();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            d.error(
                t.key.span(),
                format!("`{key}` is not a sysctl key"),
                "invalid",
                Some("e.g. `net.core.somaxconn`".into()),
            );
        }
        let value = t.value.clone();
        push!(
            d,
            r,
            format!("sysctl:{key}"),
            ResourceKind::Sysctl { key, value }
        );
    }
    for r in raw.download {
        let t = r.get_ref();
        let path = abs_path(d, &t.path);
        let perms = perms(d, &t.owner, &t.group, &t.mode);
        let sha = t.sha256.get_ref().to_ascii_lowercase();
        if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            d.error(
                t.sha256.span(),
                "`sha256` must be 64 hexadecimal digits",
                "not a SHA-256",
                None,
            );
        }
        let url = t.url.get_ref().clone();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            d.error(
                t.url.span(),
                "a download URL must start with http:// or https://",
                "unsupported scheme",
                None,
            );
        }
        push!(
            d,
            r,
            format!("download:{}", path.display()),
            ResourceKind::Download {
                url,
                path,
                sha256: sha,
                perms
            }
        );
    }
    for r in raw.exec {
        let t = r.get_ref();
        if t.command.get_ref().is_empty() {
            d.error(t.command.span(), "empty command", "nothing to run", None);
        }
        let id = format!(
            "exec:{}",
            t.name
                .clone()
                .unwrap_or_else(|| t.command.get_ref().join(" "))
        );
        let creates = t.creates.as_ref().map(|c| abs_path(d, c));
        let kind = ResourceKind::Exec {
            command: t.command.get_ref().clone(),
            creates,
            unless: t.unless.clone(),
            onlyif: t.onlyif.clone(),
            refresh_only: t.refresh_only.unwrap_or(false),
            cwd: t.cwd.as_ref().map(PathBuf::from),
            env: t.env.clone().unwrap_or_default(),
        };
        push!(d, r, id, kind);
    }
}

/// Checks across resources (duplicates, conflicts, references, cycles) and the
/// resulting order.
#[allow(clippy::too_many_arguments)]
fn finish_set(
    d: &mut Diagnostics,
    extra: &mut [Diagnostics],
    name: &str,
    set_span: Range<usize>,
    mut pend: Vec<Pending>,
    vars: serde_json::Map<String, serde_json::Value>,
    drift_check: Option<Dur>,
    auto_correct: Option<bool>,
) -> Option<ConvergeSet> {
    // Spec order (resources were gathered kind by kind): ties in the dependency
    // order are broken by where a resource is written.
    pend.sort_by_key(|p| (p.src, p.span.start));
    let before_errors = d.errors.len() + extra.iter().map(|x| x.errors.len()).sum::<usize>();

    // Duplicate ids, and whole-file resources fighting with edits of the same file.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut owners: BTreeMap<PathBuf, String> = BTreeMap::new();
    for (i, p) in pend.iter().enumerate() {
        if let Some(&first) = seen.get(&p.res.id) {
            dg(d, extra, p.src).error(
                p.span.clone(),
                format!(
                    "`{}` is declared twice in converge set `{name}` (first on line {})",
                    p.res.id, pend[first].res.line
                ),
                "duplicate",
                Some("give one of them a distinct `name`, or merge them".into()),
            );
        } else {
            seen.insert(p.res.id.clone(), i);
        }
        if let Some(path) = p.res.kind.owned_path() {
            if let Some(other) = owners.get(path) {
                if *other != p.res.id {
                    dg(d, extra, p.src).error(
                        p.span.clone(),
                        format!(
                            "`{}` and `{other}` both manage `{}`",
                            p.res.id,
                            path.display()
                        ),
                        "conflict",
                        None,
                    );
                }
            } else {
                owners.insert(path.to_path_buf(), p.res.id.clone());
            }
        }
    }
    for p in &pend {
        if let ResourceKind::Line { path, .. } | ResourceKind::Block { path, .. } = &p.res.kind
            && let Some(owner) = owners.get(path)
            && !owner.starts_with("directory:")
        {
            dg(d, extra, p.src).error(
                p.span.clone(),
                format!(
                    "`{}` edits `{}`, which `{owner}` writes whole; each run they would undo each other",
                    p.res.id,
                    path.display()
                ),
                "conflicting edit",
                Some(format!("put the line into `{owner}` instead")),
            );
        }
    }

    // Two line edits of one file that undo each other: each apply would
    // change the file twice and never settle.
    for (i, a) in pend.iter().enumerate() {
        for b in &pend[i + 1..] {
            if let Some(why) = lines_fight(&a.res.kind, &b.res.kind) {
                for (me, other) in [(a, b), (b, a)] {
                    dg(d, extra, me.src).error(
                        me.span.clone(),
                        format!(
                            "`{}` and `{}` (line {}) fight over the same lines: {why}",
                            me.res.id, other.res.id, other.res.line
                        ),
                        "fights another line edit",
                        Some("make the regexps match only their own line, or merge the two".into()),
                    );
                }
            }
        }
    }

    // Edges: explicit, notify (the notified runs after), and automatic ones.
    let ids: BTreeSet<String> = pend.iter().map(|p| p.res.id.clone()).collect();
    let mut after: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let dirs: BTreeMap<PathBuf, String> = pend
        .iter()
        .filter_map(|p| match &p.res.kind {
            ResourceKind::Directory { path, .. } => Some((path.clone(), p.res.id.clone())),
            _ => None,
        })
        .collect();
    for p in &pend {
        let me = p.res.id.clone();
        let mut edge = |from: &str, to: &str| {
            if from != to {
                after
                    .entry(to.to_string())
                    .or_default()
                    .insert(from.to_string());
            }
        };
        for r in &p.requires {
            if known_ref(dg(d, extra, p.src), r, &ids, name) {
                edge(r.get_ref(), &me);
            }
        }
        for r in &p.before {
            if known_ref(dg(d, extra, p.src), r, &ids, name) {
                edge(&me, r.get_ref());
            }
        }
        for r in &p.notify {
            if known_ref(dg(d, extra, p.src), r, &ids, name) {
                let target = r.get_ref();
                if !(target.starts_with("service:") || target.starts_with("exec:")) {
                    dg(d, extra, p.src).error(
                        r.span(),
                        format!("`{target}` cannot be notified"),
                        "not refreshable",
                        Some("notify a `service` (restarted) or an `exec` (run)".into()),
                    );
                }
                edge(&me, target);
            }
        }
        // A path after the nearest managed ancestor directory.
        if let Some(path) = p.res.kind.touched_path() {
            let mut cur = path.parent();
            while let Some(dir) = cur {
                if let Some(id) = dirs.get(dir) {
                    edge(id, &me);
                    break;
                }
                cur = dir.parent();
            }
        }
        // Accounts before what is owned by or runs as them.
        let mut accounts: Vec<(&str, &str)> = Vec::new();
        if let Some(perm) = p.res.kind.perms() {
            if let Some(o) = &perm.owner {
                accounts.push(("user", o));
            }
            if let Some(g) = &perm.group {
                accounts.push(("group", g));
            }
        }
        match &p.res.kind {
            ResourceKind::Service { name: s, .. } => {
                edge(&format!("package:{s}"), &me);
            }
            ResourceKind::User { group, groups, .. } => {
                if let Some(g) = group {
                    accounts.push(("group", g));
                }
                for g in groups {
                    accounts.push(("group", g));
                }
            }
            ResourceKind::Cron { user, .. } => accounts.push(("user", user)),
            _ => {}
        }
        for (k, a) in accounts {
            edge(&format!("{k}:{a}"), &me);
        }
    }
    // Keep only edges between resources that exist (automatic ones may name none).
    for (to, froms) in after.iter_mut() {
        froms.retain(|f| ids.contains(f) && ids.contains(to));
    }

    let order = match topo_order(&pend, &after) {
        Ok(order) => order,
        Err(cycle) => {
            let (src, start) = pend
                .iter()
                .find(|p| p.res.id == cycle[0])
                .map(|p| (p.src, p.span.clone()))
                .unwrap_or((0, 0..0));
            dg(d, extra, src).error(
                start,
                format!(
                    "dependency cycle in converge set `{name}`: {}",
                    cycle.join(" → ")
                ),
                "cycle starts here",
                Some("remove one `requires`, `before` or `notify` edge".into()),
            );
            return None;
        }
    };
    if auto_correct == Some(true) && drift_check.is_none() {
        d.error(
            set_span.clone(),
            format!("converge set `{name}` sets `auto_correct` without `drift_check`"),
            "never checked",
            Some(
                "add `drift_check = \"10m\"`: auto-correct applies what a drift check finds".into(),
            ),
        );
    }
    if d.errors.len() + extra.iter().map(|x| x.errors.len()).sum::<usize>() > before_errors {
        return None;
    }
    let mut by_id: BTreeMap<String, Pending> =
        pend.into_iter().map(|p| (p.res.id.clone(), p)).collect();
    let resources = order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .map(|p| {
            let mut res = p.res;
            res.after = after
                .get(&res.id)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            res.notify = p.notify.iter().map(|n| n.get_ref().clone()).collect();
            res
        })
        .collect();
    Some(ConvergeSet {
        name: name.to_string(),
        vars,
        resources,
        drift_check,
        auto_correct: auto_correct.unwrap_or(false),
    })
}

/// The template environment every converge template is compiled and rendered in:
/// Ansible's defaults (`trim_blocks` on, `lstrip_blocks` off, trailing newline kept),
/// and undefined variables are errors, as in Ansible.
pub fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(false)
            .keep_trailing_newline(true)
            .build()
            .expect("default delimiters are valid"),
    );
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env
}

/// Dependencies first; among independent resources, spec order. A cycle comes back
/// as its path, first element repeated at the end.
fn topo_order(
    pend: &[Pending],
    after: &BTreeMap<String, BTreeSet<String>>,
) -> Result<Vec<String>, Vec<String>> {
    let index: BTreeMap<&str, usize> = pend
        .iter()
        .enumerate()
        .map(|(i, p)| (p.res.id.as_str(), i))
        .collect();
    let mut indegree: Vec<usize> = vec![0; pend.len()];
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); pend.len()];
    for (to, froms) in after {
        let Some(&t) = index.get(to.as_str()) else {
            continue;
        };
        for f in froms {
            if let Some(&f) = index.get(f.as_str()) {
                indegree[t] += 1;
                next[f].push(t);
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..pend.len()).filter(|&i| indegree[i] == 0).collect();
    let mut out = Vec::new();
    while let Some(i) = ready.pop_first() {
        out.push(pend[i].res.id.clone());
        for &n in &next[i] {
            indegree[n] -= 1;
            if indegree[n] == 0 {
                ready.insert(n);
            }
        }
    }
    if out.len() == pend.len() {
        return Ok(out);
    }
    // Walk backwards along unfinished edges until a node repeats: that is a cycle.
    let stuck: Vec<usize> = (0..pend.len()).filter(|&i| indegree[i] > 0).collect();
    let mut path = vec![stuck[0]];
    loop {
        let cur = *path.last().expect("non-empty");
        let prev = after
            .get(&pend[cur].res.id)
            .into_iter()
            .flatten()
            .filter_map(|f| index.get(f.as_str()).copied())
            .find(|&f| indegree[f] > 0)
            .expect("a stuck node has a stuck predecessor");
        if let Some(pos) = path.iter().position(|&p| p == prev) {
            let mut cycle: Vec<String> = path[pos..]
                .iter()
                .rev()
                .map(|&i| pend[i].res.id.clone())
                .collect();
            cycle.push(cycle[0].clone());
            return Err(cycle);
        }
        path.push(prev);
    }
}

fn known_ref(d: &mut Diagnostics, r: &Spanned<String>, ids: &BTreeSet<String>, set: &str) -> bool {
    if ids.contains(r.get_ref()) {
        return true;
    }
    let help = if !r.get_ref().contains(':') {
        Some("references are `kind:name`, e.g. `package:nginx` or `file:/etc/app.conf`".into())
    } else {
        did_you_mean(r.get_ref(), ids.iter().map(|s| s.as_str()))
            .map(|b| format!("did you mean `{b}`?"))
    };
    d.error(
        r.span(),
        format!("unknown resource `{}` in converge set `{set}`", r.get_ref()),
        "no such resource",
        help,
    );
    false
}

fn abs_path(d: &mut Diagnostics, p: &Spanned<String>) -> PathBuf {
    let path = PathBuf::from(p.get_ref());
    if !path.is_absolute() {
        d.error(
            p.span(),
            format!("path `{}` must be absolute", p.get_ref()),
            "relative",
            Some("converge paths are absolute (rebased under `--root` when given)".into()),
        );
    } else if path.components().any(|c| c == Component::ParentDir) {
        d.error(
            p.span(),
            format!("path `{}` must not contain `..`", p.get_ref()),
            "escapes",
            None,
        );
    }
    path
}

fn source_file(d: &mut Diagnostics, s: &Spanned<String>, base_dir: &Path) -> Option<PathBuf> {
    let p = base_dir.join(s.get_ref());
    if p.is_file() {
        Some(p)
    } else {
        d.error(
            s.span(),
            format!("source file `{}` does not exist", p.display()),
            "missing file",
            Some("source paths are relative to the spec file".into()),
        );
        None
    }
}

fn perms(
    d: &mut Diagnostics,
    owner: &Option<String>,
    group: &Option<String>,
    mode: &Option<Spanned<String>>,
) -> Perms {
    let mode = mode.as_ref().and_then(|m| {
        let text = m.get_ref();
        match u32::from_str_radix(text, 8) {
            Ok(v) if v <= 0o7777 && (3..=4).contains(&text.len()) => Some(v),
            _ => {
                d.error(
                    m.span(),
                    format!("invalid mode `{text}`"),
                    "not an octal mode",
                    Some("octal digits as a string, e.g. `\"0644\"`".into()),
                );
                None
            }
        }
    });
    Perms {
        owner: owner.clone(),
        group: group.clone(),
        mode,
    }
}

fn account_name(d: &mut Diagnostics, n: &Spanned<String>) -> String {
    let name = n.get_ref();
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        d.error(
            n.span(),
            format!("`{name}` is not a valid account name"),
            "invalid",
            Some("lowercase letters, digits, `_` and `-`, starting with a letter or `_`".into()),
        );
    }
    name.clone()
}

fn table_json(t: &toml::Table) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(t) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

/// The regex crate's message ends with `error: <reason>` after a caret diagram.
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.rsplit_once("error: ")
        .map(|(_, reason)| reason.trim().to_string())
        .unwrap_or(text)
}
