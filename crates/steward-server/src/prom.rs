//! The parts of Prometheus's HTTP API steward answers so far, with its JSON
//! and error shapes (`{"status":"success","data":…}`;
//! `{"status":"error","errorType":"bad_data","error":…}` with 400), so tools
//! that speak to Prometheus can list what steward stores:
//! `/api/v1/labels`, `/api/v1/label/NAME/values`, `/api/v1/series`.

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
async fn select(s: &AppState, p: Params) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let head = s.series.clone();
    tokio::task::spawn_blocking(move || {
        let h = head.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = std::collections::BTreeSet::new();
        for m in &p.matches {
            for (labels, _) in h.select(m, p.start, p.end) {
                seen.insert(labels);
            }
        }
        seen.into_iter()
            .map(|labels| {
                labels
                    .iter()
                    .map(|(n, v)| (n.to_string(), serde_json::Value::from(v.to_string())))
                    .collect()
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

async fn series(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let p = match params(q) {
        Ok(p) => p,
        Err(e) => return bad_data(e),
    };
    if p.matches.is_empty() {
        return bad_data("no match[] parameter provided");
    }
    success(serde_json::Value::from(select(&s, p).await))
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
        select(&s, p)
            .await
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
        select(&s, p)
            .await
            .into_iter()
            .filter_map(|m| m.get(&name).and_then(|v| v.as_str().map(String::from)))
            .collect()
    };
    success(serde_json::Value::from(
        values.into_iter().collect::<Vec<_>>(),
    ))
}
