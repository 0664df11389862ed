//! `steward doctor`: the seed's advice for developers new to operations, as
//! rules over the spec and a few facts from the state database. Pure: the
//! caller gathers the facts; rules never touch the network or the disk.
//!
//! Each capability adds its own rules here as it lands.

use serde::Serialize;
use steward_spec::{Channel, Probe, ResourceKind, Source, Spec, StoreKind, Text};

/// How bad a gap is. `error` makes `steward doctor` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Should be fixed.
    Warning,
    /// Will hurt.
    Error,
}

/// One gap, with a one-line fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// Stable rule id, e.g. `inline-secret`.
    pub rule: &'static str,
    /// What it is about, e.g. `check.api`.
    pub subject: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// What the state database knows that the spec does not.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Now (Unix ms).
    pub now: i64,
    /// Last heartbeat of `steward serve` on this state directory (Unix ms).
    pub serve_heartbeat: Option<i64>,
    /// What the event log says about each backup.
    pub backups: std::collections::BTreeMap<String, BackupFacts>,
}

/// A backup's record in the event log.
#[derive(Debug, Clone, Default)]
pub struct BackupFacts {
    /// Latest successful run (Unix ms).
    pub last_success: Option<i64>,
    /// Latest failed run (Unix ms).
    pub last_failure: Option<i64>,
    /// Latest successful restore drill (Unix ms).
    pub last_drill: Option<i64>,
}

/// All rules, in a stable order: errors first, then by rule and subject.
pub fn diagnose(spec: &Spec, facts: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    no_alert_channel(spec, &mut out);
    checks_without_alerts(spec, &mut out);
    inline_secrets(spec, &mut out);
    tls_gaps(spec, &mut out);
    flapping(spec, &mut out);
    nothing_watching(spec, facts, &mut out);
    exposed_listener(spec, &mut out);
    converge_gaps(spec, &mut out);
    backup_gaps(spec, facts, &mut out);
    fleet_gaps(spec, &mut out);
    unwatched_services(spec, &mut out);
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.rule.cmp(b.rule))
            .then(a.subject.cmp(&b.subject))
    });
    out
}

fn finding(
    severity: Severity,
    rule: &'static str,
    subject: String,
    message: String,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        severity,
        rule,
        subject,
        message,
        fix: fix.into(),
    }
}

fn no_alert_channel(spec: &Spec, out: &mut Vec<Finding>) {
    if !spec.checks.is_empty() && spec.alerts.is_empty() {
        out.push(finding(
            Severity::Error,
            "no-alert-channel",
            "alert".into(),
            format!("{} check(s) but no alert channel: a failure at night reaches nobody", spec.checks.len()),
            "add an [alert.ops] (type = \"webhook\", \"slack\" or \"email\"), list it in each check's `alerts`, and prove it with `steward alert test ops`",
        ));
    }
}

fn checks_without_alerts(spec: &Spec, out: &mut Vec<Finding>) {
    if spec.alerts.is_empty() {
        return; // reported once by no-alert-channel
    }
    for c in spec.checks.values().filter(|c| c.alerts.is_empty()) {
        out.push(finding(
            Severity::Warning,
            "check-without-alert",
            format!("check.{}", c.name),
            format!("check `{}` alerts nobody when it goes down", c.name),
            format!(
                "add `alerts = [\"{}\"]` to [check.{}]",
                spec.alerts
                    .keys()
                    .next()
                    .map(String::as_str)
                    .unwrap_or("ops"),
                c.name
            ),
        ));
    }
}

/// A URL with `user:password@` written literally.
fn url_has_inline_password(t: &Text) -> bool {
    let w = t.as_written();
    if t.has_references() {
        return false;
    }
    let Some(rest) = w.split_once("://").map(|x| x.1) else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.split_once(':').is_some_and(|(_, p)| !p.is_empty()))
}

fn sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization"
        || n.contains("token")
        || n.contains("key")
        || n.contains("secret")
        || n == "cookie"
}

/// Names of headers or variables that look like credentials and hold a literal.
fn inline_sensitive(map: &std::collections::BTreeMap<String, Text>) -> impl Iterator<Item = &str> {
    map.iter()
        .filter(|(k, v)| sensitive_header(k) && !v.has_references())
        .map(|(k, _)| k.as_str())
}

fn inline_secrets(spec: &Spec, out: &mut Vec<Finding>) {
    let fix = "move the value into the environment or a file and write `${env:NAME}` or `${file:/path}` instead";
    let mut flag = |subject: String, what: &str| {
        out.push(finding(
            Severity::Error,
            "inline-secret",
            subject,
            format!("{what} is written inline in the spec"),
            fix,
        ));
    };
    for c in spec.checks.values() {
        let subject = format!("check.{}", c.name);
        match &c.probe {
            Probe::Postgres { url, .. } | Probe::Redis { url, .. } | Probe::Amqp { url, .. }
                if url_has_inline_password(url) =>
            {
                flag(subject.clone(), "a password in the connection URL")
            }
            Probe::Http(h) => {
                if url_has_inline_password(&h.url) {
                    flag(subject.clone(), "a password in the URL");
                }
                for k in inline_sensitive(&h.headers) {
                    flag(subject.clone(), &format!("header `{k}`"));
                }
            }
            Probe::Exec { env, .. } => {
                for k in inline_sensitive(env) {
                    flag(subject.clone(), &format!("environment variable `{k}`"));
                }
            }
            _ => {}
        }
    }
    for a in spec.alerts.values() {
        let subject = format!("alert.{}", a.name);
        match &a.channel {
            Channel::Slack { url } if !url.has_references() => {
                flag(subject, "the Slack webhook URL (it is the credential)")
            }
            Channel::Webhook { url, headers } => {
                if url_has_inline_password(url) {
                    flag(subject.clone(), "a password in the webhook URL");
                }
                for k in inline_sensitive(headers) {
                    flag(subject.clone(), &format!("header `{k}`"));
                }
            }
            Channel::Email {
                password: Some(p), ..
            } if !p.has_references() => flag(subject, "the SMTP password"),
            _ => {}
        }
    }
}

fn tls_gaps(spec: &Spec, out: &mut Vec<Finding>) {
    for c in spec.checks.values() {
        let subject = format!("check.{}", c.name);
        let (https, insecure) = match &c.probe {
            Probe::Http(h) => (
                h.url.as_written().starts_with("https://"),
                h.insecure_skip_verify,
            ),
            Probe::Tls {
                insecure_skip_verify,
                ..
            } => (true, *insecure_skip_verify),
            _ => (false, false),
        };
        if insecure {
            out.push(finding(
                Severity::Warning,
                "tls-verification-off",
                subject.clone(),
                format!("check `{}` accepts any certificate", c.name),
                "set `ca_file` to the CA that signed the certificate instead of `insecure_skip_verify = true`",
            ));
        }
        let watches_expiry = c.conditions.iter().chain(c.warn.iter()).any(|k| {
            k.placeholders()
                .contains(&steward_spec::Placeholder::CertificateExpiration)
        });
        if https && !watches_expiry {
            out.push(finding(
                Severity::Info,
                "certificate-expiry-unwatched",
                subject,
                format!("check `{}` talks TLS but nothing warns before its certificate expires", c.name),
                "add `warn = [\"[CERTIFICATE_EXPIRATION] > 14d\"]` (and a failing condition at 48h)",
            ));
        }
    }
}

fn flapping(spec: &Spec, out: &mut Vec<Finding>) {
    for c in spec
        .checks
        .values()
        .filter(|c| c.failure_threshold == 1 && !c.alerts.is_empty())
    {
        out.push(finding(
            Severity::Info,
            "unconfirmed-failures",
            format!("check.{}", c.name),
            format!(
                "check `{}` alerts on a single failed run; one dropped packet pages someone",
                c.name
            ),
            "use failure_threshold = 2 or 3 (the default) to confirm a failure first",
        ));
    }
}

/// The database a PostgreSQL URL names, comparable across a check and a backup:
/// the text as written when it is a reference, else host, port and database.
fn database_identity(url: &Text) -> String {
    let w = url.as_written();
    if url.has_references() {
        return w.to_string();
    }
    let rest = w.split_once("://").map(|(_, r)| r).unwrap_or(w);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let rest = rest.split('?').next().unwrap_or(rest);
    let (hostport, db) = rest.split_once('/').unwrap_or((rest, ""));
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5432")
    };
    format!("{hostport}/{db}")
}

fn backup_gaps(spec: &Spec, facts: &Facts, out: &mut Vec<Finding>) {
    let backed_up: Vec<String> = spec
        .backups
        .values()
        .filter_map(|b| match &b.source {
            Source::Postgres { url, .. } => Some(database_identity(url)),
            _ => None,
        })
        .collect();
    for c in spec.checks.values() {
        if let Probe::Postgres { url, .. } = &c.probe
            && !backed_up.contains(&database_identity(url))
        {
            out.push(finding(
                Severity::Warning,
                "database-not-backed-up",
                format!("check.{}", c.name),
                format!(
                    "check `{}` watches a PostgreSQL database that no [backup.*] dumps; if it is lost, so is its data",
                    c.name
                ),
                "add a [backup.NAME] with `source = { postgres = \"…\" }` (the same URL) and a `schedule`",
            ));
        }
    }
    for b in spec.backups.values() {
        let subject = format!("backup.{}", b.name);
        if b.schedule.is_none() {
            out.push(finding(
                Severity::Warning,
                "backup-unscheduled",
                subject.clone(),
                format!(
                    "backup `{}` runs only when someone remembers to run it",
                    b.name
                ),
                "set `schedule = \"0 3 * * *\"` so `serve` runs it",
            ));
        }
        if b.drill.is_none() {
            out.push(finding(
                Severity::Info,
                "backup-never-drilled",
                subject.clone(),
                format!(
                    "nobody knows whether backup `{}` restores, nor how long a restore takes",
                    b.name
                ),
                "add `drill = { schedule = \"0 5 * * sun\" }` (and a `verify_query` for databases)",
            ));
        }
        if let Some(store) = spec.stores.get(&b.store)
            && matches!(store.kind, StoreKind::Local { .. })
        {
            out.push(finding(
                Severity::Info,
                "backup-on-this-machine",
                subject.clone(),
                format!("backup `{}` is kept on this machine only; a lost disk takes it along", b.name),
                "add a [store.NAME] of type `swift` and set `store` (restic can copy existing snapshots there)",
            ));
        }
        let f = facts.backups.get(&b.name).cloned().unwrap_or_default();
        if f.last_failure.is_some() && f.last_failure > f.last_success {
            out.push(finding(
                Severity::Error,
                "backup-failing",
                subject.clone(),
                format!("the latest run of backup `{}` failed", b.name),
                "see `steward backup run` output or the `backup.failed` event, fix, and run it again",
            ));
        }
    }
}

fn converge_gaps(spec: &Spec, out: &mut Vec<Finding>) {
    for set in spec.converge.values() {
        for r in &set.resources {
            if let ResourceKind::Exec {
                creates: None,
                unless: None,
                onlyif: None,
                refresh_only: false,
                ..
            } = &r.kind
            {
                out.push(finding(
                    Severity::Warning,
                    "converge-unguarded-exec",
                    format!("converge.{}", set.name),
                    format!(
                        "`{}` runs on every apply, so the set never converges and every drift check reports it",
                        r.id
                    ),
                    "add `creates`, `unless` or `onlyif`, or `refresh_only = true` with a `notify` from what it reacts to",
                ));
            }
        }
        if set.drift_check.is_none() {
            out.push(finding(
                Severity::Info,
                "converge-no-drift-check",
                format!("converge.{}", set.name),
                format!(
                    "nothing notices when a host drifts from converge set `{}` (a hand edit, a removed package)",
                    set.name
                ),
                "set `drift_check = \"15m\"` so `serve` plans it and records drift",
            ));
        }
    }
}

fn fleet_gaps(spec: &Spec, out: &mut Vec<Finding>) {
    for svc in spec.services.values() {
        let subject = format!("service.{}", svc.name);
        if svc.listen.is_some() && svc.readiness.is_none() {
            out.push(finding(
                Severity::Warning,
                "service-without-readiness",
                subject.clone(),
                format!(
                    "`{}` takes traffic as soon as its process runs, before it can answer, and a deploy cannot tell a broken version from a working one",
                    svc.name
                ),
                "add `readiness = \"CHECK\"` naming an http check of its health endpoint",
            ));
        }
        if svc.listen.is_some() && svc.replicas.max < 2 {
            out.push(finding(
                Severity::Info,
                "service-single-instance",
                subject.clone(),
                format!(
                    "`{}` runs one instance: replacing or losing it leaves nothing to fail traffic over to",
                    svc.name
                ),
                "set `replicas = { min = 2, max = … }`",
            ));
        }
        if !svc.rollout.auto_revert {
            out.push(finding(
                Severity::Info,
                "service-no-auto-revert",
                subject,
                format!(
                    "a failed deploy of `{}` halts half-way and waits for someone to run `steward rollback`",
                    svc.name
                ),
                "set `rollout = { auto_revert = true, … }` unless a person must look first",
            ));
        }
    }
}

/// The series of the proxy's requests and latencies a rule may watch.
const PROXY_SERIES: &[&str] = &[
    "steward_proxy_requests_total",
    "steward_proxy_request_duration_seconds_bucket",
    "steward_proxy_request_duration_seconds_sum",
    "steward_proxy_request_duration_seconds_count",
    "steward_proxy_upstream_errors_total",
];

/// Whether a rule's expression reads the proxy's request or latency series
/// of `service` (a selector naming one of them whose `service` matchers, if
/// any, admit it).
fn watches(expr: &str, service: &str) -> bool {
    use promql_parser::parser::Expr;
    struct Finder<'a> {
        service: &'a str,
        found: bool,
    }
    impl promql_parser::util::ExprVisitor for Finder<'_> {
        type Error = ();
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, ()> {
            let vs = match e {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(m) => &m.vs,
                _ => return Ok(true),
            };
            let name = vs.name.clone().or_else(|| {
                vs.matchers
                    .find_matchers("__name__")
                    .first()
                    .map(|m| m.value.clone())
            });
            let ours = name.is_some_and(|n| PROXY_SERIES.contains(&n.as_str()));
            if ours
                && vs
                    .matchers
                    .find_matchers("service")
                    .iter()
                    .all(|m| m.is_match(self.service))
            {
                self.found = true;
            }
            Ok(!self.found)
        }
    }
    let Ok(e) = promql_parser::parser::parse(expr) else {
        return false;
    };
    let mut f = Finder {
        service,
        found: false,
    };
    let _ = promql_parser::util::walk_expr(&mut f, &e);
    f.found
}

fn unwatched_services(spec: &Spec, out: &mut Vec<Finding>) {
    for svc in spec.services.values().filter(|s| s.listen.is_some()) {
        if spec.rules.values().any(|r| watches(&r.expr, &svc.name)) {
            continue;
        }
        out.push(finding(
            Severity::Warning,
            "service-without-metric-rule",
            format!("service.{}", svc.name),
            format!(
                "no [rule.*] watches the error rate or latency of `{}`: it can fail half its requests, or answer in ten seconds, while every health check passes",
                svc.name
            ),
            format!(
                "add a rule on the proxy's series, e.g. [rule.{0}_errors] expr = 'sum(rate(steward_proxy_requests_total{{service=\"{0}\",code=\"5xx\"}}[5m])) / sum(rate(steward_proxy_requests_total{{service=\"{0}\"}}[5m])) > 0.05', for = \"5m\", alerts = [\"ops\"]",
                svc.name
            ),
        ));
    }
}

fn nothing_watching(spec: &Spec, facts: &Facts, out: &mut Vec<Finding>) {
    if spec.checks.is_empty() {
        out.push(finding(
            Severity::Error,
            "no-checks",
            "check".into(),
            "the spec has no health checks: nothing will notice an outage".into(),
            "add a [check.NAME] for each service's health endpoint and for each database",
        ));
        return;
    }
    let stale = match facts.serve_heartbeat {
        None => Some("has never run".to_string()),
        Some(t) if facts.now - t > 5 * 60_000 => {
            Some(format!("last ran {} minutes ago", (facts.now - t) / 60_000))
        }
        Some(_) => None,
    };
    if let Some(when) = stale {
        out.push(finding(
            Severity::Warning,
            "not-monitoring",
            "serve".into(),
            format!("`steward serve` {when} on this state directory: the checks are not being run"),
            "run `steward serve` under a supervisor (systemd, runit) so it restarts with the machine",
        ));
    }
}

fn exposed_listener(spec: &Spec, out: &mut Vec<Finding>) {
    let s = &spec.settings;
    if s.listen.ip().is_loopback() {
        return;
    }
    if s.auth == steward_spec::AuthMode::None {
        out.push(finding(
            Severity::Error,
            "insecure-listener",
            "steward.listen".into(),
            format!("steward serves its API on {} to other machines without authentication (`insecure = true`)", s.listen),
            "set `auth = \"token\"` and create tokens with `steward token create`, or listen on 127.0.0.1",
        ));
    } else {
        out.push(finding(
            Severity::Warning,
            "exposed-listener",
            "steward.listen".into(),
            format!(
                "steward serves its API on {}: tokens cross the network in clear text",
                s.listen
            ),
            "put a TLS-terminating reverse proxy in front, or listen on 127.0.0.1",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    struct AnyEnv;
    impl steward_spec::Resolver for AnyEnv {
        fn env(&self, _: &str) -> Option<String> {
            Some("x".into())
        }
        fn file(&self, _: &Path) -> Result<String, String> {
            Ok("x".into())
        }
    }

    fn spec(src: &str) -> Spec {
        Spec::parse("t.toml", src, Path::new("/"), &AnyEnv).unwrap()
    }

    fn rules(src: &str, facts: &Facts) -> Vec<(&'static str, String)> {
        diagnose(&spec(src), facts)
            .into_iter()
            .map(|f| (f.rule, f.subject))
            .collect()
    }

    const WATCHED: Facts = Facts {
        now: 1_000_000,
        serve_heartbeat: Some(999_000),
        backups: std::collections::BTreeMap::new(),
    };

    #[test]
    fn unguarded_execs_and_unwatched_sets_are_found() {
        let base = "[check.a]\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\n";
        let src = format!(
            "{base}[converge.web]\nexec = [\n  {{ name = \"always\", command = [\"true\"] }},\n  {{ name = \"guarded\", command = [\"true\"], creates = \"/x\" }},\n  {{ name = \"handler\", command = [\"true\"], refresh_only = true }},\n]\n"
        );
        let found = rules(&src, &WATCHED);
        assert!(found.contains(&("converge-unguarded-exec", "converge.web".into())));
        assert!(found.contains(&("converge-no-drift-check", "converge.web".into())));
        let f = diagnose(&spec(&src), &WATCHED);
        let unguarded: Vec<_> = f
            .iter()
            .filter(|f| f.rule == "converge-unguarded-exec")
            .collect();
        assert_eq!(unguarded.len(), 1);
        assert!(unguarded[0].message.contains("exec:always"));
        let watched = src.replace(
            "[converge.web]\n",
            "[converge.web]\ndrift_check = \"10m\"\n",
        );
        assert!(
            !rules(&watched, &WATCHED)
                .iter()
                .any(|r| r.0 == "converge-no-drift-check")
        );
    }

    #[test]
    fn services_without_readiness_failover_or_revert_are_found() {
        let base = "[check.h]\ntype = \"http\"\nurl = \"http://127.0.0.1:1/health\"\n[image.i]\nbase = \"empty\"\n";
        let bare = format!(
            "{base}[service.web]\nimage = \"i\"\ncommand = [\"x\"]\nlisten = \"127.0.0.1:9000\"\nrollout = {{ auto_revert = false }}\n"
        );
        let found = rules(&bare, &WATCHED);
        for rule in [
            "service-without-readiness",
            "service-single-instance",
            "service-no-auto-revert",
        ] {
            assert!(
                found.contains(&(rule, "service.web".into())),
                "{rule}: {found:?}"
            );
        }
        let good = format!(
            "{base}[service.web]\nimage = \"i\"\ncommand = [\"x\"]\nlisten = \"127.0.0.1:9000\"\nreadiness = \"h\"\nreplicas = {{ min = 2, max = 4 }}\n[rule.errors]\nexpr = 'rate(steward_proxy_requests_total{{code=\"5xx\"}}[5m]) > 1'\n"
        );
        assert!(
            !rules(&good, &WATCHED)
                .iter()
                .any(|r| r.0.starts_with("service-")),
            "{:?}",
            rules(&good, &WATCHED)
        );
    }

    #[test]
    fn services_without_an_error_or_latency_rule_are_found() {
        let base = "[image.i]\nbase = \"empty\"\n[service.web]\nimage = \"i\"\ncommand = [\"x\"]\nlisten = \"127.0.0.1:9000\"\n[service.api]\nimage = \"i\"\ncommand = [\"x\"]\nlisten = \"127.0.0.1:9001\"\n[service.worker]\nimage = \"i\"\ncommand = [\"x\"]\n";
        let unwatched = |src: &str| -> Vec<String> {
            rules(src, &WATCHED)
                .into_iter()
                .filter(|r| r.0 == "service-without-metric-rule")
                .map(|r| r.1)
                .collect()
        };
        // No rule: both services that take traffic (not the worker).
        assert_eq!(unwatched(base), ["service.api", "service.web"]);
        // A rule on another series, and one on the proxy's for another
        // service, watch neither.
        let other = format!(
            "{base}[rule.a]\nexpr = 'up == 0'\n[rule.b]\nexpr = 'rate(steward_proxy_requests_total{{service=\"api\",code=\"5xx\"}}[5m]) > 1'\n"
        );
        assert_eq!(unwatched(&other), ["service.web"]);
        // A latency rule over every service watches them all.
        let all = format!(
            "{base}[rule.slow]\nexpr = 'histogram_quantile(0.99, sum by (le, service) (rate(steward_proxy_request_duration_seconds_bucket[5m]))) > 1'\n"
        );
        assert!(unwatched(&all).is_empty());
        // A regular expression naming it counts.
        let re = format!(
            "{base}[rule.e]\nexpr = 'sum by (service) (rate(steward_proxy_requests_total{{service=~\"web|api\",code=\"5xx\"}}[5m])) > 0'\n"
        );
        assert!(unwatched(&re).is_empty());
    }

    #[test]
    fn inline_secrets_are_found_and_references_are_not() {
        let r = rules(
            r#"
[alert.ops]
type = "slack"
url = "https://hooks.example/T000/B000/XXXX"
[check.db]
type = "postgres"
url = "postgres://app:hunter2@127.0.0.1/app"
alerts = ["ops"]
[check.db2]
type = "postgres"
url = "postgres://app:${env:PGPASSWORD}@127.0.0.1/app"
alerts = ["ops"]
[check.api]
type = "http"
url = "http://127.0.0.1/"
headers = { Authorization = "Bearer abc" }
alerts = ["ops"]
"#,
            &WATCHED,
        );
        assert!(r.contains(&("inline-secret", "alert.ops".into())));
        assert!(r.contains(&("inline-secret", "check.db".into())));
        assert!(r.contains(&("inline-secret", "check.api".into())));
        assert!(!r.contains(&("inline-secret", "check.db2".into())));
    }

    #[test]
    fn missing_alerts_and_idle_serve() {
        let src = "[check.a]\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\n";
        let r = rules(
            src,
            &Facts {
                now: 10 * 60_000,
                ..Facts::default()
            },
        );
        assert_eq!(r[0].0, "no-alert-channel", "errors sort first: {r:?}");
        assert!(r.iter().any(|x| x.0 == "not-monitoring"));
        let r = rules(src, &WATCHED);
        assert!(!r.iter().any(|x| x.0 == "not-monitoring"));
    }

    #[test]
    fn listeners_for_other_machines() {
        let base = "[alert.ops]\ntype = \"webhook\"\nurl = \"${env:HOOK}\"\n";
        let r = rules(
            &format!("[steward]\nlisten = \"0.0.0.0:7070\"\ninsecure = true\n{base}"),
            &WATCHED,
        );
        assert!(
            r.contains(&("insecure-listener", "steward.listen".into())),
            "{r:?}"
        );
        let r = rules(
            &format!("[steward]\nlisten = \"0.0.0.0:7070\"\nauth = \"token\"\n{base}"),
            &WATCHED,
        );
        assert!(
            r.contains(&("exposed-listener", "steward.listen".into())),
            "{r:?}"
        );
        let r = rules(
            &format!("[steward]\nlisten = \"127.0.0.1:7070\"\n{base}"),
            &WATCHED,
        );
        assert!(!r.iter().any(|f| f.0.ends_with("listener")));
    }

    #[test]
    fn tls_rules() {
        let r = rules(
            r#"
[alert.ops]
type = "webhook"
url = "${env:HOOK}"
[check.site]
type = "http"
url = "https://127.0.0.1/"
insecure_skip_verify = true
alerts = ["ops"]
[check.cert]
type = "tls"
address = "127.0.0.1:443"
conditions = ["[CERTIFICATE_EXPIRATION] > 48h"]
alerts = ["ops"]
"#,
            &WATCHED,
        );
        assert!(r.contains(&("tls-verification-off", "check.site".into())));
        assert!(r.contains(&("certificate-expiry-unwatched", "check.site".into())));
        assert!(!r.contains(&("certificate-expiry-unwatched", "check.cert".into())));
    }
}
