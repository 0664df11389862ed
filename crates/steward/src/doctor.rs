//! `steward doctor`: operational gaps, each with a fix.

use std::path::Path;

use steward_doctor::{BackupFacts, Facts, Severity, diagnose};

use crate::{exit, load_spec};
use steward_state::{EventKind, Meta};

pub(crate) fn run(spec_path: &Path, json: bool) -> u8 {
    let spec = match load_spec(spec_path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let now = steward_state::now_ms();
    let facts = facts(&spec, now);
    let findings = diagnose(&spec, &facts);
    if json {
        println!("{}", serde_json::to_string_pretty(&findings).expect("JSON"));
    } else if findings.is_empty() {
        println!("No gaps found.");
    } else {
        for f in &findings {
            let severity = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Info => "info",
            };
            println!("{severity:<8} {:<30} {}", f.rule, f.subject);
            println!("         {}", f.message);
            println!("         fix: {}", f.fix);
        }
        let errors = findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        println!("\n{} finding(s), {} error(s)", findings.len(), errors);
    }
    if findings.iter().any(|f| f.severity == Severity::Error) {
        exit::FAILED
    } else {
        exit::OK
    }
}

/// Facts from the state database when one exists; doctor never creates it.
pub(crate) fn facts(spec: &steward_spec::Spec, now: i64) -> Facts {
    let mut facts = Facts {
        now,
        ..Facts::default()
    };
    if !spec.settings.state_dir.join("state.db").exists() {
        return facts;
    }
    let store = match steward_state::Store::open(&spec.settings.state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: cannot read state database: {e}");
            return facts;
        }
    };
    facts.serve_heartbeat = store
        .meta(crate::serve::HEARTBEAT_KEY)
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok());
    use steward_backup::controller::last_event;
    for name in spec.backups.keys() {
        facts.backups.insert(
            name.clone(),
            BackupFacts {
                last_success: last_event(&store, EventKind::BackupSucceeded, name),
                last_failure: last_event(&store, EventKind::BackupFailed, name),
                last_drill: last_event(&store, EventKind::DrillSucceeded, name),
            },
        );
    }
    facts
}
