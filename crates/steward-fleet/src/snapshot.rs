//! `[snapshot.NAME]`: snapshots of a service's server on OpenStack — taken
//! (Nova's createImage, tagged as this steward's in Glance), kept by the
//! same retention rules as file backups, restored (a server booted from one)
//! and drilled (the newest booted, a check run against it, the server
//! deleted). The cloud work is the provider's ([`OpenStack`]); this module
//! picks the server, applies retention and runs the drill's check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_spec::retention::{Decision, Snap, select_kept};
use steward_spec::{Placement, Snapshot, Spec};
use steward_state::{FleetState, InstanceState};

use crate::provider::{OpenStack, ServerSnapshot, fleet_tag};

/// How long a snapshot's upload may take before it counts as failed.
pub const UPLOAD_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The provider of the cloud `snapshot`'s service runs on.
pub fn provider_for(
    spec: &Spec,
    snapshot: &Snapshot,
    resolver: Arc<dyn steward_spec::Resolver>,
) -> Result<OpenStack, String> {
    let service = spec
        .services
        .get(&snapshot.service)
        .ok_or_else(|| format!("no service `{}`", snapshot.service))?;
    let Placement::OpenStack(p) = &service.placement else {
        return Err(format!("service `{}` is not on a cloud", service.name));
    };
    let cloud = spec
        .clouds
        .get(&p.cloud)
        .ok_or_else(|| format!("no cloud `{}`", p.cloud))?;
    Ok(OpenStack::new(
        cloud.clone(),
        resolver,
        spec.settings.state_dir.join("fleet/openstack"),
        fleet_tag(&spec.settings.state_dir),
    ))
}

/// The server to snapshot for `snapshot`: the oldest ready instance of its
/// service (on a phoenix fleet they are alike; the oldest has lived longest).
pub fn server_of(store: &dyn FleetState, snapshot: &Snapshot) -> Result<String, String> {
    let rows = store
        .fleet_instances(Some(&snapshot.service))
        .map_err(|e| e.to_string())?;
    rows.iter()
        .filter(|r| r.state == InstanceState::Ready)
        .find_map(|r| {
            r.provider
                .get("server")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
        .ok_or_else(|| {
            format!(
                "service `{}` has no ready server to snapshot (is `steward serve` running it?)",
                snapshot.service
            )
        })
}

/// Retention over snapshots, newest first (the newest is always kept).
pub fn retain(
    snapshots: &[ServerSnapshot],
    snapshot: &Snapshot,
) -> Vec<(ServerSnapshot, Decision)> {
    let snaps: Vec<Snap> = snapshots
        .iter()
        .map(|s| Snap {
            id: s.id.clone(),
            time: s.created,
            tags: Vec::new(),
        })
        .collect();
    select_kept(&snaps, &snapshot.keep)
        .into_iter()
        .filter_map(|d| {
            snapshots
                .iter()
                .find(|s| s.id == d.id)
                .map(|s| (s.clone(), d))
        })
        .collect()
}

/// What a drill found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DrillReport {
    /// The snapshot booted.
    pub snapshot: ServerSnapshot,
    /// The server booted from it (deleted afterwards).
    pub server: String,
    /// Its address (fixed IP and the service's port), when it has one.
    pub address: Option<String>,
    /// Seconds from the boot request to ACTIVE.
    pub boot_seconds: f64,
    /// The check run against it, and what it said.
    pub check: Option<(String, String)>,
    /// Whether the drill passed.
    pub passed: bool,
    /// Why not, when it did not.
    pub error: Option<String>,
}

/// A drill: boots the newest snapshot as a server of the service's flavor
/// and networks, runs the drill's check against it (aimed at its address;
/// tries until the check passes or three times its timeout, at least 5 s,
/// has gone), and deletes the server again whatever happened.
pub async fn drill(
    os: &OpenStack,
    spec: &Spec,
    snapshot: &Snapshot,
    prober: &steward_health::Prober,
) -> Result<DrillReport, String> {
    let newest = os
        .snapshots(&snapshot.name)
        .await?
        .into_iter()
        .find(|s| s.status == "active")
        .ok_or_else(|| format!("[snapshot.{}] has no snapshot to drill", snapshot.name))?;
    let service = &spec.services[&snapshot.service];
    let started = Instant::now();
    let name = format!(
        "{}-drill-{}",
        snapshot.name,
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    let tags = vec![
        "steward".to_string(),
        fleet_tag(&spec.settings.state_dir),
        "steward-drill".to_string(),
    ];
    let (server, address) = os.boot_snapshot(service, &newest.id, &name, tags).await?;
    let boot_seconds = started.elapsed().as_secs_f64();
    let mut report = DrillReport {
        snapshot: newest,
        server: server.clone(),
        address: address.map(|a| a.to_string()),
        boot_seconds,
        check: None,
        passed: true,
        error: None,
    };
    if let Some(name) = snapshot.drill.as_ref().and_then(|d| d.check.as_ref()) {
        let check = &spec.checks[name];
        match address {
            None => {
                report.passed = false;
                report.error = Some(format!(
                    "the server has no address on the service's network to run check `{name}` against"
                ));
            }
            Some(addr) => {
                let aimed = steward_spec::aimed_at(check, addr);
                // A booted server may need a moment before it answers.
                let deadline = Instant::now() + (check.timeout.0 * 3).max(Duration::from_secs(5));
                loop {
                    let out = prober.run(&aimed).await;
                    let verdict = steward_health::judge(&aimed, &out);
                    let passed = verdict.status != steward_state::Status::Fail;
                    let said = if passed {
                        "passed".to_string()
                    } else {
                        verdict
                            .error
                            .clone()
                            .unwrap_or_else(|| "failed".to_string())
                    };
                    report.check = Some((name.clone(), said.clone()));
                    if passed {
                        break;
                    }
                    if Instant::now() >= deadline {
                        report.passed = false;
                        report.error = Some(format!("check `{name}` against {addr}: {said}"));
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    if let Err(e) = os.delete_server(&server).await {
        report.passed = false;
        report.error = Some(format!(
            "the drill's server {server} could not be deleted: {e}"
        ));
    }
    Ok(report)
}

/// What a scheduled controller does.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// Take a snapshot, then apply retention.
    Take,
    /// Drill the newest snapshot.
    Drill,
}

/// `serve`'s snapshot work: a leader-only controller per scheduled take
/// (`snapshot.NAME`) and drill (`snapshot_drill.NAME`), each sleeping until
/// its schedule's next occurrence. Every outcome is an event.
pub struct SnapshotController {
    /// The spec.
    pub spec: Arc<Spec>,
    /// State database (the fleet's records: which server to snapshot).
    pub store: Arc<steward_state::Store>,
    /// Secret resolution (the cloud's credentials, the drill's check).
    pub resolver: Arc<dyn steward_spec::Resolver>,
}

struct Scheduled {
    me: Arc<SnapshotController>,
    os: Arc<OpenStack>,
    name: String,
    job: Job,
    schedule: croner::Cron,
    due: bool,
}

impl steward_runtime::Controller for Scheduled {
    fn reconcile(&mut self) -> steward_runtime::Step<'_> {
        Box::pin(async move {
            if self.due {
                self.due = false;
                match self.job {
                    Job::Take => self.me.take_once(&self.os, &self.name).await,
                    Job::Drill => self.me.drill_once(&self.os, &self.name).await,
                }
            }
            let now = chrono::Utc::now();
            let Ok(next) = self.schedule.find_next_occurrence(&now, false) else {
                return Ok(steward_runtime::Next::Finished);
            };
            self.due = true;
            Ok(steward_runtime::Next::After(
                (next - now).to_std().unwrap_or(Duration::ZERO),
            ))
        })
    }
}

impl SnapshotController {
    /// Adds the controllers of every scheduled snapshot and drill.
    pub fn register(self, sup: &mut steward_runtime::Supervisor) {
        let me = Arc::new(self);
        for snap in me.spec.snapshots.values() {
            let os = match provider_for(&me.spec, snap, me.resolver.clone()) {
                Ok(os) => Arc::new(os),
                Err(e) => {
                    let e = e.clone();
                    sup.add_leader_only(format!("snapshot.{}", snap.name), move |_| {
                        Box::new(steward_runtime::Failing::new("spec", e.clone()))
                    });
                    continue;
                }
            };
            let jobs = [
                (Job::Take, "snapshot", snap.schedule.clone()),
                (
                    Job::Drill,
                    "snapshot_drill",
                    snap.drill.as_ref().and_then(|d| d.schedule.clone()),
                ),
            ];
            for (job, what, schedule) in jobs {
                let Some(schedule) = schedule else { continue };
                let (me, os, name) = (me.clone(), os.clone(), snap.name.clone());
                sup.add_leader_only(format!("{what}.{name}"), move |_| {
                    Box::new(Scheduled {
                        me: me.clone(),
                        os: os.clone(),
                        name: name.clone(),
                        job,
                        schedule: schedule.clone(),
                        due: false,
                    })
                });
            }
        }
    }

    fn record(
        &self,
        kind: steward_state::EventKind,
        name: &str,
        severity: steward_state::Severity,
        message: String,
        data: serde_json::Value,
    ) {
        use steward_state::EventLog;
        let e = steward_state::NewEvent::now(kind, name, severity, message, data);
        if let Err(err) = self.store.append_event(&e) {
            tracing::error!(snapshot = name, error = %err, "cannot record a snapshot event");
        }
    }

    /// One scheduled take, then retention.
    pub async fn take_once(&self, os: &OpenStack, name: &str) {
        use steward_state::{EventKind, Severity};
        let Some(snap) = self.spec.snapshots.get(name) else {
            return;
        };
        let started = Instant::now();
        let server = server_of(self.store.as_ref(), snap);
        let taken = match server {
            Ok(server) => os.take_snapshot(name, &server, UPLOAD_LIMIT).await,
            Err(e) => Err(e),
        };
        match taken {
            Ok(s) => self.record(
                EventKind::SnapshotTaken,
                name,
                Severity::Info,
                format!(
                    "snapshot {} of server {} in {:.1} s",
                    s.id,
                    s.server,
                    started.elapsed().as_secs_f64()
                ),
                serde_json::json!({ "snapshot": s, "seconds": started.elapsed().as_secs_f64() }),
            ),
            Err(e) => {
                self.record(
                    EventKind::SnapshotFailed,
                    name,
                    Severity::Error,
                    e,
                    serde_json::Value::Null,
                );
                return;
            }
        }
        let Ok(all) = os.snapshots(name).await else {
            return;
        };
        let mut removed = Vec::new();
        for (s, d) in retain(&all, snap) {
            if !d.keep && os.delete_snapshot(&s.id).await.is_ok() {
                removed.push(s.id);
            }
        }
        if !removed.is_empty() {
            self.record(
                EventKind::SnapshotForgot,
                name,
                Severity::Info,
                format!("retention deleted {} snapshot(s)", removed.len()),
                serde_json::json!({ "removed": removed }),
            );
        }
    }

    /// One scheduled drill.
    pub async fn drill_once(&self, os: &OpenStack, name: &str) {
        use steward_state::{EventKind, Severity};
        let Some(snap) = self.spec.snapshots.get(name) else {
            return;
        };
        let prober = steward_health::Prober::new(self.resolver.clone());
        match drill(os, &self.spec, snap, &prober).await {
            Ok(r) if r.passed => self.record(
                EventKind::SnapshotDrillSucceeded,
                name,
                Severity::Info,
                format!(
                    "snapshot {} booted in {:.1} s and passed",
                    r.snapshot.id, r.boot_seconds
                ),
                serde_json::to_value(&r).unwrap_or_default(),
            ),
            Ok(r) => self.record(
                EventKind::SnapshotDrillFailed,
                name,
                Severity::Error,
                r.error.clone().unwrap_or_else(|| "the drill failed".into()),
                serde_json::to_value(&r).unwrap_or_default(),
            ),
            Err(e) => self.record(
                EventKind::SnapshotDrillFailed,
                name,
                Severity::Error,
                e,
                serde_json::Value::Null,
            ),
        }
    }
}
