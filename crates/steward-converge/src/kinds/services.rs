//! Packages and services: whether a package is pending and what a service
//! (enabled, running, restarted on refresh) needs.

use std::fs;
use std::path::Path;

use crate::{Action, Converger, Eval, Op, exec, systemctl};
use steward_spec::{Ensure, Resource, ResourceKind, ServiceState};

impl Converger<'_> {
    pub(crate) fn service(
        &self,
        res: &Resource,
        name: &str,
        enabled: Option<bool>,
        state: Option<ServiceState>,
        owed: Option<&[String]>,
    ) -> Result<Eval, String> {
        let mut ev = Eval::none();
        if let Some(want) = enabled {
            match exec::find_unit(&self.target, name)? {
                None if want && self.package_pending(res) => {
                    ev.action = Some(Action::Update);
                    ev.details
                        .push("enable (its unit comes with a package installed first)".into());
                    ev.deferred = true;
                }
                None if want => {
                    return Err(format!(
                        "unit `{name}.service` not found under {}/{{etc,lib,usr/lib}}/systemd/system",
                        self.root_prefix()
                    ));
                }
                None => {}
                Some(unit) => {
                    if unit.links.is_empty() && want {
                        return Err(format!(
                            "`{name}.service` has no [Install] section; it cannot be enabled"
                        ));
                    }
                    for (link, dest) in &unit.links {
                        let real = self.target.path(link);
                        let exists = fs::symlink_metadata(&real).is_ok();
                        if want && !exists {
                            ev.ops.push(Op::Symlink {
                                path: real,
                                target: dest.clone(),
                            });
                        } else if !want && exists {
                            ev.ops.push(Op::Remove { path: real });
                        }
                    }
                    if !ev.ops.is_empty() {
                        ev.action = Some(Action::Update);
                        ev.details
                            .push(if want { "enable" } else { "disable" }.into());
                    }
                }
            }
        }
        let systemd = self.target.is_host() && Path::new("/run/systemd/system").is_dir();
        let mut started = false;
        if let Some(want) = state
            && self.target.is_host()
        {
            if !systemd {
                return Err(
                    "`state` needs systemd running as PID 1, and it is not here; manage `enabled` only"
                        .into(),
                );
            }
            let active = exec::quiet_ok(&self.target, &["systemctl", "is-active", "--quiet", name]);
            let verb = match (want, active) {
                (ServiceState::Running, false) => Some("start"),
                (ServiceState::Stopped, true) => Some("stop"),
                _ => None,
            };
            if let Some(verb) = verb {
                started = verb == "start";
                ev.action = Some(Action::Update);
                ev.details.push(verb.into());
                ev.ops.push(systemctl(verb, name));
            }
        }
        if let Some(by) = owed {
            ev.settles_refresh = true;
            ev.action.get_or_insert(Action::Refresh);
            if !systemd {
                ev.details.push(format!(
                    "restart skipped: systemd is not running here (notified by {})",
                    by.join(", ")
                ));
            } else if !started && state != Some(ServiceState::Stopped) {
                ev.details
                    .push(format!("restart (notified by {})", by.join(", ")));
                ev.ops.push(systemctl("restart", name));
            }
        }
        Ok(ev)
    }

    /// Whether a package resource earlier in the set is about to be installed.
    pub(crate) fn package_pending(&self, res: &Resource) -> bool {
        self.set.resources.iter().any(|r| {
            res.after.contains(&r.id)
                && matches!(&r.kind, ResourceKind::Package { name, ensure: Ensure::Present, .. }
                    if exec::dpkg_installed(&self.target, name).is_none())
        })
    }
}
