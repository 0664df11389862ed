//! Users and groups: observing accounts, resolving owners a run will create,
//! and deciding account changes.

use std::collections::{BTreeMap, BTreeSet};

use crate::fsx::{Accounts, Owned};
use crate::{Action, Converger, Eval, Op};
use steward_spec::{Ensure, Perms, Resource, ResourceKind};

impl Converger<'_> {
    /// Users or groups named in `perms` that a resource of this set will create.
    pub(crate) fn pending_account(&self, kind: &str, name: &str) -> bool {
        self.set
            .resources
            .iter()
            .any(|r| r.id == format!("{kind}:{name}"))
    }

    pub(crate) fn resolve(
        &self,
        perms: &Perms,
        acc: &Accounts,
    ) -> Result<(Owned, Vec<String>), String> {
        let mut pending = Vec::new();
        let uid = match &perms.owner {
            None => None,
            Some(o) => match acc.uid(o) {
                Some(u) => Some(u),
                None if self.pending_account("user", o) => {
                    pending.push(format!("owner → {o} (created by user:{o})"));
                    None
                }
                None => {
                    return Err(format!(
                        "unknown user `{o}`: not in {}/etc/passwd and no `user` resource creates it",
                        self.root_prefix()
                    ));
                }
            },
        };
        let gid = match &perms.group {
            None => None,
            Some(g) => match acc.gid(g) {
                Some(x) => Some(x),
                None if self.pending_account("group", g) => {
                    pending.push(format!("group → {g} (created by group:{g})"));
                    None
                }
                None => {
                    return Err(format!(
                        "unknown group `{g}`: not in {}/etc/group and no `group` resource creates it",
                        self.root_prefix()
                    ));
                }
            },
        };
        Ok((
            Owned {
                uid,
                gid,
                mode: perms.mode,
            },
            pending,
        ))
    }

    /// Fails when an owner or group exists nowhere; notes those the set will create.
    pub(crate) fn check_accounts(&self, perms: &Perms) -> Result<Vec<String>, String> {
        if perms.owner.is_none() && perms.group.is_none() {
            return Ok(Vec::new());
        }
        self.resolve(perms, &Accounts::read(&self.target))
            .map(|(_, pending)| pending)
    }

    pub(crate) fn account(&self, res: &Resource) -> Result<Eval, String> {
        let acc = Accounts::read(&self.target);
        let mut ev = Eval::none();
        let root_args: Vec<String> = if self.target.is_host() {
            Vec::new()
        } else {
            vec!["--root".into(), self.target.dir().display().to_string()]
        };
        let cmd = |prog: &str, args: Vec<String>| {
            let mut argv = vec![prog.to_string()];
            argv.extend(root_args.iter().cloned());
            argv.extend(args);
            Op::Cmd {
                argv,
                in_root: false,
                env: BTreeMap::new(),
                cwd: None,
            }
        };
        match &res.kind {
            ResourceKind::Group {
                name,
                gid,
                system,
                ensure,
            } => match (acc.group(name), ensure) {
                (None, Ensure::Present) => {
                    let mut args = Vec::new();
                    if let Some(g) = gid {
                        args.extend(["--gid".into(), g.to_string()]);
                    }
                    if *system {
                        args.push("--system".into());
                    }
                    args.push(name.clone());
                    ev.action = Some(Action::Create);
                    ev.details.push(format!("create group {name}"));
                    ev.ops.push(cmd("groupadd", args));
                }
                (Some(g), Ensure::Present) => {
                    if let Some(want) = gid
                        && g.id != *want
                    {
                        ev.action = Some(Action::Update);
                        ev.details.push(format!("gid {} → {want}", g.id));
                        ev.ops.push(cmd(
                            "groupmod",
                            vec!["--gid".into(), want.to_string(), name.clone()],
                        ));
                    }
                }
                (Some(_), Ensure::Absent) => {
                    ev.action = Some(Action::Remove);
                    ev.details.push(format!("remove group {name}"));
                    ev.ops.push(cmd("groupdel", vec![name.clone()]));
                }
                (None, Ensure::Absent) => {}
            },
            ResourceKind::User {
                name,
                uid,
                group,
                groups,
                home,
                shell,
                system,
                ensure,
            } => {
                let current = acc.user(name);
                if *ensure == Ensure::Absent {
                    if current.is_some() {
                        ev.action = Some(Action::Remove);
                        ev.details.push(format!("remove user {name}"));
                        ev.ops.push(cmd("userdel", vec![name.clone()]));
                    }
                    return Ok(ev);
                }
                for g in group.iter().chain(groups) {
                    if acc.gid(g).is_none() && !self.pending_account("group", g) {
                        return Err(format!(
                            "unknown group `{g}`: not in {}/etc/group and no `group` resource creates it",
                            self.root_prefix()
                        ));
                    }
                }
                let mut args = Vec::new();
                let Some(u) = current else {
                    if let Some(x) = uid {
                        args.extend(["--uid".into(), x.to_string()]);
                    }
                    if let Some(g) = group {
                        args.extend(["--gid".into(), g.clone()]);
                    }
                    if !groups.is_empty() {
                        args.extend(["--groups".into(), groups.join(",")]);
                    }
                    if let Some(h) = home {
                        args.extend(["--home-dir".into(), h.clone()]);
                    }
                    if let Some(s) = shell {
                        args.extend(["--shell".into(), s.clone()]);
                    }
                    if *system {
                        args.push("--system".into());
                    } else {
                        args.push("--create-home".into());
                    }
                    args.push(name.clone());
                    ev.action = Some(Action::Create);
                    ev.details.push(format!("create user {name}"));
                    ev.ops.push(cmd("useradd", args));
                    return Ok(ev);
                };
                if let Some(x) = uid
                    && u.id != *x
                {
                    ev.details.push(format!("uid {} → {x}", u.id));
                    args.extend(["--uid".into(), x.to_string()]);
                }
                if let Some(g) = group
                    && acc.gid(g) != Some(u.gid)
                {
                    ev.details.push(format!("primary group → {g}"));
                    args.extend(["--gid".into(), g.clone()]);
                }
                if !groups.is_empty() {
                    let have: BTreeSet<&str> = acc
                        .groups
                        .iter()
                        .filter(|g| g.members.iter().any(|m| m == name))
                        .map(|g| g.name.as_str())
                        .collect();
                    let want: BTreeSet<&str> = groups.iter().map(String::as_str).collect();
                    if have != want {
                        ev.details.push(format!(
                            "groups {} → {}",
                            have.into_iter().collect::<Vec<_>>().join(","),
                            groups.join(",")
                        ));
                        args.extend(["--groups".into(), groups.join(",")]);
                    }
                }
                if let Some(h) = home
                    && u.home != *h
                {
                    ev.details.push(format!("home {} → {h}", u.home));
                    args.extend(["--home".into(), h.clone()]);
                }
                if let Some(s) = shell
                    && u.shell != *s
                {
                    ev.details.push(format!("shell {} → {s}", u.shell));
                    args.extend(["--shell".into(), s.clone()]);
                }
                if !args.is_empty() {
                    args.push(name.clone());
                    ev.action = Some(Action::Update);
                    ev.ops.push(cmd("usermod", args));
                }
            }
            _ => unreachable!("account() is called for users and groups"),
        }
        Ok(ev)
    }
}
