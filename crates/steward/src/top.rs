//! `steward top`: every service at a glance, live — requests per second,
//! errors, latency percentiles (from the series `serve` stores, through its
//! Prometheus query API), instances ready of desired and the autoscaler's
//! latest decision (from the state database).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use steward_state::{Meta, now_ms};

use crate::exit;

/// One service's line.
struct Line {
    service: String,
    instances: String,
    rate: String,
    errors: String,
    p50: String,
    p95: String,
    p99: String,
    autoscaler: String,
}

const HEADER: [&str; 8] = [
    "SERVICE",
    "READY",
    "REQ/S",
    "ERRORS",
    "P50",
    "P95",
    "P99",
    "AUTOSCALER",
];

/// What a look gathers: the lines, and why traffic is missing if it is.
struct Look {
    lines: Vec<Line>,
    problem: Option<String>,
}

/// `serve`'s answer to an instant query, by `service` label.
async fn by_service(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    expr: &str,
) -> Result<BTreeMap<String, f64>, String> {
    let mut req = client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", expr)]);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| {
        format!(
            "`steward serve` does not answer at {base}: {}",
            steward_net::error_chain(&e.without_url())
        )
    })?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.map_err(|e| format!("{base}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{base} answered {status}: {}",
            v["error"].as_str().unwrap_or("")
        ));
    }
    Ok(v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let service = s["metric"]["service"].as_str()?.to_string();
            let value: f64 = s["value"][1].as_str()?.parse().ok()?;
            value.is_finite().then_some((service, value))
        })
        .collect())
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

async fn look(
    spec: &steward_spec::Spec,
    store: &steward_state::Store,
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
) -> Look {
    let q = |e: &'static str| by_service(client, base, token, e);
    let traffic = async {
        Ok::<_, String>((
            q("sum by (service) (rate(steward_proxy_requests_total[1m]))").await?,
            q("sum by (service) (rate(steward_proxy_requests_total{code=\"5xx\"}[5m])) / sum by (service) (rate(steward_proxy_requests_total[5m]))").await?,
            q("histogram_quantile(0.5, sum by (service, le) (rate(steward_proxy_request_duration_seconds_bucket[5m])))").await?,
            q("histogram_quantile(0.95, sum by (service, le) (rate(steward_proxy_request_duration_seconds_bucket[5m])))").await?,
            q("histogram_quantile(0.99, sum by (service, le) (rate(steward_proxy_request_duration_seconds_bucket[5m])))").await?,
        ))
    }
    .await;
    let (problem, (rate, errors, p50, p95, p99)) = match traffic {
        Ok(t) => (None, t),
        Err(e) => (Some(e), Default::default()),
    };
    let ms = |m: &BTreeMap<String, f64>, s: &str| {
        m.get(s)
            .map(|v| format!("{} ms", num(v * 1000.0)))
            .unwrap_or_else(|| "–".into())
    };
    let lines = steward_fleet::status::report(spec, store)
        .into_iter()
        .map(|s| {
            let name = s.service.clone();
            let autoscaler = store
                .meta(&steward_metrics::controller::decision_key(&name))
                .ok()
                .flatten()
                .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
                .map(|d| {
                    let ago = (now_ms() - d["at_ms"].as_i64().unwrap_or(0)).max(0) / 1000;
                    let why = d["reason"]
                        .as_str()
                        .unwrap_or("")
                        .lines()
                        .last()
                        .unwrap_or("")
                        .to_string();
                    format!(
                        "{} → {} ({ago} s ago): {why}",
                        d["current"], d["recommendation"]
                    )
                })
                .unwrap_or_default();
            Line {
                instances: format!("{}/{}", s.ready, s.desired),
                rate: rate
                    .get(&name)
                    .map(|r| format!("{}/s", num(*r)))
                    .unwrap_or_else(|| "–".into()),
                errors: match (errors.get(&name), rate.get(&name)) {
                    (Some(e), _) => format!("{}%", num(e * 100.0)),
                    (None, Some(_)) => "0%".into(),
                    (None, None) => "–".into(),
                },
                p50: ms(&p50, &name),
                p95: ms(&p95, &name),
                p99: ms(&p99, &name),
                autoscaler,
                service: name,
            }
        })
        .collect();
    Look { lines, problem }
}

fn cells(l: &Line) -> Vec<String> {
    vec![
        l.service.clone(),
        l.instances.clone(),
        l.rate.clone(),
        l.errors.clone(),
        l.p50.clone(),
        l.p95.clone(),
        l.p99.clone(),
        l.autoscaler.clone(),
    ]
}

/// `steward top [--once] [--interval D] [--url URL]`.
pub(crate) fn top(spec_path: &Path, once: bool, interval: Duration, url: Option<String>) -> u8 {
    let spec = match crate::load_spec(spec_path) {
        Ok(s) => s,
        Err(c) => return c,
    };
    if spec.services.is_empty() {
        eprintln!("error: the spec has no [service.*]: nothing to show");
        return exit::USAGE;
    }
    let store = match crate::fleet::open(&spec) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let scheme = if spec.settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let base = url
        .unwrap_or_else(|| format!("{scheme}://{}", spec.settings.listen))
        .trim_end_matches('/')
        .to_string();
    let token = std::env::var("STEWARD_TOKEN").ok();
    let client = match steward_net::http(steward_net::HttpOptions {
        timeout: Some(Duration::from_secs(5)),
        connect_timeout: Some(Duration::from_secs(2)),
        no_proxy: true,
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILED;
        }
    };
    let gather = || rt.block_on(look(&spec, &store, &client, &base, token.as_deref()));
    if once {
        let l = gather();
        let rows: Vec<Vec<String>> = l.lines.iter().map(cells).collect();
        print!("{}", crate::table::render(&HEADER, &rows));
        if let Some(p) = l.problem {
            eprintln!("warning: no traffic figures: {p}");
        }
        return exit::OK;
    }
    match live(&spec.settings.name, interval, gather) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: terminal: {e}");
            exit::FAILED
        }
    }
}

/// The live view: redrawn every `interval` until `q`, Esc or Ctrl-C.
fn live(app: &str, interval: Duration, mut gather: impl FnMut() -> Look) -> std::io::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::text::Line as TextLine;
    use ratatui::widgets::{Block, Paragraph, Row, Table};

    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        loop {
            let look = gather();
            terminal.draw(|f| {
                let [title, body, foot] = Layout::vertical([
                    Constraint::Length(1),
                    Constraint::Min(3),
                    Constraint::Length(1),
                ])
                .areas(f.area());
                f.render_widget(
                    Paragraph::new(TextLine::from(format!(
                        "{app} — steward top, every {} s",
                        interval.as_secs_f64()
                    )))
                    .style(Style::default().add_modifier(Modifier::BOLD)),
                    title,
                );
                let rows: Vec<Row> = look.lines.iter().map(|l| Row::new(cells(l))).collect();
                let widths = [
                    Constraint::Length(14),
                    Constraint::Length(7),
                    Constraint::Length(10),
                    Constraint::Length(8),
                    Constraint::Length(10),
                    Constraint::Length(10),
                    Constraint::Length(10),
                    Constraint::Min(20),
                ];
                f.render_widget(
                    Table::new(rows, widths)
                        .header(
                            Row::new(HEADER.to_vec())
                                .style(Style::default().add_modifier(Modifier::BOLD)),
                        )
                        .block(Block::bordered()),
                    body,
                );
                let footer = match &look.problem {
                    Some(p) => format!("no traffic figures: {p} · q quits"),
                    None => "q quits".into(),
                };
                f.render_widget(Paragraph::new(footer), foot);
            })?;
            let until = std::time::Instant::now() + interval;
            while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                if event::poll(left)?
                    && let Event::Key(k) = event::read()?
                    && k.kind == KeyEventKind::Press
                    && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL)))
                {
                    return Ok(());
                }
            }
        }
    })();
    ratatui::restore();
    result
}
