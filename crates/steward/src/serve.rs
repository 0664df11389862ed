//! `steward serve`: every controller in one process, until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use steward_alert::Alerter;
use steward_health::{HealthMetrics, Monitor, Prober};
use steward_spec::{OsResolver, Resolver};
use tokio_util::sync::CancellationToken;

use crate::{exit, load_spec};
use steward_state::{EventKind, EventLog, Meta, NewEvent, Severity, Store, now_ms};

/// Meta key holding the last heartbeat of `serve` (read by `doctor`).
pub(crate) const HEARTBEAT_KEY: &str = "serve.heartbeat";

fn event(
    kind: EventKind,
    severity: Severity,
    message: String,
    data: serde_json::Value,
) -> NewEvent {
    NewEvent::now(kind, "steward", severity, message, data)
}

pub(crate) async fn run(spec_path: &Path, listen: Option<SocketAddr>) -> u8 {
    let spec = match load_spec(spec_path) {
        Ok(s) => Arc::new(s),
        Err(code) => return code,
    };
    let listen = listen.unwrap_or(spec.settings.listen);
    if !listen.ip().is_loopback()
        && spec.settings.auth == steward_spec::AuthMode::None
        && !spec.settings.insecure
    {
        eprintln!(
            "error: refusing to serve the API on {listen} to other machines without authentication\n  help: set `auth = \"token\"` in [steward] (then `steward token create`), listen on 127.0.0.1, or set `insecure = true` to accept the risk"
        );
        return exit::USAGE;
    }
    let store = match Store::open(&spec.settings.state_dir) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    // Bind before starting anything: a taken port is a start-up error, not a half-running daemon.
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return exit::USAGE;
        }
    };
    let addr = listener.local_addr().unwrap_or(listen);
    // Services' proxy addresses too: a taken one stops the start, not one service.
    let proxies = match steward_fleet::controller::bind(&spec).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let tls_files = spec
        .settings
        .tls
        .as_ref()
        .map(|t| steward_server::TlsFiles {
            cert: t.cert.clone(),
            key: t.key.clone(),
        });
    let (listener, reloader) =
        match steward_server::StewardListener::new(listener, tls_files.as_ref()) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: TLS: {e}");
                return exit::USAGE;
            }
        };

    let mut registry = Registry::default();
    steward_server::register_process_metrics(&mut registry);
    registry.register(
        "steward_state_write_errors",
        "Events that could not be written to the state database (each also logged as an error)",
        store.write_errors(),
    );
    let health_metrics = HealthMetrics::default();
    health_metrics.register(&mut registry);
    let alert_metrics = steward_alert::AlertMetrics::default();
    alert_metrics.register(&mut registry);
    let converge_metrics = steward_converge::drift::ConvergeMetrics::default();
    converge_metrics.register(&mut registry);
    let backup_metrics = steward_backup::controller::BackupMetrics::default();
    backup_metrics.register(&mut registry);
    let image_metrics = steward_image::controller::ImageMetrics::default();
    image_metrics.register(&mut registry);
    let fleet_metrics = steward_fleet::controller::FleetMetrics::default();
    fleet_metrics.register(&mut registry);
    let proxy_metrics = steward_fleet::proxy::ProxyMetrics::default();
    proxy_metrics.register(&mut registry);

    let cancel = CancellationToken::new();
    let resolver: Arc<dyn Resolver> = Arc::new(OsResolver);
    let monitor = match Monitor::new(
        spec.checks.values().cloned().collect(),
        Prober::new(resolver.clone()),
        store.clone(),
        spec.settings.retention,
        health_metrics,
    ) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };

    tokio::spawn(reload_on_sighup(reloader, store.clone(), cancel.clone()));

    // Every controller runs under one supervisor: the same panic isolation,
    // restarts, metrics, events and health for all. This is the list.
    let mut sup = steward_runtime::Supervisor::new(
        store.clone(),
        steward_runtime::Supervisor::always_leader(),
    );
    let board = monitor.board.clone();
    monitor.register(&mut sup);
    let mut alerter = Alerter::new(&spec, store.clone(), board.clone(), resolver.clone());
    alerter.metrics = alert_metrics;
    let firing = alerter.firing.clone();
    alerter.register(&mut sup);
    steward_backup::controller::BackupController {
        spec: spec.clone(),
        store: store.clone(),
        resolver: resolver.clone(),
        metrics: backup_metrics,
    }
    .register(&mut sup);
    steward_fleet::snapshot::SnapshotController {
        spec: spec.clone(),
        store: store.clone(),
        resolver: resolver.clone(),
    }
    .register(&mut sup);
    for name in steward_image::controller::Audit::audited(&spec) {
        let (spec, store, resolver, metrics) = (
            spec.clone(),
            store.clone(),
            resolver.clone(),
            image_metrics.clone(),
        );
        sup.add(format!("image.{name}"), move |_| {
            Box::new(steward_image::controller::Audit::new(
                spec.clone(),
                store.clone(),
                resolver.clone(),
                metrics.clone(),
                name.clone(),
            ))
        });
    }
    for set in spec.converge.values().filter(|s| s.drift_check.is_some()) {
        let check = steward_converge::drift::DriftCheck {
            set: set.clone(),
            store: store.clone(),
            state_dir: spec.settings.state_dir.clone(),
            resolver: resolver.clone(),
            metrics: converge_metrics.clone(),
        };
        let check = std::sync::Arc::new(check);
        sup.add_leader_only(format!("converge.{}", set.name), move |_| {
            Box::new(steward_converge::drift::DriftController::new(check.clone()))
        });
    }
    let proxies = steward_fleet::controller::Fleet {
        spec: spec.clone(),
        store: store.clone(),
        resolver: resolver.clone(),
        provider: Arc::new(steward_fleet::provider::Providers::for_spec(
            &spec,
            resolver.clone(),
            Arc::new(steward_fleet::provider::Local::new(
                &spec.settings.state_dir,
            )),
        )),
        provider_timeout: steward_fleet::controller::PROVIDER_TIMEOUT,
        prober: Prober::new(resolver.clone()),
        metrics: fleet_metrics,
        proxy_metrics,
    }
    .register(proxies, &mut sup, cancel.clone())
    .await;
    // Metrics as series: static targets, services' instances, steward's own
    // /metrics (the proxy's per-service requests and latencies), and their
    // retention. The store is shared with the API.
    // The series live in memory and in series.db; a second steward on the
    // same state directory keeps its own in memory only.
    let chunks: Option<Arc<dyn steward_state::SeriesChunks>> = match steward_state::SeriesDb::open(
        &spec.settings.state_dir,
    ) {
        Ok(db) => Some(Arc::new(db)),
        Err(steward_state::StateError::InUse { path }) => {
            tracing::warn!(lock = %path.display(), "another steward keeps the metrics of this state directory; this one keeps its series in memory only");
            None
        }
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let memory_from = now_ms() - steward_metrics::controller::MEMORY_WINDOW.as_millis() as i64;
    let series: steward_metrics::controller::Series = match chunks.clone() {
        None => Default::default(),
        Some(c) => match tokio::task::spawn_blocking(move || {
            steward_metrics::tsdb::head::Head::open(c, memory_from)
        })
        .await
        {
            Ok(Ok(head)) => Arc::new(std::sync::Mutex::new(head)),
            Ok(Err(e)) => {
                eprintln!("error: cannot read the metrics store: {e}");
                return exit::USAGE;
            }
            Err(e) => {
                eprintln!("error: cannot read the metrics store: {e}");
                return exit::USAGE;
            }
        },
    };
    series
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .set_series_limit(spec.settings.max_series);
    let store_metrics = steward_metrics::controller::StoreMetrics::default();
    store_metrics.register(&mut registry);
    let scrape_client = match steward_net::http(steward_net::HttpOptions {
        timeout: None,
        connect_timeout: Some(Duration::from_secs(5)),
        no_proxy: true,
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    for s in spec.scrapes.values() {
        let (client, series, resolver) = (scrape_client.clone(), series.clone(), resolver.clone());
        let s = s.clone();
        sup.add(format!("scrape.{}", s.name), move |_| {
            match steward_metrics::controller::StaticScrape::new(
                &s,
                resolver.as_ref(),
                client.clone(),
                series.clone(),
            ) {
                Ok(c) => Box::new(c),
                Err(e) => Box::new(steward_runtime::Failing::new("resolve", e)),
            }
        });
    }
    for svc in spec.services.values() {
        let Some(m) = svc.metrics.clone() else {
            continue;
        };
        let (client, series, fleet, name) = (
            scrape_client.clone(),
            series.clone(),
            store.clone() as Arc<dyn steward_state::FleetState>,
            svc.name.clone(),
        );
        sup.add(format!("scrape.service.{name}"), move |_| {
            Box::new(steward_metrics::controller::ServiceScrape::new(
                &name,
                m.clone(),
                fleet.clone(),
                client.clone(),
                series.clone(),
            ))
        });
    }
    // The autoscalers: each service with `autoscale` follows its metrics,
    // through the same scale door as `steward scale` (leader-only: two
    // stewards must not both decide).
    for svc in spec.services.values().filter(|s| s.autoscale.is_some()) {
        let (series, store, svc) = (series.clone(), store.clone(), svc.clone());
        sup.add_leader_only(format!("autoscale.{}", svc.name), move |_| {
            let store: Arc<dyn steward_metrics::controller::AutoscaleStore> = store.clone();
            match steward_metrics::controller::Autoscaler::new(svc.clone(), store, series.clone()) {
                Some(a) => Box::new(a),
                None => Box::new(steward_runtime::Failing::new("spec", "no autoscale")),
            }
        });
    }
    // Remote write: every stored sample sent on (leader-only: one steward
    // sends, the one whose store is authoritative).
    let remote_metrics = steward_metrics::remote_write::RemoteWriteMetrics::default();
    remote_metrics.register(&mut registry);
    for remote in spec.remote_writes.values() {
        let (series, resolver, remote, metrics, client) = (
            series.clone(),
            resolver.clone(),
            remote.clone(),
            remote_metrics.clone(),
            scrape_client.clone(),
        );
        sup.add_leader_only(format!("remote_write.{}", remote.name), move |_| {
            match steward_metrics::remote_write::RemoteWriter::new(
                remote.clone(),
                resolver.as_ref(),
                series.clone(),
                client.clone(),
                metrics.clone(),
            ) {
                Ok(c) => Box::new(c),
                Err(e) => Box::new(steward_runtime::Failing::new("resolve", e)),
            }
        });
    }
    // Alerting rules over the series (leader-only, like the alerting that
    // delivers what they find).
    for rule in spec.rules.values() {
        let (series, store, firing, rule) =
            (series.clone(), store.clone(), firing.clone(), rule.clone());
        sup.add_leader_only(format!("rule.{}", rule.name), move |_| {
            Box::new(steward_metrics::rules::RuleEvaluator::new(
                rule.clone(),
                series.clone(),
                store.clone(),
                firing.clone(),
            ))
        });
    }
    {
        if let Some(c) = chunks.clone() {
            let (s, metrics) = (series.clone(), store_metrics.clone());
            let every = spec.settings.metrics_flush_interval;
            sup.add("metrics.flush", move |_| {
                Box::new(steward_metrics::controller::Flusher::new(
                    s.clone(),
                    c.clone(),
                    every,
                    metrics.clone(),
                ))
            });
        }
        let (series, chunks, keep) = (
            series.clone(),
            chunks.clone(),
            spec.settings.retention.raw.0,
        );
        sup.add("metrics.retention", move |_| {
            Box::new(steward_metrics::controller::Retention::new(
                series.clone(),
                chunks.clone(),
                keep,
                store_metrics.clone(),
            ))
        });
    }
    sup.metrics().register(&mut registry);
    let registry = Arc::new(registry);
    {
        let (series, registry) = (series.clone(), registry.clone());
        let encode: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
            let mut body = String::new();
            let _ = prometheus_client::encoding::text::encode(&mut body, &registry);
            body
        });
        let instance = addr.to_string();
        let self_interval = spec.settings.self_scrape_interval;
        sup.add("scrape.steward", move |_| {
            Box::new(steward_metrics::controller::SelfScrape::new(
                &instance,
                encode.clone(),
                series.clone(),
                self_interval,
            ))
        });
    }
    let controllers = sup.health();
    let supervised = tokio::spawn(sup.run(cancel.clone()));

    let heartbeat = {
        let (store, cancel) = (store.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let store = store.clone();
                        let beat = tokio::task::spawn_blocking(move || store.set_meta(HEARTBEAT_KEY, &now_ms().to_string())).await;
                        if let Ok(Err(e)) = beat {
                            tracing::error!(error = %e, "cannot record the heartbeat");
                        }
                    }
                    _ = cancel.cancelled() => break,
                }
            }
        })
    };

    store.record(&event(
        EventKind::ServeStarted,
        Severity::Info,
        format!(
            "steward {} serving on http://{addr} with {} checks and {} services",
            env!("CARGO_PKG_VERSION"),
            spec.checks.len(),
            spec.services.len()
        ),
        serde_json::json!({"listen": addr.to_string(), "checks": spec.checks.len()}),
    ));
    let scheme = if spec.settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, checks = spec.checks.len(), "serving; status page at {scheme}://{addr}/");

    let state = steward_server::AppState::new(spec.clone(), store.clone(), board.clone(), registry)
        .with_controllers(controllers)
        .with_series(series.clone());
    let series_for_shutdown = series;
    let summaries = tokio::spawn(state.clone().refresh_summaries(cancel.clone()));
    let app = steward_server::router(state);
    let shutdown = {
        let cancel = cancel.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            cancel.cancel();
        }
    };
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<steward_server::PeerAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    cancel.cancel();
    let _ = supervised.await;
    if let Some(proxies) = proxies {
        let _ = tokio::task::spawn_blocking(move || proxies.join()).await;
    }
    let _ = heartbeat.await;
    let _ = summaries.await;
    // What the last flush did not write yet.
    if let Some(chunks) = chunks {
        let series = series_for_shutdown;
        let flushed = tokio::task::spawn_blocking(move || {
            steward_metrics::controller::flush(&series, chunks.as_ref())
        })
        .await;
        if let Ok(Err(e)) = flushed {
            tracing::error!(error = %e, "cannot write the last samples to the metrics store");
        }
    }
    store.record(&event(
        EventKind::ServeStopped,
        Severity::Info,
        "steward stopped".into(),
        serde_json::json!({}),
    ));
    match served {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: HTTP server failed: {e}");
            exit::FAILED
        }
    }
}

/// SIGHUP re-reads the certificate and key; the listening socket stays open and
/// connections already made keep theirs. Without TLS, SIGHUP is logged and
/// otherwise ignored (it must not stop the daemon).
async fn reload_on_sighup(
    reloader: Option<steward_server::TlsReloader>,
    store: Arc<Store>,
    cancel: CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                _ = cancel.cancelled() => return,
            }
            let Some(reloader) = &reloader else {
                tracing::info!("SIGHUP received; no TLS certificate to reload");
                continue;
            };
            let (kind, severity, message) = match reloader.reload() {
                Ok(()) => (
                    EventKind::ServeTlsReloaded,
                    Severity::Info,
                    "TLS certificate reloaded".to_string(),
                ),
                Err(e) => (
                    EventKind::ServeTlsReloadFailed,
                    Severity::Error,
                    format!("TLS certificate not reloaded, the old one stays in use: {e}"),
                ),
            };
            tracing::info!(%kind, "{message}");
            steward_state::record_off_thread(
                &store,
                event(kind, severity, message, serde_json::json!({})),
            )
            .await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (reloader, store);
        cancel.cancelled().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
