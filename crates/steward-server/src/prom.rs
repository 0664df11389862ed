//! The parts of Prometheus's HTTP API steward answers so far, with its JSON
//! and error shapes (`{"status":"success","data":…}`;
//! `{"status":"error","errorType":"bad_data","error":…}` with 400), so tools
//! that speak to Prometheus can list what steward stores:
//! `/api/v1/query`, `/api/v1/query_range`, `/api/v1/labels`,
//! `/api/v1/label/NAME/values`, `/api/v1/series` (GET, or POST with a form
//! body, as Grafana sends).

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get};
use steward_metrics::tsdb::head::Matcher;

use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/labels", get(labels).post(labels))
        .route("/label/{name}/values", get(label_values))
        .route("/series", get(series).post(series))
        .route("/query", get(query).post(query))
        .route("/query_range", get(query_range).post(query_range))
}

/// A float as Prometheus writes one in JSON: shortest form, `+Inf`, `-Inf`, `NaN`.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn point(t_ms: i64, v: f64) -> serde_json::Value {
    serde_json::json!([t_ms as f64 / 1000.0, float(v)])
}

fn metric(labels: &steward_metrics::promql::eval::Labels) -> serde_json::Value {
    serde_json::Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(&**v)))
            .collect(),
    )
}

/// A duration as Prometheus takes one: float seconds or `15s`, `1m`, `2h30m`…
fn duration_ms(v: &str) -> Result<i64, String> {
    if let Ok(s) = v.parse::<f64>() {
        return Ok((s * 1000.0) as i64);
    }
    let mut total = 0i64;
    let mut num = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            1
        } else {
            match c {
                's' => 1000,
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                'w' => 604_800_000,
                'y' => 31_536_000_000,
                _ => return Err(format!("cannot parse {v:?} to a valid duration")),
            }
        };
        let n: i64 = num
            .parse()
            .map_err(|_| format!("cannot parse {v:?} to a valid duration"))?;
        total += n * unit;
        num.clear();
    }
    if !num.is_empty() || total == 0 && v != "0s" {
        return Err(format!("cannot parse {v:?} to a valid duration"));
    }
    Ok(total)
}

/// The parameters of a query, from the URL and a form body alike.
fn form(raw: Option<String>, body: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    for src in [raw.unwrap_or_default().as_str(), body] {
        for (k, v) in url::form_urlencoded::parse(src.as_bytes()) {
            out.insert(k.into_owned(), v.into_owned());
        }
    }
    out
}

fn query_error(e: steward_metrics::promql::eval::QueryError) -> Response {
    use steward_metrics::promql::eval::QueryError;
    match e {
        QueryError::Parse(m) => bad_data(m),
        QueryError::Eval(m) => execution(m),
    }
}

fn execution(m: String) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(serde_json::json!({"status": "error", "errorType": "execution", "error": m})),
    )
        .into_response()
}

async fn query(State(s): State<AppState>, RawQuery(q): RawQuery, body: String) -> Response {
    use steward_metrics::promql::eval::{Value, instant};
    let p = form(q, &body);
    let Some(expr) = p.get("query").cloned() else {
        return bad_data("invalid parameter \"query\": missing");
    };
    let t = match p.get("time") {
        Some(v) => match time(v) {
            Ok(t) => t,
            Err(e) => return bad_data(format!("invalid parameter \"time\": {e}")),
        },
        None => steward_state::now_ms(),
    };
    let head = s.series.clone();
    let result = tokio::task::spawn_blocking(move || {
        let h = head.lock().unwrap_or_else(|e| e.into_inner());
        instant(&h, &expr, t)
    })
    .await;
    let value = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return query_error(e),
        Err(e) => return bad_data(e),
    };
    let data = match value {
        Value::Scalar(v) => serde_json::json!({"resultType": "scalar", "result": point(t, v)}),
        Value::String(v) => {
            serde_json::json!({"resultType": "string", "result": [t as f64 / 1000.0, v]})
        }
        Value::Vector(v) => serde_json::json!({
            "resultType": "vector",
            "result": v.iter().map(|s| serde_json::json!({"metric": metric(&s.labels), "value": point(t, s.value)})).collect::<Vec<_>>(),
        }),
        Value::Matrix(m) => serde_json::json!({
            "resultType": "matrix",
            "result": m.iter().map(|s| serde_json::json!({
                "metric": metric(&s.labels),
                "values": s.points.iter().map(|(t, v)| point(*t, *v)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
    };
    success(data)
}

async fn query_range(State(s): State<AppState>, RawQuery(q): RawQuery, body: String) -> Response {
    let p = form(q, &body);
    let Some(expr) = p.get("query").cloned() else {
        return bad_data("invalid parameter \"query\": missing");
    };
    let param = |name: &str, read: fn(&str) -> Result<i64, String>| -> Result<i64, String> {
        let v = p
            .get(name)
            .ok_or_else(|| format!("invalid parameter \"{name}\": missing"))?;
        read(v).map_err(|e| format!("invalid parameter \"{name}\": {e}"))
    };
    let parsed = param("start", time).and_then(|start| {
        let end = param("end", time)?;
        let step = param("step", duration_ms)?;
        Ok((start, end, step))
    });
    let (start, end, step) = match parsed {
        Ok(v) => v,
        Err(e) => return bad_data(e),
    };
    let head = s.series.clone();
    let result = tokio::task::spawn_blocking(move || {
        let h = head.lock().unwrap_or_else(|e| e.into_inner());
        steward_metrics::promql::eval::range(&h, &expr, start, end, step)
    })
    .await;
    match result {
        Ok(Ok(series)) => success(serde_json::json!({
            "resultType": "matrix",
            "result": series.iter().map(|s| serde_json::json!({
                "metric": metric(&s.labels),
                "values": s.points.iter().map(|(t, v)| point(*t, *v)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })),
        Ok(Err(e)) => query_error(e),
        Err(e) => bad_data(e),
    }
}

fn success(data: serde_json::Value) -> Response {
    Json(serde_json::json!({"status": "success", "data": data})).into_response()
}

fn bad_data(error: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"status": "error", "errorType": "bad_data", "error": error.to_string()})),
    )
        .into_response()
}

/// Query parameters, `match[]` repeated.
struct Params {
    matches: Vec<Vec<Matcher>>,
    start: i64,
    end: i64,
}

/// A time as Prometheus takes one: Unix seconds (fractional) or RFC 3339.
fn time(v: &str) -> Result<i64, String> {
    if let Ok(s) = v.parse::<f64>() {
        return Ok((s * 1000.0) as i64);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("cannot parse {v:?} to a valid timestamp"))
}

fn params(raw: Option<String>) -> Result<Params, String> {
    let mut p = Params {
        matches: Vec::new(),
        start: i64::MIN,
        end: i64::MAX,
    };
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "match[]" => p.matches.push(steward_metrics::promql::selector(&v)?),
            "start" => p.start = time(&v)?,
            "end" => p.end = time(&v)?,
            _ => {}
        }
    }
    Ok(p)
}

/// Every series matching any `match[]` in `[start, end]`, as label maps.
async fn select(
    s: &AppState,
    p: Params,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, Response> {
    let head = s.series.clone();
    tokio::task::spawn_blocking(move || {
        let h = head.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = std::collections::BTreeSet::new();
        for m in &p.matches {
            for (labels, _) in h.select(m, p.start, p.end).map_err(|e| e.to_string())? {
                seen.insert(labels);
            }
        }
        Ok(seen
            .into_iter()
            .map(|labels| {
                labels
                    .iter()
                    .map(|(n, v)| (n.to_string(), serde_json::Value::from(v.to_string())))
                    .collect()
            })
            .collect())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
    .map_err(execution)
}

async fn series(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let p = match params(q) {
        Ok(p) => p,
        Err(e) => return bad_data(e),
    };
    if p.matches.is_empty() {
        return bad_data("no match[] parameter provided");
    }
    match select(&s, p).await {
        Ok(v) => success(serde_json::Value::from(v)),
        Err(r) => r,
    }
}

async fn labels(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let p = match params(q) {
        Ok(p) => p,
        Err(e) => return bad_data(e),
    };
    let names: std::collections::BTreeSet<String> = if p.matches.is_empty() {
        let head = s.series.clone();
        tokio::task::spawn_blocking(move || {
            let h = head.lock().unwrap_or_else(|e| e.into_inner());
            h.label_names().iter().map(|n| n.to_string()).collect()
        })
        .await
        .unwrap_or_default()
    } else {
        let found = match select(&s, p).await {
            Ok(found) => found,
            Err(r) => return r,
        };
        found
            .into_iter()
            .flat_map(|m| m.into_iter().map(|(k, _)| k))
            .collect()
    };
    success(serde_json::Value::from(
        names.into_iter().collect::<Vec<_>>(),
    ))
}

async fn label_values(
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let p = match params(q) {
        Ok(p) => p,
        Err(e) => return bad_data(e),
    };
    let values: std::collections::BTreeSet<String> = if p.matches.is_empty() {
        let h = s.series.lock().unwrap_or_else(|e| e.into_inner());
        h.label_values(&name)
            .iter()
            .map(|v| v.to_string())
            .collect()
    } else {
        let found = match select(&s, p).await {
            Ok(found) => found,
            Err(r) => return r,
        };
        found
            .into_iter()
            .filter_map(|m| m.get(&name).and_then(|v| v.as_str().map(String::from)))
            .collect()
    };
    success(serde_json::Value::from(
        values.into_iter().collect::<Vec<_>>(),
    ))
}
