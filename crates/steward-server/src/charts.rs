//! Charts of stored series for the status page and the query page, drawn on
//! the server as SVG (readable without JavaScript, like the rest of the page).

use std::collections::BTreeMap;

use serde::Serialize;
use steward_metrics::promql::eval::{self, Value};
use steward_metrics::tsdb::head::Head;

/// Chart size in SVG units.
pub(crate) const WIDTH: f64 = 480.0;
pub(crate) const HEIGHT: f64 = 120.0;

/// One line of a chart: its label set as text and its polyline points.
#[derive(Debug, Serialize)]
pub(crate) struct Line {
    pub(crate) name: String,
    pub(crate) points: String,
    pub(crate) last: String,
}

/// A chart: its lines, the largest value (the top of the scale), and marks
/// (x positions with a title: scale and deploy events).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Chart {
    pub(crate) lines: Vec<Line>,
    pub(crate) max: String,
    pub(crate) marks: Vec<(String, String)>,
}

/// A number for people: at most four significant digits, no exponent for
/// everyday sizes.
pub(crate) fn human(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn labels_text(labels: &eval::Labels) -> String {
    let name = labels
        .iter()
        .find(|(n, _)| &**n == "__name__")
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    let rest: Vec<String> = labels
        .iter()
        .filter(|(n, _)| &**n != "__name__")
        .map(|(n, v)| format!("{n}=\"{v}\""))
        .collect();
    if rest.is_empty() {
        if name.is_empty() { "{}".into() } else { name }
    } else {
        format!("{name}{{{}}}", rest.join(", "))
    }
}

/// Draws a range query's series from `start` to `end` (ms), at most
/// `max_lines` of them; `marks` are (ms, title) drawn as ticks.
pub(crate) fn draw(
    series: &[eval::Series],
    start: i64,
    end: i64,
    max_lines: usize,
    marks: &[(i64, String)],
) -> Chart {
    let span = (end - start).max(1) as f64;
    let x = |t: i64| ((t - start) as f64 / span * WIDTH).clamp(0.0, WIDTH);
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max } else { 1.0 };
    let lines = series
        .iter()
        .take(max_lines)
        .map(|s| {
            let points = s
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(t, v)| {
                    let y = HEIGHT - 2.0 - (v / top).clamp(0.0, 1.0) * (HEIGHT - 4.0);
                    format!("{:.1},{y:.1}", x(t))
                })
                .collect::<Vec<_>>()
                .join(" ");
            Line {
                name: labels_text(&s.labels),
                points,
                last: s.points.last().map(|p| human(p.1)).unwrap_or_default(),
            }
        })
        .collect();
    Chart {
        lines,
        max: human(max),
        marks: marks
            .iter()
            .filter(|(t, _)| *t >= start && *t <= end)
            .map(|(t, title)| (format!("{:.1}", x(*t)), title.clone()))
            .collect(),
    }
}

/// What the status page shows of a service's traffic, from the proxy's
/// series: requests per second, the share of 5xx, latency percentiles and
/// an hour of request rate.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Signals {
    pub(crate) rate: String,
    pub(crate) errors: String,
    pub(crate) p50: String,
    pub(crate) p95: String,
    pub(crate) p99: String,
    pub(crate) chart: Chart,
}

fn scalar(head: &Head, expr: &str, now: i64) -> Option<f64> {
    match eval::instant(head, expr, now).ok()? {
        Value::Scalar(v) => Some(v),
        Value::Vector(v) => v.first().map(|s| s.value),
        _ => None,
    }
    .filter(|v| v.is_finite())
}

fn ms(v: Option<f64>) -> String {
    v.map(|s| format!("{} ms", human(s * 1000.0)))
        .unwrap_or_else(|| "–".into())
}

/// The signals of `service` at `now` (ms); `marks` are its scale and deploy
/// events of the last hour.
pub(crate) fn signals(head: &Head, service: &str, now: i64, marks: &[(i64, String)]) -> Signals {
    let sel = format!(
        "service=\"{}\"",
        service.replace('\\', "\\\\").replace('"', "\\\"")
    );
    let rate = scalar(
        head,
        &format!("sum(rate(steward_proxy_requests_total{{{sel}}}[1m]))"),
        now,
    );
    let errors = scalar(
        head,
        &format!(
            "sum(rate(steward_proxy_requests_total{{{sel},code=\"5xx\"}}[5m])) / sum(rate(steward_proxy_requests_total{{{sel}}}[5m]))"
        ),
        now,
    );
    let q = |p: f64| {
        scalar(
            head,
            &format!(
                "histogram_quantile({p}, sum by (le) (rate(steward_proxy_request_duration_seconds_bucket{{{sel}}}[5m])))"
            ),
            now,
        )
    };
    let hour = 3_600_000;
    let chart = eval::range(
        head,
        &format!("sum(rate(steward_proxy_requests_total{{{sel}}}[1m]))"),
        now - hour,
        now,
        30_000,
    )
    .map(|s| draw(&s, now - hour, now, 1, marks))
    .unwrap_or_default();
    Signals {
        rate: rate
            .map(|r| format!("{}/s", human(r)))
            .unwrap_or_else(|| "–".into()),
        errors: match errors {
            Some(e) => format!("{}%", human(e * 100.0)),
            None if rate.is_some() => "0%".into(),
            None => "–".into(),
        },
        p50: ms(q(0.5)),
        p95: ms(q(0.95)),
        p99: ms(q(0.99)),
        chart,
    }
}

/// The query page's answer: a chart over `range_ms` up to `now` and the
/// latest value of each series (or the error).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Answer {
    pub(crate) error: String,
    pub(crate) chart: Chart,
    pub(crate) rows: Vec<(String, String)>,
    pub(crate) series: usize,
}

/// Evaluates `expr` over the last `range_ms` (about 240 steps).
pub(crate) fn answer(head: &Head, expr: &str, range_ms: i64, now: i64) -> Answer {
    let step = (range_ms / 240).max(1_000);
    match eval::range(head, expr, now - range_ms, now, step) {
        Err(e) => Answer {
            error: e.to_string(),
            ..Answer::default()
        },
        Ok(series) => {
            let mut rows: BTreeMap<String, String> = BTreeMap::new();
            for s in &series {
                if let Some(p) = s.points.last() {
                    rows.insert(labels_text(&s.labels), human(p.1));
                }
            }
            Answer {
                error: String::new(),
                chart: draw(&series, now - range_ms, now, 20, &[]),
                series: series.len(),
                rows: rows.into_iter().collect(),
            }
        }
    }
}
