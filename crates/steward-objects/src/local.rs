//! A directory as an object store: keys are relative paths.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::{ObjectInfo, ObjectStore, StoreError};

/// Objects as files under a directory (created 0700).
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> LocalStore {
        LocalStore { root: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> Result<PathBuf, StoreError> {
        // Keys come from steward, but a key must never leave the root.
        if name
            .split('/')
            .any(|s| s == ".." || s.is_empty() && !name.is_empty())
            || name.starts_with('/')
        {
            return Err(StoreError::Io {
                what: format!("object name `{name}`"),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a relative key"),
            });
        }
        Ok(self.root.join(name))
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

impl ObjectStore for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn ensure(&self) -> Result<(), StoreError> {
        fs::create_dir_all(&self.root).map_err(io(format!("create {}", self.root.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700));
        }
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        // The prefix is a directory part plus a name start, e.g. `data/` or `snapshots/ab`.
        let (dir, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = self.path(dir)?;
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(d) = stack.pop() {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(format!("list {}", d.display()))(e)),
            };
            for entry in rd {
                let entry = entry.map_err(io(format!("list {}", d.display())))?;
                let ft = entry
                    .file_type()
                    .map_err(io(format!("list {}", d.display())))?;
                let path = entry.path();
                if ft.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let name = rel.to_string_lossy().into_owned();
                // In-flight temporaries are not objects.
                if name
                    .rsplit('/')
                    .next()
                    .is_some_and(|f| f.starts_with(".tmp-"))
                {
                    continue;
                }
                if name.starts_with(prefix) {
                    let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push(ObjectInfo { name, size });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        let p = self.path(name)?;
        match fs::read(&p) {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(name.into()))
            }
            Err(e) => Err(io(format!("read {}", p.display()))(e)),
        }
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let p = self.path(name)?;
        let mut f = match fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(name.into()));
            }
            Err(e) => return Err(io(format!("open {}", p.display()))(e)),
        };
        f.seek(SeekFrom::Start(offset))
            .map_err(io(format!("seek {}", p.display())))?;
        let mut buf = vec![0; len as usize];
        f.read_exact(&mut buf)
            .map_err(io(format!("read {} at {offset}+{len}", p.display())))?;
        Ok(Bytes::from(buf))
    }

    fn put(&self, name: &str, parts: &[Bytes]) -> Result<(), StoreError> {
        let p = self.path(name)?;
        let dir = p.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let file_name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".tmp-{file_name}-{}", std::process::id()));
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            for part in parts {
                f.write_all(part)?;
            }
            f.sync_all()?;
            fs::rename(&tmp, &p)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io(format!("write {}", p.display())))
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        let p = self.path(name)?;
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("delete {}", p.display()))(e))
            }
            _ => Ok(()),
        }
    }
}
