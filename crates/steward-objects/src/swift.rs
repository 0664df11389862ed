//! OpenStack Swift through its object API. steward logs in itself (tempauth v1 or
//! Keystone v3 password auth), keeps the token, logs in again shortly before it
//! expires and once more when a request comes back 401.
//!
//! Both are exercised by the tests against a real Swift: tempauth directly, Keystone
//! v3 (POST /v3/auth/tokens, `X-Subject-Token`, the `object-store` entry of the
//! service catalog) through the test bed's Keystone and a Swift proxy that takes
//! its tokens (e2e `swift_through_keystone_holds_the_repository_and_restic_reads_it_there`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};

use crate::{ObjectInfo, ObjectStore, StoreError};

/// How steward authenticates to Swift.
#[derive(Clone)]
pub enum SwiftAuth {
    /// Swift's own tempauth (or swauth): `GET auth_url` with user and key headers.
    TempAuth {
        /// e.g. `http://127.0.0.1:8080/auth/v1.0`
        url: String,
        /// `account:user`
        user: String,
        /// The key.
        key: String,
    },
    /// Keystone v3 password authentication scoped to a project.
    Keystone {
        /// e.g. `http://127.0.0.1:5000/v3`
        url: String,
        /// User name.
        user: String,
        /// Password.
        password: String,
        /// The user's domain (default `Default`).
        user_domain: String,
        /// Project name.
        project: String,
        /// The project's domain (default `Default`).
        project_domain: String,
        /// Catalog region to pick, when there are several.
        region: Option<String>,
    },
}

impl SwiftAuth {
    fn url(&self) -> &str {
        match self {
            SwiftAuth::TempAuth { url, .. } | SwiftAuth::Keystone { url, .. } => url,
        }
    }
}

impl std::fmt::Debug for SwiftAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SwiftAuth({}, ***)", self.url())
    }
}

struct Session {
    token: String,
    storage_url: String,
    /// Log in again after this instant.
    renew_at: Option<Instant>,
}

/// A Swift container (and optional key prefix inside it).
pub struct SwiftStore {
    auth: SwiftAuth,
    container: String,
    prefix: String,
    http: Client,
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for SwiftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SwiftStore({})", self.location())
    }
}

impl SwiftStore {
    /// A store in `container`, keys prefixed with `prefix` (may be empty).
    pub fn new(auth: SwiftAuth, container: &str, prefix: &str) -> Result<SwiftStore, StoreError> {
        let http = steward_net::blocking_http(steward_net::HttpOptions {
            timeout: Some(Duration::from_secs(300)),
            connect_timeout: Some(Duration::from_secs(10)),
            no_proxy: false,
        })?;
        let mut prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Ok(SwiftStore {
            auth,
            container: container.to_string(),
            prefix,
            http,
            session: Mutex::new(None),
        })
    }

    fn login(&self) -> Result<Session, StoreError> {
        let auth_err = |reason: String| StoreError::Auth {
            url: self.auth.url().to_string(),
            reason,
        };
        match &self.auth {
            SwiftAuth::TempAuth { url, user, key } => {
                let resp = self
                    .http
                    .get(url)
                    .header("X-Auth-User", user)
                    .header("X-Auth-Key", key)
                    .send()
                    .map_err(|e| auth_err(transport(&e)))?;
                if !resp.status().is_success() {
                    return Err(auth_err(format!("HTTP {}", resp.status())));
                }
                let header = |n: &str| {
                    resp.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(String::from)
                };
                let token = header("X-Auth-Token")
                    .ok_or_else(|| auth_err("no X-Auth-Token in the answer".into()))?;
                let storage_url = header("X-Storage-Url")
                    .ok_or_else(|| auth_err("no X-Storage-Url in the answer".into()))?;
                let renew_at = header("X-Auth-Token-Expires")
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(|secs| Instant::now() + Duration::from_secs(secs.saturating_sub(300)));
                Ok(Session {
                    token,
                    storage_url,
                    renew_at,
                })
            }
            SwiftAuth::Keystone {
                url,
                user,
                password,
                user_domain,
                project,
                project_domain,
                region,
            } => {
                let body = serde_json::json!({"auth": {
                    "identity": {"methods": ["password"], "password": {"user": {
                        "name": user, "domain": {"name": user_domain}, "password": password}}},
                    "scope": {"project": {"name": project, "domain": {"name": project_domain}}}
                }});
                let resp = self
                    .http
                    .post(format!("{}/auth/tokens", url.trim_end_matches('/')))
                    .json(&body)
                    .send()
                    .map_err(|e| auth_err(transport(&e)))?;
                if !resp.status().is_success() {
                    return Err(auth_err(format!("HTTP {}", resp.status())));
                }
                let token = resp
                    .headers()
                    .get("X-Subject-Token")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
                    .ok_or_else(|| auth_err("no X-Subject-Token in the answer".into()))?;
                let doc: serde_json::Value = resp
                    .json()
                    .map_err(|e| auth_err(format!("bad token document: {e}")))?;
                let storage_url = doc["token"]["catalog"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| s["type"] == "object-store")
                    .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                    .find(|e| {
                        e["interface"] == "public"
                            && region.as_ref().is_none_or(|r| {
                                e["region"] == r.as_str() || e["region_id"] == r.as_str()
                            })
                    })
                    .and_then(|e| e["url"].as_str().map(String::from))
                    .ok_or_else(|| {
                        auth_err("the service catalog has no public object-store endpoint".into())
                    })?;
                let renew_at = doc["token"]["expires_at"]
                    .as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| {
                        let left =
                            (t.timestamp() - chrono::Utc::now().timestamp() - 300).max(0) as u64;
                        Instant::now() + Duration::from_secs(left)
                    });
                Ok(Session {
                    token,
                    storage_url,
                    renew_at,
                })
            }
        }
    }

    /// Sends a request with a valid token; logs in again once on 401.
    fn send(
        &self,
        what: &str,
        build: &dyn Fn(&Client, &str, &str) -> RequestBuilder,
    ) -> Result<Response, StoreError> {
        for attempt in 0..2 {
            let (token, base) = {
                let mut s = self.session.lock().expect("session lock");
                let stale = s
                    .as_ref()
                    .is_none_or(|s| s.renew_at.is_some_and(|t| Instant::now() >= t));
                if stale || attempt > 0 {
                    *s = Some(self.login()?);
                }
                let s = s.as_ref().expect("logged in");
                (
                    s.token.clone(),
                    format!("{}/{}", s.storage_url.trim_end_matches('/'), self.container),
                )
            };
            let resp = build(&self.http, &base, &token)
                .header("X-Auth-Token", token.as_str())
                .send()
                .map_err(|e| StoreError::Http {
                    what: what.to_string(),
                    reason: transport(&e),
                })?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                continue;
            }
            return Ok(resp);
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn object_url(&self, base: &str, name: &str) -> String {
        format!("{base}/{}{name}", self.prefix)
    }
}

fn transport(e: &reqwest::Error) -> String {
    // reqwest's Display includes the URL; ours carry no credentials, but keep it short.
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn failed(what: &str, resp: Response) -> StoreError {
    let status = resp.status();
    let body: String = resp.text().unwrap_or_default().chars().take(200).collect();
    StoreError::Http {
        what: what.to_string(),
        reason: format!("HTTP {status} {}", body.trim()),
    }
}

impl ObjectStore for SwiftStore {
    fn location(&self) -> String {
        format!(
            "swift:{}/{}{}",
            self.auth.url(),
            self.container,
            if self.prefix.is_empty() {
                String::new()
            } else {
                format!("/{}", self.prefix.trim_end_matches('/'))
            }
        )
    }

    fn ensure(&self) -> Result<(), StoreError> {
        let what = format!("create container {}", self.container);
        let resp = self.send(&what, &|c, base, _| c.put(base.to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(failed(&what, resp))
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Entry {
            name: String,
            bytes: u64,
        }
        let full = format!("{}{prefix}", self.prefix);
        let what = format!("list {full}");
        let mut out = Vec::new();
        let mut marker = String::new();
        loop {
            let (full, marker_now) = (full.clone(), marker.clone());
            let resp = self.send(&what, &move |c, base, _| {
                c.get(base.to_string()).query(&[
                    ("format", "json"),
                    ("prefix", full.as_str()),
                    ("marker", marker_now.as_str()),
                    ("limit", "10000"),
                ])
            })?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(out);
            }
            if !resp.status().is_success() {
                return Err(failed(&what, resp));
            }
            let page: Vec<Entry> = resp.json().map_err(|e| StoreError::Http {
                what: what.clone(),
                reason: format!("bad listing: {e}"),
            })?;
            let Some(last) = page.last() else {
                break;
            };
            marker = last.name.clone();
            let n = page.len();
            out.extend(page.into_iter().map(|e| ObjectInfo {
                name: e.name[self.prefix.len()..].to_string(),
                size: e.bytes,
            }));
            if n < 10000 {
                break;
            }
        }
        Ok(out)
    }

    fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        let what = format!("get {name}");
        let resp = self.send(&what, &|c, base, _| c.get(self.object_url(base, name)))?;
        match resp.status() {
            s if s.is_success() => resp.bytes().map_err(|e| StoreError::Http {
                what,
                reason: transport(&e),
            }),
            StatusCode::NOT_FOUND => Err(StoreError::NotFound(name.into())),
            _ => Err(failed(&what, resp)),
        }
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        let what = format!("get {name} at {offset}+{len}");
        let range = format!("bytes={offset}-{}", offset + len.max(1) - 1);
        let resp = self.send(&what, &|c, base, _| {
            c.get(self.object_url(base, name))
                .header("Range", range.as_str())
        })?;
        match resp.status() {
            s if s.is_success() => {
                let b = resp.bytes().map_err(|e| StoreError::Http {
                    what: what.clone(),
                    reason: transport(&e),
                })?;
                if b.len() as u64 != len {
                    return Err(StoreError::Http {
                        what,
                        reason: format!("got {} bytes", b.len()),
                    });
                }
                Ok(b)
            }
            StatusCode::NOT_FOUND => Err(StoreError::NotFound(name.into())),
            _ => Err(failed(&what, resp)),
        }
    }

    fn put(&self, name: &str, parts: &[Bytes]) -> Result<(), StoreError> {
        let what = format!("put {name}");
        let total: usize = parts.iter().map(Bytes::len).sum();
        let mut body = Vec::with_capacity(total);
        for p in parts {
            body.extend_from_slice(p);
        }
        let body = Bytes::from(body);
        // Swift writes an object whole or not at all; the ETag makes it verify the bytes.
        let etag = {
            use md5::Digest;
            hex::encode(md5::Md5::digest(&body))
        };
        let resp = self.send(&what, &|c, base, _| {
            c.put(self.object_url(base, name))
                .header("ETag", etag.as_str())
                .body(body.clone())
        })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(failed(&what, resp))
        }
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        let what = format!("delete {name}");
        let resp = self.send(&what, &|c, base, _| c.delete(self.object_url(base, name)))?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(failed(&what, resp))
        }
    }
}
