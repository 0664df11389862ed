//! A service's `autoscale`: the metrics its instance count follows and how
//! fast it may move (the Kubernetes HPA's `metrics` and `behavior`).

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::Diagnostics;
use crate::duration::Dur;

/// What a metric is compared with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AutoscaleTarget {
    /// This much per instance (an average over instances, or a total such
    /// as a queue's backlog divided among them).
    PerInstance(f64),
    /// This much for the whole service.
    Value(f64),
}

/// One metric the count follows.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleMetric {
    /// A PromQL expression over the stored series.
    pub expr: String,
    /// What it should be.
    pub target: AutoscaleTarget,
    /// With `min = 0`: at or below this the service may rest at zero.
    pub activation: f64,
}

/// Whether decisions are carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoscaleMode {
    /// Scale.
    Act,
    /// Record what it would do, without doing it.
    Recommend,
}

/// How a policy limit is chosen among several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleSelect {
    /// The one allowing the largest change.
    Max,
    /// The one allowing the smallest change.
    Min,
    /// No change in this direction.
    Disabled,
}

/// At most this much change per period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScalePolicy {
    /// Instances per period.
    Instances(u32, Duration),
    /// Percent of the count at the period's start.
    Percent(u32, Duration),
}

/// The rules of one direction.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleRules {
    /// Recommendations of this long are considered.
    pub stabilization: Duration,
    /// How to pick a policy's limit.
    pub select: ScaleSelect,
    /// The limits.
    pub policies: Vec<ScalePolicy>,
}

/// `autoscale`.
#[derive(Debug, Clone, PartialEq)]
pub struct Autoscale {
    /// The metrics (the largest recommendation wins).
    pub metrics: Vec<AutoscaleMetric>,
    /// How often it decides.
    pub interval: Duration,
    /// Act or only recommend.
    pub mode: AutoscaleMode,
    /// Growing.
    pub scale_up: ScaleRules,
    /// Shrinking.
    pub scale_down: ScaleRules,
    /// With `min = 0`: idle this long before resting at zero.
    pub cooldown: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAutoscale {
    metrics: Option<Spanned<Vec<Spanned<RawMetric>>>>,
    interval: Option<Dur>,
    mode: Option<Spanned<String>>,
    scale_up: Option<Spanned<RawRules>>,
    scale_down: Option<Spanned<RawRules>>,
    cooldown: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    expr: Spanned<String>,
    per_instance: Option<f64>,
    value: Option<f64>,
    activation: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    stabilization: Option<Dur>,
    select: Option<Spanned<String>>,
    policies: Option<Vec<Spanned<RawPolicy>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    instances: Option<u32>,
    percent: Option<u32>,
    period: Dur,
}

/// The HPA's defaults: up by 4 instances or 100 % per 15 s, no stabilization.
fn default_up() -> ScaleRules {
    ScaleRules {
        stabilization: Duration::ZERO,
        select: ScaleSelect::Max,
        policies: vec![
            ScalePolicy::Instances(4, Duration::from_secs(15)),
            ScalePolicy::Percent(100, Duration::from_secs(15)),
        ],
    }
}

/// Down by up to 100 % per 15 s after a 300 s stabilization window.
fn default_down() -> ScaleRules {
    ScaleRules {
        stabilization: Duration::from_secs(300),
        select: ScaleSelect::Max,
        policies: vec![ScalePolicy::Percent(100, Duration::from_secs(15))],
    }
}

fn rules(d: &mut Diagnostics, raw: &Option<Spanned<RawRules>>, default: ScaleRules) -> ScaleRules {
    let Some(raw) = raw else { return default };
    let r = raw.get_ref();
    let mut out = default;
    if let Some(s) = r.stabilization {
        out.stabilization = s.0;
    }
    if let Some(sel) = &r.select {
        out.select = match sel.get_ref().as_str() {
            "max" => ScaleSelect::Max,
            "min" => ScaleSelect::Min,
            "disabled" => ScaleSelect::Disabled,
            other => {
                d.error(
                    sel.span(),
                    format!("`{other}` is not a select policy"),
                    "unknown",
                    Some("one of: max, min, disabled".into()),
                );
                ScaleSelect::Max
            }
        };
    }
    if let Some(policies) = &r.policies {
        out.policies = Vec::new();
        for p in policies {
            let raw = p.get_ref();
            if raw.period.0 < Duration::from_secs(1) {
                d.error(
                    p.span(),
                    "a policy's period must be at least 1s",
                    "too short",
                    None,
                );
            }
            match (raw.instances, raw.percent) {
                (Some(n), None) if n > 0 => {
                    out.policies.push(ScalePolicy::Instances(n, raw.period.0))
                }
                (None, Some(n)) if n > 0 => {
                    out.policies.push(ScalePolicy::Percent(n, raw.period.0))
                }
                _ => d.error(
                    p.span(),
                    "a policy has either `instances` or `percent`, above 0",
                    "not a policy",
                    Some("e.g. { percent = 100, period = \"15s\" }".into()),
                ),
            }
        }
    }
    out
}

pub(crate) fn autoscale(
    d: &mut Diagnostics,
    service: &str,
    span: Range<usize>,
    raw: &RawAutoscale,
    replicas: Option<(u32, u32)>,
) -> Option<Autoscale> {
    let before = d.errors.len();
    match replicas {
        Some((min, max)) if min < max => {}
        _ => d.error(
            span.clone(),
            format!("service `{service}`: autoscale needs a range to move in"),
            "no range",
            Some("give the service replicas = { min = N, max = M } with N < M".into()),
        ),
    }
    let mut metrics = Vec::new();
    match &raw.metrics {
        Some(list) if !list.get_ref().is_empty() => {
            for m in list.get_ref() {
                let r = m.get_ref();
                if let Err(e) = promql_parser::parser::parse(r.expr.get_ref()) {
                    d.error(
                        r.expr.span(),
                        format!("`{}` is not a PromQL expression: {e}", r.expr.get_ref()),
                        "does not parse",
                        None,
                    );
                }
                let target = match (r.per_instance, r.value) {
                    (Some(v), None) if v > 0.0 => AutoscaleTarget::PerInstance(v),
                    (None, Some(v)) if v > 0.0 => AutoscaleTarget::Value(v),
                    _ => {
                        d.error(
                            m.span(),
                            "a metric has either `per_instance` or `value`, above 0",
                            "no target",
                            Some("per_instance: what one instance should carry; value: what the whole service should show".into()),
                        );
                        continue;
                    }
                };
                metrics.push(AutoscaleMetric {
                    expr: r.expr.get_ref().clone(),
                    target,
                    activation: r.activation.unwrap_or(0.0),
                });
            }
        }
        _ => d.error(
            span.clone(),
            format!("service `{service}`: autoscale needs at least one metric"),
            "no metrics",
            Some("e.g. metrics = [{ expr = \"sum(rate(steward_proxy_requests_total{service=\\\"api\\\"}[1m]))\", per_instance = 50 }]".into()),
        ),
    }
    let mode = match raw.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("act", _)) => AutoscaleMode::Act,
        Some(("recommend", _)) => AutoscaleMode::Recommend,
        Some((other, s)) => {
            d.error(
                s,
                format!("`{other}` is not a mode"),
                "unknown",
                Some("act or recommend".into()),
            );
            AutoscaleMode::Act
        }
    };
    let interval = raw.interval.map_or(Duration::from_secs(15), |i| i.0);
    if interval < Duration::from_secs(1) {
        d.error(
            span.clone(),
            format!("service `{service}`: autoscale interval below 1s"),
            "too often",
            None,
        );
    }
    let out = Autoscale {
        metrics,
        interval,
        mode,
        scale_up: rules(d, &raw.scale_up, default_up()),
        scale_down: rules(d, &raw.scale_down, default_down()),
        cooldown: raw.cooldown.map_or(Duration::from_secs(300), |c| c.0),
    };
    (d.errors.len() == before).then_some(out)
}
