//! Files, directories, links, line and block edits: reading what is there,
//! deciding the change (content, owner, mode) and what a purge removes.

use std::fs;
use std::path::{Path, PathBuf};

use crate::fsx::Accounts;
use crate::{Action, Converger, Eval, Op, fsx, render};
use steward_spec::Perms;

impl Converger<'_> {
    pub(crate) fn read_text(&self, path: &Path) -> Result<Option<String>, String> {
        match fs::read(self.target.path(path)) {
            Ok(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| format!("`{}` is not UTF-8 text", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read `{}`: {e}", path.display())),
        }
    }

    /// A line or block edit: writes the new text when it differs.
    pub(crate) fn edit_state(
        &self,
        path: &Path,
        cur: Option<String>,
        new: String,
    ) -> Result<Eval, String> {
        let mut ev = Eval::none();
        let old = cur.as_deref().unwrap_or("");
        if cur.is_some() && old == new || cur.is_none() && new.is_empty() {
            return Ok(ev);
        }
        ev.action = Some(if cur.is_none() {
            Action::Create
        } else {
            Action::Update
        });
        ev.diff = render::unified(path, old.as_bytes(), new.as_bytes());
        ev.details.push(if cur.is_none() {
            "create file".into()
        } else {
            "edit".into()
        });
        ev.ops.push(Op::Write {
            path: self.target.path(path),
            content: new.into_bytes(),
            perms: Perms::default(),
            default_mode: 0o644,
        });
        Ok(ev)
    }

    /// A whole file with wanted content (or only existence) and permissions.
    pub(crate) fn file_state(
        &self,
        path: &Path,
        want: Option<Vec<u8>>,
        perms: &Perms,
        secret: bool,
        default_mode: u32,
    ) -> Result<Eval, String> {
        let p = self.target.path(path);
        let mut ev = Eval::none();
        let hidden = secret && !self.show_secrets;
        match fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let content = want.unwrap_or_default();
                let pending = self.check_accounts(perms)?;
                ev.action = Some(Action::Create);
                ev.details
                    .push(format!("create file ({} bytes)", content.len()));
                ev.details.extend(pending);
                ev.diff = if hidden {
                    Some(render::HIDDEN.into())
                } else {
                    render::unified(path, b"", &content)
                };
                ev.ops.push(Op::Write {
                    path: p,
                    content,
                    perms: perms.clone(),
                    default_mode,
                });
            }
            Err(e) => return Err(format!("cannot inspect `{}`: {e}", path.display())),
            Ok(m) if m.is_dir() => {
                return Err(format!("`{}` is a directory, not a file", path.display()));
            }
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "`{}` is a symlink; steward does not write through links",
                    path.display()
                ));
            }
            Ok(m) => {
                let perm_diff = self.perm_diff(&m, perms)?;
                let mut write = None;
                if let Some(want) = want {
                    let cur = fs::read(&p)
                        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
                    if cur != want {
                        ev.details.push("content".into());
                        ev.diff = if hidden {
                            Some(render::HIDDEN.into())
                        } else {
                            render::unified(path, &cur, &want)
                        };
                        write = Some(want);
                    }
                }
                if write.is_some() || !perm_diff.is_empty() {
                    ev.action = Some(Action::Update);
                }
                ev.details.extend(perm_diff.iter().cloned());
                match write {
                    Some(content) => ev.ops.push(Op::Write {
                        path: p,
                        content,
                        perms: perms.clone(),
                        default_mode,
                    }),
                    None if !perm_diff.is_empty() => ev.ops.push(Op::Perms {
                        path: p,
                        perms: perms.clone(),
                    }),
                    None => {}
                }
            }
        }
        Ok(ev)
    }

    pub(crate) fn removal(&self, p: &Path, spec_path: &Path, dir: bool) -> Result<Eval, String> {
        let mut ev = Eval::none();
        match fs::symlink_metadata(p) {
            Err(_) => {}
            Ok(m) if m.is_dir() && !dir => {
                return Err(format!(
                    "`{}` is a directory; remove it with a `directory` resource",
                    spec_path.display()
                ));
            }
            Ok(_) => {
                ev.action = Some(Action::Remove);
                ev.details.push(format!("remove {}", spec_path.display()));
                ev.ops.push(Op::Remove {
                    path: p.to_path_buf(),
                });
            }
        }
        Ok(ev)
    }

    pub(crate) fn perm_diff(
        &self,
        meta: &fs::Metadata,
        perms: &Perms,
    ) -> Result<Vec<String>, String> {
        if perms.owner.is_none() && perms.group.is_none() && perms.mode.is_none() {
            return Ok(Vec::new());
        }
        let acc = Accounts::read(&self.target);
        let (owned, mut pending) = self.resolve(perms, &acc)?;
        let mut out = fsx::owned_diff(meta, owned);
        out.append(&mut pending);
        Ok(out)
    }

    /// Entries under a purged directory that no resource of the set touches.
    /// Managed subdirectories decide for themselves (their own `purge`).
    pub(crate) fn purge_list(&self, dir: &Path) -> Vec<PathBuf> {
        let mut gone = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(self.target.path(&d)) else {
                continue;
            };
            let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
            names.sort();
            for name in names {
                let name_str = name.to_string_lossy();
                // Our own atomic-write temporaries are in flight, not strays.
                if name_str.starts_with('.') && name_str.contains(".steward-") {
                    continue;
                }
                let p = d.join(&name);
                if self.touched.contains(&p) {
                    continue;
                }
                if self.touched.iter().any(|t| t.starts_with(&p)) {
                    stack.push(p);
                } else {
                    gone.push(p);
                }
            }
        }
        gone.sort();
        gone
    }
}
