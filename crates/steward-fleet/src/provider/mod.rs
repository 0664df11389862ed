//! The provider boundary: where instances come from. The fleet controller
//! and the planner speak only of [`InstanceHandle`]s — an id, the address the
//! instance serves on, and the provider's own record, which the fleet stores
//! with the instance and hands back without reading it. So a provider is one
//! implementation of [`Provider`]:
//!
//! - [`Local`] runs instances on this machine as supervised processes, each in
//!   its own copy of the unpacked image, on its own loopback port, in its own
//!   process group (it outlives a `kill -9` of steward and is adopted again);
//! - [`OpenStack`] makes them Nova servers on one `[cloud.NAME]`, from the
//!   build uploaded to Glance;
//! - [`Providers`] sends each call to the provider of the service (or of the
//!   instance's record): the one the fleet holds when clouds are in the spec;
//! - [`recording::Recording`] runs nothing: it records every call, answers on
//!   loopback for each started instance, and fails on command — the fleet's
//!   tests drive the controller through it to prove the controller does not
//!   know which provider it drives.
//!
//! Every call is async; the fleet bounds each with a timeout, so a provider
//! that hangs (a cloud API, a stuck `destroy`) cannot stall a service.

mod local;
mod openstack;
pub mod recording;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use steward_spec::{Image, Placement, Resolver, Service, Spec};

pub use local::{Local, expand, free_port};
pub use openstack::{
    OpenStack, Orphan, ServerSnapshot, cloud_config, digest_tag, fleet_tag, snapshot_tag, user_data,
};

/// Why a provider step failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Preparing the instance's directory failed.
    #[error("instance {id}: {what}: {source}")]
    Io {
        /// Instance id.
        id: String,
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// Making the sandbox of an isolated instance failed.
    #[error("instance {id}: {reason}")]
    Sandbox {
        /// Instance id.
        id: String,
        /// The cause.
        reason: String,
    },
    /// Copying the image failed.
    #[error("instance {id}: copying the image failed: {reason}")]
    Copy {
        /// Instance id.
        id: String,
        /// The cause.
        reason: String,
    },
    /// The image could not be made runnable here.
    #[error("image {digest}: {reason}")]
    Publish {
        /// The image's digest.
        digest: String,
        /// The cause.
        reason: String,
    },
    /// The provider refused or failed the call (a cloud API's answer, or a
    /// failure the recording provider was told to give).
    #[error("instance {id}: {reason}")]
    Refused {
        /// Instance id.
        id: String,
        /// The cause.
        reason: String,
    },
    /// The handle's provider record is not one this provider wrote.
    #[error("instance {id}: its provider record is unreadable: {reason}")]
    Record {
        /// Instance id.
        id: String,
        /// The cause.
        reason: String,
    },
}

/// An image as a provider can run it: its digest and the provider's record
/// (the local provider: where it is unpacked; a cloud: the uploaded image's id).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRef {
    /// The image's content digest.
    pub digest: String,
    /// The provider's own record.
    pub data: serde_json::Value,
}

/// What `publish` needs to fetch an image.
#[derive(Clone)]
pub struct Publish {
    /// The spec (object stores, images).
    pub spec: Arc<Spec>,
    /// The image.
    pub image: Image,
    /// The build to publish.
    pub digest: String,
    /// The service it is published for (which provider runs it).
    pub service: String,
    /// Secret references.
    pub resolver: Arc<dyn Resolver>,
}

/// An instance as its provider handed it back; stored with the instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceHandle {
    /// steward's id for it, e.g. `api-3f9a1c`.
    pub id: String,
    /// Where it serves (once started; a created-only instance's intended address).
    pub address: SocketAddr,
    /// The provider's own record (local: directory, pid and its start time).
    pub data: serde_json::Value,
}

/// What an instance is made from and how it runs.
#[derive(Clone, Copy)]
pub struct InstanceSpec<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its service (command, isolation, mounts, …).
    pub service: &'a Service,
    /// The image digest it runs.
    pub digest: &'a str,
    /// Its resolved environment.
    pub env: &'a [(String, String)],
}

/// Whether an instance runs, as its provider sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It runs.
    Running,
    /// It exists but does not run.
    Stopped,
}

/// A provider call in progress.
pub type ProviderFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, ProviderError>> + Send + 'a>>;

/// Creates, starts, stops and destroys instances.
pub trait Provider: Send + Sync {
    /// Makes a build runnable by this provider (the local provider unpacks it
    /// into its cache; a cloud provider uploads it). Idempotent per digest.
    fn publish<'a>(&'a self, image: &'a Publish) -> ProviderFuture<'a, ImageRef>;
    /// Makes an instance from a published image; starts nothing.
    fn create<'a>(
        &'a self,
        spec: InstanceSpec<'a>,
        image: &'a ImageRef,
    ) -> ProviderFuture<'a, InstanceHandle>;
    /// Starts a created or stopped instance; the handle it returns (its
    /// address may be new) replaces the old one.
    fn start<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        spec: InstanceSpec<'a>,
    ) -> ProviderFuture<'a, InstanceHandle>;
    /// Whether it runs.
    fn status<'a>(&'a self, handle: &'a InstanceHandle) -> ProviderFuture<'a, Status>;
    /// Stops it (a graceful signal, then a forced one after `grace`); the
    /// returned handle is the stopped instance's.
    fn stop<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        grace: Duration,
    ) -> ProviderFuture<'a, InstanceHandle>;
    /// Deletes everything `create` made.
    fn destroy<'a>(&'a self, handle: &'a InstanceHandle) -> ProviderFuture<'a, ()>;
    /// Every instance this provider holds (for sweeping those no record knows).
    fn list(&self) -> ProviderFuture<'_, Vec<InstanceHandle>>;
    /// One short line for people about where it runs (e.g. `pid 4242`).
    fn describe(&self, handle: &InstanceHandle) -> String;
    /// The file its output goes to, when the provider keeps one on this machine.
    fn log_path(&self, handle: &InstanceHandle) -> Option<PathBuf>;
    /// What a running instance uses now, when the provider can tell cheaply
    /// (the local provider reads `/proc`).
    fn usage(&self, _handle: &InstanceHandle) -> Option<Usage> {
        None
    }
}

/// What an instance's process uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU time used so far (user and system), in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub memory_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
}

/// Every provider the spec's services use, each call sent to the right one:
/// by the service's `provider` for `publish` and `create`, by the instance's
/// record (a cloud's records name it) for the rest. `list` is all of theirs.
pub struct Providers {
    local: Arc<dyn Provider>,
    clouds: std::collections::BTreeMap<String, Arc<dyn Provider>>,
    services: std::collections::BTreeMap<String, Placement>,
}

impl Providers {
    /// Local instances by `local`, and an [`OpenStack`] provider for each
    /// `[cloud.NAME]` (disk images made under the state directory).
    pub fn for_spec(
        spec: &Spec,
        resolver: Arc<dyn Resolver>,
        local: Arc<dyn Provider>,
    ) -> Providers {
        let cache = spec.settings.state_dir.join("fleet/openstack");
        let tag = fleet_tag(&spec.settings.state_dir);
        let clouds = spec
            .clouds
            .values()
            .map(|c| {
                let p: Arc<dyn Provider> = Arc::new(OpenStack::new(
                    c.clone(),
                    resolver.clone(),
                    cache.clone(),
                    tag.clone(),
                ));
                (c.name.clone(), p)
            })
            .collect();
        Providers::new(spec, local, clouds)
    }

    /// `local` and the given cloud providers (by `[cloud.NAME]`).
    pub fn new(
        spec: &Spec,
        local: Arc<dyn Provider>,
        clouds: std::collections::BTreeMap<String, Arc<dyn Provider>>,
    ) -> Providers {
        Providers {
            local,
            clouds,
            services: spec
                .services
                .values()
                .map(|s| (s.name.clone(), s.placement.clone()))
                .collect(),
        }
    }

    fn by_placement(
        &self,
        id: &str,
        placement: Option<&Placement>,
    ) -> Result<&dyn Provider, ProviderError> {
        match placement {
            None | Some(Placement::Local) => Ok(self.local.as_ref()),
            Some(Placement::OpenStack(p)) => self
                .clouds
                .get(&p.cloud)
                .map(|c| c.as_ref())
                .ok_or_else(|| ProviderError::Refused {
                    id: id.to_string(),
                    reason: format!("cloud `{}` is not in the spec", p.cloud),
                }),
        }
    }

    fn by_handle(&self, h: &InstanceHandle) -> &dyn Provider {
        h.data
            .get("cloud")
            .and_then(|c| c.as_str())
            .and_then(|c| self.clouds.get(c))
            .map_or(self.local.as_ref(), |c| c.as_ref())
    }
}

impl Provider for Providers {
    fn publish<'a>(&'a self, image: &'a Publish) -> ProviderFuture<'a, ImageRef> {
        match self.by_placement(&image.service, self.services.get(&image.service)) {
            Ok(p) => p.publish(image),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn create<'a>(
        &'a self,
        spec: InstanceSpec<'a>,
        image: &'a ImageRef,
    ) -> ProviderFuture<'a, InstanceHandle> {
        match self.by_placement(spec.id, Some(&spec.service.placement)) {
            Ok(p) => p.create(spec, image),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn start<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        spec: InstanceSpec<'a>,
    ) -> ProviderFuture<'a, InstanceHandle> {
        self.by_handle(handle).start(handle, spec)
    }

    fn status<'a>(&'a self, handle: &'a InstanceHandle) -> ProviderFuture<'a, Status> {
        self.by_handle(handle).status(handle)
    }

    fn stop<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        grace: Duration,
    ) -> ProviderFuture<'a, InstanceHandle> {
        self.by_handle(handle).stop(handle, grace)
    }

    fn destroy<'a>(&'a self, handle: &'a InstanceHandle) -> ProviderFuture<'a, ()> {
        self.by_handle(handle).destroy(handle)
    }

    fn list(&self) -> ProviderFuture<'_, Vec<InstanceHandle>> {
        Box::pin(async move {
            let mut all = self.local.list().await?;
            for c in self.clouds.values() {
                all.extend(c.list().await?);
            }
            Ok(all)
        })
    }

    fn describe(&self, handle: &InstanceHandle) -> String {
        self.by_handle(handle).describe(handle)
    }

    fn log_path(&self, handle: &InstanceHandle) -> Option<PathBuf> {
        self.by_handle(handle).log_path(handle)
    }

    fn usage(&self, handle: &InstanceHandle) -> Option<Usage> {
        self.by_handle(handle).usage(handle)
    }
}
