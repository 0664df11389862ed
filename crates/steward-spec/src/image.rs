//! `[image.NAME]`: gold images — a base, converge sets applied with `--root`,
//! artifacts and build commands.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{Diagnostics, did_you_mean};
use crate::duration::Dur;

/// What an image starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageBase {
    /// A cached `debootstrap --variant=minbase` root of this machine's Debian release.
    Debian,
    /// Nothing: for applications that need no operating system.
    Empty,
    /// A directory next to the spec.
    Dir(PathBuf),
}

/// A file copied into an image.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// Source file (relative to the spec).
    pub from: PathBuf,
    /// Absolute path inside the image.
    pub to: PathBuf,
    /// Permission bits (default: the source's).
    pub mode: Option<u32>,
}

/// A gold image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Its name.
    pub name: String,
    /// What it starts from.
    pub base: ImageBase,
    /// Converge sets applied to the root, in order.
    pub converge: Vec<String>,
    /// Files copied in after converging.
    pub artifacts: Vec<Artifact>,
    /// Commands run inside the root last (Debian base only).
    pub run: Vec<Vec<String>>,
    /// Commands run on this machine, in the spec's directory, before anything
    /// else (e.g. compiling the application whose binary is an artifact).
    pub prepare: Vec<Vec<String>>,
    /// Files and directories whose contents decide what `prepare` makes:
    /// with them, unchanged sources reuse the stored image without running
    /// `prepare` at all.
    pub sources: Vec<PathBuf>,
    /// The spec's directory (where `prepare` runs).
    pub dir: PathBuf,
    /// `serve` rebuilds a stale image and rolls it out to the services using it.
    pub auto_rebuild: bool,
    /// Object store holding built images.
    pub store: String,
    /// Application version recorded in the manifest.
    pub version: Option<String>,
    /// `image audit` calls an image older than this stale.
    pub max_age: Option<Dur>,
    /// `serve` audits the newest build this often.
    pub audit_every: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImage {
    base: Spanned<String>,
    #[serde(default)]
    converge: Vec<Spanned<String>>,
    #[serde(default)]
    artifacts: Vec<Spanned<RawArtifact>>,
    #[serde(default)]
    run: Vec<Spanned<Vec<String>>>,
    #[serde(default)]
    prepare: Vec<Spanned<Vec<String>>>,
    #[serde(default)]
    sources: Vec<Spanned<String>>,
    store: Option<Spanned<String>>,
    version: Option<String>,
    audit: Option<RawAudit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    from: Spanned<String>,
    to: Spanned<String>,
    mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    max_age: Option<Dur>,
    every: Option<Dur>,
    auto_rebuild: Option<bool>,
}

pub(crate) fn image(
    d: &mut Diagnostics,
    name: &str,
    raw: RawImage,
    base_dir: &Path,
    converge_sets: &BTreeSet<&str>,
    stores: &BTreeSet<&str>,
) -> Option<Image> {
    let before = d.errors.len();
    let base = match raw.base.get_ref().as_str() {
        "debian" => ImageBase::Debian,
        "empty" => ImageBase::Empty,
        other => match other.strip_prefix("dir:") {
            Some(p) => {
                let dir = base_dir.join(p);
                if !dir.is_dir() {
                    d.error(
                        raw.base.span(),
                        format!("base directory `{}` does not exist", dir.display()),
                        "missing directory",
                        None,
                    );
                }
                ImageBase::Dir(dir)
            }
            None => {
                d.error(
                    raw.base.span(),
                    format!("unknown image base `{other}`"),
                    "unknown base",
                    Some("`debian` (a debootstrap minbase root), `empty`, or `dir:PATH`".into()),
                );
                ImageBase::Empty
            }
        },
    };
    for c in &raw.converge {
        if !converge_sets.contains(c.get_ref().as_str()) {
            let help = did_you_mean(c.get_ref(), converge_sets.iter().copied())
                .map(|b| format!("did you mean `{b}`?"));
            d.error(
                c.span(),
                format!("unknown converge set `{}`", c.get_ref()),
                "no such set",
                help,
            );
        }
    }
    let mut artifacts = Vec::new();
    for a in raw.artifacts {
        let a = a.into_inner();
        let from = base_dir.join(a.from.get_ref());
        // With `prepare`, artifacts may appear only once it has run.
        if raw.prepare.is_empty() && !from.is_file() {
            d.error(
                a.from.span(),
                format!("artifact `{}` does not exist", from.display()),
                "missing file",
                Some("build it first; paths are relative to the spec".into()),
            );
        }
        let to = PathBuf::from(a.to.get_ref());
        if !to.is_absolute() {
            d.error(
                a.to.span(),
                "`to` must be an absolute path inside the image",
                "relative",
                None,
            );
        }
        let mode = a
            .mode
            .as_ref()
            .and_then(|m| match u32::from_str_radix(m.get_ref(), 8) {
                Ok(v) if v <= 0o7777 => Some(v),
                _ => {
                    d.error(
                        m.span(),
                        format!("invalid mode `{}`", m.get_ref()),
                        "not an octal mode",
                        None,
                    );
                    None
                }
            });
        artifacts.push(Artifact { from, to, mode });
    }
    let mut run = Vec::new();
    for r in raw.run {
        if r.get_ref().is_empty() {
            d.error(r.span(), "empty command", "nothing to run", None);
        } else if base != ImageBase::Debian {
            d.error(
                r.span(),
                "`run` needs `base = \"debian\"`: commands run inside the image",
                "no shell in this base",
                None,
            );
        }
        run.push(r.into_inner());
    }
    let mut prepare = Vec::new();
    for r in raw.prepare {
        if r.get_ref().is_empty() {
            d.error(r.span(), "empty command", "nothing to run", None);
        }
        prepare.push(r.into_inner());
    }
    let mut sources = Vec::new();
    for src in &raw.sources {
        let path = base_dir.join(src.get_ref());
        if prepare.is_empty() {
            d.error(
                src.span(),
                "`sources` needs `prepare`: they say when its output can be reused",
                "no prepare",
                Some("without `prepare`, the artifacts themselves are the inputs".into()),
            );
        } else if !path.exists() {
            d.error(
                src.span(),
                format!("source `{}` does not exist", path.display()),
                "missing",
                Some("paths are relative to the spec".into()),
            );
        }
        sources.push(path);
    }
    let auto_rebuild = raw
        .audit
        .as_ref()
        .and_then(|a| a.auto_rebuild)
        .unwrap_or(false);
    let store = raw
        .store
        .as_ref()
        .map(|s| s.get_ref().clone())
        .unwrap_or_else(|| crate::backup::DEFAULT_STORE.into());
    if let Some(s) = &raw.store
        && !stores.contains(s.get_ref().as_str())
    {
        d.error(
            s.span(),
            format!("unknown store `{}`", s.get_ref()),
            "no such store",
            None,
        );
    }
    if d.errors.len() > before {
        return None;
    }
    Some(Image {
        name: name.into(),
        base,
        converge: raw.converge.into_iter().map(|c| c.into_inner()).collect(),
        artifacts,
        run,
        prepare,
        sources,
        dir: base_dir.to_path_buf(),
        auto_rebuild,
        store,
        version: raw.version,
        max_age: raw.audit.as_ref().and_then(|a| a.max_age),
        audit_every: raw.audit.as_ref().and_then(|a| a.every),
    })
}
