//! `/api/v1`: JSON for machines. Wire types live here, apart from spec types.

use std::collections::BTreeMap;
use steward_fleet::requests::DeployKind;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use steward_spec::Check;

use crate::AppState;
use steward_state::{
    AlertLog, Bucket, CheckHistory, CheckStateRow, Delivery, Event, EventLog, EventQuery,
    FleetState, ResultRow, Uptime, now_ms,
};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/checks", get(list_checks))
        .route("/checks/{name}", get(get_check))
        .route("/checks/{name}/history", get(history))
        .route("/checks/{name}/series", get(series))
        .route("/events", get(events))
        .route("/deliveries", get(deliveries))
        .route("/doctor", get(doctor))
        .route("/backups", get(backups))
        .route("/services", get(services))
        .route("/services/{name}/scale", axum::routing::post(scale))
        .route("/services/{name}/deploy", axum::routing::post(deploy))
        .route("/services/{name}/rollback", axum::routing::post(rollback))
        .route("/deploys", get(deploys))
}

/// A JSON error body with a status code.
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, steward_state::StateError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(internal)?
        .map_err(internal)
}

/// A check as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckView {
    /// Name.
    pub name: String,
    /// Kind (`http`, `postgres`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Status page group.
    pub group: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Seconds between runs.
    pub interval_s: f64,
    /// up, degraded, down or unknown.
    pub health: String,
    /// Since (RFC 3339).
    pub since: String,
    /// Latest result.
    pub last: Option<ResultView>,
    /// Uptime ratios.
    pub uptime: Uptime,
    /// Conditions as written.
    pub conditions: Vec<String>,
}

/// One result as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResultView {
    /// When (RFC 3339).
    pub time: String,
    /// pass, warn or fail.
    pub status: String,
    /// Latency in ms.
    pub duration_ms: f64,
    /// Why not pass.
    pub error: Option<String>,
    /// Observed values.
    pub observed: Option<Box<serde_json::value::RawValue>>,
}

pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn result_view(r: &ResultRow) -> ResultView {
    ResultView {
        time: rfc3339(r.ts),
        status: r.status.as_str().into(),
        duration_ms: r.duration_us as f64 / 1000.0,
        error: r.error.clone(),
        observed: r.observed.clone(),
    }
}

fn check_view(
    c: &Check,
    st: Option<&CheckStateRow>,
    uptime: &BTreeMap<String, Uptime>,
) -> CheckView {
    CheckView {
        name: c.name.clone(),
        kind: c.kind().as_str().into(),
        group: c.group.clone(),
        description: c.description.clone(),
        interval_s: c.interval.secs_f64(),
        health: st.map(|s| s.health.as_str()).unwrap_or("unknown").into(),
        since: st.map(|s| rfc3339(s.since)).unwrap_or_default(),
        last: st.and_then(|s| s.last.as_ref()).map(result_view),
        uptime: uptime.get(&c.name).copied().unwrap_or_default(),
        conditions: c.conditions.iter().map(|c| c.text.clone()).collect(),
    }
}

pub(crate) fn check_views(s: &AppState, uptime: &BTreeMap<String, Uptime>) -> Vec<CheckView> {
    let board = s.board.read().unwrap_or_else(|e| e.into_inner());
    s.spec
        .checks
        .values()
        .map(|c| check_view(c, board.get(&c.name), uptime))
        .collect()
}

async fn list_checks(State(s): State<AppState>) -> Result<Json<Vec<CheckView>>, ApiError> {
    let sums = s.summaries.get(&s.store).await.map_err(internal)?;
    Ok(Json(check_views(&s, &sums.uptime)))
}

async fn get_check(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<CheckView>, ApiError> {
    let check = s
        .spec
        .checks
        .get(&name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no check named `{name}`")))?;
    let sums = s.summaries.get(&s.store).await.map_err(internal)?;
    let board = s.board.read().unwrap_or_else(|e| e.into_inner());
    Ok(Json(check_view(check, board.get(&name), &sums.uptime)))
}

fn known(s: &AppState, name: &str) -> Result<(), ApiError> {
    if s.spec.checks.contains_key(name) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no check named `{name}`"),
        ))
    }
}

/// A time: Unix milliseconds or RFC 3339.
fn parse_time(v: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("`{v}` is neither Unix milliseconds nor an RFC 3339 time"),
            )
        })
}

#[derive(Debug, Deserialize)]
struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
    resolution: Option<String>,
}

impl RangeQuery {
    /// `[from, to)` in Unix ms; without `from`, the last `default_span` ms.
    fn range(&self, default_span: i64) -> Result<(i64, i64), ApiError> {
        let now = now_ms();
        let from = self
            .from
            .as_deref()
            .map(parse_time)
            .transpose()?
            .unwrap_or(now - default_span);
        let to = self
            .to
            .as_deref()
            .map(parse_time)
            .transpose()?
            .unwrap_or(now + 1);
        Ok((from, to))
    }
}

#[derive(Debug, Serialize)]
struct HistoryPage {
    results: Vec<ResultView>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    next_before: Option<i64>,
}

async fn history(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    known(&s, &name)?;
    let (from, mut to) = q.range(3_600_000)?;
    if let Some(b) = q.before.as_deref().map(parse_time).transpose()? {
        to = to.min(b);
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let store = s.store.clone();
    let rows = blocking(move || store.results(&name, from, to, limit)).await?;
    let next_before = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.ts))
        .flatten();
    Ok(Json(HistoryPage {
        results: rows.iter().map(result_view).collect(),
        next_before,
    }))
}

#[derive(Debug, Serialize)]
struct SeriesView {
    resolution: &'static str,
    buckets: Vec<Bucket>,
}

async fn series(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<SeriesView>, ApiError> {
    known(&s, &name)?;
    let (from, to) = q.range(86_400_000)?;
    let hourly = match q.resolution.as_deref() {
        Some("minute") => false,
        Some("hour") => true,
        None => to - from > 6 * 3_600_000,
        Some(o) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("resolution `{o}`: use minute or hour"),
            ));
        }
    };
    let store = s.store.clone();
    let buckets = blocking(move || store.series(&name, from, to, hourly)).await?;
    Ok(Json(SeriesView {
        resolution: if hourly { "hour" } else { "minute" },
        buckets,
    }))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<i64>,
    before: Option<i64>,
    kind: Option<String>,
    subject: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct EventsPage {
    events: Vec<Event>,
    next_before: Option<i64>,
}

async fn events(
    State(s): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let query = EventQuery {
        after: q.after,
        before: q.before,
        kind_prefix: q.kind,
        subject: q.subject,
        limit,
        ..EventQuery::default()
    };
    let following = query.after.is_some();
    let store = s.store.clone();
    let events = blocking(move || store.events(&query)).await?;
    let next_before = (!following && events.len() == limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(Json(EventsPage {
        events,
        next_before,
    }))
}

async fn backups(
    State(s): State<AppState>,
) -> Result<Json<Vec<crate::backups::BackupView>>, ApiError> {
    let (spec, store) = (s.spec.clone(), s.store.clone());
    tokio::task::spawn_blocking(move || crate::backups::backup_views(&spec, &store))
        .await
        .map(Json)
        .map_err(internal)
}

async fn services(
    State(s): State<AppState>,
) -> Result<Json<Vec<steward_fleet::status::ServiceStatus>>, ApiError> {
    let (spec, store) = (s.spec.clone(), s.store.clone());
    tokio::task::spawn_blocking(move || steward_fleet::status::report(&spec, &*store))
        .await
        .map(Json)
        .map_err(internal)
}

async fn deploys(
    State(s): State<AppState>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Vec<steward_state::DeployRow>>, ApiError> {
    let store = s.store.clone();
    let limit = q.limit.unwrap_or(50).min(1000);
    blocking(move || store.fleet_deploys(None, limit))
        .await
        .map(Json)
}

fn service<'a>(s: &'a AppState, name: &str) -> Result<&'a steward_spec::Service, ApiError> {
    s.spec
        .services
        .get(name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no service `{name}`")))
}

/// `POST /api/v1/services/NAME/scale` with `{"replicas": N}`: the interface an
/// autoscaler calls, the same as `steward scale`.
#[derive(Debug, Deserialize)]
struct ScaleBody {
    replicas: u32,
}

async fn scale(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<ScaleBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let svc = service(&s, &name)?.clone();
    let store = s.store.clone();
    let n = body.replicas;
    let asked = tokio::task::spawn_blocking(move || {
        steward_fleet::requests::request_scale(&*store, &svc, n, "the API", None)
    })
    .await
    .map_err(internal)?;
    match asked {
        Ok(()) => {}
        Err(e @ steward_fleet::requests::ScaleError::OutOfRange { .. }) => {
            return Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
        }
        Err(e) => return Err(internal(e)),
    }
    Ok(Json(serde_json::json!({"replicas": n})))
}

#[derive(Debug, Deserialize)]
struct DeployBody {
    /// A built digest (or unique prefix); default: the newest build.
    image: Option<String>,
}

async fn deploy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Option<Json<DeployBody>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let svc = service(&s, &name)?.clone();
    let spec = s.spec.clone();
    let want = body.and_then(|b| b.0.image);
    let manifest = tokio::task::spawn_blocking(move || {
        steward_image::manifest(
            &spec,
            &spec.images[&svc.image],
            want.as_deref(),
            &steward_spec::OsResolver,
        )
    })
    .await
    .map_err(internal)?
    .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let store = s.store.clone();
    let digest = manifest.digest.clone();
    let svc = s.spec.services[&name].clone();
    let id = blocking(move || {
        steward_fleet::requests::request_deploy(&*store, &svc, &digest, "api", DeployKind::Deploy)
    })
    .await?;
    Ok(Json(
        serde_json::json!({"deploy": id, "to": manifest.digest}),
    ))
}

async fn rollback(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    service(&s, &name)?;
    let store = s.store.clone();
    let n = name.clone();
    let previous = blocking(move || store.fleet_service(&n))
        .await?
        .and_then(|r| r.previous)
        .ok_or_else(|| {
            ApiError(
                StatusCode::CONFLICT,
                format!("{name} has no earlier version to roll back to"),
            )
        })?;
    let store = s.store.clone();
    let to = previous.clone();
    let svc = s.spec.services[&name].clone();
    let id = blocking(move || {
        steward_fleet::requests::request_deploy(&*store, &svc, &to, "api", DeployKind::Rollback)
    })
    .await?;
    Ok(Json(serde_json::json!({"deploy": id, "to": previous})))
}

async fn doctor(State(s): State<AppState>) -> Json<Vec<steward_doctor::Finding>> {
    Json(s.findings.as_ref().clone())
}

#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn deliveries(
    State(s): State<AppState>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    let store = s.store.clone();
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(blocking(move || store.deliveries(limit)).await?))
}
