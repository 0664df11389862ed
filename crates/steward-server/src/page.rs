//! The status page: rendered on the server (fast with thousands of checks, and
//! readable without JavaScript); a small script only refreshes it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, context};
use serde::Serialize;
use steward_state::{Bucket, FleetState, now_ms};

use crate::AppState;
use crate::api::{check_views, rfc3339};

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // The `.html` name turns on HTML auto-escaping.
        env.add_template("status.html", include_str!("../assets/status.html"))
            .expect("status template parses");
        env.add_template("query.html", include_str!("../assets/query.html"))
            .expect("query template parses");
        env
    })
}

#[derive(Serialize)]
struct Row {
    name: String,
    kind: String,
    description: Option<String>,
    health: String,
    uptime24: String,
    uptime7: String,
    uptime30: String,
    points: String,
    /// The top of the response-time axis, e.g. `50 ms`.
    axis: String,
    latency: String,
    since: String,
    since_text: String,
    error: String,
}

#[derive(Serialize)]
struct Gap {
    severity: String,
    rule: &'static str,
    count: usize,
    subjects: Vec<String>,
    message: String,
    fix: String,
}

#[derive(Serialize)]
struct Group {
    name: String,
    checks: Vec<Row>,
}

fn pct(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 0.9999 => "100%".into(),
        Some(v) => format!("{:.2}%", v * 100.0),
        None => "–".into(),
    }
}

/// The top of a chart's axis: the smallest 1, 2 or 5 × 10ⁿ at or above
/// `max`, so the line sits where its values are, under a round label.
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * magnitude)
}

/// Polyline points for the mean latency of each bucket over a 240×40 box
/// whose height runs from 0 (bottom) to the axis top it returns in ms.
fn sparkline(buckets: &[Bucket], from: i64, span: i64) -> (String, f64) {
    let max = buckets.iter().map(|b| b.avg_ms).fold(0.0_f64, f64::max);
    let top = nice_ceiling(max.max(1.0));
    let y = |ms: f64| 39.0 - ms / top * 38.0;
    if let [only] = buckets {
        // One bucket so far: a flat line at its level reads better than a dot.
        let y = y(only.avg_ms);
        return (format!("0,{y:.1} 240,{y:.1}"), top);
    }
    let points = buckets
        .iter()
        .map(|b| {
            let x = ((b.ts - from) as f64 / span as f64 * 240.0).clamp(0.0, 240.0);
            format!("{x:.1},{:.1}", y(b.avg_ms))
        })
        .collect::<Vec<_>>()
        .join(" ");
    (points, top)
}

/// How far ahead `ms` is, as the page says how long ago things were.
fn ahead(ms: i64, now: i64) -> String {
    let s = (ms - now).max(0) / 1000;
    match s {
        0..=59 => format!("in {s} s"),
        60..=3599 => format!("in {} min", s / 60),
        3600..=172_799 => format!("in {} h", s / 3600),
        _ => format!("in {} days", s / 86400),
    }
}

fn ago(ms: i64, now: i64) -> String {
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

/// One service row on the status page.
#[derive(serde::Serialize)]
struct ServiceRow {
    name: String,
    version: String,
    ready: u32,
    desired: u32,
    listen: String,
    instances: Vec<(String, String)>,
    deploy: String,
    deploy_state: String,
    /// Requests, errors and latency from the proxy's series.
    signals: Option<crate::charts::Signals>,
    /// The autoscaler's latest decision, in a line.
    autoscale: String,
}

/// One deploy on the status page.
#[derive(serde::Serialize)]
struct DeployLine {
    id: i64,
    service: String,
    kind: String,
    to: String,
    who: String,
    when: String,
    result: String,
    reason: String,
}

/// One backup row on the status page.
#[derive(serde::Serialize)]
struct BackupRow {
    name: String,
    source: String,
    state: String,
    last_run: String,
    snapshot: String,
    added: String,
    seconds: String,
    drill: String,
    next: String,
    /// When it runs next (RFC 3339), for the `<time>` element.
    next_at: String,
    error: String,
}

pub(crate) async fn status_page(
    State(s): State<AppState>,
    who: Option<axum::Extension<crate::auth::Authed>>,
) -> Response {
    let now = now_ms();
    let day = 86_400_000;
    let sums = match s.summaries.get(&s.store).await {
        Ok(v) => v,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let (uptime, series) = (&sums.uptime, &sums.day_series);
    let views = check_views(&s, uptime);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut groups: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for v in views {
        *counts
            .entry(match v.health.as_str() {
                "up" => "up",
                "down" => "down",
                "degraded" => "degraded",
                _ => "unknown",
            })
            .or_insert(0) += 1;
        let buckets = series.get(&v.name).map(Vec::as_slice).unwrap_or(&[]);
        let since_ms = chrono::DateTime::parse_from_rfc3339(&v.since)
            .map(|t| t.timestamp_millis())
            .unwrap_or(now);
        let mut row = Row {
            kind: v.kind.clone(),
            description: v.description.clone(),
            health: v.health.clone(),
            uptime24: pct(v.uptime.h24),
            uptime7: pct(v.uptime.d7),
            uptime30: pct(v.uptime.d30),
            points: String::new(),
            axis: String::new(),
            latency: v
                .last
                .as_ref()
                .map(|l| format!("{:.0} ms", l.duration_ms))
                .unwrap_or_default(),
            since: v.since.clone(),
            since_text: ago(since_ms, now),
            error: v
                .last
                .as_ref()
                .and_then(|l| l.error.clone())
                .unwrap_or_default(),
            name: v.name,
        };
        if !buckets.is_empty() {
            let (points, top) = sparkline(buckets, now - day, day);
            row.points = points;
            row.axis = format!("{top} ms");
        }
        groups
            .entry(v.group.unwrap_or_else(|| "checks".into()))
            .or_default()
            .push(row);
    }
    let total: usize = counts.values().sum();
    let overall = if counts.get("down").copied().unwrap_or(0) > 0 {
        "down"
    } else if counts.get("degraded").copied().unwrap_or(0) > 0 {
        "degraded"
    } else if counts.get("up").copied().unwrap_or(0) > 0 {
        "up"
    } else {
        "unknown"
    };
    // Doctor findings grouped by rule, so thousands of checks stay one line each.
    let mut gaps: Vec<Gap> = Vec::new();
    for f in s.findings.iter() {
        match gaps.iter_mut().find(|g| g.rule == f.rule) {
            Some(g) => {
                g.count += 1;
                if g.subjects.len() < 5 {
                    g.subjects.push(f.subject.clone());
                }
            }
            None => gaps.push(Gap {
                severity: format!("{:?}", f.severity).to_lowercase(),
                rule: f.rule,
                count: 1,
                subjects: vec![f.subject.clone()],
                message: f.message.clone(),
                fix: f.fix.clone(),
            }),
        }
    }
    let groups: Vec<Group> = groups
        .into_iter()
        .map(|(name, checks)| Group { name, checks })
        .collect();
    let backups = {
        let (spec, store) = (s.spec.clone(), s.store.clone());
        tokio::task::spawn_blocking(move || crate::backups::backup_views(&spec, &store))
            .await
            .unwrap_or_default()
    };
    let backup_rows: Vec<BackupRow> = backups
        .into_iter()
        .map(|b| BackupRow {
            last_run: b
                .last_run
                .map(|t| ago(t, now))
                .unwrap_or_else(|| "never".into()),
            added: b
                .last_added
                .map(|a| format!("{:.1} MiB", a as f64 / 1048576.0))
                .unwrap_or_default(),
            seconds: b
                .last_seconds
                .map(|x| format!("{x:.1} s"))
                .unwrap_or_default(),
            drill: match (b.last_drill, b.drill_failed) {
                (_, true) => "failed".into(),
                (Some(t), false) => format!(
                    "{} ({})",
                    ago(t, now),
                    b.last_drill_seconds
                        .map(|x| format!("restored in {x:.1} s"))
                        .unwrap_or_default()
                ),
                (None, false) => "never".into(),
            },
            next: b
                .next_run
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| ahead(t.timestamp_millis(), now))
                .unwrap_or_else(|| "by hand".into()),
            next_at: b.next_run.clone().unwrap_or_default(),
            name: b.name,
            source: b.source,
            state: b.state,
            snapshot: b.last_snapshot.unwrap_or_default(),
            error: b.last_error.unwrap_or_default(),
        })
        .collect();
    let (services, deploys) = {
        let (spec, store) = (s.spec.clone(), s.store.clone());
        tokio::task::spawn_blocking(move || {
            (
                steward_fleet::status::report(&spec, &*store),
                store.fleet_deploys(None, 10).unwrap_or_default(),
            )
        })
        .await
        .unwrap_or_default()
    };
    // Each proxied service's traffic from the series store, with its scale
    // and deploy events of the last hour marked on the chart.
    let signals: BTreeMap<String, (crate::charts::Signals, String)> = {
        let (spec, store, head) = (s.spec.clone(), s.store.clone(), s.series.clone());
        tokio::task::spawn_blocking(move || {
            use steward_state::{EventKind, EventLog, EventQuery, Meta};
            let mut out = BTreeMap::new();
            for svc in spec.services.values() {
                let marks: Vec<(i64, String)> = store
                    .events(&EventQuery {
                        kinds: vec![
                            EventKind::FleetScaled,
                            EventKind::DeployStarted,
                            EventKind::DeploySucceeded,
                            EventKind::DeployFailed,
                            EventKind::DeployReverted,
                        ],
                        subject: Some(svc.name.clone()),
                        limit: 50,
                        ..EventQuery::default()
                    })
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| (e.event.ts, e.event.message))
                    .collect();
                let autoscale = store
                    .meta(&steward_metrics::controller::decision_key(&svc.name))
                    .ok()
                    .flatten()
                    .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
                    .map(|d| {
                        format!(
                            "{} → {} ({})",
                            d["current"],
                            d["recommendation"],
                            d["reason"]
                                .as_str()
                                .unwrap_or("")
                                .lines()
                                .next()
                                .unwrap_or("")
                        )
                    })
                    .unwrap_or_default();
                let sig = svc.listen.is_some().then(|| {
                    let h = head.lock().unwrap_or_else(|e| e.into_inner());
                    crate::charts::signals(&h, &svc.name, now, &marks)
                });
                if let Some(sig) = sig {
                    out.insert(svc.name.clone(), (sig, autoscale));
                } else if !autoscale.is_empty() {
                    out.insert(
                        svc.name.clone(),
                        (crate::charts::Signals::default(), autoscale),
                    );
                }
            }
            out
        })
        .await
        .unwrap_or_default()
    };
    let mut signals = signals;
    let short = steward_fleet::requests::short;
    let service_rows: Vec<ServiceRow> = services
        .into_iter()
        .map(|x| ServiceRow {
            version: x
                .target
                .as_deref()
                .map(short)
                .unwrap_or_else(|| "not deployed".into()),
            ready: x.ready,
            desired: x.desired,
            listen: x.listen.unwrap_or_default(),
            instances: x
                .instances
                .iter()
                .map(|i| (i.id.clone(), i.state.to_string()))
                .collect(),
            deploy: x
                .deploy
                .as_ref()
                .map(|d| {
                    format!(
                        "{} #{} by {} {}",
                        d.kind,
                        d.id,
                        d.who,
                        ago(d.requested_ms, now)
                    )
                })
                .unwrap_or_default(),
            deploy_state: x
                .deploy
                .as_ref()
                .map(|d| d.result.clone().unwrap_or_else(|| "running".into()))
                .unwrap_or_default(),
            signals: signals
                .get_mut(&x.service)
                .map(|(sig, _)| std::mem::take(sig))
                .filter(|sig| !sig.rate.is_empty()),
            autoscale: signals
                .get(&x.service)
                .map(|(_, a)| a.clone())
                .unwrap_or_default(),
            name: x.service,
        })
        .collect();
    let deploy_lines: Vec<DeployLine> = deploys
        .into_iter()
        .map(|d| DeployLine {
            id: d.id,
            service: d.service,
            kind: d.kind,
            to: short(&d.to_digest),
            who: d.who,
            when: ago(d.requested_ms, now),
            result: d.result.unwrap_or_else(|| "running".into()),
            reason: d.reason.unwrap_or_default(),
        })
        .collect();
    let tmpl = env()
        .get_template("status.html")
        .expect("template registered");
    match tmpl.render(context! {
        app => s.spec.settings.name.clone(),
        now => rfc3339(now),
        overall,
        counts,
        total,
        groups => minijinja::Value::from(minijinja::value::Serde(&groups)),
        gaps => minijinja::Value::from(minijinja::value::Serde(&gaps)),
        backups => minijinja::Value::from(minijinja::value::Serde(&backup_rows)),
        services => minijinja::Value::from(minijinja::value::Serde(&service_rows)),
        deploys => minijinja::Value::from(minijinja::value::Serde(&deploy_lines)),
        version => env!("CARGO_PKG_VERSION"),
        user => who.as_ref().map(|w| w.name.clone()),
        csrf => who.as_ref().and_then(|w| w.csrf.clone()),
    }) {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering status page: {e}"),
        )
            .into_response(),
    }
}

/// `/query?expr=…&range=…`: a PromQL expression over the stored series,
/// as a chart and a table of the latest values.
pub(crate) async fn query_page(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
) -> Response {
    let expr = q.get("expr").cloned().unwrap_or_default();
    let range = q.get("range").cloned().unwrap_or_else(|| "1h".into());
    let range_ms = match humantime_ms(&range) {
        Some(ms) if ms > 0 && ms <= 31 * 86_400_000 => ms,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                format!("range `{range}` is not a duration such as 15m, 1h or 2d"),
            )
                .into_response();
        }
    };
    let now = now_ms();
    let answer = if expr.trim().is_empty() {
        crate::charts::Answer::default()
    } else {
        let (head, e) = (s.series.clone(), expr.clone());
        tokio::task::spawn_blocking(move || {
            let h = head.lock().unwrap_or_else(|e| e.into_inner());
            crate::charts::answer(&h, &e, range_ms, now)
        })
        .await
        .unwrap_or_default()
    };
    let tmpl = env()
        .get_template("query.html")
        .expect("template registered");
    match tmpl.render(context! {
        app => s.spec.settings.name.clone(),
        expr,
        range,
        ranges => ["15m", "1h", "6h", "1d", "7d"],
        answer => minijinja::Value::from(minijinja::value::Serde(&answer)),
        width => crate::charts::WIDTH,
        height => crate::charts::HEIGHT,
        version => env!("CARGO_PKG_VERSION"),
    }) {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering query page: {e}"),
        )
            .into_response(),
    }
}

/// `15m`, `1h`, `2d`, `30s` in milliseconds.
fn humantime_ms(s: &str) -> Option<i64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok()?;
    let per = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(per)
}

pub(crate) async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/status.css"),
    )
}

pub(crate) async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/status.js"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(ts: i64, avg_ms: f64) -> Bucket {
        Bucket {
            ts,
            n: 1,
            pass: 1,
            warn: 0,
            fail: 0,
            avg_ms,
            max_ms: avg_ms,
        }
    }

    #[test]
    fn the_axis_top_is_a_round_number_at_or_above_the_data() {
        assert_eq!(nice_ceiling(0.3), 0.5);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(nice_ceiling(48.0), 50.0);
        assert_eq!(nice_ceiling(51.0), 100.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }

    #[test]
    fn a_steady_latency_is_drawn_at_its_level_not_at_the_top() {
        // 12 ms all day on an axis to 20 ms: the line sits 60 % up the box.
        let buckets: Vec<Bucket> = (0..24).map(|h| bucket(h * 3_600_000, 12.0)).collect();
        let (points, top) = sparkline(&buckets, 0, 86_400_000);
        assert_eq!(top, 20.0);
        for p in points.split(' ') {
            let y: f64 = p.split(',').nth(1).unwrap().parse().unwrap();
            assert!((y - (39.0 - 12.0 / 20.0 * 38.0)).abs() < 0.06, "{p}");
        }
        let (one, _) = sparkline(&buckets[..1], 0, 86_400_000);
        assert_eq!(one, "0,16.2 240,16.2");
    }

    #[test]
    fn the_next_run_reads_like_the_rest_of_the_page() {
        assert_eq!(ahead(90_000, 0), "in 1 min");
        assert_eq!(ahead(5_000, 0), "in 5 s");
        assert_eq!(ahead(7_200_000, 0), "in 2 h");
        assert_eq!(ahead(0, 10), "in 0 s");
    }
}
