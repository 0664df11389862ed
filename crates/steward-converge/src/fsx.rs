//! File-system edges: the target root, account databases, atomic writes.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a set is converged: `/` (the host) or a directory treated as `/`.
#[derive(Debug, Clone)]
pub struct Target {
    root: PathBuf,
}

impl Target {
    /// The running host.
    pub fn host() -> Target {
        Target {
            root: PathBuf::from("/"),
        }
    }

    /// A directory tree converged as if it were `/` (an image root, a test root).
    pub fn root(dir: impl Into<PathBuf>) -> Target {
        let root: PathBuf = dir.into();
        if root == Path::new("/") {
            return Target::host();
        }
        Target { root }
    }

    /// Whether this is the running host.
    pub fn is_host(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// A spec path (absolute) rebased under the root. Symlinks in its directories
    /// are followed as the root would see them (an absolute link target restarts at
    /// the root, `..` stops at it), so nothing under `--root` reaches the host's
    /// files. The last component is not followed: writes replace it, never go
    /// through it.
    pub fn path(&self, p: &Path) -> PathBuf {
        if self.is_host() {
            return p.to_path_buf();
        }
        let mut queue: std::collections::VecDeque<std::ffi::OsString> = p
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n.to_os_string()),
                std::path::Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        let mut cur = self.root.clone();
        let mut links_left = 40;
        while let Some(name) = queue.pop_front() {
            if name == ".." {
                if cur != self.root {
                    cur.pop();
                }
                continue;
            }
            let next = cur.join(&name);
            if !queue.is_empty()
                && links_left > 0
                && let Ok(target) = fs::read_link(&next)
            {
                links_left -= 1;
                if target.is_absolute() {
                    cur = self.root.clone();
                }
                for c in target.components().rev() {
                    match c {
                        std::path::Component::Normal(n) => queue.push_front(n.to_os_string()),
                        std::path::Component::ParentDir => queue.push_front("..".into()),
                        _ => {}
                    }
                }
                continue;
            }
            cur = next;
        }
        cur
    }

    /// A command run inside the root (through `chroot` unless this is the host).
    pub fn command(&self, argv: &[String]) -> Command {
        if self.is_host() {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        } else {
            let mut c = Command::new("chroot");
            c.arg(&self.root).args(argv);
            c
        }
    }
}

/// One line of `/etc/passwd` or `/etc/group`, the fields steward compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) id: u32,
    /// passwd: primary gid; group: unused.
    pub(crate) gid: u32,
    /// passwd: home; group: unused.
    pub(crate) home: String,
    /// passwd: shell; group: unused.
    pub(crate) shell: String,
    /// group: member names; passwd: unused.
    pub(crate) members: Vec<String>,
}

/// The account databases of a root, read fresh (they change during a run).
#[derive(Debug, Default)]
pub(crate) struct Accounts {
    pub(crate) users: Vec<Account>,
    pub(crate) groups: Vec<Account>,
}

impl Accounts {
    pub(crate) fn read(target: &Target) -> Accounts {
        let read = |p: &str| fs::read_to_string(target.path(Path::new(p))).unwrap_or_default();
        Accounts {
            users: read("/etc/passwd")
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 7).then(|| Account {
                        name: f[0].into(),
                        id: f[2].parse().unwrap_or(u32::MAX),
                        gid: f[3].parse().unwrap_or(u32::MAX),
                        home: f[5].into(),
                        shell: f[6].into(),
                        members: Vec::new(),
                    })
                })
                .collect(),
            groups: read("/etc/group")
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 4).then(|| Account {
                        name: f[0].into(),
                        id: f[2].parse().unwrap_or(u32::MAX),
                        gid: 0,
                        home: String::new(),
                        shell: String::new(),
                        members: f[3]
                            .split(',')
                            .filter(|m| !m.is_empty())
                            .map(String::from)
                            .collect(),
                    })
                })
                .collect(),
        }
    }

    pub(crate) fn user(&self, name: &str) -> Option<&Account> {
        self.users.iter().find(|u| u.name == name)
    }

    pub(crate) fn group(&self, name: &str) -> Option<&Account> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// A user name or numeric uid to a uid (`root` is 0 even in an empty root).
    pub(crate) fn uid(&self, name: &str) -> Option<u32> {
        name.parse()
            .ok()
            .or_else(|| self.user(name).map(|u| u.id))
            .or_else(|| (name == "root").then_some(0))
    }

    /// A group name or numeric gid to a gid (`root` is 0 even in an empty root).
    pub(crate) fn gid(&self, name: &str) -> Option<u32> {
        name.parse()
            .ok()
            .or_else(|| self.group(name).map(|g| g.id))
            .or_else(|| (name == "root").then_some(0))
    }
}

/// Ownership and mode with names already resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Owned {
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) mode: Option<u32>,
}

/// Writes `content` to `path` atomically: a temporary file in the same directory gets
/// the content, ownership and mode, is flushed, then renamed over the target. A reader
/// sees the old file or the new one, never a mix, and never wrong permissions.
pub(crate) fn write_atomic(path: &Path, content: &[u8], owned: Owned) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.steward-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(content)?;
        apply_owned(&f, owned)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Sets ownership, then mode (chown clears set-id bits, so mode comes last).
pub(crate) fn apply_owned(f: &File, owned: Owned) -> std::io::Result<()> {
    if owned.uid.is_some() || owned.gid.is_some() {
        std::os::unix::fs::fchown(f, owned.uid, owned.gid)?;
    }
    if let Some(mode) = owned.mode {
        f.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Sets ownership and mode of an existing path without following a final symlink.
pub(crate) fn set_owned(path: &Path, owned: Owned) -> std::io::Result<()> {
    if owned.uid.is_some() || owned.gid.is_some() {
        std::os::unix::fs::lchown(path, owned.uid, owned.gid)?;
    }
    if let Some(mode) = owned.mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// What differs between an object's metadata and the wanted ownership and mode.
pub(crate) fn owned_diff(meta: &fs::Metadata, want: Owned) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(uid) = want.uid
        && meta.uid() != uid
    {
        out.push(format!("owner {} → {uid}", meta.uid()));
    }
    if let Some(gid) = want.gid
        && meta.gid() != gid
    {
        out.push(format!("group {} → {gid}", meta.gid()));
    }
    if let Some(mode) = want.mode
        && meta.mode() & 0o7777 != mode
    {
        out.push(format!("mode {:04o} → {mode:04o}", meta.mode() & 0o7777));
    }
    out
}

/// Removes a file, symlink or whole directory tree; a missing path is fine.
pub(crate) fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces (or creates) a symlink atomically.
pub(crate) fn symlink_atomic(path: &Path, target: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".{}.steward-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}
