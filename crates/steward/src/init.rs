//! `steward init`: what runs here → a starter spec, then `validate` and
//! `doctor` on it and the steps left.

use std::io::IsTerminal;
use std::path::Path;

use steward_init::{Component, Findings, Format, Protocol};

use crate::exit;

/// Options of `steward init`.
pub(crate) struct Options {
    /// Take every finding without asking.
    pub(crate) yes: bool,
    /// Only print the findings as JSON; write nothing.
    pub(crate) json: bool,
    /// Replace an existing spec (kept as `FILE.bak`).
    pub(crate) force: bool,
    /// Only these listening ports.
    pub(crate) ports: Vec<u16>,
}

pub(crate) fn run(spec_path: &Path, o: Options) -> u8 {
    if !o.json && spec_path.exists() && !o.force {
        eprintln!(
            "error: {} exists, and steward init never writes over a spec\n  help: `steward validate` and `steward doctor` check the one you have; `steward init --force` replaces it (the old one is kept as {}.bak); `-f OTHER.toml` writes elsewhere",
            spec_path.display(),
            spec_path.display()
        );
        return exit::USAGE;
    }
    let interactive = !o.json && !o.yes;
    if interactive && !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        eprintln!(
            "error: not a terminal, so steward init cannot ask about each finding\n  help: `steward init --yes` takes every finding; `steward init --json` only prints them"
        );
        return exit::USAGE;
    }
    if !o.json {
        eprintln!(
            "Looking at this machine: listening ports, the processes behind them, what each speaks…"
        );
    }
    let findings = match crate::runtime().block_on(steward_init::discover(&o.ports)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: cannot read /proc: {e}");
            return exit::FAILED;
        }
    };
    if o.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&findings).expect("findings serialise")
        );
        return exit::OK;
    }
    let mut findings = findings;
    print_findings(&findings);
    if interactive {
        let mut kept = Vec::new();
        for c in findings.components.drain(..) {
            let take = dialoguer::Confirm::new()
                .with_prompt(format!("Add {} ({})?", c.name, summary(&c)))
                .default(true)
                .interact();
            match take {
                Ok(true) => kept.push(c),
                Ok(false) => {}
                Err(e) => {
                    eprintln!("error: {e}; nothing written");
                    return exit::USAGE;
                }
            }
        }
        findings.components = kept;
    }
    if findings.components.is_empty() {
        eprintln!(
            "\nNothing to write a spec for. examples/quickstart.toml (checks only) and examples/fractals.toml (everything) are starting points; README.md, \"The spec\", lists every key."
        );
        return exit::FAILED;
    }
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let listen = dashboard_address();
    let rendered = steward_init::write::render(&findings, &now, &listen);
    if let Err(e) = write_spec(spec_path, &rendered.text) {
        eprintln!("error: cannot write {}: {e}", spec_path.display());
        return exit::FAILED;
    }
    println!("\nWrote {}.", spec_path.display());
    if !rendered.todo.is_empty() {
        println!("\nIts secrets are references; before it validates:");
        for t in &rendered.todo {
            println!("  {t}");
        }
    }
    println!("\n$ steward validate");
    let valid = match crate::load_spec(spec_path) {
        Ok(spec) => {
            println!(
                "{}: valid ({} checks, {} backups)",
                spec_path.display(),
                spec.checks.len(),
                spec.backups.len()
            );
            true
        }
        Err(_) => {
            println!("(not yet: see above — the steps before it validates)");
            false
        }
    };
    if valid {
        println!("\n$ steward doctor");
        crate::doctor::run(spec_path, false);
    }
    let f = if spec_path == Path::new("steward.toml") {
        String::new()
    } else {
        format!("-f {} ", spec_path.display())
    };
    println!("\nNext:");
    let mut step = 1;
    if !rendered.todo.is_empty() {
        println!("  {step}. set the variables above (in the shell that runs steward)");
        step += 1;
    }
    println!("  {step}. steward {f}check                       # every check once");
    println!(
        "  {}. steward {f}backup run && steward {f}backup drill   # a first backup, restored and verified",
        step + 1
    );
    println!(
        "  {}. add an alert channel (the commented [alert.team]) and prove it: steward {f}alert test",
        step + 2
    );
    println!(
        "  {}. steward {f}serve                       # checks on their intervals, backups on their schedules, the dashboard",
        step + 3
    );
    exit::OK
}

/// Where the new spec's `serve` listens: 127.0.0.1:7070, or the next free
/// port after it when something (another steward, say) has it.
fn dashboard_address() -> String {
    (7070..7100)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .map(|p| format!("127.0.0.1:{p}"))
        .unwrap_or_else(|| "127.0.0.1:7070".into())
}

/// Writes the spec through a temporary file, keeping a spec it replaces as
/// `FILE.bak`.
fn write_spec(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    if path.exists() {
        let mut bak = path.as_os_str().to_owned();
        bak.push(".bak");
        std::fs::copy(path, bak)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".init-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn print_findings(f: &Findings) {
    if f.components.is_empty() {
        eprintln!("Found nothing steward knows how to watch.");
    }
    for c in &f.components {
        eprintln!(
            "  found {:<12} {:<22} {}",
            c.name,
            c.addr.to_string(),
            summary(c)
        );
    }
    if !f.skipped.is_empty() {
        eprintln!(
            "  left out {} listening port(s) (`steward init --json` lists them and why)",
            f.skipped.len()
        );
    }
    if f.hidden_sockets > 0 {
        eprintln!(
            "  {} listening socket(s) belong to processes of other users: run as root to see them",
            f.hidden_sockets
        );
    }
    let secrets: Vec<String> = f
        .components
        .iter()
        .filter_map(|c| c.process.as_ref())
        .flat_map(|p| {
            p.secrets
                .iter()
                .map(move |s| format!("{} (pid {} {})", s.var, p.pid, p.name))
        })
        .collect();
    if !secrets.is_empty() {
        eprintln!(
            "  credentials seen in environments (names only; never copied into the spec): {}",
            secrets.join(", ")
        );
    }
}

/// One line about a component.
fn summary(c: &Component) -> String {
    let mut parts = vec![match c.protocol {
        Protocol::Postgres => "PostgreSQL".to_string(),
        Protocol::Mysql => "MySQL protocol".into(),
        Protocol::Redis if c.auth_required => "Redis (password set)".into(),
        Protocol::Redis => "Redis".into(),
        Protocol::Amqp => "AMQP".into(),
        Protocol::Http => {
            let eps: Vec<String> = c
                .endpoints
                .iter()
                .map(|e| {
                    let f = match e.format {
                        Format::HealthJson => " health+json",
                        Format::Json => " JSON",
                        Format::Prometheus => " Prometheus",
                        Format::Other => "",
                    };
                    format!("{}{f}", e.path)
                })
                .collect();
            format!("HTTP {}", eps.join(", "))
        }
        Protocol::Unknown => "unknown".into(),
    }];
    if let Some(v) = &c.server {
        parts.push(v.clone());
    }
    if let Some(p) = &c.process {
        parts.push(format!("pid {} {}", p.pid, p.name));
        if let Some(u) = &p.unit {
            parts.push(u.clone());
        }
        for db in &p.sqlite {
            parts.push(format!("SQLite {}", db.display()));
        }
        if !p.logs.is_empty() {
            parts.push(format!("{} log file(s)", p.logs.len()));
        }
    }
    if let Some(d) = &c.data_dir {
        parts.push(format!("data {}", d.display()));
    }
    parts.join(", ")
}
