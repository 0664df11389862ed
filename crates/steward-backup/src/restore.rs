//! Restoring a snapshot file by file, with bounded memory.
//!
//! rustic's own restore reads every pack range on 20 threads and queues the
//! decrypted data for writers without a bound; on a gigabyte of data that reached
//! over a gigabyte of memory here. This restore streams each file through
//! rustic's `dump` (blobs read in parallel, written in order, a bounded window in
//! flight) on a few worker threads, then sets modes, times and — as root —
//! ownership, directories last so their times stick.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustic_core::repofile::{Node, NodeType};
use rustic_core::{IndexedFull, LsOptions, Repository};

use crate::{BackupError, repo_err};

/// Files restored at once; each also reads its blobs in parallel.
const WORKERS: usize = 4;

/// Go's `os.FileMode` bits, as restic stores them (the permission bits are the
/// low nine; set-uid, set-gid and sticky sit high up).
fn unix_mode(go_mode: u32) -> u32 {
    let mut m = go_mode & 0o777;
    if go_mode & (1 << 23) != 0 {
        m |= 0o4000;
    }
    if go_mode & (1 << 22) != 0 {
        m |= 0o2000;
    }
    if go_mode & (1 << 20) != 0 {
        m |= 0o1000;
    }
    m
}

use std::collections::HashMap;

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, mknod, utimensat};
use nix::sys::time::TimeSpec;

fn io_err(what: &str, path: &Path, e: std::io::Error) -> BackupError {
    BackupError::Source(format!("{what} `{}`: {e}", path.display()))
}

/// Restores everything below `root` into `target`. Returns files and bytes written.
pub(crate) fn restore_tree<S: IndexedFull + Sync>(
    repo: &Repository<S>,
    root: &Node,
    target: &Path,
) -> Result<(u64, u64), BackupError> {
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
    let mut files: Vec<(PathBuf, Node)> = Vec::new();
    // Hard links: the first path of an inode gets the content, the others
    // are linked to it once it is written (as restic restores them).
    let mut first_of_inode: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    // /proc/self belongs to the process's effective uid: root restores ownership.
    let as_root = fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    for item in repo.ls(root, &LsOptions::default()).map_err(repo_err)? {
        let (path, node) = item.map_err(repo_err)?;
        let dest = target.join(&path);
        match &node.node_type {
            NodeType::Dir => {
                fs::create_dir_all(&dest).map_err(|e| io_err("create", &dest, e))?;
                dirs.push((dest, node));
            }
            NodeType::File if node.meta.links > 1 && node.meta.inode != 0 => {
                match first_of_inode.entry((node.meta.device_id, node.meta.inode)) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        links.push((dest, first.get().clone()))
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(dest.clone());
                        files.push((dest, node));
                    }
                }
            }
            NodeType::File => files.push((dest, node)),
            NodeType::Symlink { linktarget, .. } => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_err("create", parent, e))?;
                }
                let _ = fs::remove_file(&dest);
                std::os::unix::fs::symlink(linktarget, &dest)
                    .map_err(|e| io_err("link", &dest, e))?;
                if as_root {
                    let _ = std::os::unix::fs::lchown(&dest, node.meta.uid, node.meta.gid);
                }
                set_times(&node, &dest, UtimensatFlags::NoFollowSymlink)?;
            }
            NodeType::Fifo | NodeType::Dev { .. } | NodeType::Chardev { .. } => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_err("create", parent, e))?;
                }
                let _ = fs::remove_file(&dest);
                let (kind, dev) = match node.node_type {
                    NodeType::Dev { device } => (SFlag::S_IFBLK, device),
                    NodeType::Chardev { device } => (SFlag::S_IFCHR, device),
                    _ => (SFlag::S_IFIFO, 0),
                };
                // Device nodes need root, as for restic; a FIFO does not.
                if kind == SFlag::S_IFIFO || as_root {
                    mknod(&dest, kind, Mode::from_bits_truncate(0o600), dev as _)
                        .map_err(|e| io_err("create", &dest, e.into()))?;
                    finish(&node, &dest, as_root)?;
                } else {
                    tracing::warn!(path = %path.display(), "device node not restored: needs root");
                }
            }
            other => {
                tracing::warn!(path = %path.display(), kind = %other, "special file not restored")
            }
        }
    }
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<BackupError>> = Mutex::new(None);
    let bytes = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(files.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= files.len() || failure.lock().expect("failure").is_some() {
                        return;
                    }
                    let (dest, node) = &files[i];
                    match restore_file(repo, node, dest, as_root) {
                        Ok(n) => {
                            bytes.fetch_add(n as usize, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failure.lock().expect("failure").get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().expect("failure") {
        return Err(e);
    }
    for (dest, first) in &links {
        let _ = fs::remove_file(dest);
        fs::hard_link(first, dest).map_err(|e| io_err("link", dest, e))?;
    }
    // Deepest directories first: setting a child's time must not move the parent's.
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (dest, node) in &dirs {
        finish(node, dest, as_root)?;
    }
    Ok((files.len() as u64, bytes.load(Ordering::Relaxed) as u64))
}

fn restore_file<S: IndexedFull + Sync>(
    repo: &Repository<S>,
    node: &Node,
    dest: &Path,
    as_root: bool,
) -> Result<u64, BackupError> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| io_err("create", parent, e))?;
    }
    let file = fs::File::create(dest).map_err(|e| io_err("create", dest, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    repo.dump(node, &mut w).map_err(repo_err)?;
    w.flush().map_err(|e| io_err("write", dest, e))?;
    drop(w);
    finish(node, dest, as_root)?;
    Ok(node.meta.size)
}

/// Mode, modification time and (as root) ownership.
fn finish(node: &Node, dest: &Path, as_root: bool) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    if as_root {
        std::os::unix::fs::lchown(dest, node.meta.uid, node.meta.gid)
            .map_err(|e| io_err("chown", dest, e))?;
    }
    if let Some(mode) = node.meta.mode {
        fs::set_permissions(dest, fs::Permissions::from_mode(unix_mode(mode)))
            .map_err(|e| io_err("chmod", dest, e))?;
    }
    set_times(node, dest, UtimensatFlags::FollowSymlink)
}

/// Access and modification times, set by path: a file restored without read
/// permission still gets them, and a symlink gets its own (not its target's).
fn set_times(node: &Node, dest: &Path, follow: UtimensatFlags) -> Result<(), BackupError> {
    let spec = |t: Option<rustic_core::jiff::Timestamp>| match t {
        Some(t) => TimeSpec::new(t.as_second(), t.subsec_nanosecond() as _),
        None => TimeSpec::UTIME_OMIT,
    };
    let mtime = spec(node.meta.mtime);
    let atime = match node.meta.atime {
        Some(t) => spec(Some(t)),
        None => mtime,
    };
    utimensat(AT_FDCWD, dest, &atime, &mtime, follow)
        .map_err(|e| io_err("set the times of", dest, e.into()))
}

#[cfg(test)]
mod tests {
    use super::unix_mode;

    #[test]
    fn go_modes_map_to_unix_modes() {
        assert_eq!(unix_mode(0o644), 0o644);
        assert_eq!(unix_mode((1 << 31) | 0o755), 0o755, "directory bit dropped");
        assert_eq!(unix_mode((1 << 23) | 0o755), 0o4755, "set-uid");
        assert_eq!(unix_mode((1 << 22) | (1 << 20) | 0o775), 0o3775);
    }
}
