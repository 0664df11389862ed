//! Facts about the target, for templates (`{{ facts.hostname }}`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::fsx::Target;

/// What steward knows about the machine (and, under `--root`, the root's OS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// Host name (the root's `/etc/hostname` under `--root`, when it has one).
    pub hostname: String,
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
        let mut hostname = read(Path::new("/proc/sys/kernel/hostname"))
            .trim()
            .to_string();
        if !target.is_host() {
            let h = read(&target.path(Path::new("/etc/hostname")));
            if !h.trim().is_empty() {
                hostname = h.trim().to_string();
            }
        }
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
