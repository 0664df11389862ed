//! The metrics controllers of `serve`, under the supervisor like every other:
//!
//! - `scrape.NAME`: a `[scrape.NAME]` target, every `interval`;
//! - `scrape.service.SERVICE`: each ready instance of a service with
//!   `metrics`, found through the fleet's state, labelled with `service` and
//!   `instance` (its address); an instance that goes away gets its series
//!   marked stale;
//! - `scrape.steward`: steward's own `/metrics` (the proxy's request counts
//!   and latencies per service among them), with no network in between;
//! - `metrics.flush`: writes new chunks to `series.db` every
//!   `metrics_flush_interval` (60 s) and lets go of the memory of those older than
//!   [`MEMORY_WINDOW`] (read back from the file when a query asks);
//! - `metrics.retention`: drops chunks older than the raw retention, in
//!   memory and in the file, and reports the store's size, every 15 s.
//!
//! Fetching is async; parsing and storing run on the blocking pool, so a
//! large scrape never holds up probes on `serve`'s thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use steward_runtime::{Controller, Next, Step, StepError};
use steward_state::{FleetState, InstanceState, SeriesChunks, now_ms};

use crate::exposition::Format;
use crate::scrape::{Grid, Limits, Report, Scraper, Target, fetch};
use crate::tsdb::head::Head;

/// The series store shared by the scrapers, the retention and the API.
pub type Series = Arc<Mutex<Head>>;

/// How long the per-minute rollups of sealed chunks are kept (queries
/// reaching back past the raw retention read one sample a minute from them).
pub const ROLLUP_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// How much of every series stays in memory once written: queries over
/// older samples read them from `series.db`.
pub const MEMORY_WINDOW: Duration = Duration::from_secs(2 * 3600);

/// Gauges about the series store, on `/metrics`.
#[derive(Clone, Default)]
pub struct StoreMetrics {
    series: Gauge,
    samples: Gauge,
    bytes: Gauge,
    disk: Gauge,
    flushed: prometheus_client::metrics::counter::Counter,
    flush_errors: prometheus_client::metrics::counter::Counter,
}

impl StoreMetrics {
    /// Registers `steward_tsdb_series`, `steward_tsdb_samples` and `steward_tsdb_chunk_bytes`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "steward_tsdb_series",
            "Series held in the metrics store",
            self.series.clone(),
        );
        r.register(
            "steward_tsdb_samples",
            "Samples held in the metrics store",
            self.samples.clone(),
        );
        r.register(
            "steward_tsdb_chunk_bytes",
            "Bytes of compressed samples held in memory by the metrics store",
            self.bytes.clone(),
        );
        r.register(
            "steward_tsdb_disk_bytes",
            "Bytes series.db takes on disk",
            self.disk.clone(),
        );
        r.register(
            "steward_tsdb_chunks_flushed",
            "Chunks written to series.db",
            self.flushed.clone(),
        );
        r.register(
            "steward_tsdb_flush_failures",
            "Flushes to series.db that failed (retried at the next)",
            self.flush_errors.clone(),
        );
    }
}

/// Logs a target's change between up and down (not every failed scrape).
fn log_change(was_up: &mut Option<bool>, job: &str, target: &str, r: &Report) {
    if *was_up != Some(r.up) {
        match &r.error {
            Some(e) => tracing::warn!(job, target, error = %e, "scrape target down"),
            None => tracing::info!(job, target, samples = r.scraped, "scrape target up"),
        }
        *was_up = Some(r.up);
    }
}

/// Parses and stores a fetched body on the blocking pool.
async fn finish(
    head: &Series,
    mut scraper: Scraper,
    fetched: Result<(Format, String), crate::scrape::ScrapeError>,
    started: Instant,
    now: i64,
) -> (Scraper, Report) {
    let head = head.clone();
    crate::store_thread::run(move || {
        let mut h = head.lock().unwrap_or_else(|e| e.into_inner());
        let report = scraper.finish(&mut h, fetched, started, now);
        (scraper, report)
    })
    .await
}

/// `scrape.NAME`: one static target.
pub struct StaticScrape {
    scraper: Option<Scraper>,
    client: reqwest::Client,
    head: Series,
    grid: Grid,
    job: String,
    was_up: Option<bool>,
}

impl StaticScrape {
    /// A controller for `[scrape.NAME]`; the URL's secret is resolved here.
    pub fn new(
        s: &steward_spec::Scrape,
        resolver: &dyn steward_spec::Resolver,
        client: reqwest::Client,
        head: Series,
    ) -> Result<StaticScrape, String> {
        let url = s
            .url
            .resolve(resolver)
            .map_err(|e| e.to_string())?
            .expose()
            .to_string();
        let target = Target {
            url,
            labels: s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            timeout: s.timeout,
            limits: s.limits,
        };
        Ok(StaticScrape {
            grid: Grid::new(&target.url, s.interval),
            scraper: Some(Scraper::new(target)),
            client,
            head,
            job: s.name.clone(),
            was_up: None,
        })
    }
}

impl Controller for StaticScrape {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let started = Instant::now();
            let now = self.grid.stamp(now_ms());
            let scraper = self.scraper.take().expect("a scraper between steps");
            let fetched = fetch(&self.client, &scraper.target).await;
            let (scraper, report) = finish(&self.head, scraper, fetched, started, now).await;
            log_change(&mut self.was_up, &self.job, &scraper.target.url, &report);
            self.scraper = Some(scraper);
            Ok(Next::After(self.grid.wait(now_ms())))
        })
    }
}

/// `scrape.service.SERVICE`: every ready instance of a service.
pub struct ServiceScrape {
    service: String,
    metrics: steward_spec::ServiceMetrics,
    fleet: Arc<dyn FleetState>,
    client: reqwest::Client,
    head: Series,
    scrapers: HashMap<String, (Scraper, Option<bool>)>,
    grid: Grid,
}

impl ServiceScrape {
    /// A controller for a service's `metrics`.
    pub fn new(
        service: &str,
        metrics: steward_spec::ServiceMetrics,
        fleet: Arc<dyn FleetState>,
        client: reqwest::Client,
        head: Series,
    ) -> ServiceScrape {
        ServiceScrape {
            grid: Grid::new(&format!("service:{service}"), metrics.interval),
            service: service.to_string(),
            metrics,
            fleet,
            client,
            head,
            scrapers: HashMap::new(),
        }
    }
}

impl Controller for ServiceScrape {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let started = Instant::now();
            let now = self.grid.stamp(now_ms());
            let service = self.service.clone();
            let instances =
                steward_state::off_thread(&self.fleet, move |f| f.fleet_instances(Some(&service)))
                    .await
                    .map_err(|e| StepError::new("observe", e))?;
            let ready: HashMap<String, String> = instances
                .into_iter()
                .filter(|i| {
                    i.state == InstanceState::Ready || matches!(i.state, InstanceState::Draining(_))
                })
                .map(|i| (i.id, i.addr))
                .collect();
            // Instances gone since the last step: their series end here.
            let gone: Vec<String> = self
                .scrapers
                .keys()
                .filter(|id| !ready.contains_key(*id))
                .cloned()
                .collect();
            if !gone.is_empty() {
                let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
                for id in gone {
                    if let Some((mut s, _)) = self.scrapers.remove(&id) {
                        s.mark_all_stale(&mut head, now);
                    }
                }
            }
            for (id, addr) in &ready {
                self.scrapers.entry(id.clone()).or_insert_with(|| {
                    let target = Target {
                        url: format!("http://{addr}{}", self.metrics.path),
                        labels: vec![
                            ("instance".into(), addr.clone()),
                            ("job".into(), self.service.clone()),
                            ("service".into(), self.service.clone()),
                        ],
                        timeout: self.metrics.timeout,
                        limits: self.metrics.limits,
                    };
                    (Scraper::new(target), None)
                });
            }
            // Fetch them all at once, then store on the blocking pool.
            let fetches = self.scrapers.iter().map(|(id, (s, _))| {
                let client = self.client.clone();
                let target = s.target.clone();
                let id = id.clone();
                async move { (id, fetch(&client, &target).await) }
            });
            let fetched = futures_util::future::join_all(fetches).await;
            let mut taken: Vec<(String, Scraper, Option<bool>)> = self
                .scrapers
                .drain()
                .map(|(id, (s, up))| (id, s, up))
                .collect();
            let head = self.head.clone();
            let results = tokio::task::spawn_blocking(move || {
                let mut h = head.lock().unwrap_or_else(|e| e.into_inner());
                let mut out = Vec::new();
                for (id, body) in fetched {
                    if let Some(i) = taken.iter().position(|(t, _, _)| *t == id) {
                        let (id, mut s, up) = taken.swap_remove(i);
                        let r = s.finish(&mut h, body, started, now);
                        out.push((id, s, up, r));
                    }
                }
                out
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            for (id, s, mut up, r) in results {
                log_change(&mut up, &self.service, &s.target.url, &r);
                self.scrapers.insert(id, (s, up));
            }
            Ok(Next::After(self.grid.wait(now_ms())))
        })
    }
}

/// `scrape.steward`: steward's own metrics, encoded and stored directly.
pub struct SelfScrape {
    scraper: Option<Scraper>,
    encode: Arc<dyn Fn() -> String + Send + Sync>,
    head: Series,
    grid: Grid,
}

impl SelfScrape {
    /// Stores what `encode` returns (OpenMetrics text) every `interval`,
    /// labelled `job="steward"`, `instance=INSTANCE`.
    pub fn new(
        instance: &str,
        encode: Arc<dyn Fn() -> String + Send + Sync>,
        head: Series,
        interval: Duration,
    ) -> SelfScrape {
        let target = Target {
            url: "steward:/metrics".into(),
            labels: vec![
                ("instance".into(), instance.to_string()),
                ("job".into(), "steward".into()),
            ],
            timeout: interval,
            limits: Limits {
                samples: 0,
                labels: 0,
                body_bytes: usize::MAX,
            },
        };
        SelfScrape {
            grid: Grid::new(&target.url, interval),
            scraper: Some(Scraper::new(target)),
            encode,
            head,
        }
    }
}

impl Controller for SelfScrape {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let started = Instant::now();
            let now = self.grid.stamp(now_ms());
            let body = (self.encode)();
            let scraper = self.scraper.take().expect("a scraper between steps");
            let (scraper, report) = finish(
                &self.head,
                scraper,
                Ok((Format::OpenMetrics, body)),
                started,
                now,
            )
            .await;
            self.scraper = Some(scraper);
            if let Some(e) = report.error {
                return Err(StepError::new("ingest", e));
            }
            Ok(Next::After(self.grid.wait(now_ms())))
        })
    }
}

/// Writes what `head` holds that `store` does not (new series, sealed
/// chunks, a snapshot of the open ones), then lets go of the memory of
/// written chunks older than [`MEMORY_WINDOW`]. Returns the sealed chunks
/// written. Blocking: call off the async threads.
pub fn flush(head: &Series, store: &dyn SeriesChunks) -> Result<usize, steward_state::StateError> {
    let plan = head.lock().unwrap_or_else(|e| e.into_inner()).plan_flush();
    let now = now_ms();
    let written = plan.write(store);
    head.lock().unwrap_or_else(|e| e.into_inner()).record_flush(
        plan,
        written,
        now - MEMORY_WINDOW.as_millis() as i64,
    )
}

/// [`flush`] from the runtime: planned and recorded on the store's thread
/// (see [`crate::store_thread`]), written on the blocking pool.
pub async fn flush_async(
    head: &Series,
    store: &Arc<dyn SeriesChunks>,
) -> Result<usize, steward_state::StateError> {
    let h = head.clone();
    let plan =
        crate::store_thread::run(move || h.lock().unwrap_or_else(|e| e.into_inner()).plan_flush())
            .await;
    let now = now_ms();
    let s = store.clone();
    let (plan, written) = tokio::task::spawn_blocking(move || {
        let written = plan.write(s.as_ref());
        (plan, written)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let h = head.clone();
    crate::store_thread::run(move || {
        h.lock().unwrap_or_else(|e| e.into_inner()).record_flush(
            plan,
            written,
            now - MEMORY_WINDOW.as_millis() as i64,
        )
    })
    .await
}

/// `metrics.flush`: [`flush`] every `interval`; a `kill -9` loses at most
/// the samples of one interval (and of the flush under way).
pub struct Flusher {
    head: Series,
    store: Arc<dyn SeriesChunks>,
    interval: Duration,
    metrics: StoreMetrics,
}

impl Flusher {
    /// Flushes `head` into `store` every `interval`.
    pub fn new(
        head: Series,
        store: Arc<dyn SeriesChunks>,
        interval: Duration,
        metrics: StoreMetrics,
    ) -> Flusher {
        Flusher {
            head,
            store,
            interval,
            metrics,
        }
    }
}

impl Controller for Flusher {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let written = flush_async(&self.head, &self.store).await;
            match written {
                Ok(n) => {
                    self.metrics.flushed.inc_by(n as u64);
                }
                Err(e) => {
                    self.metrics.flush_errors.inc();
                    return Err(StepError::new("flush", e));
                }
            }
            Ok(Next::After(self.interval))
        })
    }
}

/// `metrics.retention`: old chunks out, sizes reported, every 15 s.
pub struct Retention {
    head: Series,
    store: Option<Arc<dyn SeriesChunks>>,
    keep: Duration,
    metrics: StoreMetrics,
}

impl Retention {
    /// Keeps `keep` of samples, in memory and in `store`.
    pub fn new(
        head: Series,
        store: Option<Arc<dyn SeriesChunks>>,
        keep: Duration,
        metrics: StoreMetrics,
    ) -> Retention {
        Retention {
            head,
            store,
            keep,
            metrics,
        }
    }
}

impl Controller for Retention {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let (head, store) = (self.head.clone(), self.store.clone());
            let before = now_ms() - self.keep.as_millis() as i64;
            let (series, samples, bytes) = crate::store_thread::run(move || {
                let mut h = head.lock().unwrap_or_else(|e| e.into_inner());
                h.truncate(before, now_ms() - ROLLUP_RETENTION.as_millis() as i64);
                let (bytes, samples) = h.sample_bytes();
                (h.series_count(), samples, bytes)
            })
            .await;
            let disk = tokio::task::spawn_blocking(move || match &store {
                Some(s) => {
                    s.drop_before(before)?;
                    s.drop_rollups_before(now_ms() - ROLLUP_RETENTION.as_millis() as i64)?;
                    s.disk_bytes()
                }
                None => Ok(0),
            })
            .await
            .map_err(|e| StepError::new("truncate", e))?
            .map_err(|e| StepError::new("truncate", e))?;
            self.metrics.series.set(series as i64);
            self.metrics.samples.set(samples as i64);
            self.metrics.bytes.set(bytes as i64);
            self.metrics.disk.set(disk as i64);
            Ok(Next::After(Duration::from_secs(15)))
        })
    }
}

/// What the autoscaler needs of the state database: the fleet's tables, the
/// event log, and the key/value table (its latest decision, for
/// `steward scale --explain`).
pub trait AutoscaleStore: FleetState + steward_state::EventLog + steward_state::Meta {}

impl<T: FleetState + steward_state::EventLog + steward_state::Meta + ?Sized> AutoscaleStore for T {}

/// The meta key holding a service's latest autoscaler decision (JSON).
pub fn decision_key(service: &str) -> String {
    format!("autoscale.{service}")
}

/// The pure policy of a service's `autoscale`.
pub fn policy(
    svc: &steward_spec::Service,
    a: &steward_spec::Autoscale,
) -> crate::autoscale::Policy {
    use crate::autoscale::{Behavior, Metric, RatePolicy, Rules, Select, Target};
    let rules = |r: &steward_spec::ScaleRules| Rules {
        stabilization_ms: r.stabilization.as_millis() as i64,
        select: match r.select {
            steward_spec::ScaleSelect::Max => Select::Max,
            steward_spec::ScaleSelect::Min => Select::Min,
            steward_spec::ScaleSelect::Disabled => Select::Disabled,
        },
        policies: r
            .policies
            .iter()
            .map(|p| match *p {
                steward_spec::ScalePolicy::Instances(value, period) => RatePolicy::Instances {
                    value,
                    period_ms: period.as_millis() as i64,
                },
                steward_spec::ScalePolicy::Percent(value, period) => RatePolicy::Percent {
                    value,
                    period_ms: period.as_millis() as i64,
                },
            })
            .collect(),
    };
    crate::autoscale::Policy {
        min: svc.replicas.min,
        max: svc.replicas.max,
        metrics: a
            .metrics
            .iter()
            .map(|m| Metric {
                name: m.expr.clone(),
                target: match m.target {
                    steward_spec::AutoscaleTarget::PerInstance(v) => Target::AverageValue(v),
                    steward_spec::AutoscaleTarget::Value(v) => Target::Value(v),
                },
                activation: m.activation,
            })
            .collect(),
        behavior: Behavior {
            up: rules(&a.scale_up),
            down: rules(&a.scale_down),
            cooldown_ms: a.cooldown.as_millis() as i64,
        },
    }
}

/// What an expression says now, as the autoscaler reads it: per instance
/// when the series carry an `instance` label naming the service's instances
/// (by address), otherwise the sum of the values for the whole service.
pub fn reading(
    head: &Head,
    expr: &str,
    now: i64,
    instances: &[(String, bool)],
) -> Result<crate::autoscale::Reading, String> {
    use crate::autoscale::{InstanceReading, Reading};
    use crate::promql::eval::{Value, instant};
    match instant(head, expr, now).map_err(|e| e.to_string())? {
        Value::Scalar(v) => Ok(Reading::Total(v.is_finite().then_some(v))),
        Value::Vector(v) => {
            let per_instance = v.iter().any(|s| {
                s.labels.iter().any(|(n, val)| {
                    &**n == "instance" && instances.iter().any(|(a, _)| **a == **val)
                })
            });
            if per_instance {
                Ok(Reading::PerInstance(
                    instances
                        .iter()
                        .map(|(addr, ready)| InstanceReading {
                            ready: *ready,
                            value: v
                                .iter()
                                .find(|s| {
                                    s.labels
                                        .iter()
                                        .any(|(n, val)| &**n == "instance" && **val == **addr)
                                })
                                .map(|s| s.value)
                                .filter(|x| x.is_finite()),
                        })
                        .collect(),
                ))
            } else if v.is_empty() {
                Ok(Reading::Total(None))
            } else {
                Ok(Reading::Total(Some(v.iter().map(|s| s.value).sum())))
            }
        }
        _ => Err(format!("`{expr}` is not a number or an instant vector")),
    }
}

/// `autoscale.SERVICE`: decides a service's count from its metrics every
/// `interval` and, in `act` mode, asks the fleet for it through the same
/// door as `steward scale`.
pub struct Autoscaler {
    service: steward_spec::Service,
    autoscale: steward_spec::Autoscale,
    policy: crate::autoscale::Policy,
    store: Arc<dyn AutoscaleStore>,
    head: Series,
    history: crate::autoscale::History,
    last_recommended: Option<u32>,
}

impl Autoscaler {
    /// The autoscaler of a service with `autoscale`.
    pub fn new(
        service: steward_spec::Service,
        store: Arc<dyn AutoscaleStore>,
        head: Series,
    ) -> Option<Autoscaler> {
        let autoscale = service.autoscale.clone()?;
        let policy = policy(&service, &autoscale);
        Some(Autoscaler {
            service,
            autoscale,
            policy,
            store,
            head,
            history: Default::default(),
            last_recommended: None,
        })
    }
}

impl Controller for Autoscaler {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let started = Instant::now();
            let now = now_ms();
            let name = self.service.name.clone();
            let (row, instances) = steward_state::off_thread(&self.store, move |s| {
                Ok((s.fleet_service(&name)?, s.fleet_instances(Some(&name))?))
            })
            .await
            .map_err(|e| StepError::new("observe", e))?;
            let current = self.service.replicas.desired(row.and_then(|r| r.replicas));
            let target = instances
                .iter()
                .filter(|i| i.state.runs())
                .map(|i| (i.addr.clone(), i.state == InstanceState::Ready))
                .collect::<Vec<_>>();
            let ready = target.iter().filter(|(_, r)| *r).count() as u32;
            let (head, exprs) = (self.head.clone(), self.autoscale.metrics.clone());
            let readings = tokio::task::spawn_blocking(move || {
                let h = head.lock().unwrap_or_else(|e| e.into_inner());
                exprs
                    .iter()
                    .map(|m| reading(&h, &m.expr, now, &target))
                    .collect::<Result<Vec<_>, String>>()
            })
            .await
            .map_err(|e| StepError::new("observe", e))?
            .map_err(|e| StepError::new("query", e))?;
            let seen = crate::autoscale::Observation {
                current,
                ready,
                readings,
            };
            let d = crate::autoscale::decide(&self.policy, &seen, &self.history, now);
            self.history.recommendations.push((now, d.recommendation));
            if d.active {
                self.history.last_active_ms = Some(now);
            }
            let b = &self.policy.behavior;
            let keep = [b.up.stabilization_ms, b.down.stabilization_ms]
                .into_iter()
                .chain(
                    b.up.policies
                        .iter()
                        .chain(&b.down.policies)
                        .map(|p| match *p {
                            crate::autoscale::RatePolicy::Instances { period_ms, .. }
                            | crate::autoscale::RatePolicy::Percent { period_ms, .. } => period_ms,
                        }),
                )
                .max()
                .unwrap_or(0);
            self.history.trim(now, keep);
            let record = serde_json::json!({
                "at_ms": now,
                "current": current,
                "desired": d.desired,
                "recommendation": d.recommendation,
                "mode": if self.autoscale.mode == steward_spec::AutoscaleMode::Act { "act" } else { "recommend" },
                "reason": d.reason,
            });
            let key = decision_key(&self.service.name);
            let (svc, desired, reason, mode) = (
                self.service.clone(),
                d.desired,
                d.reason.clone(),
                self.autoscale.mode,
            );
            let changes = d.desired != current;
            let recommend_news = mode == steward_spec::AutoscaleMode::Recommend
                && changes
                && self.last_recommended != Some(d.desired);
            steward_state::off_thread(&self.store, move |s| {
                s.set_meta(&key, &record.to_string())?;
                if changes && mode == steward_spec::AutoscaleMode::Act {
                    let why = reason.replace('\n', "; ");
                    match steward_fleet_scale(s, &svc, desired, &why) {
                        Ok(()) => {}
                        Err(e) => return Err(e),
                    }
                } else if recommend_news {
                    s.append_event(&steward_state::NewEvent::now(
                        steward_state::EventKind::AutoscaleRecommended,
                        &svc.name,
                        steward_state::Severity::Info,
                        format!(
                            "{} would scale from {current} to {desired}: {}",
                            svc.name,
                            reason.replace('\n', "; ")
                        ),
                        serde_json::json!({"from": current, "to": desired}),
                    ))?;
                }
                Ok(())
            })
            .await
            .map_err(|e| StepError::new("act", e))?;
            if changes && mode == steward_spec::AutoscaleMode::Act {
                self.history
                    .changes
                    .push((now, i64::from(d.desired) - i64::from(current)));
                tracing::info!(service = %self.service.name, from = current, to = d.desired, "autoscaled");
            }
            if mode == steward_spec::AutoscaleMode::Recommend {
                self.last_recommended = Some(d.desired);
            }
            Ok(Next::After(
                self.autoscale.interval.saturating_sub(started.elapsed()),
            ))
        })
    }
}

/// The fleet's one scale door, as a state error for the step.
fn steward_fleet_scale(
    s: &(dyn AutoscaleStore + 'static),
    svc: &steward_spec::Service,
    n: u32,
    why: &str,
) -> Result<(), steward_state::StateError> {
    match steward_fleet::requests::request_scale(s, svc, n, "the autoscaler", Some(why)) {
        Ok(()) => Ok(()),
        Err(steward_fleet::requests::ScaleError::State(e)) => Err(e),
        // decide() keeps within the replicas; out of range cannot happen.
        Err(e) => {
            tracing::error!(error = %e, "autoscaler asked for a count outside the replicas");
            Ok(())
        }
    }
}
