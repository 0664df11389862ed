//! Carrying out one operation of a plan: atomic writes, links, removals,
//! apt-get, useradd and friends, commands, all through the target.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::fsx::Accounts;
use crate::{Converger, Op, Target, exec, fsx};

impl Converger<'_> {
    pub(crate) fn execute(&self, op: &Op) -> Result<(), String> {
        let show = |p: &Path| p.display().to_string();
        match op {
            Op::Write {
                path,
                content,
                perms,
                default_mode,
            } => {
                let acc = Accounts::read(&self.target);
                let (mut owned, pending) = self.resolve(perms, &acc)?;
                if let Some(p) = pending.first() {
                    return Err(format!("{p}: it does not exist yet"));
                }
                match fs::symlink_metadata(path) {
                    Ok(m) => {
                        owned.uid = owned.uid.or(Some(m.uid()));
                        owned.gid = owned.gid.or(Some(m.gid()));
                        owned.mode = owned.mode.or(Some(m.mode() & 0o7777));
                    }
                    Err(_) => owned.mode = owned.mode.or(Some(*default_mode)),
                }
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| format!("cannot create `{}`: {e}", show(parent)))?;
                }
                fsx::write_atomic(path, content, owned)
                    .map_err(|e| format!("cannot write `{}`: {e}", show(path)))
            }
            Op::Perms { path, perms } => {
                let acc = Accounts::read(&self.target);
                let (owned, _) = self.resolve(perms, &acc)?;
                fsx::set_owned(path, owned).map_err(|e| format!("`{}`: {e}", show(path)))
            }
            Op::MkDir { path, perms } => {
                fs::create_dir_all(path)
                    .map_err(|e| format!("cannot create `{}`: {e}", show(path)))?;
                let acc = Accounts::read(&self.target);
                let (owned, _) = self.resolve(perms, &acc)?;
                fsx::set_owned(path, owned).map_err(|e| format!("`{}`: {e}", show(path)))
            }
            Op::Remove { path } => {
                fsx::remove_any(path).map_err(|e| format!("cannot remove `{}`: {e}", show(path)))
            }
            Op::Symlink { path, target } => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| format!("cannot create `{}`: {e}", show(parent)))?;
                }
                fsx::symlink_atomic(path, target)
                    .map_err(|e| format!("cannot link `{}`: {e}", show(path)))
            }
            Op::Apt { args } => exec::apt(&self.target, args).map_err(|e| e.to_string()),
            Op::Cmd {
                argv,
                in_root,
                env,
                cwd,
            } => {
                let mut c = if *in_root {
                    exec::command(&self.target, argv, cwd.as_deref())
                } else {
                    exec::command(&Target::host(), argv, None)
                };
                for (k, v) in env {
                    c.env(
                        k,
                        v.resolve(self.resolver)
                            .map_err(|e| e.to_string())?
                            .expose(),
                    );
                }
                exec::run(c, &argv.join(" ")).map_err(|e| e.to_string())
            }
            Op::Download {
                url,
                path,
                sha256,
                perms,
            } => {
                let acc = Accounts::read(&self.target);
                let (mut owned, _) = self.resolve(perms, &acc)?;
                owned.mode = owned.mode.or(Some(0o644));
                exec::download(url, path, sha256, owned)
            }
            Op::SysctlLive { key, value } => {
                let live = Path::new("/proc/sys").join(key.replace('.', "/"));
                fs::write(&live, value).map_err(|e| format!("cannot set {key}: {e}"))
            }
        }
    }
}
