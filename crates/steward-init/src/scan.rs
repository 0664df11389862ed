//! What runs on this machine, read from /proc: listening TCP sockets, the
//! processes that hold them, and what those processes have open.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use procfs::net::TcpState;
use procfs::process::{FDPermissions, FDTarget, Process as ProcProcess};
use serde::Serialize;

/// A process that listens on at least one TCP port.
#[derive(Debug, Clone, Serialize)]
pub struct Process {
    /// Its process id.
    pub pid: i32,
    /// Its command name (`comm`).
    pub name: String,
    /// The program it runs, when readable.
    pub exe: Option<PathBuf>,
    /// Its arguments, program first.
    pub cmdline: Vec<String>,
    /// Its working directory, when readable.
    pub cwd: Option<PathBuf>,
    /// The name of the user it runs as.
    pub user: String,
    /// The systemd unit it belongs to, from its control group.
    pub unit: Option<String>,
    /// Files it holds open for writing whose names say they are logs.
    pub logs: Vec<PathBuf>,
    /// SQLite databases it holds open or that its environment points at.
    pub sqlite: Vec<PathBuf>,
    /// Directories its environment names (`FOO_DATA=/var/lib/foo`).
    pub data_dirs: Vec<DataDir>,
    /// Names (never values) of its environment variables that hold a
    /// credential, with what the value is.
    pub secrets: Vec<Secret>,
    /// Environment variables other than secrets that tell what it is
    /// (`RABBITMQ_NODENAME`); values kept.
    #[serde(skip)]
    pub hints: BTreeMap<String, String>,
    /// An instance a steward runs (its environment has `STEWARD_INSTANCE`).
    pub steward_instance: bool,
}

/// An environment variable holding a credential; only its name is kept.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Secret {
    /// The variable's name.
    pub var: String,
    /// What its value is: a URL with this scheme (`postgres`, `redis`,
    /// `amqp`, `mysql`), or `secret` for a password, token or key.
    pub kind: String,
    /// The port a URL's value names (its scheme's default when it names
    /// none), to tie it to the server found listening there.
    pub port: Option<u16>,
}

/// A directory named by an environment variable of a process.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DataDir {
    /// The variable.
    pub var: String,
    /// The directory.
    pub path: PathBuf,
}

/// A listening TCP socket and, when it could be read, its process.
#[derive(Debug, Clone)]
pub struct Listener {
    /// The address a probe connects to (a wildcard address becomes loopback).
    pub addr: SocketAddr,
    /// The process, when /proc lets us see it (another user's needs root).
    pub pid: Option<i32>,
}

/// Every listening TCP socket and the processes holding them.
#[derive(Debug, Default)]
pub struct Machine {
    /// Listening sockets, by address.
    pub listeners: Vec<Listener>,
    /// Processes holding them, by pid.
    pub processes: BTreeMap<i32, Process>,
    /// Sockets whose process could not be read (not root).
    pub hidden: usize,
}

/// Reads /proc. `ports` keeps only those listening ports (all when empty).
pub fn machine(ports: &[u16]) -> std::io::Result<Machine> {
    let mut sockets: BTreeMap<u64, SocketAddr> = BTreeMap::new();
    let v4 = procfs::net::tcp().map_err(io)?;
    let v6 = procfs::net::tcp6().unwrap_or_default();
    for e in v4.into_iter().chain(v6) {
        if e.state != TcpState::Listen {
            continue;
        }
        if !ports.is_empty() && !ports.contains(&e.local_address.port()) {
            continue;
        }
        sockets.entry(e.inode).or_insert(e.local_address);
    }
    let mut owner: HashMap<u64, i32> = HashMap::new();
    for p in procfs::process::all_processes().map_err(io)?.flatten() {
        let Ok(fds) = p.fd() else { continue };
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target
                && sockets.contains_key(&inode)
            {
                owner.entry(inode).or_insert(p.pid());
            }
        }
    }
    let mut m = Machine::default();
    let mut seen = std::collections::BTreeSet::new();
    for (inode, local) in &sockets {
        let addr = probe_address(*local);
        // One socket per address: IPv4 and IPv6 wildcards on one port are
        // the same service.
        if !seen.insert((addr.port(), owner.get(inode).copied())) {
            continue;
        }
        let pid = owner.get(inode).copied();
        if pid.is_none() {
            m.hidden += 1;
        }
        if let Some(pid) = pid
            && !m.processes.contains_key(&pid)
            && let Ok(p) = ProcProcess::new(pid)
        {
            m.processes.insert(pid, process(&p));
        }
        m.listeners.push(Listener { addr, pid });
    }
    m.listeners.sort_by_key(|l| (l.addr.port(), l.addr));
    Ok(m)
}

fn io(e: procfs::ProcError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Where to reach a socket listening on `local`: a wildcard address is
/// reached on loopback.
fn probe_address(local: SocketAddr) -> SocketAddr {
    match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), local.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), local.port())
        }
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), local.port()),
            None => local,
        },
        _ => local,
    }
}

fn process(p: &ProcProcess) -> Process {
    let pid = p.pid();
    let name = p.stat().map(|s| s.comm).unwrap_or_default();
    let environ = p.environ().unwrap_or_default();
    let mut secrets = Vec::new();
    let mut hints = BTreeMap::new();
    let mut data_dirs = Vec::new();
    let mut sqlite = Vec::new();
    let mut env: Vec<(String, String)> = environ
        .into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    env.sort();
    for (k, v) in env {
        if let Some(s) = secret(&k, &v) {
            secrets.push(s);
            continue;
        }
        if k.starts_with("RABBITMQ_") || k == "STEWARD_INSTANCE" {
            hints.insert(k.clone(), v.clone());
        }
        // Build tools' and the session's own directories are not the
        // application's data.
        let tooling = [
            "CARGO",
            "RUSTUP",
            "XDG_",
            "SYSTEMD_",
            "DBUS_",
            "INVOCATION_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
            || [
                "HOME", "PWD", "OLDPWD", "TMPDIR", "TMP", "TEMP", "SHELL", "OUT_DIR",
            ]
            .contains(&k.as_str());
        if tooling {
            continue;
        }
        let path = Path::new(&v);
        if path.is_absolute() && !is_system_path(path) && !k.ends_with("PATH") {
            let named = DataDir {
                var: k.clone(),
                path: path.to_path_buf(),
            };
            if path.is_dir() && !sqlite_in(path).is_empty() {
                sqlite.extend(sqlite_in(path));
                data_dirs.push(named);
            } else if path.is_dir() && (k.contains("DATA") || k.contains("DIR")) {
                data_dirs.push(named);
            } else if path.is_file() && is_sqlite(path) {
                sqlite.push(path.to_path_buf());
            }
        }
    }
    let mut logs = Vec::new();
    if let Ok(fds) = p.fd() {
        for fd in fds.flatten() {
            let FDTarget::Path(path) = &fd.target else {
                continue;
            };
            if !path.is_file() {
                continue;
            }
            if is_sqlite(path) {
                if !sqlite.contains(path) {
                    sqlite.push(path.clone());
                }
            } else if fd.mode().contains(FDPermissions::WRITE)
                && is_log(path)
                && !logs.contains(path)
            {
                logs.push(path.clone());
            }
        }
    }
    logs.sort();
    sqlite.sort();
    sqlite.dedup();
    Process {
        pid,
        name,
        exe: p.exe().ok(),
        cmdline: p.cmdline().unwrap_or_default(),
        cwd: p.cwd().ok(),
        user: p
            .uid()
            .ok()
            .and_then(user_name)
            .unwrap_or_else(|| "?".into()),
        unit: std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|c| unit(&c)),
        logs,
        sqlite,
        data_dirs,
        steward_instance: hints.contains_key("STEWARD_INSTANCE"),
        secrets,
        hints,
    }
}

/// The credential an environment variable holds, if any: a URL with a
/// password in it, or a variable whose name says password, token, secret or
/// key. The value itself is not kept.
pub fn secret(var: &str, value: &str) -> Option<Secret> {
    if let Ok(url) = url::Url::parse(value) {
        let scheme = match url.scheme() {
            "postgres" | "postgresql" => Some("postgres"),
            "redis" | "rediss" => Some("redis"),
            "amqp" | "amqps" => Some("amqp"),
            "mysql" | "mariadb" => Some("mysql"),
            _ => None,
        };
        if let Some(kind) = scheme {
            let default = match kind {
                "postgres" => 5432,
                "redis" => 6379,
                "amqp" => 5672,
                _ => 3306,
            };
            return Some(Secret {
                var: var.to_string(),
                kind: kind.to_string(),
                port: Some(url.port().unwrap_or(default)),
            });
        }
        if url.password().is_some() {
            return Some(Secret {
                var: var.to_string(),
                kind: "secret".into(),
                port: None,
            });
        }
    }
    let upper = var.to_ascii_uppercase();
    let secret_name = [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "PRIVATE_KEY",
    ]
    .iter()
    .any(|w| upper.contains(w));
    (secret_name && !value.is_empty()).then(|| Secret {
        var: var.to_string(),
        kind: "secret".into(),
        port: None,
    })
}

/// The systemd unit in a process's `/proc/PID/cgroup` (the last path
/// element ending in `.service`).
pub fn unit(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|l| l.rsplit(':').next())
        .flat_map(|path| path.split('/').rev())
        .find(|part| part.ends_with(".service"))
        .map(str::to_string)
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _ = f.next();
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

fn is_system_path(p: &Path) -> bool {
    [
        "/usr", "/bin", "/sbin", "/lib", "/etc", "/proc", "/sys", "/dev", "/run",
    ]
    .iter()
    .any(|s| p.starts_with(s))
        || p == Path::new("/")
}

fn is_log(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    p.starts_with("/var/log") || name.ends_with(".log") || name.contains(".log.")
}

/// A file that starts with SQLite's header.
pub fn is_sqlite(p: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == b"SQLite format 3\0"
}

/// SQLite databases directly inside a directory.
fn sqlite_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_sqlite(p))
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_recognised_by_value_or_name_and_never_kept() {
        let s = secret("DATABASE_URL", "postgres://app:pw@127.0.0.1:5433/app").unwrap();
        assert_eq!((s.kind.as_str(), s.port), ("postgres", Some(5433)));
        let s = secret("CACHE", "redis://127.0.0.1").unwrap();
        assert_eq!((s.kind.as_str(), s.port), ("redis", Some(6379)));
        assert_eq!(secret("API_TOKEN", "abc").unwrap().kind, "secret");
        assert_eq!(
            secret("UPSTREAM", "https://u:p@example.com/").unwrap().kind,
            "secret"
        );
        assert!(secret("HOME", "/root").is_none());
        assert!(secret("SITE", "https://example.com/").is_none());
        assert!(secret("API_TOKEN", "").is_none());
        let json = serde_json::to_string(&secret("DATABASE_URL", "postgres://a:hunter2@h/db"));
        assert!(!json.unwrap().contains("hunter2"));
    }

    #[test]
    fn the_unit_comes_from_the_control_group() {
        assert_eq!(
            unit("0::/system.slice/postgresql@15-main.service\n").as_deref(),
            Some("postgresql@15-main.service")
        );
        assert_eq!(
            unit("12:pids:/system.slice/redis-server.service/x\n").as_deref(),
            Some("redis-server.service")
        );
        assert_eq!(
            unit("0::/user.slice/user-1000.slice/session-2.scope\n"),
            None
        );
    }

    #[test]
    fn a_wildcard_listener_is_probed_on_loopback() {
        assert_eq!(
            probe_address("0.0.0.0:80".parse().unwrap()),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            probe_address("[::]:80".parse().unwrap()),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            probe_address("[::ffff:10.0.0.1]:80".parse().unwrap()),
            "10.0.0.1:80".parse().unwrap()
        );
    }
}
