//! `steward converge` end to end: the binary against temporary roots, and against a
//! real debootstrapped Debian root (apt-get, useradd, systemd unit links) inside a
//! private mount namespace with an overlay, so the cached root is never modified.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common;
use crate::common::BIN;

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    /// A spec whose state lives in the project; `{dir}` in the text is the project path.
    fn new(spec: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[steward]\nstate_dir = \"state\"\n\n{}",
            spec.replace("{dir}", &dir.path().display().to_string())
        );
        fs::write(dir.path().join("steward.toml"), text).unwrap();
        fs::create_dir_all(dir.path().join("root")).unwrap();
        Project { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        common::steward(&self.path("steward.toml"), args, &[])
    }
}

#[test]
fn plan_output_exit_codes_and_a_converged_second_run() {
    let p = Project::new(
        r#"
[converge.web]
vars = { port = 8080 }
directory = [{ path = "/srv/www", mode = "0755" }]
template = [{ path = "/srv/www/site.conf", source = "site.conf.j2", mode = "0644", notify = ["exec:reload"] }]
line = [{ path = "/etc/limits.conf", line = "nofile 65536", regexp = "^nofile " }]
symlink = [{ path = "/srv/current", target = "/srv/www" }]
exec = [{ name = "reload", command = ["true"], refresh_only = true }]
"#,
    );
    fs::write(
        p.path("site.conf.j2"),
        "listen {{ port }};\n{% for i in range(2) %}\nupstream_{{ i }};\n{% endfor %}\n",
    )
    .unwrap();
    fs::create_dir_all(p.path("root/etc")).unwrap();
    fs::write(p.path("root/etc/limits.conf"), "core 0\nnofile 1024\n").unwrap();
    let root = p.path("root");
    let root = root.to_str().unwrap();

    let (code, out, err) = p.run(&["converge", "plan", "--root", root]);
    assert_eq!(code, 1, "changes pending: {err}");
    insta::assert_snapshot!("converge_plan", out.replace(root, "[ROOT]"));
    assert!(
        !p.path("state").exists(),
        "a plan on a fresh project creates no state"
    );

    // `exec:reload` cannot run inside a root without a shell: it fails, the rest lands.
    let (code, out, _) = p.run(&["converge", "apply", "--root", root]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED   exec:reload"), "{out}");
    assert!(
        out.contains("Apply: 4 changed, 0 unchanged, 1 failed, 0 skipped"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(p.path("root/etc/limits.conf")).unwrap(),
        "core 0\nnofile 65536\n"
    );

    // The owed reload stays planned until it succeeds.
    let (code, out, _) = p.run(&["converge", "plan", "--root", root, "--json"]);
    assert_eq!(code, 1);
    let plans: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plans[0]["changes"][0]["id"], "exec:reload");
    assert_eq!(plans[0]["changes"][0]["action"], "refresh");

    // Unknown set and a bad root: usage errors, nothing runs.
    let (code, _, err) = p.run(&["converge", "plan", "webb"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no converge set `webb`; did you mean `web`?"),
        "{err}"
    );
    let (code, _, err) = p.run(&["converge", "apply", "--root", "/nonexistent/root"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a directory"), "{err}");
}

#[test]
fn a_broken_spec_changes_nothing() {
    let p = Project::new(
        r#"
[converge.web]
file = [{ path = "/etc/ok", content = "x" }]
line = [{ path = "/etc/x", line = "a", regexp = "([" }]
"#,
    );
    let root = p.path("root");
    let (code, _, err) = p.run(&["converge", "apply", "--root", root.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("steward.toml:7:49"), "{err}");
    assert!(err.contains("invalid regexp"), "{err}");
    assert!(!root.join("etc/ok").exists());
}

/// kill -9 in the middle of an apply: the files already written are whole, the next
/// apply finishes the job, and a plan after it is empty.
#[test]
fn an_apply_killed_midway_is_finished_by_the_next() {
    let p = Project::new(
        r#"
[converge.web]
file = [
  { path = "{dir}/out/first", content = "1" },
  { path = "{dir}/out/last", content = "2", requires = ["exec:slow"] },
]
exec = [{ name = "slow", command = ["sh", "-c", "test -f {dir}/fast || sleep 30"] }]
"#,
    );
    let mut child = Command::new(BIN)
        .arg("-f")
        .arg(p.path("steward.toml"))
        .args(["converge", "apply"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !p.path("out/first").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "first file never written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(fs::read_to_string(p.path("out/first")).unwrap(), "1");
    assert!(!p.path("out/last").exists());

    fs::write(p.path("fast"), "").unwrap();
    let (code, out, err) = p.run(&["converge", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(fs::read_to_string(p.path("out/last")).unwrap(), "2");
    let (code, out, _) = p.run(&["converge", "plan"]);
    assert_eq!(code, 1, "the exec has no guard, so it always runs: {out}");
    assert!(out.contains("exec:slow") && !out.contains("file:"), "{out}");
}

#[test]
fn a_real_debian_root_gets_packages_users_and_an_enabled_service() {
    let lower = common::debian_root();
    let p = Project::new(
        r#"
[converge.base]
package = [{ name = "cron" }]
service = [{ name = "cron", enabled = true }]
group = [{ name = "app", gid = 2001 }]
user = [{ name = "app", uid = 2001, group = "app", groups = ["users"], shell = "/bin/bash", home = "/srv/app" }]
directory = [{ path = "/srv/app/conf", owner = "app", group = "app", mode = "0750" }]
file = [{ path = "/srv/app/conf/app.toml", content = "port = 8080\n", owner = "app", group = "app", mode = "0640", notify = ["service:cron"] }]
cron = [{ name = "rotate", schedule = "0 4 * * *", command = "/usr/bin/true", user = "app" }]
exec = [{ name = "whoami", command = ["sh", "-c", "id app > /srv/app/id.txt"], creates = "/srv/app/id.txt" }]
"#,
    );
    let spec = p.path("steward.toml");
    let script = format!(
        "{BIN} -f {spec} converge apply --root $ROOT; echo \"apply=$?\"\n\
         {BIN} -f {spec} converge plan --root $ROOT; echo \"plan=$?\"\n",
        spec = spec.display()
    );
    let (code, out) = common::in_debian_root(&lower, &p.path("ns"), &script);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("apply=0"), "{out}");
    assert!(
        out.contains("no changes") && out.contains("plan=0"),
        "{out}"
    );

    // What the run left, read from the overlay's upper layer.
    let upper = p.path("ns/upper");
    let status = fs::read_to_string(upper.join("var/lib/dpkg/status")).unwrap();
    assert!(
        status.contains("Package: cron\nStatus: install ok installed"),
        "cron is installed"
    );
    assert_eq!(
        fs::read_link(upper.join("etc/systemd/system/multi-user.target.wants/cron.service"))
            .unwrap(),
        Path::new("/lib/systemd/system/cron.service")
    );
    let passwd = fs::read_to_string(upper.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("app:x:2001:2001::/srv/app:/bin/bash"),
        "{passwd}"
    );
    let group = fs::read_to_string(upper.join("etc/group")).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with("users:") && l.ends_with("app")),
        "{group}"
    );
    let conf = fs::metadata(upper.join("srv/app/conf/app.toml")).unwrap();
    assert_eq!(
        (conf.uid(), conf.gid(), conf.mode() & 0o7777),
        (2001, 2001, 0o640)
    );
    let dir = fs::metadata(upper.join("srv/app/conf")).unwrap();
    assert_eq!((dir.uid(), dir.mode() & 0o7777), (2001, 0o750));
    assert!(
        fs::read_to_string(upper.join("srv/app/id.txt"))
            .unwrap()
            .starts_with("uid=2001(app) gid=2001(app)"),
        "the exec ran inside the root"
    );
    assert!(
        !upper.join("usr/sbin/policy-rc.d").exists(),
        "the temporary policy-rc.d is gone"
    );
    assert!(
        !lower.join("srv/app").exists(),
        "the cached root itself was not touched"
    );
}

/// Events of one kind prefix in the project's state database, oldest first.
fn events(p: &Project, prefix: &str) -> Vec<steward_state::Event> {
    common::events(&p.path("state"), prefix, None)
}

/// `serve` plans sets with `drift_check`: drift becomes an event and a metric, and
/// with `auto_correct` steward puts the host back by itself.
#[test]
fn serve_detects_drift_and_auto_corrects() {
    let p = Project::new(
        r#"
[converge.watched]
drift_check = "1s"
file = [{ path = "{dir}/out/watched.conf", content = "v = 1\n" }]

[converge.healed]
drift_check = "1s"
auto_correct = true
file = [{ path = "{dir}/out/healed.conf", content = "v = 2\n" }]
"#,
    );
    let serve = common::serve(&p.path("steward.toml"), &[]);
    let addr = serve.addr.clone();

    // The watched file is missing: drift, reported once, and not fixed.
    common::wait_for("a drift event", || {
        events(&p, "converge.drift")
            .iter()
            .any(|e| e.event.subject == "watched")
    });
    assert!(!p.path("out/watched.conf").exists());
    let metrics = common::http_get(&addr, "/metrics");
    assert!(
        metrics.contains("steward_converge_drift_resources{set=\"watched\"} 1"),
        "{metrics}"
    );
    // The auto-corrected one is created, then a hand edit is reverted.
    common::wait_for("auto-correct", || p.path("out/healed.conf").exists());
    fs::write(p.path("out/healed.conf"), "v = tampered\n").unwrap();
    common::wait_for("the edit to be reverted", || {
        fs::read_to_string(p.path("out/healed.conf")).unwrap_or_default() == "v = 2\n"
    });
    // The file is back before the correction's event is written: wait for that too.
    common::wait_for("two corrections (created, then reverted)", || {
        events(&p, "converge.corrected").len() >= 2
    });

    // An apply by hand: the next check records that the host matches again.
    let (code, out, err) = p.run(&["converge", "apply", "watched"]);
    assert_eq!(code, 0, "{out}{err}");
    common::wait_for("a converged event", || {
        events(&p, "converge.converged")
            .iter()
            .any(|e| e.event.subject == "watched")
    });
    assert_eq!(
        events(&p, "converge.drift")
            .iter()
            .filter(|e| e.event.subject == "watched")
            .count(),
        1,
        "unchanged drift is not re-reported every check"
    );
    drop(serve);
}
