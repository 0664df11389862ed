//! `steward converge plan|apply`: show and make the changes a host (or a root
//! directory) needs to match the spec's `[converge.*]` sets.

use std::path::{Path, PathBuf};
use std::time::Instant;

use steward_converge::{Action, Converger, Outcome, Plan, RunLock, Status, Target};
use steward_spec::OsResolver;

use crate::{exit, load_spec};
use steward_state::{EventKind, EventLog, NewEvent, Severity, Store};

/// Plan or apply.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Plan,
    Apply,
}

/// Command-line options shared by both modes.
pub(crate) struct Options {
    pub(crate) sets: Vec<String>,
    pub(crate) root: Option<PathBuf>,
    pub(crate) json: bool,
    pub(crate) show_secrets: bool,
}

pub(crate) fn run(spec_path: &Path, mode: Mode, opts: Options) -> u8 {
    let spec = match load_spec(spec_path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let sets = match crate::select(
        &spec,
        &spec.converge,
        &opts.sets,
        "converge set",
        "converge.NAME",
    ) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("error: {msg}");
            return exit::USAGE;
        }
    };
    let target = match &opts.root {
        Some(dir) => match dir.canonicalize() {
            Ok(d) if d.is_dir() => Target::root(d),
            _ => {
                eprintln!("error: --root `{}` is not a directory", dir.display());
                return exit::USAGE;
            }
        },
        None => Target::host(),
    };
    // A plan reads the journal when there is one but never creates state.
    let db_exists = spec.settings.state_dir.join("state.db").exists();
    let store = if mode == Mode::Apply || db_exists {
        match Store::open(&spec.settings.state_dir) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILED;
            }
        }
    } else {
        None
    };
    let lock = if mode == Mode::Apply {
        match RunLock::acquire(&spec.settings.state_dir) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILED;
            }
        }
    } else {
        None
    };
    let mut code = exit::OK;
    let mut plans = Vec::new();
    let mut reports = Vec::new();
    for set in sets {
        let started = Instant::now();
        let conv = match Converger::new(
            set,
            target.clone(),
            &OsResolver,
            store
                .as_ref()
                .map(|s| s as &dyn steward_state::ConvergeJournal),
        ) {
            Ok(c) => c.show_secrets(opts.show_secrets),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILED;
            }
        };
        match mode {
            Mode::Plan => match conv.plan() {
                Ok(plan) => {
                    if !plan.is_empty() {
                        code = exit::FAILED;
                    }
                    if !opts.json {
                        print_plan(&plan);
                    }
                    plans.push(plan);
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::FAILED;
                }
            },
            Mode::Apply => {
                if !opts.json {
                    println!("converge set `{}` on {}", set.name, target.dir().display());
                }
                let json = opts.json;
                let mut show = |o: &Outcome| {
                    if !json {
                        print_outcome(o)
                    }
                };
                let lock = lock.as_ref().expect("apply holds the lock");
                match conv.apply(lock, &mut show) {
                    Ok(report) => {
                        let (changed, failed, skipped) = (
                            report.count(Status::Changed),
                            report.count(Status::Failed),
                            report.count(Status::Skipped),
                        );
                        let secs = started.elapsed().as_secs_f64();
                        if !opts.json {
                            println!(
                                "Apply: {changed} changed, {} unchanged, {failed} failed, {skipped} skipped ({secs:.2} s)",
                                report.count(Status::Unchanged)
                            );
                        }
                        if failed + skipped > 0 {
                            code = exit::FAILED;
                        }
                        if let Some(store) = &store
                            && (changed + failed + skipped > 0)
                        {
                            let (kind, severity) = if failed + skipped > 0 {
                                (EventKind::ConvergeFailed, Severity::Error)
                            } else {
                                (EventKind::ConvergeApplied, Severity::Info)
                            };
                            store.record(&NewEvent::now(
                                kind,
                                &set.name,
                                severity,
                                format!(
                                    "{changed} changed, {failed} failed, {skipped} skipped on {}",
                                    target.dir().display()
                                ),
                                serde_json::to_value(&report).unwrap_or_default(),
                            ));
                        }
                        reports.push(report);
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return exit::FAILED;
                    }
                }
            }
        }
    }
    if opts.json {
        let out = match mode {
            Mode::Plan => serde_json::to_string_pretty(&plans),
            Mode::Apply => serde_json::to_string_pretty(&reports),
        };
        println!("{}", out.expect("JSON"));
    }
    code
}

fn sigil(a: Action) -> char {
    match a {
        Action::Create => '+',
        Action::Update => '~',
        Action::Remove => '-',
        Action::Run | Action::Refresh => '>',
    }
}

/// The human plan: one line per change, its diff indented under it.
pub(crate) fn print_plan(plan: &Plan) {
    print!("{}", render_plan(plan));
}

/// The plan as text (also used by tests through the binary's output).
pub(crate) fn render_plan(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let n = plan.changes.len();
    let _ = writeln!(
        s,
        "converge set `{}` on {}: {}",
        plan.set,
        plan.root,
        if n == 0 && plan.errors.is_empty() {
            "no changes".to_string()
        } else {
            format!("{n} change{}", if n == 1 { "" } else { "s" })
        }
    );
    for c in &plan.changes {
        let _ = writeln!(
            s,
            "  {} {}  {}",
            sigil(c.action),
            c.id,
            c.details.join(", ")
        );
        if let Some(d) = &c.diff {
            for line in d.lines() {
                let _ = writeln!(s, "      {line}");
            }
        }
    }
    for e in &plan.errors {
        let _ = writeln!(s, "  ! {}  {}", e.id, e.message);
    }
    for o in &plan.orphans {
        let _ = writeln!(
            s,
            "  ? {o}  no longer in the spec; left in place (declare it with `ensure = \"absent\"` to remove it)"
        );
    }
    if n > 0 || !plan.errors.is_empty() {
        let count = |a: &[Action]| {
            plan.changes
                .iter()
                .filter(|c| a.contains(&c.action))
                .count()
        };
        let _ = writeln!(
            s,
            "Plan: {} to create, {} to update, {} to remove, {} to run{}.",
            count(&[Action::Create]),
            count(&[Action::Update]),
            count(&[Action::Remove]),
            count(&[Action::Run, Action::Refresh]),
            if plan.errors.is_empty() {
                String::new()
            } else {
                format!(", {} with errors", plan.errors.len())
            }
        );
    }
    s
}

fn print_outcome(o: &Outcome) {
    match o.status {
        Status::Unchanged => {}
        Status::Changed => println!("  changed  {}  {}", o.id, o.details.join(", ")),
        Status::Failed => println!(
            "  FAILED   {}  {}",
            o.id,
            o.message.as_deref().unwrap_or_default()
        ),
        Status::Skipped => println!(
            "  skipped  {}  {}",
            o.id,
            o.message.as_deref().unwrap_or_default()
        ),
    }
}
