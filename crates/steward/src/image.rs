//! `steward image build|list|audit`: gold images.

use std::path::Path;

use steward_spec::OsResolver;

use crate::{exit, load_spec};
use steward_state::{EventKind, EventLog, NewEvent, Severity, Store};

/// What to do.
pub(crate) enum Action {
    Build { names: Vec<String>, json: bool },
    List { names: Vec<String>, json: bool },
    Audit { names: Vec<String>, json: bool },
}

pub(crate) fn run(spec_path: &Path, action: Action) -> u8 {
    let spec = match load_spec(spec_path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (names, json) = match &action {
        Action::Build { names, json }
        | Action::List { names, json }
        | Action::Audit { names, json } => (names.clone(), *json),
    };
    let images = match crate::select(&spec, &spec.images, &names, "image", "image.NAME") {
        Ok(i) => i,
        Err(msg) => {
            eprintln!("error: {msg}");
            return exit::USAGE;
        }
    };
    let state = Store::open(&spec.settings.state_dir).ok();
    let record = |kind: EventKind,
                  subject: &str,
                  severity: Severity,
                  message: String,
                  data: serde_json::Value| {
        if let Some(s) = &state {
            s.record(&NewEvent::now(kind, subject, severity, message, data));
        }
    };
    let resolver = OsResolver;
    let mut code = exit::OK;
    let mut out = Vec::new();
    for image in images {
        let result = match &action {
            Action::Build { .. } => {
                let mut say = |m: &str| {
                    if !json {
                        eprintln!("image `{}`: {m}", image.name);
                    }
                };
                steward_image::build(&spec, image, &resolver, &mut say).map(|r| {
                    if !json {
                        println!(
                            "image `{}`: {} {} ({} packages, {:.1} MiB) in {:.1} s",
                            image.name,
                            if r.reused { "reused" } else { "built" },
                            r.manifest.digest,
                            r.manifest.packages.len(),
                            r.manifest.size as f64 / 1048576.0,
                            r.seconds
                        );
                    }
                    if !r.reused {
                        record(
                            EventKind::ImageBuilt,
                            &image.name,
                            Severity::Info,
                            format!("built {}", r.manifest.digest),
                            serde_json::json!({"digest": r.manifest.digest, "inputs": r.manifest.inputs, "size": r.manifest.size}),
                        );
                    }
                    out.push(serde_json::to_value(&r).unwrap_or_default());
                })
            }
            Action::List { .. } => steward_image::list(&spec, image, &resolver).map(|list| {
                if !json {
                    println!("image `{}`: {} build(s)", image.name, list.len());
                    for m in &list {
                        println!(
                            "  {}  {}  {} packages  {:.1} MiB{}",
                            m.digest,
                            m.created,
                            m.packages.len(),
                            m.size as f64 / 1048576.0,
                            m.version.as_ref().map(|v| format!("  version {v}")).unwrap_or_default()
                        );
                    }
                }
                out.push(serde_json::json!({"image": image.name, "builds": list}));
            }),
            Action::Audit { .. } => steward_image::audit(&spec, image, &resolver).map(|r| {
                if !json {
                    println!(
                        "image `{}` {}: {:.1} days old{}, {} outdated package(s) ({} from security updates){}",
                        image.name,
                        r.manifest.digest,
                        r.age_days,
                        if r.too_old { " (too old)" } else { "" },
                        r.outdated.len(),
                        r.outdated.iter().filter(|o| o.security).count(),
                        if r.stale { " — stale, rebuild it" } else { "" }
                    );
                    for o in &r.outdated {
                        println!(
                            "  {}{}: {} → {}",
                            o.name,
                            if o.security { " [security]" } else { "" },
                            o.installed,
                            o.available
                        );
                    }
                }
                if r.stale {
                    code = exit::FAILED;
                    record(
                        EventKind::ImageStale,
                        &image.name,
                        Severity::Warning,
                        format!("{} outdated package(s), {:.1} days old", r.outdated.len(), r.age_days),
                        serde_json::to_value(&r).unwrap_or_default(),
                    );
                }
                out.push(serde_json::to_value(&r).unwrap_or_default());
            }),
        };
        if let Err(e) = result {
            eprintln!("error: image `{}`: {e}", image.name);
            code = exit::FAILED;
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    }
    code
}
