//! Validating `[check.NAME]` tables: keys per check type, conditions and
//! their placeholders, targets, files, and dependency cycles between checks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::condition::{Condition, Placeholder};
use crate::diag::Diagnostics;
use crate::duration::Dur;
use crate::model::*;
use crate::raw::*;
use crate::secret::{Resolver, Text};
use crate::validate::{secret_ok, unknown_ref, unspan};

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
pub(crate) fn check(
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

pub(crate) fn file_ref(
    d: &mut Diagnostics,
    v: &Option<Spanned<String>>,
    base_dir: &Path,
) -> Option<PathBuf> {
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

pub(crate) fn dependency_cycles(d: &mut Diagnostics, checks: &[(String, Range<usize>, RawCheck)]) {
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
