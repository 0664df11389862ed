//! The spec error corpus: every file in `tests/corpus/` is invalid; its rendered
//! diagnostics are snapshots. Valid specs (including the shipped examples) must load.

use std::path::Path;

use steward_spec::{Resolver, Spec, SpecErrors};

/// Resolves nothing from the real environment so snapshots do not depend on it.
struct NoEnv;
impl Resolver for NoEnv {
    fn env(&self, name: &str) -> Option<String> {
        (name == "DATABASE_URL").then(|| "postgres://127.0.0.1/app".to_string())
    }
    fn file(&self, path: &Path) -> Result<String, String> {
        Err(format!("no such file: {}", path.display()))
    }
}

/// Every environment variable is set: examples reference the user's secrets.
struct AnyEnv;
impl Resolver for AnyEnv {
    fn env(&self, _: &str) -> Option<String> {
        Some("set".into())
    }
    fn file(&self, _: &Path) -> Result<String, String> {
        Ok("set".into())
    }
}

fn render(e: &SpecErrors) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100)
            .with_links(false);
    let mut out = String::new();
    handler.render_report(&mut out, e).unwrap();
    out
}

fn load(name: &str) -> Result<Spec, SpecErrors> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name);
    let src = std::fs::read_to_string(&path).unwrap();
    Spec::parse(name, &src, Path::new("/nonexistent-base"), &NoEnv)
}

#[test]
fn corpus_errors_are_precise() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10);
    for name in names {
        let err = load(&name).expect_err(&format!("{name} must be rejected"));
        insta::assert_snapshot!(name.trim_end_matches(".toml").to_string(), render(&err));
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let err = load("many_errors.toml").unwrap_err();
    let found: Vec<(usize, usize, &str)> = err
        .errors
        .iter()
        .map(|e| (e.line, e.column, e.message.as_str()))
        .collect();
    // listen, unknown section, unknown type, wrong URL scheme, `query` on redis,
    // [STATUS] on redis, dependency cycle, bad cron.
    assert!(err.errors.len() >= 8, "{found:#?}");
    assert_eq!((found[0].0, found[0].1), (2, 10), "{found:#?}");
    assert!(
        found
            .iter()
            .any(|f| f.2.contains("unknown section `chekc`"))
    );
    assert!(
        found
            .iter()
            .any(|f| f.2.contains("dependency cycle: a → b → a")
                || f.2.contains("dependency cycle: b → a → b"))
    );
    assert!(
        found
            .iter()
            .any(|f| f.2.contains("invalid cron expression"))
    );
    assert!(
        found
            .iter()
            .any(|f| f.2.contains("`query` does not apply to a `redis` check"))
    );
}

#[test]
fn unknown_key_suggests_the_right_one() {
    let err = load("unknown_key.toml").unwrap_err();
    assert_eq!(err.errors.len(), 1);
    let e = &err.errors[0];
    assert_eq!((e.line, e.column), (4, 1));
    assert_eq!(e.help.as_deref(), Some("did you mean `interval`?"));
}

#[test]
fn a_valid_spec_loads_with_defaults() {
    let src = r#"
[check.api]
type = "http"
url = "http://127.0.0.1:8080/health"
conditions = ["[STATUS] == 200", "[BODY].status == pass"]

[check.db]
type = "postgres"
url = "${env:DATABASE_URL}"
interval = "30s"
"#;
    let spec = Spec::parse("ok.toml", src, Path::new("/srv/app"), &NoEnv).unwrap();
    let api = &spec.checks["api"];
    assert_eq!(api.interval.0.as_secs(), 60);
    assert_eq!(api.timeout.0.as_secs(), 10);
    assert_eq!(api.failure_threshold, 3);
    assert_eq!(api.conditions.len(), 2);
    let db = &spec.checks["db"];
    assert_eq!(db.interval.0.as_secs(), 30);
    assert_eq!(db.conditions[0].text, "[CONNECTED] == true");
    assert_eq!(spec.settings.listen.to_string(), "127.0.0.1:7070");
    assert_eq!(spec.settings.state_dir, Path::new("/srv/app/.steward"));
}

#[test]
fn shipped_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // The demo application's spec (`steward up examples/fractals`).
    files.push(dir.join("fractals/steward.toml"));
    for p in files {
        if p.extension().is_some_and(|e| e == "toml") {
            let src = std::fs::read_to_string(&p).unwrap();
            let base = p.parent().unwrap();
            if let Err(e) = Spec::parse(&p.display().to_string(), &src, base, &AnyEnv) {
                panic!("{}", render(&e));
            }
            n += 1;
        }
    }
    assert!(n > 2, "example specs missing");
}

/// The README's spec reference must name every key the parser accepts: the keys
/// are read from the parser's own "known keys" hint, so a new key without docs fails here.
#[test]
fn readme_documents_every_key() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let probes = [
        (
            "check",
            "[check.x]\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\nzzzzzzzzzzzz = 1\n",
        ),
        (
            "alert",
            "[alert.x]\ntype = \"slack\"\nurl = \"http://x\"\nzzzzzzzzzzzz = 1\n",
        ),
        (
            "maintenance",
            "[maintenance.x]\nschedule = \"0 3 * * *\"\nduration = \"1h\"\nzzzzzzzzzzzz = 1\n",
        ),
        ("steward", "[steward]\nzzzzzzzzzzzz = 1\n"),
        ("converge", "[converge.x]\nzzzzzzzzzzzz = 1\n"),
        ("store", "[store.x]\ntype = \"local\"\nzzzzzzzzzzzz = 1\n"),
        ("image", "[image.x]\nbase = \"empty\"\nzzzzzzzzzzzz = 1\n"),
        (
            "image audit",
            "[image.x]\nbase = \"empty\"\naudit = { zzzzzzzzzzzz = 1 }\n",
        ),
        (
            "image artifact",
            "[image.x]\nbase = \"empty\"\nartifacts = [{ zzzzzzzzzzzz = 1 }]\n",
        ),
        (
            "service",
            "[image.i]\nbase = \"empty\"\n[service.x]\nimage = \"i\"\ncommand = [\"a\"]\nzzzzzzzzzzzz = 1\n",
        ),
        (
            "service rollout",
            "[image.i]\nbase = \"empty\"\n[service.x]\nimage = \"i\"\ncommand = [\"a\"]\nrollout = { zzzzzzzzzzzz = 1 }\n",
        ),
        (
            "backup",
            "[backup.x]\nsource = { paths = [\"/a\"] }\npassword = \"${env:DATABASE_URL}\"\nzzzzzzzzzzzz = 1\n",
        ),
        (
            "backup source",
            "[backup.x]\nsource = { zzzzzzzzzzzz = 1 }\npassword = \"${env:DATABASE_URL}\"\n",
        ),
        (
            "backup keep",
            "[backup.x]\nsource = { paths = [\"/a\"] }\npassword = \"${env:DATABASE_URL}\"\nkeep = { zzzzzzzzzzzz = 1 }\n",
        ),
        (
            "backup drill",
            "[backup.x]\nsource = { paths = [\"/a\"] }\npassword = \"${env:DATABASE_URL}\"\ndrill = { zzzzzzzzzzzz = 1 }\n",
        ),
    ];
    let kinds = [
        "file",
        "template",
        "directory",
        "symlink",
        "line",
        "block",
        "package",
        "service",
        "user",
        "group",
        "cron",
        "sysctl",
        "download",
        "exec",
    ];
    let resource_probes: Vec<(&str, String)> = kinds
        .iter()
        .map(|k| {
            (
                *k,
                format!("[converge.x]\n{k} = [{{ zzzzzzzzzzzz = 1 }}]\n"),
            )
        })
        .collect();
    let probes = probes
        .iter()
        .map(|(a, b)| (*a, b.to_string()))
        .chain(resource_probes);
    for (section, src) in probes {
        let err = Spec::parse("t.toml", &src, Path::new("/"), &NoEnv).unwrap_err();
        let help = err.errors[0].help.clone().unwrap();
        let keys = help
            .strip_prefix("known keys here: ")
            .unwrap_or_else(|| panic!("{help}"));
        for key in keys.split(", ") {
            assert!(
                readme.contains(&format!("`{key}`")),
                "README does not document `{key}` of [{section}]"
            );
        }
    }
}

#[test]
fn converge_templates_and_cycles_are_checked_at_validation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ok.j2"),
        "port = {{ port }}\n{% for i in range(2) %}\nw{{ i }}\n{% endfor %}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.j2"),
        "line one\n{% if x %}\nunclosed\n",
    )
    .unwrap();
    let src = r#"
[converge.app]
template = [
  { path = "/etc/ok.conf", source = "ok.j2" },
  { path = "/etc/bad.conf", source = "bad.j2" },
]
"#;
    let err = Spec::parse("t.toml", src, dir.path(), &NoEnv).unwrap_err();
    assert_eq!(err.errors.len(), 1, "{err:?}");
    let e = &err.errors[0];
    assert!(
        e.message.contains("bad.j2") && e.message.contains("line 3"),
        "{}",
        e.message
    );
    assert_eq!((e.line, e.column), (5, 38));

    // A valid set comes out in dependency order (spec order among independent ones).
    let src = r#"
[converge.app]
file = [{ path = "/srv/app/app.conf", content = "x", owner = "app", notify = ["service:app"] }]
service = [{ name = "app", enabled = true }]
package = [{ name = "app" }]
user = [{ name = "app", system = true }]
directory = [{ path = "/srv/app" }]
"#;
    let spec = Spec::parse("t.toml", src, dir.path(), &NoEnv).unwrap();
    let order: Vec<&str> = spec.converge["app"]
        .resources
        .iter()
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "package:app",
            "user:app",
            "directory:/srv/app",
            "file:/srv/app/app.conf",
            "service:app"
        ]
    );
}

#[test]
fn converge_sets_include_files_and_errors_point_into_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("converge")).unwrap();
    std::fs::write(
        dir.path().join("converge/web.toml"),
        "vars = { port = 80 }\n\
         file = [{ path = \"/etc/web.conf\", content = \"x\", notify = [\"service:web\"] }]\n",
    )
    .unwrap();
    let src = r#"
[converge.app]
include = ["converge/web.toml"]
vars = { port = 8080 }
service = [{ name = "web", enabled = true }]
"#;
    let spec = Spec::parse("t.toml", src, dir.path(), &NoEnv).unwrap();
    let set = &spec.converge["app"];
    let ids: Vec<&str> = set.resources.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["file:/etc/web.conf", "service:web"]);
    assert_eq!(set.vars["port"], 8080, "the spec's own vars win");

    std::fs::write(
        dir.path().join("converge/web.toml"),
        "# web\nline = [{ path = \"/etc/x\", line = \"a\", regexp = \"(\" }]\n",
    )
    .unwrap();
    let err = Spec::parse("t.toml", src, dir.path(), &NoEnv).unwrap_err();
    assert_eq!(err.errors.len(), 1, "{err:?}");
    let e = &err.errors[0];
    assert!(e.file().ends_with("converge/web.toml"), "{}", e.file());
    assert_eq!((e.line, e.column), (2, 49));
    assert!(e.message.contains("invalid regexp"));

    let missing = src.replace("converge/web.toml", "converge/nope.toml");
    let err = Spec::parse("t.toml", &missing, dir.path(), &NoEnv).unwrap_err();
    assert!(err.errors[0].message.contains("cannot read included file"));
    assert_eq!(err.errors[0].line, 3);
}
