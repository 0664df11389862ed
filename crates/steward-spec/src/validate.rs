//! From TOML text to a validated [`Spec`], collecting every error on the way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::condition::{Condition, Placeholder};
use crate::converge::RawConverge;
use crate::diag::{Diagnostics, SpecErrors, did_you_mean};
use crate::duration::Dur;
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
            | "service" => {
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
        ) {
            services.insert(name, s);
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
fn unspan(m: &Spanned<BTreeMap<String, Spanned<Text>>>) -> BTreeMap<String, Text> {
    m.get_ref()
        .iter()
        .map(|(k, v)| (k.clone(), v.get_ref().clone()))
        .collect()
}

fn valid_name(n: &str) -> bool {
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

/// Which check kinds a key applies to.
fn applies(key: &str) -> &'static [CheckKind] {
    use CheckKind::*;
    match key {
        "url" => &[Http, Postgres, Redis, Amqp],
        "method" | "headers" | "body" | "follow_redirects" => &[Http],
        "ca_file" | "insecure_skip_verify" => &[Http, Tls],
        "max_body" => &[Http, Exec],
        "address" => &[Tcp, Tls],
        "server_name" => &[Tls],
        "name" | "record_type" | "resolver" => &[Dns],
        "command" | "env" | "cwd" => &[Exec],
        "query" | "expect" => &[Postgres],
        "key" => &[Redis],
        "queue" => &[Amqp],
        _ => &[],
    }
}

fn placeholders_for(kind: CheckKind) -> &'static [Placeholder] {
    use Placeholder::*;
    match kind {
        CheckKind::Http => &[
            Status,
            Body,
            ResponseTime,
            CertificateExpiration,
            Connected,
            Ip,
        ],
        CheckKind::Tcp => &[Connected, ResponseTime, Ip],
        CheckKind::Tls => &[Connected, ResponseTime, CertificateExpiration, Ip],
        CheckKind::Dns => &[Ip, DnsRcode, Body, ResponseTime],
        CheckKind::Exec => &[ExitCode, Body, ResponseTime],
        CheckKind::Postgres => &[Connected, ResponseTime, Value],
        CheckKind::Redis => &[Connected, ResponseTime, Value],
        CheckKind::Amqp => &[Connected, ResponseTime, Messages, Consumers],
    }
}

fn default_conditions(kind: CheckKind) -> Vec<Condition> {
    let text: &[&str] = match kind {
        CheckKind::Http => &["[STATUS] < 400"],
        CheckKind::Tcp
        | CheckKind::Tls
        | CheckKind::Postgres
        | CheckKind::Redis
        | CheckKind::Amqp => &["[CONNECTED] == true"],
        CheckKind::Dns => &["[DNS_RCODE] == NOERROR"],
        CheckKind::Exec => &["[EXIT_CODE] == 0"],
    };
    text.iter()
        .map(|t| Condition::parse(t).expect("built-in condition parses"))
        .collect()
}

fn conditions(d: &mut Diagnostics, list: &[Spanned<String>], kind: CheckKind) -> Vec<Condition> {
    let mut out = Vec::new();
    for c in list {
        // Span of the string's content: skip the opening quote.
        let span = c.span();
        let inner = span.start + 1;
        match Condition::parse(c.get_ref()) {
            Ok(cond) => {
                let allowed = placeholders_for(kind);
                let bad: Vec<_> = cond
                    .placeholders()
                    .into_iter()
                    .filter(|p| !allowed.contains(p))
                    .collect();
                if let Some(p) = bad.first() {
                    d.error(
                        span.clone(),
                        format!(
                            "[{}] is not observed by a `{}` check",
                            p.name(),
                            kind.as_str()
                        ),
                        "not available here",
                        Some(format!(
                            "a `{}` check observes: {}",
                            kind.as_str(),
                            allowed
                                .iter()
                                .map(|p| format!("[{}]", p.name()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    );
                } else {
                    out.push(cond);
                }
            }
            Err(e) => d.error(
                inner + e.at.start..inner + e.at.end.max(e.at.start + 1),
                format!("invalid condition: {}", e.message),
                "here",
                None,
            ),
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn check(
    d: &mut Diagnostics,
    name: &str,
    span: Range<usize>,
    c: &RawCheck,
    resolver: &dyn Resolver,
    base_dir: &Path,
    alert_names: &BTreeSet<&str>,
    check_names: &BTreeSet<&str>,
) -> Option<Check> {
    let kind = *c.kind.get_ref();
    let before = d.errors.len();
    // Keys that do not belong to this kind.
    let present: [(&str, Option<Range<usize>>); 20] = [
        ("url", c.url.as_ref().map(|v| v.span())),
        ("method", c.method.as_ref().map(|v| v.span())),
        ("headers", c.headers.as_ref().map(|v| v.span())),
        ("body", c.body.as_ref().map(|v| v.span())),
        ("ca_file", c.ca_file.as_ref().map(|v| v.span())),
        (
            "insecure_skip_verify",
            c.insecure_skip_verify.as_ref().map(|v| v.span()),
        ),
        (
            "follow_redirects",
            c.follow_redirects.as_ref().map(|v| v.span()),
        ),
        ("max_body", c.max_body.as_ref().map(|v| v.span())),
        ("address", c.address.as_ref().map(|v| v.span())),
        ("server_name", c.server_name.as_ref().map(|v| v.span())),
        ("name", c.name.as_ref().map(|v| v.span())),
        ("record_type", c.record_type.as_ref().map(|v| v.span())),
        ("resolver", c.resolver.as_ref().map(|v| v.span())),
        ("command", c.command.as_ref().map(|v| v.span())),
        ("env", c.env.as_ref().map(|v| v.span())),
        ("cwd", c.cwd.as_ref().map(|v| v.span())),
        ("query", c.query.as_ref().map(|v| v.span())),
        ("expect", c.expect.as_ref().map(|v| v.span())),
        ("key", c.key.as_ref().map(|v| v.span())),
        ("queue", c.queue.as_ref().map(|v| v.span())),
    ];
    for (key, s) in &present {
        if let Some(s) = s {
            let kinds = applies(key);
            if !kinds.contains(&kind) {
                d.error(
                    s.clone(),
                    format!("`{key}` does not apply to a `{}` check", kind.as_str()),
                    "not for this type",
                    Some(format!(
                        "`{key}` is for {} checks",
                        kinds
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
            }
        }
    }
    let require = |d: &mut Diagnostics, key: &str, ok: bool| {
        if !ok {
            d.error(
                span.clone(),
                format!("check `{name}` of type `{}` needs `{key}`", kind.as_str()),
                format!("`{key}` missing"),
                None,
            );
        }
    };
    let mut texts: Vec<(&Text, Range<usize>)> = Vec::new();
    if let Some(u) = &c.url {
        texts.push((u.get_ref(), u.span()));
    }
    if let Some(b) = &c.body {
        texts.push((b.get_ref(), b.span()));
    }
    for m in [&c.headers, &c.env].into_iter().flatten() {
        for t in m.get_ref().values() {
            texts.push((t.get_ref(), t.span()));
        }
    }
    for (t, s) in texts {
        secret_ok(d, t, s, resolver);
    }

    let probe = match kind {
        CheckKind::Http => {
            require(d, "url", c.url.is_some());
            if let Some(u) = &c.url {
                let w = u.get_ref().as_written();
                if !(w.starts_with("http://") || w.starts_with("https://") || w.starts_with("${")) {
                    d.error(
                        u.span(),
                        format!("`{w}` is not an http:// or https:// URL"),
                        "bad URL",
                        None,
                    );
                }
            }
            let method = c
                .method
                .as_ref()
                .map(|m| m.get_ref().to_ascii_uppercase())
                .unwrap_or_else(|| "GET".into());
            if let Some(m) = &c.method {
                const METHODS: [&str; 7] =
                    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
                if !METHODS.contains(&method.as_str()) {
                    d.error(
                        m.span(),
                        format!("unknown HTTP method `{}`", m.get_ref()),
                        "here",
                        Some(format!("one of {}", METHODS.join(", "))),
                    );
                }
            }
            Probe::Http(HttpProbe {
                url: c
                    .url
                    .as_ref()
                    .map(|u| u.get_ref().clone())
                    .unwrap_or_default(),
                method,
                headers: c.headers.as_ref().map(unspan).unwrap_or_default(),
                body: c.body.as_ref().map(|b| b.get_ref().clone()),
                ca_file: file_ref(d, &c.ca_file, base_dir),
                insecure_skip_verify: c
                    .insecure_skip_verify
                    .as_ref()
                    .is_some_and(|v| *v.get_ref()),
                follow_redirects: c.follow_redirects.as_ref().is_none_or(|v| *v.get_ref()),
                max_body: c
                    .max_body
                    .as_ref()
                    .map(|v| *v.get_ref())
                    .unwrap_or(defaults::MAX_BODY),
            })
        }
        CheckKind::Tcp | CheckKind::Tls => {
            require(d, "address", c.address.is_some());
            let address = c
                .address
                .as_ref()
                .map(|a| a.get_ref().clone())
                .unwrap_or_default();
            if let Some(a) = &c.address
                && !host_port(a.get_ref())
            {
                d.error(
                    a.span(),
                    format!("`{}` is not host:port", a.get_ref()),
                    "expected host:port",
                    Some("e.g. `127.0.0.1:5432` or `example.org:443`".into()),
                );
            }
            if kind == CheckKind::Tcp {
                Probe::Tcp { address }
            } else {
                Probe::Tls {
                    address,
                    server_name: c.server_name.as_ref().map(|s| s.get_ref().clone()),
                    ca_file: file_ref(d, &c.ca_file, base_dir),
                    insecure_skip_verify: c
                        .insecure_skip_verify
                        .as_ref()
                        .is_some_and(|v| *v.get_ref()),
                }
            }
        }
        CheckKind::Dns => {
            require(d, "name", c.name.is_some());
            const TYPES: [&str; 9] = ["A", "AAAA", "CNAME", "MX", "TXT", "NS", "SOA", "SRV", "PTR"];
            let record_type = c
                .record_type
                .as_ref()
                .map(|r| r.get_ref().to_ascii_uppercase())
                .unwrap_or_else(|| "A".into());
            if let Some(r) = &c.record_type
                && !TYPES.contains(&record_type.as_str())
            {
                d.error(
                    r.span(),
                    format!("unsupported record type `{}`", r.get_ref()),
                    "here",
                    Some(format!("one of {}", TYPES.join(", "))),
                );
            }
            let resolver = c.resolver.as_ref().and_then(|r| {
                let s = r.get_ref();
                let parsed = s
                    .parse::<SocketAddr>()
                    .ok()
                    .or_else(|| format!("{s}:53").parse().ok());
                if parsed.is_none() {
                    d.error(
                        r.span(),
                        format!("`{s}` is not an IP address (with optional :port)"),
                        "here",
                        None,
                    );
                }
                parsed
            });
            Probe::Dns {
                name: c
                    .name
                    .as_ref()
                    .map(|n| n.get_ref().clone())
                    .unwrap_or_default(),
                record_type,
                resolver,
            }
        }
        CheckKind::Exec => {
            require(d, "command", c.command.is_some());
            if let Some(cmd) = &c.command
                && (cmd.get_ref().is_empty() || cmd.get_ref()[0].is_empty())
            {
                d.error(
                    cmd.span(),
                    "`command` must name a program",
                    "empty",
                    Some("e.g. command = [\"pg_isready\", \"-q\"]".into()),
                );
            }
            Probe::Exec {
                command: c
                    .command
                    .as_ref()
                    .map(|v| v.get_ref().clone())
                    .unwrap_or_default(),
                env: c.env.as_ref().map(unspan).unwrap_or_default(),
                cwd: c.cwd.as_ref().map(|p| base_dir.join(p.get_ref())),
                max_output: c
                    .max_body
                    .as_ref()
                    .map(|v| *v.get_ref())
                    .unwrap_or(defaults::MAX_BODY),
            }
        }
        CheckKind::Postgres | CheckKind::Redis | CheckKind::Amqp => {
            require(d, "url", c.url.is_some());
            let url = c
                .url
                .as_ref()
                .map(|u| u.get_ref().clone())
                .unwrap_or_default();
            if let Some(u) = &c.url {
                let schemes: &[&str] = match kind {
                    CheckKind::Postgres => &["postgres://", "postgresql://"],
                    CheckKind::Redis => &["redis://", "rediss://"],
                    _ => &["amqp://", "amqps://"],
                };
                let w = u.get_ref().as_written();
                if !w.starts_with("${") && !schemes.iter().any(|s| w.starts_with(s)) {
                    d.error(
                        u.span(),
                        format!(
                            "a `{}` check needs a {} URL",
                            kind.as_str(),
                            schemes.join(" or ")
                        ),
                        "wrong scheme",
                        None,
                    );
                }
            }
            match kind {
                CheckKind::Postgres => Probe::Postgres {
                    url,
                    query: c
                        .query
                        .as_ref()
                        .map(|q| q.get_ref().clone())
                        .unwrap_or_else(|| "SELECT 1".into()),
                    expect: c.expect.as_ref().map(|e| e.get_ref().clone()),
                },
                CheckKind::Redis => Probe::Redis {
                    url,
                    key: c.key.as_ref().map(|k| k.get_ref().clone()),
                },
                _ => Probe::Amqp {
                    url,
                    queue: c.queue.as_ref().map(|q| q.get_ref().clone()),
                },
            }
        }
    };

    let interval = c
        .interval
        .unwrap_or(Dur(Duration::from_secs(defaults::INTERVAL_SECS)));
    let timeout = c.timeout.unwrap_or(Dur(
        Duration::from_secs(defaults::TIMEOUT_SECS).min(interval.0)
    ));
    if interval.0 < Duration::from_millis(100) {
        d.error(
            span.clone(),
            format!("check `{name}`: interval {interval} is below the 100ms minimum"),
            "too often",
            None,
        );
    }
    let threshold = |d: &mut Diagnostics, v: &Option<Spanned<u32>>, default: u32| match v {
        Some(t) if *t.get_ref() == 0 => {
            d.error(t.span(), "threshold must be at least 1", "zero", None);
            default
        }
        Some(t) => *t.get_ref(),
        None => default,
    };
    let failure_threshold = threshold(d, &c.failure_threshold, defaults::FAILURE_THRESHOLD);
    let success_threshold = threshold(d, &c.success_threshold, defaults::SUCCESS_THRESHOLD);
    let mut conds = conditions(d, &c.conditions, kind);
    if c.conditions.is_empty() {
        conds = default_conditions(kind);
    }
    let warn = conditions(d, &c.warn, kind);
    for a in &c.alerts {
        unknown_ref(d, a, "alert", alert_names);
    }
    for dep in &c.depends_on {
        if dep.get_ref() == name {
            d.error(
                dep.span(),
                format!("check `{name}` depends on itself"),
                "self-reference",
                None,
            );
        } else {
            unknown_ref(d, dep, "check", check_names);
        }
    }
    if d.errors.len() > before {
        return None;
    }
    Some(Check {
        name: name.to_string(),
        probe,
        interval,
        timeout,
        failure_threshold,
        success_threshold,
        conditions: conds,
        warn,
        alerts: c.alerts.iter().map(|a| a.get_ref().clone()).collect(),
        depends_on: c.depends_on.iter().map(|a| a.get_ref().clone()).collect(),
        group: c.group.clone(),
        description: c.description.clone(),
    })
}

fn host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((h, p)) => !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn file_ref(d: &mut Diagnostics, v: &Option<Spanned<String>>, base_dir: &Path) -> Option<PathBuf> {
    let v = v.as_ref()?;
    let p = base_dir.join(v.get_ref());
    if !p.is_file() {
        d.error(
            v.span(),
            format!("file `{}` does not exist", p.display()),
            "missing file",
            None,
        );
    }
    Some(p)
}

fn dependency_cycles(d: &mut Diagnostics, checks: &[(String, Range<usize>, RawCheck)]) {
    let graph: BTreeMap<&str, Vec<&str>> = checks
        .iter()
        .map(|(n, _, c)| {
            (
                n.as_str(),
                c.depends_on.iter().map(|x| x.get_ref().as_str()).collect(),
            )
        })
        .collect();
    let mut reported = BTreeSet::new();
    for (start, span, _) in checks {
        // Depth-first search for a path back to `start`.
        let mut stack: Vec<(&str, Vec<&str>)> = vec![(start.as_str(), vec![start.as_str()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for &next in graph.get(node).map(|v| v.as_slice()).unwrap_or(&[]) {
                if next == start && path.len() > 1 {
                    let mut members: Vec<&str> = path.clone();
                    members.sort();
                    if reported.insert(members) {
                        let mut cycle = path.clone();
                        cycle.push(start);
                        d.error(
                            span.clone(),
                            format!("dependency cycle: {}", cycle.join(" → ")),
                            "cycle starts here",
                            Some("remove one `depends_on` edge".into()),
                        );
                    }
                } else if seen.insert(next) {
                    let mut p = path.clone();
                    p.push(next);
                    stack.push((next, p));
                }
            }
        }
    }
}

fn alert(
    d: &mut Diagnostics,
    name: &str,
    span: Range<usize>,
    a: &RawAlert,
    resolver: &dyn Resolver,
) -> Option<Alert> {
    let before = d.errors.len();
    let kind = *a.kind.get_ref();
    let kname = match kind {
        AlertKind::Webhook => "webhook",
        AlertKind::Slack => "slack",
        AlertKind::Email => "email",
    };
    let http_only = [
        ("url", a.url.as_ref().map(|v| v.span())),
        ("headers", a.headers.as_ref().map(|v| v.span())),
    ];
    let email_only = [
        ("smtp_host", a.smtp_host.as_ref().map(|v| v.span())),
        ("smtp_port", a.smtp_port.as_ref().map(|v| v.span())),
        ("smtp_tls", a.smtp_tls.as_ref().map(|v| v.span())),
        ("username", a.username.as_ref().map(|v| v.span())),
        ("password", a.password.as_ref().map(|v| v.span())),
        ("from", a.from.as_ref().map(|v| v.span())),
        ("to", a.to.first().map(|v| v.span())),
    ];
    let wrong: Vec<(&str, Range<usize>)> = match kind {
        AlertKind::Email => http_only
            .iter()
            .filter_map(|(k, s)| s.clone().map(|s| (*k, s)))
            .collect(),
        _ => email_only
            .iter()
            .filter_map(|(k, s)| s.clone().map(|s| (*k, s)))
            .collect(),
    };
    for (k, s) in wrong {
        d.error(
            s,
            format!("`{k}` does not apply to a `{kname}` alert"),
            "not for this type",
            None,
        );
    }
    if kind == AlertKind::Slack
        && let Some(h) = &a.headers
    {
        d.error(
            h.span(),
            "`headers` does not apply to a `slack` alert",
            "not for this type",
            None,
        );
    }
    for t in [&a.url, &a.username, &a.password].into_iter().flatten() {
        secret_ok(d, t.get_ref(), t.span(), resolver);
    }
    if let Some(h) = &a.headers {
        for t in h.get_ref().values() {
            secret_ok(d, t.get_ref(), t.span(), resolver);
        }
    }
    let missing = |d: &mut Diagnostics, key: &str| {
        d.error(
            span.clone(),
            format!("alert `{name}` of type `{kname}` needs `{key}`"),
            format!("`{key}` missing"),
            None,
        );
    };
    let channel = match kind {
        AlertKind::Webhook | AlertKind::Slack => {
            let Some(url) = &a.url else {
                missing(d, "url");
                return None;
            };
            if kind == AlertKind::Webhook {
                Channel::Webhook {
                    url: url.get_ref().clone(),
                    headers: a.headers.as_ref().map(unspan).unwrap_or_default(),
                }
            } else {
                Channel::Slack {
                    url: url.get_ref().clone(),
                }
            }
        }
        AlertKind::Email => {
            if a.smtp_host.is_none() {
                missing(d, "smtp_host");
            }
            if a.from.is_none() {
                missing(d, "from");
            }
            if a.to.is_empty() {
                missing(d, "to");
            }
            for addr in a.from.iter().chain(a.to.iter()) {
                if !addr.get_ref().contains('@') {
                    d.error(
                        addr.span(),
                        format!("`{}` is not an e-mail address", addr.get_ref()),
                        "here",
                        None,
                    );
                }
            }
            let tls = a
                .smtp_tls
                .as_ref()
                .map(|t| *t.get_ref())
                .unwrap_or(SmtpTls::Starttls);
            Channel::Email {
                host: a
                    .smtp_host
                    .as_ref()
                    .map(|h| h.get_ref().clone())
                    .unwrap_or_default(),
                port: a
                    .smtp_port
                    .as_ref()
                    .map(|p| *p.get_ref())
                    .unwrap_or(match tls {
                        SmtpTls::None => 25,
                        SmtpTls::Starttls => 587,
                        SmtpTls::Tls => 465,
                    }),
                tls,
                username: a.username.as_ref().map(|u| u.get_ref().clone()),
                password: a.password.as_ref().map(|u| u.get_ref().clone()),
                from: a
                    .from
                    .as_ref()
                    .map(|f| f.get_ref().clone())
                    .unwrap_or_default(),
                to: a.to.iter().map(|t| t.get_ref().clone()).collect(),
            }
        }
    };
    if d.errors.len() > before {
        return None;
    }
    Some(Alert {
        name: name.to_string(),
        channel,
        reminder: a.reminder,
        send_recovered: a.send_recovered.unwrap_or(true),
        send_warn: a.send_warn.unwrap_or(false),
    })
}
