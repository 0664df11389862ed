//! `steward init`: finds what runs on this machine — listening ports, the
//! processes behind them, what each port speaks, their health and metrics
//! endpoints, databases, data and logs — and writes a starter spec for it.
//!
//! [`scan`] reads /proc, [`probe`] talks to each port, [`discover`] puts the
//! two together as [`Findings`], and [`write::render`] turns findings into
//! a commented `steward.toml` (no I/O there). Secrets found on the way (a
//! password in a process's environment) are never kept: only the name of
//! the variable that holds one.

pub mod probe;
pub mod scan;
pub mod write;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

pub use probe::{Endpoint, Format, Protocol};
pub use scan::{Process, Secret};

/// Everything `init` found.
#[derive(Debug, Clone, Serialize)]
pub struct Findings {
    /// This machine's name.
    pub host: String,
    /// What steward can watch, back up or run, one per server or application.
    pub components: Vec<Component>,
    /// Listening ports left out, each with why.
    pub skipped: Vec<String>,
    /// Listening sockets whose process could not be read (run as root to see
    /// other users' processes).
    pub hidden_sockets: usize,
}

/// One server or application found listening.
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    /// Its name in the spec (`postgres`, `redis`, the program's name).
    pub name: String,
    /// What it speaks.
    pub protocol: Protocol,
    /// Where it answers.
    pub addr: SocketAddr,
    /// The server's name and version from its greeting.
    pub server: Option<String>,
    /// Redis wants a password first.
    pub auth_required: bool,
    /// HTTP: health and metrics endpoints that answered.
    pub endpoints: Vec<Endpoint>,
    /// The process behind it.
    pub process: Option<Process>,
    /// A database's credentials: an environment variable of another process
    /// (the application) whose value is a URL for this server.
    pub credentials: Option<Credentials>,
    /// A database server's data directory.
    pub data_dir: Option<PathBuf>,
}

/// Where the credentials for a server are: the variable `var` in the
/// environment of process `pid` (`process`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Credentials {
    /// The variable's name.
    pub var: String,
    /// The process whose environment holds it.
    pub pid: i32,
    /// That process's name.
    pub process: String,
}

impl Component {
    /// An application steward could package and run: it speaks HTTP and its
    /// program is not a known server.
    pub fn is_application(&self) -> bool {
        self.protocol == Protocol::Http
            && self
                .process
                .as_ref()
                .is_some_and(|p| !KNOWN_SERVERS.contains(&p.name.as_str()))
    }
}

/// Programs that serve HTTP but are not an application to package.
const KNOWN_SERVERS: [&str; 8] = [
    "nginx", "apache2", "httpd", "caddy", "haproxy", "envoy", "traefik", "steward",
];

/// Finds what listens on this machine (only `ports` when not empty).
pub async fn discover(ports: &[u16]) -> std::io::Result<Findings> {
    let machine = scan::machine(ports)?;
    let me = std::process::id() as i32;
    let my_exe = std::env::current_exe().ok();
    let mut probes = tokio::task::JoinSet::new();
    let mut skipped = Vec::new();
    for l in machine.listeners.iter().cloned() {
        let process = l.pid.and_then(|pid| machine.processes.get(&pid)).cloned();
        if let Some(p) = &process {
            let a_steward = p.pid == me
                || (p.exe.is_some() && p.exe == my_exe)
                || p.exe
                    .as_ref()
                    .and_then(|e| e.file_name())
                    .is_some_and(|n| n == "steward");
            if a_steward {
                skipped.push(format!("{}: steward (pid {})", l.addr, p.pid));
                continue;
            }
            if p.steward_instance {
                skipped.push(format!(
                    "{}: {} (pid {}), an instance a steward already runs",
                    l.addr, p.name, p.pid
                ));
                continue;
            }
        }
        let name = process.as_ref().map(|p| p.name.clone()).unwrap_or_default();
        probes.spawn(async move {
            let id = probe::identify(l.addr, probe::hint(&name, l.addr.port())).await;
            (l, process, id)
        });
    }
    let mut probed = Vec::new();
    while let Some(r) = probes.join_next().await {
        if let Ok(r) = r {
            probed.push(r);
        }
    }
    probed.sort_by_key(|(l, _, _)| (l.addr.port(), l.addr));
    let mut components: Vec<Component> = Vec::new();
    for (l, process, id) in probed {
        let who = process
            .as_ref()
            .map(|p| format!("{} (pid {})", p.name, p.pid))
            .unwrap_or_else(|| "a process not visible to this user".into());
        if id.protocol == Protocol::Unknown {
            skipped.push(format!(
                "{}: {who}; speaks none of HTTP, PostgreSQL, MySQL, Redis, AMQP",
                l.addr
            ));
            continue;
        }
        // One component per process and protocol (a server's second port,
        // e.g. an IPv6 twin, adds nothing).
        if let Some(first) = components.iter().find(|c| {
            c.protocol == id.protocol
                && c.process.as_ref().map(|p| p.pid) == process.as_ref().map(|p| p.pid)
                && process.is_some()
        }) {
            skipped.push(format!("{}: {who}; also at {}", l.addr, first.addr));
            continue;
        }
        if id.protocol == Protocol::Http && id.endpoints.is_empty() {
            skipped.push(format!(
                "{}: {who}; speaks HTTP but answers none of {}",
                l.addr,
                probe::PATHS.join(", ")
            ));
            continue;
        }
        let data_dir = process.as_ref().and_then(|p| data_dir(id.protocol, p));
        components.push(Component {
            name: String::new(),
            protocol: id.protocol,
            addr: l.addr,
            server: id.server,
            auth_required: id.auth_required,
            endpoints: id.endpoints,
            process,
            credentials: None,
            data_dir,
        });
    }
    name_components(&mut components);
    link_credentials(&mut components);
    Ok(Findings {
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into()),
        components,
        skipped,
        hidden_sockets: machine.hidden,
    })
}

/// A database server's data directory: PostgreSQL's `-D`, MySQL's
/// `--datadir`, else the directory it runs in (servers change into theirs).
fn data_dir(protocol: Protocol, p: &Process) -> Option<PathBuf> {
    let flag = |short: &str, long: &str| {
        let mut args = p.cmdline.iter();
        while let Some(a) = args.next() {
            if a == short {
                return args.next().map(PathBuf::from);
            }
            if let Some(v) = a.strip_prefix(long) {
                return Some(PathBuf::from(v));
            }
        }
        None
    };
    match protocol {
        Protocol::Postgres => flag("-D", "-D").or_else(|| p.cwd.clone()),
        Protocol::Mysql => flag("--datadir", "--datadir=").or_else(|| p.cwd.clone()),
        _ => None,
    }
}

/// Spec names: the protocol's for servers (`postgres`, `rabbitmq`), the
/// program's for applications; a second one of a kind gets its port.
fn name_components(components: &mut [Component]) {
    let base: Vec<String> = components
        .iter()
        .map(|c| match c.protocol {
            Protocol::Postgres => "postgres".to_string(),
            Protocol::Mysql => "mysql".into(),
            Protocol::Redis => "redis".into(),
            Protocol::Amqp => "rabbitmq".into(),
            _ => c
                .process
                .as_ref()
                .map(|p| spec_name(&p.name))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "http".into()),
        })
        .collect();
    for (i, c) in components.iter_mut().enumerate() {
        let twins = base.iter().filter(|b| **b == base[i]).count();
        c.name = if twins > 1 {
            format!("{}-{}", base[i], c.addr.port())
        } else {
            base[i].clone()
        };
    }
}

/// A program name as a spec name: lower case letters, digits and `-`.
pub fn spec_name(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        let ch = ch.to_ascii_lowercase();
        if ch.is_ascii_alphanumeric() {
            out.push(ch);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    match out.chars().next() {
        Some(c) if c.is_ascii_digit() => format!("app-{out}"),
        _ => out,
    }
}

/// Ties each database to the variable (in some other process's
/// environment) whose URL names its port.
fn link_credentials(components: &mut [Component]) {
    let holders: Vec<(i32, String, Secret)> = components
        .iter()
        .filter_map(|c| c.process.as_ref())
        .flat_map(|p| {
            p.secrets
                .iter()
                .map(move |s| (p.pid, p.name.clone(), s.clone()))
        })
        .collect();
    for c in components.iter_mut() {
        let kind = match c.protocol {
            Protocol::Postgres => "postgres",
            Protocol::Redis => "redis",
            Protocol::Amqp => "amqp",
            Protocol::Mysql => "mysql",
            _ => continue,
        };
        c.credentials = holders
            .iter()
            .find(|(pid, _, s)| {
                s.kind == kind
                    && s.port == Some(c.addr.port())
                    && Some(*pid) != c.process.as_ref().map(|p| p.pid)
            })
            .map(|(pid, name, s)| Credentials {
                var: s.var.clone(),
                pid: *pid,
                process: name.clone(),
            });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn program_names_become_spec_names() {
        assert_eq!(super::spec_name("fractals"), "fractals");
        assert_eq!(super::spec_name("My App.bin"), "my-app-bin");
        assert_eq!(super::spec_name("9to5"), "app-9to5");
        assert_eq!(super::spec_name("--"), "");
    }
}
