//! `[service.NAME]`: instances made from an image, the proxy in front of them,
//! how they are replaced and how new versions roll out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::Diagnostics;
use crate::duration::Dur;
use crate::model::{Check, Probe};
use crate::secret::{Resolver, Text};

/// Placeholders a service command may use.
pub const PLACEHOLDERS: &[&str] = &[
    "{addr}",
    "{host}",
    "{port}",
    "{root}",
    "{instance}",
    "{state_dir}",
];

/// How many instances a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    /// Fewest instances `scale` accepts; also the count a first start runs.
    pub min: u32,
    /// Most instances `scale` accepts.
    pub max: u32,
}

impl Replicas {
    /// The count to run, given the one last asked for (clamped: the spec's
    /// range may have moved since).
    pub fn desired(&self, asked: Option<u32>) -> u32 {
        asked.unwrap_or(self.min).clamp(self.min, self.max)
    }

    /// Whether `n` may be asked for; the error names the range.
    pub fn check(&self, n: u32) -> Result<(), String> {
        if (self.min..=self.max).contains(&n) {
            Ok(())
        } else {
            Err(format!(
                "runs between {} and {} instances (replicas in the spec); {n} is outside",
                self.min, self.max
            ))
        }
    }
}

/// How a new version replaces the running one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollout {
    /// New instances started at once (each must be healthy before the next batch).
    pub max_parallel: u32,
    /// How long a new instance must stay ready before it counts as healthy.
    pub min_healthy_time: Duration,
    /// A new instance not healthy within this is failed.
    pub healthy_deadline: Duration,
    /// The whole rollout must finish within this.
    pub progress_deadline: Duration,
    /// On failure, go back to the previous version by itself.
    pub auto_revert: bool,
    /// Instances of the new version started first, alongside the old ones.
    pub canary: u32,
    /// Carry on past healthy canaries without `steward deploy --promote`.
    pub auto_promote: bool,
    /// Ready instances never drop below this share of the replicas (percent).
    pub min_healthy_percent: u32,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            max_parallel: 1,
            min_healthy_time: Duration::from_secs(10),
            healthy_deadline: Duration::from_secs(120),
            progress_deadline: Duration::from_secs(600),
            auto_revert: true,
            canary: 0,
            auto_promote: true,
            min_healthy_percent: 100,
        }
    }
}

/// A service: identical instances of one image behind one address.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// The `[image.*]` its instances are made from.
    pub image: String,
    /// The instance's command; placeholders: see [`PLACEHOLDERS`].
    pub command: Vec<String>,
    /// Extra environment of each instance.
    pub env: BTreeMap<String, Text>,
    /// Instance counts.
    pub replicas: Replicas,
    /// Where the built-in proxy listens (none: instances take no traffic, e.g. workers).
    pub listen: Option<SocketAddr>,
    /// The check run against each instance to decide whether it takes traffic.
    pub readiness: Option<Arc<Check>>,
    /// A ready instance failing readiness longer than this is replaced.
    pub health_grace: Duration,
    /// Rollout parameters.
    pub rollout: Rollout,
    /// How long a removed instance may finish its requests.
    pub drain_timeout: Duration,
    /// How long an instance has between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// Instances older than this are replaced.
    pub max_instance_lifetime: Option<Duration>,
    /// Each instance in its own sandbox: an overlay root over the image, its
    /// own network namespace and address, bubblewrap (needs root).
    pub isolate: bool,
    /// cgroup memory limit of an isolated instance, bytes.
    pub memory: Option<u64>,
    /// Host directories visible inside isolated instances: `(host, inside, read_only)`.
    pub mounts: Vec<(String, String, bool)>,
    /// Each instance's metrics, scraped (none: not scraped).
    pub metrics: Option<crate::scrape::ServiceMetrics>,
    /// The instance count follows these metrics (none: it is set by hand).
    pub autoscale: Option<crate::autoscale::Autoscale>,
    /// Where its instances run (`provider`).
    pub placement: crate::cloud::Placement,
}

impl Service {
    /// The readiness check aimed at one instance: an HTTP check's URL keeps its
    /// path but points at `addr`; a TCP check connects to `addr`.
    pub fn readiness_for(&self, addr: SocketAddr) -> Option<Check> {
        self.readiness.as_deref().map(|c| aimed_at(c, addr))
    }
}

/// `check` aimed at `addr`: an http check's URL with `addr` for its host and
/// port (scheme and path kept), a tcp check's address; other kinds as they are.
pub fn aimed_at(check: &Check, addr: SocketAddr) -> Check {
    let mut c = check.clone();
    match &mut c.probe {
        Probe::Http(p) => {
            let written = p.url.as_written();
            let (scheme, rest) = written.split_once("://").unwrap_or(("http", written));
            let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
            p.url = Text::new(format!("{scheme}://{addr}{path}"));
        }
        Probe::Tcp { address } => *address = addr.to_string(),
        _ => {}
    }
    c
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    image: Spanned<String>,
    command: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    replicas: Option<Spanned<RawReplicas>>,
    listen: Option<Spanned<String>>,
    readiness: Option<Spanned<String>>,
    health_grace: Option<Dur>,
    rollout: Option<Spanned<RawRollout>>,
    drain_timeout: Option<Dur>,
    stop_timeout: Option<Dur>,
    max_instance_lifetime: Option<Dur>,
    #[serde(default)]
    isolate: bool,
    memory: Option<Spanned<String>>,
    #[serde(default)]
    mounts: Vec<Spanned<String>>,
    metrics: Option<Spanned<crate::scrape::RawServiceMetrics>>,
    autoscale: Option<Spanned<crate::autoscale::RawAutoscale>>,
    provider: Option<Spanned<String>>,
    cloud: Option<Spanned<String>>,
    flavor: Option<Spanned<String>>,
    networks: Option<Spanned<RawNetworks>>,
    port: Option<Spanned<u16>>,
    #[serde(default)]
    security_groups: Vec<String>,
    key_name: Option<String>,
    availability_zone: Option<String>,
    config_drive: Option<Spanned<bool>>,
}

/// `networks`: `"none"` or a list of network names or ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawNetworks {
    Keyword(String),
    List(Vec<String>),
}

/// `replicas`: a count, or `{ min, max }` and nothing else. Deserialized by
/// hand: an untagged enum would accept unknown keys in the table and, when
/// nothing fits, only say "did not match any variant".
#[derive(Debug)]
enum RawReplicas {
    Fixed(u32),
    Range { min: u32, max: u32 },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    min: u32,
    max: u32,
}

impl<'de> Deserialize<'de> for RawReplicas {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawReplicas;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a count of instances, or { min = N, max = M }")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RawReplicas, E> {
                u32::try_from(n).map(RawReplicas::Fixed).map_err(|_| {
                    E::custom(format!("expected a count from 1 to {}, got {n}", u32::MAX))
                })
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RawReplicas, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawReplicas, A::Error> {
                let r = RawRange::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawReplicas::Range {
                    min: r.min,
                    max: r.max,
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    max_parallel: Option<u32>,
    min_healthy_time: Option<Dur>,
    healthy_deadline: Option<Dur>,
    progress_deadline: Option<Dur>,
    auto_revert: Option<bool>,
    canary: Option<u32>,
    auto_promote: Option<bool>,
    min_healthy_percent: Option<u32>,
}

/// Parses `512M`, `2G`, `1048576` into bytes.
pub(crate) fn bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let mul = match s[i..].to_ascii_uppercase().as_str() {
                "K" | "KB" | "KIB" => 1 << 10,
                "M" | "MB" | "MIB" => 1 << 20,
                "G" | "GB" | "GIB" => 1 << 30,
                _ => return None,
            };
            (&s[..i], mul)
        }
        None => (s, 1),
    };
    num.trim().parse::<u64>().ok().map(|n| n * mul)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn service(
    d: &mut Diagnostics,
    name: &str,
    span: Range<usize>,
    raw: RawService,
    resolver: &dyn Resolver,
    images: &BTreeSet<&str>,
    checks: &BTreeMap<String, Arc<Check>>,
    taken: &mut BTreeMap<SocketAddr, String>,
    clouds: &BTreeSet<&str>,
) -> Option<Service> {
    let before = d.errors.len();
    let placement = placement(d, name, span, &raw, clouds);
    crate::validate::unknown_ref(d, &raw.image, "image", images);
    let command: Vec<String> = raw
        .command
        .get_ref()
        .iter()
        .map(|a| a.get_ref().clone())
        .collect();
    if command.is_empty() || command[0].is_empty() {
        d.error(raw.command.span(), "empty command", "nothing to run", None);
    }
    for arg in raw.command.get_ref() {
        let mut rest = arg.get_ref().as_str();
        while let Some(i) = rest.find('{') {
            let tail = &rest[i..];
            match tail.find('}') {
                Some(j) if PLACEHOLDERS.contains(&&tail[..=j]) => rest = &tail[j + 1..],
                Some(j) => {
                    d.error(
                        arg.span(),
                        format!("unknown placeholder `{}`", &tail[..=j]),
                        "unknown placeholder",
                        Some(format!("known: {}", PLACEHOLDERS.join(", "))),
                    );
                    rest = &tail[j + 1..];
                }
                None => break,
            }
        }
    }
    let mut env = BTreeMap::new();
    for (k, v) in raw.env {
        let t = Text::new(v.get_ref().clone());
        crate::validate::secret_ok(d, &t, v.span(), resolver);
        env.insert(k, t);
    }
    let replicas = match raw.replicas.as_ref().map(|r| (r.get_ref(), r.span())) {
        None => Replicas { min: 1, max: 1 },
        Some((RawReplicas::Fixed(n), s)) => {
            if *n == 0 {
                d.error(
                    s,
                    "replicas must be at least 1",
                    "zero",
                    Some("remove the service to run none".into()),
                );
            }
            Replicas { min: *n, max: *n }
        }
        Some((RawReplicas::Range { min, max }, s)) => {
            // `min = 0` lets a worker rest at zero (its autoscaler wakes it);
            // a service behind the proxy is checked for that below.
            if min > max || *max == 0 {
                d.error(
                    s,
                    format!("replicas need min <= max and max >= 1, got min = {min}, max = {max}"),
                    "bad range",
                    None,
                );
            }
            Replicas {
                min: *min,
                max: *max,
            }
        }
    };
    let listen = raw
        .listen
        .as_ref()
        .and_then(|l| match l.get_ref().parse::<SocketAddr>() {
            Ok(a) => {
                if let Some(other) = taken.insert(a, name.to_string()) {
                    d.error(
                        l.span(),
                        format!("`{a}` is already the listen address of {other}"),
                        "address taken",
                        None,
                    );
                }
                Some(a)
            }
            Err(_) => {
                d.error(
                    l.span(),
                    format!("invalid listen address `{}`", l.get_ref()),
                    "expected ip:port",
                    Some("e.g. `127.0.0.1:8000`".into()),
                );
                None
            }
        });
    if listen.is_some()
        && replicas.min == 0
        && let Some(r) = &raw.replicas
    {
        d.error(
            r.span(),
            format!("service `{name}` takes traffic on its `listen` address, so it needs at least one instance: min = 0 is for workers"),
            "min = 0 behind the proxy",
            Some("set min = 1 or more".into()),
        );
    }
    let readiness = raw.readiness.as_ref().and_then(|r| {
        let known: BTreeSet<&str> = checks.keys().map(String::as_str).collect();
        if !crate::validate::unknown_ref(d, r, "check", &known) {
            return None;
        }
        let c = checks[r.get_ref()].clone();
        match &c.probe {
            Probe::Http(p) if !p.url.as_written().contains("${") => Some(c),
            Probe::Http(_) => {
                d.error(
                    r.span(),
                    format!("check `{}` has a reference in its URL", r.get_ref()),
                    "cannot aim at instances",
                    Some(
                        "a readiness check's URL is re-aimed at each instance; write it literally"
                            .into(),
                    ),
                );
                None
            }
            Probe::Tcp { .. } => Some(c),
            _ => {
                d.error(
                    r.span(),
                    format!("check `{}` is not an http or tcp check", r.get_ref()),
                    "cannot aim at instances",
                    Some("readiness runs an http or tcp check against each instance".into()),
                );
                None
            }
        }
    });
    let mut rollout = Rollout::default();
    if let Some(r) = &raw.rollout {
        let s = r.span();
        let r = r.get_ref();
        rollout.max_parallel = r.max_parallel.unwrap_or(rollout.max_parallel);
        rollout.min_healthy_time = r
            .min_healthy_time
            .map(|d| d.0)
            .unwrap_or(rollout.min_healthy_time);
        rollout.healthy_deadline = r
            .healthy_deadline
            .map(|d| d.0)
            .unwrap_or(rollout.healthy_deadline);
        rollout.progress_deadline = r
            .progress_deadline
            .map(|d| d.0)
            .unwrap_or(rollout.progress_deadline);
        rollout.auto_revert = r.auto_revert.unwrap_or(rollout.auto_revert);
        rollout.canary = r.canary.unwrap_or(rollout.canary);
        rollout.auto_promote = r.auto_promote.unwrap_or(rollout.auto_promote);
        rollout.min_healthy_percent = r.min_healthy_percent.unwrap_or(rollout.min_healthy_percent);
        if rollout.max_parallel == 0 {
            d.error(s.clone(), "`max_parallel` must be at least 1", "zero", None);
        }
        if rollout.min_healthy_percent > 100 {
            d.error(
                s.clone(),
                "`min_healthy_percent` is at most 100",
                "above 100",
                None,
            );
        }
        if rollout.healthy_deadline <= rollout.min_healthy_time {
            d.error(
                s.clone(),
                format!(
                    "`healthy_deadline` ({}) must be longer than `min_healthy_time` ({})",
                    Dur(rollout.healthy_deadline),
                    Dur(rollout.min_healthy_time)
                ),
                "no instance could ever be healthy in time",
                None,
            );
        }
        if rollout.progress_deadline < rollout.healthy_deadline {
            d.error(
                s,
                "`progress_deadline` must be at least `healthy_deadline`",
                "too short",
                None,
            );
        }
    }
    let metrics = raw
        .metrics
        .as_ref()
        .map(|m| crate::scrape::service_metrics(d, name, m.span(), m.get_ref()));
    let autoscale = raw.autoscale.as_ref().and_then(|a| {
        crate::autoscale::autoscale(
            d,
            name,
            a.span(),
            a.get_ref(),
            Some((replicas.min, replicas.max)),
        )
    });
    let memory = raw.memory.as_ref().and_then(|m| {
        let b = bytes(m.get_ref());
        if b.is_none() {
            d.error(
                m.span(),
                format!("invalid memory size `{}`", m.get_ref()),
                "expected e.g. 512M",
                None,
            );
        } else if !raw.isolate {
            d.error(
                m.span(),
                "`memory` limits only isolated instances",
                "needs isolate = true",
                None,
            );
        }
        b
    });
    let mut mounts = Vec::new();
    for m in &raw.mounts {
        let parts: Vec<&str> = m.get_ref().split(':').collect();
        match parts[..] {
            [host, inside] | [host, inside, "ro"]
                if !host.is_empty() && inside.starts_with('/') =>
            {
                mounts.push((host.to_string(), inside.to_string(), parts.len() == 3));
            }
            _ => d.error(
                m.span(),
                format!("invalid mount `{}`", m.get_ref()),
                "expected HOST:/INSIDE or HOST:/INSIDE:ro",
                Some("e.g. \"{state_dir}/data:/data\"".into()),
            ),
        }
    }
    if !raw.mounts.is_empty() && !raw.isolate {
        d.error(
            raw.mounts[0].span(),
            "`mounts` apply only to isolated instances (plain ones see the host)",
            "needs isolate = true",
            None,
        );
    }
    if d.errors.len() > before {
        return None;
    }
    Some(Service {
        name: name.into(),
        image: raw.image.into_inner(),
        command,
        env,
        replicas,
        listen,
        readiness,
        health_grace: raw
            .health_grace
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30)),
        rollout,
        drain_timeout: raw
            .drain_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30)),
        stop_timeout: raw
            .stop_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10)),
        max_instance_lifetime: raw.max_instance_lifetime.map(|d| d.0),
        isolate: raw.isolate,
        memory,
        mounts,
        metrics,
        autoscale,
        placement: placement.unwrap_or_default(),
    })
}

/// `provider` and the settings that go with it.
fn placement(
    d: &mut Diagnostics,
    name: &str,
    span: Range<usize>,
    raw: &RawService,
    clouds: &BTreeSet<&str>,
) -> Option<crate::cloud::Placement> {
    use crate::cloud::{OpenStackPlacement, Placement, ServerNetworks};
    let provider = raw
        .provider
        .as_ref()
        .map(|p| (p.get_ref().as_str(), p.span()));
    match provider {
        None | Some(("local", _)) => {
            // Cloud settings on a local service are a mistake worth naming.
            let stray = [
                raw.cloud.as_ref().map(|c| ("cloud", c.span())),
                raw.flavor.as_ref().map(|c| ("flavor", c.span())),
                raw.networks.as_ref().map(|c| ("networks", c.span())),
                raw.port.as_ref().map(|c| ("port", c.span())),
                raw.config_drive
                    .as_ref()
                    .map(|c| ("config_drive", c.span())),
            ];
            for (key, s) in stray.into_iter().flatten() {
                d.error(
                    s,
                    format!("service `{name}`: `{key}` is for services on a cloud"),
                    "not for local instances",
                    Some(
                        "add provider = \"openstack\" (and a [cloud.NAME]) to run it on Nova"
                            .into(),
                    ),
                );
            }
            if !raw.security_groups.is_empty()
                || raw.key_name.is_some()
                || raw.availability_zone.is_some()
            {
                d.error(
                    span,
                    format!("service `{name}`: security_groups, key_name and availability_zone are for services on a cloud"),
                    "not for local instances",
                    Some("add provider = \"openstack\"".into()),
                );
            }
            Some(Placement::Local)
        }
        Some(("openstack", pspan)) => {
            let before = d.errors.len();
            let cloud = match &raw.cloud {
                Some(c) => {
                    crate::validate::unknown_ref(d, c, "cloud", clouds);
                    c.get_ref().clone()
                }
                None if clouds.len() == 1 => clouds
                    .iter()
                    .next()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                None => {
                    d.error(
                        pspan.clone(),
                        format!("service `{name}` runs on OpenStack but does not say which cloud"),
                        "which [cloud.NAME]?",
                        Some(if clouds.is_empty() {
                            "describe the cloud in a [cloud.NAME] section (it may just name a clouds.yaml entry)".into()
                        } else {
                            format!("add cloud = one of: {}", clouds.iter().copied().collect::<Vec<_>>().join(", "))
                        }),
                    );
                    String::new()
                }
            };
            let flavor = match &raw.flavor {
                Some(f) => f.get_ref().clone(),
                None => {
                    d.error(
                        pspan.clone(),
                        format!("service `{name}` runs on OpenStack and needs a `flavor`"),
                        "no flavor",
                        Some("e.g. flavor = \"m1.small\"".into()),
                    );
                    String::new()
                }
            };
            let networks = match raw.networks.as_ref().map(|n| (n.get_ref(), n.span())) {
                Some((RawNetworks::Keyword(k), _)) if k == "none" => ServerNetworks::None,
                Some((RawNetworks::Keyword(k), s)) => {
                    d.error(
                        s,
                        format!("networks = \"{k}\": the only word is \"none\""),
                        "expected \"none\" or a list",
                        Some("e.g. networks = [\"private\"]".into()),
                    );
                    ServerNetworks::Named(Vec::new())
                }
                Some((RawNetworks::List(l), s)) if l.is_empty() => {
                    d.error(
                        s,
                        "an empty list of networks",
                        "no network",
                        Some("write networks = \"none\" for a server without one".into()),
                    );
                    ServerNetworks::Named(Vec::new())
                }
                Some((RawNetworks::List(l), _)) => ServerNetworks::Named(l.clone()),
                None => {
                    d.error(pspan.clone(), format!("service `{name}` runs on OpenStack and needs `networks`"), "which networks?", Some("the first network's fixed address is where steward reaches an instance, e.g. networks = [\"private\"]; \"none\" for none".into()));
                    ServerNetworks::Named(Vec::new())
                }
            };
            let port = match &raw.port {
                Some(p) if *p.get_ref() == 0 => {
                    d.error(p.span(), "port 0", "not a port", None);
                    0
                }
                Some(p) => *p.get_ref(),
                None => {
                    d.error(pspan.clone(), format!("service `{name}` runs on OpenStack and needs the `port` its application listens on"), "which port?", Some("steward reaches an instance at its server's address and this port; {port} in the command is replaced by it".into()));
                    0
                }
            };
            if networks == ServerNetworks::None && (raw.readiness.is_some() || raw.listen.is_some())
            {
                d.error(pspan, format!("service `{name}` has no network, so steward cannot reach its instances for readiness checks or its proxy"), "networks = \"none\"", Some("name the network its servers are reached on".into()));
            }
            if raw.isolate || raw.memory.is_some() || !raw.mounts.is_empty() {
                d.error(span, format!("service `{name}`: isolate, memory and mounts are for local instances (a server is isolated already; its flavor sets its memory)"), "not for servers", None);
            }
            (d.errors.len() == before).then(|| {
                Placement::OpenStack(OpenStackPlacement {
                    cloud,
                    flavor,
                    networks,
                    port,
                    security_groups: raw.security_groups.clone(),
                    key_name: raw.key_name.clone(),
                    availability_zone: raw.availability_zone.clone(),
                    config_drive: raw.config_drive.as_ref().is_some_and(|c| *c.get_ref()),
                })
            })
        }
        Some((other, s)) => {
            d.error(
                s,
                format!("unknown provider `{other}`"),
                "expected local or openstack",
                None,
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn memory_sizes() {
        assert_eq!(bytes("512M"), Some(512 << 20));
        assert_eq!(bytes("2G"), Some(2 << 30));
        assert_eq!(bytes("1024"), Some(1024));
        assert_eq!(bytes("12X"), None);
    }
}
