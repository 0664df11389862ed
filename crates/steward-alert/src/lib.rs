//! Alerting: turns health transitions into notices (pure decision), delivers
//! them over webhook, Slack-compatible webhook or SMTP with retries, and sends
//! reminders while a check stays down. Delivery failures are recorded and
//! never stop monitoring.

mod deliver;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use steward_health::{Board, CheckEvent};
use steward_spec::{Alert, Check, Maintenance, Resolver};
use steward_state::{Delivery, Health, NewEvent, Store, now_ms};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use deliver::{Sender, deliver};

/// What a notice says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// The check went down.
    Down,
    /// The check became degraded.
    Degraded,
    /// The check is healthy again.
    Recovered,
    /// Still down.
    Reminder,
}

impl NoticeKind {
    /// Lowercase name used in payloads and events.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Down => "down",
            NoticeKind::Degraded => "degraded",
            NoticeKind::Recovered => "recovered",
            NoticeKind::Reminder => "reminder",
        }
    }
}

/// One message to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// Which kind.
    pub kind: NoticeKind,
    /// The check.
    pub check: String,
    /// Health now.
    pub health: Health,
    /// Health before (for transitions).
    pub previous: Health,
    /// Since when (Unix ms).
    pub since: i64,
    /// Latest error.
    pub error: Option<String>,
    /// Event that caused it, for idempotent receivers.
    pub event_id: Option<i64>,
    /// Name of the monitored application.
    pub app: String,
}

/// Why a notice was held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suppressed {
    /// A maintenance window is active.
    Maintenance(String),
    /// A check this one depends on is down.
    Dependency(String),
}

/// Decides which notice a transition deserves for a channel. Pure.
pub fn decide(from: Health, to: Health, alert: &Alert) -> Option<NoticeKind> {
    match (from, to) {
        (_, Health::Down) => Some(NoticeKind::Down),
        (Health::Down, Health::Up | Health::Degraded) if alert.send_recovered => {
            Some(NoticeKind::Recovered)
        }
        (Health::Up | Health::Unknown, Health::Degraded) if alert.send_warn => {
            Some(NoticeKind::Degraded)
        }
        (Health::Degraded, Health::Up) if alert.send_warn && alert.send_recovered => {
            Some(NoticeKind::Recovered)
        }
        _ => None,
    }
}

/// Whether a notice for `check` is held back now. Pure over its inputs.
pub fn suppression(
    check: &Check,
    now: chrono::DateTime<chrono::Utc>,
    maintenance: &[Maintenance],
    health_of: &dyn Fn(&str) -> Option<Health>,
) -> Option<Suppressed> {
    if let Some(m) = maintenance
        .iter()
        .find(|m| m.covers(&check.name) && m.active_at(now))
    {
        return Some(Suppressed::Maintenance(m.name.clone()));
    }
    check
        .depends_on
        .iter()
        .find(|d| health_of(d) == Some(Health::Down))
        .map(|d| Suppressed::Dependency(d.clone()))
}

/// The alerting controller.
pub struct Alerter {
    /// Name of the application (in messages).
    pub app: String,
    /// Channels by name.
    pub alerts: BTreeMap<String, Alert>,
    /// Checks by name.
    pub checks: BTreeMap<String, Arc<Check>>,
    /// Maintenance windows.
    pub maintenance: Vec<Maintenance>,
    /// State database.
    pub store: Arc<Store>,
    /// Current check states.
    pub board: Board,
    /// Delivers notices.
    pub sender: Sender,
    /// Delay before each retry; the number of entries is the number of retries.
    pub retry_delays: Vec<Duration>,
    /// How often reminders are considered.
    pub reminder_tick: Duration,
    /// Delivery counters.
    pub metrics: AlertMetrics,
}

/// Prometheus metrics of the alerting controller.
#[derive(Clone, Default)]
pub struct AlertMetrics {
    deliveries: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl AlertMetrics {
    /// Registers `steward_alert_deliveries_total{alert, outcome}`.
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "steward_alert_deliveries",
            "Alert delivery attempts by channel and outcome (delivered, retry, failed)",
            self.deliveries.clone(),
        );
    }

    fn count(&self, alert: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&vec![
                ("alert".into(), alert.into()),
                ("outcome".into(), outcome.into()),
            ])
            .inc();
    }
}

impl Alerter {
    /// Builds the alerting controller for a spec.
    pub fn new(
        spec: &steward_spec::Spec,
        store: Arc<Store>,
        board: Board,
        resolver: Arc<dyn Resolver>,
    ) -> Self {
        Alerter {
            app: spec.settings.name.clone(),
            alerts: spec.alerts.clone(),
            checks: spec.checks.clone(),
            maintenance: spec.maintenance.values().cloned().collect(),
            store,
            board,
            sender: Sender::new(resolver),
            metrics: AlertMetrics::default(),
            retry_delays: vec![
                Duration::from_secs(2),
                Duration::from_secs(10),
                Duration::from_secs(60),
            ],
            reminder_tick: Duration::from_secs(15),
        }
    }

    fn health_of(&self, name: &str) -> Option<Health> {
        self.board
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|s| s.health)
    }

    /// Runs until cancelled: transitions become notices, reminders go out on time.
    pub async fn run(self, mut rx: broadcast::Receiver<CheckEvent>, cancel: CancellationToken) {
        let me = Arc::new(self);
        let mut last_sent: BTreeMap<String, i64> = me.store.last_delivered().unwrap_or_default();
        let mut tick = tokio::time::interval(me.reminder_tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inflight = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        for n in me.on_transition(&ev) {
                            last_sent.insert(ev.check.clone(), now_ms());
                            let me = me.clone();
                            let c = cancel.clone();
                            inflight.spawn(async move { me.send_with_retries(n.0, n.1, c).await });
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "alerting fell behind; some transitions were not alerted");
                        let _ = me.store.append_event(&NewEvent::now(
                            "alert.lagged", "alerting", "warning",
                            format!("{n} transitions were not alerted"), serde_json::json!({"missed": n}),
                        ));
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tick.tick() => {
                    for (alert, notice) in me.due_reminders(&last_sent) {
                        last_sent.insert(notice.check.clone(), now_ms());
                        let me = me.clone();
                        let c = cancel.clone();
                        inflight.spawn(async move { me.send_with_retries(alert, notice, c).await });
                    }
                }
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            }
        }
        // Give deliveries in flight a moment to finish on shutdown.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
    }

    fn suppressed(&self, check: &Check) -> Option<Suppressed> {
        suppression(check, chrono::Utc::now(), &self.maintenance, &|n| {
            self.health_of(n)
        })
    }

    fn record_suppressed(&self, check: &str, why: &Suppressed, event_id: Option<i64>) {
        let reason = match why {
            Suppressed::Maintenance(m) => format!("maintenance window `{m}`"),
            Suppressed::Dependency(d) => format!("`{d}`, which it depends on, is down"),
        };
        let _ = self.store.append_event(&NewEvent::now(
            "alert.suppressed",
            check,
            "info",
            format!("alert for {check} held back: {reason}"),
            serde_json::json!({"event_id": event_id}),
        ));
    }

    /// Notices for one transition, one per channel that wants it.
    fn on_transition(&self, ev: &CheckEvent) -> Vec<(String, Notice)> {
        let Some(check) = self.checks.get(&ev.check) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in &check.alerts {
            let Some(alert) = self.alerts.get(name) else {
                continue;
            };
            let Some(kind) = decide(ev.transition.from, ev.transition.to, alert) else {
                continue;
            };
            if let Some(why) = self.suppressed(check) {
                self.record_suppressed(&check.name, &why, Some(ev.event_id));
                continue;
            }
            out.push((
                name.clone(),
                Notice {
                    kind,
                    check: check.name.clone(),
                    health: ev.transition.to,
                    previous: ev.transition.from,
                    since: ev.state.since,
                    error: ev.state.last.as_ref().and_then(|l| l.error.clone()),
                    event_id: Some(ev.event_id),
                    app: self.app.clone(),
                },
            ));
        }
        out
    }

    fn due_reminders(&self, last_sent: &BTreeMap<String, i64>) -> Vec<(String, Notice)> {
        let now = now_ms();
        let board = self.board.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = Vec::new();
        for (name, state) in &board {
            if state.health != Health::Down {
                continue;
            }
            let Some(check) = self.checks.get(name) else {
                continue;
            };
            for a in &check.alerts {
                let Some(alert) = self.alerts.get(a) else {
                    continue;
                };
                let Some(every) = alert.reminder else {
                    continue;
                };
                let last = last_sent
                    .get(name)
                    .copied()
                    .unwrap_or(state.since)
                    .max(state.since);
                if now - last < every.as_millis_i64() || self.suppressed(check).is_some() {
                    continue;
                }
                out.push((
                    a.clone(),
                    Notice {
                        kind: NoticeKind::Reminder,
                        check: name.clone(),
                        health: Health::Down,
                        previous: Health::Down,
                        since: state.since,
                        error: state.last.as_ref().and_then(|l| l.error.clone()),
                        event_id: None,
                        app: self.app.clone(),
                    },
                ));
            }
        }
        out
    }

    async fn send_with_retries(
        &self,
        alert_name: String,
        notice: Notice,
        cancel: CancellationToken,
    ) {
        let Some(alert) = self.alerts.get(&alert_name) else {
            return;
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let res = self.sender.send(&alert.channel, &notice).await;
            let ok = res.is_ok();
            let error = res.err();
            if let Err(e) = self.store.record_delivery(&Delivery {
                ts: now_ms(),
                alert: alert_name.clone(),
                check: notice.check.clone(),
                event_id: notice.event_id,
                attempt,
                ok,
                error: error.clone(),
            }) {
                tracing::warn!(error = %e, "cannot record alert delivery");
            }
            if ok {
                self.metrics.count(&alert_name, "delivered");
                tracing::info!(alert = %alert_name, check = %notice.check, kind = notice.kind.as_str(), attempt, "alert delivered");
                let _ = self.store.append_event(&NewEvent::now(
                    "alert.sent",
                    &notice.check,
                    "info",
                    format!("{} alert for {} sent to {alert_name}", notice.kind.as_str(), notice.check),
                    serde_json::json!({"alert": alert_name, "attempt": attempt, "event_id": notice.event_id}),
                ));
                return;
            }
            let error = error.unwrap_or_default();
            tracing::warn!(alert = %alert_name, check = %notice.check, attempt, error = %error, "alert delivery failed");
            let Some(delay) = self.retry_delays.get(attempt as usize - 1) else {
                self.metrics.count(&alert_name, "failed");
                let _ = self.store.append_event(&NewEvent::now(
                    "alert.failed",
                    &notice.check,
                    "error",
                    format!("{} alert for {} could not be sent to {alert_name}: {error}", notice.kind.as_str(), notice.check),
                    serde_json::json!({"alert": alert_name, "attempts": attempt, "event_id": notice.event_id}),
                ));
                return;
            };
            self.metrics.count(&alert_name, "retry");
            tokio::select! {
                _ = tokio::time::sleep(*delay) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_spec::{Channel, Text};

    fn alert(send_recovered: bool, send_warn: bool) -> Alert {
        Alert {
            name: "a".into(),
            channel: Channel::Slack {
                url: Text::new("http://x"),
            },
            reminder: None,
            send_recovered,
            send_warn,
        }
    }

    #[test]
    fn decisions() {
        use Health::*;
        let a = alert(true, false);
        assert_eq!(decide(Up, Down, &a), Some(NoticeKind::Down));
        assert_eq!(decide(Unknown, Down, &a), Some(NoticeKind::Down));
        assert_eq!(decide(Down, Up, &a), Some(NoticeKind::Recovered));
        assert_eq!(decide(Unknown, Up, &a), None);
        assert_eq!(decide(Up, Degraded, &a), None);
        assert_eq!(decide(Down, Up, &alert(false, false)), None);
        let w = alert(true, true);
        assert_eq!(decide(Up, Degraded, &w), Some(NoticeKind::Degraded));
        assert_eq!(decide(Degraded, Up, &w), Some(NoticeKind::Recovered));
    }
}

#[cfg(test)]
mod suppression_tests {
    use super::*;
    use std::path::Path;

    fn spec() -> steward_spec::Spec {
        let src = r#"
[check.db]
type = "tcp"
address = "127.0.0.1:5432"
[check.api]
type = "tcp"
address = "127.0.0.1:8000"
depends_on = ["db"]
[maintenance.nightly]
schedule = "0 3 * * *"
duration = "30m"
checks = ["api"]
"#;
        steward_spec::Spec::parse("t.toml", src, Path::new("/"), &steward_spec::OsResolver).unwrap()
    }

    fn at(h: u32, m: u32) -> chrono::DateTime<chrono::Utc> {
        use chrono::TimeZone;
        chrono::Utc.with_ymd_and_hms(2026, 11, 26, h, m, 0).unwrap()
    }

    #[test]
    fn maintenance_window_holds_back_only_its_checks_and_only_inside() {
        let s = spec();
        let windows: Vec<Maintenance> = s.maintenance.values().cloned().collect();
        let healthy = |_: &str| Some(Health::Up);
        let api = &s.checks["api"];
        let db = &s.checks["db"];
        assert_eq!(
            suppression(api, at(3, 10), &windows, &healthy),
            Some(Suppressed::Maintenance("nightly".into()))
        );
        assert_eq!(
            suppression(api, at(3, 29), &windows, &healthy),
            Some(Suppressed::Maintenance("nightly".into()))
        );
        assert_eq!(
            suppression(api, at(3, 30), &windows, &healthy),
            None,
            "the window is half-open"
        );
        assert_eq!(suppression(api, at(2, 59), &windows, &healthy), None);
        assert_eq!(
            suppression(db, at(3, 10), &windows, &healthy),
            None,
            "db is not in the window"
        );
    }

    #[test]
    fn a_down_parent_holds_back_its_dependents() {
        let s = spec();
        let api = &s.checks["api"];
        let db_down = |n: &str| Some(if n == "db" { Health::Down } else { Health::Up });
        assert_eq!(
            suppression(api, at(12, 0), &[], &db_down),
            Some(Suppressed::Dependency("db".into()))
        );
        let db_degraded = |n: &str| {
            Some(if n == "db" {
                Health::Degraded
            } else {
                Health::Up
            })
        };
        assert_eq!(suppression(api, at(12, 0), &[], &db_degraded), None);
        assert_eq!(
            suppression(&s.checks["db"], at(12, 0), &[], &db_down),
            None,
            "the parent itself still alerts"
        );
    }
}

#[cfg(test)]
mod reminder_tests {
    use super::*;
    use std::path::Path;
    use std::sync::RwLock;

    #[test]
    fn reminders_repeat_while_down_at_the_configured_pace() {
        let src = r#"
[alert.ops]
type = "webhook"
url = "http://127.0.0.1:9/hook"
reminder = "1h"
[alert.quiet]
type = "webhook"
url = "http://127.0.0.1:9/hook"
[check.db]
type = "tcp"
address = "127.0.0.1:5432"
alerts = ["ops", "quiet"]
[check.api]
type = "tcp"
address = "127.0.0.1:8000"
alerts = ["ops"]
"#;
        let spec =
            steward_spec::Spec::parse("t.toml", src, Path::new("/"), &steward_spec::OsResolver)
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let now = now_ms();
        let mut db = steward_health::initial("db", now);
        db.health = Health::Down;
        db.since = now - 2 * 3_600_000;
        let mut api = steward_health::initial("api", now);
        api.health = Health::Up;
        let board: Board = Arc::new(RwLock::new(BTreeMap::from([
            ("db".into(), db),
            ("api".into(), api),
        ])));
        let alerter = Alerter::new(&spec, store, board, Arc::new(steward_spec::OsResolver));

        let due = alerter.due_reminders(&BTreeMap::new());
        assert_eq!(
            due.len(),
            1,
            "only the channel with a reminder, only the down check: {due:?}"
        );
        assert_eq!(
            (due[0].0.as_str(), due[0].1.check.as_str(), due[0].1.kind),
            ("ops", "db", NoticeKind::Reminder)
        );
        let recent = BTreeMap::from([("db".to_string(), now - 10 * 60_000)]);
        assert!(
            alerter.due_reminders(&recent).is_empty(),
            "sent 10 minutes ago: not yet"
        );
        let stale = BTreeMap::from([("db".to_string(), now - 61 * 60_000)]);
        assert_eq!(alerter.due_reminders(&stale).len(), 1);
    }
}
