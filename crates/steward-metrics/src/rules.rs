//! Alerting rules (`[rule.NAME]`), as Prometheus evaluates them: every series
//! of the expression's result is an alert, identified by its labels (the
//! series' without `__name__`, the rule's `labels` over them, `alertname`);
//! new, it is *pending*; still there once `for` has passed (counted at an
//! evaluation), *firing*; gone from the result, a pending alert is
//! forgotten and a firing one *resolved* — unless `keep_firing_for` holds it
//! firing that long after it left.
//!
//! [`evaluate`] is the pure step; [`RuleEvaluator`] the `rule.NAME`
//! controller around it (the expression evaluated on the store, `ALERTS`
//! series written back, events for firing and resolved alerts, its state kept
//! in the state database across restarts).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use steward_runtime::{Controller, Next, Step, StepError};
use steward_state::{EventKind, NewEvent, Severity, now_ms};

use crate::controller::Series;
use crate::scrape::{Grid, STALE_NAN};

/// An alert's labels, `alertname` among them.
pub type AlertLabels = BTreeMap<String, String>;

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// In the result, for less than `for`.
    Pending,
    /// In the result for `for` (or kept firing).
    Firing,
}

impl AlertState {
    /// As in the `alertstate` label.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Its labels.
    pub labels: AlertLabels,
    /// The series' value at the latest evaluation it was in the result.
    pub value: f64,
    /// Pending or firing.
    pub state: AlertState,
    /// When it first entered the result.
    pub active_at: i64,
    /// When it fired.
    pub fired_at: Option<i64>,
    /// When it left the result while firing (held by `keep_firing_for`).
    pub keep_firing_since: Option<i64>,
}

impl Alert {
    /// `NAME{label="value",…}`: the rule's name and the other labels, as an
    /// event's subject and a notice's name.
    pub fn subject(&self) -> String {
        subject(&self.labels)
    }
}

fn subject(labels: &AlertLabels) -> String {
    let name = labels.get("alertname").map_or("", String::as_str);
    let rest: Vec<String> = labels
        .iter()
        .filter(|(k, _)| *k != "alertname")
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if rest.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", rest.join(","))
    }
}

/// A rule's alerts between evaluations, by subject.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// Pending and firing alerts.
    pub active: BTreeMap<String, Alert>,
}

/// What a rule is, for [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct RuleDef {
    /// Its name (`alertname`).
    pub name: String,
    /// `for`, in milliseconds.
    pub for_ms: i64,
    /// `keep_firing_for`, in milliseconds.
    pub keep_firing_for_ms: i64,
    /// Its labels.
    pub labels: AlertLabels,
}

impl From<&steward_spec::Rule> for RuleDef {
    fn from(r: &steward_spec::Rule) -> RuleDef {
        RuleDef {
            name: r.name.clone(),
            for_ms: r.for_.as_millis() as i64,
            keep_firing_for_ms: r.keep_firing_for.as_millis() as i64,
            labels: r.labels.clone(),
        }
    }
}

/// What an evaluation changed, for notices.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The alert began to fire.
    Firing(Alert),
    /// The alert stopped firing (at the evaluation's time).
    Resolved(Alert),
}

/// One evaluation at `now` of a rule whose expression returned `result`
/// (each series' labels and value): moves the alerts in `state` and returns
/// those that began or stopped firing. Pure.
pub fn evaluate(
    rule: &RuleDef,
    state: &mut RuleState,
    result: Vec<(AlertLabels, f64)>,
    now: i64,
) -> Result<Vec<Change>, String> {
    let mut seen = BTreeSet::new();
    for (mut labels, value) in result {
        labels.remove("__name__");
        for (k, v) in &rule.labels {
            if v.is_empty() {
                labels.remove(k);
            } else {
                labels.insert(k.clone(), v.clone());
            }
        }
        labels.insert("alertname".into(), rule.name.clone());
        let key = subject(&labels);
        if !seen.insert(key.clone()) {
            return Err(
                "vector contains metrics with the same labelset after applying alert labels".into(),
            );
        }
        match state.active.get_mut(&key) {
            Some(a) => {
                a.value = value;
                a.keep_firing_since = None;
            }
            None => {
                state.active.insert(
                    key,
                    Alert {
                        labels,
                        value,
                        state: AlertState::Pending,
                        active_at: now,
                        fired_at: None,
                        keep_firing_since: None,
                    },
                );
            }
        }
    }
    let mut changes = Vec::new();
    let mut gone = Vec::new();
    for (key, a) in state.active.iter_mut() {
        if !seen.contains(key) {
            let kept = a.state == AlertState::Firing
                && rule.keep_firing_for_ms > 0
                && now - *a.keep_firing_since.get_or_insert(now) < rule.keep_firing_for_ms;
            if !kept {
                if a.state == AlertState::Firing {
                    changes.push(Change::Resolved(a.clone()));
                }
                gone.push(key.clone());
                continue;
            }
        }
        if a.state == AlertState::Pending && now - a.active_at >= rule.for_ms {
            a.state = AlertState::Firing;
            a.fired_at = Some(now);
            changes.push(Change::Firing(a.clone()));
        }
    }
    for key in gone {
        state.active.remove(&key);
    }
    Ok(changes)
}

/// A rule's annotations with `{{ labels.NAME }}` and `{{ value }}` filled in
/// (a template that does not render is kept as written, with the error).
pub fn annotations(rule: &steward_spec::Rule, alert: &Alert) -> BTreeMap<String, String> {
    let env = minijinja::Environment::new();
    let ctx = minijinja::context! { labels => &alert.labels, value => alert.value };
    rule.annotations
        .iter()
        .map(|(k, t)| {
            let text = env
                .render_str(t, &ctx)
                .unwrap_or_else(|e| format!("{t} (template error: {e})"));
            (k.clone(), text)
        })
        .collect()
}

/// Firing alerts of every rule, by subject: what reminders are sent for.
pub type FiringBoard = steward_alert::FiringBoard;

/// What a rule's controller needs of the state database: the event log and
/// the key/value table (its alerts, kept across restarts).
pub trait RuleStore: steward_state::EventLog + steward_state::Meta {}

impl<T: steward_state::EventLog + steward_state::Meta + ?Sized> RuleStore for T {}

/// The meta key holding a rule's state (JSON).
pub fn state_key(rule: &str) -> String {
    format!("rule.{rule}")
}

/// `rule.NAME`: evaluates a rule every `interval` (on its grid) at the
/// evaluation's time, writes `ALERTS{alertname, alertstate, …} = 1` for each
/// pending and firing alert (a staleness marker when one goes), records
/// `rule.firing` and `rule.resolved` events (alerting delivers them), and
/// keeps its state in the state database.
pub struct RuleEvaluator {
    rule: steward_spec::Rule,
    def: RuleDef,
    head: Series,
    store: Arc<dyn RuleStore>,
    firing: FiringBoard,
    state: Option<RuleState>,
    written: Vec<Vec<(String, String)>>,
    grid: Grid,
}

impl RuleEvaluator {
    /// The controller of one rule.
    pub fn new(
        rule: steward_spec::Rule,
        head: Series,
        store: Arc<dyn RuleStore>,
        firing: FiringBoard,
    ) -> RuleEvaluator {
        RuleEvaluator {
            def: RuleDef::from(&rule),
            grid: Grid::new(&format!("rule:{}", rule.name), rule.interval),
            rule,
            head,
            store,
            firing,
            state: None,
            written: Vec::new(),
        }
    }
}

/// The series of `ALERTS` for an alert, sorted by label name.
fn alerts_series(a: &Alert) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = a
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.push(("__name__".into(), "ALERTS".into()));
    out.push(("alertstate".into(), a.state.as_str().into()));
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

impl Controller for RuleEvaluator {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            if self.state.is_none() {
                let key = state_key(&self.rule.name);
                let saved = steward_state::off_thread(&self.store, move |s| s.meta(&key))
                    .await
                    .map_err(|e| StepError::new("restore", e))?;
                let state = saved
                    .and_then(|j| serde_json::from_str::<RuleState>(&j).ok())
                    .unwrap_or_default();
                self.state = Some(state);
            }
            let now = self.grid.stamp(now_ms());
            let (head, expr) = (self.head.clone(), self.rule.expr.clone());
            let result = tokio::task::spawn_blocking(move || {
                let h = head.lock().unwrap_or_else(|e| e.into_inner());
                crate::promql::eval::instant(&h, &expr, now)
            })
            .await
            .map_err(|e| StepError::new("query", e))?
            .map_err(|e| StepError::new("query", e))?;
            use crate::promql::eval::Value;
            let result: Vec<(AlertLabels, f64)> = match result {
                Value::Scalar(v) => vec![(AlertLabels::new(), v)],
                Value::Vector(v) => v
                    .into_iter()
                    .map(|s| {
                        (
                            s.labels
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect(),
                            s.value,
                        )
                    })
                    .collect(),
                _ => {
                    return Err(StepError::new(
                        "query",
                        format!("`{}` is not an instant vector", self.rule.expr),
                    ));
                }
            };
            let state = self.state.as_mut().expect("restored above");
            let before = state.clone();
            let changes =
                evaluate(&self.def, state, result, now).map_err(|e| StepError::new("rule", e))?;
            // ALERTS series for what is active now; stale for what left.
            let now_series: Vec<Vec<(String, String)>> =
                state.active.values().map(alerts_series).collect();
            {
                let (head, now_series, gone) = (
                    self.head.clone(),
                    now_series.clone(),
                    self.written
                        .iter()
                        .filter(|s| !now_series.contains(s))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
                tokio::task::spawn_blocking(move || {
                    let mut h = head.lock().unwrap_or_else(|e| e.into_inner());
                    for (set, v) in now_series
                        .iter()
                        .map(|s| (s, 1.0))
                        .chain(gone.iter().map(|s| (s, f64::from_bits(STALE_NAN))))
                    {
                        let pairs: Vec<(&str, &str)> =
                            set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        let r = h.series_ref(&pairs);
                        let _ = h.append(r, now, v);
                    }
                })
                .await
                .map_err(|e| StepError::new("store", e))?;
            }
            self.written = now_series;
            // Reminders follow what fires now.
            {
                let mut board = self.firing.write().unwrap_or_else(|e| e.into_inner());
                board.retain(|_, f| f.rule != self.rule.name);
                for a in state
                    .active
                    .values()
                    .filter(|a| a.state == AlertState::Firing)
                {
                    let notes = annotations(&self.rule, a);
                    board.insert(
                        a.subject(),
                        steward_alert::FiringRule {
                            rule: self.rule.name.clone(),
                            since: a.fired_at.unwrap_or(a.active_at),
                            summary: notes.get("summary").cloned(),
                        },
                    );
                }
            }
            if changes.is_empty() && *state == before {
                return Ok(Next::After(self.grid.wait(now_ms())));
            }
            let events: Vec<NewEvent> = changes
                .iter()
                .map(|c| {
                    let (a, kind, from, to) = match c {
                        Change::Firing(a) => (a, EventKind::RuleFiring, "up", "down"),
                        Change::Resolved(a) => (a, EventKind::RuleResolved, "down", "up"),
                    };
                    let notes = annotations(&self.rule, a);
                    let severity = match (kind, a.labels.get("severity").map(String::as_str)) {
                        (EventKind::RuleResolved, _) => Severity::Info,
                        (_, Some("critical" | "page" | "error")) => Severity::Error,
                        _ => Severity::Warning,
                    };
                    let what = match c {
                        Change::Firing(_) => "firing",
                        Change::Resolved(_) => "resolved",
                    };
                    let message = match notes.get("summary") {
                        Some(s) => format!("{} {what}: {s}", a.subject()),
                        None => format!("{} {what} (value {})", a.subject(), a.value),
                    };
                    NewEvent::now(
                        kind,
                        &a.subject(),
                        severity,
                        message,
                        serde_json::json!({
                            "rule": self.rule.name,
                            "from": from,
                            "to": to,
                            "labels": a.labels,
                            "annotations": notes,
                            "value": a.value,
                            "active_at": a.active_at,
                            "at": now,
                        }),
                    )
                })
                .collect();
            let key = state_key(&self.rule.name);
            let json = serde_json::to_string(&*state).unwrap_or_default();
            steward_state::off_thread(&self.store, move |s| {
                for e in &events {
                    s.append_event(e)?;
                }
                s.set_meta(&key, &json)
            })
            .await
            .map_err(|e| StepError::new("record", e))?;
            for c in &changes {
                match c {
                    Change::Firing(a) => {
                        tracing::warn!(rule = %self.rule.name, alert = %a.subject(), value = a.value, "alert firing")
                    }
                    Change::Resolved(a) => {
                        tracing::info!(rule = %self.rule.name, alert = %a.subject(), "alert resolved")
                    }
                }
            }
            Ok(Next::After(self.grid.wait(now_ms())))
        })
    }
}
