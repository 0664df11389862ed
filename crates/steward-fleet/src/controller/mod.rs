//! `serve`'s fleet controllers: one per service that observes its instances
//! (`observe.rs`: running, readiness), asks [`crate::plan::decide`] what to do,
//! and does it through the provider and the proxy's pool (`act.rs`), plus
//! `auto_rebuild` (`rebuild.rs`). Everything it must remember across a
//! `kill -9` is in the state store: the target version, the desired count,
//! every instance (with its provider's record, so a restarted steward adopts
//! the running ones) and instances being drained.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use steward_health::Prober;
use steward_runtime::{Controller, LogCursor, Next, Step, StepError, Supervisor};
use steward_spec::{Image, Resolver, Service, Spec};
use steward_state::{
    EventKind, EventLog, FleetState, InstanceRow, Meta, NewEvent, Severity, now_ms,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::plan::{Action, After, Input, InstanceState, Phase, View, decide};
use crate::provider::{ImageRef, InstanceHandle, Provider, ProviderFuture};
use crate::proxy::{Pool, Proxy, ProxyMetrics};
use crate::requests::short;

mod act;
mod observe;
mod rebuild;

use rebuild::Rebuilder;

/// How long a provider call may take in `serve` (copying a large image into
/// a new instance is the slowest local one).
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(300);

/// Time between two looks at a service.
const TICK: Duration = Duration::from_millis(200);
/// Readiness probes of an instance not yet ready run this often.
const STARTING_PROBE: Duration = Duration::from_millis(100);
/// Readiness probes of a ready instance run at most this far apart.
const READY_PROBE_MAX: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    service: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabel {
    service: String,
    id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    service: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    service: String,
    stage: String,
}

/// The fleet's metrics.
#[derive(Clone, Default)]
pub struct FleetMetrics {
    instances: Family<StateLabel, Gauge>,
    deploys: Family<ResultLabel, Counter>,
    replaced: Family<ResultLabel, Counter>,
    errors: Family<StageLabel, Counter>,
    cpu: Family<InstanceLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    memory: Family<InstanceLabel, Gauge>,
    fds: Family<InstanceLabel, Gauge>,
}

impl FleetMetrics {
    /// Adds them to `/metrics`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "steward_fleet_instances",
            "Instances by service and state",
            self.instances.clone(),
        );
        r.register(
            "steward_fleet_deploys",
            "Finished deploys by service and result",
            self.deploys.clone(),
        );
        r.register(
            "steward_fleet_instances_removed",
            "Instances taken away, by service and reason",
            self.replaced.clone(),
        );
        r.register(
            "steward_fleet_errors",
            "Fleet failures by service and stage (build, start, stop)",
            self.errors.clone(),
        );
        r.register(
            "steward_instance_cpu_seconds",
            "CPU time an instance's process used (user and system), by service and instance id",
            self.cpu.clone(),
        );
        r.register(
            "steward_instance_memory_bytes",
            "Resident memory of an instance's process",
            self.memory.clone(),
        );
        r.register(
            "steward_instance_open_fds",
            "Open file descriptors of an instance's process",
            self.fds.clone(),
        );
    }
}

/// What the fleet needs of the state database: its own tables (services,
/// deploys, instances), the event log it writes to and follows, and the
/// key/value table (where `auto_rebuild` kept its marks before cursors).
pub trait FleetStore: FleetState + EventLog + Meta {}

impl<T: FleetState + EventLog + Meta + ?Sized> FleetStore for T {}

/// Everything the fleet controller needs.
#[derive(Clone)]
pub struct Fleet {
    /// The spec.
    pub spec: Arc<Spec>,
    /// State store.
    pub store: Arc<dyn FleetStore>,
    /// Secret references.
    pub resolver: Arc<dyn Resolver>,
    /// Where instances come from.
    pub provider: Arc<dyn Provider>,
    /// The longest any provider call may take before it counts as failed
    /// (the instance is left as it was recorded and tried again later).
    pub provider_timeout: Duration,
    /// Runs readiness checks.
    pub prober: Prober,
    /// Fleet metrics.
    pub metrics: FleetMetrics,
    /// Proxy metrics.
    pub proxy_metrics: ProxyMetrics,
}

/// A service's bound proxy socket, made before anything starts so a taken port
/// is a start-up error.
pub struct Bound {
    service: String,
    listener: TcpListener,
}

/// Binds the proxy address of every service that has one.
pub async fn bind(spec: &Spec) -> Result<Vec<Bound>, String> {
    let mut out = Vec::new();
    for s in spec.services.values() {
        if let Some(addr) = s.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("service `{}`: cannot listen on {addr}: {e}", s.name))?;
            out.push(Bound {
                service: s.name.clone(),
                listener,
            });
        }
    }
    Ok(out)
}

fn event(
    kind: EventKind,
    service: &str,
    severity: Severity,
    message: String,
    data: serde_json::Value,
) -> NewEvent {
    NewEvent::now(kind, service, severity, message, data)
}

/// The event-log cursor of `auto_rebuild`.
pub const REBUILD_CONSUMER: &str = "fleet.auto_rebuild";

/// A store call on the blocking pool; a failure is the step's error at
/// `stage` (the supervisor counts, logs and retries it), never ignored.
async fn state<T: Send + 'static>(
    store: &Arc<dyn FleetStore>,
    stage: &'static str,
    f: impl FnOnce(&(dyn FleetStore + 'static)) -> Result<T, steward_state::StateError> + Send + 'static,
) -> Result<T, StepError> {
    steward_state::off_thread(store, f)
        .await
        .map_err(|e| StepError::new(stage, e))
}

impl Fleet {
    /// Deletes orphaned instance directories, starts the proxies on a thread of
    /// their own (the data path never waits behind the control plane's probes,
    /// SQLite writes or image unpacking; it ends when `cancel` fires), and adds
    /// to `sup` one controller per service (`fleet.SERVICE`: on the way out it
    /// stops and parks the running instances, so the next `serve` revives
    /// them) and `fleet.auto_rebuild`, all leader-only.
    pub async fn register(
        self,
        bound: Vec<Bound>,
        sup: &mut Supervisor,
        cancel: CancellationToken,
    ) -> Option<std::thread::JoinHandle<()>> {
        self.sweep_orphans().await;
        let mut listeners: HashMap<String, TcpListener> =
            bound.into_iter().map(|b| (b.service, b.listener)).collect();
        let mut proxies = Vec::new();
        for svc in self.spec.services.values() {
            let pool = Arc::new(Pool::default());
            if let Some(l) = listeners.remove(&svc.name) {
                let proxy = Proxy::new(&svc.name, pool.clone(), self.proxy_metrics.clone());
                match l.into_std() {
                    Ok(l) => proxies.push((proxy, l)),
                    Err(e) => tracing::error!(service = %svc.name, "proxy listener: {e}"),
                }
            }
            let Some(image) = self.spec.images.get(&svc.image).cloned() else {
                continue;
            };
            let (fleet, svc) = (self.clone(), svc.clone());
            // Built afresh after a panic: everything it needs is in the store.
            sup.add_leader_only(format!("fleet.{}", svc.name), move |_| {
                Box::new(ServiceLoop {
                    fleet: fleet.clone(),
                    svc: svc.clone(),
                    image: image.clone(),
                    pool: pool.clone(),
                    live: HashMap::new(),
                    draining: Arc::default(),
                    start_backoff: None,
                    build_backoff: None,
                    next_due: None,
                    images: HashMap::new(),
                    usage: HashMap::new(),
                    usage_at: None,
                })
            });
        }
        let images: BTreeMap<String, Image> = self
            .spec
            .images
            .values()
            .filter(|i| i.auto_rebuild)
            .filter(|i| self.spec.services.values().any(|s| s.image == i.name))
            .map(|i| (i.name.clone(), i.clone()))
            .collect();
        if !images.is_empty() {
            let fleet = self.clone();
            sup.add_leader_only(REBUILD_CONSUMER, move |_| {
                let names = images.keys().cloned().collect();
                Box::new(Rebuilder {
                    fleet: fleet.clone(),
                    images: images.clone(),
                    cursor: LogCursor::new(
                        fleet.store.clone(),
                        REBUILD_CONSUMER,
                        vec![EventKind::ImageStale],
                        Duration::from_secs(2),
                    )
                    .starting_at(rebuild::legacy_start(fleet.store.clone(), names)),
                })
            });
        }
        (!proxies.is_empty()).then(|| {
            std::thread::Builder::new()
                .name("steward-proxy".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("the proxy's runtime");
                    rt.block_on(async move {
                        let mut set = tokio::task::JoinSet::new();
                        for (proxy, l) in proxies {
                            match TcpListener::from_std(l) {
                                Ok(l) => {
                                    set.spawn(proxy.serve(l, cancel.clone()));
                                }
                                Err(e) => tracing::error!("proxy listener: {e}"),
                            }
                        }
                        while set.join_next().await.is_some() {}
                    });
                })
                .expect("a thread for the proxies")
        })
    }

    /// Writes an event from async code (on the blocking pool).
    async fn store_event(&self, e: NewEvent) {
        steward_state::record_off_thread(&self.store, e).await;
    }

    /// Instances the provider holds that no record knows about (a crash
    /// between creating one and recording it) are destroyed.
    async fn sweep_orphans(&self) {
        let Ok(rows) = state(&self.store, "observe", |s| s.fleet_instances(None)).await else {
            return;
        };
        let known: Vec<String> = rows.into_iter().map(|r| r.id).collect();
        let listed = match tokio::time::timeout(self.provider_timeout, self.provider.list()).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                return tracing::error!(error = %e, "cannot list the provider's instances");
            }
            Err(_) => return tracing::error!("listing the provider's instances timed out"),
        };
        for h in listed.into_iter().filter(|h| !known.contains(&h.id)) {
            match tokio::time::timeout(self.provider_timeout, self.provider.destroy(&h)).await {
                Ok(Ok(())) => tracing::info!(instance = %h.id, "orphaned instance destroyed"),
                Ok(Err(e)) => {
                    tracing::error!(instance = %h.id, error = %e, "cannot destroy an orphaned instance")
                }
                Err(_) => {
                    tracing::error!(instance = %h.id, "destroying an orphaned instance timed out")
                }
            }
        }
    }

    /// A provider call bounded by `provider_timeout`; the error says which call
    /// and which instance.
    async fn call<T>(&self, what: &str, id: &str, f: ProviderFuture<'_, T>) -> Result<T, String> {
        match tokio::time::timeout(self.provider_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!(
                "{what} of instance {id} did not finish within {:?}",
                self.provider_timeout
            )),
        }
    }
}

impl Controller for ServiceLoop {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            self.step().await?;
            // The next look comes after a tick, or sooner when an instance is
            // due to count as healthy: a rollout waits for no tick it need not.
            let wake = self
                .next_due
                .take()
                .map(|t| t.min(Instant::now() + TICK))
                .unwrap_or_else(|| Instant::now() + TICK);
            Ok(Next::at(wake))
        })
    }

    fn stop(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.shutdown())
    }
}

struct Live {
    next_probe: Instant,
}

struct ServiceLoop {
    fleet: Fleet,
    svc: Service,
    image: Image,
    pool: Arc<Pool>,
    live: HashMap<String, Live>,
    /// Instances whose drain runs in this process.
    draining: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    start_backoff: Option<Instant>,
    build_backoff: Option<Instant>,
    /// When the next instance becomes healthy (ready for `min_healthy_time`).
    next_due: Option<Instant>,
    /// Builds the provider has made runnable, by digest.
    images: HashMap<String, ImageRef>,
    /// Each running instance's CPU seconds as last read, and when usage
    /// was last read.
    usage: HashMap<String, f64>,
    usage_at: Option<Instant>,
}

/// The provider's handle of a recorded instance.
pub fn handle(r: &InstanceRow) -> InstanceHandle {
    InstanceHandle {
        id: r.id.clone(),
        address: r
            .addr
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        data: r.provider.clone(),
    }
}

impl ServiceLoop {
    /// A state database call on the blocking pool: `serve`'s runtime thread
    /// (probes, the API) never waits for SQLite.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&(dyn FleetStore + 'static)) -> Result<T, steward_state::StateError>
        + Send
        + 'static,
    ) -> Result<T, steward_state::StateError> {
        steward_state::off_thread(&self.fleet.store, f).await
    }

    /// A write whose failure is a fleet error (metric and log), never dropped.
    async fn write(
        &self,
        what: &str,
        f: impl FnOnce(&(dyn FleetStore + 'static)) -> Result<(), steward_state::StateError>
        + Send
        + 'static,
    ) {
        if let Err(e) = self.db(f).await {
            self.error("state", format!("cannot record {what}: {e}"))
                .await;
        }
    }

    /// A provider call bounded by the fleet's `provider_timeout`.
    async fn call<T>(&self, what: &str, id: &str, f: ProviderFuture<'_, T>) -> Result<T, String> {
        self.fleet.call(what, id, f).await
    }

    /// Writes an instance's new state through.
    async fn put(&self, r: &InstanceRow) {
        let row = r.clone();
        self.write(&format!("instance {}", r.id), move |s| {
            s.fleet_put_instance(&row)
        })
        .await;
    }

    async fn record(
        &self,
        kind: EventKind,
        severity: Severity,
        message: String,
        data: serde_json::Value,
    ) {
        match severity {
            Severity::Error | Severity::Warning => {
                tracing::warn!(service = %self.svc.name, %kind, "{message}")
            }
            Severity::Info => tracing::info!(service = %self.svc.name, %kind, "{message}"),
        }
        let e = event(kind, &self.svc.name, severity, message, data);
        steward_state::record_off_thread(&self.fleet.store, e).await;
    }

    /// Records how a deploy ended and counts it.
    async fn finish_deploy(&self, id: i64, result: &'static str, msg: &str, now: i64) {
        let m = msg.to_string();
        self.write("a deploy's end", move |s| {
            s.fleet_deploy_finished(id, result, &m, now)
        })
        .await;
        self.fleet
            .metrics
            .deploys
            .get_or_create(&ResultLabel {
                service: self.svc.name.clone(),
                result: result.into(),
            })
            .inc();
    }

    fn count_removed(&self, reason: &str) {
        self.fleet
            .metrics
            .replaced
            .get_or_create(&ResultLabel {
                service: self.svc.name.clone(),
                result: reason.into(),
            })
            .inc();
    }

    async fn error(&self, stage: &str, message: String) {
        self.fleet
            .metrics
            .errors
            .get_or_create(&StageLabel {
                service: self.svc.name.clone(),
                stage: stage.into(),
            })
            .inc();
        let kind = match stage {
            "build" => EventKind::FleetBuildFailed,
            "start" => EventKind::FleetStartFailed,
            "destroy" => EventKind::FleetDestroyFailed,
            // The state database itself failed: an event would fail the same
            // way, so the log line and the metric are the record.
            _ => {
                tracing::error!(service = %self.svc.name, stage, "{message}");
                return;
            }
        };
        self.record(kind, Severity::Error, message, serde_json::json!({}))
            .await;
    }

    /// On a graceful stop: running instances are stopped and parked.
    async fn shutdown(&mut self) {
        let name = self.svc.name.clone();
        let rows = match self.db(move |s| s.fleet_instances(Some(&name))).await {
            Ok(rows) => rows,
            Err(e) => {
                // Nothing is stopped: the next `serve` adopts what still runs.
                tracing::error!(service = %self.svc.name, error = %e, "cannot read instances to park them");
                return;
            }
        };
        let mut stops = tokio::task::JoinSet::new();
        for mut r in rows {
            if !r.state.runs() {
                continue;
            }
            self.pool.remove(&r.id);
            let fleet = self.fleet.clone();
            let grace = self.svc.stop_timeout;
            stops.spawn(async move {
                let limit = fleet.provider_timeout + grace;
                let h = handle(&r);
                let stopped = match tokio::time::timeout(limit, fleet.provider.stop(&h, grace)).await {
                    Ok(Ok(h)) => h,
                    Ok(Err(e)) => return tracing::error!(instance = %r.id, error = %e, "cannot stop an instance"),
                    Err(_) => return tracing::error!(instance = %r.id, "stopping an instance timed out"),
                };
                if r.state == InstanceState::Draining(After::Destroy) {
                    if let Ok(Ok(())) =
                        tokio::time::timeout(fleet.provider_timeout, fleet.provider.destroy(&stopped)).await
                    {
                        let id = r.id.clone();
                        if let Err(e) = state(&fleet.store, "act", move |s| s.fleet_delete_instance(&id)).await {
                            tracing::error!(instance = %r.id, error = %e.message, "cannot forget a destroyed instance");
                        }
                    }
                    return;
                }
                r.state = InstanceState::Parked;
                r.provider = stopped.data;
                r.updated_ms = now_ms();
                r.reason = Some("steward stopped".into());
                if let Err(e) = state(&fleet.store, "act", move |s| s.fleet_put_instance(&r)).await {
                    tracing::error!(error = %e.message, "cannot record a parked instance");
                }
            });
        }
        while stops.join_next().await.is_some() {}
    }

    async fn step(&mut self) -> Result<(), StepError> {
        let now = now_ms();
        let name = self.svc.name.clone();
        // One look at the store for the service, its latest deploy and instances.
        let n = name.clone();
        let (row, latest, mut rows) = self
            .db(move |s| {
                Ok((
                    s.fleet_service(&n)?,
                    s.fleet_deploys(Some(&n), 1)?.pop(),
                    s.fleet_instances(Some(&n))?,
                ))
            })
            .await
            .map_err(|e| StepError::new("observe", e))?;
        let target = match row.as_ref().and_then(|r| r.target.clone()) {
            Some(t) => t,
            None => {
                self.first_deploy().await;
                return Ok(());
            }
        };
        let row = row.expect("a target implies a row");
        let desired = self.svc.replicas.desired(row.replicas);
        let halted = latest
            .as_ref()
            .is_some_and(|d| d.result.as_deref() == Some("failed") && d.to_digest == target);
        let running_deploy = latest.filter(|d| d.result.is_none() && d.to_digest == target);
        if let Some(d) = &running_deploy
            && d.started_ms.is_none()
        {
            let id = d.id;
            self.write("a deploy's start", move |s| s.fleet_deploy_started(id, now))
                .await;
            self.record(
                EventKind::DeployStarted,
                Severity::Info,
                format!(
                    "{} of {} to {} started ({})",
                    d.kind,
                    name,
                    short(&d.to_digest),
                    d.who
                ),
                serde_json::json!({"deploy": d.id, "to": d.to_digest, "from": d.from_digest}),
            )
            .await;
        }

        self.observe(&mut rows).await;
        self.update_pool(&rows);
        self.count(&rows);
        self.measure(&rows);

        let input = Input {
            now,
            target: target.clone(),
            previous: row.previous.clone(),
            desired,
            rollout: self.svc.rollout,
            promoted: row.promoted,
            deploy_started: running_deploy.as_ref().map(|d| d.started_ms.unwrap_or(now)),
            halted,
            health_grace: self.svc.health_grace,
            max_lifetime: self.svc.max_instance_lifetime,
            instances: rows.iter().map(view).collect(),
        };
        let mht = self.svc.rollout.min_healthy_time.as_millis() as i64;
        self.next_due = rows
            .iter()
            .filter(|r| r.state == InstanceState::Ready)
            .filter_map(|r| r.ready_ms.map(|t| t + mht))
            .filter(|due| *due > now)
            .min()
            .map(|due| Instant::now() + Duration::from_millis((due - now) as u64));
        let decision = decide(&input);
        for action in decision.actions {
            match action {
                Action::Start { reason } => {
                    if self.start_backoff.is_some_and(|t| Instant::now() < t) {
                        continue;
                    }
                    if let Err(e) = self.start(&target, &reason).await {
                        self.error("start", e).await;
                        self.start_backoff = Some(Instant::now() + Duration::from_secs(2));
                    }
                }
                Action::Revive { id } => {
                    if let Some(r) = rows.iter().find(|r| r.id == id).cloned()
                        && let Err(e) = self.revive(r).await
                    {
                        self.error("start", e).await;
                    }
                }
                Action::Drain { id, then, reason } => {
                    if let Some(r) = rows.iter().find(|r| r.id == id).cloned() {
                        self.drain(r, then, &reason).await;
                    }
                }
                Action::Destroy { id, reason } => {
                    if let Some(r) = rows.iter().find(|r| r.id == id).cloned() {
                        self.destroy(r, &reason).await;
                    }
                }
                Action::Fail { reason } => {
                    if let Some(d) = &running_deploy {
                        self.failed(d, &reason, &row).await;
                    }
                }
                Action::Complete => {
                    if let Some(d) = &running_deploy {
                        let secs = (now - d.started_ms.unwrap_or(d.requested_ms)) as f64 / 1000.0;
                        let msg = format!(
                            "{} of {} to {} succeeded in {secs:.1}s: {desired} healthy",
                            d.kind,
                            name,
                            short(&d.to_digest)
                        );
                        self.finish_deploy(d.id, "succeeded", &msg, now).await;
                        self.record(
                            EventKind::DeploySucceeded,
                            Severity::Info,
                            msg,
                            serde_json::json!({"deploy": d.id, "to": d.to_digest, "seconds": secs}),
                        )
                        .await;
                    }
                }
            }
        }
        Ok(())
    }
}

fn view(r: &InstanceRow) -> View {
    let phase = match r.state {
        InstanceState::Starting => Phase::Starting {
            since: r.updated_ms,
        },
        InstanceState::Ready => Phase::Ready {
            since: r.ready_ms.unwrap_or(r.updated_ms),
        },
        InstanceState::Unready => Phase::Unready {
            since: r.updated_ms,
        },
        InstanceState::Draining(_) => Phase::Draining,
        InstanceState::Parked => Phase::Parked,
        InstanceState::Failed => Phase::Exited,
    };
    View {
        id: r.id.clone(),
        digest: r.digest.clone(),
        phase,
        created_ms: r.created_ms,
        ever_ready: r.ready_ms.is_some(),
    }
}
