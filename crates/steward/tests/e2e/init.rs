//! `steward init` end to end: the test bed's real PostgreSQL, Redis and
//! RabbitMQ and a running fractals demo (a simulated application: its
//! database URLs in its environment, its data directory, a log file it
//! writes) are found; the spec written for them validates, its checks
//! pass, and its backups run and pass their drills.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::{BIN, free_port, steward, testbed, wait_for};

/// The fractals API running as an application would on its own: not under
/// steward. Killed when dropped.
struct App {
    child: Child,
    port: u16,
    data: PathBuf,
    log: PathBuf,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_app(dir: &Path) -> App {
    let port = free_port();
    let data = dir.join("data");
    let log = dir.join("app.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(Path::new(BIN).with_file_name("fractals"))
        .args(["api", "--listen", &format!("127.0.0.1:{port}")])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("FRACTALS_DATA", &data)
        .env("DATABASE_URL", testbed("STEWARD_TEST_PG_URL"))
        .env("AMQP_URL", testbed("STEWARD_TEST_AMQP_URL"))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let app = App {
        child,
        port,
        data,
        log,
    };
    wait_for("the application to answer", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && app.data.join("fractals.db").exists()
    });
    app
}

fn port_of(url: &str) -> String {
    url.rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// The variables init says to export, with the values the application has.
fn app_env() -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), testbed("STEWARD_TEST_PG_URL")),
        ("AMQP_URL".into(), testbed("STEWARD_TEST_AMQP_URL")),
    ]
}

#[test]
fn init_finds_the_servers_and_the_application_and_what_it_writes_checks_and_backs_them_up() {
    let dir = tempfile::tempdir().unwrap();
    let app = start_app(dir.path());
    let project = dir.path().join("ops");
    let spec = project.join("steward.toml");
    let pg = port_of(&testbed("STEWARD_TEST_PG_URL"));
    let redis = port_of(&testbed("STEWARD_TEST_REDIS_URL"));
    let amqp = port_of(&testbed("STEWARD_TEST_AMQP_URL"));
    let app_port = app.port.to_string();
    let ports = [&pg, &redis, &amqp, &app_port];
    let mut args = vec!["init", "--yes"];
    for p in &ports {
        args.extend(["--port", p.as_str()]);
    }

    let (code, out, err) = steward(&spec, &args, &[]);
    assert_eq!(code, 0, "init: {out}\n{err}");
    let written = std::fs::read_to_string(&spec).unwrap();
    // Found by protocol, each with what it is.
    for (section, what) in [
        ("[check.postgres]", "PostgreSQL"),
        ("[check.redis]", "Redis"),
        ("[check.rabbitmq]", "AMQP"),
        ("[check.fractals]", "HTTP"),
    ] {
        assert!(
            written.contains(section),
            "{section} ({what}) in\n{written}"
        );
        assert!(err.contains(what), "{what} among the findings: {err}");
    }
    assert!(written.contains(&format!("url = \"http://127.0.0.1:{}/health\"", app.port)));
    assert!(
        written.contains("answered application/health+json"),
        "{written}"
    );
    assert!(written.contains(&format!(
        "[scrape.fractals]\nurl = \"http://127.0.0.1:{}/metrics\"",
        app.port
    )));
    assert!(
        written.contains("RabbitMQ 3."),
        "the server's greeting names it: {written}"
    );
    // Credentials by reference, tied to the process that holds them; never the values.
    assert!(
        written.contains("url = \"${env:DATABASE_URL}\""),
        "{written}"
    );
    assert!(written.contains("url = \"${env:AMQP_URL}\""), "{written}");
    assert!(!written.contains("steward-test-pw") && !written.contains("guest:guest"));
    assert!(!out.contains("steward-test-pw") && !err.contains("steward-test-pw"));
    let pid = app.child.id();
    assert!(
        out.contains(&format!(
            "export DATABASE_URL=…   # the value is in the environment of pid {pid} (fractals)"
        )),
        "{out}"
    );
    // Backups of every database and data directory, and the log it writes.
    let db = app.data.join("fractals.db");
    for expected in [
        "[backup.postgres]\nsource = { postgres = \"${env:DATABASE_URL}\" }".to_string(),
        "[backup.redis]\nsource = { command = [\"redis-cli\"".into(),
        "[backup.rabbitmq-definitions]".into(),
        format!(
            "[backup.fractals-db]\nsource = {{ sqlite = \"{}\" }}",
            db.display()
        ),
        format!(
            "[backup.fractals-data]\nsource = {{ paths = [\"{}\"], exclude = [",
            app.data.display()
        ),
        // The test bed's servers write logs too; each is listed.
        format!(
            "[backup.logs]\nsource = {{ logs = [\"{}\", ",
            app.log.display()
        ),
    ] {
        assert!(written.contains(&expected), "{expected}\nin\n{written}");
    }
    // Before the variables are set, init said what validate wants.
    assert!(
        out.contains("$ steward validate") && out.contains("(not yet"),
        "{out}"
    );

    let env = app_env();
    let (code, out, err) = steward(&spec, &["validate"], &env);
    assert_eq!(code, 0, "validate: {out}\n{err}");
    let (code, out, err) = steward(&spec, &["check"], &env);
    assert_eq!(code, 0, "every check init wrote passes: {out}\n{err}");
    let (code, out, err) = steward(&spec, &["backup", "run"], &env);
    assert_eq!(code, 0, "backup run: {out}\n{err}");
    let (code, out, err) = steward(&spec, &["backup", "drill"], &env);
    assert_eq!(code, 0, "backup drill: {out}\n{err}");
    for backup in [
        "postgres",
        "redis",
        "rabbitmq-definitions",
        "fractals-db",
        "fractals-data",
        "logs",
    ] {
        assert!(out.contains(backup), "{backup} drilled: {out}");
    }

    // The commented service block is a valid spec once uncommented.
    let start = written
        .find("# [image.fractals]")
        .expect("an image for the application");
    let uncommented: String = written[..start].to_string()
        + &written[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").or(l.strip_prefix('#')).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
    let service = project.join("service.toml");
    std::fs::write(&service, &uncommented).unwrap();
    let (code, out, err) = steward(&service, &["validate"], &env);
    assert_eq!(
        code, 0,
        "the service block uncommented: {out}\n{err}\n{uncommented}"
    );
    assert!(out.contains("1 images, 1 services"), "{out}");

    // Never over an existing spec without --force; with it, the old one is kept.
    let (code, _, err) = steward(&spec, &args, &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("never writes over a spec") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), written);
    std::fs::write(&spec, "# mine\n").unwrap();
    let mut forced = args.clone();
    forced.push("--force");
    let (code, _, _) = steward(&spec, &forced, &[]);
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(project.join("steward.toml.bak")).unwrap(),
        "# mine\n"
    );

    // --json: the findings only.
    let (code, out, _) = steward(
        &dir.path().join("none.toml"),
        &["init", "--json", "--port", &app_port],
        &[],
    );
    assert_eq!(code, 0);
    let found: serde_json::Value = serde_json::from_str(&out).unwrap();
    let c = &found["components"][0];
    assert_eq!(c["protocol"], "http");
    assert_eq!(c["process"]["pid"], pid);
    assert_eq!(c["endpoints"][0]["path"], "/health");
    assert_eq!(c["endpoints"][0]["format"], "health-json");
    assert_eq!(c["process"]["secrets"][0]["var"], "AMQP_URL");
    assert!(
        !dir.path().join("none.toml").exists(),
        "--json writes nothing"
    );

    // An instance a steward runs is not a finding: it is watched already.
    let port = free_port();
    let mut instance = Command::new(Path::new(BIN).with_file_name("fractals"))
        .args(["api", "--listen", &format!("127.0.0.1:{port}")])
        .env("FRACTALS_DATA", dir.path().join("instance-data"))
        .env("STEWARD_INSTANCE", "api-0a1b2c")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the instance to answer", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let (code, out, _) = steward(
        &dir.path().join("none.toml"),
        &["init", "--json", "--port", &port.to_string()],
        &[],
    );
    let _ = instance.kill();
    let _ = instance.wait();
    assert_eq!(code, 0);
    let found: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(found["components"], serde_json::json!([]), "{found}");
    assert!(
        found["skipped"][0]
            .as_str()
            .unwrap()
            .ends_with("an instance a steward already runs"),
        "{found}"
    );
}

#[test]
fn init_without_a_terminal_asks_for_yes_and_with_nothing_found_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("steward.toml");
    let out = Command::new(BIN)
        .args(["-f", spec.to_str().unwrap(), "init"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    // A port nothing listens on: nothing to write a spec for.
    let port = free_port().to_string();
    let (code, _, err) = steward(&spec, &["init", "--yes", "--port", &port], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Nothing to write a spec for"), "{err}");
    assert!(!spec.exists());
}

/// The README's `steward init` line, run as written on a terminal (a pty
/// from util-linux's `script`), whole machine: the first finding declined,
/// every other one taken, one key each as a person would press them.
#[test]
fn the_readme_init_line_runs_as_written_on_a_terminal() {
    use std::io::Write;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = &readme[readme
        .find("## Start from the application you already run")
        .unwrap()..];
    let block = &section[section.find("```sh\n").unwrap() + 6..];
    let line = block.lines().next().unwrap();
    let command = line.split(" #").next().unwrap().trim();
    assert_eq!(command, "steward init");
    // Something certain to be found: the test bed's PostgreSQL.
    let _ = testbed("STEWARD_TEST_PG_URL");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("script")
        .args(["-qec", &command.replacen("steward", BIN, 1), "/dev/null"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut keys = String::from("n");
    keys.push_str(&"y".repeat(200));
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(keys.as_bytes())
        .unwrap();
    // Stdin stays open while init runs (an early end of input would end the
    // terminal session); it is closed after its output ends.
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let status = child.wait().unwrap();
    let out = out.replace('\r', "");
    assert!(status.success(), "{out}");
    let found: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("found "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(found.len() >= 2, "the test bed's servers are found: {out}");
    assert!(out.contains(&format!("Add {}", found[0])), "{out}");
    let written = std::fs::read_to_string(dir.path().join("steward.toml")).unwrap();
    assert!(
        !written.contains(&format!("── {} ──", found[0])),
        "declined, so left out: {}\n{written}",
        found[0]
    );
    for name in &found[1..] {
        assert!(
            written.contains(&format!("── {name} ──")),
            "{name} taken:\n{written}"
        );
    }
}
