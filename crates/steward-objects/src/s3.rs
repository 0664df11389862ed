//! S3-compatible object storage through opendal's S3 service (SigV4 signing,
//! listing, ranged reads). opendal is asynchronous; this store owns a small
//! runtime and blocks on it, so callers stay synchronous like the others.

use std::future::IntoFuture;
use std::time::Duration;

use bytes::Bytes;

use crate::{ObjectInfo, ObjectStore, StoreError};

/// Where and how to reach an S3 bucket.
#[derive(Clone)]
pub struct S3Config {
    /// e.g. `https://s3.eu-central-1.amazonaws.com` or `http://127.0.0.1:8080`.
    pub endpoint: String,
    /// The bucket (must exist).
    pub bucket: String,
    /// Signing region.
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// `bucket.host` addressing instead of `host/bucket`.
    pub virtual_host_style: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Config({}/{}, ***)", self.endpoint, self.bucket)
    }
}

/// An S3 bucket as an object store.
pub struct S3Store {
    op: opendal::Operator,
    rt: tokio::runtime::Runtime,
    location: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Store({})", self.location)
    }
}

fn map(what: String, e: opendal::Error) -> StoreError {
    if e.kind() == opendal::ErrorKind::NotFound {
        return StoreError::NotFound(what);
    }
    StoreError::Http {
        what,
        reason: e.to_string(),
    }
}

impl S3Store {
    /// A store on `cfg`'s bucket.
    pub fn new(cfg: &S3Config) -> Result<S3Store, StoreError> {
        // Our own HTTP client for opendal: rustls with ring and the system's roots,
        // as every other TLS client in steward.
        let client = steward_net::http(steward_net::HttpOptions {
            timeout: None,
            connect_timeout: Some(Duration::from_secs(10)),
            no_proxy: false,
        })?;
        let transport = opendal::HttpTransporter::new(
            opendal_http_transport_reqwest::ReqwestTransport::new(client),
        );
        let mut b = opendal::services::S3::default()
            .endpoint(&cfg.endpoint)
            .bucket(&cfg.bucket)
            .region(&cfg.region)
            .access_key_id(&cfg.access_key)
            .secret_access_key(&cfg.secret_key)
            // Credentials come from the spec only, never from ~/.aws or EC2 metadata.
            .disable_config_load()
            .disable_ec2_metadata();
        if cfg.virtual_host_style {
            b = b.enable_virtual_host_style();
        }
        let op = opendal::Operator::new(b)
            .map_err(|e| map("S3 configuration".into(), e))?
            .layer(
                opendal::layers::TimeoutLayer::new()
                    .with_timeout(Duration::from_secs(300))
                    .with_io_timeout(Duration::from_secs(60)),
            )
            .with_context(opendal::OperationContext::new().with_http_transport(transport));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                what: "S3 runtime".into(),
                source: e,
            })?;
        Ok(S3Store {
            op,
            rt,
            location: format!("s3:{}/{}", cfg.endpoint.trim_end_matches('/'), cfg.bucket),
        })
    }
}

impl ObjectStore for S3Store {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn ensure(&self) -> Result<(), StoreError> {
        // Buckets are created by their owner; check that this one answers.
        self.rt
            .block_on(self.op.list_with("/").limit(1).into_future())
            .map(|_| ())
            .map_err(|e| map(format!("bucket of {}", self.location), e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..=i],
            None => "/",
        };
        let entries = self
            .rt
            .block_on(self.op.list_with(dir).recursive(true).into_future())
            .or_else(|e| {
                if e.kind() == opendal::ErrorKind::NotFound {
                    Ok(Vec::new())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| map(format!("list {prefix}"), e))?;
        let mut out: Vec<ObjectInfo> = entries
            .into_iter()
            .filter(|e| !e.path().ends_with('/') && e.path().starts_with(prefix))
            .map(|e| ObjectInfo {
                name: e.path().to_string(),
                size: e.metadata().content_length(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        self.rt
            .block_on(self.op.read(name))
            .map(|b| b.to_bytes())
            .map_err(|e| map(name.to_string(), e))
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        let b = self
            .rt
            .block_on(
                self.op
                    .read_with(name)
                    .range(offset..offset + len)
                    .into_future(),
            )
            .map(|b| b.to_bytes())
            .map_err(|e| map(name.to_string(), e))?;
        if b.len() as u64 != len {
            return Err(StoreError::Http {
                what: format!("get {name} at {offset}+{len}"),
                reason: format!("got {} bytes", b.len()),
            });
        }
        Ok(b)
    }

    fn put(&self, name: &str, parts: &[Bytes]) -> Result<(), StoreError> {
        // One PUT: S3 stores an object whole or not at all.
        let mut body = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
        for p in parts {
            body.extend_from_slice(p);
        }
        self.rt
            .block_on(self.op.write(name, body))
            .map(|_| ())
            .map_err(|e| map(format!("put {name}"), e))
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.rt
            .block_on(self.op.delete(name))
            .map_err(|e| map(format!("delete {name}"), e))
    }
}
