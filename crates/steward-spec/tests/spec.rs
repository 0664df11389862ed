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
            "scrape",
            "[scrape.x]\nurl = \"http://127.0.0.1:1/metrics\"\nzzzzzzzzzzzz = 1\n",
        ),
        ("rule", "[rule.x]\nexpr = \"up\"\nzzzzzzzzzzzz = 1\n"),
        ("cloud", "[cloud.x]\nzzzzzzzzzzzz = 1\n"),
        (
            "remote_write",
            "[remote_write.x]\nurl = \"http://127.0.0.1:1/api/v1/write\"\nzzzzzzzzzzzz = 1\n",
        ),
        (
            "service metrics",
            "[image.i]\nbase = \"empty\"\n[service.x]\nimage = \"i\"\ncommand = [\"a\"]\nmetrics = { zzzzzzzzzzzz = 1 }\n",
        ),
        (
            "service autoscale",
            "[image.i]\nbase = \"empty\"\n[service.x]\nimage = \"i\"\ncommand = [\"a\"]\nreplicas = { min = 1, max = 2 }\nautoscale = { zzzzzzzzzzzz = 1 }\n",
        ),
        (
            "service autoscale metric",
            "[image.i]\nbase = \"empty\"\n[service.x]\nimage = \"i\"\ncommand = [\"a\"]\nreplicas = { min = 1, max = 2 }\nautoscale = { metrics = [{ zzzzzzzzzzzz = 1 }] }\n",
        ),
        (
            "service autoscale rules",
            "[image.i]\nbase = \"empty\"\n[service.x]\nimage = \"i\"\ncommand = [\"a\"]\nreplicas = { min = 1, max = 2 }\nautoscale = { scale_up = { zzzzzzzzzzzz = 1 } }\n",
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
        // The unknown key's error lists the known ones (other problems the
        // probe causes, such as a missing required key, are reported too).
        let help = err
            .errors
            .iter()
            .find_map(|e| {
                e.help
                    .clone()
                    .filter(|h| h.starts_with("known keys here: "))
            })
            .unwrap_or_else(|| panic!("no list of known keys for {section}: {err:?}"));
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

/// Builds what a Gatus `Result` holds: its zero values (status 0, empty body,
/// not connected, 0 ms) unless the case sets them.
fn gatus_result(o: &serde_json::Value) -> steward_spec::Observed {
    let int = |k: &str| o.get(k).and_then(serde_json::Value::as_i64);
    let text = |k: &str| {
        Some(
            o.get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string(),
        )
    };
    let mut r = steward_spec::Observed::default();
    r.connected = o.get("connected").and_then(serde_json::Value::as_bool) == Some(true);
    r.status = Some(int("status").unwrap_or(0) as u16);
    r.response_time_ms = Some(int("response_time_ms").unwrap_or(0) as f64);
    r.certificate_expiration_ms = Some(int("certificate_expiration_ms").unwrap_or(0));
    r.body = text("body");
    r.ip = text("ip");
    r.dns_rcode = text("dns_rcode");
    r
}

/// Gatus's own condition scenarios, carried over as data (the file names its origin).
fn gatus_cases() -> Vec<serde_json::Value> {
    let raw = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gatus-conditions.json"),
    )
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&raw).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

/// Where steward decides a Gatus case differently on purpose, and why.
const DELIBERATE: &[(&str, &str)] = &[(
    "no-placeholders",
    "a condition without a placeholder can never change: steward refuses it when the spec loads",
)];

/// Every scenario of Gatus's own condition tests (ported as data in
/// `tests/fixtures/gatus-conditions.json`, with their origin) gives the same
/// verdict in steward, except the deliberate differences listed above.
#[test]
fn conditions_decide_as_gatus_does_on_its_own_test_cases() {
    let cases = gatus_cases();
    assert!(cases.len() >= 90);
    let mut wrong = Vec::new();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let text = c["condition"].as_str().unwrap();
        let gatus = c["gatus"].as_bool().unwrap();
        let deliberate = DELIBERATE.iter().find(|(n, _)| *n == name);
        let steward = steward_spec::Condition::parse(text)
            .map(|cond| cond.evaluate(&gatus_result(&c["observed"])));
        match (steward, deliberate) {
            (Ok(v), None) if v.success == gatus => {}
            (Ok(v), None) => wrong.push(format!(
                "{name}: `{text}` is {} in steward ({}), {gatus} in Gatus",
                v.success, v.resolved
            )),
            (Err(e), None) => wrong.push(format!("{name}: `{text}` refused: {}", e.message)),
            (outcome, Some((_, why))) => {
                let same = matches!(&outcome, Ok(v) if v.success == gatus);
                assert!(
                    !same,
                    "{name} is listed as a deliberate difference ({why}) but agrees"
                );
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cases disagree with Gatus:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Gatus's condition rules beyond its own test cases, read from its source
/// (`config/endpoint/condition.go`, `placeholder.go`, `jsonpath/jsonpath.go`):
/// condition, what the probe saw (as in the fixture), steward's verdict,
/// Gatus's verdict, and the rule — `deliberate:` where the two differ.
const GATUS_RULES: &[(&str, &str, bool, bool, &str)] = &[
    (
        "[BODY] == 0x1A",
        r#"{"body":"26"}"#,
        true,
        true,
        "== reads both sides with Go's ParseInt(s, 0, 64): hex",
    ),
    (
        "[BODY] == 26",
        r#"{"body":"0x1a"}"#,
        true,
        true,
        "hex on the observed side too",
    ),
    (
        "[BODY] == 010",
        r#"{"body":"8"}"#,
        true,
        true,
        "a leading 0 is octal in Go",
    ),
    ("[BODY] == 0o17", r#"{"body":"15"}"#, true, true, "0o octal"),
    (
        "[BODY] == 0B101",
        r#"{"body":"5"}"#,
        true,
        true,
        "binary, prefix in either case",
    ),
    (
        "[BODY] == 1_000",
        r#"{"body":"1000"}"#,
        true,
        true,
        "underscores between digits",
    ),
    (
        "[BODY] == 1__0",
        r#"{"body":"10"}"#,
        false,
        false,
        "a double underscore is no number: compared as text",
    ),
    (
        "[BODY] == _10",
        r#"{"body":"10"}"#,
        false,
        false,
        "a leading underscore is no number",
    ),
    ("[BODY] == -0x10", r#"{"body":"-16"}"#, true, true, "signs"),
    ("[BODY] == +7", r#"{"body":"7"}"#, true, true, "a plus sign"),
    (
        "[BODY] == 08",
        r#"{"body":"8"}"#,
        false,
        false,
        "08 is not octal: compared as text",
    ),
    (
        "[BODY] == 1.0",
        r#"{"body":"1"}"#,
        false,
        false,
        "== compares non-integers as text",
    ),
    (
        "[BODY] == 9223372036854775807",
        r#"{"body":"0x7fffffffffffffff"}"#,
        true,
        true,
        "the largest int64",
    ),
    (
        "[BODY] == 18446744073709551616",
        r#"{"body":"18446744073709551616"}"#,
        true,
        true,
        "beyond int64: text",
    ),
    (
        "[BODY] == 0b102",
        r#"{"body":"0b102"}"#,
        true,
        true,
        "not a number: equal as text",
    ),
    (
        "[BODY] > 0x0F",
        r#"{"body":"16"}"#,
        true,
        true,
        "orderings read bases too",
    ),
    (
        "[BODY] < 0b11",
        r#"{"body":"2"}"#,
        true,
        true,
        "binary in an ordering",
    ),
    (
        "[BODY] >= 1.5",
        r#"{"body":"1.5"}"#,
        true,
        true,
        "floats in an ordering",
    ),
    (
        "[BODY] > 1",
        r#"{"body":"1.5"}"#,
        true,
        false,
        "deliberate: steward compares floats as floats; Gatus truncates 1.5 to 1",
    ),
    (
        "[BODY] < 5",
        r#"{"body":"abc"}"#,
        false,
        true,
        "deliberate: a non-number satisfies no ordering; Gatus reads it as 0",
    ),
    (
        "[BODY].missing < 5",
        r#"{"body":"{}"}"#,
        false,
        true,
        "deliberate: a missing field satisfies no ordering; Gatus reads its (INVALID) as 0",
    ),
    (
        "[BODY].uptime > 1h",
        r#"{"body":"{\"uptime\":\"2h\"}"}"#,
        true,
        true,
        "durations on either side become milliseconds",
    ),
    (
        "[BODY].ms < 1s",
        r#"{"body":"{\"ms\":500}"}"#,
        true,
        true,
        "a number against a duration: milliseconds",
    ),
    (
        "[CERTIFICATE_EXPIRATION] > 7d",
        r#"{"certificate_expiration_ms":86400000}"#,
        false,
        true,
        "deliberate: steward reads `d` as days; Go's durations have no `d` (Gatus reads 7d as 0)",
    ),
    (
        "[RESPONSE_TIME] == 120",
        r#"{"response_time_ms":120}"#,
        true,
        true,
        "response time in whole milliseconds",
    ),
    (
        "len([BODY]) == 3",
        r#"{"body":"[1,2,3]"}"#,
        true,
        true,
        "len of an array body: its element count",
    ),
    (
        "len([BODY]) == 7",
        r#"{"body":"[1,2,3"}"#,
        false,
        false,
        "not JSON: its length",
    ),
    (
        "len([BODY]) == 6",
        r#"{"body":"[1,2,3"}"#,
        true,
        true,
        "a body that is not a JSON array: its length in bytes",
    ),
    (
        "len([BODY].name) == 6",
        r#"{"body":"{\"name\":\"héllo\"}"}"#,
        true,
        true,
        "len of a string counts bytes, as Go",
    ),
    (
        "len([BODY].obj) == 13",
        r#"{"body":"{\"obj\":{\"b\":1,\"a\":2}}"}"#,
        true,
        true,
        "len of an object: its compact JSON with sorted keys",
    ),
    (
        "len([BODY].n) == 3",
        r#"{"body":"{\"n\":123}"}"#,
        true,
        true,
        "len of a number: its text",
    ),
    (
        "len([BODY].ok) == 5",
        r#"{"body":"{\"ok\":false}"}"#,
        true,
        true,
        "len of a boolean: its text",
    ),
    (
        "len([BODY].x) == 0",
        r#"{"body":"{\"x\":null}"}"#,
        false,
        false,
        "null has no length",
    ),
    (
        "len([STATUS]) == 3",
        r#"{"status":200}"#,
        true,
        true,
        "len of another placeholder: its text",
    ),
    (
        "has([BODY].x) == false",
        r#"{"body":"{\"x\":null}"}"#,
        true,
        true,
        "has: null counts as absent",
    ),
    (
        "has([BODY].x) == true",
        r#"{"body":"{\"x\":0}"}"#,
        true,
        true,
        "has: 0 is present",
    ),
    (
        "has([BODY]) == true",
        r#"{"body":"x"}"#,
        true,
        true,
        "has([BODY]): a body that is not empty",
    ),
    (
        "has([BODY]) == false",
        r#"{"body":"  \n"}"#,
        true,
        true,
        "whitespace only is empty",
    ),
    (
        "has([STATUS]) == true",
        r#"{"status":200}"#,
        true,
        true,
        "has of another placeholder: not empty",
    ),
    (
        "has([BODY].a.b) == false",
        r#"{"body":"{\"a\":\"text\"}"}"#,
        true,
        true,
        "a path through a string leads nowhere",
    ),
    (
        "[status] == 200",
        r#"{"status":200}"#,
        true,
        true,
        "placeholders are case-insensitive",
    ),
    (
        "[Body].Name == x",
        r#"{"body":"{\"Name\":\"x\"}"}"#,
        true,
        true,
        "paths keep their case",
    ),
    (
        "[BODY].name == x",
        r#"{"body":"{\"Name\":\"x\"}"}"#,
        false,
        false,
        "keys are case-sensitive",
    ),
    (
        "any(200, 204) == [STATUS]",
        r#"{"status":204}"#,
        true,
        true,
        "any() on the left",
    ),
    (
        "pat(web-*) == [BODY].name",
        r#"{"body":"{\"name\":\"web-1\"}"}"#,
        true,
        true,
        "pat() on the left",
    ),
    (
        "[STATUS] != any(200, 204)",
        r#"{"status":500}"#,
        true,
        true,
        "!= any()",
    ),
    (
        "[BODY] == any( a ,b )",
        r#"{"body":"a"}"#,
        true,
        true,
        "any() options are trimmed",
    ),
    (
        "[BODY] == pat(*)",
        r#"{"body":""}"#,
        true,
        true,
        "pat(*) matches even nothing",
    ),
    (
        "[BODY].list == pat(*b*)",
        r#"{"body":"{\"list\":[\"a\",\"b\"]}"}"#,
        true,
        true,
        "an array is compared as Go prints it",
    ),
    (
        "[BODY].list == pat(*a b*)",
        r#"{"body":"{\"list\":[\"a\",\"b\"]}"}"#,
        true,
        true,
        "Go prints arrays as [a b]",
    ),
    (
        "[BODY].obj == {\"a\":1}",
        r#"{"body":"{\"obj\":{\"a\":1}}"}"#,
        true,
        true,
        "an object is compared as compact JSON",
    ),
    (
        "[BODY].html == <b>",
        r#"{"body":"{\"html\":\"<b>\"}"}"#,
        true,
        true,
        "strings are not escaped",
    ),
    (
        "[BODY] == test",
        r#"{"body":"  test \n"}"#,
        true,
        true,
        "the body is trimmed",
    ),
    (
        "[BODY][1] == 2",
        r#"{"body":"[1,2]"}"#,
        true,
        true,
        "an index into an array body",
    ),
    (
        "[BODY].a[0][1] == 3",
        r#"{"body":"{\"a\":[[2,3]]}"}"#,
        true,
        true,
        "nested indexes",
    ),
    (
        "[BODY].a[5] == 3",
        r#"{"body":"{\"a\":[1]}"}"#,
        false,
        false,
        "an index past the end leads nowhere",
    ),
    (
        "[BODY].x != y",
        r#"{"body":"{}"}"#,
        true,
        true,
        "a missing field differs from everything",
    ),
    (
        "[BODY].x == [BODY].y",
        r#"{"body":"{}"}"#,
        false,
        false,
        "two missing fields are not equal",
    ),
    (
        "[BODY].flag == true",
        r#"{"body":"{\"flag\":true}"}"#,
        true,
        true,
        "booleans by text",
    ),
    (
        "[BODY].n == 1.5",
        r#"{"body":"{\"n\":1.5}"}"#,
        true,
        true,
        "a float field by text",
    ),
    ("[CONNECTED] == false", r#"{}"#, true, true, "not connected"),
    (
        "[IP] == pat(10.*)",
        r#"{"ip":"10.1.2.3"}"#,
        true,
        true,
        "patterns on any placeholder",
    ),
];

#[test]
fn conditions_follow_gatus_rules_beyond_its_tests() {
    assert!(GATUS_RULES.len() + gatus_cases().len() >= 80);
    let mut wrong = Vec::new();
    for (text, observed, steward, gatus, rule) in GATUS_RULES {
        assert_eq!(
            steward != gatus,
            rule.starts_with("deliberate:"),
            "{text}: a difference from Gatus must be marked deliberate, and only then"
        );
        let o: serde_json::Value = serde_json::from_str(observed).unwrap();
        let v = steward_spec::Condition::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {}", e.message))
            .evaluate(&gatus_result(&o));
        if v.success != *steward {
            wrong.push(format!("{text} ({rule}): {} — {}", v.success, v.resolved));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A spec named by a relative path still gives absolute paths: what a
/// backup records must not depend on the working directory it was loaded
/// from (the demo's drill looked for `./.steward/…` under the restore).
#[test]
fn a_spec_loaded_by_a_relative_path_gives_absolute_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "secret").unwrap();
    std::fs::set_permissions(
        dir.path().join("pw"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("steward.toml"),
        "[steward]\nstate_dir = \".steward\"\n\n[backup.files]\nsource = { paths = [\"data\"] }\npassword = \"${file:pw}\"\n",
    )
    .unwrap();
    // The same file, named relative to the test's working directory.
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let relative = Path::new(&up)
        .join(dir.path().strip_prefix("/").unwrap())
        .join("steward.toml");
    assert!(relative.is_relative());
    let spec = Spec::load(&relative).unwrap();
    assert!(
        spec.settings.state_dir.is_absolute(),
        "{:?}",
        spec.settings.state_dir
    );
    assert!(spec.settings.state_dir.ends_with(".steward"));
    match &spec.backups["files"].source {
        steward_spec::Source::Paths { paths, .. } => {
            assert!(paths.iter().all(|p| p.is_absolute()), "{paths:?}");
        }
        other => panic!("{other:?}"),
    }
}
