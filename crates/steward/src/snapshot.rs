//! `steward snapshot`: snapshots of servers on OpenStack (`[snapshot.NAME]`).

use std::path::Path;
use std::sync::Arc;

use steward_fleet::snapshot::{UPLOAD_LIMIT, drill, provider_for, retain, server_of};
use steward_spec::{OsResolver, Resolver, Spec};

use crate::exit;

/// What to do.
pub(crate) enum Action {
    Take {
        name: String,
        server: Option<String>,
    },
    List {
        names: Vec<String>,
        json: bool,
    },
    Restore {
        name: String,
        id: Option<String>,
    },
    Forget {
        names: Vec<String>,
        dry_run: bool,
    },
    Drill {
        names: Vec<String>,
        json: bool,
    },
}

pub(crate) fn run(spec_path: &Path, action: Action) -> u8 {
    let spec = match crate::load_spec(spec_path) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let resolver: Arc<dyn Resolver> = Arc::new(OsResolver);
    let rt = crate::runtime();
    let names = match &action {
        Action::Take { name, .. } | Action::Restore { name, .. } => vec![name.clone()],
        Action::List { names, .. } | Action::Forget { names, .. } | Action::Drill { names, .. } => {
            names.clone()
        }
    };
    let chosen = match crate::select(&spec, &spec.snapshots, &names, "snapshot", "snapshot.NAME") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let mut code = exit::OK;
    let mut json_out = Vec::new();
    for snap in chosen {
        let os = match provider_for(&spec, snap, resolver.clone()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: [snapshot.{}]: {e}", snap.name);
                return exit::USAGE;
            }
        };
        match &action {
            Action::Take { server, .. } => {
                let server = match server.clone().map(Ok).unwrap_or_else(|| {
                    crate::fleet::open(&spec)
                        .map_err(|_| "cannot read the fleet's records".to_string())
                        .and_then(|store| server_of(&store, snap))
                }) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: [snapshot.{}]: {e}", snap.name);
                        return exit::FAILED;
                    }
                };
                eprintln!(
                    "snapshot {}: taking one of server {server} (Nova createImage; waiting for its upload)",
                    snap.name
                );
                let started = std::time::Instant::now();
                match rt.block_on(os.take_snapshot(&snap.name, &server, UPLOAD_LIMIT)) {
                    Ok(s) => println!(
                        "snapshot {}: {} ({}, {}) in {:.1} s",
                        snap.name,
                        s.id,
                        s.name,
                        s.size.map(size).unwrap_or_else(|| "size unknown".into()),
                        started.elapsed().as_secs_f64()
                    ),
                    Err(e) => {
                        eprintln!("error: snapshot {}: {e}", snap.name);
                        code = exit::FAILED;
                    }
                }
            }
            Action::List { json, .. } => match rt.block_on(os.snapshots(&snap.name)) {
                Ok(list) if *json => json_out.push(serde_json::json!({
                    "snapshot": snap.name, "service": snap.service, "snapshots": list,
                })),
                Ok(list) => {
                    println!(
                        "snapshot {} (service {}): {} snapshot(s)",
                        snap.name,
                        snap.service,
                        list.len()
                    );
                    for s in list {
                        println!(
                            "  {}  {}  {:<8} {:>10}  of server {}",
                            s.id,
                            s.created.format("%Y-%m-%d %H:%M:%S"),
                            s.status,
                            s.size.map(size).unwrap_or_default(),
                            s.server
                        );
                    }
                }
                Err(e) => {
                    eprintln!("error: snapshot {}: {e}", snap.name);
                    code = exit::FAILED;
                }
            },
            Action::Forget { dry_run, .. } => {
                let list = match rt.block_on(os.snapshots(&snap.name)) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("error: snapshot {}: {e}", snap.name);
                        code = exit::FAILED;
                        continue;
                    }
                };
                for (s, d) in retain(&list, snap) {
                    if d.keep {
                        println!(
                            "keep    {}  {}  ({})",
                            s.id,
                            s.created.format("%Y-%m-%d %H:%M"),
                            d.reasons.join(", ")
                        );
                    } else if *dry_run {
                        println!(
                            "would remove {}  {}",
                            s.id,
                            s.created.format("%Y-%m-%d %H:%M")
                        );
                    } else {
                        match rt.block_on(os.delete_snapshot(&s.id)) {
                            Ok(()) => {
                                println!("removed {}  {}", s.id, s.created.format("%Y-%m-%d %H:%M"))
                            }
                            Err(e) => {
                                eprintln!("error: removing {}: {e}", s.id);
                                code = exit::FAILED;
                            }
                        }
                    }
                }
            }
            Action::Restore { id, .. } => {
                let list = match rt.block_on(os.snapshots(&snap.name)) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("error: snapshot {}: {e}", snap.name);
                        return exit::FAILED;
                    }
                };
                let Some(s) = list.iter().find(|s| {
                    s.status == "active"
                        && id.as_ref().is_none_or(|id| s.id.starts_with(id.as_str()))
                }) else {
                    eprintln!(
                        "error: [snapshot.{}] has no {}snapshot{}",
                        snap.name,
                        if id.is_some() { "" } else { "active " },
                        id.as_ref().map(|i| format!(" `{i}`")).unwrap_or_default()
                    );
                    return exit::FAILED;
                };
                let service = &spec.services[&snap.service];
                let name = format!(
                    "{}-restored-{}",
                    snap.name,
                    chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
                );
                eprintln!("snapshot {}: booting {name} from {}", snap.name, s.id);
                // Tagged `steward` only: the server is the user's now, not a
                // fleet instance (fleet orphans leaves it alone).
                match rt.block_on(os.boot_snapshot(
                    service,
                    &s.id,
                    &name,
                    vec!["steward".into(), "steward-restored".into()],
                )) {
                    Ok((server, addr)) => println!(
                        "restored {} as server {server} ({name}){}",
                        s.id,
                        addr.map(|a| format!(" at {a}")).unwrap_or_default()
                    ),
                    Err(e) => {
                        eprintln!("error: restoring {}: {e}", s.id);
                        code = exit::FAILED;
                    }
                }
            }
            Action::Drill { json, .. } => {
                let prober = steward_health::Prober::new(resolver.clone());
                match rt.block_on(drill(&os, &spec, snap, &prober)) {
                    Ok(r) => {
                        if !r.passed {
                            code = exit::FAILED;
                        }
                        if *json {
                            json_out.push(serde_json::to_value(&r).unwrap_or_default());
                        } else {
                            println!(
                                "drill {}: {} — booted {} as server {} in {:.1} s{}{}",
                                snap.name,
                                if r.passed { "passed" } else { "FAILED" },
                                r.snapshot.id,
                                r.server,
                                r.boot_seconds,
                                r.check
                                    .as_ref()
                                    .map(|(c, said)| format!("; check {c}: {said}"))
                                    .unwrap_or_default(),
                                r.error
                                    .as_ref()
                                    .map(|e| format!("; {e}"))
                                    .unwrap_or_default()
                            );
                        }
                    }
                    Err(e) => {
                        eprintln!("error: drill {}: {e}", snap.name);
                        code = exit::FAILED;
                    }
                }
            }
        }
    }
    if !json_out.is_empty() {
        println!("{}", serde_json::to_string_pretty(&json_out).expect("JSON"));
    }
    code
}

fn size(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// The names of the spec's snapshots (for `fleet orphans`).
pub(crate) fn names(spec: &Spec) -> std::collections::BTreeSet<String> {
    spec.snapshots.keys().cloned().collect()
}
