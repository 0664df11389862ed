//! Authentication for `auth = "token"`: bearer tokens for machines, a sign-in
//! with a session cookie for people, scopes, CSRF protection for cookie-borne
//! requests that change something, rate limiting of failures, and an audit
//! event for every request that changes something.
//!
//! `/health`, `/livez`, `/readyz`, the sign-in page and static assets stay open;
//! `/metrics` too when `public_metrics = true`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use steward_spec::AuthMode;

use crate::AppState;
use crate::listener::PeerAddr;
use steward_state::{EventKind, EventLog, NewEvent, Scope, Severity, Tokens, now_ms, token_hash};

const COOKIE: &str = "steward_session";
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Failed attempts from one address per window before it is turned away.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

struct Session {
    token_hash: Vec<u8>,
    csrf: String,
    expires: Instant,
}

/// Sessions and failure counters (in memory: a restart signs everyone out).
#[derive(Default)]
pub struct AuthState {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Who made the request, for handlers (the status page's sign-out form).
#[derive(Clone, Debug)]
pub(crate) struct Authed {
    pub(crate) name: String,
    /// Present when signed in with the cookie.
    pub(crate) csrf: Option<String>,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the operating system's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn peer(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0.0)
}

impl AuthState {
    fn limited(&self, ip: IpAddr) -> bool {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        matches!(f.get(&ip), Some((n, since)) if *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW)
    }

    fn failed(&self, ip: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let e = f.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
        if f.len() > 10_000 {
            f.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
    }
}

async fn lookup(s: &AppState, hash: Vec<u8>) -> Option<steward_state::TokenInfo> {
    let store = s.store.clone();
    tokio::task::spawn_blocking(move || store.authenticate(&hash, now_ms()))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
}

fn audit(
    s: &AppState,
    kind: EventKind,
    severity: Severity,
    message: String,
    data: serde_json::Value,
) {
    let store = s.store.clone();
    let e = NewEvent::now(kind, "api", severity, message, data);
    tokio::task::spawn_blocking(move || store.record(&e));
}

fn unauthorized(api: bool, msg: &str) -> Response {
    if api {
        let mut r = (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({ "error": msg })),
        )
            .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"steward\""),
        );
        r
    } else {
        Redirect::to("/login").into_response()
    }
}

/// The middleware; a no-op with `auth = "none"`.
pub(crate) async fn require(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let settings = &s.spec.settings;
    if settings.auth == AuthMode::None {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let open = matches!(path.as_str(), "/health" | "/livez" | "/readyz" | "/login")
        || path.starts_with("/static/")
        || (path == "/metrics" && settings.public_metrics);
    if open {
        return next.run(req).await;
    }
    let source = peer(&req);
    let ip = source.map(|p| p.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if s.auth.limited(ip) {
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed sign-ins; try again in a minute",
        )
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return r;
    }
    let api = path.starts_with("/api/") || path == "/metrics";
    let method = req.method().clone();
    let reading = method == Method::GET || method == Method::HEAD;
    // Signing out changes nothing but the caller's own session.
    let need = if reading || path == "/logout" {
        Scope::Read
    } else {
        Scope::Operate
    };

    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().to_string());
    let (token, csrf) = if let Some(presented) = bearer {
        match lookup(&s, token_hash(&presented)).await {
            Some(t) => (t, None),
            None => {
                s.auth.failed(ip);
                audit(
                    &s,
                    EventKind::AuthFailed,
                    Severity::Warning,
                    format!("rejected a token from {ip}"),
                    serde_json::json!({"source": ip.to_string(), "path": path}),
                );
                return unauthorized(true, "invalid or revoked token");
            }
        }
    } else if let Some(sid) = cookie(req.headers(), COOKIE) {
        let found = {
            let mut sessions = s.auth.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.retain(|_, v| v.expires > Instant::now());
            sessions
                .get(&sid)
                .map(|v| (v.token_hash.clone(), v.csrf.clone()))
        };
        let Some((hash, csrf)) = found else {
            return unauthorized(api, "session expired; sign in again");
        };
        // Revoking the token ends its sessions at once.
        let Some(t) = lookup(&s, hash).await else {
            s.auth
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&sid);
            return unauthorized(api, "the token of this session was revoked");
        };
        // A cookie rides along with any request the browser makes: anything that
        // changes state must also prove it came from our page.
        if !reading && path != "/logout" {
            let sent = req
                .headers()
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok());
            if sent != Some(csrf.as_str()) {
                audit(
                    &s,
                    EventKind::AuthCsrf,
                    Severity::Warning,
                    format!("{method} {path} without a valid CSRF token"),
                    serde_json::json!({"source": ip.to_string()}),
                );
                return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
            }
        }
        (t, Some(csrf))
    } else {
        return unauthorized(
            api,
            "authentication required: send `Authorization: Bearer <token>`",
        );
    };

    if token.scope < need {
        if !reading {
            audit(
                &s,
                EventKind::ApiDenied,
                Severity::Warning,
                format!("{} may not {method} {path}", token.name),
                serde_json::json!({"token": token.name, "source": ip.to_string()}),
            );
        }
        return (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({ "error": format!("token `{}` has scope `{}`; this needs `{}`", token.name, token.scope.as_str(), need.as_str()) })),
        )
            .into_response();
    }
    req.extensions_mut().insert(Authed {
        name: token.name.clone(),
        csrf,
    });
    let res = next.run(req).await;
    if !reading {
        audit(
            &s,
            EventKind::ApiRequest,
            Severity::Info,
            format!("{} {method} {path} → {}", token.name, res.status().as_u16()),
            serde_json::json!({"token": token.name, "source": ip.to_string(), "method": method.as_str(), "path": path, "status": res.status().as_u16()}),
        );
    }
    res
}

const LOGIN_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · steward</title>
<link rel="stylesheet" href="/static/status.css"></head>
<body><main class="login"><h1>Sign in</h1>
<form method="post" action="/login">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="off" required>
<button type="submit">Sign in</button>
</form>
<p class="meta">Create one with <code>steward token create --name NAME --scope read</code>.</p>
MESSAGE</main></body></html>"#;

pub(crate) async fn login_page() -> Html<String> {
    Html(LOGIN_PAGE.replace("MESSAGE", ""))
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// A cross-site form post carries a foreign Origin; same-site ones match the Host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // not sent by browsers for some same-origin requests; SameSite covers them
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin.split_once("://").map(|(_, h)| h) == Some(host)
}

pub(crate) async fn login(
    State(s): State<AppState>,
    req_headers: HeaderMap,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Form(f): Form<LoginForm>,
) -> Response {
    if s.spec.settings.auth == AuthMode::None {
        return Redirect::to("/").into_response();
    }
    let ip = peer.ip();
    if s.auth.limited(ip) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed sign-ins; try again in a minute",
        )
            .into_response();
    }
    if !same_origin(&req_headers) {
        return (StatusCode::FORBIDDEN, "cross-site sign-in refused").into_response();
    }
    let hash = token_hash(f.token.trim());
    let Some(t) = lookup(&s, hash.clone()).await else {
        s.auth.failed(ip);
        audit(
            &s,
            EventKind::AuthFailed,
            Severity::Warning,
            format!("failed sign-in from {ip}"),
            serde_json::json!({"source": ip.to_string()}),
        );
        return (
            StatusCode::UNAUTHORIZED,
            Html(LOGIN_PAGE.replace("MESSAGE", "<p class=\"error\">That token is not valid.</p>")),
        )
            .into_response();
    };
    let sid = random_hex();
    s.auth
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            sid.clone(),
            Session {
                token_hash: hash,
                csrf: random_hex(),
                expires: Instant::now() + SESSION_LIFETIME,
            },
        );
    audit(
        &s,
        EventKind::AuthLogin,
        Severity::Info,
        format!("{} signed in from {ip}", t.name),
        serde_json::json!({"token": t.name, "source": ip.to_string()}),
    );
    let mut r = Redirect::to("/").into_response();
    let secure = if s.spec.settings.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let c = format!(
        "{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_LIFETIME.as_secs()
    );
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&c).expect("cookie is ASCII"),
    );
    r
}

#[derive(Deserialize)]
pub(crate) struct LogoutForm {
    csrf: String,
}

pub(crate) async fn logout(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Response {
    let Some(sid) = cookie(&headers, COOKIE) else {
        return Redirect::to("/login").into_response();
    };
    let mut sessions = s.auth.sessions.lock().unwrap_or_else(|e| e.into_inner());
    match sessions.get(&sid) {
        Some(sess) if sess.csrf == f.csrf => {
            sessions.remove(&sid);
        }
        _ => return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response(),
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("steward_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}
