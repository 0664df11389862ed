//! Health endpoints in the IETF draft "Health Check Response Format for HTTP
//! APIs" (`application/health+json`), for applications and for steward itself.
//!
//! Register component checks on a [`HealthEndpoint`], then mount
//! [`HealthEndpoint::router`]: `/health` runs every readiness check and answers
//! the full document, `/readyz` the same with a short body, `/livez` only the
//! liveness checks (a process that answers is alive; readiness failures must
//! not get it restarted).
//!
//! The wire types ([`HealthResponse`], [`CheckEntry`], [`HealthStatus`]) also
//! parse documents from other services (steward's `http` check does).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

/// The media type of a health document.
pub const CONTENT_TYPE: &str = "application/health+json";

/// `pass`, `warn` or `fail`. Parsing also accepts the draft's aliases
/// (`ok`/`up` for pass, `error`/`down` for fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Healthy.
    Pass,
    /// Healthy, with concerns.
    Warn,
    /// Unhealthy.
    Fail,
}

impl<'de> Deserialize<'de> for HealthStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HealthStatus::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown health status `{s}` (expected pass, warn or fail)"
            ))
        })
    }
}

impl HealthStatus {
    /// Parses a status, accepting the draft's aliases, case-insensitively.
    pub fn parse(s: &str) -> Option<HealthStatus> {
        match s.to_ascii_lowercase().as_str() {
            "pass" | "ok" | "up" => Some(HealthStatus::Pass),
            "warn" => Some(HealthStatus::Warn),
            "fail" | "error" | "down" => Some(HealthStatus::Fail),
            _ => None,
        }
    }

    /// The HTTP status code the draft recommends: 200 for pass/warn, 503 for fail.
    pub fn http_status(self) -> StatusCode {
        match self {
            HealthStatus::Pass | HealthStatus::Warn => StatusCode::OK,
            HealthStatus::Fail => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Pass => "pass",
            HealthStatus::Warn => "warn",
            HealthStatus::Fail => "fail",
        }
    }
}

/// One entry under `checks` (keyed `component:measurement`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CheckEntry {
    /// Unique id of the component instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component_id: Option<String>,
    /// `component`, `datastore`, `system`, or a URI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component_type: Option<String>,
    /// The measured value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_value: Option<serde_json::Value>,
    /// Unit of `observed_value`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_unit: Option<String>,
    /// Status of this measurement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<HealthStatus>,
    /// When it was measured (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Error or warning text (omit on pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// A whole health document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthResponse {
    /// Overall status.
    pub status: HealthStatus,
    /// Public version of the service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Release of the implementation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_id: Option<String>,
    /// Notes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Error text for warn/fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Service id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    /// Human description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Component measurements keyed `component:measurement`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, Vec<CheckEntry>>,
}

impl HealthResponse {
    /// Parses a document; the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<HealthResponse, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The worst status among the document and all its entries.
    pub fn worst(&self) -> HealthStatus {
        self.checks
            .values()
            .flatten()
            .filter_map(|e| e.status)
            .chain(std::iter::once(self.status))
            .max()
            .unwrap_or(self.status)
    }
}

impl IntoResponse for HealthResponse {
    fn into_response(self) -> Response {
        let code = self.status.http_status();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = (code, body).into_response();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}

/// What a component check reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Status.
    pub status: HealthStatus,
    /// Measured value.
    pub value: Option<serde_json::Value>,
    /// Its unit.
    pub unit: Option<String>,
    /// Error or warning text.
    pub output: Option<String>,
}

impl Observation {
    /// Passing, no value.
    pub fn pass() -> Self {
        Self {
            status: HealthStatus::Pass,
            value: None,
            unit: None,
            output: None,
        }
    }
    /// Warning with a reason.
    pub fn warn(output: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Warn,
            value: None,
            unit: None,
            output: Some(output.into()),
        }
    }
    /// Failing with a reason.
    pub fn fail(output: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Fail,
            value: None,
            unit: None,
            output: Some(output.into()),
        }
    }
    /// Adds a measured value and unit.
    pub fn observed(
        mut self,
        value: impl Into<serde_json::Value>,
        unit: impl Into<String>,
    ) -> Self {
        self.value = Some(value.into());
        self.unit = Some(unit.into());
        self
    }
}

type CheckFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Observation> + Send>> + Send + Sync>;

struct Component {
    key: String,
    component_type: Option<String>,
    liveness: bool,
    run: CheckFn,
}

/// A set of component checks served as a health endpoint.
#[derive(Clone)]
pub struct HealthEndpoint {
    inner: Arc<Inner>,
}

struct Inner {
    service_id: Option<String>,
    version: Option<String>,
    release_id: Option<String>,
    description: Option<String>,
    timeout: Duration,
    components: Vec<Component>,
}

/// Builds a [`HealthEndpoint`].
pub struct Builder {
    inner: Inner,
}

impl HealthEndpoint {
    /// Starts a builder.
    pub fn builder() -> Builder {
        Builder {
            inner: Inner {
                service_id: None,
                version: None,
                release_id: None,
                description: None,
                timeout: Duration::from_secs(2),
                components: Vec::new(),
            },
        }
    }

    /// Runs the readiness checks (or only the liveness ones) concurrently, each
    /// under the timeout, and assembles the document.
    pub async fn evaluate(&self, liveness_only: bool) -> HealthResponse {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let selected: Vec<&Component> = self
            .inner
            .components
            .iter()
            .filter(|c| !liveness_only || c.liveness)
            .collect();
        let timeout = self.inner.timeout;
        let runs = selected.iter().map(|c| {
            let f = (c.run)();
            async move {
                match tokio::time::timeout(timeout, f).await {
                    Ok(o) => o,
                    Err(_) => Observation::fail(format!("check did not answer within {timeout:?}")),
                }
            }
        });
        let results = futures_util::future::join_all(runs).await;
        let mut checks: BTreeMap<String, Vec<CheckEntry>> = BTreeMap::new();
        let mut status = HealthStatus::Pass;
        for (c, o) in selected.iter().zip(results) {
            status = status.max(o.status);
            checks.entry(c.key.clone()).or_default().push(CheckEntry {
                component_id: None,
                component_type: c.component_type.clone(),
                observed_value: o.value,
                observed_unit: o.unit,
                status: Some(o.status),
                time: Some(now.clone()),
                output: o.output,
            });
        }
        HealthResponse {
            status,
            version: self.inner.version.clone(),
            release_id: self.inner.release_id.clone(),
            notes: Vec::new(),
            output: None,
            service_id: self.inner.service_id.clone(),
            description: self.inner.description.clone(),
            checks,
        }
    }

    /// `/health` (full readiness document), `/readyz` and `/livez`.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let full = self.clone();
        let ready = self.clone();
        let live = self.clone();
        Router::new()
            .route(
                "/health",
                get(move || async move { full.evaluate(false).await }),
            )
            .route(
                "/readyz",
                get(move || async move {
                    let r = ready.evaluate(false).await;
                    (r.status.http_status(), r.status.as_str()).into_response()
                }),
            )
            .route(
                "/livez",
                get(move || async move {
                    let r = live.evaluate(true).await;
                    (r.status.http_status(), r.status.as_str()).into_response()
                }),
            )
    }
}

impl Builder {
    /// `serviceId` in the document.
    pub fn service_id(mut self, v: impl Into<String>) -> Self {
        self.inner.service_id = Some(v.into());
        self
    }
    /// `version` in the document.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.inner.version = Some(v.into());
        self
    }
    /// `releaseId` in the document.
    pub fn release_id(mut self, v: impl Into<String>) -> Self {
        self.inner.release_id = Some(v.into());
        self
    }
    /// `description` in the document.
    pub fn description(mut self, v: impl Into<String>) -> Self {
        self.inner.description = Some(v.into());
        self
    }
    /// Time budget of each component check (default 2 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.inner.timeout = t;
        self
    }

    fn add<F, Fut>(mut self, key: &str, component_type: Option<&str>, liveness: bool, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Observation> + Send + 'static,
    {
        let run: CheckFn = Arc::new(move || Box::pin(f()));
        self.inner.components.push(Component {
            key: key.to_string(),
            component_type: component_type.map(str::to_string),
            liveness,
            run,
        });
        self
    }

    /// A readiness check keyed `component:measurement` (e.g. `postgres:connections`).
    pub fn check<F, Fut>(self, key: &str, component_type: &str, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Observation> + Send + 'static,
    {
        self.add(key, Some(component_type), false, f)
    }

    /// A liveness check: also part of readiness; failing it means "restart me".
    pub fn liveness<F, Fut>(self, key: &str, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Observation> + Send + 'static,
    {
        self.add(key, Some("system"), true, f)
    }

    /// Finishes.
    pub fn build(self) -> HealthEndpoint {
        HealthEndpoint {
            inner: Arc::new(self.inner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Example document from the draft (draft-inadarei-api-health-check-06, section 3).
    const DRAFT_EXAMPLE: &str = r#"{
      "status": "pass", "version": "1", "releaseId": "1.2.2",
      "notes": [""], "output": "", "serviceId": "f03e522f-1f44-4062-9b55-9587f91c9c41",
      "description": "health of authz service",
      "checks": {
        "cassandra:responseTime": [{"componentId": "dfd6cf2b-1b6e-4412-a0b8-f6f7797a60d2",
          "componentType": "datastore", "observedValue": 250, "observedUnit": "ms",
          "status": "pass", "affectedEndpoints": ["/users/{userId}"],
          "time": "2018-01-17T03:36:48Z", "output": ""}],
        "uptime": [{"componentType": "system", "observedValue": 1209600.245,
          "observedUnit": "s", "status": "pass", "time": "2018-01-17T03:36:48Z"}],
        "cpu:utilization": [
          {"componentId": "6fd416e0", "node": 1, "componentType": "system", "observedValue": 85,
           "observedUnit": "percent", "status": "warn", "time": "2018-01-17T03:36:48Z", "output": ""}]
      },
      "links": {"about": "http://api.example.com/about/authz"}
    }"#;

    #[test]
    fn parses_the_drafts_example() {
        let r = HealthResponse::parse(DRAFT_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(r.status, HealthStatus::Pass);
        assert_eq!(r.worst(), HealthStatus::Warn);
        assert_eq!(
            r.checks["cassandra:responseTime"][0].observed_value,
            Some(250.into())
        );
    }

    #[test]
    fn aliases_and_garbage() {
        assert_eq!(HealthStatus::parse("UP"), Some(HealthStatus::Pass));
        assert_eq!(HealthStatus::parse("down"), Some(HealthStatus::Fail));
        assert!(HealthResponse::parse(br#"{"status":"maybe"}"#).is_err());
        assert!(HealthResponse::parse(b"\xff\xfe").is_err());
    }
}
