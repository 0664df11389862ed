//! The autoscaler's decision, as a pure function: the Kubernetes Horizontal
//! Pod Autoscaler's algorithm (`desired = ceil(current × value / target)`,
//! a tolerance of 0.1, the not-ready and missing-metric rules, the largest
//! recommendation across metrics, stabilization windows and rate policies),
//! written from its documentation
//! (<https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/>)
//! and the arithmetic of its replica calculator, plus KEDA's activation
//! threshold for scaling workers to and from zero.
//!
//! [`decide`] takes everything it needs — the policy, what was observed,
//! the history of earlier recommendations and scale changes, and the clock —
//! and says what the count should be and why, with the arithmetic.

use std::fmt::Write as _;

/// Ratios within this distance of 1 change nothing (the HPA's default).
pub const TOLERANCE: f64 = 0.1;

/// What a metric is compared with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The metric's value for the whole service should be this (the HPA's
    /// `Value`): `desired = ceil(ready × value / target)`.
    Value(f64),
    /// The metric per instance should be this (`AverageValue`): for a
    /// per-instance metric the average over instances; for a total (a queue
    /// backlog) `desired = ceil(total / target)`.
    AverageValue(f64),
}

/// One instance's reading of a per-instance metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceReading {
    /// Ready (serving) now.
    pub ready: bool,
    /// Its value; `None` when it has none (not scraped yet, scrape failed).
    pub value: Option<f64>,
}

/// What a metric reads now.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// One value per instance (requests per second of each).
    PerInstance(Vec<InstanceReading>),
    /// One value for the whole service (a queue's depth); `None` when it
    /// could not be read.
    Total(Option<f64>),
}

/// One metric the service scales on.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// A name for people (the expression, or a label).
    pub name: String,
    /// What it should be.
    pub target: Target,
    /// With `min = 0`: below or at this the service may rest at zero
    /// instances; above it, it wakes to one (KEDA's `activationThreshold`).
    pub activation: f64,
}

/// Whether and how fast the count may move in one direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Recommendations of the last this-many milliseconds are considered:
    /// scaling up takes the lowest of them, scaling down the highest.
    pub stabilization_ms: i64,
    /// How to pick among the policies' limits.
    pub select: Select,
    /// The limits.
    pub policies: Vec<RatePolicy>,
}

/// Which policy's limit applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The one that allows the largest change (the default).
    Max,
    /// The one that allows the smallest change.
    Min,
    /// No change in this direction at all.
    Disabled,
}

/// At most this much change per period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RatePolicy {
    /// Instances per period.
    Instances {
        /// How many.
        value: u32,
        /// The period in milliseconds.
        period_ms: i64,
    },
    /// Percent of the count at the start of the period.
    Percent {
        /// How many percent.
        value: u32,
        /// The period in milliseconds.
        period_ms: i64,
    },
}

/// How the count may move.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    /// Growing.
    pub up: Rules,
    /// Shrinking.
    pub down: Rules,
    /// With `min = 0`: how long every metric must have been at or below its
    /// activation threshold before the service rests at zero.
    pub cooldown_ms: i64,
}

impl Default for Behavior {
    /// The HPA's defaults: up by 4 instances or 100 % per 15 s (whichever is
    /// more) with no stabilization; down by up to 100 % per 15 s after a
    /// 300 s stabilization window; KEDA's 300 s cooldown.
    fn default() -> Self {
        Behavior {
            up: Rules {
                stabilization_ms: 0,
                select: Select::Max,
                policies: vec![
                    RatePolicy::Instances {
                        value: 4,
                        period_ms: 15_000,
                    },
                    RatePolicy::Percent {
                        value: 100,
                        period_ms: 15_000,
                    },
                ],
            },
            down: Rules {
                stabilization_ms: 300_000,
                select: Select::Max,
                policies: vec![RatePolicy::Percent {
                    value: 100,
                    period_ms: 15_000,
                }],
            },
            cooldown_ms: 300_000,
        }
    }
}

/// A service's scaling policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Fewest instances.
    pub min: u32,
    /// Most instances.
    pub max: u32,
    /// What it scales on (the largest recommendation wins).
    pub metrics: Vec<Metric>,
    /// How fast.
    pub behavior: Behavior,
}

/// What happened before: earlier recommendations and scale changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// `(when, recommended count)`, as [`Decision::recommendation`] said.
    pub recommendations: Vec<(i64, u32)>,
    /// `(when, change)`: each scale the autoscaler made (+ up, − down).
    pub changes: Vec<(i64, i64)>,
    /// When a metric was last above its activation threshold.
    pub last_active_ms: Option<i64>,
}

impl History {
    /// Forgets what no window can reach any more (older than `keep_ms`).
    pub fn trim(&mut self, now: i64, keep_ms: i64) {
        self.recommendations.retain(|(t, _)| *t > now - keep_ms);
        self.changes.retain(|(t, _)| *t > now - keep_ms);
    }
}

/// What to do and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The count to scale to (the current count: nothing to do).
    pub desired: u32,
    /// The largest recommendation across metrics, before stabilization and
    /// rate limits: to be kept in [`History::recommendations`].
    pub recommendation: u32,
    /// Whether a metric was above its activation threshold now.
    pub active: bool,
    /// The arithmetic, one line per step, for events and `--explain`.
    pub reason: String,
}

/// What was observed now.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Instances the service has now (the count last asked for).
    pub current: u32,
    /// Of those, how many are ready.
    pub ready: u32,
    /// One reading per metric of the policy, in the same order.
    pub readings: Vec<Reading>,
}

fn ceil(x: f64) -> u32 {
    let c = x.ceil();
    if c.is_nan() || c <= 0.0 {
        0
    } else if c >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        c as u32
    }
}

/// A value in thousandths, as the HPA's quantities count (so 0.2 / 0.1 is
/// exactly 2 and its ceiling exactly 2).
fn milli(v: f64) -> f64 {
    (v * 1000.0).round()
}

fn within_tolerance(ratio: f64) -> bool {
    (1.0 - ratio).abs() <= TOLERANCE
}

/// A per-instance metric against an average target: the HPA's replica
/// calculator for pod metrics. Instances without a value, and not-ready ones
/// when the service would grow, are filled in conservatively and the ratio
/// recomputed; if that reverses the direction or lands within tolerance,
/// the count stays.
fn per_instance(
    target: f64,
    current: u32,
    readings: &[InstanceReading],
    why: &mut String,
) -> Option<u32> {
    let ready: Vec<f64> = readings
        .iter()
        .filter(|r| r.ready)
        .filter_map(|r| r.value)
        .collect();
    let missing = readings
        .iter()
        .filter(|r| r.ready && r.value.is_none())
        .count();
    let unready = readings.iter().filter(|r| !r.ready).count();
    if ready.is_empty() {
        let _ = write!(why, "no ready instance has a value");
        return None;
    }
    let sum: f64 = ready.iter().sum();
    let ratio = sum / (target * ready.len() as f64);
    let _ = write!(
        why,
        "average {} over {} ready instances / target {} = ratio {ratio:.4}",
        sum / ready.len() as f64 / 1000.0,
        ready.len(),
        target / 1000.0
    );
    let grow_with_unready = unready > 0 && ratio > 1.0;
    if !grow_with_unready && missing == 0 {
        if within_tolerance(ratio) {
            let _ = write!(why, " (within tolerance {TOLERANCE}): stay at {current}");
            return Some(current);
        }
        let n = ceil(ratio * ready.len() as f64);
        let _ = write!(why, "; ceil({ratio:.4} × {}) = {n}", ready.len());
        return Some(n);
    }
    // Conservative fill-in: a missing value counts as the target when
    // shrinking and as 0 when growing; a not-ready instance as 0 when growing.
    let mut total = sum;
    let mut count = ready.len();
    if missing > 0 {
        if ratio < 1.0 {
            total += target * missing as f64;
        }
        if ratio != 1.0 {
            count += missing;
        }
        let _ = write!(
            why,
            "; {missing} without a value counted as {}",
            if ratio < 1.0 { "the target" } else { "0" }
        );
    }
    if grow_with_unready {
        count += unready;
        let _ = write!(why, "; {unready} not ready counted as 0");
    }
    let fresh = total / (target * count as f64);
    let _ = write!(why, " → ratio {fresh:.4}");
    if within_tolerance(fresh) || (ratio < 1.0 && fresh > 1.0) || (ratio > 1.0 && fresh < 1.0) {
        let _ = write!(why, " (within tolerance or reversed): stay at {current}");
        return Some(current);
    }
    let n = ceil(fresh * count as f64);
    if (fresh < 1.0 && n > current) || (fresh > 1.0 && n < current) {
        let _ = write!(why, "; ceil = {n} moves the wrong way: stay at {current}");
        return Some(current);
    }
    let _ = write!(why, "; ceil({fresh:.4} × {count}) = {n}");
    Some(n)
}

/// What one metric recommends (`None`: it cannot say), with the arithmetic.
fn recommend(
    metric: &Metric,
    reading: &Reading,
    current: u32,
    ready: u32,
) -> (Option<u32>, String) {
    let mut why = format!("{}: ", metric.name);
    let n = match (metric.target, reading) {
        (Target::AverageValue(t), Reading::PerInstance(r)) => per_instance(t, current, r, &mut why),
        (Target::Value(t), Reading::PerInstance(r)) => {
            // A per-instance metric against a whole-service value: its sum.
            let sum: f64 = r.iter().filter_map(|r| r.value).sum();
            total_value(t, sum, current, ready, &mut why)
        }
        (_, Reading::Total(None)) => {
            why.push_str("no value");
            None
        }
        (Target::Value(t), Reading::Total(Some(v))) => total_value(t, *v, current, ready, &mut why),
        (Target::AverageValue(t), Reading::Total(Some(v))) => {
            let v = *v;
            let ratio = if current == 0 {
                f64::INFINITY
            } else {
                milli(v) / (milli(t) * f64::from(current))
            };
            let _ = write!(
                why,
                "{v} / ({t} per instance × {current}) = ratio {ratio:.4}"
            );
            if current > 0 && within_tolerance(ratio) {
                let _ = write!(why, " (within tolerance {TOLERANCE}): stay at {current}");
                Some(current)
            } else {
                let n = ceil(milli(v) / milli(t));
                let _ = write!(why, "; ceil({v} / {t}) = {n}");
                Some(n)
            }
        }
    };
    (n, why)
}

/// A whole-service value against a target value: `ceil(ratio × ready)`
/// (`ceil(ratio)` from zero).
fn total_value(target: f64, value: f64, current: u32, ready: u32, why: &mut String) -> Option<u32> {
    let ratio = milli(value) / milli(target);
    let _ = write!(why, "{value} / target {target} = ratio {ratio:.4}");
    if current == 0 {
        let n = ceil(ratio);
        let _ = write!(why, "; from zero: ceil({ratio:.4}) = {n}");
        return Some(n);
    }
    if within_tolerance(ratio) {
        let _ = write!(why, " (within tolerance {TOLERANCE}): stay at {current}");
        return Some(current);
    }
    let n = ceil(ratio * f64::from(ready));
    let _ = write!(why, "; ceil({ratio:.4} × {ready} ready) = {n}");
    Some(n)
}

/// The change the autoscaler made in the last `period_ms` (ups and downs apart).
fn changed(history: &History, now: i64, period_ms: i64) -> (i64, i64) {
    let mut up = 0;
    let mut down = 0;
    for &(t, d) in &history.changes {
        if t > now - period_ms {
            if d > 0 {
                up += d;
            } else {
                down -= d;
            }
        }
    }
    (up, down)
}

/// The count at the start of a policy's period, and the policy's step from it.
fn period_start(p: &RatePolicy, current: i64, history: &History, now: i64) -> (i64, RatePolicy) {
    let period_ms = match *p {
        RatePolicy::Instances { period_ms, .. } | RatePolicy::Percent { period_ms, .. } => {
            period_ms
        }
    };
    let (up, down) = changed(history, now, period_ms);
    (current - up + down, *p)
}

/// The highest count the up policies allow now (never below `current`).
fn up_limit(rules: &Rules, current: u32, history: &History, now: i64) -> i64 {
    let current = i64::from(current);
    let allowed = rules
        .policies
        .iter()
        .map(|p| match period_start(p, current, history, now) {
            (start, RatePolicy::Instances { value, .. }) => start + i64::from(value),
            (start, RatePolicy::Percent { value, .. }) => {
                (start as f64 * (1.0 + f64::from(value) / 100.0)).ceil() as i64
            }
        });
    let limit = match rules.select {
        Select::Disabled => current,
        Select::Max => allowed.max().unwrap_or(current),
        Select::Min => allowed.min().unwrap_or(current),
    };
    limit.max(current)
}

/// The lowest count the down policies allow now (never above `current`).
fn down_limit(rules: &Rules, current: u32, history: &History, now: i64) -> i64 {
    let current = i64::from(current);
    let allowed = rules
        .policies
        .iter()
        .map(|p| match period_start(p, current, history, now) {
            (start, RatePolicy::Instances { value, .. }) => start - i64::from(value),
            (start, RatePolicy::Percent { value, .. }) => {
                (start as f64 * (1.0 - f64::from(value) / 100.0)) as i64
            }
        });
    // `Max` picks the policy allowing the largest change: the lowest floor.
    let limit = match rules.select {
        Select::Disabled => current,
        Select::Max => allowed.min().unwrap_or(current),
        Select::Min => allowed.max().unwrap_or(current),
    };
    limit.min(current)
}

/// Decides the count for a service: each metric's recommendation, the
/// largest of them, KEDA's activation to and from zero, the stabilization
/// windows over earlier recommendations, the rate policies, and the
/// `min`/`max` bounds — in that order, as the HPA applies them.
pub fn decide(policy: &Policy, seen: &Observation, history: &History, now: i64) -> Decision {
    let current = seen.current;
    let mut reason = String::new();
    // Out of bounds (the bounds changed, or someone scaled by hand): back
    // within them first, whatever the metrics say (as the HPA does).
    let bounded = current.clamp(policy.min, policy.max.max(policy.min));
    if bounded != current {
        let _ = write!(
            reason,
            "{current} is outside min {} and max {}: desired {bounded}",
            policy.min, policy.max
        );
        return Decision {
            desired: bounded,
            recommendation: bounded,
            active: false,
            reason,
        };
    }
    let mut best: Option<u32> = None;
    let mut active = false;
    for (metric, reading) in policy.metrics.iter().zip(&seen.readings) {
        let level = match reading {
            Reading::Total(v) => v.unwrap_or(0.0),
            Reading::PerInstance(r) => r.iter().filter_map(|r| r.value).sum(),
        };
        active |= level > metric.activation;
        let (n, why) = recommend(metric, reading, current, seen.ready);
        let _ = writeln!(reason, "{why}");
        if let Some(n) = n {
            best = Some(best.map_or(n, |b| b.max(n)));
        }
    }
    let Some(mut recommendation) = best else {
        let _ = writeln!(reason, "no metric can say: stay at {current}");
        return Decision {
            desired: current,
            recommendation: current,
            active,
            reason,
        };
    };
    if policy.metrics.len() > 1 {
        let _ = writeln!(reason, "largest recommendation: {recommendation}");
    }
    // To and from zero (only when the policy allows zero): at rest while
    // every metric is at or below its activation threshold — at once from
    // zero, after the cooldown otherwise; awake, at least one instance.
    if policy.min == 0 {
        let idle_for = now.saturating_sub(history.last_active_ms.unwrap_or(i64::MIN));
        if !active && (current == 0 || idle_for >= policy.behavior.cooldown_ms) {
            let _ = writeln!(
                reason,
                "every metric at or below its activation threshold{}: rest at 0",
                if current == 0 {
                    ""
                } else {
                    " for the cooldown"
                }
            );
            return Decision {
                desired: 0,
                recommendation: 0,
                active,
                reason,
            };
        }
        if recommendation == 0 {
            let _ = writeln!(reason, "not idle for the cooldown yet: at least 1");
        }
        recommendation = recommendation.max(1);
    }
    // Stabilization: growing takes the lowest recommendation of the up
    // window, shrinking the highest of the down window.
    let b = &policy.behavior;
    let mut up_rec = recommendation;
    let mut down_rec = recommendation;
    for &(t, r) in &history.recommendations {
        if t > now - b.up.stabilization_ms {
            up_rec = up_rec.min(r);
        }
        if t > now - b.down.stabilization_ms {
            down_rec = down_rec.max(r);
        }
    }
    let stabilized = current.max(up_rec).min(down_rec);
    if stabilized != recommendation {
        let _ = writeln!(
            reason,
            "stabilized to {stabilized} (lowest in the up window {up_rec}, highest in the down window {down_rec})"
        );
    }
    // Rate policies and bounds.
    let desired = if stabilized > current {
        let limit = up_limit(&b.up, current, history, now);
        let max = i64::from(policy.max).min(limit);
        let d = i64::from(stabilized).min(max).max(i64::from(policy.min));
        if i64::from(stabilized) > max {
            let by = if limit < i64::from(policy.max) {
                "the scale-up rate"
            } else {
                "max"
            };
            let _ = writeln!(reason, "limited to {d} by {by}");
        }
        d as u32
    } else if stabilized < current {
        let limit = down_limit(&b.down, current, history, now);
        let min = i64::from(policy.min).max(limit);
        let d = i64::from(stabilized).max(min).min(i64::from(policy.max));
        if i64::from(stabilized) < min {
            let by = if limit > i64::from(policy.min) {
                "the scale-down rate"
            } else {
                "min"
            };
            let _ = writeln!(reason, "limited to {d} by {by}");
        }
        d as u32
    } else {
        stabilized.clamp(policy.min, policy.max.max(policy.min))
    };
    let _ = write!(reason, "desired {desired} (now {current})");
    Decision {
        desired,
        recommendation,
        active,
        reason,
    }
}
