//! `steward deploy|rollback|scale|fleet|logs|up`: the fleet's one-shot commands.
//! They write what should happen into the state store and follow the running
//! `serve`, which does it; nothing here starts or stops an instance itself.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use std::time::{Duration, Instant};
use steward_fleet::provider::Provider as _;
use steward_fleet::requests::DeployKind;

use steward_spec::{OsResolver, Service, Spec};

use crate::exit;
use steward_state::{EventKind, EventLog, EventQuery, FleetState, Meta, Severity, Store, now_ms};

pub(crate) fn open(spec: &Spec) -> Result<Store, u8> {
    Store::open(&spec.settings.state_dir).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

fn service<'a>(spec: &'a Spec, name: &str) -> Result<&'a Service, u8> {
    let names = [name.to_string()];
    match crate::select(spec, &spec.services, &names, "service", "service.NAME") {
        Ok(mut s) => Ok(s.remove(0)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(exit::USAGE)
        }
    }
}

/// The spec, one of its services and the state store, or the exit code after
/// saying what is wrong.
fn context(spec_path: &Path, name: &str) -> Result<(Spec, Service, Store), u8> {
    let spec = crate::load_spec(spec_path)?;
    let svc = service(&spec, name)?.clone();
    let store = open(&spec)?;
    Ok((spec, svc, store))
}

fn short(d: &str) -> String {
    steward_fleet::requests::short(d)
}

/// `steward deploy SERVICE`: build (or reuse) the image, point the service at
/// it, and follow the rollout.
pub(crate) fn deploy(
    spec_path: &Path,
    name: &str,
    image: Option<&str>,
    promote: bool,
    wait: bool,
) -> u8 {
    let (spec, svc, store) = match context(spec_path, name) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if promote {
        return match store.fleet_promote(name, now_ms()) {
            Ok(true) => {
                println!("{name}: canaries promoted; the rollout continues");
                exit::OK
            }
            Ok(false) => {
                eprintln!("error: {name} has no deploy waiting for promotion");
                exit::FAILED
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILED
            }
        };
    }
    let img = &spec.images[&svc.image];
    let manifest = match image {
        Some(d) => steward_image::manifest(&spec, img, Some(d), &OsResolver),
        None => steward_image::build(&spec, img, &OsResolver, &mut |m| {
            eprintln!("image {}: {m}", img.name)
        })
        .map(|r| r.manifest),
    };
    let manifest = match manifest {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILED;
        }
    };
    let current = store.fleet_service(name).ok().flatten();
    let latest = store
        .fleet_deploys(Some(name), 1)
        .ok()
        .and_then(|mut d| d.pop());
    if current.as_ref().and_then(|c| c.target.as_deref()) == Some(manifest.digest.as_str())
        && latest
            .as_ref()
            .is_none_or(|d| d.result.as_deref() != Some("failed"))
    {
        println!("{name} already runs {}", short(&manifest.digest));
        return exit::OK;
    }
    let id = match steward_fleet::requests::request_deploy(
        &store,
        &svc,
        &manifest.digest,
        &steward_fleet::requests::who(),
        DeployKind::Deploy,
    ) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILED;
        }
    };
    store.record(&steward_state::NewEvent::now(
        EventKind::DeployRequested,
        name,
        Severity::Info,
        format!("deploy of {name} to {} requested", short(&manifest.digest)),
        serde_json::json!({"deploy": id, "to": manifest.digest}),
    ));
    println!(
        "deploy #{id}: {name} -> {} ({})",
        short(&manifest.digest),
        manifest.version.as_deref().unwrap_or("no version")
    );
    if !wait {
        return exit::OK;
    }
    follow(&store, &svc, id)
}

/// `steward rollback SERVICE`: back to the version before the current one.
pub(crate) fn rollback(spec_path: &Path, name: &str, wait: bool) -> u8 {
    let (_, svc, store) = match context(spec_path, name) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(previous) = store
        .fleet_service(name)
        .ok()
        .flatten()
        .and_then(|r| r.previous)
    else {
        eprintln!("error: {name} has no earlier version to roll back to");
        return exit::FAILED;
    };
    let id = match steward_fleet::requests::request_deploy(
        &store,
        &svc,
        &previous,
        &steward_fleet::requests::who(),
        DeployKind::Rollback,
    ) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILED;
        }
    };
    println!("rollback #{id}: {name} -> {}", short(&previous));
    if !wait {
        return exit::OK;
    }
    follow(&store, &svc, id)
}

/// Prints the service's events while the deploy runs; exit 0 when it
/// succeeded, 1 otherwise.
fn follow(store: &Store, svc: &Service, id: i64) -> u8 {
    let started = Instant::now();
    let limit = svc.rollout.progress_deadline + Duration::from_secs(60);
    let mut seen = store
        .events(&EventQuery {
            limit: 1,
            ..Default::default()
        })
        .ok()
        .and_then(|e| e.first().map(|e| e.id))
        .unwrap_or(0);
    loop {
        if let Ok(events) = store.events(&EventQuery {
            subject: Some(svc.name.clone()),
            limit: 100,
            ..Default::default()
        }) {
            let mut fresh: Vec<_> = events.into_iter().filter(|e| e.id > seen).collect();
            fresh.sort_by_key(|e| e.id);
            for e in fresh {
                println!("  {}", e.event.message);
                seen = e.id;
            }
        }
        let Ok(Some(d)) = store.fleet_deploy(id) else {
            eprintln!("error: deploy #{id} vanished from the state store");
            return exit::FAILED;
        };
        if let Some(result) = &d.result {
            let msg = d.reason.clone().unwrap_or_default();
            return if result == "succeeded" {
                println!("{msg}");
                exit::OK
            } else {
                eprintln!("deploy #{id} {result}: {msg}");
                exit::FAILED
            };
        }
        if d.started_ms.is_none() && started.elapsed() > Duration::from_secs(10) {
            println!(
                "queued: no running `steward serve` has taken it up yet; it rolls out when one does"
            );
            return exit::OK;
        }
        if started.elapsed() > limit {
            eprintln!(
                "deploy #{id} still running after {:?}; see `steward fleet status`",
                limit
            );
            return exit::FAILED;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `steward scale SERVICE N`.
pub(crate) fn scale(spec_path: &Path, name: &str, n: u32) -> u8 {
    let (_, svc, store) = match context(spec_path, name) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let who = steward_fleet::requests::who();
    match steward_fleet::requests::request_scale(&store, &svc, n, &who, None) {
        Ok(()) => {}
        Err(e @ steward_fleet::requests::ScaleError::OutOfRange { .. }) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILED;
        }
    }
    println!("{name}: {n} instances wanted");
    exit::OK
}

/// `steward scale --explain SERVICE`: the autoscaler's latest decision.
pub(crate) fn explain(spec_path: &Path, name: &str) -> u8 {
    let (_, svc, store) = match context(spec_path, name) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if svc.autoscale.is_none() {
        eprintln!("error: service `{name}` has no autoscale in the spec");
        return exit::USAGE;
    }
    let key = steward_metrics::controller::decision_key(name);
    let saved = match store.meta(&key) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILED;
        }
    };
    let Some(saved) = saved.and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()) else {
        eprintln!(
            "error: the autoscaler of `{name}` has not decided yet (is `steward serve` running?)"
        );
        return exit::FAILED;
    };
    let at = saved["at_ms"].as_i64().unwrap_or(0);
    let ago = (now_ms() - at).max(0) / 1000;
    println!(
        "{name}: {} → {} ({} mode, {ago} s ago)",
        saved["current"],
        saved["desired"],
        saved["mode"].as_str().unwrap_or("?")
    );
    for line in saved["reason"].as_str().unwrap_or("").lines() {
        println!("  {line}");
    }
    exit::OK
}

/// `steward fleet status`.
pub(crate) fn status(spec_path: &Path, json: bool) -> u8 {
    let spec = match crate::load_spec(spec_path) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let store = match open(&spec) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let report = steward_fleet::status::report(&spec, &store);
    let local = steward_fleet::provider::Local::new(&spec.settings.state_dir);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return exit::OK;
    }
    if report.is_empty() {
        println!("{} has no [service.*] entries", spec.file);
        return exit::OK;
    }
    for s in &report {
        println!(
            "{}: {} ({}), {}/{} ready{}{}",
            s.service,
            s.target
                .as_deref()
                .map(short)
                .unwrap_or_else(|| "not deployed".into()),
            s.image,
            s.ready,
            s.desired,
            s.listen
                .as_ref()
                .map(|l| format!(", proxy http://{l}"))
                .unwrap_or_default(),
            s.deploy
                .as_ref()
                .filter(|d| d.result.is_none())
                .map(|d| format!(", {} #{} running", d.kind, d.id))
                .unwrap_or_default()
        );
        let mut rows = Vec::new();
        for i in &s.instances {
            rows.push(vec![
                i.id.clone(),
                i.state.to_string(),
                short(&i.digest),
                i.addr.clone(),
                local.describe(&steward_fleet::controller::handle(i)),
                age(now_ms() - i.created_ms),
            ]);
        }
        print!(
            "{}",
            crate::table::render(
                &["INSTANCE", "STATE", "VERSION", "ADDRESS", "WHERE", "AGE"],
                &rows
            )
        );
    }
    exit::OK
}

/// `steward fleet orphans [--delete]`: what carries this steward's tag on
/// the spec's clouds but is in no record (a server made by a steward killed
/// before it recorded the instance, an image of a build nothing uses).
pub(crate) fn orphans(spec_path: &Path, delete: bool, json: bool) -> u8 {
    use std::collections::BTreeSet;
    let spec = match crate::load_spec(spec_path) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let store = match open(&spec) {
        Ok(s) => s,
        Err(c) => return c,
    };
    if spec.clouds.is_empty() {
        eprintln!("error: the spec has no [cloud.NAME]: nothing runs anywhere but here");
        return exit::USAGE;
    }
    let services: Result<Vec<_>, _> = spec
        .services
        .keys()
        .map(|name| store.fleet_service(name))
        .collect();
    let (rows, services) = match (store.fleet_instances(None), services) {
        (Ok(r), Ok(s)) => (r, s.into_iter().flatten().collect::<Vec<_>>()),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: cannot read the fleet's records: {e}");
            return exit::FAILED;
        }
    };
    let instances: BTreeSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    let digests: BTreeSet<String> = rows
        .iter()
        .map(|r| r.digest.clone())
        .chain(
            services
                .iter()
                .flat_map(|s| [s.target.clone(), s.previous.clone()])
                .flatten(),
        )
        .collect();
    let tag = steward_fleet::provider::fleet_tag(&spec.settings.state_dir);
    let resolver: std::sync::Arc<dyn steward_spec::Resolver> =
        std::sync::Arc::new(steward_spec::OsResolver);
    let rt = crate::runtime();
    let mut code = exit::OK;
    let mut all = Vec::new();
    for cloud in spec.clouds.values() {
        let provider = steward_fleet::provider::OpenStack::new(
            cloud.clone(),
            resolver.clone(),
            spec.settings.state_dir.join("fleet/openstack"),
            tag.clone(),
        );
        let found = match rt.block_on(provider.orphans(
            &instances,
            &digests,
            &crate::snapshot::names(&spec),
        )) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: cloud {}: {e}", cloud.name);
                code = exit::FAILED;
                continue;
            }
        };
        for o in found {
            let deleted = if delete {
                match rt.block_on(provider.delete_orphan(&o)) {
                    Ok(()) => Some(true),
                    Err(e) => {
                        eprintln!("error: cloud {}: {} {}: {e}", o.cloud, o.kind, o.id);
                        code = exit::FAILED;
                        Some(false)
                    }
                }
            } else {
                None
            };
            all.push((o, deleted));
        }
    }
    if json {
        let out: Vec<serde_json::Value> = all
            .iter()
            .map(|(o, d)| {
                let mut v = serde_json::to_value(o).unwrap_or_default();
                if let Some(d) = d {
                    v["deleted"] = serde_json::json!(d);
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else if all.is_empty() {
        println!("no orphans: every server and image with this steward's tag is in its records");
    } else {
        for (o, d) in &all {
            let done = match d {
                Some(true) => " — deleted",
                Some(false) => " — NOT deleted",
                None => "",
            };
            println!(
                "{}  {:<6}  {}  {}: {}{done}",
                o.cloud, o.kind, o.id, o.name, o.why
            );
        }
        if !delete {
            println!("(steward fleet orphans --delete removes them)");
        }
    }
    code
}

/// `steward fleet history`.
pub(crate) fn history(spec_path: &Path, name: Option<&str>, json: bool) -> u8 {
    let spec = match crate::load_spec(spec_path) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let store = match open(&spec) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let deploys = store.fleet_deploys(name, 50).unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&deploys).unwrap_or_default()
        );
        return exit::OK;
    }
    let mut rows = Vec::new();
    for d in &deploys {
        rows.push(vec![
            d.id.to_string(),
            d.service.clone(),
            d.kind.clone(),
            d.from_digest
                .as_deref()
                .map(short)
                .unwrap_or_else(|| "-".into()),
            short(&d.to_digest),
            d.who.clone(),
            format!("{} ago", age(now_ms() - d.requested_ms)),
            d.result.clone().unwrap_or_else(|| "running".into()),
        ]);
    }
    print!(
        "{}",
        crate::table::render(
            &[
                "#", "SERVICE", "KIND", "FROM", "TO", "WHO", "WHEN", "RESULT"
            ],
            &rows
        )
    );
    exit::OK
}

fn age(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        ..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `steward logs SERVICE [INSTANCE]`: the instances' output, optionally followed.
pub(crate) fn logs(
    spec_path: &Path,
    name: &str,
    instance: Option<&str>,
    tail: usize,
    follow: bool,
) -> u8 {
    let spec = match crate::load_spec(spec_path) {
        Ok(s) => s,
        Err(c) => return c,
    };
    if let Err(c) = service(&spec, name) {
        return c;
    }
    let store = match open(&spec) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let rows = store.fleet_instances(Some(name)).unwrap_or_default();
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| instance.is_none_or(|i| r.id == i || r.id.ends_with(i)))
        .collect();
    if rows.is_empty() {
        eprintln!(
            "error: {}",
            match instance {
                Some(i) => format!("{name} has no instance `{i}` (see `steward fleet status`)"),
                None => format!("{name} has no instances"),
            }
        );
        return exit::FAILED;
    }
    let many = rows.len() > 1;
    let mut offsets = Vec::new();
    let local = steward_fleet::provider::Local::new(&spec.settings.state_dir);
    for r in &rows {
        let Some(path) = local.log_path(&steward_fleet::controller::handle(r)) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(tail)..] {
            if many {
                println!("{} | {l}", r.id);
            } else {
                println!("{l}");
            }
        }
        offsets.push((r.id.clone(), path, text.len() as u64));
    }
    if !follow {
        return exit::OK;
    }
    loop {
        std::thread::sleep(Duration::from_millis(250));
        for (id, path, off) in offsets.iter_mut() {
            let Ok(mut f) = std::fs::File::open(&*path) else {
                continue;
            };
            if f.seek(SeekFrom::Start(*off)).is_err() {
                continue;
            }
            let mut more = String::new();
            if f.read_to_string(&mut more).is_ok() && !more.is_empty() {
                *off += more.len() as u64;
                for l in more.lines() {
                    if many {
                        println!("{id} | {l}");
                    } else {
                        println!("{l}");
                    }
                }
            }
        }
    }
}

/// `steward down`: stops and destroys every instance (parked ones too) and
/// their sandboxes; the services keep their versions, so the next `serve`
/// starts fresh instances of them.
pub(crate) fn down(spec_path: &Path) -> u8 {
    use steward_fleet::provider::{Local, Provider};
    let spec = match crate::load_spec(spec_path) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let store = match open(&spec) {
        Ok(s) => s,
        Err(c) => return c,
    };
    // Servers on a cloud are destroyed there, local instances here.
    let provider = steward_fleet::provider::Providers::for_spec(
        &spec,
        std::sync::Arc::new(steward_spec::OsResolver),
        std::sync::Arc::new(Local::new(&spec.settings.state_dir)),
    );
    let rows = match store.fleet_instances(None) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("error: cannot read the instances: {e}");
            return exit::FAILED;
        }
    };
    let mut code = exit::OK;
    let rt = crate::runtime();
    for r in &rows {
        let grace = spec
            .services
            .get(&r.service)
            .map(|s| s.stop_timeout)
            .unwrap_or(Duration::from_secs(10));
        let h = steward_fleet::controller::handle(r);
        let gone = rt.block_on(async {
            let stopped = provider.stop(&h, grace).await?;
            provider.destroy(&stopped).await
        });
        if let Err(e) = gone {
            eprintln!("error: {}: {}: {e}", r.service, r.id);
            code = exit::FAILED;
            continue;
        }
        if let Err(e) = store.fleet_delete_instance(&r.id) {
            eprintln!(
                "error: {}: {} destroyed, but its record stays: {e}",
                r.service, r.id
            );
            code = exit::FAILED;
            continue;
        }
        println!("{}: {} stopped and destroyed", r.service, r.id);
    }
    store.record(&steward_state::NewEvent::now(
        EventKind::FleetDown,
        "steward",
        Severity::Info,
        format!("{} instances destroyed by `steward down`", rows.len()),
        serde_json::json!({"instances": rows.len()}),
    ));
    code
}

/// `steward up DIR`: builds the images of `DIR/steward.toml` and serves it.
pub(crate) fn up(dir: &Path, listen: Option<std::net::SocketAddr>) -> u8 {
    let spec_path = if dir.is_dir() {
        dir.join("steward.toml")
    } else {
        dir.to_path_buf()
    };
    let spec = match crate::load_spec(&spec_path) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let store = match open(&spec) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let used: std::collections::BTreeSet<&str> =
        spec.services.values().map(|s| s.image.as_str()).collect();
    let mut built = std::collections::BTreeMap::new();
    for name in used {
        let img = &spec.images[name];
        eprintln!("building image {name}");
        match steward_image::build(&spec, img, &OsResolver, &mut |m| eprintln!("  {m}")) {
            Ok(r) => {
                eprintln!(
                    "image {name}: {} ({:.1}s{})",
                    short(&r.manifest.digest),
                    r.seconds,
                    if r.reused { ", unchanged" } else { "" }
                );
                built.insert(name.to_string(), r.manifest.digest);
            }
            Err(e) => {
                eprintln!("error: image {name}: {e}");
                return exit::FAILED;
            }
        }
    }
    // Services already deployed from an older build roll out the new one.
    for svc in spec.services.values() {
        let digest = &built[&svc.image];
        let target = store
            .fleet_service(&svc.name)
            .ok()
            .flatten()
            .and_then(|r| r.target);
        if target.as_ref().is_some_and(|t| t != digest) {
            let _ = steward_fleet::requests::request_deploy(
                &store,
                svc,
                digest,
                &steward_fleet::requests::who(),
                DeployKind::Deploy,
            );
            eprintln!("{}: rolling out {}", svc.name, short(digest));
        }
    }
    drop(store);
    crate::serve_runtime().block_on(crate::serve::run(&spec_path, listen))
}
