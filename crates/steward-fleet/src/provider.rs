//! The provider edge: where instances come from. [`Local`] runs them on this
//! machine as supervised processes, each in its own copy of the unpacked image,
//! on its own loopback port, in its own process group (so it outlives a
//! `kill -9` of steward and is adopted again by the next `serve`).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use steward_spec::Service;

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
}

/// A created instance: where it lives and listens.
#[derive(Debug, Clone)]
pub struct Created {
    /// Its directory (holds `root/` and `log`).
    pub dir: PathBuf,
    /// The address its process is told to serve on.
    pub addr: SocketAddr,
}

/// A started process.
#[derive(Debug, Clone, Copy)]
pub struct Running {
    /// Process id (also its process group).
    pub pid: i64,
    /// Start time in clock ticks since boot, to tell a reused pid apart.
    pub pid_start: Option<i64>,
}

/// Creates, starts, stops and destroys instances.
pub trait Provider: Send + Sync {
    /// Makes an instance's home from an unpacked image; starts nothing.
    fn create(
        &self,
        id: &str,
        service: &Service,
        image_root: &Path,
    ) -> Result<Created, ProviderError>;
    /// The address a (parked) instance in `dir` serves on when started again.
    fn address(&self, dir: &Path) -> std::io::Result<SocketAddr>;
    /// Starts the instance's process.
    fn start(
        &self,
        id: &str,
        service: &Service,
        digest: &str,
        created: &Created,
        env: &[(String, String)],
    ) -> Result<Running, ProviderError>;
    /// Whether the process still runs.
    fn alive(&self, running: Running) -> bool;
    /// SIGTERM, then SIGKILL after `grace`; returns once it is gone.
    fn stop(&self, running: Running, grace: Duration);
    /// Deletes what `create` made.
    fn destroy(&self, dir: &Path);
}

/// Instances as processes on this machine.
pub struct Local {
    home: PathBuf,
    state_dir: PathBuf,
    children: Mutex<HashMap<i64, Child>>,
}

impl Local {
    /// Instances live under `STATE_DIR/fleet/instances`.
    pub fn new(state_dir: &Path) -> Self {
        let state_dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        Local {
            home: state_dir.join("fleet/instances"),
            state_dir,
            children: Mutex::default(),
        }
    }
}

/// A free loopback port, found by binding port 0 (the kernel does not hand the
/// same port out again right away).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Replaces the command placeholders for one instance.
pub fn expand(arg: &str, addr: SocketAddr, root: &Path, id: &str, state_dir: &Path) -> String {
    arg.replace("{addr}", &addr.to_string())
        .replace("{state_dir}", &state_dir.display().to_string())
        .replace("{host}", &addr.ip().to_string())
        .replace("{port}", &addr.port().to_string())
        .replace("{root}", &root.display().to_string())
        .replace("{instance}", id)
}

/// Field 22 of `/proc/PID/stat`: the start time; `None` when the process is
/// gone or a zombie.
fn proc_start(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl Provider for Local {
    fn address(&self, dir: &Path) -> std::io::Result<SocketAddr> {
        match crate::sandbox::load(dir) {
            Some(s) => Ok(s.addr),
            None => Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?))),
        }
    }

    fn create(
        &self,
        id: &str,
        service: &Service,
        image_root: &Path,
    ) -> Result<Created, ProviderError> {
        let io = |what| {
            move |source| ProviderError::Io {
                id: id.to_string(),
                what,
                source,
            }
        };
        let dir = self.home.join(id);
        std::fs::create_dir_all(&dir).map_err(io("creating its directory"))?;
        if service.isolate {
            return match crate::sandbox::create(id, &dir, image_root, service.memory) {
                Ok(s) => Ok(Created { dir, addr: s.addr }),
                Err(reason) => {
                    self.destroy(&dir);
                    Err(ProviderError::Sandbox {
                        id: id.into(),
                        reason,
                    })
                }
            };
        }
        let root = dir.join("root");
        // Each instance gets its own copy: nothing it writes reaches the image
        // or another instance (reflinks keep this cheap where supported).
        let out = Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(image_root)
            .arg(&root)
            .output()
            .map_err(io("running cp"))?;
        if !out.status.success() {
            return Err(ProviderError::Copy {
                id: id.into(),
                reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let port = free_port().map_err(io("finding a free port"))?;
        Ok(Created {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    fn start(
        &self,
        id: &str,
        service: &Service,
        digest: &str,
        created: &Created,
        env: &[(String, String)],
    ) -> Result<Running, ProviderError> {
        use std::os::unix::process::CommandExt;
        let io = |what| {
            move |source| ProviderError::Io {
                id: id.to_string(),
                what,
                source,
            }
        };
        let root = created.dir.join("root");
        let sandbox = crate::sandbox::load(&created.dir);
        // Inside a sandbox the image is `/`.
        let seen_root = if sandbox.is_some() {
            PathBuf::from("/")
        } else {
            root.clone()
        };
        let argv: Vec<String> = service
            .command
            .iter()
            .map(|a| expand(a, created.addr, &seen_root, id, &self.state_dir))
            .collect();
        // An absolute program path means the one inside the image.
        let program = {
            let p = Path::new(&argv[0]);
            let inside = root.join(p.strip_prefix("/").unwrap_or(p));
            if p.is_absolute() && inside.exists() && sandbox.is_none() {
                inside
            } else {
                p.to_path_buf()
            }
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(created.dir.join("log"))
            .map_err(io("opening its log"))?;
        let log2 = log.try_clone().map_err(io("opening its log"))?;
        let mut command = match &sandbox {
            Some(sb) => {
                let mut mounts = Vec::new();
                for (host, inside, ro) in &service.mounts {
                    let host =
                        PathBuf::from(expand(host, created.addr, &root, id, &self.state_dir));
                    std::fs::create_dir_all(&host).map_err(io("creating a mounted directory"))?;
                    mounts.push((host, inside.clone(), *ro));
                }
                crate::sandbox::command(sb, id, &root, &mounts, &argv)
            }
            None => {
                let mut c = Command::new(&program);
                c.args(&argv[1..]);
                c
            }
        };
        let child = command
            .current_dir(&root)
            .env("STEWARD_SERVICE", &service.name)
            .env("STEWARD_INSTANCE", id)
            .env("STEWARD_IMAGE", digest)
            .env("STEWARD_ROOT", &root)
            .env("PORT", created.addr.port().to_string())
            .envs(
                env.iter()
                    .map(|(k, v)| (k, expand(v, created.addr, &root, id, &self.state_dir))),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: signals to steward's terminal do not reach
            // it, stopping it reaches its children too, and it survives steward.
            .process_group(0)
            .spawn()
            .map_err(|e| ProviderError::Io {
                id: id.to_string(),
                what: "starting its command",
                source: std::io::Error::new(e.kind(), format!("{}: {e}", program.display())),
            })?;
        let pid = child.id() as i64;
        let pid_start = proc_start(pid);
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, child);
        Ok(Running { pid, pid_start })
    }

    fn alive(&self, running: Running) -> bool {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = children.get_mut(&running.pid) {
            return match child.try_wait() {
                Ok(None) => true,
                _ => {
                    children.remove(&running.pid);
                    false
                }
            };
        }
        drop(children);
        // Adopted from an earlier steward: compare start times.
        match (proc_start(running.pid), running.pid_start) {
            (Some(now), Some(then)) => now == then,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    fn stop(&self, running: Running, grace: Duration) {
        let group = Pid::from_raw(running.pid as i32);
        if !self.alive(running) {
            return;
        }
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.alive(running) {
                // Whatever it left behind in its group goes too.
                let _ = killpg(group, Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(group, Signal::SIGKILL);
        for _ in 0..100 {
            if !self.alive(running) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn destroy(&self, dir: &Path) {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        // Only ever inside the instances' home.
        if dir.starts_with(&self.home) && dir != self.home {
            crate::sandbox::destroy(&dir);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand() {
        let a: SocketAddr = "127.0.0.1:8123".parse().unwrap();
        assert_eq!(
            expand(
                "--listen={addr} {host}:{port} {root}/x {instance} {state_dir}",
                a,
                Path::new("/r"),
                "api-1",
                Path::new("/s")
            ),
            "--listen=127.0.0.1:8123 127.0.0.1:8123 /r/x api-1 /s"
        );
    }

    #[test]
    fn start_stop_and_adopt() {
        let home = tempfile_dir();
        let image = home.join("image");
        std::fs::create_dir_all(image.join("bin")).unwrap();
        let local = Local::new(&home);
        let service = test_service(vec!["sleep".into(), "30".into()]);
        let created = local.create("t-1", &service, &image).unwrap();
        assert!(created.dir.join("root/bin").is_dir());
        let run = local
            .start("t-1", &service, "sha256:x", &created, &[])
            .unwrap();
        assert!(local.alive(run));
        // Another provider (a restarted steward) sees it by pid and start time.
        let other = Local::new(&home);
        assert!(other.alive(run));
        assert!(!other.alive(Running {
            pid: run.pid,
            pid_start: run.pid_start.map(|s| s + 1)
        }));
        local.stop(run, Duration::from_secs(5));
        assert!(!local.alive(run));
        local.destroy(&created.dir);
        assert!(!created.dir.exists());
        let _ = std::fs::remove_dir_all(&home);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("steward-fleet-{}", crate::short_id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn test_service(command: Vec<String>) -> Service {
        let src = format!(
            "[image.i]\nbase = \"empty\"\n[service.s]\nimage = \"i\"\ncommand = {command:?}\n"
        );
        let spec =
            steward_spec::Spec::parse("t.toml", &src, Path::new("."), &steward_spec::OsResolver)
                .unwrap();
        spec.services["s"].clone()
    }
}
