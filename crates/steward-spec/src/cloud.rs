//! `[cloud.NAME]`: an OpenStack cloud, named the way OpenStack's own tools
//! name one — an entry of `clouds.yaml` (`cloud = "…"`), else `$OS_CLOUD`'s
//! entry, else the `OS_*` variables — with any setting given here laid over
//! it. Secrets are references, resolved right before steward logs in.
//!
//! And what a service placed on a cloud asks of it (`provider = "openstack"`).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::Diagnostics;
use crate::duration::Dur;
use crate::secret::{Resolver, Text};
use crate::validate::secret_ok;

/// `[cloud.NAME]`
#[derive(Debug, Clone)]
pub struct Cloud {
    /// Its name in the spec.
    pub name: String,
    /// The `clouds.yaml` entry to start from (none: `$OS_CLOUD`'s, else `OS_*`).
    pub entry: Option<String>,
    /// Keystone URL.
    pub auth_url: Option<Text>,
    /// User name.
    pub username: Option<Text>,
    /// Password (a reference).
    pub password: Option<Text>,
    /// Project name.
    pub project: Option<Text>,
    /// The user's domain name.
    pub user_domain: Option<String>,
    /// The project's domain name.
    pub project_domain: Option<String>,
    /// Application credential id.
    pub application_credential_id: Option<Text>,
    /// Application credential name (with `username`).
    pub application_credential_name: Option<Text>,
    /// Application credential secret (a reference).
    pub application_credential_secret: Option<Text>,
    /// Catalog region.
    pub region: Option<String>,
    /// `public`, `internal` or `admin`.
    pub interface: Option<String>,
    /// Longest one API call may take.
    pub timeout: Duration,
    /// Retries after a 5xx, a 409 or a connection error.
    pub retries: u32,
    /// Longest a server may take to become ACTIVE.
    pub boot_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCloud {
    cloud: Option<String>,
    auth_url: Option<Spanned<Text>>,
    username: Option<Spanned<Text>>,
    password: Option<Spanned<Text>>,
    project: Option<Spanned<Text>>,
    user_domain: Option<String>,
    project_domain: Option<String>,
    application_credential_id: Option<Spanned<Text>>,
    application_credential_name: Option<Spanned<Text>>,
    application_credential_secret: Option<Spanned<Text>>,
    region: Option<String>,
    interface: Option<Spanned<String>>,
    timeout: Option<Dur>,
    retries: Option<u32>,
    boot_timeout: Option<Spanned<Dur>>,
}

pub(crate) fn cloud(
    d: &mut Diagnostics,
    name: &str,
    raw: RawCloud,
    resolver: &dyn Resolver,
) -> Option<Cloud> {
    let before = d.errors.len();
    for t in [
        &raw.auth_url,
        &raw.username,
        &raw.password,
        &raw.project,
        &raw.application_credential_id,
        &raw.application_credential_name,
        &raw.application_credential_secret,
    ]
    .into_iter()
    .flatten()
    {
        secret_ok(d, t.get_ref(), t.span(), resolver);
    }
    if let Some(i) = &raw.interface
        && !["public", "internal", "admin"].contains(&i.get_ref().as_str())
    {
        d.error(
            i.span(),
            format!(
                "cloud `{name}`: interface `{}` is not public, internal or admin",
                i.get_ref()
            ),
            "unknown interface",
            None,
        );
    }
    if let Some(s) = &raw.application_credential_secret
        && raw.application_credential_id.is_none()
        && raw.application_credential_name.is_none()
        && raw.cloud.is_none()
    {
        d.error(
            s.span(),
            format!(
                "cloud `{name}`: an application credential secret needs the credential's id or name"
            ),
            "whose secret?",
            Some(
                "add application_credential_id (or application_credential_name with username)"
                    .into(),
            ),
        );
    }
    if let Some(p) = &raw.password
        && raw.username.is_none()
        && raw.cloud.is_none()
    {
        d.error(
            p.span(),
            format!("cloud `{name}`: a password needs a username"),
            "whose password?",
            None,
        );
    }
    if let Some(b) = &raw.boot_timeout
        && b.get_ref().0 > Duration::from_secs(280)
    {
        d.error(
            b.span(),
            format!("cloud `{name}`: boot_timeout {} is longer than a provider call may take (the fleet cuts one off after 300 s)", b.get_ref()),
            "too long",
            Some("at most 280s".into()),
        );
    }
    let text = |t: Option<Spanned<Text>>| t.map(Spanned::into_inner);
    (d.errors.len() == before).then(|| Cloud {
        name: name.to_string(),
        entry: raw.cloud,
        auth_url: text(raw.auth_url),
        username: text(raw.username),
        password: text(raw.password),
        project: text(raw.project),
        user_domain: raw.user_domain,
        project_domain: raw.project_domain,
        application_credential_id: text(raw.application_credential_id),
        application_credential_name: text(raw.application_credential_name),
        application_credential_secret: text(raw.application_credential_secret),
        region: raw.region,
        interface: raw.interface.map(Spanned::into_inner),
        timeout: raw.timeout.map_or(Duration::from_secs(60), |t| t.0),
        retries: raw.retries.unwrap_or(3),
        boot_timeout: raw
            .boot_timeout
            .map_or(Duration::from_secs(240), |t| t.into_inner().0),
    })
}

/// Which networks an OpenStack service's servers get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerNetworks {
    /// `networks = "none"`: no network (the server has no address steward can
    /// reach; only for services without readiness checks or a proxy).
    None,
    /// These networks, by name or id; the first one's fixed IPv4 address is
    /// the instance's address.
    Named(Vec<String>),
}

/// Where a service's instances run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Placement {
    /// Processes on this machine (the default).
    #[default]
    Local,
    /// Nova servers.
    OpenStack(OpenStackPlacement),
}

/// `provider = "openstack"` and its settings on a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenStackPlacement {
    /// The `[cloud.NAME]` it runs on.
    pub cloud: String,
    /// Flavor name or id.
    pub flavor: String,
    /// Networks.
    pub networks: ServerNetworks,
    /// The port the application listens on, on the server.
    pub port: u16,
    /// Security group names.
    pub security_groups: Vec<String>,
    /// SSH key pair.
    pub key_name: Option<String>,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// Give the server a config drive (user data without a metadata service).
    pub config_drive: bool,
}
