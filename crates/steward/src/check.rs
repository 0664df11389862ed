//! `steward check`: run checks once.

use std::path::Path;
use std::sync::Arc;

use steward_health::{Prober, run_once};
use steward_spec::OsResolver;
use steward_state::Status;

use crate::{exit, load_spec, table};

pub(crate) async fn run(spec_path: &Path, names: &[String], json: bool) -> u8 {
    let spec = match load_spec(spec_path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    for n in names {
        if !spec.checks.contains_key(n) {
            let hint = steward_spec::did_you_mean(n, spec.checks.keys().map(String::as_str))
                .map(|b| format!(" (did you mean `{b}`?)"))
                .unwrap_or_default();
            eprintln!(
                "error: no check named `{n}` in {}{hint}",
                spec_path.display()
            );
            return exit::USAGE;
        }
    }
    let checks: Vec<_> = spec
        .checks
        .values()
        .filter(|c| names.is_empty() || names.contains(&c.name))
        .cloned()
        .collect();
    let prober = Prober::new(Arc::new(OsResolver));
    let results = run_once(&checks, &prober).await;
    let failed = results
        .iter()
        .filter(|(_, j, _)| j.status == Status::Fail)
        .count();
    if json {
        let out: Vec<serde_json::Value> = results
            .iter()
            .map(|(name, j, d)| {
                serde_json::json!({
                    "name": name,
                    "status": j.status.as_str(),
                    "duration_ms": (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
                    "error": j.error,
                    "observed": j.observed,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    } else {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|(name, j, d)| {
                vec![
                    name.clone(),
                    j.status.as_str().to_uppercase(),
                    format!("{:.1} ms", d.as_secs_f64() * 1000.0),
                    observed_summary(&j.observed),
                    j.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print!(
            "{}",
            table::render(&["CHECK", "STATUS", "LATENCY", "OBSERVED", "ERROR"], &rows)
        );
        println!("{} passed, {} failed", results.len() - failed, failed);
    }
    if failed > 0 { exit::FAILED } else { exit::OK }
}

fn observed_summary(v: &serde_json::Value) -> String {
    let Some(m) = v.as_object() else {
        return String::new();
    };
    m.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "response_time_ms" | "connected" | "components"))
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
