//! `[rule.NAME]`: an alerting rule over the stored series, with
//! Prometheus's alerting-rule semantics.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::Diagnostics;
use crate::duration::Dur;
use crate::validate::unknown_ref;

/// `[rule.NAME]`
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its name (the `alertname` label).
    pub name: String,
    /// PromQL; every series of its result is an alert.
    pub expr: String,
    /// How long a series must stay in the result before the alert fires
    /// (counted on evaluations); until then it is pending.
    pub for_: Duration,
    /// How long an alert keeps firing after its series left the result.
    pub keep_firing_for: Duration,
    /// How often it is evaluated.
    pub interval: Duration,
    /// Labels added to every alert (they replace the series' own).
    pub labels: BTreeMap<String, String>,
    /// Text for the notice, by name (`summary`, `description`, …); `{{
    /// labels.NAME }}` and `{{ value }}` are filled in.
    pub annotations: BTreeMap<String, String>,
    /// Alert channels notified when an alert fires and resolves.
    pub alerts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    expr: Spanned<String>,
    #[serde(rename = "for")]
    for_: Option<Dur>,
    keep_firing_for: Option<Dur>,
    interval: Option<Spanned<Dur>>,
    labels: Option<Spanned<BTreeMap<String, String>>>,
    annotations: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    alerts: Vec<Spanned<String>>,
}

/// How often a rule is evaluated unless it says.
pub const RULE_INTERVAL: Duration = Duration::from_secs(15);

pub(crate) fn rule(
    d: &mut Diagnostics,
    name: &str,
    span: Range<usize>,
    raw: &RawRule,
    alert_names: &BTreeSet<&str>,
) -> Option<Rule> {
    let before = d.errors.len();
    if let Err(e) = promql_parser::parser::parse(raw.expr.get_ref()) {
        d.error(
            raw.expr.span(),
            format!(
                "rule `{name}`: `{}` is not a PromQL expression: {e}",
                raw.expr.get_ref()
            ),
            "does not parse",
            None,
        );
    }
    let interval = match &raw.interval {
        Some(i) if i.get_ref().0 < Duration::from_secs(1) => {
            d.error(
                i.span(),
                format!(
                    "rule `{name}`: interval {} is below the 1s minimum",
                    i.get_ref()
                ),
                "too often",
                None,
            );
            RULE_INTERVAL
        }
        Some(i) => i.get_ref().0,
        None => RULE_INTERVAL,
    };
    for (what, map) in [("labels", &raw.labels), ("annotations", &raw.annotations)] {
        if let Some(m) = map {
            for k in m.get_ref().keys() {
                if !crate::scrape::label_name_ok(k) || k == "alertname" {
                    d.error(
                        m.span(),
                        format!("rule `{name}`: `{k}` cannot be one of its {what}"),
                        "bad name",
                        Some(
                            "letters, digits and `_`, not starting with a digit or `__`; `alertname` is the rule's name"
                                .into(),
                        ),
                    );
                }
            }
        }
    }
    for a in &raw.alerts {
        unknown_ref(d, a, "alert", alert_names);
    }
    let _ = span;
    (d.errors.len() == before).then(|| Rule {
        name: name.to_string(),
        expr: raw.expr.get_ref().clone(),
        for_: raw.for_.map_or(Duration::ZERO, |f| f.0),
        keep_firing_for: raw.keep_firing_for.map_or(Duration::ZERO, |f| f.0),
        interval,
        labels: raw
            .labels
            .as_ref()
            .map(|l| l.get_ref().clone())
            .unwrap_or_default(),
        annotations: raw
            .annotations
            .as_ref()
            .map(|l| l.get_ref().clone())
            .unwrap_or_default(),
        alerts: raw.alerts.iter().map(|a| a.get_ref().clone()).collect(),
    })
}
