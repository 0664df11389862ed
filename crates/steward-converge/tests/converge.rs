//! Converge sets applied to real directory trees (temporary roots, and temporary
//! paths on the host for commands), through the public spec parser.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;
use steward_converge::{Action, Converger, Plan, Report, RunLock, Status, Target};
use steward_spec::{ConvergeSet, Resolver, Spec};
use steward_state::Store;

/// Resolves `${env:NAME}` from a fixed map, so tests never depend on the process.
struct Vars(BTreeMap<String, String>);
impl Resolver for Vars {
    fn env(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn file(&self, path: &Path) -> Result<String, String> {
        Err(format!("no file {}", path.display()))
    }
}

fn no_env() -> Vars {
    Vars(BTreeMap::new())
}

/// Parses a spec with one converge set named `t`; templates live in `base`.
fn set(src: &str, base: &Path, resolver: &dyn Resolver) -> ConvergeSet {
    let spec = Spec::parse("t.toml", src, base, resolver)
        .unwrap_or_else(|e| panic!("spec must parse: {e:?}\n{src}"));
    spec.converge["t"].clone()
}

fn plan(set: &ConvergeSet, root: &Path, store: Option<&Store>, r: &dyn Resolver) -> Plan {
    Converger::new(
        set,
        Target::root(root),
        r,
        store.map(|s| s as &dyn steward_state::ConvergeJournal),
    )
    .unwrap()
    .plan()
    .unwrap()
}

fn apply(set: &ConvergeSet, root: &Path, store: &Store, state: &Path, r: &dyn Resolver) -> Report {
    let lock = RunLock::acquire(state).unwrap();
    Converger::new(set, Target::root(root), r, Some(store))
        .unwrap()
        .apply(&lock, &mut |_| {})
        .unwrap()
}

fn status_of(report: &Report, id: &str) -> Status {
    report
        .outcomes
        .iter()
        .find(|o| o.id == id)
        .unwrap_or_else(|| panic!("no outcome for {id}: {report:?}"))
        .status
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn apply_creates_everything_and_a_second_plan_is_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, state) = (tmp.path().join("root"), tmp.path().join("state"));
    fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
    fs::create_dir_all(root.join("lib/systemd/system")).unwrap();
    fs::write(root.join("etc/hostname"), "web-7\n").unwrap();
    fs::write(
        root.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\n",
    )
    .unwrap();
    fs::write(
        root.join("lib/systemd/system/app.service"),
        "[Unit]\nDescription=app\n[Service]\nExecStart=/bin/app\n[Install]\nWantedBy=multi-user.target\nAlias=webapp.service\n",
    )
    .unwrap();
    fs::write(root.join("etc/ssh_config"), "Port 22\nHost *\n").unwrap();
    fs::write(
        tmp.path().join("app.conf.j2"),
        "# {{ facts.hostname }} on {{ facts.os.id }} {{ facts.os.version_id }}\nport = {{ port }}\n{% for w in workers %}\nworker {{ w }}\n{% endfor %}\n",
    )
    .unwrap();
    let src = r#"
[converge.t]
vars = { port = 8080, workers = ["a", "b"] }
directory = [{ path = "/srv/app", mode = "0750" }]
template = [{ path = "/srv/app/app.conf", source = "app.conf.j2", mode = "0640" }]
file = [{ path = "/etc/motd", content = "hello\n" }]
line = [{ path = "/etc/ssh_config", line = "Port 2222", regexp = "^Port " }]
block = [{ path = "/etc/hosts", block = "10.0.0.1 db\n10.0.0.2 cache\n" }]
symlink = [{ path = "/srv/current", target = "/srv/app" }]
service = [{ name = "app", enabled = true }]
cron = [{ name = "report", schedule = "15 4 * * *", command = "/usr/local/bin/report", user = "root" }]
sysctl = [{ key = "net.core.somaxconn", value = "1024" }]
"#;
    let s = set(src, tmp.path(), &no_env());
    let store = Store::open(&state).unwrap();
    let before = plan(&s, &root, Some(&store), &no_env());
    assert_eq!(before.changes.len(), 9, "{before:#?}");
    assert!(before.errors.is_empty(), "{:?}", before.errors);

    let report = apply(&s, &root, &store, &state, &no_env());
    assert_eq!(report.count(Status::Changed), 9, "{report:#?}");
    assert_eq!(
        fs::read_to_string(root.join("srv/app/app.conf")).unwrap(),
        "# web-7 on debian 12\nport = 8080\nworker a\nworker b\n"
    );
    assert_eq!(mode(&root.join("srv/app/app.conf")), 0o640);
    assert_eq!(mode(&root.join("srv/app")), 0o750);
    assert_eq!(
        fs::read_to_string(root.join("etc/ssh_config")).unwrap(),
        "Port 2222\nHost *\n"
    );
    assert!(
        fs::read_to_string(root.join("etc/hosts"))
            .unwrap()
            .contains("# BEGIN steward t\n10.0.0.1 db\n10.0.0.2 cache\n# END steward t\n")
    );
    assert_eq!(
        fs::read_link(root.join("etc/systemd/system/multi-user.target.wants/app.service")).unwrap(),
        Path::new("/lib/systemd/system/app.service")
    );
    assert!(
        fs::symlink_metadata(root.join("etc/systemd/system/webapp.service")).is_ok(),
        "Alias= is linked too"
    );
    assert!(
        fs::read_to_string(root.join("etc/cron.d/steward-report"))
            .unwrap()
            .contains("15 4 * * * root /usr/local/bin/report\n")
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/sysctl.d/60-steward-net.core.somaxconn.conf")).unwrap(),
        "net.core.somaxconn = 1024\n"
    );

    let after = plan(&s, &root, Some(&store), &no_env());
    assert!(after.is_empty(), "second plan must be empty: {after:#?}");
    let again = apply(&s, &root, &store, &state, &no_env());
    assert_eq!(again.count(Status::Unchanged), 9);

    // Drift: a hand edit and a mode change show up as a diff, and are put back.
    fs::write(root.join("srv/app/app.conf"), "port = 1\n").unwrap();
    fs::set_permissions(root.join("etc/motd"), fs::Permissions::from_mode(0o600)).unwrap();
    let drift = plan(&s, &root, Some(&store), &no_env());
    assert_eq!(
        drift.changes.len(),
        1,
        "motd has no mode in the spec: {drift:#?}"
    );
    let diff = drift.changes[0].diff.as_deref().unwrap();
    assert!(
        diff.contains("-port = 1\n") && diff.contains("+port = 8080\n"),
        "{diff}"
    );
    apply(&s, &root, &store, &state, &no_env());
    assert!(plan(&s, &root, Some(&store), &no_env()).is_empty());

    // Disabling removes exactly the links enabling made.
    let disabled = set(
        &src.replace("enabled = true", "enabled = false"),
        tmp.path(),
        &no_env(),
    );
    apply(&disabled, &root, &store, &state, &no_env());
    assert!(
        fs::symlink_metadata(root.join("etc/systemd/system/multi-user.target.wants/app.service"))
            .is_err()
    );
    assert!(root.join("lib/systemd/system/app.service").exists());
}

#[test]
fn purge_removes_strays_and_orphans_are_remembered() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, state) = (tmp.path().join("root"), tmp.path().join("state"));
    fs::create_dir_all(root.join("etc/app/conf.d/old")).unwrap();
    fs::write(root.join("etc/app/conf.d/stray.conf"), "x").unwrap();
    fs::write(root.join("etc/app/conf.d/old/deep"), "x").unwrap();
    fs::create_dir_all(root.join("etc/app/data")).unwrap();
    fs::write(root.join("etc/app/data/keep-me"), "user data").unwrap();
    let full = r#"
[converge.t]
directory = [
  { path = "/etc/app", purge = true },
  { path = "/etc/app/data" },
]
file = [
  { path = "/etc/app/conf.d/a.conf", content = "a" },
  { path = "/etc/app/conf.d/b.conf", content = "b" },
  { path = "/etc/other.conf", content = "o" },
]
"#;
    let store = Store::open(&state).unwrap();
    let s = set(full, tmp.path(), &no_env());
    let p = plan(&s, &root, Some(&store), &no_env());
    let purge = &p.changes[0];
    assert_eq!(purge.id, "directory:/etc/app");
    assert_eq!(
        purge.details,
        [
            "purge /etc/app/conf.d/old",
            "purge /etc/app/conf.d/stray.conf"
        ]
    );
    apply(&s, &root, &store, &state, &no_env());
    assert!(!root.join("etc/app/conf.d/stray.conf").exists());
    assert!(!root.join("etc/app/conf.d/old").exists());
    assert!(
        root.join("etc/app/data/keep-me").exists(),
        "a managed subdirectory is not purged by its parent"
    );

    // Drop b.conf (under the purged directory) and other.conf (not) from the spec.
    let smaller = set(
        &full
            .replace(
                "  { path = \"/etc/app/conf.d/b.conf\", content = \"b\" },\n",
                "",
            )
            .replace("  { path = \"/etc/other.conf\", content = \"o\" },\n", ""),
        tmp.path(),
        &no_env(),
    );
    let p = plan(&smaller, &root, Some(&store), &no_env());
    assert_eq!(
        p.orphans,
        ["file:/etc/app/conf.d/b.conf", "file:/etc/other.conf"]
    );
    assert_eq!(p.changes[0].details, ["purge /etc/app/conf.d/b.conf"]);
    apply(&smaller, &root, &store, &state, &no_env());
    assert!(!root.join("etc/app/conf.d/b.conf").exists());
    assert!(root.join("etc/other.conf").exists(), "left in place");
    let p = plan(&smaller, &root, Some(&store), &no_env());
    assert!(p.is_empty());
    assert_eq!(
        p.orphans,
        ["file:/etc/other.conf"],
        "the purged orphan is forgotten, the other is still named"
    );
}

/// Commands run on the host, so this test manages paths under a temporary directory.
#[test]
fn a_failure_stops_dependents_and_owed_refreshes_survive_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let state = dir.join("state");
    let d = dir.display();
    let src = format!(
        r#"
[converge.t]
file = [
  {{ path = "{d}/app.conf", content = "v1", notify = ["exec:reload"] }},
  {{ path = "{d}/unrelated", content = "u" }},
  {{ path = "{d}/after-migrate", content = "m", requires = ["exec:migrate"] }},
]
exec = [
  {{ name = "reload", command = ["sh", "-c", "test -f {d}/ready && echo reloaded >> {d}/reloads"], refresh_only = true }},
  {{ name = "migrate", command = ["sh", "-c", "test -f {d}/ready"], creates = "{d}/ready" }},
]
"#
    );
    let s = set(&src, &dir, &no_env());
    let store = Store::open(&state).unwrap();
    let lock = RunLock::acquire(&state).unwrap();
    let env = no_env();
    let host = |s| Converger::new(s, Target::host(), &env, Some(&store)).unwrap();

    let first = host(&s).apply(&lock, &mut |_| {}).unwrap();
    assert_eq!(
        status_of(&first, &format!("file:{d}/app.conf")),
        Status::Changed
    );
    assert_eq!(status_of(&first, "exec:reload"), Status::Failed);
    assert_eq!(status_of(&first, "exec:migrate"), Status::Failed);
    assert_eq!(
        status_of(&first, &format!("file:{d}/after-migrate")),
        Status::Skipped
    );
    assert_eq!(
        status_of(&first, &format!("file:{d}/unrelated")),
        Status::Changed
    );
    assert!(!dir.join("after-migrate").exists());

    // The file no longer changes, but the reload it owes is still planned.
    let p = host(&s).plan().unwrap();
    let reload = p.changes.iter().find(|c| c.id == "exec:reload").unwrap();
    assert_eq!(reload.action, Action::Refresh);
    assert!(
        reload
            .details
            .iter()
            .any(|d| d.contains("notified by file:"))
    );

    fs::write(dir.join("ready"), "").unwrap();
    let second = host(&s).apply(&lock, &mut |_| {}).unwrap();
    assert_eq!(status_of(&second, "exec:reload"), Status::Changed);
    assert_eq!(
        status_of(&second, "exec:migrate"),
        Status::Unchanged,
        "`creates` exists"
    );
    assert_eq!(
        status_of(&second, &format!("file:{d}/after-migrate")),
        Status::Changed
    );
    assert_eq!(
        fs::read_to_string(dir.join("reloads")).unwrap(),
        "reloaded\n"
    );

    assert!(host(&s).plan().unwrap().is_empty());
    let third = host(&s).apply(&lock, &mut |_| {}).unwrap();
    assert_eq!(third.count(Status::Changed), 0);
    assert_eq!(
        fs::read_to_string(dir.join("reloads")).unwrap(),
        "reloaded\n",
        "the refresh ran exactly once"
    );
}

#[test]
fn exec_guards_are_evaluated_in_plans() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    let dd = d.display();
    let src = format!(
        r#"
[converge.t]
exec = [
  {{ name = "skip-unless", command = ["touch", "{dd}/a"], unless = ["true"] }},
  {{ name = "run-unless", command = ["touch", "{dd}/b"], unless = ["false"] }},
  {{ name = "skip-onlyif", command = ["touch", "{dd}/c"], onlyif = ["false"] }},
  {{ name = "run-onlyif", command = ["touch", "{dd}/d"], onlyif = ["test", "-d", "{dd}"] }},
]
"#
    );
    let s = set(&src, &d, &no_env());
    let p = Converger::new(&s, Target::host(), &no_env(), None)
        .unwrap()
        .plan()
        .unwrap();
    let ids: Vec<&str> = p.changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["exec:run-unless", "exec:run-onlyif"]);
    assert!(!d.join("b").exists(), "a plan runs guards, never commands");
}

#[test]
fn secrets_are_hidden_in_plans_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(&root).unwrap();
    fs::write(tmp.path().join("db.j2"), "url = {{ db_url }}\n").unwrap();
    let r = Vars(BTreeMap::from([(
        "DB_URL".to_string(),
        "postgres://app:hunter2@db/app".to_string(),
    )]));
    let src = r#"
[converge.t]
vars = { db_url = "${env:DB_URL}" }
file = [{ path = "/etc/secret", content = "${env:DB_URL}" }]
template = [{ path = "/etc/db.conf", source = "db.j2" }]
"#;
    let s = set(src, tmp.path(), &r);
    let p = plan(&s, &root, None, &r);
    let json = serde_json::to_string(&p).unwrap();
    assert!(!json.contains("hunter2"), "{json}");
    assert_eq!(p.changes.len(), 2);
    for c in &p.changes {
        assert!(c.diff.as_deref().unwrap().contains("content hidden"));
    }
    let shown = Converger::new(&s, Target::root(&root), &r, None)
        .unwrap()
        .show_secrets(true)
        .plan()
        .unwrap();
    assert!(serde_json::to_string(&shown).unwrap().contains("hunter2"));

    // Secret files are created private by default.
    let state = tmp.path().join("state");
    let store = Store::open(&state).unwrap();
    apply(&s, &root, &store, &state, &r);
    assert_eq!(mode(&root.join("etc/secret")), 0o600);
    assert_eq!(mode(&root.join("etc/db.conf")), 0o644);
}

/// An image root's absolute symlinks point into the root, never at the host.
#[test]
fn a_root_with_absolute_links_keeps_writes_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, state) = (tmp.path().join("root"), tmp.path().join("state"));
    let outside = tmp.path().join("outside");
    fs::create_dir_all(root.join("var")).unwrap();
    fs::create_dir_all(root.join("run")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    // `/var/run -> /run` as in a Debian root, and a link pointing at a host path.
    std::os::unix::fs::symlink("/run", root.join("var/run")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink("../../..", root.join("run/up")).unwrap();
    let s = set(
        r#"
[converge.t]
file = [
  { path = "/var/run/app.pid", content = "1" },
  { path = "/escape/x", content = "2" },
  { path = "/run/up/y", content = "3" },
]
"#,
        tmp.path(),
        &no_env(),
    );
    let store = Store::open(&state).unwrap();
    let report = apply(&s, &root, &store, &state, &no_env());
    assert_eq!(report.count(Status::Changed), 3, "{report:?}");
    assert_eq!(fs::read_to_string(root.join("run/app.pid")).unwrap(), "1");
    assert!(!outside.join("x").exists(), "a write escaped the root");
    assert_eq!(
        fs::read_to_string(root.join(outside.strip_prefix("/").unwrap()).join("x")).unwrap(),
        "2"
    );
    assert_eq!(
        fs::read_to_string(root.join("y")).unwrap(),
        "3",
        "`..` stops at the root"
    );
    assert!(plan(&s, &root, Some(&store), &no_env()).is_empty());
}

#[test]
fn template_errors_name_the_template_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("t.j2"), "a\nb = {{ missing_var }}\n").unwrap();
    let s = set(
        "[converge.t]\ntemplate = [{ path = \"/x\", source = \"t.j2\" }]\n",
        tmp.path(),
        &no_env(),
    );
    let p = plan(&s, tmp.path(), None, &no_env());
    let msg = &p.errors[0].message;
    assert!(
        msg.contains("t.j2") && msg.contains("line 2") && msg.contains("undefined"),
        "{msg}"
    );
}

#[test]
fn unknown_owner_is_a_clear_error_and_a_second_apply_waits_for_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    let s = set(
        "[converge.t]\nfile = [{ path = \"/f\", content = \"x\", owner = \"nobody-here\" }]\n",
        tmp.path(),
        &no_env(),
    );
    let p = plan(&s, &root, None, &no_env());
    assert!(
        p.errors[0].message.contains("unknown user `nobody-here`")
            && p.errors[0].message.contains("/etc/passwd"),
        "{:?}",
        p.errors
    );
    let state = tmp.path().join("state");
    fs::create_dir_all(&state).unwrap();
    let _held = RunLock::acquire(&state).unwrap();
    let err = RunLock::acquire(&state).unwrap_err();
    assert!(
        err.to_string()
            .contains("another `steward converge apply` is running")
    );
}

fn testbed(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: start the test servers with `scripts/testbed up` and source `scripts/testbed env` (scripts/test does both)")
    })
}

/// Downloads come from the test bed's nginx; a wrong checksum writes nothing.
#[test]
fn downloads_are_verified_before_they_appear() {
    let www = testbed("STEWARD_TEST_WWW");
    let base = testbed("STEWARD_TEST_NGINX_URL");
    let rustls_provider = rustls::crypto::ring::default_provider().install_default();
    drop(rustls_provider);
    let name = format!("artifact-{}.bin", std::process::id());
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(Path::new(&www).join(&name), &body).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&body))
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(&root).unwrap();
    let state = tmp.path().join("state");
    let store = Store::open(&state).unwrap();
    let spec = |sha: &str| {
        format!(
            "[converge.t]\ndownload = [{{ url = \"{base}/{name}\", path = \"/opt/app/{name}\", sha256 = \"{sha}\", mode = \"0755\" }}]\n"
        )
    };
    let wrong = set(&spec(&"0".repeat(64)), tmp.path(), &no_env());
    let report = apply(&wrong, &root, &store, &state, &no_env());
    assert_eq!(report.outcomes[0].status, Status::Failed);
    assert!(
        report.outcomes[0]
            .message
            .as_deref()
            .unwrap()
            .contains("sha256 is"),
        "{report:?}"
    );
    assert!(!root.join(format!("opt/app/{name}")).exists());

    let right = set(&spec(&sha), tmp.path(), &no_env());
    let report = apply(&right, &root, &store, &state, &no_env());
    assert_eq!(report.outcomes[0].status, Status::Changed, "{report:?}");
    assert_eq!(
        fs::read(root.join(format!("opt/app/{name}"))).unwrap(),
        body
    );
    assert_eq!(mode(&root.join(format!("opt/app/{name}"))), 0o755);
    assert!(plan(&right, &root, Some(&store), &no_env()).is_empty());
    let _ = fs::remove_file(Path::new(&www).join(name));
}

/// A random resource set, written as a spec: directories, files, templates, lines,
/// blocks and symlinks over a small namespace, so they nest and share directories.
fn arb_spec() -> impl Strategy<Value = String> {
    let dirs = prop::collection::btree_set(0u8..4, 0..4);
    let files = prop::collection::btree_map(
        (0u8..4, 0u8..6),
        (
            "[a-z ]{0,12}",
            prop::option::of(prop::sample::select(vec!["0600", "0644", "0755"])),
        ),
        0..6,
    );
    let lines = prop::collection::vec(
        ("[a-z]{1,3}", "[a-z =]{1,8}", any::<bool>(), any::<bool>()),
        0..4,
    );
    let blocks = prop::collection::vec(("[a-z\n]{0,10}", any::<bool>()), 0..2);
    let links = prop::collection::btree_map(0u8..3, "[a-z/]{1,8}", 0..3);
    let purge = any::<bool>();
    (dirs, files, lines, blocks, links, purge).prop_map(|(dirs, files, lines, blocks, links, purge)| {
        let mut s = String::from("[converge.t]\nvars = { n = 3 }\n");
        s.push_str(&format!(
            "directory = [{{ path = \"/d\", purge = {purge} }}, {}]\n",
            dirs.iter()
                .map(|d| format!("{{ path = \"/d/{d}\", mode = \"0751\" }}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut file_entries = Vec::new();
        let mut template_entries = Vec::new();
        for ((d, f), (content, mode)) in &files {
            let mode = mode.map(|m| format!(", mode = \"{m}\"")).unwrap_or_default();
            if f % 2 == 0 {
                file_entries.push(format!("{{ path = \"/d/{d}/f{f}\", content = \"{content}\"{mode} }}"));
            } else {
                template_entries.push(format!("{{ path = \"/d/{d}/f{f}\", source = \"t.j2\"{mode} }}"));
            }
        }
        s.push_str(&format!("file = [{}]\n", file_entries.join(", ")));
        s.push_str(&format!("template = [{}]\n", template_entries.join(", ")));
        let line_entries: Vec<String> = lines
            .iter()
            .enumerate()
            .map(|(i, (re, line, present, use_re))| {
                let re = if *use_re { format!(", regexp = \"^{re}\"") } else { String::new() };
                let ensure = if *present { "present" } else { "absent" };
                format!("{{ name = \"l{i}\", path = \"/etc/edit{i}.conf\", line = \"{line}\"{re}, ensure = \"{ensure}\" }}")
            })
            .collect();
        s.push_str(&format!("line = [{}]\n", line_entries.join(", ")));
        let block_entries: Vec<String> = blocks
            .iter()
            .enumerate()
            .map(|(i, (b, present))| {
                let ensure = if *present { "present" } else { "absent" };
                format!("{{ name = \"b{i}\", path = \"/etc/blocks.conf\", block = \"{}\", ensure = \"{ensure}\" }}", b.replace('\n', "\\n"))
            })
            .collect();
        s.push_str(&format!("block = [{}]\n", block_entries.join(", ")));
        let link_entries: Vec<String> = links
            .iter()
            .map(|(l, t)| format!("{{ path = \"/d/link{l}\", target = \"{t}\" }}"))
            .collect();
        s.push_str(&format!("symlink = [{}]\n", link_entries.join(", ")));
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the set and whatever was on disk, apply then plan is empty, and a
    /// second apply changes nothing.
    #[test]
    fn applying_any_set_leaves_an_empty_plan(
        src in arb_spec(),
        junk in prop::collection::vec("[a-c]{1,2}", 0..4),
        edit_conf in "([a-z =]{0,8}\n){0,4}",
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (root, state) = (tmp.path().join("root"), tmp.path().join("state"));
        fs::create_dir_all(root.join("d/0")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        // Each line edits its own file: two lines whose regexps match each other's
        // text fight by design (the spec is contradictory), in any tool.
        for i in 0..4 {
            fs::write(root.join(format!("etc/edit{i}.conf")), &edit_conf).unwrap();
        }
        fs::write(root.join("etc/blocks.conf"), &edit_conf).unwrap();
        for j in &junk {
            fs::write(root.join("d").join(j), "junk").unwrap();
        }
        fs::write(tmp.path().join("t.j2"), "{% for i in range(n) %}\n{{ i }}\n{% endfor %}\n").unwrap();
        let s = set(&src, tmp.path(), &no_env());
        let store = Store::open(&state).unwrap();
        let report = apply(&s, &root, &store, &state, &no_env());
        prop_assert_eq!(report.count(Status::Failed), 0, "{:?}", report);
        let p = plan(&s, &root, Some(&store), &no_env());
        prop_assert!(p.is_empty(), "not idempotent:\n{}\n{:#?}", src, p);
        let again = apply(&s, &root, &store, &state, &no_env());
        prop_assert_eq!(again.count(Status::Changed), 0);
    }
}

/// The facts templates use are the ones Ansible gathers on the same host:
/// Debian's ansible-core (installed by the test bed) runs its `setup` module
/// here and each fact is compared with what steward gathers.
#[test]
fn facts_are_what_ansible_gathers_on_this_host() {
    let out = std::process::Command::new("ansible")
        .args(["localhost", "-c", "local", "-m", "setup"])
        .env("ANSIBLE_LOCALHOST_WARNING", "false")
        .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "false")
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .expect("ansible (scripts/testbed install)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    let a = &doc["ansible_facts"];
    let f = steward_converge::Facts::gather(&Target::host());
    let sorted = |v: &serde_json::Value| {
        let mut l: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        l.sort();
        l
    };
    let pairs: Vec<(&str, String, String)> = vec![
        (
            "hostname",
            f.hostname.clone(),
            a["ansible_hostname"].as_str().unwrap().into(),
        ),
        (
            "fqdn",
            f.fqdn.clone(),
            a["ansible_fqdn"].as_str().unwrap().into(),
        ),
        (
            "arch",
            f.arch.clone(),
            a["ansible_architecture"].as_str().unwrap().into(),
        ),
        (
            "kernel",
            f.kernel.clone(),
            a["ansible_kernel"].as_str().unwrap().into(),
        ),
        (
            "cpus",
            f.cpus.to_string(),
            a["ansible_processor_nproc"].to_string(),
        ),
        (
            "memory_mb",
            f.memory_mb.to_string(),
            a["ansible_memtotal_mb"].to_string(),
        ),
        (
            "os.id",
            f.os["id"].clone(),
            a["ansible_distribution"].as_str().unwrap().to_lowercase(),
        ),
        (
            "os.version_codename",
            f.os["version_codename"].clone(),
            a["ansible_distribution_release"].as_str().unwrap().into(),
        ),
        (
            "ipv4",
            f.ipv4.join(" "),
            sorted(&a["ansible_all_ipv4_addresses"]).join(" "),
        ),
        (
            "ipv6",
            f.ipv6.join(" "),
            sorted(&a["ansible_all_ipv6_addresses"]).join(" "),
        ),
    ];
    let differ: Vec<String> = pairs
        .iter()
        .filter(|(_, ours, theirs)| ours != theirs)
        .map(|(k, ours, theirs)| format!("facts.{k}: steward `{ours}`, Ansible `{theirs}`"))
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
