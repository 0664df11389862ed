//! Where a cloud's credentials come from, in the order OpenStack's own tools
//! use: an entry of `clouds.yaml` (with `secure.yaml` merged over it), else the
//! `OS_*` environment variables; then whatever the spec sets on top.
//!
//! `clouds.yaml` is looked for where openstacksdk looks: the file
//! `OS_CLIENT_CONFIG_FILE` names, else `./clouds.yaml`,
//! `$XDG_CONFIG_HOME/openstack/clouds.yaml` (`~/.config/openstack/…`) and
//! `/etc/openstack/clouds.yaml`, first found wins (`secure.yaml` the same way,
//! `OS_CLIENT_SECURE_FILE`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// How steward proves who it is to Keystone.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// User name (or id) and password, scoped to a project.
    Password {
        /// User name (with its domain) or id.
        user: Named,
        /// The password.
        password: String,
        /// The project the token is scoped to (with its domain), or its id.
        project: Named,
    },
    /// An application credential (its own project scope).
    ApplicationCredential {
        /// The credential's id, or its name with the owning user.
        credential: AppCredential,
        /// Its secret.
        secret: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, project, .. } => {
                write!(f, "Password({user:?} in {project:?}, ***)")
            }
            Credentials::ApplicationCredential { credential, .. } => {
                write!(f, "ApplicationCredential({credential:?}, ***)")
            }
        }
    }
}

/// A Keystone object named either by id or by name within a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// By id.
    Id(String),
    /// By name; the domain by name or id.
    Name {
        /// The name.
        name: String,
        /// Its domain.
        domain: Domain,
    },
}

/// A Keystone domain by name or id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    /// By id (`default` is the usual one).
    Id(String),
    /// By name (`Default` is the usual one).
    Name(String),
}

/// An application credential by id, or by name with its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppCredential {
    /// Its id (enough on its own).
    Id(String),
    /// Its name and the user that owns it.
    Name {
        /// The credential's name.
        name: String,
        /// The owning user.
        user: Named,
    },
}

/// Which of an endpoint's URLs to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interface {
    /// The public URL (the default, as in the `openstack` CLI).
    #[default]
    Public,
    /// The internal URL (inside the cloud's network).
    Internal,
    /// The admin URL.
    Admin,
}

impl Interface {
    /// The catalog's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Public => "public",
            Interface::Internal => "internal",
            Interface::Admin => "admin",
        }
    }

    /// Parses `public`, `internal` or `admin` (with or without the `URL` suffix
    /// older tools write).
    pub fn parse(s: &str) -> Option<Interface> {
        match s.trim_end_matches("URL").to_ascii_lowercase().as_str() {
            "public" => Some(Interface::Public),
            "internal" => Some(Interface::Internal),
            "admin" => Some(Interface::Admin),
            _ => None,
        }
    }
}

/// Everything a session needs to talk to one cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudConfig {
    /// Keystone's v3 URL, e.g. `https://keystone.example:5000/v3`.
    pub auth_url: String,
    /// Who steward is.
    pub credentials: Credentials,
    /// The catalog region (none: the first endpoint of the interface).
    pub region: Option<String>,
    /// Which endpoint URLs to call.
    pub interface: Interface,
    /// Longest one HTTP call may take.
    pub timeout: Duration,
    /// How often a call is tried again after a 5xx, a 409 or a connection
    /// error (with doubling backoff from [`CloudConfig::backoff`]).
    pub retries: u32,
    /// First wait before a retry.
    pub backoff: Duration,
}

/// What a cloud's settings are made from, before they are merged: every field
/// optional. The spec's `[cloud.NAME]`, a `clouds.yaml` entry and the `OS_*`
/// variables each give one; [`Settings::over`] lays one over another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Keystone URL.
    pub auth_url: Option<String>,
    /// `password` or `v3applicationcredential` (and the v3 spellings).
    pub auth_type: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// User id.
    pub user_id: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Project name.
    pub project_name: Option<String>,
    /// Project id.
    pub project_id: Option<String>,
    /// The user's domain name.
    pub user_domain_name: Option<String>,
    /// The user's domain id.
    pub user_domain_id: Option<String>,
    /// The project's domain name.
    pub project_domain_name: Option<String>,
    /// The project's domain id.
    pub project_domain_id: Option<String>,
    /// Application credential id.
    pub application_credential_id: Option<String>,
    /// Application credential name.
    pub application_credential_name: Option<String>,
    /// Application credential secret.
    pub application_credential_secret: Option<String>,
    /// Region.
    pub region_name: Option<String>,
    /// Interface.
    pub interface: Option<String>,
}

impl Settings {
    /// `self` where set, else `under`.
    pub fn over(self, under: Settings) -> Settings {
        macro_rules! pick {
            ($($f:ident),*) => { Settings { $($f: self.$f.or(under.$f)),* } };
        }
        pick!(
            auth_url,
            auth_type,
            username,
            user_id,
            password,
            project_name,
            project_id,
            user_domain_name,
            user_domain_id,
            project_domain_name,
            project_domain_id,
            application_credential_id,
            application_credential_name,
            application_credential_secret,
            region_name,
            interface
        )
    }

    /// The `OS_*` variables `get` answers (the process environment in use).
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Settings {
        let v = |n: &str| get(n).filter(|s| !s.is_empty());
        Settings {
            auth_url: v("OS_AUTH_URL"),
            auth_type: v("OS_AUTH_TYPE"),
            username: v("OS_USERNAME"),
            user_id: v("OS_USER_ID"),
            password: v("OS_PASSWORD"),
            project_name: v("OS_PROJECT_NAME").or_else(|| v("OS_TENANT_NAME")),
            project_id: v("OS_PROJECT_ID").or_else(|| v("OS_TENANT_ID")),
            user_domain_name: v("OS_USER_DOMAIN_NAME").or_else(|| v("OS_DOMAIN_NAME")),
            user_domain_id: v("OS_USER_DOMAIN_ID").or_else(|| v("OS_DOMAIN_ID")),
            project_domain_name: v("OS_PROJECT_DOMAIN_NAME").or_else(|| v("OS_DOMAIN_NAME")),
            project_domain_id: v("OS_PROJECT_DOMAIN_ID").or_else(|| v("OS_DOMAIN_ID")),
            application_credential_id: v("OS_APPLICATION_CREDENTIAL_ID"),
            application_credential_name: v("OS_APPLICATION_CREDENTIAL_NAME"),
            application_credential_secret: v("OS_APPLICATION_CREDENTIAL_SECRET"),
            region_name: v("OS_REGION_NAME"),
            interface: v("OS_INTERFACE").or_else(|| v("OS_ENDPOINT_TYPE")),
        }
    }

    /// The entry `cloud` of the first `clouds.yaml` on the search path, with
    /// the same entry of `secure.yaml` (if any) laid over it.
    pub fn from_clouds_yaml(
        cloud: &str,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, Error> {
        let Some(path) = find_file("clouds.yaml", get("OS_CLIENT_CONFIG_FILE"), get) else {
            return Err(Error::Config(format!(
                "cloud `{cloud}`: no clouds.yaml found (looked in {})",
                search_path("clouds.yaml", get)
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let base = read_entry(&path, cloud)?.ok_or_else(|| {
            Error::Config(format!(
                "cloud `{cloud}` is not an entry of {}",
                path.display()
            ))
        })?;
        let secure = match find_file("secure.yaml", get("OS_CLIENT_SECURE_FILE"), get) {
            Some(p) => read_entry(&p, cloud)?.unwrap_or_default(),
            None => Settings::default(),
        };
        Ok(secure.over(base))
    }

    /// The complete configuration, or what is missing.
    pub fn finish(self, timeout: Duration, retries: u32) -> Result<CloudConfig, Error> {
        let missing = |what: &str| Error::Config(format!("the cloud's {what} is not set"));
        let auth_url = self
            .auth_url
            .ok_or_else(|| missing("auth_url (OS_AUTH_URL)"))?;
        let auth_url = if auth_url.trim_end_matches('/').ends_with("/v3") {
            auth_url.trim_end_matches('/').to_string()
        } else {
            // clouds.yaml usually names Keystone's root; the v3 API is under it.
            format!("{}/v3", auth_url.trim_end_matches('/'))
        };
        let domain = |name: Option<String>, id: Option<String>| match (id, name) {
            (Some(id), _) => Domain::Id(id),
            (None, Some(name)) => Domain::Name(name),
            (None, None) => Domain::Id("default".into()),
        };
        let user = match (self.user_id, self.username) {
            (Some(id), _) => Some(Named::Id(id)),
            (None, Some(name)) => Some(Named::Name {
                name,
                domain: domain(self.user_domain_name, self.user_domain_id),
            }),
            (None, None) => None,
        };
        let kind =
            self.auth_type
                .as_deref()
                .unwrap_or(if self.application_credential_secret.is_some() {
                    "v3applicationcredential"
                } else {
                    "password"
                });
        let credentials = match kind {
            "password" | "v3password" => Credentials::Password {
                user: user.ok_or_else(|| missing("username or user_id (OS_USERNAME)"))?,
                password: self
                    .password
                    .ok_or_else(|| missing("password (OS_PASSWORD)"))?,
                project: match (self.project_id, self.project_name) {
                    (Some(id), _) => Named::Id(id),
                    (None, Some(name)) => Named::Name {
                        name,
                        domain: domain(self.project_domain_name, self.project_domain_id),
                    },
                    (None, None) => {
                        return Err(missing("project_name or project_id (OS_PROJECT_NAME)"));
                    }
                },
            },
            "applicationcredential" | "v3applicationcredential" => {
                Credentials::ApplicationCredential {
                    credential: match (self.application_credential_id, self.application_credential_name) {
                        (Some(id), _) => AppCredential::Id(id),
                        (None, Some(name)) => AppCredential::Name {
                            name,
                            user: user.ok_or_else(|| {
                                missing("username or user_id (an application credential named by name needs its user)")
                            })?,
                        },
                        (None, None) => {
                            return Err(missing(
                                "application_credential_id or application_credential_name",
                            ));
                        }
                    },
                    secret: self.application_credential_secret.ok_or_else(|| {
                        missing("application_credential_secret (OS_APPLICATION_CREDENTIAL_SECRET)")
                    })?,
                }
            }
            other => {
                return Err(Error::Config(format!(
                    "auth_type `{other}` is not supported (password or v3applicationcredential)"
                )));
            }
        };
        let interface = match self.interface {
            None => Interface::Public,
            Some(s) => Interface::parse(&s).ok_or_else(|| {
                Error::Config(format!("interface `{s}` is not public, internal or admin"))
            })?,
        };
        Ok(CloudConfig {
            auth_url,
            credentials,
            region: self.region_name,
            interface,
            timeout,
            retries,
            backoff: Duration::from_millis(500),
        })
    }
}

fn search_path(file: &str, get: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(file)];
    let config = get("XDG_CONFIG_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| get("HOME").map(|h| Path::new(&h).join(".config")));
    if let Some(c) = config {
        out.push(c.join("openstack").join(file));
    }
    out.push(Path::new("/etc/openstack").join(file));
    out
}

fn find_file(
    file: &str,
    named: Option<String>,
    get: &dyn Fn(&str) -> Option<String>,
) -> Option<PathBuf> {
    if let Some(n) = named.filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(n));
    }
    search_path(file, get).into_iter().find(|p| p.is_file())
}

#[derive(Deserialize)]
struct CloudsFile {
    #[serde(default)]
    clouds: BTreeMap<String, Entry>,
}

#[derive(Deserialize, Default)]
struct Entry {
    #[serde(default)]
    auth: Auth,
    auth_type: Option<String>,
    region_name: Option<String>,
    interface: Option<String>,
    endpoint_type: Option<String>,
}

#[derive(Deserialize, Default)]
struct Auth {
    auth_url: Option<String>,
    username: Option<String>,
    user_id: Option<String>,
    password: Option<String>,
    project_name: Option<String>,
    project_id: Option<String>,
    user_domain_name: Option<String>,
    user_domain_id: Option<String>,
    project_domain_name: Option<String>,
    project_domain_id: Option<String>,
    domain_name: Option<String>,
    domain_id: Option<String>,
    application_credential_id: Option<String>,
    application_credential_name: Option<String>,
    application_credential_secret: Option<String>,
}

fn read_entry(path: &Path, cloud: &str) -> Result<Option<Settings>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    let file: CloudsFile = serde_saphyr::from_str(&text).map_err(|e| {
        Error::Config(format!(
            "{} is not a valid clouds file: {e}",
            path.display()
        ))
    })?;
    let Some(mut e) = file
        .clouds
        .into_iter()
        .find(|(k, _)| k == cloud)
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    let a = std::mem::take(&mut e.auth);
    Ok(Some(Settings {
        auth_url: a.auth_url,
        auth_type: e.auth_type,
        username: a.username,
        user_id: a.user_id,
        password: a.password,
        project_name: a.project_name,
        project_id: a.project_id,
        user_domain_name: a.user_domain_name.or(a.domain_name.clone()),
        user_domain_id: a.user_domain_id.or(a.domain_id.clone()),
        project_domain_name: a.project_domain_name.or(a.domain_name),
        project_domain_id: a.project_domain_id.or(a.domain_id),
        application_credential_id: a.application_credential_id,
        application_credential_name: a.application_credential_name,
        application_credential_secret: a.application_credential_secret,
        region_name: e.region_name,
        interface: e.interface.or(e.endpoint_type),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_environment_gives_a_password_login_like_an_openrc_file() {
        let get = env(&[
            ("OS_AUTH_URL", "http://keystone:5000"),
            ("OS_USERNAME", "demo"),
            ("OS_PASSWORD", "s3cret"),
            ("OS_PROJECT_NAME", "demo"),
            ("OS_USER_DOMAIN_NAME", "Default"),
            ("OS_PROJECT_DOMAIN_ID", "default"),
            ("OS_REGION_NAME", "RegionOne"),
            ("OS_INTERFACE", "internal"),
        ]);
        let c = Settings::from_env(&get)
            .finish(Duration::from_secs(30), 3)
            .unwrap();
        assert_eq!(c.auth_url, "http://keystone:5000/v3");
        assert_eq!(c.region.as_deref(), Some("RegionOne"));
        assert_eq!(c.interface, Interface::Internal);
        assert_eq!(
            c.credentials,
            Credentials::Password {
                user: Named::Name {
                    name: "demo".into(),
                    domain: Domain::Name("Default".into())
                },
                password: "s3cret".into(),
                project: Named::Name {
                    name: "demo".into(),
                    domain: Domain::Id("default".into())
                },
            }
        );
        assert!(!format!("{:?}", c.credentials).contains("s3cret"));
    }

    #[test]
    fn clouds_yaml_with_secure_yaml_over_it_and_the_spec_over_both() {
        let dir = tempfile::tempdir().unwrap();
        let clouds = dir.path().join("clouds.yaml");
        std::fs::write(
            &clouds,
            "clouds:\n  other:\n    auth:\n      auth_url: http://elsewhere/v3\n  mine:\n    auth_type: v3applicationcredential\n    region_name: RegionTwo\n    auth:\n      auth_url: https://keystone.example/v3/\n      application_credential_id: abc123\n",
        )
        .unwrap();
        let secure = dir.path().join("secure.yaml");
        std::fs::write(
            &secure,
            "clouds:\n  mine:\n    auth:\n      application_credential_secret: from-secure\n",
        )
        .unwrap();
        let (c, s) = (clouds.display().to_string(), secure.display().to_string());
        let get = env(&[
            ("OS_CLIENT_CONFIG_FILE", c.as_str()),
            ("OS_CLIENT_SECURE_FILE", s.as_str()),
        ]);
        let file = Settings::from_clouds_yaml("mine", &get).unwrap();
        let spec = Settings {
            region_name: Some("RegionThree".into()),
            ..Settings::default()
        };
        let cfg = spec.over(file).finish(Duration::from_secs(5), 1).unwrap();
        assert_eq!(cfg.auth_url, "https://keystone.example/v3");
        assert_eq!(cfg.region.as_deref(), Some("RegionThree"));
        assert_eq!(
            cfg.credentials,
            Credentials::ApplicationCredential {
                credential: AppCredential::Id("abc123".into()),
                secret: "from-secure".into()
            }
        );
        let err = Settings::from_clouds_yaml("absent", &get).unwrap_err();
        assert!(err.to_string().contains("not an entry of"), "{err}");
    }

    #[test]
    fn what_is_missing_is_named() {
        let get = env(&[("OS_AUTH_URL", "http://k/v3"), ("OS_USERNAME", "u")]);
        let err = Settings::from_env(&get)
            .finish(Duration::from_secs(1), 0)
            .unwrap_err();
        assert!(err.to_string().contains("password (OS_PASSWORD)"), "{err}");
        let err = Settings::from_clouds_yaml("x", &env(&[("HOME", "/nonexistent")])).unwrap_err();
        assert!(err.to_string().contains("no clouds.yaml found"), "{err}");
        assert!(
            err.to_string().contains("/etc/openstack/clouds.yaml"),
            "{err}"
        );
    }
}
