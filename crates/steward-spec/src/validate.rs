//! From TOML text to a validated [`Spec`], collecting every error on the way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::converge::RawConverge;
use crate::diag::{Diagnostics, SpecErrors, did_you_mean};
use crate::model::*;
use crate::raw::*;
use crate::secret::{Resolver, Text};

/// Sections this version understands.
const SECTIONS: &[&str] = &[
    "steward",
    "check",
    "alert",
    "maintenance",
    "converge",
    "store",
    "backup",
    "image",
    "service",
    "scrape",
    "rule",
    "remote_write",
    "cloud",
    "snapshot",
];
/// Sections that later capabilities add; named so the error can say so.
const PLANNED: &[&str] = &["scale", "metrics"];

pub(crate) fn parse(
    name: &str,
    src: &str,
    base_dir: &Path,
    resolver: &dyn Resolver,
) -> Result<Spec, SpecErrors> {
    let mut d = Diagnostics::new(name, src);
    // Relative secret-reference paths mean files next to the spec, like every
    // other relative path in it.
    let _relative = crate::secret::RelativeTo::dir(
        &std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf()),
    );
    let (root, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        let mut previous_duplicate = false;
        for e in &syntax {
            // A repeated table yields one error per key; the first says it all.
            let duplicate = e.message().trim() == "duplicate key";
            if !(duplicate && previous_duplicate) {
                d.toml(e, 0..0, None);
            }
            previous_duplicate = duplicate;
        }
        return Err(d.finish().expect_err("syntax errors were recorded"));
    }
    let root = root.into_inner();
    if root.is_empty() {
        d.error(
            0..0,
            "the spec is empty: there is nothing to check, back up, converge, build or run",
            "here",
            Some("describe at least one [check.NAME], [backup.NAME], [converge.NAME], [image.NAME] or [service.NAME]; examples/quickstart.toml is a start".into()),
        );
        return Err(d.finish().expect_err("an error was recorded"));
    }

    let mut settings_raw: Option<(RawSettings, Range<usize>)> = None;
    let mut checks: Vec<(String, Range<usize>, RawCheck)> = Vec::new();
    let mut alerts: Vec<(String, Range<usize>, RawAlert)> = Vec::new();
    let mut maint: Vec<(String, Range<usize>, RawMaintenance)> = Vec::new();
    let mut converge_raw: Vec<(String, Range<usize>, RawConverge)> = Vec::new();
    let mut stores_raw: Vec<(String, Range<usize>, crate::backup::RawStore)> = Vec::new();
    let mut backups_raw: Vec<(String, crate::backup::RawBackup)> = Vec::new();
    let mut images_raw: Vec<(String, crate::image::RawImage)> = Vec::new();
    let mut services_raw: Vec<(String, Range<usize>, crate::service::RawService)> = Vec::new();
    let mut scrapes_raw: Vec<(String, Range<usize>, crate::scrape::RawScrape)> = Vec::new();
    let mut rules_raw: Vec<(String, Range<usize>, crate::rule::RawRule)> = Vec::new();
    let mut remote_raw: Vec<(String, crate::remote_write::RawRemoteWrite)> = Vec::new();
    let mut clouds_raw: Vec<(String, crate::cloud::RawCloud)> = Vec::new();
    let mut snapshots_raw: Vec<(String, crate::snapshot::RawSnapshot)> = Vec::new();

    for (key, value) in root {
        let kspan = key.span();
        let section = key.get_ref().to_string();
        match section.as_str() {
            "steward" => {
                let vspan = value.span();
                if let Some(s) = de::<RawSettings>(&mut d, value) {
                    settings_raw = Some((s, vspan));
                }
            }
            "check" | "alert" | "maintenance" | "converge" | "store" | "backup" | "image"
            | "service" | "scrape" | "rule" | "remote_write" | "cloud" | "snapshot" => {
                let vspan = value.span();
                let DeValue::Table(entries) = value.into_inner() else {
                    d.error(
                        vspan,
                        format!(
                            "`{section}` must be a table of named entries, e.g. [{section}.NAME]"
                        ),
                        "not a table",
                        None,
                    );
                    continue;
                };
                for (ename, evalue) in entries {
                    let espan = ename.span();
                    let ename = ename.get_ref().to_string();
                    if !valid_name(&ename) {
                        d.error(
                            espan.clone(),
                            format!("invalid name `{ename}`"),
                            "bad name",
                            Some(
                                "names use letters, digits, `-` and `_`, and start with a letter"
                                    .into(),
                            ),
                        );
                    }
                    if !matches!(evalue.get_ref(), DeValue::Table(_)) {
                        d.error(
                            evalue.span(),
                            format!("`{section}.{ename}` must be a table"),
                            "expected a table",
                            None,
                        );
                        continue;
                    }
                    match section.as_str() {
                        "check" => {
                            if let Some(c) = de::<RawCheck>(&mut d, evalue) {
                                checks.push((ename, espan, c));
                            }
                        }
                        "alert" => {
                            if let Some(a) = de::<RawAlert>(&mut d, evalue) {
                                alerts.push((ename, espan, a));
                            }
                        }
                        "store" => {
                            if let Some(c) = de::<crate::backup::RawStore>(&mut d, evalue) {
                                stores_raw.push((ename, espan, c));
                            }
                        }
                        "image" => {
                            if let Some(c) = de::<crate::image::RawImage>(&mut d, evalue) {
                                images_raw.push((ename, c));
                            }
                        }
                        "service" => {
                            if let Some(c) = de::<crate::service::RawService>(&mut d, evalue) {
                                services_raw.push((ename, espan, c));
                            }
                        }
                        "scrape" => {
                            if let Some(c) = de::<crate::scrape::RawScrape>(&mut d, evalue) {
                                scrapes_raw.push((ename, espan, c));
                            }
                        }
                        "rule" => {
                            if let Some(c) = de::<crate::rule::RawRule>(&mut d, evalue) {
                                rules_raw.push((ename, espan, c));
                            }
                        }
                        "cloud" => {
                            if let Some(c) = de::<crate::cloud::RawCloud>(&mut d, evalue) {
                                clouds_raw.push((ename, c));
                            }
                        }
                        "snapshot" => {
                            if let Some(c) = de::<crate::snapshot::RawSnapshot>(&mut d, evalue) {
                                snapshots_raw.push((ename, c));
                            }
                        }
                        "remote_write" => {
                            if let Some(c) =
                                de::<crate::remote_write::RawRemoteWrite>(&mut d, evalue)
                            {
                                remote_raw.push((ename, c));
                            }
                        }
                        "backup" => {
                            if let Some(c) = de::<crate::backup::RawBackup>(&mut d, evalue) {
                                backups_raw.push((ename, c));
                            }
                        }
                        "converge" => {
                            if let Some(c) = de::<RawConverge>(&mut d, evalue) {
                                converge_raw.push((ename, espan, c));
                            }
                        }
                        _ => {
                            if let Some(m) = de::<RawMaintenance>(&mut d, evalue) {
                                maint.push((ename, espan, m));
                            }
                        }
                    }
                }
            }
            other if PLANNED.contains(&other) => d.error(
                kspan,
                format!("section `{other}` is not supported by this version of steward"),
                "not yet supported",
                Some(format!("supported sections: {}", SECTIONS.join(", "))),
            ),
            other => {
                let all = SECTIONS.iter().chain(PLANNED.iter()).copied();
                let help = match did_you_mean(other, all) {
                    Some(b) => format!("did you mean `{b}`?"),
                    None => format!("known sections: {}", SECTIONS.join(", ")),
                };
                d.error(
                    kspan,
                    format!("unknown section `{other}`"),
                    "unknown",
                    Some(help),
                );
            }
        }
    }

    let settings = settings(&mut d, settings_raw.map(|s| s.0), base_dir);
    let alert_names: BTreeSet<&str> = alerts.iter().map(|a| a.0.as_str()).collect();
    let check_names: BTreeSet<&str> = checks.iter().map(|c| c.0.as_str()).collect();

    let mut out_alerts = BTreeMap::new();
    for (name, span, a) in &alerts {
        if let Some(alert) = alert(&mut d, name, span.clone(), a, resolver) {
            out_alerts.insert(name.clone(), alert);
        }
    }
    let mut out_checks = BTreeMap::new();
    for (name, span, c) in &checks {
        if let Some(check) = check(
            &mut d,
            name,
            span.clone(),
            c,
            resolver,
            base_dir,
            &alert_names,
            &check_names,
        ) {
            out_checks.insert(name.clone(), std::sync::Arc::new(check));
        }
    }
    dependency_cycles(&mut d, &checks);
    let mut out_maint = BTreeMap::new();
    for (name, _span, m) in &maint {
        let Ok(schedule) = croner::parser::CronParser::new().parse(m.schedule.get_ref()) else {
            d.error(
                m.schedule.span(),
                format!("invalid cron expression `{}`", m.schedule.get_ref()),
                "not a cron expression",
                Some(
                    "five fields: minute hour day-of-month month day-of-week, e.g. `0 3 * * sun`"
                        .into(),
                ),
            );
            continue;
        };
        for c in &m.checks {
            unknown_ref(&mut d, c, "check", &check_names);
        }
        out_maint.insert(
            name.clone(),
            Maintenance {
                name: name.clone(),
                schedule,
                duration: m.duration,
                checks: m.checks.iter().map(|c| c.get_ref().clone()).collect(),
            },
        );
    }

    let mut converge = BTreeMap::new();
    for (name, span, raw) in converge_raw {
        if let Some(set) =
            crate::converge::converge_set(&mut d, &name, span, raw, base_dir, resolver)
        {
            converge.insert(name, set);
        }
    }

    let mut stores = BTreeMap::new();
    for (name, span, raw) in stores_raw {
        // Declaring `local` moves the default store.
        if let Some(s) = crate::backup::store(&mut d, &name, span, raw, base_dir, resolver) {
            stores.insert(name, s);
        }
    }
    stores
        .entry(crate::backup::DEFAULT_STORE.to_string())
        .or_insert_with(|| crate::backup::default_store(&settings.state_dir));
    let store_names = crate::backup::store_names(stores.keys().map(String::as_str));
    let mut backups = BTreeMap::new();
    for (name, raw) in backups_raw {
        if let Some(b) = crate::backup::backup(
            &mut d,
            &name,
            raw,
            base_dir,
            resolver,
            &store_names,
            &alert_names,
        ) {
            backups.insert(name, b);
        }
    }

    let set_names: BTreeSet<&str> = converge.keys().map(String::as_str).collect();
    let mut images = BTreeMap::new();
    for (name, raw) in images_raw {
        if let Some(i) = crate::image::image(&mut d, &name, raw, base_dir, &set_names, &store_names)
        {
            images.insert(name, i);
        }
    }

    // Services name every declared cloud, valid or not (its own errors say what is wrong).
    let declared_clouds: Vec<String> = clouds_raw.iter().map(|(n, _)| n.clone()).collect();
    let cloud_names: BTreeSet<&str> = declared_clouds.iter().map(String::as_str).collect();
    let mut clouds = BTreeMap::new();
    for (name, raw) in clouds_raw {
        if let Some(c) = crate::cloud::cloud(&mut d, &name, raw, resolver) {
            clouds.insert(name, c);
        }
    }
    let image_names: BTreeSet<&str> = images.keys().map(String::as_str).collect();
    let mut services = BTreeMap::new();
    let mut taken = BTreeMap::from([(settings.listen, "steward's own API".to_string())]);
    for (name, span, raw) in services_raw {
        if let Some(s) = crate::service::service(
            &mut d,
            &name,
            span,
            raw,
            resolver,
            &image_names,
            &out_checks,
            &mut taken,
            &cloud_names,
        ) {
            services.insert(name, s);
        }
    }
    let mut snapshots = BTreeMap::new();
    for (name, raw) in snapshots_raw {
        if let Some(sn) = crate::snapshot::snapshot(&mut d, &name, raw, &services, &check_names) {
            snapshots.insert(name, sn);
        }
    }
    let mut scrapes = BTreeMap::new();
    for (name, span, raw) in &scrapes_raw {
        if let Some(s) = crate::scrape::scrape(&mut d, name, span.clone(), raw, resolver) {
            scrapes.insert(name.clone(), s);
        }
    }
    let mut rules = BTreeMap::new();
    for (name, span, raw) in &rules_raw {
        if let Some(r) = crate::rule::rule(&mut d, name, span.clone(), raw, &alert_names) {
            rules.insert(name.clone(), r);
        }
    }
    let mut remote_writes = BTreeMap::new();
    for (name, raw) in &remote_raw {
        if let Some(r) = crate::remote_write::remote_write(&mut d, name, raw, resolver) {
            remote_writes.insert(name.clone(), r);
        }
    }

    d.finish()?;
    Ok(Spec {
        file: name.to_string(),
        settings,
        checks: out_checks,
        alerts: out_alerts,
        maintenance: out_maint,
        converge,
        stores,
        backups,
        images,
        services,
        scrapes,
        rules,
        remote_writes,
        clouds,
        snapshots,
    })
}

/// Deserializes one spec entry, reporting every problem in it: serde stops at
/// the first, so the key an error is about is taken out and the entry read
/// again (at most 32 times), until it reads or nothing more can be told.
fn de<T: for<'de> Deserialize<'de>>(d: &mut Diagnostics, value: Spanned<DeValue<'_>>) -> Option<T> {
    let span = value.span();
    let mut value = value;
    let mut taken_out: Vec<String> = Vec::new();
    for _ in 0..32 {
        let e = match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) if taken_out.is_empty() => return Some(v),
            Ok(_) => return None,
            Err(e) => e,
        };
        // A key taken out to look further is not missing.
        let message = e.message();
        if taken_out
            .iter()
            .any(|k| message.starts_with(&format!("missing field `{k}`")))
        {
            return None;
        }
        let DeValue::Table(table) = value.get_mut() else {
            d.toml(&e, span.clone(), None);
            return None;
        };
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string);
        let Some(key) = take_out(table, e.span().map(|s| s.start), unknown.as_deref()) else {
            d.toml(&e, span.clone(), None);
            return None;
        };
        // Name the key in messages that do not (serde's type errors).
        d.toml(
            &e,
            span.clone(),
            Some(key.as_str()).filter(|_| unknown.is_none()),
        );
        taken_out.push(key);
    }
    None
}

/// Takes out of `table` the key an error at byte `at` is about — the
/// innermost one, inside inline tables and arrays of tables, so the other
/// keys around it are still read — and returns its name. For an unknown
/// field, the key of that name.
fn take_out(table: &mut DeTable<'_>, at: Option<usize>, unknown: Option<&str>) -> Option<String> {
    let holds = |k: &Spanned<std::borrow::Cow<'_, str>>, v: &Spanned<DeValue<'_>>| {
        at.is_some_and(|at| k.span().start <= at && at < v.span().end.max(k.span().end))
    };
    let entry = table
        .iter()
        .find(|(k, v)| holds(k, v))
        .map(|(k, _)| k.clone());
    if let Some(k) = &entry
        && let Some(v) = table.get_mut(k)
    {
        let inner = match v.get_mut() {
            DeValue::Table(t) => take_out(t, at, unknown),
            DeValue::Array(items) => items
                .iter_mut()
                .find(|i| at.is_some_and(|at| i.span().contains(&at)))
                .and_then(|i| match i.get_mut() {
                    DeValue::Table(t) => take_out(t, at, unknown),
                    _ => None,
                }),
            _ => None,
        };
        if inner.is_some() {
            return inner;
        }
    }
    let name = unknown
        .map(str::to_string)
        .or_else(|| entry.map(|k| k.get_ref().to_string()))?;
    let key = table.keys().find(|k| k.get_ref() == &name).cloned()?;
    table.remove(&key);
    Some(name)
}

/// A map of spanned texts without the spans.
pub(crate) fn unspan(m: &Spanned<BTreeMap<String, Spanned<Text>>>) -> BTreeMap<String, Text> {
    m.get_ref()
        .iter()
        .map(|(k, v)| (k.clone(), v.get_ref().clone()))
        .collect()
}

pub(crate) fn valid_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn settings(d: &mut Diagnostics, raw: Option<RawSettings>, base_dir: &Path) -> Settings {
    let raw = raw.unwrap_or_default();
    let listen = match &raw.listen {
        Some(l) => match l.get_ref().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                d.error(
                    l.span(),
                    format!("invalid listen address `{}`", l.get_ref()),
                    "expected ip:port",
                    Some("e.g. `127.0.0.1:7070`".into()),
                );
                defaults::LISTEN.parse().expect("default listen address")
            }
        },
        None => defaults::LISTEN.parse().expect("default listen address"),
    };
    let state_dir = raw
        .state_dir
        .as_ref()
        .map(|s| s.get_ref().as_str())
        .unwrap_or(defaults::STATE_DIR);
    let mut retention = Retention::default();
    if let Some(r) = raw.retention {
        retention.raw = r.raw.unwrap_or(retention.raw);
        retention.minute = r.minute.unwrap_or(retention.minute);
        retention.hour = r.hour.unwrap_or(retention.hour);
        retention.day = r.day.unwrap_or(retention.day);
        retention.events = r.events.unwrap_or(retention.events);
    }
    let auth = raw.auth.as_ref().map(|a| *a.get_ref()).unwrap_or_default();
    let insecure = raw.insecure.unwrap_or(false);
    // Safe by default: no unauthenticated API for other machines unless the spec says so.
    if !listen.ip().is_loopback() && auth == AuthMode::None && !insecure {
        let span = raw.listen.as_ref().map(|l| l.span()).unwrap_or(0..0);
        d.error(
            span,
            format!("steward would serve its API on {listen} to other machines without authentication"),
            "reachable from other machines",
            Some("set `auth = \"token\"` (then `steward token create`), listen on 127.0.0.1, or set `insecure = true` to accept the risk".into()),
        );
    }
    Settings {
        name: raw.name.unwrap_or_else(|| "steward".into()),
        state_dir: base_dir.join(state_dir),
        listen,
        retention,
        auth,
        insecure,
        public_metrics: raw.public_metrics.unwrap_or(false),
        self_scrape_interval: raw
            .self_scrape_interval
            .map_or(std::time::Duration::from_secs(15), |d| d.0)
            .max(std::time::Duration::from_secs(1)),
        max_series: raw.max_series.map_or(1_000_000, |n| n as usize),
        metrics_flush_interval: raw
            .metrics_flush_interval
            .map_or(std::time::Duration::from_secs(60), |d| d.0)
            .max(std::time::Duration::from_secs(1)),
        tls: raw.tls.map(|t| {
            let cert = file_ref(d, &Some(t.cert), base_dir).unwrap_or_default();
            let key = file_ref(d, &Some(t.key.clone()), base_dir).unwrap_or_default();
            if let Err(e) = crate::secret::refuse_shared(&key) {
                d.error(
                    t.key.span(),
                    format!("private key file: {e}"),
                    "shared with every user",
                    None,
                );
            }
            TlsPaths { cert, key }
        }),
    }
}

pub(crate) fn unknown_ref(
    d: &mut Diagnostics,
    r: &Spanned<String>,
    what: &str,
    known: &BTreeSet<&str>,
) -> bool {
    if known.contains(r.get_ref().as_str()) {
        return true;
    }
    let help = match did_you_mean(r.get_ref(), known.iter().copied()) {
        Some(b) => Some(format!("did you mean `{b}`?")),
        None if known.is_empty() => Some(format!("no [{what}.*] is defined")),
        None => Some(format!(
            "defined: {}",
            known.iter().copied().collect::<Vec<_>>().join(", ")
        )),
    };
    d.error(
        r.span(),
        format!("unknown {what} `{}`", r.get_ref()),
        format!("no such {what}"),
        help,
    );
    false
}

pub(crate) fn secret_ok(
    d: &mut Diagnostics,
    t: &Text,
    span: Range<usize>,
    resolver: &dyn Resolver,
) {
    if let Err(e) = t.check(resolver) {
        d.error(
            span,
            format!("cannot resolve reference: {e}"),
            "unresolvable",
            None,
        );
    }
}

pub(crate) use crate::alert::alert;
pub(crate) use crate::check::{check, dependency_cycles, file_ref};
