//! Object stores: where backups (and later images) live. A local directory by
//! default; OpenStack Swift (tempauth v1 or Keystone v3, logged in and refreshed by
//! steward) when configured.
//!
//! The interface is deliberately small and blocking: names are `/`-separated keys,
//! a `put` is all-or-nothing (a reader never sees half an object), and every network
//! call has a timeout. Callers that are async run it on a blocking thread.

mod local;
mod open;
mod s3;
mod swift;

use bytes::Bytes;

pub use local::LocalStore;
pub use open::{OpenError, open};
pub use s3::{S3Config, S3Store};
pub use swift::{SwiftAuth, SwiftStore};

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key, relative to the store (and its prefix).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// Why an object store operation failed. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("object `{0}` not found")]
    NotFound(String),
    /// Logging in failed or was refused.
    #[error("authentication failed at {url}: {reason}")]
    Auth {
        /// The auth endpoint (no credentials in it).
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server answered with an error or could not be reached.
    #[error("{what}: {reason}")]
    Http {
        /// What was being done, with the object name.
        what: String,
        /// Status and body excerpt, or the transport error.
        reason: String,
    },
}

impl From<steward_net::NetError> for StoreError {
    /// A client that could not be made, as every store reports it.
    fn from(e: steward_net::NetError) -> Self {
        StoreError::Http {
            what: "HTTP client".into(),
            reason: e.to_string(),
        }
    }
}

/// A place that keeps named blobs.
pub trait ObjectStore: Send + Sync + 'static {
    /// Where it is, for messages (no credentials).
    fn location(&self) -> String;
    /// Creates the container or directory when missing.
    fn ensure(&self) -> Result<(), StoreError>;
    /// Every object whose name starts with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// A whole object.
    fn get(&self, name: &str) -> Result<Bytes, StoreError>;
    /// `len` bytes of an object from `offset`.
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes, StoreError>;
    /// Stores an object made of `parts`, replacing any older one, all or nothing.
    fn put(&self, name: &str, parts: &[Bytes]) -> Result<(), StoreError>;
    /// Removes an object; a missing one is not an error.
    fn delete(&self, name: &str) -> Result<(), StoreError>;
}

/// A store seen through a key prefix (`repo/` + name), e.g. one repository in a
/// shared container.
pub struct Prefixed {
    inner: std::sync::Arc<dyn ObjectStore>,
    prefix: String,
}

impl Prefixed {
    /// `inner` with every key under `prefix/` (an empty prefix changes nothing).
    pub fn new(inner: std::sync::Arc<dyn ObjectStore>, prefix: &str) -> Prefixed {
        let mut prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Prefixed { inner, prefix }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl ObjectStore for Prefixed {
    fn location(&self) -> String {
        format!(
            "{}/{}",
            self.inner.location(),
            self.prefix.trim_end_matches('/')
        )
    }
    fn ensure(&self) -> Result<(), StoreError> {
        self.inner.ensure()
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        Ok(self
            .inner
            .list(&self.key(prefix))?
            .into_iter()
            .map(|o| ObjectInfo {
                name: o.name[self.prefix.len()..].to_string(),
                size: o.size,
            })
            .collect())
    }
    fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        self.inner.get(&self.key(name))
    }
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        self.inner.get_range(&self.key(name), offset, len)
    }
    fn put(&self, name: &str, parts: &[Bytes]) -> Result<(), StoreError> {
        self.inner.put(&self.key(name), parts)
    }
    fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.inner.delete(&self.key(name))
    }
}
