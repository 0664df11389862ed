//! `[snapshot.NAME]`: snapshots of a service's servers on OpenStack (Nova's
//! createImage), on a schedule, kept by the same rules as file backups, and
//! drilled by booting the newest one and running a check against it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use toml::Spanned;

use crate::backup::{Keep, RawKeep, cron};
use crate::cloud::Placement;
use crate::diag::{Diagnostics, did_you_mean};
use crate::service::Service;

/// Snapshots of one service's servers.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Its name.
    pub name: String,
    /// The `[service.*]` (on OpenStack) whose server is snapshotted.
    pub service: String,
    /// When `serve` takes one (cron, UTC).
    pub schedule: Option<croner::Cron>,
    /// The schedule as written.
    pub schedule_text: Option<String>,
    /// Retention, as for backups (the newest snapshot is always kept).
    pub keep: Keep,
    /// Drills: boot the newest snapshot and check the server it makes.
    pub drill: Option<SnapshotDrill>,
}

/// A snapshot drill.
#[derive(Debug, Clone)]
pub struct SnapshotDrill {
    /// When `serve` runs one.
    pub schedule: Option<croner::Cron>,
    /// A `[check.*]` run against the booted server (aimed at its address as
    /// readiness checks are aimed at an instance's).
    pub check: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSnapshot {
    service: Spanned<String>,
    schedule: Option<Spanned<String>>,
    keep: Option<RawKeep>,
    drill: Option<RawSnapshotDrill>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnapshotDrill {
    schedule: Option<Spanned<String>>,
    check: Option<Spanned<String>>,
}

pub(crate) fn snapshot(
    d: &mut Diagnostics,
    name: &str,
    raw: RawSnapshot,
    services: &BTreeMap<String, Service>,
    checks: &BTreeSet<&str>,
) -> Option<Snapshot> {
    let before = d.errors.len();
    match services.get(raw.service.get_ref()) {
        None => {
            let help = did_you_mean(raw.service.get_ref(), services.keys().map(String::as_str))
                .map(|b| format!("did you mean `{b}`?"));
            d.error(
                raw.service.span(),
                format!("unknown service `{}`", raw.service.get_ref()),
                "no such service",
                help,
            );
        }
        Some(s) if !matches!(s.placement, Placement::OpenStack(_)) => d.error(
            raw.service.span(),
            format!(
                "service `{}` runs local instances; snapshots are of servers on OpenStack",
                raw.service.get_ref()
            ),
            "not on a cloud",
            Some("back up what a local instance keeps with [backup.NAME] instead".into()),
        ),
        Some(_) => {}
    }
    let schedule = raw.schedule.as_ref().and_then(|s| cron(d, s));
    let drill = raw.drill.map(|dr| {
        if let Some(c) = &dr.check
            && !checks.contains(c.get_ref().as_str())
        {
            let help = did_you_mean(c.get_ref(), checks.iter().copied())
                .map(|b| format!("did you mean `{b}`?"));
            d.error(
                c.span(),
                format!("unknown check `{}`", c.get_ref()),
                "no such check",
                help,
            );
        }
        SnapshotDrill {
            schedule: dr.schedule.as_ref().and_then(|s| cron(d, s)),
            check: dr.check.map(|c| c.into_inner()),
        }
    });
    if d.errors.len() > before {
        return None;
    }
    Some(Snapshot {
        name: name.to_string(),
        service: raw.service.into_inner(),
        schedule,
        schedule_text: raw.schedule.map(|s| s.into_inner()),
        keep: Keep::from(raw.keep.unwrap_or_default()),
        drill,
    })
}
