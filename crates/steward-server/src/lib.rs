//! steward's HTTP surface for `serve`: its own health (`/health`, `/livez`,
//! `/readyz`), Prometheus `/metrics`, the JSON API under `/api/v1`, and the
//! status page for people at `/`.
//!
//! Handlers only read: the board (current states, in memory) and the state
//! database (history, uptime, events). They never block the controllers.

mod api;
mod backups;
mod listener;
pub use listener::{PeerAddr, StewardListener, TlsFiles, TlsReloader};
mod auth;
mod charts;
pub use api::{CheckView, ResultView};
mod page;
mod process;
mod prom;
mod summary;

pub use summary::SummaryCache;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use steward_health::Board;
use steward_health_endpoint::{HealthEndpoint, Observation};
use steward_spec::Spec;
use steward_state::{Health, Meta, Store};

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// The validated spec.
    pub spec: Arc<Spec>,
    /// State database.
    pub store: Arc<Store>,
    /// Current check states.
    pub board: Board,
    /// Metrics of every controller.
    pub registry: Arc<Registry>,
    /// Uptime and chart data, cached.
    pub summaries: Arc<SummaryCache>,
    /// Sessions and failed-attempt counters.
    pub auth: Arc<auth::AuthState>,
    /// Operational gaps (`steward doctor`), computed once: the spec does not change while serving.
    pub findings: Arc<Vec<steward_doctor::Finding>>,
    /// How the supervised controllers are doing (for steward's own `/health`).
    pub controllers: steward_runtime::Health,
    /// Metrics stored as series (scraped and steward's own).
    pub series: steward_metrics::controller::Series,
}

impl AppState {
    /// State for the router, with an empty summary cache.
    pub fn new(spec: Arc<Spec>, store: Arc<Store>, board: Board, registry: Arc<Registry>) -> Self {
        let now = steward_state::now_ms();
        // This process is the running `serve`: the heartbeat is now.
        let findings = steward_doctor::diagnose(
            &spec,
            &steward_doctor::Facts {
                now,
                serve_heartbeat: Some(now),
                backups: Default::default(),
            },
        );
        AppState {
            findings: Arc::new(findings),
            spec,
            store,
            board,
            registry,
            summaries: Arc::default(),
            auth: Arc::default(),
            controllers: steward_runtime::Health::default(),
            series: Default::default(),
        }
    }

    /// The same state, reporting these controllers on `/health`.
    pub fn with_controllers(mut self, controllers: steward_runtime::Health) -> Self {
        self.controllers = controllers;
        self
    }

    /// The same state, answering the series API from this store.
    pub fn with_series(mut self, series: steward_metrics::controller::Series) -> Self {
        self.series = series;
        self
    }

    /// Keeps the summary cache warm until `cancel`, so requests rarely compute it.
    pub async fn refresh_summaries(self, cancel: tokio_util::sync::CancellationToken) {
        loop {
            if let Err(e) = self.summaries.refresh(&self.store).await {
                tracing::warn!(error = %e, "cannot compute uptime summaries");
            }
            // Requests refresh an expired cache themselves; this only spares the
            // slow (many-check) case, so it need not run often.
            let wait = self
                .summaries
                .remaining()
                .max(std::time::Duration::from_secs(10));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let health = own_health(&state);
    Router::new()
        .route("/", get(page::status_page))
        .route("/query", get(page::query_page))
        .route("/static/status.css", get(page::css))
        .route("/static/status.js", get(page::js))
        .route("/metrics", get(metrics))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", axum::routing::post(auth::logout))
        .nest("/api/v1", api::routes().merge(prom::routes()))
        .merge(health.router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .with_state(state)
        // Nothing steward accepts is large: a sign-in form, JSON for actions.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::from_fn(security_headers))
}

/// steward's own health: can it read its database, how many checks are down,
/// and whether its controllers work.
fn own_health(state: &AppState) -> HealthEndpoint {
    let store = state.store.clone();
    let board = state.board.clone();
    let controllers = state.controllers.clone();
    HealthEndpoint::builder()
        .service_id("steward")
        .version(env!("CARGO_PKG_VERSION"))
        .description(format!("steward for {}", state.spec.settings.name))
        .check("state:database", "datastore", move || {
            let store = store.clone();
            async move {
                let started = std::time::Instant::now();
                match tokio::task::spawn_blocking(move || store.meta("schema")).await {
                    Ok(Ok(_)) => {
                        Observation::pass().observed(started.elapsed().as_secs_f64() * 1000.0, "ms")
                    }
                    Ok(Err(e)) => Observation::fail(e.to_string()),
                    Err(e) => Observation::fail(e.to_string()),
                }
            }
        })
        .check("checks:down", "component", move || {
            let down = board
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|s| s.health == Health::Down)
                .count();
            async move {
                // Monitored services being down is their problem, not steward's: warn, not fail.
                if down == 0 {
                    Observation::pass().observed(0, "checks")
                } else {
                    Observation::warn(format!("{down} monitored check(s) down"))
                        .observed(down, "checks")
                }
            }
        })
        .check("controllers", "component", move || {
            let failing = controllers.failing();
            let troubled = controllers.troubled();
            async move {
                // A controller that panics in a loop is steward failing at its
                // job: fail, naming it and its last error.
                if let Some((name, h)) = failing.first() {
                    let error = h.last_error.clone().unwrap_or_default();
                    return Observation::fail(format!(
                        "{} controller(s) failing; {name} panicked {} times in a row: {error}",
                        failing.len(),
                        h.panics_in_a_row
                    ))
                    .observed(failing.len(), "controllers");
                }
                if let Some((name, h)) = troubled.first() {
                    let error = h.last_error.clone().unwrap_or_default();
                    return Observation::warn(format!("{name}: {error}"))
                        .observed(troubled.len(), "controllers");
                }
                Observation::pass().observed(0, "controllers")
            }
        })
        .liveness("process:uptime", {
            let started = std::time::Instant::now();
            move || {
                let up = started.elapsed().as_secs_f64();
                async move { Observation::pass().observed((up * 10.0).round() / 10.0, "s") }
            }
        })
        .build()
}

async fn metrics(axum::extract::State(s): axum::extract::State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Registers steward's process metrics (CPU, memory, file descriptors, start time).
pub fn register_process_metrics(r: &mut Registry) {
    r.register_collector(Box::new(process::ProcessCollector::new()));
}

async fn security_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}
