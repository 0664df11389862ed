//! The main job (`steward up examples/fractals`): the demo's own spec, run
//! from the directory above it as the README runs it from the repository
//! root, until its scheduled backup and restore drill have both passed.
//! Three things differ from the README's command, each because a test cannot
//! wait for it: the backup and drill schedules run every few seconds instead
//! of every 10 minutes and every hour; `prepare` copies the fractals binary
//! the test build already made instead of compiling a release one; and the
//! ports are free ones instead of 8000 and 7070.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, BIN, free_port, steward};

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the demo's spec has `{from}` once (did it change?)"
    );
    text.replace(from, to)
}

#[test]
fn the_demo_backs_up_on_schedule_and_its_drill_passes_from_any_working_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let work = tempfile::tempdir().unwrap();
    let demo = work.path().join("examples/fractals");
    std::fs::create_dir_all(&demo).unwrap();
    let spec = std::fs::read_to_string(root.join("examples/fractals/steward.toml")).unwrap();
    let fractals = Path::new(BIN).with_file_name("fractals");
    let proxy = free_port();
    let mut spec = replace_once(
        &spec,
        r#"prepare = [["sh", "build.sh"]]"#,
        &format!(
            r#"prepare = [["sh", "-c", "mkdir -p .build && cp {} .build/fractals"]]"#,
            fractals.display()
        ),
    );
    let sources = spec
        .lines()
        .find(|l| l.starts_with("sources = "))
        .expect("the demo declares its sources")
        .to_string();
    spec = replace_once(&spec, &sources, "");
    spec = spec.replace("127.0.0.1:8000", &format!("127.0.0.1:{proxy}"));
    spec = replace_once(
        &spec,
        r#"schedule = "*/10 * * * *""#,
        r#"schedule = "*/2 * * * * *""#,
    );
    spec = replace_once(
        &spec,
        r#"drill = { schedule = "30 * * * *" }"#,
        r#"drill = { schedule = "*/3 * * * * *" }"#,
    );
    let spec_path = demo.join("steward.toml");
    std::fs::write(&spec_path, &spec).unwrap();

    // As the README runs it: `up DIR` from the directory above DIR.
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--log-format",
        "json",
        "up",
        "examples/fractals",
        "--listen",
        "127.0.0.1:0",
    ])
    .current_dir(work.path());
    let up = common::serving(cmd);
    let state = demo.join(".steward");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let backed_up = !common::events(&state, "backup.succeeded", Some("jobs")).is_empty();
        let drilled = !common::events(&state, "drill.succeeded", Some("jobs")).is_empty();
        if backed_up && drilled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no passed backup and drill in 2 minutes: backup failures {:?}, drill failures {:?}\n{}",
            common::events(&state, "backup.failed", Some("jobs"))
                .iter()
                .map(|e| e.event.message.clone())
                .collect::<Vec<_>>(),
            common::events(&state, "drill.failed", Some("jobs"))
                .iter()
                .map(|e| e.event.message.clone())
                .collect::<Vec<_>>(),
            up.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(up.stop(), 0, "up stops cleanly on SIGTERM");

    // The CLI, from yet another directory, finds the same snapshot paths.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["-f", spec_path.to_str().unwrap(), "backup", "drill", "jobs"])
        .current_dir(elsewhere.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, out, err) = steward(&spec_path, &["down"], &[]);
    assert_eq!(code, 0, "{out}{err}");
}
