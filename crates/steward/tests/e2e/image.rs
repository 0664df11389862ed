//! `steward image` end to end: images from a directory base and from the cached
//! Debian root, reuse of identical inputs, and an audit that finds an outdated
//! package through the image's own apt sources.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::common;
use crate::common::BIN;

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(spec: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("steward.toml"),
            format!("[steward]\nstate_dir = \"state\"\n\n{spec}"),
        )
        .unwrap();
        Project { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        common::steward(&self.path("steward.toml"), args, &[])
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "steward {args:?}: {out}{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

/// Unpacks a stored image into a directory with the system tar.
fn unpack(p: &Project, digest: &str, name: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    let archive = p.path(&format!("state/objects/images/{name}/{hex}.tar.zst"));
    let out = p.path(&format!("unpacked-{}", &hex[..8]));
    fs::create_dir_all(&out).unwrap();
    let st = Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    out
}

#[test]
fn an_image_from_a_directory_is_built_once_per_inputs() {
    let p = Project::new(
        r#"
[converge.app]
vars = { port = 8080 }
file = [{ path = "/etc/app.conf", content = "port = 8080\n", mode = "0640" }]
directory = [{ path = "/var/lib/app" }]

[image.app]
base = "dir:base"
converge = ["app"]
artifacts = [{ from = "build/app", to = "/usr/local/bin/app", mode = "0755" }]
version = "1.0.0"
"#,
    );
    fs::create_dir_all(p.path("base/srv")).unwrap();
    fs::write(p.path("base/srv/static.txt"), "from the base\n").unwrap();
    fs::create_dir_all(p.path("build")).unwrap();
    fs::write(p.path("build/app"), "#!/bin/sh\necho app v1\n").unwrap();

    let first = p.json(&["image", "build", "--json"]);
    assert_eq!(first[0]["reused"], false);
    let digest = first[0]["manifest"]["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"));
    let again = p.json(&["image", "build", "--json"]);
    assert_eq!(again[0]["reused"], true, "identical inputs reuse the image");
    assert_eq!(again[0]["manifest"]["digest"], digest.as_str());

    let root = unpack(&p, &digest, "app");
    assert_eq!(
        fs::read_to_string(root.join("etc/app.conf")).unwrap(),
        "port = 8080\n"
    );
    assert_eq!(
        fs::read_to_string(root.join("srv/static.txt")).unwrap(),
        "from the base\n"
    );
    assert!(root.join("var/lib/app").is_dir());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(root.join("usr/local/bin/app"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    // A new artifact is a new image; both are listed, oldest first.
    fs::write(p.path("build/app"), "#!/bin/sh\necho app v2\n").unwrap();
    let second = p.json(&["image", "build", "--json"]);
    assert_eq!(second[0]["reused"], false);
    assert_ne!(second[0]["manifest"]["digest"], digest.as_str());
    let listed = p.json(&["image", "list", "--json"]);
    let builds = listed[0]["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 2);
    assert_eq!(builds[0]["digest"], digest.as_str());
    // No packages in a directory image: nothing for apt to audit, and it is fresh.
    let (code, out, _) = p.run(&["image", "audit"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_debian_image_records_its_packages_and_audit_finds_the_outdated_one() {
    assert!(
        std::env::var_os("STEWARD_DEBIAN_ROOT").is_some()
            || std::env::var_os("STEWARD_TEST_DEBIAN_ROOT").is_some(),
        "run under scripts/test (the test bed provides the cached Debian root)"
    );
    let p = Project::new(
        r#"
[converge.base]
file = [{ path = "/etc/motd", content = "built by steward\n" }]

[image.os]
base = "debian"
converge = ["base"]
# Pretend the image carries an older base-files (`~` sorts before the release, so
# dependencies still hold): apt offers the current one.
run = [["sh", "-c", "sed -i '/^Package: base-files$/,/^$/ s/^Version: \\(.*\\)$/Version: \\1~old/' /var/lib/dpkg/status"]]
audit = { max_age = "30d" }
"#,
    );
    let mut cmd = Command::new(BIN);
    cmd.arg("-f")
        .arg(p.path("steward.toml"))
        .args(["image", "build", "--json"]);
    if let Some(r) = std::env::var_os("STEWARD_TEST_DEBIAN_ROOT") {
        cmd.env("STEWARD_DEBIAN_ROOT", r);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &built[0]["manifest"];
    let installed = m["packages"]["base-files"].as_str().unwrap().to_string();
    assert!(installed.ends_with("~old"), "{installed}");
    assert!(
        m["packages"].as_object().unwrap().len() > 50,
        "a minbase root has dozens of packages"
    );

    let mut cmd = Command::new(BIN);
    cmd.arg("-f")
        .arg(p.path("steward.toml"))
        .args(["image", "audit", "--json"]);
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stale image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let outdated = audit[0]["outdated"].as_array().unwrap();
    let bf = outdated
        .iter()
        .find(|o| o["name"] == "base-files")
        .unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(bf["installed"], installed.as_str());
    assert_eq!(bf["available"], installed.trim_end_matches("~old"));
    assert_eq!(audit[0]["too_old"], false);
}

/// `serve` audits images with `audit.every`; a build older than `max_age` is
/// recorded as `image.stale` once and shows in the metrics.
#[test]
fn serve_audits_images_and_records_stale_ones() {
    let p = Project::new(
        r#"
[image.tiny]
base = "empty"
artifacts = [{ from = "hello.txt", to = "/hello.txt" }]
audit = { every = "1s", max_age = "1s" }
"#,
    );
    fs::write(p.path("hello.txt"), "hello\n").unwrap();
    let (code, out, err) = p.run(&["image", "build"]);
    assert_eq!(code, 0, "{out}{err}");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let serve = common::serve(&p.path("steward.toml"), &[]);
    let stale_events = || common::events(&p.path("state"), "image.stale", None).len();
    common::wait_for("an image.stale event", || stale_events() > 0);
    let metrics = common::http_get(&serve.addr, "/metrics");
    assert!(
        metrics.contains("steward_image_stale{image=\"tiny\"} 1"),
        "{metrics}"
    );
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("steward_image_age_seconds{image=\"tiny\"} "))
        .expect("the age metric")
        .parse()
        .unwrap();
    assert!(
        age >= 1.0,
        "the age is in seconds (built over a second ago): {age}"
    );
    std::thread::sleep(std::time::Duration::from_millis(2500));
    drop(serve);
    assert_eq!(
        stale_events(),
        1,
        "a verdict that does not change is recorded once"
    );
}

/// `sources`: a `prepare` whose output differs on every run (a stamp in the
/// "binary", as a compiler's output may differ with its environment) still
/// gives one image while the declared sources are unchanged — `prepare`
/// does not even run — and a changed source builds a new one.
#[test]
fn unchanged_sources_reuse_the_image_without_running_prepare() {
    let p = Project::new(
        r#"
[image.app]
base = "empty"
prepare = [["sh", "build.sh"]]
sources = ["src", "build.sh"]
artifacts = [{ from = "out/app", to = "/usr/local/bin/app", mode = "0755" }]
"#,
    );
    fs::create_dir_all(p.path("src")).unwrap();
    fs::write(p.path("src/main.txt"), "v1\n").unwrap();
    // Each run appends to `runs` and stamps its output with the time.
    fs::write(
        p.path("build.sh"),
        "set -e\necho run >> runs\nmkdir -p out\n{ cat src/main.txt; date +%s%N; } > out/app\n",
    )
    .unwrap();
    let runs = || {
        fs::read_to_string(p.path("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let first = p.json(&["image", "build", "--json"]);
    assert_eq!(first[0]["reused"], false);
    let digest = first[0]["manifest"]["digest"].as_str().unwrap().to_string();
    assert_eq!(runs(), 1);

    let (code, out, err) = p.run(&["image", "build"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!(
            "sources unchanged: reusing {digest} (prepare not run)"
        )),
        "{err}"
    );
    assert_eq!(runs(), 1, "prepare did not run again");
    // What prepare made in between is not a source.
    fs::write(p.path("out/app"), "something else\n").unwrap();
    let again = p.json(&["image", "build", "--json"]);
    assert_eq!(again[0]["reused"], true);
    assert_eq!(again[0]["manifest"]["digest"], digest.as_str());

    fs::write(p.path("src/main.txt"), "v2\n").unwrap();
    let changed = p.json(&["image", "build", "--json"]);
    assert_eq!(
        changed[0]["reused"], false,
        "a changed source is a new build"
    );
    assert_ne!(changed[0]["manifest"]["digest"], digest.as_str());
    assert_eq!(runs(), 2);

    // Back to v1: the v1 build again, without a prepare run.
    fs::write(p.path("src/main.txt"), "v1\n").unwrap();
    let back = p.json(&["image", "build", "--json"]);
    assert_eq!(back[0]["manifest"]["digest"], digest.as_str());
    assert_eq!(runs(), 2);

    // `sources` without `prepare` is a spec error at its line.
    let bad = Project::new("[image.x]\nbase = \"empty\"\nsources = [\"src\"]\n");
    let (code, _, err) = bad.run(&["validate"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("`sources` needs `prepare`") && err.contains("steward.toml:6:12"),
        "{err}"
    );
}
