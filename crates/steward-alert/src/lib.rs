//! Alerting: turns health transitions into notices (pure decision), delivers
//! them over webhook, Slack-compatible webhook or SMTP with retries, and sends
//! reminders while a check stays down. Delivery failures are recorded and
//! never stop monitoring.

mod deliver;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use steward_health::Board;
use steward_runtime::{Controller, LogCursor, Next, Step, StepError, Supervisor};
use steward_spec::{Alert, Check, Maintenance, Resolver};
use steward_state::{
    AlertLog, Delivery, Event, EventKind, EventLog, Health, NewEvent, Severity, now_ms,
};

/// What alerting needs of the state database: the event log it follows (and
/// writes suppression and reminder events to) and the record of deliveries.
pub trait AlertStore: EventLog + AlertLog {}

impl<T: EventLog + AlertLog + ?Sized> AlertStore for T {}
use tokio_util::sync::CancellationToken;

pub use deliver::{Sender, deliver};

/// An alerting rule's alert while it fires (what reminders are sent for).
#[derive(Debug, Clone, PartialEq)]
pub struct FiringRule {
    /// The rule.
    pub rule: String,
    /// Since when it fires (Unix ms).
    pub since: i64,
    /// Its `summary` annotation.
    pub summary: Option<String>,
}

/// Firing alerts of the rules, by subject (`NAME{labels}`), kept by the
/// rules' controllers.
pub type FiringBoard = Arc<std::sync::RwLock<BTreeMap<String, FiringRule>>>;

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
    /// An alerting rule's alert began to fire.
    Firing,
    /// An alerting rule's alert stopped firing.
    Resolved,
    /// An alerting rule's alert still fires.
    StillFiring,
    /// `steward alert test`: a notice saying the channel works (its `check`
    /// is the channel's name).
    Test,
}

impl NoticeKind {
    /// Lowercase name used in payloads and events.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Down => "down",
            NoticeKind::Degraded => "degraded",
            NoticeKind::Recovered => "recovered",
            NoticeKind::Reminder | NoticeKind::StillFiring => "reminder",
            NoticeKind::Firing => "firing",
            NoticeKind::Resolved => "resolved",
            NoticeKind::Test => "test",
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

/// The events alerting reads from the log: every move of a check's or a
/// backup's health, and alerting rules' alerts firing and resolving. Each
/// carries `from` and `to` healths in its data.
pub const ALERTED_KINDS: &[EventKind] = &[
    EventKind::CheckUp,
    EventKind::CheckDegraded,
    EventKind::CheckDown,
    EventKind::RuleFiring,
    EventKind::RuleResolved,
    EventKind::BackupSucceeded,
    EventKind::BackupFailed,
    EventKind::BackupOverdue,
    EventKind::DrillFailed,
];

/// The alerting controller: one follower of the event log per channel, each
/// with a durable cursor, plus reminders.
///
/// A follower delivers its channel's notices one at a time in log order and
/// moves its cursor past an event once every notice for it was delivered or
/// given up on. So a restart (or a `kill -9`) resumes where it stopped: nothing
/// is lost however far behind a slow channel falls, and only a delivery in
/// flight at a crash is sent again — with the same `X-Steward-Event-Id`.
pub struct Alerter {
    /// Name of the application (in messages).
    pub app: String,
    /// Channels by name.
    pub alerts: BTreeMap<String, Alert>,
    /// Checks by name.
    pub checks: BTreeMap<String, Arc<Check>>,
    /// The alert channels of each backup.
    pub backups: BTreeMap<String, Vec<String>>,
    /// The alert channels of each alerting rule.
    pub rules: BTreeMap<String, Vec<String>>,
    /// Rules' alerts firing now (for reminders).
    pub firing: FiringBoard,
    /// Maintenance windows.
    pub maintenance: Vec<Maintenance>,
    /// State database.
    pub store: Arc<dyn AlertStore>,
    /// Current check states.
    pub board: Board,
    /// Delivers notices.
    pub sender: Sender,
    /// Delay before each retry; the number of entries is the number of retries.
    pub retry_delays: Vec<Duration>,
    /// How often reminders are considered.
    pub reminder_tick: Duration,
    /// How often the log is read when nothing in this process rang (events
    /// written by another process, e.g. a `steward backup run`).
    pub poll: Duration,
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
    state_errors: prometheus_client::metrics::counter::Counter,
}

impl AlertMetrics {
    /// Registers `steward_alert_deliveries_total{alert, outcome}` and
    /// `steward_alert_state_errors_total`.
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "steward_alert_deliveries",
            "Alert delivery attempts by channel and outcome (delivered, retry, failed)",
            self.deliveries.clone(),
        );
        r.register(
            "steward_alert_state_errors",
            "Reads and writes of the state database alerting could not make (events, cursors, deliveries)",
            self.state_errors.clone(),
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

/// How a delivery ended.
enum Sent {
    /// Delivered, or given up on after every retry: the event is done.
    Done,
    /// Cut short by shutdown: the event is not done and comes again next start.
    Interrupted,
}

impl Alerter {
    /// Builds the alerting controller for a spec.
    pub fn new(
        spec: &steward_spec::Spec,
        store: Arc<dyn AlertStore>,
        board: Board,
        resolver: Arc<dyn Resolver>,
    ) -> Self {
        Alerter {
            app: spec.settings.name.clone(),
            alerts: spec.alerts.clone(),
            checks: spec.checks.clone(),
            backups: spec
                .backups
                .values()
                .map(|b| (b.name.clone(), b.alerts.clone()))
                .collect(),
            rules: spec
                .rules
                .values()
                .map(|r| (r.name.clone(), r.alerts.clone()))
                .collect(),
            firing: FiringBoard::default(),
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
            poll: Duration::from_secs(1),
        }
    }

    /// The cursor name of a channel's follower.
    pub fn consumer(channel: &str) -> String {
        format!("alert.{channel}")
    }

    fn health_of(&self, name: &str) -> Option<Health> {
        self.board
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|s| s.health)
    }

    /// Adds one follower of the event log per channel something alerts to
    /// (`alert.CHANNEL`) and the reminders (`alert.reminders`), leader-only.
    pub fn register(self, sup: &mut Supervisor) {
        let me = Arc::new(self);
        let used: std::collections::BTreeSet<String> = me
            .checks
            .values()
            .flat_map(|c| c.alerts.iter())
            .chain(me.backups.values().flatten())
            .chain(me.rules.values().flatten())
            .filter(|a| me.alerts.contains_key(*a))
            .cloned()
            .collect();
        for channel in used {
            let me = me.clone();
            sup.add_leader_only(Self::consumer(&channel), move |cancel| {
                Box::new(Follower {
                    alerter: me.clone(),
                    channel: channel.clone(),
                    cursor: LogCursor::new(
                        me.store.clone(),
                        &Self::consumer(&channel),
                        ALERTED_KINDS.to_vec(),
                        me.poll,
                    ),
                    cancel: cancel.clone(),
                })
            });
        }
        sup.add_leader_only("alert.reminders", move |cancel| {
            Box::new(Reminders {
                alerter: me.clone(),
                cancel: cancel.clone(),
            })
        });
    }

    /// A store call on the blocking pool; an error is counted and returned
    /// for the step to report.
    async fn blocking<T: Send + 'static>(
        &self,
        stage: &'static str,
        f: impl FnOnce(&(dyn AlertStore + 'static)) -> Result<T, steward_state::StateError>
        + Send
        + 'static,
    ) -> Result<T, StepError> {
        steward_state::off_thread(&self.store, f)
            .await
            .map_err(|e| {
                self.metrics.state_errors.inc();
                StepError::new(stage, e)
            })
    }

    fn suppressed(&self, check: &Check, at: i64) -> Option<Suppressed> {
        let at = chrono::DateTime::from_timestamp_millis(at).unwrap_or_else(chrono::Utc::now);
        suppression(check, at, &self.maintenance, &|n| self.health_of(n))
    }

    /// A rule's notices are held back by the maintenance windows that cover
    /// everything (no `checks` list) or name the rule.
    fn rule_suppressed(&self, rule: &str, at: i64) -> Option<Suppressed> {
        let at = chrono::DateTime::from_timestamp_millis(at).unwrap_or_else(chrono::Utc::now);
        self.maintenance
            .iter()
            .find(|m| m.covers(rule) && m.active_at(at))
            .map(|m| Suppressed::Maintenance(m.name.clone()))
    }

    fn record_suppressed(&self, check: &str, why: &Suppressed, event_id: Option<i64>) {
        let reason = match why {
            Suppressed::Maintenance(m) => format!("maintenance window `{m}`"),
            Suppressed::Dependency(d) => format!("`{d}`, which it depends on, is down"),
        };
        self.record_event(NewEvent::now(
            EventKind::AlertSuppressed,
            check,
            Severity::Info,
            format!("alert for {check} held back: {reason}"),
            serde_json::json!({"event_id": event_id}),
        ));
    }

    /// Appends an event of alerting's own; a failure is logged and counted.
    /// Inside a runtime the write goes to the blocking pool (it is not
    /// waited for: alerting's own events need no order among themselves).
    fn record_event(&self, e: NewEvent) {
        let (store, errors) = (self.store.clone(), self.metrics.state_errors.clone());
        let write = move || {
            if let Err(err) = store.append_event(&e) {
                errors.inc();
                tracing::error!(error = %err, kind = %e.kind, "alerting: cannot record an event");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(write)),
            Err(_) => write(),
        }
    }

    /// The notice an event from the log deserves on one channel, if any.
    pub fn notice_for(&self, channel: &str, ev: &Event) -> Option<Notice> {
        let alert = self.alerts.get(channel)?;
        let health = |k: &str| {
            ev.event
                .data
                .get(k)
                .and_then(|v| v.as_str())
                .map(Health::parse)
        };
        let (from, to) = (health("from")?, health("to")?);
        let kind = decide(from, to, alert)?;
        let kind = match (ev.event.kind, kind) {
            (EventKind::RuleFiring, _) => NoticeKind::Firing,
            (EventKind::RuleResolved, _) => NoticeKind::Resolved,
            (_, k) => k,
        };
        let subject = &ev.event.subject;
        let (check, error) = if ev.event.kind.as_str().starts_with("rule.") {
            let rule = ev.event.data.get("rule").and_then(|v| v.as_str())?;
            if !self.rules.get(rule)?.iter().any(|a| a == channel) {
                return None;
            }
            if let Some(why) = self.rule_suppressed(rule, ev.event.ts) {
                self.record_suppressed(subject, &why, Some(ev.id));
                return None;
            }
            let summary = ev
                .event
                .data
                .get("annotations")
                .and_then(|a| a.get("summary"))
                .and_then(|v| v.as_str())
                .map(str::to_string);
            (
                subject.clone(),
                (to != Health::Up).then(|| summary.unwrap_or_else(|| ev.event.message.clone())),
            )
        } else if ev.event.kind.as_str().starts_with("check.") {
            let check = self.checks.get(subject)?;
            if !check.alerts.iter().any(|a| a == channel) {
                return None;
            }
            if let Some(why) = self.suppressed(check, ev.event.ts) {
                self.record_suppressed(&check.name, &why, Some(ev.id));
                return None;
            }
            let error = ev.event.data.get("error").and_then(|v| v.as_str());
            (check.name.clone(), error.map(str::to_string))
        } else {
            if !self.backups.get(subject)?.iter().any(|a| a == channel) {
                return None;
            }
            let error = (to != Health::Up).then(|| ev.event.message.clone());
            (format!("backup:{subject}"), error)
        };
        Some(Notice {
            kind,
            check,
            health: to,
            previous: from,
            since: ev.event.ts,
            error,
            event_id: Some(ev.id),
            app: self.app.clone(),
        })
    }

    fn due_reminders(&self, last_sent: &BTreeMap<String, i64>) -> Vec<(String, Notice)> {
        let now = now_ms();
        let board = self.board.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = Vec::new();
        let firing = self
            .firing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (subject, f) in &firing {
            for a in self.rules.get(&f.rule).into_iter().flatten() {
                let Some(every) = self.alerts.get(a).and_then(|x| x.reminder) else {
                    continue;
                };
                let last = last_sent
                    .get(subject)
                    .copied()
                    .unwrap_or(f.since)
                    .max(f.since);
                if now - last < every.as_millis_i64()
                    || self.rule_suppressed(&f.rule, now).is_some()
                {
                    continue;
                }
                out.push((
                    a.clone(),
                    Notice {
                        kind: NoticeKind::StillFiring,
                        check: subject.clone(),
                        health: Health::Down,
                        previous: Health::Down,
                        since: f.since,
                        error: f.summary.clone(),
                        event_id: None,
                        app: self.app.clone(),
                    },
                ));
            }
        }
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
                if now - last < every.as_millis_i64() || self.suppressed(check, now).is_some() {
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

    /// One notice to one channel, retried on the configured delays.
    async fn deliver(&self, alert_name: &str, notice: Notice, cancel: &CancellationToken) -> Sent {
        let Some(alert) = self.alerts.get(alert_name) else {
            return Sent::Done;
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let res = self.sender.send(&alert.channel, &notice).await;
            let ok = res.is_ok();
            let error = res.err();
            let delivery = Delivery {
                ts: now_ms(),
                alert: alert_name.to_string(),
                check: notice.check.clone(),
                event_id: notice.event_id,
                attempt,
                ok,
                error: error.clone(),
            };
            // A delivery that cannot be recorded is still delivered (the
            // failure is counted and logged).
            if let Err(e) = self
                .blocking("record", move |s| s.record_delivery(&delivery))
                .await
            {
                tracing::error!(error = %e.message, "alerting: cannot record a delivery");
            }
            if ok {
                self.metrics.count(alert_name, "delivered");
                tracing::info!(alert = %alert_name, check = %notice.check, kind = notice.kind.as_str(), attempt, "alert delivered");
                self.record_event(NewEvent::now(
                    EventKind::AlertSent,
                    &notice.check,
                    Severity::Info,
                    format!("{} alert for {} sent to {alert_name}", notice.kind.as_str(), notice.check),
                    serde_json::json!({"alert": alert_name, "attempt": attempt, "event_id": notice.event_id}),
                ));
                return Sent::Done;
            }
            let error = error.unwrap_or_default();
            tracing::warn!(alert = %alert_name, check = %notice.check, attempt, error = %error, "alert delivery failed");
            let Some(delay) = self.retry_delays.get(attempt as usize - 1) else {
                self.metrics.count(alert_name, "failed");
                self.record_event(NewEvent::now(
                    EventKind::AlertFailed,
                    &notice.check,
                    Severity::Error,
                    format!("{} alert for {} could not be sent to {alert_name}: {error}", notice.kind.as_str(), notice.check),
                    serde_json::json!({"alert": alert_name, "attempts": attempt, "event_id": notice.event_id}),
                ));
                return Sent::Done;
            };
            self.metrics.count(alert_name, "retry");
            tokio::select! {
                _ = tokio::time::sleep(*delay) => {}
                _ = cancel.cancelled() => return Sent::Interrupted,
            }
        }
    }
}

/// One channel's follower of the event log: each step reads a batch after its
/// cursor and delivers the channel's notices one at a time, in log order. The
/// cursor moves past an event once its notice is delivered or given up on,
/// and is stored before the next delivery starts, so a crash repeats at most
/// the one in flight.
struct Follower {
    alerter: Arc<Alerter>,
    channel: String,
    cursor: LogCursor,
    cancel: CancellationToken,
}

impl Follower {
    /// Stores the position; a failed write is counted and the position is
    /// kept in memory for the next save (a crash in between repeats those
    /// notices).
    async fn save(&mut self) {
        if let Err(e) = self.cursor.save().await {
            self.alerter.metrics.state_errors.inc();
            tracing::error!(channel = %self.channel, error = %e, "cannot store the alert cursor");
        }
    }
}

impl Controller for Follower {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let a = self.alerter.clone();
            let batch = self.cursor.next_batch().await.map_err(|e| {
                a.metrics.state_errors.inc();
                StepError::new("observe", e)
            })?;
            if batch.is_empty() {
                return Ok(Next::When(self.cursor.wake()));
            }
            for ev in batch {
                if self.cancel.is_cancelled() {
                    break;
                }
                if let Some(notice) = a.notice_for(&self.channel, &ev) {
                    if let Sent::Interrupted = a.deliver(&self.channel, notice, &self.cancel).await
                    {
                        break;
                    }
                    self.cursor.handled(ev.id);
                    self.save().await;
                } else {
                    self.cursor.handled(ev.id);
                }
            }
            self.save().await;
            Ok(Next::After(Duration::ZERO))
        })
    }
}

/// Reminders while checks stay down, as a supervised controller.
struct Reminders {
    alerter: Arc<Alerter>,
    cancel: CancellationToken,
}

impl Controller for Reminders {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let a = self.alerter.clone();
            let last_sent = a.blocking("observe", |s| s.last_delivered()).await?;
            for (alert, notice) in a.due_reminders(&last_sent) {
                if let Sent::Interrupted = a.deliver(&alert, notice, &self.cancel).await {
                    break;
                }
            }
            Ok(Next::After(a.reminder_tick))
        })
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
        let store = Arc::new(steward_state::Store::open(dir.path()).unwrap());
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

#[cfg(test)]
mod notice_tests {
    use super::*;
    use std::path::Path;

    fn alerter() -> Alerter {
        let src = r#"
[alert.ops]
type = "webhook"
url = "http://127.0.0.1:9/hook"
[alert.quiet]
type = "webhook"
url = "http://127.0.0.1:9/hook"
send_recovered = false
[check.api]
type = "tcp"
address = "127.0.0.1:8000"
alerts = ["ops"]
[backup.db]
source = { paths = ["/srv"] }
password = "${env:HOME}"
alerts = ["ops", "quiet"]
"#;
        let spec =
            steward_spec::Spec::parse("t.toml", src, Path::new("/"), &steward_spec::OsResolver)
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(steward_state::Store::open(dir.path()).unwrap());
        std::mem::forget(dir);
        Alerter::new(
            &spec,
            store,
            Board::default(),
            Arc::new(steward_spec::OsResolver),
        )
    }

    fn ev(id: i64, kind: EventKind, subject: &str, data: serde_json::Value) -> Event {
        Event {
            id,
            event: NewEvent {
                ts: 1_000,
                kind,
                subject: subject.into(),
                severity: Severity::Error,
                message: "exit status 7".into(),
                data,
            },
        }
    }

    #[test]
    fn health_moves_in_the_log_become_notices_for_their_channels() {
        let a = alerter();
        let down = ev(
            5,
            EventKind::CheckDown,
            "api",
            serde_json::json!({"from": "up", "to": "down", "error": "refused"}),
        );
        let n = a.notice_for("ops", &down).unwrap();
        assert_eq!(
            (
                n.kind,
                n.check.as_str(),
                n.event_id,
                n.since,
                n.error.as_deref()
            ),
            (NoticeKind::Down, "api", Some(5), 1_000, Some("refused"))
        );
        assert!(
            a.notice_for("quiet", &down).is_none(),
            "not the check's channel"
        );
        let first_up = ev(
            6,
            EventKind::CheckUp,
            "api",
            serde_json::json!({"from": "unknown", "to": "up"}),
        );
        assert!(
            a.notice_for("ops", &first_up).is_none(),
            "a first pass is no news"
        );

        let failed = ev(
            7,
            EventKind::BackupFailed,
            "db",
            serde_json::json!({"from": "up", "to": "down", "error": "exit status 7"}),
        );
        let n = a.notice_for("quiet", &failed).unwrap();
        assert_eq!(
            (n.kind, n.check.as_str(), n.error.as_deref()),
            (NoticeKind::Down, "backup:db", Some("exit status 7"))
        );
        let again = ev(
            8,
            EventKind::BackupFailed,
            "db",
            serde_json::json!({"error": "exit status 7"}),
        );
        assert!(
            a.notice_for("ops", &again).is_none(),
            "a failure after a failure moves nothing"
        );
        let recovered = ev(
            9,
            EventKind::BackupSucceeded,
            "db",
            serde_json::json!({"from": "down", "to": "up"}),
        );
        assert_eq!(
            a.notice_for("ops", &recovered).map(|n| n.kind),
            Some(NoticeKind::Recovered)
        );
        assert!(
            a.notice_for("quiet", &recovered).is_none(),
            "send_recovered = false"
        );
    }
}
