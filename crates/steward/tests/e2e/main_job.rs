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
    // Both checks have results (the response-time charts need one).
    for check in ["api", "gallery"] {
        common::wait_for("the demo's checks to pass", || {
            common::http_get(&up.addr, &format!("/api/v1/checks/{check}"))
                .contains("\"health\":\"up\"")
        });
    }
    dashboard_reads_well(&up.url("/"));
    gallery_takes_a_job(&format!("http://127.0.0.1:{proxy}/"));
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

/// The dashboard as a person sees it (Chromium at 1280×900), measured from
/// the DOM: no cell's content spills into the next column, nothing is wider
/// than the window, a successful deploy is not shown in red, each
/// operational gap spans its panel, the response-time charts have a labelled
/// axis and lines drawn inside their box, and the next backup run reads
/// "in N min" like the rest of the page reads "N min ago".
fn dashboard_reads_well(url: &str) {
    let layout = common::chromium_eval(
        url,
        r#"JSON.stringify((() => {
  const box = e => { const r = e.getBoundingClientRect(); return { x: r.x, y: r.y, w: r.width, h: r.height }; };
  const red = e => getComputedStyle(e).color === 'rgb(207, 34, 46)';
  const label = td => (td.closest('tr').dataset.service || td.closest('tr').dataset.check || td.closest('tr').dataset.backup || td.closest('tr').className) + ': ' + td.textContent.trim().slice(0, 50);
  const spills = [...document.querySelectorAll('td')].flatMap(td => {
    const c = box(td);
    const out = td.scrollWidth > td.clientWidth + 1 ? [label(td) + ' (scrolls ' + td.scrollWidth + ' > ' + td.clientWidth + ')'] : [];
    return out.concat([...td.querySelectorAll('*')].filter(e => { const b = box(e); return b.w > 0 && (b.x < c.x - 1 || b.x + b.w > c.x + c.w + 1); })
      .map(e => label(td) + ' (' + e.tagName.toLowerCase() + '.' + (e.getAttribute('class') || '') + ' at ' + Math.round(box(e).x) + '+' + Math.round(box(e).w) + ', cell ' + Math.round(c.x) + '+' + Math.round(c.w) + ')'));
  });
  const succeededInRed = [...document.querySelectorAll('tr.deploy[data-result=succeeded] td')]
    .filter(td => red(td) || [...td.querySelectorAll('*')].some(red)).map(label);
  const deploys = document.querySelectorAll('tr.deploy[data-result=succeeded]').length;
  const gaps = [...document.querySelectorAll('.gap')].map(g => box(g).w / box(g.closest('section')).w);
  const charts = [...document.querySelectorAll('svg.spark')].map(s => {
    const svg = box(s), line = box(s.querySelector('polyline'));
    return { axis: (s.querySelector('text.axis') || {}).textContent || '',
             inside: line.y >= svg.y - 0.5 && line.y + line.h <= svg.y + svg.h + 0.5,
             belowTop: line.y > svg.y + 1 };
  });
  const next = [...document.querySelectorAll('tr.backup td.next')].map(t => t.textContent.trim());
  return { spills, succeededInRed, deploys, gaps, charts, next,
           wide: document.documentElement.scrollWidth, window: window.innerWidth };
})())"#,
    );
    let v: serde_json::Value =
        serde_json::from_str(layout.as_str().expect("a JSON string")).unwrap();
    assert_eq!(
        v["spills"],
        serde_json::json!([]),
        "cells spilling over: {v}"
    );
    assert!(
        v["wide"].as_f64() <= v["window"].as_f64(),
        "wider than the window: {v}"
    );
    assert!(
        v["deploys"].as_u64().unwrap() >= 2,
        "the initial deploys of api and worker: {v}"
    );
    assert_eq!(v["succeededInRed"], serde_json::json!([]), "{v}");
    let gaps = v["gaps"].as_array().unwrap();
    assert!(
        !gaps.is_empty(),
        "the demo has gaps (no alert channel): {v}"
    );
    assert!(
        gaps.iter().all(|g| g.as_f64().unwrap() > 0.9),
        "a gap box spans its panel: {v}"
    );
    let charts = v["charts"].as_array().unwrap();
    assert!(!charts.is_empty(), "response-time charts: {v}");
    for c in charts {
        assert!(
            c["axis"].as_str().unwrap().ends_with(" ms"),
            "a labelled axis: {v}"
        );
        assert_eq!(c["inside"], true, "{v}");
    }
    let next = v["next"].as_array().unwrap();
    assert!(
        !next.is_empty() && next.iter().all(|n| n.as_str().unwrap().starts_with("in ")),
        "{v}"
    );
}

/// The demo's gallery, in Chromium: a form to render a fractal and the
/// status of each job.
fn gallery_takes_a_job(url: &str) {
    let v = common::chromium_eval(
        url,
        r#"JSON.stringify({ form: !!document.querySelector('form[action="/new"] select[name=kind]'),
                            jobs: !!document.querySelector('table#jobs') || document.body.textContent.includes('No jobs yet') })"#,
    );
    let v: serde_json::Value = serde_json::from_str(v.as_str().unwrap()).unwrap();
    assert_eq!(v, serde_json::json!({ "form": true, "jobs": true }));
}
