//! Instances as Nova servers on one `[cloud.NAME]`.
//!
//! - `publish` finds the build in Glance by its tag (`steward:DIGEST`) or
//!   uploads it: the unpacked image root made into an ext4 file system image
//!   (`mkfs.ext4 -d`, no loop mount), tagged and carrying the build's digest
//!   and image name as properties.
//! - `create` asks Nova for a server named after the instance, tagged
//!   `steward` and with this fleet's tag, its service, instance and digest in
//!   metadata, and cloud-init user data that writes the environment and a
//!   systemd unit running the service's command.
//! - `start` waits until the server is ACTIVE (ERROR: Nova's fault message is
//!   the error) and takes its fixed IPv4 address on the service's first
//!   network; the instance's address is that and the service's `port`.
//! - `stop` is Nova's `os-stop`; `destroy` deletes the server and waits until
//!   Nova no longer shows it, so a failed instance leaves no orphan.
//! - `list` is every server carrying this fleet's tag.
//!
//! The fleet tag is `steward-fleet-` and a hash of this machine's name and the
//! state directory, so two stewards sharing a project never sweep each
//! other's servers.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sha2::Digest;
use steward_openstack::config::Settings;
use steward_openstack::{Compute, Images, Networks, NewImage, NewServer, Session};
use steward_spec::{Cloud, OpenStackPlacement, Placement, Resolver, ServerNetworks, Service};
use tokio::sync::{Mutex, OnceCell};

use super::{
    ImageRef, InstanceHandle, InstanceSpec, Provider, ProviderError, ProviderFuture, Publish,
    Status,
};

/// A cloud's clients, made at first use (secrets resolved then).
struct Clients {
    session: Arc<Session>,
    compute: Compute,
    images: Images,
}

/// The OpenStack provider for one cloud.
pub struct OpenStack {
    cloud: Cloud,
    resolver: Arc<dyn Resolver>,
    cache: PathBuf,
    fleet_tag: String,
    clients: OnceCell<Clients>,
    /// Flavor and network ids by name, looked up once.
    ids: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for OpenStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpenStack({})", self.cloud.name)
    }
}

/// What the provider keeps in an instance's record.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    cloud: String,
    server: String,
    /// The network whose fixed address is the instance's (none: no network).
    network: Option<String>,
    port: u16,
}

impl Record {
    fn of(h: &InstanceHandle) -> Result<Record, ProviderError> {
        serde_json::from_value(h.data.clone()).map_err(|e| ProviderError::Record {
            id: h.id.clone(),
            reason: e.to_string(),
        })
    }
}

fn refused(id: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Refused {
        id: id.to_string(),
        reason: e.to_string(),
    }
}

/// The tag of the servers one steward (this machine, this state directory) makes.
pub fn fleet_tag(state_dir: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut h = sha2::Sha256::new();
    h.update(host.trim().as_bytes());
    h.update([0]);
    h.update(state_dir.as_os_str().as_encoded_bytes());
    format!("steward-fleet-{}", &hex::encode(h.finalize())[..12])
}

/// The cloud's settings: its `clouds.yaml` entry (or `$OS_CLOUD`'s), else
/// the `OS_*` variables, with the spec's own settings over them.
pub fn cloud_config(
    cloud: &Cloud,
    resolver: &dyn Resolver,
) -> Result<steward_openstack::CloudConfig, String> {
    let get = |n: &str| resolver.env(n);
    let entry = cloud.entry.clone().or_else(|| get("OS_CLOUD"));
    let base = match &entry {
        Some(e) => Settings::from_clouds_yaml(e, &get).map_err(|e| e.to_string())?,
        None => Settings::from_env(&get),
    };
    let text = |t: &Option<steward_spec::Text>, what: &str| -> Result<Option<String>, String> {
        t.as_ref()
            .map(|t| {
                t.resolve(resolver)
                    .map(|s| s.expose().to_string())
                    .map_err(|e| format!("cloud `{}`: {what}: {e}", cloud.name))
            })
            .transpose()
    };
    let spec = Settings {
        auth_url: text(&cloud.auth_url, "auth_url")?,
        username: text(&cloud.username, "username")?,
        password: text(&cloud.password, "password")?,
        project_name: text(&cloud.project, "project")?,
        user_domain_name: cloud.user_domain.clone(),
        project_domain_name: cloud.project_domain.clone(),
        application_credential_id: text(
            &cloud.application_credential_id,
            "application_credential_id",
        )?,
        application_credential_name: text(
            &cloud.application_credential_name,
            "application_credential_name",
        )?,
        application_credential_secret: text(
            &cloud.application_credential_secret,
            "application_credential_secret",
        )?,
        region_name: cloud.region.clone(),
        interface: cloud.interface.clone(),
        ..Settings::default()
    };
    spec.over(base)
        .finish(cloud.timeout, cloud.retries)
        .map_err(|e| format!("cloud `{}`: {e}", cloud.name))
}

impl OpenStack {
    /// The provider for `cloud`; disk images are made under `cache`. Nothing
    /// is sent until the first call.
    pub fn new(
        cloud: Cloud,
        resolver: Arc<dyn Resolver>,
        cache: PathBuf,
        fleet_tag: String,
    ) -> OpenStack {
        OpenStack {
            cloud,
            resolver,
            cache,
            fleet_tag,
            clients: OnceCell::new(),
            ids: Mutex::new(BTreeMap::new()),
        }
    }

    async fn clients(&self) -> Result<&Clients, String> {
        self.clients
            .get_or_try_init(|| async {
                let config = cloud_config(&self.cloud, self.resolver.as_ref())?;
                let session = Arc::new(Session::new(config).map_err(|e| e.to_string())?);
                Ok(Clients {
                    compute: Compute::new(session.clone()),
                    images: Images::new(session.clone()),
                    session,
                })
            })
            .await
    }

    fn placement<'s>(&self, service: &'s Service) -> Result<&'s OpenStackPlacement, String> {
        match &service.placement {
            Placement::OpenStack(p) if p.cloud == self.cloud.name => Ok(p),
            _ => Err(format!(
                "service `{}` does not run on cloud `{}`",
                service.name, self.cloud.name
            )),
        }
    }

    /// A flavor's or network's id by the name the spec gives, looked up once.
    async fn id(&self, kind: &str, name: &str) -> Result<String, String> {
        let key = format!("{kind}/{name}");
        if let Some(id) = self.ids.lock().await.get(&key) {
            return Ok(id.clone());
        }
        let c = self.clients().await?;
        let id = match kind {
            "flavor" => c.compute.flavor_id(name).await,
            _ => steward_openstack::network(&c.session, name)
                .await
                .map(|n| n.id),
        }
        .map_err(|e| e.to_string())?;
        self.ids.lock().await.insert(key, id.clone());
        Ok(id)
    }

    async fn upload(&self, p: &Publish) -> Result<String, String> {
        let c = self.clients().await?;
        let cache = self.cache.clone();
        let (spec, image, digest, resolver) = (
            p.spec.clone(),
            p.image.clone(),
            p.digest.clone(),
            p.resolver.clone(),
        );
        let disk = tokio::task::spawn_blocking(move || -> Result<PathBuf, String> {
            let root = steward_image::unpack(
                &spec,
                &image,
                &digest,
                &cache.join("roots"),
                resolver.as_ref(),
            )
            .map_err(|e| e.to_string())?;
            disk_image(&root, &cache.join("disks"), &digest)
        })
        .await
        .map_err(|e| e.to_string())??;
        let id = c
            .images
            .create(&NewImage {
                name: format!("steward-{}-{}", p.image.name, short(&p.digest)),
                disk_format: "raw".into(),
                container_format: "bare".into(),
                tags: vec![
                    "steward".into(),
                    digest_tag(&p.digest),
                    self.fleet_tag.clone(),
                ],
                properties: [
                    ("steward_image".to_string(), p.image.name.clone()),
                    ("steward_digest".to_string(), p.digest.clone()),
                ]
                .into(),
            })
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = c.images.upload(&id, &disk, Duration::from_secs(1800)).await {
            // Half an image is no image: nothing stays behind.
            let _ = c.images.delete(&id).await;
            return Err(e.to_string());
        }
        let _ = std::fs::remove_file(&disk);
        Ok(id)
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

/// The Glance tag of a build.
pub fn digest_tag(digest: &str) -> String {
    format!("steward:{digest}")
}

/// An ext4 file system image of `root` (raw, sized to fit with room to
/// spare), made without mounting anything.
fn disk_image(root: &Path, dir: &Path, digest: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut used: u64 = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            let m = e.metadata().map_err(|e| e.to_string())?;
            used += m.len().div_ceil(4096) * 4096 + 256;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    let mib = (used + used / 4) / (1 << 20) + 64;
    let out = dir.join(format!("{}.raw", digest.trim_start_matches("sha256:")));
    let partial = out.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let status = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "steward-root", "-d"])
        .arg(root)
        .arg(&partial)
        .arg(format!("{mib}M"))
        .env(
            "PATH",
            "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin",
        )
        .output()
        .map_err(|e| format!("running mkfs.ext4 (e2fsprogs): {e}"))?;
    if !status.status.success() {
        return Err(format!(
            "mkfs.ext4 -d {} failed: {}",
            root.display(),
            String::from_utf8_lossy(&status.stderr).trim()
        ));
    }
    std::fs::rename(&partial, &out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// One systemd `ExecStart` word: double-quoted, with `\`, `"`, `$` and `%`
/// escaped the way systemd.syntax(7) and systemd.unit(5) say.
fn unit_word(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("$$"),
            '%' => out.push_str("%%"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// cloud-init user data for one instance: its environment (root-only file),
/// a systemd unit running the service's command with the placeholders
/// filled in for the server, and the unit started.
pub fn user_data(id: &str, service: &Service, port: u16, env: &[(String, String)]) -> String {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let command: Vec<String> = service
        .command
        .iter()
        .map(|a| {
            unit_word(&super::expand(
                a,
                addr,
                Path::new("/"),
                id,
                Path::new("/var/lib/steward"),
            ))
        })
        .collect();
    let env_file: String = env
        .iter()
        .map(|(k, v)| format!("{k}={}\n", json!(v)))
        .collect();
    let unit = format!(
        "[Unit]\nDescription=steward instance {id} of service {svc}\nAfter=network-online.target\nWants=network-online.target\n\n[Service]\nEnvironmentFile=/etc/steward/instance.env\nExecStart={cmd}\nRestart=on-failure\nWorkingDirectory=/\n\n[Install]\nWantedBy=multi-user.target\n",
        svc = service.name,
        cmd = command.join(" ")
    );
    let block = |s: &str| -> String { s.lines().map(|l| format!("      {l}\n")).collect() };
    format!(
        "#cloud-config\nwrite_files:\n  - path: /etc/steward/instance.env\n    permissions: '0600'\n    content: |\n{}  - path: /etc/systemd/system/steward-instance.service\n    permissions: '0644'\n    content: |\n{}runcmd:\n  - [systemctl, daemon-reload]\n  - [systemctl, enable, --now, steward-instance.service]\n",
        if env_file.is_empty() {
            "      \n".to_string()
        } else {
            block(&env_file)
        },
        block(&unit)
    )
}

/// Something on a cloud that carries this steward's tag but that its state
/// does not know.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Orphan {
    /// The `[cloud.NAME]`.
    pub cloud: String,
    /// `server`, `image` or `snapshot`.
    pub kind: &'static str,
    /// Nova's or Glance's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Why it counts as an orphan.
    pub why: String,
}

impl OpenStack {
    /// Servers with this steward's tag whose instance no record holds, and
    /// images it uploaded whose build no service runs, keeps for a rollback or
    /// has an instance of — unless a server still boots from it.
    pub async fn orphans(
        &self,
        instances: &std::collections::BTreeSet<String>,
        digests: &std::collections::BTreeSet<String>,
        snapshots: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<Orphan>, String> {
        let c = self.clients().await?;
        let servers = c
            .compute
            .list(&self.fleet_tag)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for s in &servers {
            let why = match s.metadata.get("steward_instance") {
                None => "a server with this steward's tag but no instance id".to_string(),
                Some(i) if !instances.contains(i) => format!("instance {i} is in no record"),
                Some(_) => continue,
            };
            out.push(Orphan {
                cloud: self.cloud.name.clone(),
                kind: "server",
                id: s.id.clone(),
                name: s.name.clone(),
                why,
            });
        }
        let booted: std::collections::BTreeSet<&str> = servers
            .iter()
            .filter_map(|s| s.image_id.as_deref())
            .collect();
        for i in c
            .images
            .with_tag(&self.fleet_tag)
            .await
            .map_err(|e| e.to_string())?
        {
            if let Some(name) = i.properties.get("steward_snapshot") {
                if !snapshots.contains(name) {
                    out.push(Orphan {
                        cloud: self.cloud.name.clone(),
                        kind: "snapshot",
                        id: i.id,
                        name: i.name,
                        why: format!("[snapshot.{name}] is not in the spec"),
                    });
                }
                continue;
            }
            let digest = i
                .properties
                .get("steward_digest")
                .cloned()
                .unwrap_or_default();
            if digests.contains(&digest) || booted.contains(i.id.as_str()) {
                continue;
            }
            out.push(Orphan {
                cloud: self.cloud.name.clone(),
                kind: "image",
                id: i.id,
                name: i.name,
                why: format!("build {} is not run, kept or recorded", short(&digest)),
            });
        }
        Ok(out)
    }

    /// Deletes an orphan (a server: until Nova no longer shows it).
    pub async fn delete_orphan(&self, o: &Orphan) -> Result<(), String> {
        let c = self.clients().await?;
        match o.kind {
            "server" => c
                .compute
                .delete_and_wait(&o.id, Duration::from_secs(300))
                .await
                .map_err(|e| e.to_string()),
            _ => c.images.delete(&o.id).await.map_err(|e| e.to_string()),
        }
    }
}

/// A snapshot of a server (a Glance image Nova's `createImage` made),
/// tagged as one of a `[snapshot.NAME]`'s.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServerSnapshot {
    /// The Glance image's id.
    pub id: String,
    /// Its name (`SNAPSHOT-YYYYmmddTHHMMSSZ`).
    pub name: String,
    /// The `[snapshot.NAME]`.
    pub snapshot: String,
    /// The server it was taken of.
    pub server: String,
    /// When it was taken.
    pub created: chrono::DateTime<chrono::FixedOffset>,
    /// Glance's status (`active` once its data is there).
    pub status: String,
    /// Its size in bytes.
    pub size: Option<u64>,
}

/// The Glance tag that marks an image as a `[snapshot.NAME]`'s.
pub fn snapshot_tag(name: &str) -> String {
    format!("steward-snapshot:{name}")
}

impl ServerSnapshot {
    fn of(i: steward_openstack::ImageInfo, name: &str) -> Option<ServerSnapshot> {
        Some(ServerSnapshot {
            created: chrono::DateTime::parse_from_rfc3339(&i.created_at).ok()?,
            snapshot: name.to_string(),
            server: i
                .properties
                .get("steward_server")
                .cloned()
                .unwrap_or_default(),
            id: i.id,
            name: i.name,
            status: i.status,
            size: i.size,
        })
    }
}

impl OpenStack {
    /// A placement's flavor id, its networks, and the network whose fixed
    /// address is a server's address.
    async fn flavor_and_networks(
        &self,
        p: &OpenStackPlacement,
    ) -> Result<(String, Networks, Option<String>), String> {
        let flavor_id = self.id("flavor", &p.flavor).await?;
        Ok(match &p.networks {
            ServerNetworks::None => (flavor_id, Networks::None, None),
            ServerNetworks::Named(names) => {
                let mut ids = Vec::new();
                for n in names {
                    ids.push(self.id("network", n).await?);
                }
                (flavor_id, Networks::Ids(ids), names.first().cloned())
            }
        })
    }

    /// Snapshots `server` as one of `[snapshot.NAME]`'s: Nova's createImage,
    /// the image tagged as this steward's, then waited for until its data is
    /// uploaded (`active`) or `limit` passes (the image is deleted then).
    pub async fn take_snapshot(
        &self,
        name: &str,
        server: &str,
        limit: Duration,
    ) -> Result<ServerSnapshot, String> {
        let c = self.clients().await?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let metadata: BTreeMap<String, String> = [
            ("steward_snapshot".to_string(), name.to_string()),
            ("steward_server".to_string(), server.to_string()),
        ]
        .into();
        let id = c
            .compute
            .create_image(server, &format!("{name}-{stamp}"), &metadata)
            .await
            .map_err(|e| e.to_string())?;
        let tagged = async {
            for tag in ["steward", self.fleet_tag.as_str(), &snapshot_tag(name)] {
                c.images.add_tag(&id, tag).await?;
            }
            c.images.wait_active(&id, limit).await
        }
        .await;
        match tagged {
            Ok(i) => ServerSnapshot::of(i, name)
                .ok_or_else(|| format!("image {id}: Glance gave no readable creation time")),
            Err(e) => {
                // A snapshot that never got its data is no snapshot.
                let _ = c.images.delete(&id).await;
                Err(format!("snapshot of server {server}: {e}"))
            }
        }
    }

    /// The snapshots of `[snapshot.NAME]` this steward took, newest first.
    pub async fn snapshots(&self, name: &str) -> Result<Vec<ServerSnapshot>, String> {
        let c = self.clients().await?;
        let mut out: Vec<ServerSnapshot> = c
            .images
            .with_tag(&snapshot_tag(name))
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|i| i.tags.contains(&self.fleet_tag))
            .filter_map(|i| ServerSnapshot::of(i, name))
            .collect();
        out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
        Ok(out)
    }

    /// Deletes a snapshot's image.
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), String> {
        let c = self.clients().await?;
        c.images.delete(id).await.map_err(|e| e.to_string())
    }

    /// Boots a server from a snapshot with `service`'s flavor and networks
    /// (no user data: the disk is as it was), tagged `tags`, and waits until
    /// it is ACTIVE: its id and its address (the fixed IPv4 on the service's
    /// first network, with the service's port). A server that fails to boot
    /// is deleted.
    pub async fn boot_snapshot(
        &self,
        service: &Service,
        image: &str,
        name: &str,
        tags: Vec<String>,
    ) -> Result<(String, Option<SocketAddr>), String> {
        let p = self.placement(service)?;
        let (flavor_id, networks, network) = self.flavor_and_networks(p).await?;
        let c = self.clients().await?;
        let id = c
            .compute
            .create(&NewServer {
                metadata: [("steward_restored_from".to_string(), image.to_string())].into(),
                tags,
                security_groups: p.security_groups.clone(),
                key_name: p.key_name.clone(),
                availability_zone: p.availability_zone.clone(),
                ..NewServer::new(name, image, &flavor_id, networks)
            })
            .await
            .map_err(|e| e.to_string())?;
        match c.compute.wait(&id, "ACTIVE", self.cloud.boot_timeout).await {
            Ok(server) => {
                let addr = server
                    .fixed_ipv4(network.as_deref())
                    .and_then(|ip| ip.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, p.port));
                Ok((id, addr))
            }
            Err(e) => {
                let _ = c
                    .compute
                    .delete_and_wait(&id, Duration::from_secs(300))
                    .await;
                Err(e.to_string())
            }
        }
    }

    /// Deletes a server and waits until Nova no longer shows it.
    pub async fn delete_server(&self, id: &str) -> Result<(), String> {
        let c = self.clients().await?;
        c.compute
            .delete_and_wait(id, Duration::from_secs(300))
            .await
            .map_err(|e| e.to_string())
    }

    /// The `[cloud.NAME]` this provider talks to.
    pub fn cloud_name(&self) -> &str {
        &self.cloud.name
    }
}

impl Provider for OpenStack {
    fn publish<'a>(&'a self, p: &'a Publish) -> ProviderFuture<'a, ImageRef> {
        Box::pin(async move {
            let fail = |reason: String| ProviderError::Publish {
                digest: p.digest.clone(),
                reason,
            };
            let c = self.clients().await.map_err(fail)?;
            let found = c
                .images
                .with_tag(&digest_tag(&p.digest))
                .await
                .map_err(|e| fail(e.to_string()))?;
            let id = match found.into_iter().find(|i| i.status == "active") {
                Some(i) => i.id,
                None => self.upload(p).await.map_err(fail)?,
            };
            Ok(ImageRef {
                digest: p.digest.clone(),
                data: json!({ "cloud": self.cloud.name, "glance": id }),
            })
        })
    }

    fn create<'a>(
        &'a self,
        spec: InstanceSpec<'a>,
        image: &'a ImageRef,
    ) -> ProviderFuture<'a, InstanceHandle> {
        Box::pin(async move {
            let id = spec.id;
            let p = self.placement(spec.service).map_err(|e| refused(id, e))?;
            let image_id = image.data["glance"]
                .as_str()
                .ok_or_else(|| ProviderError::Record {
                    id: id.to_string(),
                    reason: "the image was not published to this cloud".into(),
                })?;
            let (flavor_id, networks, network) = self
                .flavor_and_networks(p)
                .await
                .map_err(|e| refused(id, e))?;
            let c = self.clients().await.map_err(|e| refused(id, e))?;
            let server = c
                .compute
                .create(&NewServer {
                    metadata: [
                        ("steward_instance".to_string(), id.to_string()),
                        ("steward_service".to_string(), spec.service.name.clone()),
                        ("steward_digest".to_string(), spec.digest.to_string()),
                    ]
                    .into(),
                    tags: vec!["steward".into(), self.fleet_tag.clone()],
                    user_data: Some(user_data(id, spec.service, p.port, spec.env)),
                    security_groups: p.security_groups.clone(),
                    key_name: p.key_name.clone(),
                    availability_zone: p.availability_zone.clone(),
                    config_drive: p.config_drive,
                    ..NewServer::new(id, image_id, &flavor_id, networks)
                })
                .await
                .map_err(|e| refused(id, e))?;
            let record = Record {
                cloud: self.cloud.name.clone(),
                server,
                network,
                port: p.port,
            };
            Ok(InstanceHandle {
                id: id.to_string(),
                address: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p.port),
                data: serde_json::to_value(&record).unwrap_or_default(),
            })
        })
    }

    fn start<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        _spec: InstanceSpec<'a>,
    ) -> ProviderFuture<'a, InstanceHandle> {
        Box::pin(async move {
            let id = handle.id.as_str();
            let r = Record::of(handle)?;
            let c = self.clients().await.map_err(|e| refused(id, e))?;
            let now = c
                .compute
                .get(&r.server)
                .await
                .map_err(|e| refused(id, e))?
                .ok_or_else(|| refused(id, format!("server {} no longer exists", r.server)))?;
            if now.status == "SHUTOFF" {
                c.compute
                    .action(&r.server, json!({ "os-start": null }))
                    .await
                    .map_err(|e| refused(id, e))?;
            }
            let active = c
                .compute
                .wait(&r.server, "ACTIVE", self.cloud.boot_timeout)
                .await
                .map_err(|e| refused(id, e))?;
            let ip = match &r.network {
                None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Some(n) => active
                    .fixed_ipv4(Some(n))
                    .or_else(|| active.fixed_ipv4(None))
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| {
                        refused(
                            id,
                            format!(
                                "server {} is ACTIVE but has no fixed IPv4 address on `{n}`",
                                r.server
                            ),
                        )
                    })?,
            };
            Ok(InstanceHandle {
                address: SocketAddr::new(ip, r.port),
                ..handle.clone()
            })
        })
    }

    fn status<'a>(&'a self, handle: &'a InstanceHandle) -> ProviderFuture<'a, Status> {
        Box::pin(async move {
            let id = handle.id.as_str();
            let r = Record::of(handle)?;
            let c = self.clients().await.map_err(|e| refused(id, e))?;
            Ok(
                match c.compute.get(&r.server).await.map_err(|e| refused(id, e))? {
                    Some(s) if s.status == "ACTIVE" => Status::Running,
                    _ => Status::Stopped,
                },
            )
        })
    }

    fn stop<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        grace: Duration,
    ) -> ProviderFuture<'a, InstanceHandle> {
        Box::pin(async move {
            let id = handle.id.as_str();
            let r = Record::of(handle)?;
            let c = self.clients().await.map_err(|e| refused(id, e))?;
            match c.compute.get(&r.server).await.map_err(|e| refused(id, e))? {
                Some(s) if s.status == "ACTIVE" => {
                    c.compute
                        .action(&r.server, json!({ "os-stop": null }))
                        .await
                        .map_err(|e| refused(id, e))?;
                    c.compute
                        .wait(&r.server, "SHUTOFF", grace + Duration::from_secs(120))
                        .await
                        .map_err(|e| refused(id, e))?;
                }
                _ => {}
            }
            Ok(handle.clone())
        })
    }

    fn destroy<'a>(&'a self, handle: &'a InstanceHandle) -> ProviderFuture<'a, ()> {
        Box::pin(async move {
            let id = handle.id.as_str();
            let r = Record::of(handle)?;
            let c = self.clients().await.map_err(|e| refused(id, e))?;
            c.compute
                .delete_and_wait(&r.server, Duration::from_secs(300))
                .await
                .map_err(|e| refused(id, e))
        })
    }

    fn list(&self) -> ProviderFuture<'_, Vec<InstanceHandle>> {
        Box::pin(async move {
            let c = self
                .clients()
                .await
                .map_err(|e| refused(&self.cloud.name, e))?;
            let servers = c
                .compute
                .list(&self.fleet_tag)
                .await
                .map_err(|e| refused(&self.cloud.name, e))?;
            Ok(servers
                .into_iter()
                .filter_map(|s| {
                    let id = s.metadata.get("steward_instance")?.clone();
                    let ip = s
                        .fixed_ipv4(None)
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                    Some(InstanceHandle {
                        id,
                        address: SocketAddr::new(ip, 0),
                        data: serde_json::to_value(Record {
                            cloud: self.cloud.name.clone(),
                            server: s.id,
                            network: s.addresses.first().map(|a| a.network.clone()),
                            port: 0,
                        })
                        .unwrap_or_default(),
                    })
                })
                .collect())
        })
    }

    fn describe(&self, handle: &InstanceHandle) -> String {
        match Record::of(handle) {
            Ok(r) => format!("server {} on cloud {}", r.server, r.cloud),
            Err(_) => format!("on cloud {}", self.cloud.name),
        }
    }

    fn log_path(&self, _handle: &InstanceHandle) -> Option<PathBuf> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_words_survive_systemd_s_quoting() {
        assert_eq!(unit_word("plain"), "\"plain\"");
        assert_eq!(unit_word("a b"), "\"a b\"");
        assert_eq!(
            unit_word("say \"hi\" \\ $HOME 100%"),
            "\"say \\\"hi\\\" \\\\ $$HOME 100%%\""
        );
    }
}
