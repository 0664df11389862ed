//! `steward backup` end to end: real repositories on disk and in OpenStack Swift,
//! a real PostgreSQL, and Debian's restic reading and writing the same repositories.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use steward_state::AlertLog;

use crate::common;
use crate::common::{BIN, free_port, http_get, testbed};

const PASSWORD: &str = "correct horse battery staple";

struct Project {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Project {
    /// `{dir}` in the spec is the project directory; the password is in `{dir}/pw`.
    fn new(spec: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let p = Project {
            dir,
            env: Vec::new(),
        };
        fs::write(p.path("pw"), PASSWORD).unwrap();
        fs::set_permissions(p.path("pw"), fs::Permissions::from_mode(0o600)).unwrap();
        p.spec(spec);
        p
    }

    fn spec(&self, spec: &str) {
        let text = format!(
            "[steward]\nstate_dir = \"state\"\n\n{}",
            spec.replace("{dir}", &self.dir.path().display().to_string())
        );
        fs::write(self.path("steward.toml"), text).unwrap();
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        common::steward(&self.path("steward.toml"), args, &self.env)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "steward {args:?} failed:\n{out}\n{err}");
        out
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn restic(&self, repo: &str, args: &[&str]) -> String {
        self.restic_in("UTC", repo, args)
    }

    /// The snapshots backup `name` keeps under `policy` (a `keep` table's
    /// body), as steward's `forget --dry-run` says and as restic's does on the
    /// same repository: (steward's, restic's).
    fn kept_by_both(&self, name: &str, policy: &str) -> (BTreeSet<String>, BTreeSet<String>) {
        self.spec(&format!("{}keep = {{ {policy} }}\n", paths_backup(name)));
        let ours = self.json(&["backup", "forget", "--dry-run", "--json"]);
        let ours: BTreeSet<String> = ours[0]["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["keep"] == true)
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        // restic's default grouping (host and paths): one group, as steward's.
        let tag = format!("steward:{name}");
        let mut args = vec!["forget", "--dry-run", "--json", "--tag", &tag];
        let flags: Vec<String> = policy
            .split(", ")
            .flat_map(|kv| {
                let (k, v) = kv.split_once(" = ").unwrap();
                [format!("--keep-{k}"), v.trim_matches('"').to_string()]
            })
            .collect();
        args.extend(flags.iter().map(String::as_str));
        let repo = self.path(&format!("state/objects/{name}"));
        let theirs: serde_json::Value =
            serde_json::from_str(&self.restic(repo.to_str().unwrap(), &args)).unwrap();
        let theirs: BTreeSet<String> = theirs
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["keep"].as_array().cloned().unwrap_or_default())
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        (ours, theirs)
    }

    /// restic run in time zone `tz` (its `--time` and its stamps are local).
    fn restic_in(&self, tz: &str, repo: &str, args: &[&str]) -> String {
        let out = Command::new("restic")
            .args(["-r", repo, "--password-file"])
            .arg(self.path("pw"))
            .args(["--no-cache", "--quiet"])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("TZ", tz)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restic {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A backup `name` of `{dir}/data`, its password in `{dir}/pw`.
fn paths_backup(name: &str) -> String {
    format!(
        "[backup.{name}]\nsource = {{ paths = [\"{{dir}}/data\"] }}\npassword = \"${{file:{{dir}}/pw}}\"\n"
    )
}

/// Whether the tests run as root (who can read any file and own any).
fn is_root() -> bool {
    String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
        .unwrap()
        .trim()
        == "0"
}

/// Every file under `dir`, with its content, relative to `dir`.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn sample_data(dir: &Path) {
    fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    fs::write(dir.join("hello.txt"), "hello\n").unwrap();
    fs::write(dir.join("sub/notes.md"), "# notes\n".repeat(1000)).unwrap();
    let random: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(dir.join("sub/deeper/blob.bin"), random).unwrap();
    fs::write(dir.join("sub/scratch.tmp"), "not backed up").unwrap();
}

#[test]
fn files_round_trip_and_restic_reads_and_writes_the_same_repository() {
    let p = Project::new(
        r#"
[backup.files]
source = { paths = ["{dir}/data"], exclude = ["*.tmp"] }
password = "${file:{dir}/pw}"
"#,
    );
    sample_data(&p.path("data"));
    let first = p.json(&["backup", "run", "--json"]);
    assert!(first[0]["snapshot"]["added"].as_u64().unwrap() > 3_000_000);
    let second = p.json(&["backup", "run", "--json"]);
    assert!(
        second[0]["snapshot"]["added"].as_u64().unwrap() < 100_000,
        "an unchanged tree adds (almost) nothing: {second}"
    );
    let listed = p.json(&["backup", "list", "--json"]);
    assert_eq!(listed[0]["snapshots"].as_array().unwrap().len(), 2);

    p.ok(&[
        "backup",
        "restore",
        "files",
        "--target",
        p.path("out").to_str().unwrap(),
    ]);
    let restored = p
        .path("out")
        .join(p.path("data").strip_prefix("/").unwrap());
    let mut want = tree(&p.path("data"));
    want.retain(|(n, _)| !n.ends_with(".tmp"));
    assert_eq!(
        tree(&restored),
        want,
        "restored tree differs (or kept an excluded file)"
    );

    // restic reads steward's repository…
    let repo = p.path("state/objects/files");
    let repo = repo.to_str().unwrap();
    let snaps: serde_json::Value =
        serde_json::from_str(&p.restic(repo, &["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2);
    assert!(
        snaps[0]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "steward:files")
    );
    p.restic(
        repo,
        &[
            "restore",
            "latest",
            "--target",
            p.path("restic-out").to_str().unwrap(),
        ],
    );
    let by_restic = p
        .path("restic-out")
        .join(p.path("data").strip_prefix("/").unwrap());
    assert_eq!(tree(&by_restic), want);

    // …and steward reads what restic writes into it.
    fs::create_dir_all(p.path("more")).unwrap();
    fs::write(p.path("more/from-restic.txt"), "written by restic\n").unwrap();
    p.restic(
        repo,
        &[
            "backup",
            "--tag",
            "steward:files",
            p.path("more").to_str().unwrap(),
        ],
    );
    let listed = p.json(&["backup", "list", "--json"]);
    let snaps = listed[0]["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 3);
    let newest = snaps[2]["short_id"].as_str().unwrap();
    p.ok(&[
        "backup",
        "restore",
        "files",
        newest,
        "--target",
        p.path("out2").to_str().unwrap(),
    ]);
    assert_eq!(
        fs::read_to_string(
            p.path("out2")
                .join(p.path("more/from-restic.txt").strip_prefix("/").unwrap())
        )
        .unwrap(),
        "written by restic\n"
    );
    p.ok(&["backup", "check", "--read-data"]);

    // A wrong password is a clear error and never echoed.
    fs::write(p.path("pw"), "wrong password here").unwrap();
    let (code, _, err) = p.run(&["backup", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("wrong password for repository"), "{err}");
    assert!(!err.contains("wrong password here") && !err.contains(PASSWORD));
}

#[test]
fn check_names_a_corrupted_pack_and_a_missing_one() {
    let p = Project::new(&paths_backup("files"));
    sample_data(&p.path("data"));
    p.ok(&["backup", "run"]);
    p.ok(&["backup", "check", "--read-data"]);
    let mut packs: Vec<PathBuf> = Vec::new();
    let mut stack = vec![p.path("state/objects/files/data")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                stack.push(e)
            } else {
                packs.push(e)
            }
        }
    }
    packs.sort_by_key(|p| std::cmp::Reverse(fs::metadata(p).unwrap().len()));
    let corrupt = &packs[0];
    let mut bytes = fs::read(corrupt).unwrap();
    bytes[200] ^= 0xff;
    fs::write(corrupt, bytes).unwrap();
    let name = corrupt.file_name().unwrap().to_str().unwrap()[..8].to_string();
    let (code, out, _) = p.run(&["backup", "check", "--read-data"]);
    assert_eq!(code, 1);
    assert!(out.contains(&name), "check must name pack {name}: {out}");

    fs::remove_file(corrupt).unwrap();
    let (code, out, _) = p.run(&["backup", "check"]);
    assert_eq!(code, 1);
    assert!(out.contains(&name) && out.contains("not present"), "{out}");
    // Its advice names steward's commands, not another tool's.
    assert!(
        out.contains("steward backup run") && !out.contains("rustic"),
        "{out}"
    );
}

fn psql(sql: &str) -> String {
    let url = testbed("STEWARD_TEST_PG_URL");
    let out = Command::new(Path::new(&testbed("STEWARD_TEST_PG_BIN")).join("psql"))
        .args([
            url.as_str(),
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_postgres_dump_streams_into_the_repository_and_back() {
    let table = format!("fractal_{}", std::process::id());
    psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int primary key, name text);
         INSERT INTO {table} SELECT i, 'fractal ' || i FROM generate_series(1, 5000) i;"
    ));
    let mut p = Project::new(
        r#"
[backup.db]
source = { postgres = "${env:APP_DATABASE_URL}" }
password = "${file:{dir}/pw}"
"#,
    );
    p.env
        .push(("APP_DATABASE_URL".into(), testbed("STEWARD_TEST_PG_URL")));
    let run = p.json(&["backup", "run", "--json"]);
    assert_eq!(run[0]["snapshot"]["paths"][0], "/postgres/steward.dump");

    psql(&format!("DELETE FROM {table} WHERE id > 10"));
    assert_eq!(psql(&format!("SELECT count(*) FROM {table}")), "10");
    let url = testbed("STEWARD_TEST_PG_URL");
    p.ok(&["backup", "restore", "db", "--to-postgres", &url]);
    assert_eq!(psql(&format!("SELECT count(*) FROM {table}")), "5000");
    assert_eq!(
        psql(&format!("SELECT name FROM {table} WHERE id = 4321")),
        "fractal 4321"
    );

    // A dump that fails (bad password) is an error and leaves no snapshot behind.
    let bad = url.replace("steward-test-pw", "not-the-password");
    p.env = vec![("APP_DATABASE_URL".into(), bad)];
    let (code, _, err) = p.run(&["backup", "run"]);
    assert_eq!(code, 1);
    assert!(err.contains("pg_dump") && err.contains("failed"), "{err}");
    assert!(
        !err.contains("not-the-password"),
        "the password must not leak: {err}"
    );
    let listed = p.json(&["backup", "list", "--json"]);
    assert_eq!(listed[0]["snapshots"].as_array().unwrap().len(), 1);
    psql(&format!("DROP TABLE {table}"));
}

/// Backup `files` of `p` checks clean (every pack read) and its newest
/// snapshot restores (under `out`) the tree of `data` as it is.
fn checked_and_restored_whole(p: &Project) {
    p.ok(&["backup", "check", "--read-data"]);
    p.ok(&[
        "backup",
        "restore",
        "files",
        "--target",
        p.path("out").to_str().unwrap(),
    ]);
    let restored = p
        .path("out")
        .join(p.path("data").strip_prefix("/").unwrap());
    assert_eq!(tree(&restored), tree(&p.path("data")));
}

/// Backup `files` of `p` (in repository `repos/files` of Swift container
/// `container`) checks clean, restores the tree it read, and restic finds
/// `snapshots` snapshots there and checks it too.
fn restored_and_read_by_restic(p: &Project, container: &str, snapshots: usize) {
    checked_and_restored_whole(p);

    let repo = format!("swift:{container}:/repos/files");
    let snaps: serde_json::Value =
        serde_json::from_str(&p.restic(&repo, &["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), snapshots);
    p.restic(&repo, &["check", "--read-data"]);
}

#[test]
fn swift_holds_the_repository_and_restic_reads_it_there() {
    let container = format!("steward-test-{}", std::process::id());
    let mut p = Project::new(&format!(
        r#"
[store.swift]
type = "swift"
auth_url = "{}"
user = "${{env:ST_USER}}"
key = "${{env:ST_KEY}}"
container = "{container}"

[backup.files]
store = "swift"
repository = "repos/files"
source = {{ paths = ["{{dir}}/data"] }}
password = "${{file:{{dir}}/pw}}"
"#,
        testbed("STEWARD_TEST_SWIFT_AUTH")
    ));
    p.env = vec![
        ("ST_AUTH".into(), testbed("STEWARD_TEST_SWIFT_AUTH")),
        ("ST_USER".into(), testbed("STEWARD_TEST_SWIFT_USER")),
        ("ST_KEY".into(), testbed("STEWARD_TEST_SWIFT_KEY")),
    ];
    sample_data(&p.path("data"));
    p.ok(&["backup", "run"]);
    p.ok(&["backup", "run"]);
    restored_and_read_by_restic(&p, &container, 2);
}

/// Swift behind Keystone v3 (the test bed's second proxy; the catalog's
/// object-store entry points at it): steward logs in, finds the endpoint in
/// the catalog, and restic, given the same cloud through `OS_*`, reads what
/// steward wrote.
#[test]
fn swift_through_keystone_holds_the_repository_and_restic_reads_it_there() {
    let container = format!("steward-ks-{}", std::process::id());
    let auth = testbed("STEWARD_TEST_OS_AUTH_URL");
    let mut p = Project::new(&format!(
        r#"
[store.swift]
type = "swift"
auth_url = "{auth}"
user = "demo"
key = "${{env:OS_PASSWORD}}"
project = "demo"
region = "RegionOne"
container = "{container}"

[backup.files]
store = "swift"
repository = "repos/files"
source = {{ paths = ["{{dir}}/data"] }}
password = "${{file:{{dir}}/pw}}"
"#
    ));
    p.env = vec![
        ("OS_AUTH_URL".into(), auth.clone()),
        ("OS_USERNAME".into(), "demo".into()),
        (
            "OS_PASSWORD".into(),
            testbed("STEWARD_TEST_OS_DEMO_PASSWORD"),
        ),
        ("OS_PROJECT_NAME".into(), "demo".into()),
        ("OS_USER_DOMAIN_NAME".into(), "Default".into()),
        ("OS_PROJECT_DOMAIN_NAME".into(), "Default".into()),
        ("OS_REGION_NAME".into(), "RegionOne".into()),
    ];
    sample_data(&p.path("data"));
    p.ok(&["backup", "run"]);
    restored_and_read_by_restic(&p, &container, 1);

    // A wrong password is Keystone's refusal, named as such, and nothing runs.
    p.env[2].1 = "not-the-password".into();
    let (code, _, err) = p.run(&["backup", "run"]);
    assert_ne!(code, 0);
    assert!(err.contains("HTTP 401"), "{err}");
}

#[test]
fn a_failed_stream_leaves_no_snapshot_and_a_killed_run_is_recovered() {
    let p = Project::new(
        r#"
[backup.stream]
source = { command = ["sh", "-c", "head -c 3000000 /dev/urandom; test -f {dir}/ok || exit 3"], filename = "stream.bin" }
repository = "shared"
password = "${file:{dir}/pw}"

[backup.slow]
source = { command = ["sh", "-c", "head -c 100000000 /dev/urandom; sleep 30"], filename = "slow.bin" }
repository = "shared"
password = "${file:{dir}/pw}"

[backup.files]
source = { paths = ["{dir}/data"] }
repository = "shared"
password = "${file:{dir}/pw}"
"#,
    );
    let (code, _, err) = p.run(&["backup", "run", "stream"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failed (exit status: 3)"), "{err}");
    let listed = p.json(&["backup", "list", "stream", "--json"]);
    assert_eq!(
        listed[0]["snapshots"].as_array().unwrap().len(),
        0,
        "no snapshot from a failed stream"
    );
    fs::write(p.path("ok"), "").unwrap();
    p.ok(&["backup", "run", "stream"]);

    // kill -9 while a large stream is being packed and uploaded.
    let mut child = Command::new(BIN)
        .arg("-f")
        .arg(p.path("steward.toml"))
        .args(["backup", "run", "slow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let packs = |p: &Project| {
        let mut n = 0;
        let mut stack = vec![p.path("state/objects/shared/data")];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path())
                } else {
                    n += 1
                }
            }
        }
        n
    };
    let before = packs(&p);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Packs are written while the stream is still open (it pauses for 30 s after
    // 100 MB), so the run cannot have finished when it is killed.
    while packs(&p) < before + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow backup wrote no packs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let listed = p.json(&["backup", "list", "slow", "--json"]);
    assert_eq!(listed[0]["snapshots"].as_array().unwrap().len(), 0);

    sample_data(&p.path("data"));
    p.ok(&["backup", "run", "files"]);
    p.ok(&["backup", "check", "--read-data"]);
    p.ok(&["backup", "prune"]);
    p.ok(&["backup", "check", "--read-data"]);
    p.ok(&[
        "backup",
        "restore",
        "stream",
        "--target",
        p.path("out").to_str().unwrap(),
    ]);
    assert_eq!(
        fs::metadata(p.path("out/stream.bin")).unwrap().len(),
        3_000_000
    );
}

/// Everything about an entry that restic restores: type, mode, owner,
/// modification time (nanoseconds), size, content, link target, and which
/// other entries are hard links to it.
fn entries(root: &Path) -> Vec<(String, String)> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut inodes: std::collections::BTreeMap<u64, String> = Default::default();
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            all.push(p);
        }
    }
    all.sort();
    for p in all {
        let m = fs::symlink_metadata(&p).unwrap();
        let rel = String::from_utf8_lossy(p.strip_prefix(root).unwrap().as_os_str().as_bytes())
            .escape_debug()
            .to_string();
        let ft = m.file_type();
        let what = if ft.is_symlink() {
            format!("symlink -> {}", fs::read_link(&p).unwrap().display())
        } else if ft.is_dir() {
            "dir".into()
        } else if ft.is_file() {
            let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
            let content = fs::read(&p).unwrap();
            format!(
                "file {} bytes, sum {:x}, links {} (first: {first})",
                content.len(),
                content
                    .iter()
                    .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(*b as u64)),
                m.nlink()
            )
        } else {
            format!("special {:o}", m.mode() & 0o170000)
        };
        // A symlink's mode is always 777; directories' times are what restic sets last.
        out.push((
            rel,
            format!(
                "{what}, mode {:o}, owner {}:{}, mtime {}.{:09}",
                if ft.is_symlink() {
                    0o777
                } else {
                    m.mode() & 0o7777
                },
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec()
            ),
        ));
    }
    out
}

/// restic and steward restore the same snapshot to the same tree: hard links
/// (also across folders), symlinks with their own times, a dangling one,
/// empty folders, folder times, modes with set-uid, odd names, a FIFO, and
/// — as root — owners.
#[test]
fn restore_gives_the_tree_restic_gives() {
    use nix::sys::stat::{Mode, UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let p = Project::new(&paths_backup("tree"));
    let d = p.path("data");
    fs::create_dir_all(d.join("sub/deeper")).unwrap();
    fs::create_dir_all(d.join("empty")).unwrap();
    fs::write(d.join("a.txt"), "alpha").unwrap();
    fs::hard_link(d.join("a.txt"), d.join("a-again.txt")).unwrap();
    fs::hard_link(d.join("a.txt"), d.join("sub/deeper/a-elsewhere.txt")).unwrap();
    fs::write(d.join("sub/b.bin"), vec![7u8; 70_000]).unwrap();
    fs::write(d.join("setuid"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(d.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(d.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(d.join("with space & ünïcödé"), "names").unwrap();
    fs::write(d.join("new\nline"), "names").unwrap();
    std::os::unix::fs::symlink("a.txt", d.join("to-a")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", d.join("dangling")).unwrap();
    nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
    let root = is_root();
    if root {
        std::os::unix::fs::lchown(d.join("sub/b.bin"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(d.join("to-a"), Some(4321), Some(8765)).unwrap();
    }
    // Distinct times, nanoseconds included; folders last (their contents move them).
    let mut when = 1_600_000_000i64;
    let mut stamp = |path: &Path, follow: UtimensatFlags| {
        when += 86_400 + 17;
        let t = TimeSpec::new(when, 123_456_789);
        utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, follow).unwrap();
    };
    for f in [
        "a.txt",
        "sub/b.bin",
        "setuid",
        "with space & ünïcödé",
        "new\nline",
        "fifo",
    ] {
        stamp(&d.join(f), UtimensatFlags::FollowSymlink);
    }
    for l in ["to-a", "dangling"] {
        stamp(&d.join(l), UtimensatFlags::NoFollowSymlink);
    }
    for dir in ["sub/deeper", "sub", "empty"] {
        stamp(&d.join(dir), UtimensatFlags::FollowSymlink);
    }
    let original = entries(&d);
    p.ok(&["backup", "run"]);
    let repo = p.path("state/objects/tree");
    p.restic(
        repo.to_str().unwrap(),
        &[
            "restore",
            "latest",
            "--target",
            p.path("by-restic").to_str().unwrap(),
        ],
    );
    p.ok(&[
        "backup",
        "restore",
        "tree",
        "--target",
        p.path("by-steward").to_str().unwrap(),
    ]);
    let under = |target: &str| p.path(target).join(d.strip_prefix("/").unwrap());
    let by_restic = entries(&under("by-restic"));
    let by_steward = entries(&under("by-steward"));
    assert!(by_restic.len() >= 13, "{by_restic:#?}");
    for ((path, restic), (spath, steward)) in by_restic.iter().zip(&by_steward) {
        assert_eq!(path, spath, "the same entries");
        assert_eq!(
            restic, steward,
            "{path}: restic restores it so, steward otherwise"
        );
    }
    assert_eq!(by_restic.len(), by_steward.len());
    // And both are the tree that was backed up.
    assert_eq!(by_steward, original);
}

/// Files a backup cannot read are not missing silently: the snapshot is
/// tagged `partial` (restic sees the tag), `backup run` warns with the count
/// and the first paths, the event is a warning, `backup list` says so; once
/// they can be read, the next snapshot is whole again.
#[test]
fn unreadable_files_make_a_partial_snapshot() {
    let p = Project::new(&paths_backup("files"));
    fs::create_dir_all(p.path("data/private")).unwrap();
    fs::write(p.path("data/ok.txt"), "fine").unwrap();
    fs::write(p.path("data/secret.txt"), "hidden").unwrap();
    fs::write(p.path("data/private/inside.txt"), "hidden too").unwrap();
    // As root every file is readable: the run drops to `nobody`, who owns the
    // project but not the two unreadable entries.
    let root = is_root();
    if root {
        let status = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(p.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        for f in ["data/secret.txt", "data/private", "data/private/inside.txt"] {
            std::os::unix::fs::chown(p.path(f), Some(0), Some(0)).unwrap();
        }
    }
    fs::set_permissions(p.path("data/secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(p.path("data/private"), fs::Permissions::from_mode(0o700)).unwrap();
    let run = || {
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(BIN);
            c
        } else {
            Command::new(BIN)
        };
        let out = cmd
            .arg("-f")
            .arg(p.path("steward.toml"))
            .args(["backup", "run", "--json"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run();
    assert_eq!(code, Some(0), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["unreadable"], 2, "{out}");
    assert!(
        err.contains("partial: 2 file(s)") && err.contains("secret.txt"),
        "{err}"
    );
    assert!(
        report[0]["snapshot"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "partial"),
        "{out}"
    );
    let events = common::events(&p.path("state"), "backup.succeeded", Some("files"));
    let last = events.last().expect("an event");
    assert_eq!(last.event.severity, "warning");
    assert!(
        last.event.message.contains("partial"),
        "{}",
        last.event.message
    );
    let (_, listed, _) = p.run(&["backup", "list"]);
    assert!(
        listed.contains("partial: some files could not be read"),
        "{listed}"
    );
    let snaps: serde_json::Value = serde_json::from_str(&p.restic(
        p.path("state/objects/files").to_str().unwrap(),
        &["snapshots", "--json"],
    ))
    .unwrap();
    assert!(
        snaps[0]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "partial"),
        "{snaps}"
    );
    assert_eq!(
        snaps.as_array().unwrap().len(),
        1,
        "the untagged copy is gone"
    );

    fs::set_permissions(p.path("data/secret.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(p.path("data/private"), fs::Permissions::from_mode(0o755)).unwrap();
    if root {
        // `backup list` and restic ran as root in between.
        let status = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(p.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let (code, out, err) = run();
    assert_eq!(code, Some(0), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["unreadable"], 0, "{out}");
    assert!(!err.contains("partial"), "{err}");
}

/// Snapshots stamped in other time zones (restic stamps local time, and so
/// does steward): restic buckets each by its time as stamped, and steward
/// agrees with it on every boundary — hour, day, ISO week, month, year —
/// whatever time zone steward itself runs in.
#[test]
fn retention_agrees_with_restic_across_time_zones() {
    let mut p = Project::new(&paths_backup("tz"));
    fs::create_dir_all(p.path("data")).unwrap();
    fs::write(p.path("data/x"), "x").unwrap();
    p.env.push(("TZ".into(), "America/New_York".into()));
    p.ok(&["backup", "run"]); // steward's own snapshot, stamped in New York time
    let repo = p.path("state/objects/tz");
    let repo = repo.to_str().unwrap();
    // Local times near every kind of boundary, each in zones far apart, so
    // that a snapshot's own day (week, month, year) differs from its UTC one.
    let zones = [
        "Pacific/Kiritimati",
        "America/Los_Angeles",
        "Asia/Kolkata",
        "Pacific/Pago_Pago",
        "UTC",
        "Europe/Berlin",
    ];
    let times = [
        "2026-12-31 23:30:00", // year
        "2027-01-01 00:30:00",
        "2027-01-31 23:10:00", // month
        "2027-02-01 00:20:00",
        "2027-02-07 23:50:00", // ISO week (Sunday to Monday)
        "2027-02-08 00:40:00",
        "2027-02-08 10:59:00", // hour
        "2027-02-08 11:01:00",
        "2027-03-28 01:30:00", // a daylight-saving change in Berlin
        "2027-03-28 03:30:00",
    ];
    // Each snapshot gets its own second, so no two share an instant: restic
    // orders snapshots of one instant as its unstable sort happens to.
    let mut n = 0;
    for (i, when) in times.iter().enumerate() {
        for zone in zones.iter().skip(i % 2).step_by(2) {
            n += 1;
            let when = format!("{}{n:02}", &when[..when.len() - 2]);
            p.restic_in(
                zone,
                repo,
                &[
                    "backup",
                    "--tag",
                    "steward:tz",
                    "--time",
                    &when,
                    p.path("data").to_str().unwrap(),
                ],
            );
        }
    }
    assert_eq!(n, 30);
    let policies = [
        "hourly = 12",
        "daily = 10",
        "weekly = 6",
        "monthly = 4",
        "yearly = 3",
        "daily = 3, weekly = 2, monthly = 2, yearly = 2",
        "last = 1, hourly = 3, daily = 2",
    ];
    for policy in policies {
        let (ours, theirs) = p.kept_by_both("tz", policy);
        assert_eq!(ours, theirs, "policy {policy}");
    }
}

/// steward's retention and restic's `forget` agree on the same snapshot list.
#[test]
fn retention_keeps_what_restic_keeps() {
    let p = Project::new(&paths_backup("ret"));
    fs::create_dir_all(p.path("data")).unwrap();
    fs::write(p.path("data/x"), "x").unwrap();
    p.ok(&["backup", "run"]); // creates the repository
    let repo = p.path("state/objects/ret");
    let repo = repo.to_str().unwrap();
    // 24 snapshots spread over ~14 months, some on the same day and hour.
    let mut t: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
    let steps = [
        3_600,
        600,
        86_400,
        7 * 86_400,
        40 * 86_400,
        86_400 * 3,
        1_800,
    ];
    for i in 0..24 {
        t += steps[i % steps.len()];
        let when = chrono::DateTime::from_timestamp(t, 0)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        p.restic(
            repo,
            &[
                "backup",
                "--tag",
                "steward:ret",
                "--time",
                &when,
                p.path("data").to_str().unwrap(),
            ],
        );
    }
    let policies = [
        "last = 3",
        "daily = 4, weekly = 3",
        "hourly = 5, monthly = 6, yearly = 2",
        "last = 2, weekly = 5, within = \"30d\"",
    ];
    for policy in policies {
        let (ours, theirs) = p.kept_by_both("ret", policy);
        assert_eq!(ours, theirs, "policy {policy}");
    }
    // And forgetting for real removes exactly what the dry run said.
    let before = p.json(&["backup", "forget", "--dry-run", "--json"]);
    let kept = before[0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["keep"] == true)
        .count();
    p.ok(&["backup", "forget"]);
    let listed = p.json(&["backup", "list", "--json"]);
    assert_eq!(listed[0]["snapshots"].as_array().unwrap().len(), kept);
}

#[test]
fn sqlite_is_copied_consistently_while_the_app_writes() {
    let p = Project::new(
        r#"
[backup.app]
source = { sqlite = "{dir}/app.db" }
password = "${file:{dir}/pw}"
"#,
    );
    let db = p.path("app.db");
    let py = format!(
        "import sqlite3, time\n\
         c = sqlite3.connect('{db}')\n\
         c.execute('create table if not exists jobs (id integer primary key, payload text)')\n\
         c.commit()\n\
         end = time.time() + 4\n\
         while time.time() < end:\n\
         \x20   c.executemany('insert into jobs (payload) values (?)', [('x' * 200,)] * 50)\n\
         \x20   c.commit()\n",
        db = db.display()
    );
    let mut writer = Command::new("python3").args(["-c", &py]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    p.ok(&["backup", "run"]);
    writer.wait().unwrap();
    p.ok(&[
        "backup",
        "restore",
        "app",
        "--target",
        p.path("out").to_str().unwrap(),
    ]);
    let copy = p.path("out").join(db.strip_prefix("/").unwrap());
    let check = Command::new("python3")
        .args(["-c", &format!(
            "import sqlite3; c = sqlite3.connect('{}'); print(c.execute('pragma integrity_check').fetchone()[0], c.execute('select count(*) from jobs').fetchone()[0])",
            copy.display()
        )])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    let (verdict, rows) = out
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(verdict, "ok");
    assert!(rows.parse::<u64>().unwrap() > 0, "{out}");
}

#[test]
fn log_backups_take_rotated_siblings() {
    let p = Project::new(
        r#"
[backup.logs]
source = { logs = ["{dir}/log/*.log"] }
password = "${file:{dir}/pw}"
"#,
    );
    fs::create_dir_all(p.path("log")).unwrap();
    for f in [
        "app.log",
        "app.log.1",
        "app.log.2.gz",
        "app.log.bak",
        "other.txt",
    ] {
        fs::write(p.path("log").join(f), f).unwrap();
    }
    p.ok(&["backup", "run"]);
    p.ok(&[
        "backup",
        "restore",
        "logs",
        "--target",
        p.path("out").to_str().unwrap(),
    ]);
    let names: Vec<String> = tree(&p.path("out"))
        .into_iter()
        .map(|(n, _)| n.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(names, ["app.log", "app.log.1", "app.log.2.gz"]);
}

#[test]
fn drills_restore_and_verify_files_and_a_database() {
    let table = format!("drill_{}", std::process::id());
    psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int); INSERT INTO {table} SELECT generate_series(1, 100);"
    ));
    let mut p = Project::new(&format!(
        r#"
[check.db]
type = "postgres"
url = "${{env:APP_DATABASE_URL}}"

[check.other-db]
type = "postgres"
url = "postgres://app@db.internal/reports"

[backup.db]
source = {{ postgres = "${{env:APP_DATABASE_URL}}" }}
password = "${{file:{{dir}}/pw}}"
schedule = "0 3 * * *"
keep = {{ daily = 7, weekly = 4, monthly = 12 }}
drill = {{ verify_query = "SELECT id FROM {table} WHERE id = 42" }}

[backup.files]
source = {{ paths = ["{{dir}}/data"] }}
password = "${{file:{{dir}}/pw}}"
drill = {{ verify_command = ["sh", "-c", "grep -rq hello ."] }}
"#
    ));
    p.env
        .push(("APP_DATABASE_URL".into(), testbed("STEWARD_TEST_PG_URL")));
    sample_data(&p.path("data"));

    let (code, out, _) = p.run(&["backup", "policy"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("7 daily, 4 weekly, 12 monthly (about 12 months back)"),
        "{out}"
    );
    assert!(out.contains("by hand only"), "{out}");
    assert!(
        out.contains("database-not-backed-up") && out.contains("check.other-db"),
        "{out}"
    );
    assert!(
        !out.contains("check.db "),
        "the checked database is backed up: {out}"
    );

    p.ok(&["backup", "run"]);
    let drills = p.json(&["backup", "drill", "--json"]);
    let db = &drills[0];
    assert!(
        db["verified"]
            .to_string()
            .contains("verify_query returned 1 row"),
        "{db}"
    );
    assert!(db["seconds"].as_f64().unwrap() > 0.0);
    let files = &drills[1];
    assert!(
        files["verified"].to_string().contains("verify_command"),
        "{files}"
    );
    // The scratch database is gone again.
    assert_eq!(
        psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'steward_drill_%'"),
        "0"
    );

    let (_, out, _) = p.run(&["backup", "policy"]);
    assert!(out.contains("last drill passed"), "{out}");

    // A drill whose check fails is a failure, recorded as such.
    psql(&format!("DELETE FROM {table} WHERE id = 42"));
    p.ok(&["backup", "run", "db"]);
    let (code, _, err) = p.run(&["backup", "drill", "db"]);
    assert_eq!(code, 1);
    assert!(err.contains("verify_query returned no rows"), "{err}");
    psql(&format!("DROP TABLE {table}"));
}

/// `serve` runs backups on their schedule, applies retention after each run,
/// records failures and tells the alert channels.
#[test]
fn serve_runs_scheduled_backups_with_retention_and_alerts_on_failure() {
    let p = Project::new(
        r#"
[alert.ops]
type = "webhook"
url = "http://127.0.0.1:9/nobody-listens"

[backup.files]
source = { paths = ["{dir}/data"] }
password = "${file:{dir}/pw}"
schedule = "*/2 * * * * *"
keep = { last = 2 }

[backup.broken]
source = { command = ["sh", "-c", "exit 7"] }
password = "${file:{dir}/pw}"
schedule = "*/2 * * * * *"
alerts = ["ops"]
"#,
    );
    sample_data(&p.path("data"));
    let serve = common::serve(&p.path("steward.toml"), &p.env);
    let addr = serve.addr.clone();
    let store_path = p.path("state");
    let count = |kind: &str, subject: &str| common::events(&store_path, kind, Some(subject)).len();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count("backup.succeeded", "files") < 4 || count("backup.failed", "broken") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "scheduled runs did not happen"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The dashboard and the API show both backups with their state.
    let api: serde_json::Value = serde_json::from_str(&http_get(&addr, "/api/v1/backups")).unwrap();
    let state_of = |n: &str| {
        api.as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == n)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state_of("files"), "ok");
    assert_eq!(state_of("broken"), "failed");
    let page = http_get(&addr, "/");
    assert!(
        page.contains(r#"data-backup="files" data-state="ok""#),
        "{page}"
    );
    assert!(page.contains(r#"data-backup="broken" data-state="failed""#));
    drop(serve);
    assert!(
        count("backup.forgot", "files") >= 1,
        "retention ran after a run"
    );
    let listed = p.json(&["backup", "list", "files", "--json"]);
    let n = listed[0]["snapshots"].as_array().unwrap().len();
    assert!(n <= 3, "keep last 2 (plus possibly one run in flight): {n}");
    let store = steward_state::Store::open(&store_path).unwrap();
    let deliveries = store.deliveries(100).unwrap();
    // Notices, not attempts: a failed delivery is retried as the same notice.
    let to_ops: Vec<_> = deliveries
        .iter()
        .filter(|d| d.check == "backup:broken" && d.attempt == 1)
        .collect();
    assert_eq!(
        to_ops.len(),
        1,
        "one notice for the failure, not one per failed run: {deliveries:?}"
    );
    assert!(!to_ops[0].ok);
}

/// A private Swift proxy in front of the test bed's storage servers, on its own
/// port, so a test can take "Swift" down without disturbing the others.
struct PrivateProxy {
    child: std::process::Child,
    port: u16,
    conf: PathBuf,
}

impl PrivateProxy {
    fn start(dir: &Path, port: u16) -> PrivateProxy {
        let shared = fs::read_to_string(testbed("STEWARD_TEST_SWIFT_PROXY_CONF")).unwrap();
        let conf = dir.join("proxy-server.conf");
        let text: String = shared
            .lines()
            .map(|l| {
                if l.starts_with("bind_port") {
                    format!("bind_port = {port}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::write(&conf, text + "\n").unwrap();
        let child = Command::new("swift-proxy-server")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "private swift proxy did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        PrivateProxy { child, port, conf }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        // The proxy forks a worker; kill whatever still serves the port.
        let _ = Command::new("pkill")
            .args(["-f", self.conf.to_str().unwrap()])
            .status();
        let _ = self.child.wait();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "private swift proxy did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateProxy {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-f", self.conf.to_str().unwrap()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Swift goes away in the middle of an upload: a clear error, no snapshot, and
/// the next run (Swift back) succeeds with a repository that checks clean.
#[test]
fn swift_down_mid_upload_fails_cleanly_and_the_next_run_recovers() {
    let port = free_port();
    let p0 = tempfile::tempdir().unwrap();
    let mut proxy = PrivateProxy::start(p0.path(), port);
    let auth = testbed("STEWARD_TEST_SWIFT_AUTH");
    let auth = auth.replace(
        &auth.split('/').nth(2).unwrap().to_string(),
        &format!("127.0.0.1:{port}"),
    );
    let container = format!("steward-down-{}", std::process::id());
    let mut p = Project::new(&format!(
        r#"
[store.swift]
type = "swift"
auth_url = "{auth}"
user = "${{env:ST_USER}}"
key = "${{env:ST_KEY}}"
container = "{container}"

[backup.big]
store = "swift"
repository = "r"
source = {{ command = ["sh", "-c", "head -c 20000000 /dev/urandom; sleep 4; head -c 20000000 /dev/urandom"], filename = "big.bin" }}
password = "${{file:{{dir}}/pw}}"

[backup.small]
store = "swift"
repository = "r"
source = {{ paths = ["{{dir}}/data"] }}
password = "${{file:{{dir}}/pw}}"
"#
    ));
    p.env = vec![
        ("ST_USER".into(), testbed("STEWARD_TEST_SWIFT_USER")),
        ("ST_KEY".into(), testbed("STEWARD_TEST_SWIFT_KEY")),
    ];
    fs::create_dir_all(p.path("data")).unwrap();
    fs::write(p.path("data/a.txt"), "a").unwrap();
    p.ok(&["backup", "run", "small"]);

    let run = Command::new(BIN)
        .arg("-f")
        .arg(p.path("steward.toml"))
        .args(["backup", "run", "big"])
        .envs(p.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The stream pauses after 20 MB: Swift goes away while the backup waits for more.
    std::thread::sleep(Duration::from_millis(2000));
    proxy.stop();
    let out = run.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("backup `big`") && (err.contains("writing data/") || err.contains("error")),
        "{err}"
    );
    assert!(
        !err.contains(&testbed("STEWARD_TEST_SWIFT_KEY")),
        "no credentials in errors"
    );

    let mut _proxy = PrivateProxy::start(p0.path(), port);
    let listed = p.json(&["backup", "list", "--json"]);
    let count = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backup"] == name)
            .unwrap()["snapshots"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count("big"), 0, "nothing half-written became a snapshot");
    assert_eq!(count("small"), 1);
    p.ok(&["backup", "run", "small"]);
    p.ok(&["backup", "check"]);
}

/// An S3 bucket holds the repository: here the test bed Swift's S3 API (the
/// bucket is a Swift container, created through the Swift API first).
#[test]
fn an_s3_bucket_holds_the_repository() {
    let bucket = format!("steward-s3-{}", std::process::id());
    let auth = Command::new("curl")
        .args(["-sf", "-D", "-", "-o", "/dev/null", "-H"])
        .arg(format!(
            "X-Auth-User: {}",
            testbed("STEWARD_TEST_SWIFT_USER")
        ))
        .arg("-H")
        .arg(format!("X-Auth-Key: {}", testbed("STEWARD_TEST_SWIFT_KEY")))
        .arg(testbed("STEWARD_TEST_SWIFT_AUTH"))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&auth.stdout).to_string();
    let header = |name: &str| {
        headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name} in {headers}"))
    };
    let created = Command::new("curl")
        .args(["-sf", "-X", "PUT", "-H"])
        .arg(format!("X-Auth-Token: {}", header("X-Auth-Token")))
        .arg(format!("{}/{bucket}", header("X-Storage-Url")))
        .status()
        .unwrap();
    assert!(created.success());
    let mut p = Project::new(&format!(
        r#"
[store.s3]
type = "s3"
endpoint = "{}"
bucket = "{bucket}"
access_key = "${{env:S3_ACCESS_KEY}}"
secret_key = "${{env:S3_SECRET_KEY}}"

[backup.files]
store = "s3"
repository = "team/files"
source = {{ paths = ["{{dir}}/data"] }}
password = "${{file:{{dir}}/pw}}"
keep = {{ last = 1 }}
"#,
        testbed("STEWARD_TEST_S3_ENDPOINT")
    ));
    p.env = vec![
        ("S3_ACCESS_KEY".into(), testbed("STEWARD_TEST_SWIFT_USER")),
        ("S3_SECRET_KEY".into(), testbed("STEWARD_TEST_SWIFT_KEY")),
    ];
    sample_data(&p.path("data"));
    p.ok(&["backup", "run"]);
    fs::write(p.path("data/hello.txt"), "changed\n").unwrap();
    p.ok(&["backup", "run"]);
    p.ok(&["backup", "forget"]);
    p.ok(&["backup", "prune"]);
    checked_and_restored_whole(&p);
    let listed = p.json(&["backup", "list", "--json"]);
    assert_eq!(listed[0]["snapshots"].as_array().unwrap().len(), 1);
    assert!(listed[0]["location"].as_str().unwrap().starts_with("s3:"));
}

/// A backup that has not succeeded within `max_age` is overdue: one event, one
/// notice to its alert channel, and the metric.
#[test]
fn serve_reports_an_overdue_backup_once() {
    let p = Project::new(
        r#"
[alert.ops]
type = "webhook"
url = "http://127.0.0.1:9/nobody-listens"

[backup.yearly]
source = { paths = ["{dir}/data"] }
password = "${file:{dir}/pw}"
schedule = "0 0 1 1 *"
max_age = "2s"
alerts = ["ops"]
"#,
    );
    fs::create_dir_all(p.path("data")).unwrap();
    let serve = common::serve(&p.path("steward.toml"), &p.env);
    let state = p.path("state");
    let overdue = || common::events(&state, "backup.overdue", None).len();
    common::wait_for("a backup.overdue event", || overdue() > 0);
    std::thread::sleep(Duration::from_millis(2500));
    drop(serve);
    assert_eq!(overdue(), 1, "overdue is reported once, not every check");
    let store = steward_state::Store::open(&state).unwrap();
    let notices = store
        .deliveries(10)
        .unwrap()
        .into_iter()
        .filter(|d| d.check == "backup:yearly" && d.attempt == 1)
        .count();
    assert_eq!(notices, 1);
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// 2,000 checks at a 10 s interval keep their schedule while the same
/// `serve` prunes 30 days of history past its retention and backs up 256 MB
/// that neither compresses nor deduplicates: no probe starts late (more than
/// half an interval after its slot), and both the prune and the backup finish.
#[test]
fn probes_stay_on_time_during_a_30_day_prune_and_a_large_backup() {
    const CHECKS: usize = 2_000;
    let nginx = testbed("STEWARD_TEST_NGINX_URL");
    let mut spec = String::from(
        r#"
[backup.big]
source = { paths = ["{dir}/big"] }
password = "${file:{dir}/pw}"
schedule = "*/5 * * * * *"
keep = { last = 1 }
"#,
    );
    for i in 0..CHECKS {
        spec.push_str(&format!(
            "\n[check.c{i}]\ntype = \"http\"\nurl = \"{nginx}/\"\ninterval = \"10s\"\n"
        ));
    }
    let p = Project::new(&spec);
    fs::create_dir(p.path("big")).unwrap();
    let mut random = fs::File::open("/dev/urandom").unwrap();
    for i in 0..64 {
        let mut f = fs::File::create(p.path(&format!("big/{i}.bin"))).unwrap();
        std::io::copy(&mut std::io::Read::take(&mut random, 4 << 20), &mut f).unwrap();
    }

    // Thirty days of history that retention (raw and minute buckets: 2 days)
    // no longer allows: 1.2 million results and 216,000 minute buckets.
    let day: i64 = 86_400_000;
    let now = steward_state::now_ms();
    let (from, to) = (now - 33 * day, now - 3 * day);
    drop(steward_state::Store::open(&p.path("state")).unwrap());
    let db = rusqlite::Connection::open(p.path("state/state.db")).unwrap();
    db.execute_batch(&format!(
        "BEGIN;
         WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < 1199999)
         INSERT INTO results (check_name, ts, status, duration_us)
           SELECT 'c' || (x % {CHECKS}), {from} + x * (({to} - {from}) / 1200000), 0, 1000 FROM n;
         WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < 215999)
         INSERT INTO rollups (check_name, res, bucket, n, n_pass, n_warn, n_fail, sum_ms, max_ms)
           SELECT 'c' || (x % 5), 60, {from} - {from} % 60000 + (x / 5) * 60000, 1, 1, 0, 0, 1.0, 1.0 FROM n;
         COMMIT;"
    ))
    .unwrap();
    let old = |db: &rusqlite::Connection| -> i64 {
        db.query_row(
            &format!("SELECT (SELECT count(*) FROM results WHERE ts < {to} + 1) + (SELECT count(*) FROM rollups WHERE res = 60 AND bucket < {to} + 1)"),
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(old(&db), 1_200_000 + 216_000);

    let serve = common::serve(&p.path("steward.toml"), &p.env);
    let started = std::time::Instant::now();
    let store_path = p.path("state");
    let backed_up = || !common::events(&store_path, "backup.succeeded", Some("big")).is_empty();
    let deadline = started + Duration::from_secs(240);
    // At least three rounds of every check, the whole prune and one backup.
    while started.elapsed() < Duration::from_secs(30) || old(&db) > 0 || !backed_up() {
        assert!(
            std::time::Instant::now() < deadline,
            "not done in time: {} old rows left, backed up: {}",
            old(&db),
            backed_up()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let metrics = http_get(&serve.addr, "/metrics");
    let runs = sample(&metrics, "steward_health_runs_total").unwrap();
    let late = sample(&metrics, "steward_health_late_runs_total").unwrap();
    assert!(runs >= (2 * CHECKS) as f64, "{runs} runs");
    assert_eq!(late, 0.0, "{late} of {runs} probe runs started late");
    let failed = common::events(&store_path, "backup.failed", Some("big"));
    assert!(failed.is_empty(), "{failed:?}");
    eprintln!(
        "{runs} probe runs, none late, in {:.1} s with a 1.4M-row prune and a 256 MB backup",
        started.elapsed().as_secs_f64()
    );
}
