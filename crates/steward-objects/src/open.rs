//! Opening the object store a spec's `[store.NAME]` describes (local, S3,
//! Swift), with its credentials resolved right before use. Backups and images
//! both open their stores here.

use std::sync::Arc;

use steward_spec::{Resolver, Spec, StoreKind};

use crate::{LocalStore, ObjectStore, S3Config, S3Store, StoreError, SwiftAuth, SwiftStore};

/// Why a store could not be opened; callers branch on the kind.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No `[store.NAME]` of that name (validation makes this rare).
    #[error("no store `{0}`")]
    Unknown(String),
    /// A credential reference did not resolve.
    #[error("store `{store}`: {reason}")]
    Secret {
        /// The store.
        store: String,
        /// Why (never the secret).
        reason: String,
    },
    /// The store's client could not be made.
    #[error("store `{store}`: {source}")]
    Store {
        /// The store.
        store: String,
        /// The cause.
        source: StoreError,
    },
}

/// The object store a spec store names.
pub fn open(
    spec: &Spec,
    store: &str,
    resolver: &dyn Resolver,
) -> Result<Arc<dyn ObjectStore>, OpenError> {
    let s = spec
        .stores
        .get(store)
        .ok_or_else(|| OpenError::Unknown(store.to_string()))?;
    let secret = |t: &steward_spec::Text| {
        t.resolve(resolver)
            .map(|s| s.expose().to_string())
            .map_err(|e| OpenError::Secret {
                store: store.to_string(),
                reason: e.to_string(),
            })
    };
    Ok(match &s.kind {
        StoreKind::Local { path } => Arc::new(LocalStore::new(path)),
        StoreKind::S3 {
            endpoint,
            bucket,
            region,
            access_key,
            secret_key,
            virtual_host_style,
        } => Arc::new(
            S3Store::new(&S3Config {
                endpoint: endpoint.clone(),
                bucket: bucket.clone(),
                region: region.clone(),
                access_key: secret(access_key)?,
                secret_key: secret(secret_key)?,
                virtual_host_style: *virtual_host_style,
            })
            .map_err(|source| OpenError::Store {
                store: store.into(),
                source,
            })?,
        ),
        StoreKind::Swift {
            auth_url,
            user,
            key,
            project,
            user_domain,
            project_domain,
            region,
            container,
        } => {
            let auth = match project {
                None => SwiftAuth::TempAuth {
                    url: auth_url.clone(),
                    user: secret(user)?,
                    key: secret(key)?,
                },
                Some(p) => SwiftAuth::Keystone {
                    url: auth_url.clone(),
                    user: secret(user)?,
                    password: secret(key)?,
                    user_domain: user_domain.clone(),
                    project: p.clone(),
                    project_domain: project_domain.clone(),
                    region: region.clone(),
                },
            };
            Arc::new(
                SwiftStore::new(auth, container, "").map_err(|source| OpenError::Store {
                    store: store.into(),
                    source,
                })?,
            )
        }
    })
}
