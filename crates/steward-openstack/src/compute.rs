//! Nova: servers, flavors, actions. Written from the Compute API reference
//! (microversion 2.52: `networks` may be `"none"`/`"auto"` since 2.37, tags at
//! create time since 2.52) and tested against Nova in the test bed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::Error;
use crate::session::{Call, Session};

/// The microversion steward speaks.
pub const MICROVERSION: (u32, u32) = (2, 52);

/// Which networks a new server gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Networks {
    /// No network at all.
    None,
    /// Nova picks (or makes) the project's network.
    Auto,
    /// These networks (ids), one port each.
    Ids(Vec<String>),
}

/// A server to make.
#[derive(Debug, Clone)]
pub struct NewServer {
    /// Its name.
    pub name: String,
    /// The Glance image it boots from.
    pub image_id: String,
    /// The flavor's id.
    pub flavor_id: String,
    /// Its networks.
    pub networks: Networks,
    /// Key/value metadata (at most 255 characters each).
    pub metadata: BTreeMap<String, String>,
    /// Tags (what `list` filters on).
    pub tags: Vec<String>,
    /// User data (cloud-init), sent base64-encoded.
    pub user_data: Option<String>,
    /// Security group names.
    pub security_groups: Vec<String>,
    /// SSH key pair name.
    pub key_name: Option<String>,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// Attach a config drive (user data without a metadata service).
    pub config_drive: bool,
}

impl NewServer {
    /// A server from `image_id` of `flavor_id` on `networks`, with no
    /// metadata, tags, user data, security groups, key, zone or config drive
    /// (set the fields for those).
    pub fn new(name: &str, image_id: &str, flavor_id: &str, networks: Networks) -> NewServer {
        NewServer {
            name: name.to_string(),
            image_id: image_id.to_string(),
            flavor_id: flavor_id.to_string(),
            networks,
            metadata: BTreeMap::new(),
            tags: Vec::new(),
            user_data: None,
            security_groups: Vec::new(),
            key_name: None,
            availability_zone: None,
            config_drive: false,
        }
    }
}

/// One of a server's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The network's name.
    pub network: String,
    /// The address.
    pub addr: String,
    /// 4 or 6.
    pub version: u8,
    /// `fixed` or `floating`.
    pub kind: String,
}

/// A server as Nova shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `BUILD`, `ACTIVE`, `SHUTOFF`, `ERROR`, …
    pub status: String,
    /// Task state (e.g. `deleting`), when any.
    pub task_state: Option<String>,
    /// Its addresses.
    pub addresses: Vec<Address>,
    /// Why it failed, when it did (Nova's fault message).
    pub fault: Option<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Tags.
    pub tags: Vec<String>,
    /// The image it booted from.
    pub image_id: Option<String>,
}

impl Server {
    fn from_json(s: &Value) -> Result<Server, Error> {
        let id = s["id"]
            .as_str()
            .ok_or_else(|| Error::Invalid("a server without an id".into()))?;
        let mut addresses = Vec::new();
        if let Some(nets) = s["addresses"].as_object() {
            for (network, addrs) in nets {
                for a in addrs.as_array().into_iter().flatten() {
                    if let Some(addr) = a["addr"].as_str() {
                        addresses.push(Address {
                            network: network.clone(),
                            addr: addr.to_string(),
                            version: a["version"].as_u64().unwrap_or(4) as u8,
                            kind: a["OS-EXT-IPS:type"].as_str().unwrap_or("fixed").to_string(),
                        });
                    }
                }
            }
        }
        let strings = |v: &Value| -> BTreeMap<String, String> {
            v.as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        };
        Ok(Server {
            id: id.to_string(),
            name: s["name"].as_str().unwrap_or_default().to_string(),
            status: s["status"].as_str().unwrap_or("UNKNOWN").to_string(),
            task_state: s["OS-EXT-STS:task_state"].as_str().map(String::from),
            addresses,
            fault: s["fault"]["message"]
                .as_str()
                .map(|m| match s["fault"]["code"].as_u64() {
                    Some(code) => format!("{m} (fault code {code})"),
                    None => m.to_string(),
                }),
            metadata: strings(&s["metadata"]),
            tags: s["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(String::from))
                .collect(),
            image_id: s["image"]["id"].as_str().map(String::from),
        })
    }

    /// The first fixed IPv4 address, on `network` when named.
    pub fn fixed_ipv4(&self, network: Option<&str>) -> Option<&str> {
        self.addresses
            .iter()
            .find(|a| a.version == 4 && a.kind == "fixed" && network.is_none_or(|n| a.network == n))
            .map(|a| a.addr.as_str())
    }
}

/// Nova for one session.
#[derive(Debug, Clone)]
pub struct Compute {
    session: Arc<Session>,
    negotiated: Arc<OnceCell<HeaderValue>>,
}

impl Compute {
    /// Nova through `session`.
    pub fn new(session: Arc<Session>) -> Compute {
        Compute {
            session,
            negotiated: Arc::new(OnceCell::new()),
        }
    }

    /// The session.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The microversion header, after checking once that Nova speaks
    /// [`MICROVERSION`] (its version document's `version` is the newest).
    async fn microversion(&self) -> Result<HeaderValue, Error> {
        self.negotiated
            .get_or_try_init(|| async {
                let doc = self
                    .session
                    .send(Call::new("compute", Method::GET, "/"))
                    .await?
                    .json()?;
                let v = &doc["version"];
                let newest = v["version"].as_str().unwrap_or("");
                let parse = |s: &str| -> Option<(u32, u32)> {
                    let (a, b) = s.split_once('.')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                };
                match parse(newest) {
                    Some(max) if max >= MICROVERSION => {}
                    _ => {
                        return Err(Error::Unsupported(format!(
                            "Nova speaks compute API microversions up to `{newest}`; steward needs {}.{} (OpenStack Queens or newer)",
                            MICROVERSION.0, MICROVERSION.1
                        )));
                    }
                }
                HeaderValue::from_str(&format!(
                    "compute {}.{}",
                    MICROVERSION.0, MICROVERSION.1
                ))
                .map_err(|e| Error::Invalid(e.to_string()))
            })
            .await
            .cloned()
    }

    async fn call(&self, method: Method, path: impl Into<String>) -> Result<Call, Error> {
        Ok(Call::new("compute", method, path).header(
            HeaderName::from_static("openstack-api-version"),
            self.microversion().await?,
        ))
    }

    /// The id of the flavor with this id or name.
    pub async fn flavor_id(&self, flavor: &str) -> Result<String, Error> {
        let doc = self
            .session
            .send(self.call(Method::GET, "/flavors?is_public=None").await?)
            .await?
            .json()?;
        let all = doc["flavors"].as_array().cloned().unwrap_or_default();
        all.iter()
            .find(|f| f["id"] == flavor)
            .or_else(|| all.iter().find(|f| f["name"] == flavor))
            .and_then(|f| f["id"].as_str().map(String::from))
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().filter_map(|f| f["name"].as_str()).collect();
                Error::NotFound(format!(
                    "flavor `{flavor}` does not exist (flavors: {})",
                    names.join(", ")
                ))
            })
    }

    /// Asks Nova for a server; returns its id (it is `BUILD` until it is not).
    pub async fn create(&self, s: &NewServer) -> Result<String, Error> {
        let mut server = json!({
            "name": s.name,
            "imageRef": s.image_id,
            "flavorRef": s.flavor_id,
            "networks": match &s.networks {
                Networks::None => json!("none"),
                Networks::Auto => json!("auto"),
                Networks::Ids(ids) => json!(ids.iter().map(|i| json!({"uuid": i})).collect::<Vec<_>>()),
            },
            "metadata": s.metadata,
            "tags": s.tags,
        });
        if let Some(u) = &s.user_data {
            if u.len() > 49_000 {
                return Err(Error::Invalid(format!(
                    "user data of {} bytes is more than Nova takes (65,535 once base64-encoded)",
                    u.len()
                )));
            }
            server["user_data"] = json!(base64::engine::general_purpose::STANDARD.encode(u));
        }
        if !s.security_groups.is_empty() {
            server["security_groups"] = json!(
                s.security_groups
                    .iter()
                    .map(|n| json!({"name": n}))
                    .collect::<Vec<_>>()
            );
        }
        if let Some(k) = &s.key_name {
            server["key_name"] = json!(k);
        }
        if let Some(z) = &s.availability_zone {
            server["availability_zone"] = json!(z);
        }
        if s.config_drive {
            server["config_drive"] = json!(true);
        }
        let doc = self
            .session
            .send(
                self.call(Method::POST, "/servers")
                    .await?
                    .json(json!({ "server": server })),
            )
            .await?
            .json()?;
        doc["server"]["id"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| Error::Invalid("Nova's answer to a create has no server id".into()))
    }

    /// The server, or `None` when Nova does not know it or shows it `DELETED`.
    pub async fn get(&self, id: &str) -> Result<Option<Server>, Error> {
        match self
            .session
            .send(self.call(Method::GET, format!("/servers/{id}")).await?)
            .await
        {
            // Just after a delete Nova may still show it, as DELETED: gone.
            Ok(a) => Server::from_json(&a.json()?["server"])
                .map(|s| (s.status != "DELETED").then_some(s)),
            Err(Error::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks Nova to delete the server (already gone is fine).
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        match self
            .session
            .send(self.call(Method::DELETE, format!("/servers/{id}")).await?)
            .await
        {
            Ok(_) | Err(Error::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes the server and waits until Nova no longer shows it.
    pub async fn delete_and_wait(&self, id: &str, limit: Duration) -> Result<(), Error> {
        self.delete(id).await?;
        let deadline = tokio::time::Instant::now() + limit;
        let mut pause = Duration::from_millis(250);
        loop {
            match self.get(id).await? {
                None => return Ok(()),
                Some(s) if s.status == "SOFT_DELETED" => return Ok(()),
                Some(s) if s.status == "ERROR" && s.task_state.is_none() => {
                    // A delete that failed leaves the server in ERROR: ask again.
                    self.delete(id).await?;
                }
                Some(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "server {id} was still there {} s after it was deleted",
                    limit.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Every server carrying `tag`, all pages (not those already `DELETED`).
    pub async fn list(&self, tag: &str) -> Result<Vec<Server>, Error> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut path = format!("/servers/detail?tags={tag}&limit=200");
            if let Some(m) = &marker {
                path.push_str(&format!("&marker={m}"));
            }
            let doc = self
                .session
                .send(self.call(Method::GET, path).await?)
                .await?
                .json()?;
            let page = doc["servers"].as_array().cloned().unwrap_or_default();
            for s in &page {
                let server = Server::from_json(s)?;
                // A server being deleted can show as DELETED for a moment: it is gone.
                if server.status != "DELETED" {
                    out.push(server);
                }
            }
            let more = doc["servers_links"]
                .as_array()
                .is_some_and(|l| l.iter().any(|l| l["rel"] == "next"));
            match (more, out.last()) {
                (true, Some(last)) => marker = Some(last.id.clone()),
                _ => return Ok(out),
            }
        }
    }

    /// A server action (`{"os-start": null}`, `{"os-stop": null}`, …).
    pub async fn action(&self, id: &str, action: Value) -> Result<(), Error> {
        self.session
            .send(
                self.call(Method::POST, format!("/servers/{id}/action"))
                    .await?
                    .json(action),
            )
            .await
            .map(|_| ())
    }

    /// Snapshots the server (`createImage`): the id of the Glance image Nova
    /// makes, which goes `active` once the server's disk is uploaded (see
    /// [`crate::image::Images::wait_active`]). `metadata` becomes the image's
    /// properties. Since microversion 2.45 the answer's body names the image.
    pub async fn create_image(
        &self,
        id: &str,
        name: &str,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, Error> {
        let answer = self
            .session
            .send(
                self.call(Method::POST, format!("/servers/{id}/action"))
                    .await?
                    .json(serde_json::json!({
                        "createImage": { "name": name, "metadata": metadata }
                    })),
            )
            .await?;
        answer.json()?["image_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Invalid("createImage answered without an image_id".into()))
    }

    /// Polls the server (every second once past the first half-second: a
    /// boot seen late is a rollout slowed) until its status is `status`, it
    /// goes to `ERROR` (its fault is the error) or `limit` passes.
    pub async fn wait(&self, id: &str, status: &str, limit: Duration) -> Result<Server, Error> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pause = Duration::from_millis(500);
        loop {
            let Some(s) = self.get(id).await? else {
                return Err(Error::NotFound(format!(
                    "server {id} disappeared while waiting for it to be {status}"
                )));
            };
            if s.status == status {
                return Ok(s);
            }
            if s.status == "ERROR" {
                return Err(Error::ServerFailed {
                    id: id.to_string(),
                    fault: s
                        .fault
                        .unwrap_or_else(|| "Nova gave no fault message".into()),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "server {id} was not {status} within {} s (status {})",
                    limit.as_secs(),
                    s.status
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}
