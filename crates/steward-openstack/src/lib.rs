//! steward's OpenStack client: a Keystone v3 session ([`Session`]) and the
//! few calls of Nova ([`Compute`]), Glance ([`Images`]) and Neutron
//! ([`network`]) the fleet's OpenStack provider makes. Configuration comes
//! from `clouds.yaml`, the `OS_*` variables and the spec ([`config`]).
//!
//! Why not an SDK crate: `openstack_sdk` 0.22 (maintained, generated from the
//! API definitions) turns on reqwest's `rustls` feature, which builds a second
//! TLS crypto library (aws-lc, from C) next to steward's ring, and brings the
//! sync API of every service and nine auth plugin crates (OIDC, WebSSO with a
//! browser opener); `openstack` 0.6 with `osauth` 0.5 is built on reqwest 0.12
//! and the unmaintained `serde_yaml`, and cannot send `"networks": "none"`.
//! The calls steward needs are few and follow the public API references.

pub mod compute;
pub mod config;
pub mod image;
pub mod network;
pub mod session;

pub use compute::{Compute, Networks, NewServer, Server};
pub use config::{CloudConfig, Settings};
pub use image::{ImageInfo, Images, NewImage};
pub use network::network;
pub use session::Session;

/// What went wrong talking to a cloud.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cloud's configuration is incomplete or unreadable.
    #[error("{0}")]
    Config(String),
    /// Keystone refused the credentials or could not be reached.
    #[error("logging in to Keystone at {url} failed: {reason}")]
    Auth {
        /// Keystone's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A service answered with an error.
    #[error("{service}: {method} {url}: HTTP {status}: {message}")]
    Api {
        /// The catalog type.
        service: String,
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The service's message.
        message: String,
    },
    /// The service could not be reached (after retries).
    #[error("{service}: {url}: {reason}")]
    Transport {
        /// The catalog type.
        service: String,
        /// URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The catalog has no endpoint for the service.
    #[error("the service catalog has no {interface} `{service}` endpoint{}", region.as_ref().map(|r| format!(" in region {r}")).unwrap_or_default())]
    Catalog {
        /// The catalog type.
        service: String,
        /// The interface asked for.
        interface: String,
        /// The region asked for.
        region: Option<String>,
    },
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A server went to ERROR.
    #[error("server {id} failed: {fault}")]
    ServerFailed {
        /// The server's id.
        id: String,
        /// Nova's fault message.
        fault: String,
    },
    /// Waiting took too long.
    #[error("{0}")]
    Timeout(String),
    /// The cloud is too old for a call.
    #[error("{0}")]
    Unsupported(String),
    /// An answer steward could not read, or a request it will not send.
    #[error("{0}")]
    Invalid(String),
}
