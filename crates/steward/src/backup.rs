//! `steward backup …`: run, list, restore, forget, prune, check, drill, policy.

use std::path::{Path, PathBuf};

use steward_backup::BackupError;
use steward_spec::{Backup, OsResolver, Spec};

use crate::{exit, load_spec, table};
use steward_state::{EventKind, EventLog, NewEvent, Severity, Store};

/// What to do.
pub(crate) enum Action {
    Run {
        names: Vec<String>,
        json: bool,
    },
    List {
        names: Vec<String>,
        json: bool,
    },
    Restore {
        name: String,
        snapshot: Option<String>,
        target: Option<PathBuf>,
        to_postgres: Option<String>,
    },
    Forget {
        names: Vec<String>,
        dry_run: bool,
        json: bool,
    },
    Prune {
        names: Vec<String>,
    },
    Check {
        names: Vec<String>,
        read_data: bool,
    },
    Drill {
        names: Vec<String>,
        json: bool,
    },
    Policy {
        json: bool,
    },
}

fn mb(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn record(
    state: Option<&Store>,
    kind: EventKind,
    subject: &str,
    severity: Severity,
    message: String,
    data: serde_json::Value,
) {
    if let Some(s) = state {
        s.record(&NewEvent::now(kind, subject, severity, message, data));
    }
}

pub(crate) fn run(spec_path: &Path, action: Action) -> u8 {
    let spec = match load_spec(spec_path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let names = match &action {
        Action::Run { names, .. }
        | Action::List { names, .. }
        | Action::Forget { names, .. }
        | Action::Prune { names }
        | Action::Check { names, .. }
        | Action::Drill { names, .. } => names.clone(),
        Action::Policy { json } => return policy(&spec, *json),
        Action::Restore { name, .. } => vec![name.clone()],
    };
    let backups = match crate::select(&spec, &spec.backups, &names, "backup", "backup.NAME") {
        Ok(b) => b,
        Err(msg) => {
            eprintln!("error: {msg}");
            return exit::USAGE;
        }
    };
    // Events go to the state database; reading commands never create it.
    let writes = matches!(
        action,
        Action::Run { .. }
            | Action::Drill { .. }
            | Action::Forget { dry_run: false, .. }
            | Action::Prune { .. }
            | Action::Check { .. }
            | Action::Restore { .. }
    );
    let state = if writes || spec.settings.state_dir.join("state.db").exists() {
        Store::open(&spec.settings.state_dir).ok()
    } else {
        None
    };
    let resolver = OsResolver;
    let json = matches!(
        action,
        Action::Run { json: true, .. }
            | Action::List { json: true, .. }
            | Action::Forget { json: true, .. }
            | Action::Drill { json: true, .. }
    );
    if !json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        steward_backup::enable_terminal_progress();
    }
    let mut code = exit::OK;
    let mut json_out = Vec::new();
    // Backups may share a repository (same store and path): check and prune each
    // once, and decide that before opening it (opening derives the key: slow).
    let mut seen = std::collections::BTreeSet::new();
    for b in backups {
        let result: Result<(), BackupError> = (|| match &action {
            Action::Run { json, .. } => {
                let opened = steward_backup::open(&spec, b, &resolver, true)?;
                if !json {
                    println!(
                        "backup `{}` ({}) → {}",
                        b.name,
                        b.source.kind(),
                        opened.location
                    );
                }
                match opened.run(&resolver) {
                    Ok(r) => {
                        if *json {
                            json_out.push(serde_json::to_value(&r).unwrap_or_default());
                        } else {
                            println!(
                                "  snapshot {}: {} files, {} read, {} new, in {:.1} s",
                                r.snapshot.short_id,
                                r.snapshot.files,
                                mb(r.snapshot.bytes),
                                mb(r.snapshot.added),
                                r.seconds
                            );
                        }
                        if let Some(note) = r.partial_note() {
                            eprintln!("warning: backup `{}`: {note}", b.name);
                        }
                        let mut message = format!(
                            "snapshot {} ({} new) in {:.1} s",
                            r.snapshot.short_id,
                            mb(r.snapshot.added),
                            r.seconds
                        );
                        if let Some(note) = r.partial_note() {
                            message = format!("{message}; {note}");
                        }
                        record(
                            state.as_ref(),
                            EventKind::BackupSucceeded,
                            &b.name,
                            r.severity(),
                            message,
                            serde_json::to_value(&r).unwrap_or_default(),
                        );
                        Ok(())
                    }
                    Err(e) => {
                        record(
                            state.as_ref(),
                            EventKind::BackupFailed,
                            &b.name,
                            Severity::Error,
                            e.to_string(),
                            serde_json::json!({}),
                        );
                        Err(e)
                    }
                }
            }
            Action::List { json, .. } => {
                let opened = steward_backup::open(&spec, b, &resolver, false)?;
                let snaps = opened.snapshots()?;
                if *json {
                    json_out.push(serde_json::json!({"backup": b.name, "location": opened.location, "snapshots": snaps}));
                } else {
                    println!(
                        "backup `{}` at {}: {} snapshot(s)",
                        b.name,
                        opened.location,
                        snaps.len()
                    );
                    let rows: Vec<Vec<String>> = snaps
                        .iter()
                        .map(|s| {
                            vec![
                                s.short_id.clone(),
                                s.time.clone(),
                                s.files.to_string(),
                                mb(s.bytes),
                                mb(s.added),
                                s.paths.join(" "),
                                if s.tags.iter().any(|t| t == steward_backup::PARTIAL) {
                                    "partial: some files could not be read".into()
                                } else {
                                    String::new()
                                },
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        table::render(
                            &["ID", "TIME", "FILES", "SIZE", "ADDED", "PATHS", "NOTE"],
                            &rows
                        )
                    );
                }
                Ok(())
            }
            Action::Restore {
                snapshot,
                target,
                to_postgres,
                ..
            } => {
                let opened = steward_backup::open(&spec, b, &resolver, false)?;
                if let Some(url) = to_postgres {
                    let started = std::time::Instant::now();
                    let snap = restore_postgres(opened, b, snapshot.as_deref(), url)?;
                    println!(
                        "restored snapshot {} of `{}` into the database in {:.1} s",
                        snap.short_id,
                        b.name,
                        started.elapsed().as_secs_f64()
                    );
                    record(
                        state.as_ref(),
                        EventKind::BackupRestored,
                        &b.name,
                        Severity::Info,
                        format!("snapshot {} restored into a database", snap.short_id),
                        serde_json::json!({"snapshot": snap.id}),
                    );
                } else {
                    let target = target
                        .clone()
                        .expect("clap requires --target or --to-postgres");
                    let r = opened.restore(snapshot.as_deref(), &target)?;
                    println!(
                        "restored snapshot {} of `{}` to {} in {:.1} s",
                        r.snapshot.short_id, b.name, r.target, r.seconds
                    );
                    record(
                        state.as_ref(),
                        EventKind::BackupRestored,
                        &b.name,
                        Severity::Info,
                        format!("snapshot {} restored to {}", r.snapshot.short_id, r.target),
                        serde_json::to_value(&r).unwrap_or_default(),
                    );
                }
                Ok(())
            }
            Action::Forget { dry_run, json, .. } => {
                let opened = steward_backup::open(&spec, b, &resolver, false)?;
                let decisions = opened.forget(*dry_run)?;
                let gone = decisions.iter().filter(|(_, d)| !d.keep).count();
                if !dry_run && gone > 0 {
                    record(
                        state.as_ref(),
                        EventKind::BackupForgot,
                        &b.name,
                        Severity::Info,
                        format!("{gone} snapshot(s) removed by retention"),
                        serde_json::json!({"removed": gone}),
                    );
                }
                if *json {
                    json_out.push(serde_json::json!({
                        "backup": b.name,
                        "dry_run": dry_run,
                        "snapshots": decisions.iter().map(|(s, d)| serde_json::json!({
                            "id": s.id, "short_id": s.short_id, "time": s.time,
                            "keep": d.keep, "reasons": d.reasons,
                        })).collect::<Vec<_>>(),
                    }));
                    return Ok(());
                }
                println!(
                    "backup `{}`: {} kept, {} {}",
                    b.name,
                    decisions.len() - gone,
                    gone,
                    if *dry_run {
                        "would be removed"
                    } else {
                        "removed"
                    }
                );
                let rows: Vec<Vec<String>> = decisions
                    .iter()
                    .map(|(s, d)| {
                        vec![
                            s.short_id.clone(),
                            s.time.clone(),
                            if d.keep {
                                "keep".into()
                            } else if *dry_run {
                                "would remove".into()
                            } else {
                                "removed".into()
                            },
                            d.reasons.join(", "),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(&["ID", "TIME", "ACTION", "REASONS"], &rows)
                );
                Ok(())
            }
            Action::Drill { json, .. } => match steward_backup::drill(&spec, b, &resolver) {
                Ok(r) => {
                    if *json {
                        json_out.push(serde_json::to_value(&r).unwrap_or_default());
                    } else {
                        println!(
                            "drill `{}`: snapshot {} restored and verified in {:.1} s",
                            b.name, r.snapshot.short_id, r.seconds
                        );
                        for v in &r.verified {
                            println!("  ✓ {v}");
                        }
                    }
                    record(
                        state.as_ref(),
                        EventKind::DrillSucceeded,
                        &b.name,
                        Severity::Info,
                        format!(
                            "snapshot {} restored and verified in {:.1} s",
                            r.snapshot.short_id, r.seconds
                        ),
                        serde_json::to_value(&r).unwrap_or_default(),
                    );
                    Ok(())
                }
                Err(e) => {
                    record(
                        state.as_ref(),
                        EventKind::DrillFailed,
                        &b.name,
                        Severity::Error,
                        e.to_string(),
                        serde_json::json!({"error": e.to_string()}),
                    );
                    Err(e)
                }
            },
            Action::Policy { .. } => Ok(()),
            Action::Prune { .. } => {
                if !seen.insert((b.store.clone(), b.repository.clone())) {
                    println!("backup `{}` shares a repository pruned above", b.name);
                    return Ok(());
                }
                let opened = steward_backup::open(&spec, b, &resolver, false)?;
                let r = opened.prune()?;
                println!(
                    "backup `{}`: {} pack(s) deleted, {} repacked",
                    b.name, r.packs_removed, r.repacked
                );
                Ok(())
            }
            Action::Check { read_data, .. } => {
                if !seen.insert((b.store.clone(), b.repository.clone())) {
                    println!("backup `{}` shares a repository checked above", b.name);
                    return Ok(());
                }
                let opened = steward_backup::open(&spec, b, &resolver, false)?;
                let location = opened.location.clone();
                let report = opened.check(*read_data)?;
                for w in &report.warnings {
                    println!("  warning: {w}");
                }
                if report.errors.is_empty() {
                    println!(
                        "backup `{}` at {location}: no errors{}{}",
                        b.name,
                        if *read_data { " (all data read)" } else { "" },
                        if report.warnings.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; {} warning(s) (`steward backup prune` removes leftovers)",
                                report.warnings.len()
                            )
                        }
                    );
                    Ok(())
                } else {
                    for p in &report.errors {
                        println!("  error: {p}");
                    }
                    record(
                        state.as_ref(),
                        EventKind::BackupCheckFailed,
                        &b.name,
                        Severity::Error,
                        format!("{} error(s) in {location}", report.errors.len()),
                        serde_json::to_value(&report).unwrap_or_default(),
                    );
                    Err(BackupError::Repo(format!(
                        "{} error(s) found in {location}",
                        report.errors.len()
                    )))
                }
            }
        })();
        if let Err(e) = result {
            eprintln!("error: backup `{}`: {e}", b.name);
            code = exit::FAILED;
        }
    }
    if matches!(
        action,
        Action::Run { json: true, .. }
            | Action::List { json: true, .. }
            | Action::Forget { json: true, .. }
            | Action::Drill { json: true, .. }
    ) {
        println!("{}", serde_json::to_string_pretty(&json_out).expect("JSON"));
    }
    code
}

/// Streams a dump snapshot into `pg_restore` (no temporary file).
fn restore_postgres(
    opened: steward_backup::Opened,
    b: &Backup,
    snapshot: Option<&str>,
    url: &str,
) -> Result<steward_backup::SnapshotInfo, BackupError> {
    let bin_dir = match &b.source {
        steward_spec::Source::Postgres { bin_dir, .. } => bin_dir.clone(),
        _ => {
            return Err(BackupError::Source(format!(
                "backup `{}` is not a postgres backup",
                b.name
            )));
        }
    };
    steward_backup::restore_into_postgres(opened, snapshot, url, bin_dir.as_deref())
}

fn when(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "never".into())
}

/// Retention in words, and roughly how far back it reaches.
fn retention_words(k: &steward_spec::Keep) -> String {
    if k.is_empty() {
        return "everything, forever (no `keep`)".into();
    }
    let mut parts = Vec::new();
    for (n, what) in [
        (k.last, "latest"),
        (k.hourly, "hourly"),
        (k.daily, "daily"),
        (k.weekly, "weekly"),
        (k.monthly, "monthly"),
        (k.yearly, "yearly"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if let Some(w) = k.within {
        parts.push(format!("all within {w} of the newest"));
    }
    if !k.tags.is_empty() {
        parts.push(format!("tagged {}", k.tags.join(", ")));
    }
    let days = [
        k.hourly as f64 / 24.0,
        k.daily as f64,
        k.weekly as f64 * 7.0,
        k.monthly as f64 * 30.4,
        k.yearly as f64 * 365.0,
        k.within
            .map(|w| w.0.as_secs_f64() / 86_400.0)
            .unwrap_or(0.0),
    ]
    .into_iter()
    .fold(0.0, f64::max);
    if days >= 1.0 {
        format!(
            "{} (about {} back)",
            parts.join(", "),
            if days >= 60.0 {
                format!("{:.0} months", days / 30.4)
            } else {
                format!("{days:.0} days")
            }
        )
    } else {
        parts.join(", ")
    }
}

fn what(b: &Backup) -> String {
    use steward_spec::Source;
    match &b.source {
        Source::Paths { paths, exclude } => format!(
            "files {}{}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if exclude.is_empty() {
                String::new()
            } else {
                format!(" (excluding {})", exclude.join(", "))
            }
        ),
        Source::Postgres { url, .. } => format!("PostgreSQL dump of {}", url.as_written()),
        Source::Sqlite { path } => format!("SQLite database {}", path.display()),
        Source::Command { command, .. } => format!("output of `{}`", command.join(" ")),
        Source::Logs { paths } => format!("logs {} (with rotations)", paths.join(", ")),
    }
}

/// `steward backup policy`: the seed's review of what is backed up and for how
/// long, with the gaps doctor finds in it.
fn policy(spec: &Spec, json: bool) -> u8 {
    let now = steward_state::now_ms();
    let facts = crate::doctor::facts(spec, now);
    let gaps: Vec<_> = steward_doctor::diagnose(spec, &facts)
        .into_iter()
        .filter(|f| f.rule.starts_with("backup") || f.rule == "database-not-backed-up")
        .collect();
    let rows: Vec<serde_json::Value> = spec
        .backups
        .values()
        .map(|b| {
            let f = facts.backups.get(&b.name).cloned().unwrap_or_default();
            let next = b
                .schedule
                .as_ref()
                .and_then(|s| s.find_next_occurrence(&chrono::Utc::now(), false).ok())
                .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string());
            serde_json::json!({
                "backup": b.name,
                "what": what(b),
                "store": b.store,
                "repository": b.repository,
                "schedule": b.schedule_text,
                "next_run": next,
                "retention": retention_words(&b.keep),
                "last_success": f.last_success,
                "last_failure": f.last_failure,
                "last_drill": f.last_drill,
                "drill_schedule": b.drill.as_ref().map(|d| d.schedule.is_some()),
            })
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"backups": rows, "gaps": gaps}))
                .expect("JSON")
        );
    } else {
        if spec.backups.is_empty() {
            println!("Nothing is backed up.");
        }
        for b in spec.backups.values() {
            let f = facts.backups.get(&b.name).cloned().unwrap_or_default();
            println!("backup `{}`", b.name);
            println!("  what:      {}", what(b));
            println!(
                "  where:     store `{}`, repository `{}`",
                b.store, b.repository
            );
            println!(
                "  how often: {}",
                match (&b.schedule_text, &b.schedule) {
                    (Some(t), Some(s)) => format!(
                        "`{t}` (next {})",
                        s.find_next_occurrence(&chrono::Utc::now(), false)
                            .map(|n| n.format("%Y-%m-%d %H:%M UTC").to_string())
                            .unwrap_or_else(|_| "never".into())
                    ),
                    _ => "by hand only".into(),
                }
            );
            println!("  kept:      {}", retention_words(&b.keep));
            println!(
                "  last run:  {} (last failure: {})",
                when(f.last_success),
                when(f.last_failure)
            );
            println!(
                "  restored:  {}",
                match f.last_drill {
                    Some(_) => format!("last drill passed {}", when(f.last_drill)),
                    None if b.drill.is_some() => "drills configured; none has passed yet".into(),
                    None => "never drilled".into(),
                }
            );
        }
        if !gaps.is_empty() {
            println!("\ngaps:");
            for g in &gaps {
                println!("  {:<24} {:<20} {}", g.rule, g.subject, g.message);
                println!("  {:<24} {:<20} fix: {}", "", "", g.fix);
            }
        }
    }
    if gaps
        .iter()
        .any(|g| g.severity == steward_doctor::Severity::Error)
    {
        exit::FAILED
    } else {
        exit::OK
    }
}
