//! Glance v2: images steward uploads (with their build's digest as a tag and
//! properties) and finds again. Written from the Image API v2 reference and
//! tested against Glance (file store) in the test bed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::Error;
use crate::session::{Body, Call, Session};

/// An image as Glance shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `queued`, `saving`, `active`, `killed`, `deleted`, …
    pub status: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Properties beyond Glance's own fields (string values only).
    pub properties: BTreeMap<String, String>,
    /// Size in bytes, once uploaded.
    pub size: Option<u64>,
    /// When it was made (RFC 3339).
    pub created_at: String,
}

/// Glance's own fields, which are not user properties.
const CORE: &[&str] = &[
    "id",
    "name",
    "status",
    "tags",
    "size",
    "virtual_size",
    "created_at",
    "updated_at",
    "visibility",
    "owner",
    "protected",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "disk_format",
    "container_format",
    "min_disk",
    "min_ram",
    "file",
    "schema",
    "self",
    "direct_url",
    "locations",
    "stores",
    "os_hidden",
];

impl ImageInfo {
    fn from_json(v: &Value) -> Result<ImageInfo, Error> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Invalid("an image that is not an object".into()))?;
        Ok(ImageInfo {
            id: v["id"]
                .as_str()
                .ok_or_else(|| Error::Invalid("an image without an id".into()))?
                .to_string(),
            name: v["name"].as_str().unwrap_or_default().to_string(),
            status: v["status"].as_str().unwrap_or_default().to_string(),
            tags: v["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(String::from))
                .collect(),
            properties: obj
                .iter()
                .filter(|(k, _)| !CORE.contains(&k.as_str()))
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect(),
            size: v["size"].as_u64(),
            created_at: v["created_at"].as_str().unwrap_or_default().to_string(),
        })
    }
}

/// A new image's record.
#[derive(Debug, Clone)]
pub struct NewImage {
    /// Name.
    pub name: String,
    /// `raw`, `qcow2`, `aki`, `ari`, …
    pub disk_format: String,
    /// `bare`, `aki`, `ari`, …
    pub container_format: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Extra properties (each at most 255 characters).
    pub properties: BTreeMap<String, String>,
}

/// Glance for one session.
#[derive(Debug, Clone)]
pub struct Images {
    session: Arc<Session>,
}

impl Images {
    /// Glance through `session`.
    pub fn new(session: Arc<Session>) -> Images {
        Images { session }
    }

    /// Makes the image's record (status `queued`); returns its id.
    pub async fn create(&self, image: &NewImage) -> Result<String, Error> {
        let mut doc = json!({
            "name": image.name,
            "disk_format": image.disk_format,
            "container_format": image.container_format,
            "visibility": "private",
            "tags": image.tags,
        });
        for (k, v) in &image.properties {
            if CORE.contains(&k.as_str()) {
                return Err(Error::Invalid(format!(
                    "`{k}` is Glance's own field, not a property"
                )));
            }
            doc[k] = json!(v);
        }
        let answer = self
            .session
            .send(Call::new("image", Method::POST, "/v2/images").json(doc))
            .await?
            .json()?;
        Ok(ImageInfo::from_json(&answer)?.id)
    }

    /// Uploads the image's data from `file` and waits until Glance says the
    /// image is `active`.
    pub async fn upload(&self, id: &str, file: &Path, limit: Duration) -> Result<(), Error> {
        std::fs::File::open(file)
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", file.display())))?;
        let mut call = Call::new("image", Method::PUT, format!("/v2/images/{id}/file"));
        call.body = Body::File(file.to_path_buf());
        self.session.send(call).await?;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let image = self.get(id).await?.ok_or_else(|| {
                Error::NotFound(format!("image {id} disappeared during its upload"))
            })?;
            match image.status.as_str() {
                "active" => return Ok(()),
                "killed" | "deleted" => {
                    return Err(Error::Invalid(format!(
                        "Glance {} image {id} after its upload",
                        if image.status == "killed" {
                            "refused"
                        } else {
                            "deleted"
                        }
                    )));
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::Timeout(format!(
                        "image {id} was not active {} s after its upload (status {})",
                        limit.as_secs(),
                        image.status
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    /// The image, or `None` when Glance does not know it.
    pub async fn get(&self, id: &str) -> Result<Option<ImageInfo>, Error> {
        match self
            .session
            .send(Call::new("image", Method::GET, format!("/v2/images/{id}")))
            .await
        {
            Ok(a) => ImageInfo::from_json(&a.json()?).map(Some),
            Err(Error::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every image carrying `tag` the project can see, all pages.
    pub async fn with_tag(&self, tag: &str) -> Result<Vec<ImageInfo>, Error> {
        let mut out = Vec::new();
        let mut path = format!("/v2/images?tag={tag}&limit=100");
        loop {
            let doc = self
                .session
                .send(Call::new("image", Method::GET, path.clone()))
                .await?
                .json()?;
            for i in doc["images"].as_array().into_iter().flatten() {
                out.push(ImageInfo::from_json(i)?);
            }
            match doc["next"].as_str() {
                // `next` is a path under the endpoint, query included.
                Some(next) => path = next.to_string(),
                None => return Ok(out),
            }
        }
    }

    /// Adds a tag to the image (a tag it has already is fine).
    pub async fn add_tag(&self, id: &str, tag: &str) -> Result<(), Error> {
        let tag = percent_encoding::utf8_percent_encode(tag, percent_encoding::NON_ALPHANUMERIC);
        self.session
            .send(Call::new(
                "image",
                Method::PUT,
                format!("/v2/images/{id}/tags/{tag}"),
            ))
            .await
            .map(|_| ())
    }

    /// Polls the image until it is `active` (its data uploaded); an image
    /// that is `killed` or `deleted`, or still not active after `limit`, is
    /// an error.
    pub async fn wait_active(&self, id: &str, limit: Duration) -> Result<ImageInfo, Error> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let Some(i) = self.get(id).await? else {
                return Err(Error::NotFound(format!(
                    "image {id} disappeared while its data was being uploaded"
                )));
            };
            match i.status.as_str() {
                "active" => return Ok(i),
                "killed" | "deleted" | "pending_delete" => {
                    return Err(Error::Invalid(format!(
                        "image {id} is {} (its upload failed)",
                        i.status
                    )));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "image {id} was not active within {} s (status {})",
                    limit.as_secs(),
                    i.status
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Deletes the image (already gone is fine).
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        match self
            .session
            .send(Call::new(
                "image",
                Method::DELETE,
                format!("/v2/images/{id}"),
            ))
            .await
        {
            Ok(_) | Err(Error::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
