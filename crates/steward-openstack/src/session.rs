//! A Keystone v3 session: logs in (password or application credential), keeps
//! the token and its service catalog, logs in again before the token expires
//! and once when a call comes back 401, and sends every call with a timeout
//! and bounded retries.
//!
//! Written from the Identity API v3 reference (`POST /v3/auth/tokens`, the
//! token in `X-Subject-Token`, `expires_at`/`issued_at` and `catalog` in the
//! body) and tested against Keystone in the test bed (scripts/openstack).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::Error;
use crate::config::{AppCredential, CloudConfig, Credentials, Domain, Named};

/// A logged-in token and what came with it.
#[derive(Debug)]
struct Token {
    value: String,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    catalog: Value,
    project_id: Option<String>,
}

impl Token {
    /// Still good for a while: more than five minutes left, or more than half
    /// its life when tokens live shorter than ten minutes.
    fn fresh(&self, now: DateTime<Utc>) -> bool {
        let life = self.expires_at - self.issued_at;
        let margin = (life / 2).min(chrono::TimeDelta::minutes(5));
        self.expires_at - now > margin
    }
}

/// A call's body.
#[derive(Debug, Clone)]
pub enum Body {
    /// None.
    Empty,
    /// A JSON document.
    Json(Value),
    /// Raw bytes with their content type.
    Bytes(Bytes, &'static str),
    /// A file's content, streamed (an image upload), as octets.
    File(std::path::PathBuf),
}

/// One API call, relative to a service's catalog endpoint.
#[derive(Debug, Clone)]
pub struct Call {
    /// The catalog type: `compute`, `image`, `network`, `object-store`, …
    pub service: &'static str,
    /// Method.
    pub method: Method,
    /// Path after the endpoint URL (starting with `/`), query included.
    pub path: String,
    /// Body.
    pub body: Body,
    /// Extra headers (microversions).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Call {
    /// A call without a body.
    pub fn new(service: &'static str, method: Method, path: impl Into<String>) -> Call {
        Call {
            service,
            method,
            path: path.into(),
            body: Body::Empty,
            headers: Vec::new(),
        }
    }

    /// With a JSON body.
    pub fn json(mut self, doc: Value) -> Call {
        self.body = Body::Json(doc);
        self
    }

    /// With a header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Call {
        self.headers.push((name, value));
        self
    }
}

/// An answer (any 2xx).
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Invalid(format!("not JSON: {e}")))
    }
}

/// A session with one cloud.
pub struct Session {
    config: CloudConfig,
    http: reqwest::Client,
    token: Mutex<Option<Arc<Token>>>,
    logins: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.config.auth_url)
    }
}

impl Session {
    /// A session; nothing is sent until the first call.
    pub fn new(config: CloudConfig) -> Result<Session, Error> {
        let http = steward_net::http(steward_net::HttpOptions {
            timeout: Some(config.timeout),
            connect_timeout: Some(config.timeout.min(Duration::from_secs(10))),
            no_proxy: false,
        })
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Session {
            config,
            http,
            token: Mutex::new(None),
            logins: Default::default(),
        })
    }

    /// The configuration it was made from.
    pub fn config(&self) -> &CloudConfig {
        &self.config
    }

    /// How many times it has logged in (renewals included).
    pub fn logins(&self) -> u64 {
        self.logins.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The project the token is scoped to.
    pub async fn project_id(&self) -> Result<Option<String>, Error> {
        Ok(self.token(false).await?.project_id.clone())
    }

    /// The current token (logging in when there is none or it is about to
    /// expire). For callers that hand it to another client.
    pub async fn token_value(&self) -> Result<String, Error> {
        Ok(self.token(false).await?.value.clone())
    }

    async fn token(&self, renew: bool) -> Result<Arc<Token>, Error> {
        let mut held = self.token.lock().await;
        if !renew && let Some(t) = held.as_ref().filter(|t| t.fresh(Utc::now())) {
            return Ok(t.clone());
        }
        let t = Arc::new(self.login().await?);
        *held = Some(t.clone());
        Ok(t)
    }

    /// Forgets the token it holds if it is `value` (a 401 answered it).
    async fn forget(&self, value: &str) {
        let mut held = self.token.lock().await;
        if held.as_ref().is_some_and(|t| t.value == value) {
            *held = None;
        }
    }

    fn auth_body(&self) -> Value {
        fn domain(d: &Domain) -> Value {
            match d {
                Domain::Id(id) => json!({ "id": id }),
                Domain::Name(n) => json!({ "name": n }),
            }
        }
        fn named(n: &Named) -> Value {
            match n {
                Named::Id(id) => json!({ "id": id }),
                Named::Name { name, domain: d } => json!({ "name": name, "domain": domain(d) }),
            }
        }
        match &self.config.credentials {
            Credentials::Password {
                user,
                password,
                project,
            } => {
                let mut u = named(user);
                u["password"] = json!(password);
                json!({ "auth": {
                    "identity": { "methods": ["password"], "password": { "user": u } },
                    "scope": { "project": named(project) }
                }})
            }
            Credentials::ApplicationCredential { credential, secret } => {
                let mut c = match credential {
                    AppCredential::Id(id) => json!({ "id": id }),
                    AppCredential::Name { name, user } => {
                        json!({ "name": name, "user": named(user) })
                    }
                };
                c["secret"] = json!(secret);
                json!({ "auth": { "identity": {
                    "methods": ["application_credential"],
                    "application_credential": c
                }}})
            }
        }
    }

    async fn login(&self) -> Result<Token, Error> {
        let url = format!("{}/auth/tokens", self.config.auth_url);
        let auth_err = |reason: String| Error::Auth {
            url: self.config.auth_url.clone(),
            reason,
        };
        let body = self.auth_body();
        let answer = self
            .with_retries(&Method::POST, &url, "identity", || {
                self.http.post(&url).json(&body)
            })
            .await
            .map_err(|e| match e {
                Error::Api {
                    status, message, ..
                } => auth_err(format!("HTTP {status}: {message}")),
                other => other,
            })?;
        self.logins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let value = answer
            .headers
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| auth_err("no X-Subject-Token in Keystone's answer".into()))?
            .to_string();
        let doc = answer.json()?;
        let time = |k: &str| {
            doc["token"][k]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let expires_at =
            time("expires_at").ok_or_else(|| auth_err("the token has no expires_at".into()))?;
        Ok(Token {
            value,
            issued_at: time("issued_at").unwrap_or_else(Utc::now),
            expires_at,
            project_id: doc["token"]["project"]["id"].as_str().map(String::from),
            catalog: doc["token"]["catalog"].clone(),
        })
    }

    /// The URL of `service`'s endpoint for this cloud's interface and region.
    pub async fn endpoint(&self, service: &str) -> Result<String, Error> {
        let token = self.token(false).await?;
        self.endpoint_in(&token, service)
    }

    fn endpoint_in(&self, token: &Token, service: &str) -> Result<String, Error> {
        let interface = self.config.interface.as_str();
        let region = self.config.region.as_deref();
        token
            .catalog
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["type"] == service)
            .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
            .find(|e| {
                e["interface"] == interface
                    && region.is_none_or(|r| e["region_id"] == r || e["region"] == r)
            })
            .and_then(|e| e["url"].as_str())
            .map(|u| u.trim_end_matches('/').to_string())
            .ok_or_else(|| Error::Catalog {
                service: service.to_string(),
                interface: interface.to_string(),
                region: region.map(String::from),
            })
    }

    /// Sends `call` to its service: logs in first if needed, logs in again
    /// once on a 401, retries 5xx, 409 and connection failures.
    pub async fn send(&self, call: Call) -> Result<Answer, Error> {
        let mut renewed = false;
        loop {
            let token = self.token(false).await?;
            let base = self.endpoint_in(&token, call.service)?;
            let url = format!("{base}{}", call.path);
            let result = self
                .with_retries(&call.method, &url, call.service, || {
                    let mut r = self
                        .http
                        .request(call.method.clone(), &url)
                        .header("X-Auth-Token", &token.value);
                    for (k, v) in &call.headers {
                        r = r.header(k, v);
                    }
                    match &call.body {
                        Body::Empty => r,
                        Body::Json(doc) => r.json(doc),
                        Body::Bytes(b, kind) => r.header("Content-Type", *kind).body(b.clone()),
                        Body::File(path) => match std::fs::File::open(path) {
                            Ok(f) => {
                                let stream = tokio_util::io::ReaderStream::new(
                                    tokio::fs::File::from_std(f),
                                );
                                r.header("Content-Type", "application/octet-stream")
                                    .body(reqwest::Body::wrap_stream(stream))
                            }
                            // Sent without a body: the service refuses it and
                            // the error names the call; the cause is logged.
                            Err(e) => {
                                tracing::warn!(path = %path.display(), error = %e, "cannot open the upload");
                                r
                            }
                        },
                    }
                })
                .await;
            match result {
                Err(Error::Api { status: 401, .. }) if !renewed => {
                    tracing::debug!(%url, "401: logging in again");
                    self.forget(&token.value).await;
                    renewed = true;
                }
                other => return other,
            }
        }
    }

    /// One request, tried again on 5xx, 409 and connection errors (a request
    /// that may have reached the server — a timeout, a 5xx — only when
    /// repeating it is harmless: not a POST, except Keystone's login).
    async fn with_retries(
        &self,
        method: &Method,
        url: &str,
        service: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Answer, Error> {
        let mut wait = self.config.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt > self.config.retries;
            match make().send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let body = match resp.bytes().await {
                        Ok(b) => b,
                        Err(e) if !last && *method != Method::POST => {
                            tracing::debug!(url, error = %e, "reading the answer failed; retrying");
                            tokio::time::sleep(wait).await;
                            wait *= 2;
                            continue;
                        }
                        Err(e) => {
                            return Err(Error::Transport {
                                service: service.to_string(),
                                url: url.to_string(),
                                reason: steward_net::error_chain(&e),
                            });
                        }
                    };
                    if status.is_success() {
                        return Ok(Answer {
                            status,
                            headers,
                            body,
                        });
                    }
                    // A 409 changed nothing; a 5xx to a POST may have made
                    // what it asked for (a server, an image) before failing, so
                    // only a login is repeated then.
                    let retry = status == StatusCode::CONFLICT
                        || (status.is_server_error()
                            && (*method != Method::POST || service == "identity"));
                    if retry && !last {
                        tracing::debug!(url, %status, "retrying");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                        continue;
                    }
                    return Err(Error::Api {
                        service: service.to_string(),
                        method: method.to_string(),
                        url: url.to_string(),
                        status: status.as_u16(),
                        message: message(&body),
                    });
                }
                Err(e) => {
                    let unsent = e.is_connect();
                    if !last && (unsent || *method != Method::POST) {
                        tracing::debug!(url, error = %e, "retrying");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                        continue;
                    }
                    return Err(Error::Transport {
                        service: service.to_string(),
                        url: url.to_string(),
                        reason: steward_net::error_chain(&e),
                    });
                }
            }
        }
    }

    /// Revokes the session's token at Keystone (`DELETE /v3/auth/tokens`), as
    /// an operator revoking it would. The session does not notice until a call
    /// comes back 401.
    pub async fn revoke_token(&self) -> Result<(), Error> {
        let token = self.token(false).await?;
        let url = format!("{}/auth/tokens", self.config.auth_url);
        self.with_retries(&Method::DELETE, &url, "identity", || {
            self.http
                .delete(&url)
                .header("X-Auth-Token", &token.value)
                .header("X-Subject-Token", &token.value)
        })
        .await
        .map(|_| ())
    }
}

/// The human part of an OpenStack error body: Nova's `{"badRequest":
/// {"message": …}}`, Keystone's `{"error": {"message": …}}`, Neutron's
/// `{"NeutronError": {"message": …}}`, a top-level `message`, or the text
/// (tags stripped) of an HTML page such as Glance's.
pub fn message(body: &[u8]) -> String {
    if let Ok(doc) = serde_json::from_slice::<Value>(body) {
        if let Some(m) = doc["message"].as_str() {
            return m.to_string();
        }
        if let Some(obj) = doc.as_object() {
            for v in obj.values() {
                if let Some(m) = v["message"].as_str() {
                    return m.to_string();
                }
                if let Some(m) = v.as_str() {
                    return m.to_string();
                }
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = out.split_whitespace().collect();
    let joined = words.join(" ");
    if joined.chars().count() > 300 {
        joined.chars().take(300).collect::<String>() + "…"
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_each_service_give_their_message() {
        assert_eq!(
            message(br#"{"badRequest": {"code": 400, "message": "Flavor m1.huge could not be found."}}"#),
            "Flavor m1.huge could not be found."
        );
        assert_eq!(
            message(br#"{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}"#),
            "The request you have made requires authentication."
        );
        assert_eq!(
            message(br#"{"NeutronError": {"type": "NotFound", "message": "Network x could not be found.", "detail": ""}}"#),
            "Network x could not be found."
        );
        assert_eq!(
            message(b"<html>\n <head>\n  <title>403 Forbidden</title>\n </head>\n <body>\n  <h1>403 Forbidden</h1>\n  You are not authorized.<br /><br />\n </body>\n</html>"),
            "403 Forbidden 403 Forbidden You are not authorized."
        );
    }

    #[test]
    fn a_token_is_renewed_well_before_it_expires() {
        let now = Utc::now();
        let token = |life_s: i64, left_s: i64| Token {
            value: String::new(),
            issued_at: now - chrono::TimeDelta::seconds(life_s - left_s),
            expires_at: now + chrono::TimeDelta::seconds(left_s),
            catalog: Value::Null,
            project_id: None,
        };
        assert!(token(3600, 600).fresh(now));
        assert!(
            !token(3600, 290).fresh(now),
            "five minutes before a long token ends"
        );
        assert!(token(120, 70).fresh(now));
        assert!(!token(120, 50).fresh(now), "half-way through a short one");
    }
}
