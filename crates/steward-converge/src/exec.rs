//! Process edges: dpkg, apt-get, systemd unit files, commands, downloads.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::fsx::{self, Owned, Target};

/// The installed version of a package, read from the root's dpkg status database.
pub(crate) fn dpkg_installed(target: &Target, name: &str) -> Option<String> {
    installed_packages(target).remove(name)
}

/// Every installed package with its version, from the root's dpkg status database
/// (no dpkg process: works on any root, even one without dpkg).
pub fn installed_packages(target: &Target) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(status) = fs::read_to_string(target.path(Path::new("/var/lib/dpkg/status"))) else {
        return out;
    };
    for para in status.split("\n\n") {
        let mut pkg = None;
        let mut installed = false;
        let mut version = None;
        for line in para.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                pkg = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed") && v.starts_with("install ");
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            }
        }
        if let (Some(p), true, Some(v)) = (pkg, installed, version) {
            out.insert(p.to_string(), v.to_string());
        }
    }
    out
}

/// A unit file and the links `systemctl enable` would make for it.
pub(crate) struct Unit {
    /// (link path, link target), both as seen inside the root.
    pub(crate) links: Vec<(PathBuf, PathBuf)>,
}

/// Finds `NAME.service` the way systemd does (`/etc` first) and reads its `[Install]`
/// section. Enabling is only links, so it works offline against any root.
pub(crate) fn find_unit(target: &Target, name: &str) -> Result<Option<Unit>, String> {
    let file = format!("{name}.service");
    let dirs = [
        "/etc/systemd/system",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
    ];
    let Some(path) = dirs
        .iter()
        .map(|d| Path::new(d).join(&file))
        .find(|p| target.path(p).is_file())
    else {
        return Ok(None);
    };
    let text = fs::read_to_string(target.path(&path))
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut in_install = false;
    let mut links = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        for item in v.split_whitespace() {
            let etc = Path::new("/etc/systemd/system");
            match k.trim() {
                "WantedBy" => {
                    links.push((etc.join(format!("{item}.wants")).join(&file), path.clone()))
                }
                "RequiredBy" => links.push((
                    etc.join(format!("{item}.requires")).join(&file),
                    path.clone(),
                )),
                "Alias" => links.push((etc.join(item), path.clone())),
                _ => {}
            }
        }
    }
    Ok(Some(Unit { links }))
}

/// A command in the target, optionally in a working directory inside it.
pub(crate) fn command(target: &Target, argv: &[String], cwd: Option<&Path>) -> Command {
    match cwd {
        Some(dir) if !target.is_host() => {
            let mut full = vec!["env".to_string(), format!("--chdir={}", dir.display())];
            full.extend(argv.iter().cloned());
            target.command(&full)
        }
        Some(dir) => {
            let mut c = target.command(argv);
            c.current_dir(dir);
            c
        }
        None => target.command(argv),
    }
}

/// Whether a command exits 0 (output discarded).
pub(crate) fn quiet_ok(target: &Target, argv: &[&str]) -> bool {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    target
        .command(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why a command run by converge failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    /// It could not be started.
    #[error("cannot run `{what}`: {source}")]
    Spawn {
        /// The command line, for people.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("`{what}` failed ({status}){}", tail(.output))]
    Failed {
        /// The command line, for people.
        what: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// Its standard error (its standard output when that was empty).
        output: String,
    },
}

impl CommandError {
    /// Whether the command ran and said `needle`.
    pub(crate) fn said(&self, needle: &str) -> bool {
        matches!(self, CommandError::Failed { output, .. } if output.contains(needle))
    }
}

/// The last five lines of a command's output, on one line, for an error.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.trim().lines().rev().take(5).collect();
    if lines.is_empty() {
        return String::new();
    }
    let lines: Vec<&str> = lines.into_iter().rev().collect();
    format!(": {}", lines.join(" / "))
}

/// Runs a command to completion; a failure carries its output.
pub(crate) fn run(mut c: Command, what: &str) -> Result<(), CommandError> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn {
            what: what.to_string(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
    if output.trim().is_empty() {
        output = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    Err(CommandError::Failed {
        what: what.to_string(),
        status: out.status,
        output,
    })
}

/// apt-get in the root, non-interactive, keeping existing config files. Inside a root,
/// a `policy-rc.d` stops maintainer scripts from starting services for the duration.
/// An unknown package triggers one `apt-get update` and a retry.
pub(crate) fn apt(target: &Target, args: &[String]) -> Result<(), CommandError> {
    let policy = target.path(Path::new("/usr/sbin/policy-rc.d"));
    let placed = !target.is_host() && !policy.exists() && {
        let ok = fs::write(
            &policy,
            "#!/bin/sh\n# placed by steward during apt-get\nexit 101\n",
        )
        .is_ok();
        if ok {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&policy, fs::Permissions::from_mode(0o755));
        }
        ok
    };
    let attempt = |args: &[String]| {
        let mut argv = vec![
            "apt-get".to_string(),
            "-y".into(),
            "-q".into(),
            "-o".into(),
            "Dpkg::Options::=--force-confold".into(),
            "-o".into(),
            "Dpkg::Options::=--force-confdef".into(),
        ];
        argv.extend(args.iter().cloned());
        let mut c = target.command(&argv);
        c.env("DEBIAN_FRONTEND", "noninteractive");
        run(c, &format!("apt-get {}", args.join(" ")))
    };
    let mut result = attempt(args);
    // apt-get's own words for a package its lists do not know (yet).
    if let Err(e) = &result
        && (e.said("Unable to locate package")
            || e.said("has no installation candidate")
            || e.said("not found"))
    {
        let update = attempt(&["update".to_string()]);
        result = update.and_then(|_| attempt(args));
    }
    if placed {
        let _ = fs::remove_file(&policy);
    }
    result
}

/// Fetches a URL into `path`, verifying its SHA-256 before the file appears.
pub(crate) fn download(url: &str, path: &Path, sha256: &str, owned: Owned) -> Result<(), String> {
    let client = steward_net::blocking_http(steward_net::HttpOptions {
        timeout: Some(std::time::Duration::from_secs(600)),
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        no_proxy: false,
    })
    .map_err(|e| e.to_string())?;
    let mut resp = client
        .get(url)
        .send()
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("download {url}: {e}"))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    let tmp = dir.join(format!(".download.steward-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = resp
                .read(&mut buf)
                .map_err(|e| format!("download {url}: {e}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        }
        let got = hex::encode(hasher.finalize());
        if got != sha256 {
            return Err(format!(
                "download {url}: sha256 is {got}, the spec expects {sha256}; nothing was written"
            ));
        }
        fsx::apply_owned(&f, owned).map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())?;
        fs::rename(&tmp, path).map_err(|e| e.to_string())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
