//! The local provider: instances as supervised processes on this machine,
//! each in its own copy of the unpacked image, on its own loopback port, in
//! its own process group (so it outlives a `kill -9` of steward and is adopted
//! again by the next `serve`). Its record of an instance — directory, pid and
//! the pid's start time — lives in the handle's `data`; nobody else reads it.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use steward_spec::Service;

use super::{
    ImageRef, InstanceHandle, InstanceSpec, Provider, ProviderError, ProviderFuture, Publish,
    Status,
};

/// A created instance: where it lives and listens.
#[derive(Debug, Clone)]
struct Created {
    /// Its directory (holds `root/` and `log`).
    dir: PathBuf,
    /// The address its process is told to serve on.
    addr: SocketAddr,
}

/// A started process.
#[derive(Debug, Clone, Copy)]
struct Running {
    /// Process id (also its process group).
    pid: i64,
    /// Start time in clock ticks since boot, to tell a reused pid apart.
    pid_start: Option<i64>,
}

/// The local provider's record of an instance (the handle's `data`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid_start: Option<i64>,
    /// Created and never started: its first start uses the port chosen at
    /// creation; a later one (a parked instance revived) finds a free one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    fresh: bool,
}

impl Record {
    fn of(h: &InstanceHandle) -> Result<Record, ProviderError> {
        serde_json::from_value(h.data.clone()).map_err(|e| ProviderError::Record {
            id: h.id.clone(),
            reason: e.to_string(),
        })
    }

    fn running(&self) -> Option<Running> {
        self.pid.map(|pid| Running {
            pid,
            pid_start: self.pid_start,
        })
    }

    fn handle(&self, id: &str, addr: SocketAddr) -> InstanceHandle {
        InstanceHandle {
            id: id.to_string(),
            address: addr,
            data: serde_json::to_value(self).unwrap_or_default(),
        }
    }
}

/// Instances as processes on this machine.
#[derive(Clone)]
pub struct Local {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    home: PathBuf,
    state_dir: PathBuf,
    children: Mutex<HashMap<i64, Child>>,
}

impl Local {
    /// Instances live under `STATE_DIR/fleet/instances`, unpacked images
    /// under `STATE_DIR/fleet/images`.
    pub fn new(state_dir: &Path) -> Self {
        let state_dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        Local {
            inner: std::sync::Arc::new(Inner {
                home: state_dir.join("fleet/instances"),
                state_dir,
                children: Mutex::default(),
            }),
        }
    }

    /// Runs blocking work (copies, signals, waits) off the async threads.
    fn blocking<'a, T: Send + 'static>(
        &'a self,
        f: impl FnOnce(&Inner) -> Result<T, ProviderError> + Send + 'static,
    ) -> ProviderFuture<'a, T> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&inner))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        })
    }
}

impl Provider for Local {
    fn publish<'a>(&'a self, p: &'a Publish) -> ProviderFuture<'a, ImageRef> {
        let p = p.clone();
        self.blocking(move |inner| {
            let cache = inner.state_dir.join("fleet/images");
            let root =
                steward_image::unpack(&p.spec, &p.image, &p.digest, &cache, p.resolver.as_ref())
                    .map_err(|e| ProviderError::Publish {
                        digest: p.digest.clone(),
                        reason: e.to_string(),
                    })?;
            Ok(ImageRef {
                digest: p.digest,
                data: serde_json::json!({ "root": root }),
            })
        })
    }

    fn create<'a>(
        &'a self,
        spec: InstanceSpec<'a>,
        image: &'a ImageRef,
    ) -> ProviderFuture<'a, InstanceHandle> {
        let (id, service) = (spec.id.to_string(), spec.service.clone());
        let root = image
            .data
            .get("root")
            .and_then(|r| r.as_str())
            .map(PathBuf::from);
        self.blocking(move |inner| {
            let root = root.ok_or_else(|| ProviderError::Record {
                id: id.clone(),
                reason: "the image was not published by the local provider".into(),
            })?;
            let created = inner.create(&id, &service, &root)?;
            Ok(Record {
                dir: created.dir,
                fresh: true,
                ..Record::default()
            }
            .handle(&id, created.addr))
        })
    }

    fn start<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        spec: InstanceSpec<'a>,
    ) -> ProviderFuture<'a, InstanceHandle> {
        let (id, service, digest, env) = (
            spec.id.to_string(),
            spec.service.clone(),
            spec.digest.to_string(),
            spec.env.to_vec(),
        );
        let record = Record::of(handle);
        let known = handle.address;
        self.blocking(move |inner| {
            let mut record = record?;
            // A parked instance gets a new port; a sandboxed one keeps its own.
            let addr = inner
                .address(&record.dir, record.fresh.then_some(known))
                .map_err(|source| ProviderError::Io {
                    id: id.clone(),
                    what: "finding a free port",
                    source,
                })?;
            let created = Created {
                dir: record.dir.clone(),
                addr,
            };
            let run = inner.start(&id, &service, &digest, &created, &env)?;
            record.pid = Some(run.pid);
            record.pid_start = run.pid_start;
            record.fresh = false;
            Ok(record.handle(&id, addr))
        })
    }

    fn status<'a>(&'a self, handle: &'a InstanceHandle) -> ProviderFuture<'a, Status> {
        let record = Record::of(handle);
        self.blocking(move |inner| {
            Ok(match record?.running() {
                Some(run) if inner.alive(run) => Status::Running,
                _ => Status::Stopped,
            })
        })
    }

    fn stop<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        grace: Duration,
    ) -> ProviderFuture<'a, InstanceHandle> {
        let (record, id, addr) = (Record::of(handle), handle.id.clone(), handle.address);
        self.blocking(move |inner| {
            let mut record = record?;
            if let Some(run) = record.running() {
                inner.stop(run, grace);
            }
            record.pid = None;
            record.pid_start = None;
            Ok(record.handle(&id, addr))
        })
    }

    fn destroy<'a>(&'a self, handle: &'a InstanceHandle) -> ProviderFuture<'a, ()> {
        let record = Record::of(handle);
        self.blocking(move |inner| {
            let record = record?;
            if let Some(run) = record.running() {
                inner.stop(run, Duration::from_secs(10));
            }
            inner.destroy(&record.dir);
            Ok(())
        })
    }

    fn list(&self) -> ProviderFuture<'_, Vec<InstanceHandle>> {
        self.blocking(|inner| {
            let mut out = Vec::new();
            for e in std::fs::read_dir(&inner.home)
                .into_iter()
                .flatten()
                .flatten()
            {
                let id = e.file_name().to_string_lossy().to_string();
                let record = Record {
                    dir: e.path(),
                    ..Record::default()
                };
                out.push(record.handle(&id, SocketAddr::from(([127, 0, 0, 1], 0))));
            }
            Ok(out)
        })
    }

    fn describe(&self, handle: &InstanceHandle) -> String {
        match Record::of(handle).ok().and_then(|r| r.pid) {
            Some(pid) => format!("pid {pid}"),
            None => "-".into(),
        }
    }

    fn log_path(&self, handle: &InstanceHandle) -> Option<PathBuf> {
        Record::of(handle).ok().map(|r| r.dir.join("log"))
    }

    fn usage(&self, handle: &InstanceHandle) -> Option<super::Usage> {
        let r = Record::of(handle).ok()?.running()?;
        // The same process as recorded, not a reused pid.
        if r.pid_start.is_some() && proc_start(r.pid) != r.pid_start {
            return None;
        }
        proc_usage(r.pid)
    }
}

/// What process `pid` uses, from `/proc` (CPU: fields 14 and 15 of `stat`
/// in clock ticks; memory: `VmRSS` of `status`; descriptors: the entries of
/// `fd`). Only the process itself: its children are not counted.
fn proc_usage(pid: i64) -> Option<super::Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // /proc reports clock ticks of USER_HZ, which the kernel's ABI fixes at
    // 100 on every architecture Debian ships (see proc(5), "clock ticks").
    let hz = 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(super::Usage {
        cpu_seconds: ticks / hz,
        memory_bytes: rss_kb * 1024,
        open_fds: fds,
    })
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

impl Inner {
    /// The address an instance in `dir` serves on when started: a sandbox's
    /// own, else the one it was created with (first start) or a free port.
    fn address(&self, dir: &Path, created: Option<SocketAddr>) -> std::io::Result<SocketAddr> {
        match (crate::sandbox::load(dir), created) {
            (Some(s), _) => Ok(s.addr),
            (None, Some(a)) => Ok(a),
            (None, None) => Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?))),
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
    fn usage_is_read_from_proc() {
        // This test process: it has run, holds memory and has files open.
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let u = proc_usage(std::process::id() as i64).unwrap();
        assert!(u.cpu_seconds > 0.0, "{u:?}");
        assert!(u.memory_bytes > 1 << 20, "{u:?}");
        assert!(u.open_fds >= 3, "{u:?}");
        assert!(proc_usage(i64::from(i32::MAX)).is_none(), "no such process");
    }

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

    #[tokio::test]
    async fn start_stop_and_adopt() {
        let home = tempfile_dir();
        let image = home.join("image");
        std::fs::create_dir_all(image.join("bin")).unwrap();
        let local = Local::new(&home);
        let service = test_service(vec!["sleep".into(), "30".into()]);
        let spec = InstanceSpec {
            id: "t-1",
            service: &service,
            digest: "sha256:x",
            env: &[],
        };
        let published = ImageRef {
            digest: "sha256:x".into(),
            data: serde_json::json!({ "root": image }),
        };
        let created = local.create(spec, &published).await.unwrap();
        let dir = Record::of(&created).unwrap().dir;
        assert!(dir.join("root/bin").is_dir());
        assert_eq!(local.status(&created).await.unwrap(), Status::Stopped);
        let started = local.start(&created, spec).await.unwrap();
        assert_eq!(
            started.address, created.address,
            "the first start keeps its port"
        );
        assert_eq!(local.status(&started).await.unwrap(), Status::Running);
        // Another provider (a restarted steward) sees it by pid and start time.
        let other = Local::new(&home);
        assert_eq!(other.status(&started).await.unwrap(), Status::Running);
        let mut reused = Record::of(&started).unwrap();
        reused.pid_start = reused.pid_start.map(|s| s + 1);
        let reused = reused.handle("t-1", started.address);
        assert_eq!(
            other.status(&reused).await.unwrap(),
            Status::Stopped,
            "a reused pid is not the instance"
        );
        assert!(local.describe(&started).starts_with("pid "));
        let stopped = local.stop(&started, Duration::from_secs(5)).await.unwrap();
        assert_eq!(local.status(&started).await.unwrap(), Status::Stopped);
        assert_eq!(local.describe(&stopped), "-");
        let listed = local.list().await.unwrap();
        assert_eq!(
            listed.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
            ["t-1"]
        );
        local.destroy(&stopped).await.unwrap();
        assert!(!dir.exists());
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
