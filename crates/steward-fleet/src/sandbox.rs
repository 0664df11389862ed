//! Isolated instances (`isolate = true`, as root): an overlayfs root over the
//! unpacked image (a fresh upper directory per instance), a network namespace
//! with a veth pair and a private /30 from 10.213.0.0/16, an optional cgroup v1
//! memory limit, and the process under bubblewrap (own pid, ipc and uts
//! namespaces). Everything made is written to `sandbox.json` in the instance's
//! directory so that destroying it — by this steward or a later one — undoes
//! exactly that.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The port an isolated instance serves on (it has its own network).
pub const PORT: u16 = 8080;
const CGROUP_MEMORY: &str = "/sys/fs/cgroup/memory";

/// What was made for one isolated instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sandbox {
    /// Network namespace name.
    pub netns: String,
    /// The instance's address (inside its namespace, reachable from the host).
    pub addr: SocketAddr,
    /// Its memory cgroup directory, when limited.
    pub cgroup: Option<PathBuf>,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            std::iter::once(cmd.get_program())
                .chain(cmd.get_args())
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args))
}

/// Whether this process may make sandboxes.
pub fn check_privileges() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "isolate = true needs root (overlayfs, network namespaces, cgroups); run steward as root or set isolate = false".into(),
        );
    }
    for tool in ["bwrap", "ip", "mount", "umount"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
            || Path::new("/usr/sbin").join(tool).is_file()
            || Path::new("/sbin").join(tool).is_file();
        if !found {
            return Err(format!(
                "isolate = true needs `{tool}` (Debian packages bubblewrap, iproute2, mount)"
            ));
        }
    }
    Ok(())
}

/// Makes the overlay root, network and cgroup of instance `id` in `dir`.
pub fn create(
    id: &str,
    dir: &Path,
    image_root: &Path,
    memory: Option<u64>,
) -> Result<Sandbox, String> {
    check_privileges()?;
    let (upper, work, root) = (dir.join("upper"), dir.join("work"), dir.join("root"));
    for d in [&upper, &work, &root] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    // Record first: whatever follows is undone by `destroy` even if it fails half-way.
    let slot = (1..16384u32)
        .map(|n| {
            (n + u32::from_str_radix(&id[id.len().saturating_sub(4)..], 16).unwrap_or(0)) % 16384
        })
        .find(|s| *s != 0 && !Path::new(&format!("/run/netns/stw{s}")).exists())
        .ok_or("no free network slot in 10.213.0.0/16")?;
    let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + slot * 4;
    let (host_ip, inner_ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
    let netns = format!("stw{slot}");
    let cgroup = memory.map(|_| PathBuf::from(CGROUP_MEMORY).join(format!("steward-{id}")));
    let sandbox = Sandbox {
        netns: netns.clone(),
        addr: SocketAddr::from((inner_ip, PORT)),
        cgroup: cgroup.clone(),
    };
    std::fs::write(
        dir.join("sandbox.json"),
        serde_json::to_vec(&sandbox).expect("serialisable"),
    )
    .map_err(|e| e.to_string())?;
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            image_root.display(),
            upper.display(),
            work.display()
        ))
        .arg(&root))?;
    let (h, c) = (format!("{netns}h"), format!("{netns}c"));
    ip(&["netns", "add", &netns])?;
    ip(&["link", "add", &h, "type", "veth", "peer", "name", &c])?;
    ip(&["link", "set", &c, "netns", &netns])?;
    ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &h])?;
    ip(&["link", "set", &h, "up"])?;
    ip(&[
        "netns",
        "exec",
        &netns,
        "ip",
        "addr",
        "add",
        &format!("{inner_ip}/30"),
        "dev",
        &c,
    ])?;
    ip(&["netns", "exec", &netns, "ip", "link", "set", &c, "up"])?;
    ip(&["netns", "exec", &netns, "ip", "link", "set", "lo", "up"])?;
    if let (Some(cg), Some(bytes)) = (&cgroup, memory) {
        std::fs::create_dir_all(cg).map_err(|e| {
            format!(
                "{}: {e} (is the cgroup v1 memory controller mounted?)",
                cg.display()
            )
        })?;
        std::fs::write(cg.join("memory.limit_in_bytes"), bytes.to_string())
            .map_err(|e| format!("memory limit: {e}"))?;
    }
    Ok(sandbox)
}

/// The sandbox recorded in `dir`, if the instance is isolated.
pub fn load(dir: &Path) -> Option<Sandbox> {
    serde_json::from_slice(&std::fs::read(dir.join("sandbox.json")).ok()?).ok()
}

/// The command that runs `argv` inside the sandbox: into the cgroup (through a
/// shell that moves itself before anything forks), into the network
/// namespace, then bubblewrap over the overlay root.
pub fn command(
    sandbox: &Sandbox,
    id: &str,
    root: &Path,
    mounts: &[(PathBuf, String, bool)],
    argv: &[String],
) -> Command {
    let mut inner: Vec<String> = vec![
        "ip".into(),
        "netns".into(),
        "exec".into(),
        sandbox.netns.clone(),
        "bwrap".into(),
    ];
    inner.extend(
        [
            "--bind",
            &root.display().to_string(),
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--hostname",
            id,
        ]
        .map(String::from),
    );
    for (host, inside, ro) in mounts {
        inner.push(if *ro { "--ro-bind" } else { "--bind" }.into());
        inner.push(host.display().to_string());
        inner.push(inside.clone());
    }
    inner.extend(["--chdir".into(), "/".into(), "--".into()]);
    inner.extend(argv.iter().cloned());
    match &sandbox.cgroup {
        Some(cg) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg("echo $$ > \"$1/cgroup.procs\" && shift && exec \"$@\"")
                .arg("sh")
                .arg(cg)
                .args(&inner);
            c
        }
        None => {
            let mut c = Command::new(&inner[0]);
            c.args(&inner[1..]);
            c
        }
    }
}

/// Undoes what [`create`] made (each step on its own: a half-made sandbox is
/// taken apart as far as it got).
pub fn destroy(dir: &Path) {
    let Some(s) = load(dir) else {
        return;
    };
    let root = dir.join("root");
    let _ = run(Command::new("umount").arg(&root));
    let _ = ip(&["link", "del", &format!("{}h", s.netns)]);
    let _ = ip(&["netns", "del", &s.netns]);
    if let Some(cg) = &s.cgroup {
        let _ = std::fs::remove_dir(cg);
    }
    let _ = std::fs::remove_file(dir.join("sandbox.json"));
}
