//! Facts about the target, for templates (`{{ facts.hostname }}`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::fsx::Target;

/// What steward knows about the machine (and, under `--root`, the root's OS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// Host name, short, as Ansible's `ansible_hostname` (the part before the
    /// first dot; the root's `/etc/hostname` under `--root`).
    pub hostname: String,
    /// Fully qualified name, as Ansible's `ansible_fqdn` (Python's
    /// `socket.getfqdn()`); under `--root`, the root's `/etc/hostname`.
    pub fqdn: String,
    /// `/etc/os-release` of the target, lowercased keys (`id`, `version_id`,
    /// `version_codename`, `pretty_name`, …).
    pub os: BTreeMap<String, String>,
    /// CPU architecture (`x86_64`, `aarch64`, …).
    pub arch: String,
    /// Running kernel release.
    pub kernel: String,
    /// CPUs available to this process.
    pub cpus: usize,
    /// Total memory in MiB.
    pub memory_mb: u64,
    /// IPv4 addresses of non-loopback interfaces.
    pub ipv4: Vec<String>,
    /// IPv6 addresses of non-loopback interfaces.
    pub ipv6: Vec<String>,
}

impl Facts {
    /// Reads the facts of a target.
    pub fn gather(target: &Target) -> Facts {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let node = read(Path::new("/proc/sys/kernel/hostname"))
            .trim()
            .to_string();
        let (node, fqdn) = match read(&target.path(Path::new("/etc/hostname"))).trim() {
            h if !target.is_host() && !h.is_empty() => (h.to_string(), h.to_string()),
            _ => (node.clone(), getfqdn(&node)),
        };
        let hostname = node.split('.').next().unwrap_or_default().to_string();
        let mut os_release = read(&target.path(Path::new("/etc/os-release")));
        if os_release.is_empty() {
            os_release = read(&target.path(Path::new("/usr/lib/os-release")));
        }
        let os = os_release
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_ascii_lowercase(),
                    v.trim().trim_matches('"').to_string(),
                )
            })
            .collect();
        let memory_mb = read(Path::new("/proc/meminfo"))
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb / 1024)
            .unwrap_or(0);
        let (mut ipv4, mut ipv6) = (Vec::new(), Vec::new());
        for iface in if_addrs::get_if_addrs().unwrap_or_default() {
            if iface.is_loopback() {
                continue;
            }
            match iface.ip() {
                std::net::IpAddr::V4(a) => ipv4.push(a.to_string()),
                std::net::IpAddr::V6(a) => ipv6.push(a.to_string()),
            }
        }
        ipv4.sort();
        ipv6.sort();
        Facts {
            hostname,
            fqdn,
            os,
            arch: std::env::consts::ARCH.to_string(),
            kernel: read(Path::new("/proc/sys/kernel/osrelease"))
                .trim()
                .to_string(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_mb,
            ipv4,
            ipv6,
        }
    }
}

/// `lookup_fqdn`, once per host name in a process: facts are gathered twice
/// per converge run and on every drift check, and a reverse DNS lookup can
/// take seconds.
fn getfqdn(name: &str) -> String {
    static KNOWN: std::sync::Mutex<Option<(String, String)>> = std::sync::Mutex::new(None);
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    match &*known {
        Some((n, fqdn)) if n == name => fqdn.clone(),
        _ => {
            let fqdn = lookup_fqdn(name);
            *known = Some((name.to_string(), fqdn.clone()));
            fqdn
        }
    }
}

/// Python's `socket.getfqdn()` (what Ansible reports as `ansible_fqdn`): the
/// name's address, and that address's names — `/etc/hosts` first, as the
/// system resolver does, then DNS — the first with a dot, else the first;
/// the name itself when nothing resolves.
fn lookup_fqdn(name: &str) -> String {
    use std::net::ToSocketAddrs;
    let Some(addr) = (name, 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| a.ip())
    else {
        return name.to_string();
    };
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let names: Vec<String> = hosts
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 1 && f[0].parse::<std::net::IpAddr>().ok() == Some(addr))
        .map(|f| f[1..].iter().map(|n| n.to_string()).collect())
        .or_else(|| dns_lookup::lookup_addr(&addr).ok().map(|n| vec![n]))
        .unwrap_or_default();
    names
        .iter()
        .find(|n| n.contains('.'))
        .or(names.first())
        .cloned()
        .unwrap_or_else(|| name.to_string())
}
