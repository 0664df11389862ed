//! The steward spec: one TOML file describing an application's operations.
//!
//! [`Spec::load`] parses and validates the whole file before anything runs and
//! reports every problem at once with file, line and column ([`SpecErrors`]).
//! Secret references (`${env:NAME}`, `${file:PATH}`) are checked for
//! resolvability here but kept unresolved in the model; they are resolved late,
//! right before use, into [`Secret`]s that never print their value.
//!
//! Each capability owns its top-level table (`[check.*]`, `[alert.*]`, ...).

mod alert;
mod autoscale;
mod backup;
mod check;
mod cloud;
mod condition;
mod converge;
mod diag;
mod duration;
mod image;
mod model;
mod raw;
mod remote_write;
pub mod retention;
mod rule;
mod scrape;
mod secret;
mod service;
mod snapshot;
mod validate;

pub use autoscale::{
    Autoscale, AutoscaleMetric, AutoscaleMode, AutoscaleTarget, ScalePolicy, ScaleRules,
    ScaleSelect,
};
pub use backup::{Backup, DEFAULT_STORE, Drill, Keep, Source, Store, StoreKind};
pub use cloud::{Cloud, OpenStackPlacement, Placement, ServerNetworks};
pub use condition::{
    Condition, ConditionError, Observed, Op, Operand, PathSeg, Placeholder, Selector, Verdict,
};
pub use converge::{
    Content, ConvergeSet, Ensure, Perms, Resource, ResourceKind, ServiceState, template_env,
};
pub use diag::{SpecError, SpecErrors, did_you_mean};
pub use duration::Dur;
pub use image::{Artifact, Image, ImageBase};
pub use model::*;
pub use raw::{AlertKind, AuthMode, CheckKind, SmtpTls};
pub use remote_write::RemoteWrite;
pub use rule::{RULE_INTERVAL, Rule};
pub use scrape::{Scrape, ScrapeLimits, ServiceMetrics};
pub use secret::{OsResolver, Reference, Resolver, Secret, SecretError, Text};
pub use service::{PLACEHOLDERS, Replicas, Rollout, Service, aimed_at};
pub use snapshot::{Snapshot, SnapshotDrill};

use std::path::Path;

impl Spec {
    /// Reads, parses and validates a spec file, resolving references from the
    /// process environment and file system.
    pub fn load(path: &Path) -> Result<Spec, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| {
            // Where it looked, whole: a relative path is read from the
            // working directory, which the message would not show.
            let looked = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            LoadError::Read {
                path: looked.display().to_string(),
                hint: if e.kind() == std::io::ErrorKind::NotFound {
                    "point steward at a spec with `-f PATH` or the STEWARD_SPEC environment \
                     variable (the default is ./steward.toml); the README's quick start \
                     has one to begin with"
                        .into()
                } else {
                    "check the file's permissions: steward reads it as the user it runs as".into()
                },
                reason: e.to_string(),
            }
        })?;
        let src = match String::from_utf8(bytes) {
            Ok(src) => src,
            Err(e) => {
                // Point at the first byte that is not UTF-8; everything before
                // it reads the same in the lossy copy shown.
                let at = e.utf8_error().valid_up_to();
                let shown = String::from_utf8_lossy(e.as_bytes()).into_owned();
                let mut d = diag::Diagnostics::new(&path.display().to_string(), &shown);
                d.error(
                    at..at + '\u{FFFD}'.len_utf8(),
                    "the spec is not valid UTF-8",
                    "this byte",
                    Some("save the file as UTF-8".into()),
                );
                return Err(LoadError::Invalid(
                    d.finish().expect_err("an error was recorded"),
                ));
            }
        };
        let base = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."));
        // Paths in the spec are relative to its directory, made absolute
        // here: what a backup records, or a later process reads, must not
        // depend on the working directory of whoever loaded the spec.
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        Spec::parse(&path.display().to_string(), &src, &base, &OsResolver)
            .map_err(LoadError::Invalid)
    }

    /// Parses and validates spec text. `name` is used in diagnostics; relative paths
    /// in the spec are taken relative to `base_dir`.
    pub fn parse(
        name: &str,
        src: &str,
        base_dir: &Path,
        resolver: &dyn Resolver,
    ) -> Result<Spec, SpecErrors> {
        validate::parse(name, src, base_dir, resolver)
    }
}

/// Why a spec could not be loaded.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read spec `{path}`: {reason}")]
    Read {
        /// The path given, as steward looked for it.
        path: String,
        /// The OS error.
        reason: String,
        /// Where to go from here.
        #[help]
        hint: String,
    },
    /// The file has problems.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(SpecErrors),
}
