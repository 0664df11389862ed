//! The autoscaler's decision against the examples in the Kubernetes
//! Horizontal Pod Autoscaler documentation (the algorithm details, the
//! missing-metric and not-ready rules, the stabilization window and the
//! scaling-policy examples) and KEDA's activation to and from zero, then
//! properties over random policies and readings with a fake clock.

use proptest::prelude::*;
use steward_metrics::autoscale::*;

const S: i64 = 1000;
const NOW: i64 = 1_800_000_000_000;

fn rps(values: &[f64]) -> Reading {
    Reading::PerInstance(
        values
            .iter()
            .map(|v| InstanceReading {
                ready: true,
                value: Some(*v),
            })
            .collect(),
    )
}

fn policy(min: u32, max: u32, target: Target) -> Policy {
    Policy {
        min,
        max,
        metrics: vec![Metric {
            name: "m".into(),
            target,
            activation: 0.0,
        }],
        behavior: Behavior::default(),
    }
}

fn seen(current: u32, reading: Reading) -> Observation {
    Observation {
        current,
        ready: current,
        readings: vec![reading],
    }
}

fn desired(p: &Policy, o: &Observation, h: &History) -> u32 {
    decide(p, o, h, NOW).desired
}

/// "if the current metric value is 200m, and the desired value is 100m, the
/// number of replicas will be doubled … If the current value is instead 50m,
/// you'll halve the number of replicas."
#[test]
fn double_at_twice_the_target_and_halve_at_half() {
    let p = policy(1, 100, Target::AverageValue(0.1));
    let d = decide(
        &p,
        &seen(3, rps(&[0.2, 0.2, 0.2])),
        &History::default(),
        NOW,
    );
    assert_eq!(d.desired, 6, "{}", d.reason);
    assert!(d.reason.contains("ceil(2.0000 × 3) = 6"), "{}", d.reason);
    assert_eq!(
        desired(&p, &seen(4, rps(&[0.05; 4])), &History::default()),
        2
    );
}

/// "The control plane skips any scaling action if the ratio is sufficiently
/// close to 1.0 (within a globally-configurable tolerance, 0.1 by default)."
#[test]
fn a_ratio_within_the_tolerance_changes_nothing() {
    let p = policy(1, 100, Target::AverageValue(100.0));
    let h = History::default();
    assert_eq!(desired(&p, &seen(10, rps(&[109.0; 10])), &h), 10);
    assert_eq!(desired(&p, &seen(10, rps(&[91.0; 10])), &h), 10);
    assert_eq!(desired(&p, &seen(10, rps(&[111.0; 10])), &h), 12);
    assert_eq!(desired(&p, &seen(10, rps(&[89.0; 10])), &h), 9);
}

/// "If there were any missing metrics, the control plane recomputes the
/// average more conservatively, assuming those pods were consuming 100% of
/// the desired value in case of a scale down, and 0% in case of a scale up …
/// If the new ratio reverses the scale direction, or is within the
/// tolerance, the controller doesn't take any scaling action."
#[test]
fn missing_values_dampen_a_change_or_cancel_it() {
    let p = policy(1, 100, Target::AverageValue(50.0));
    let h = History::default();
    let with_missing = |values: &[f64]| {
        let mut r: Vec<InstanceReading> = values
            .iter()
            .map(|v| InstanceReading {
                ready: true,
                value: Some(*v),
            })
            .collect();
        r.push(InstanceReading {
            ready: true,
            value: None,
        });
        seen(r.len() as u32, Reading::PerInstance(r))
    };
    // Growing: 60 × 3 → ratio 1.2; the missing one as 0 → 180 / 4 / 50 = 0.9: reversed.
    assert_eq!(desired(&p, &with_missing(&[60.0; 3]), &h), 4);
    // Growing: 100 × 3 → ratio 2; as 0 → 1.5 → ceil(1.5 × 4) = 6.
    assert_eq!(desired(&p, &with_missing(&[100.0; 3]), &h), 6);
    // Shrinking: 20 × 3 → 0.4; as the target → 110 / 4 / 50 = 0.55 → ceil(2.2) = 3.
    assert_eq!(desired(&p, &with_missing(&[20.0; 3]), &h), 3);
}

/// "if any not-yet-ready pods were present, and the workload would have
/// scaled up without factoring in missing metrics or not-yet-ready pods,
/// the controller conservatively assumes that the not-yet-ready pods are
/// consuming 0% of the desired metric."
#[test]
fn instances_not_ready_count_as_idle_when_growing() {
    let p = policy(1, 100, Target::AverageValue(50.0));
    let mut r = vec![
        InstanceReading {
            ready: true,
            value: Some(100.0),
        };
        2
    ];
    r.extend(
        [InstanceReading {
            ready: false,
            value: Some(500.0),
        }; 2],
    );
    let o = Observation {
        current: 4,
        ready: 2,
        readings: vec![Reading::PerInstance(r.clone())],
    };
    // 200 / 4 / 50 = 1.0 once the two starting instances count as 0.
    assert_eq!(desired(&p, &o, &History::default()), 4);
    // When shrinking they are left out, not filled in.
    for x in r.iter_mut().filter(|x| x.ready) {
        x.value = Some(10.0);
    }
    let o = Observation {
        readings: vec![Reading::PerInstance(r)],
        ..o
    };
    assert_eq!(desired(&p, &o, &History::default()), 1);
}

/// "the HPA controller … will choose the largest recommendation across metrics."
#[test]
fn the_largest_recommendation_across_metrics_wins() {
    let mut p = policy(1, 100, Target::AverageValue(10.0));
    p.metrics.push(Metric {
        name: "queue".into(),
        target: Target::AverageValue(5.0),
        activation: 0.0,
    });
    let o = Observation {
        current: 2,
        ready: 2,
        readings: vec![rps(&[5.0, 5.0]), Reading::Total(Some(35.0))],
    };
    let d = decide(&p, &o, &History::default(), NOW);
    // requests say ceil(0.5 × 2) = 1; the queue says ceil(35 / 5) = 7.
    assert_eq!(
        d.desired, 6,
        "limited by the default rate: 2 + 4\n{}",
        d.reason
    );
    assert_eq!(d.recommendation, 7);
    assert!(
        d.reason.contains("largest recommendation: 7"),
        "{}",
        d.reason
    );
}

/// A total against a per-instance target: a queue's backlog per worker.
#[test]
fn a_backlog_per_worker() {
    let p = policy(1, 100, Target::AverageValue(10.0));
    assert_eq!(
        desired(
            &p,
            &seen(2, Reading::Total(Some(35.0))),
            &History::default()
        ),
        4
    );
    // 21 for 2 workers of 10: ratio 1.05, within tolerance.
    assert_eq!(
        desired(
            &p,
            &seen(2, Reading::Total(Some(21.0))),
            &History::default()
        ),
        2
    );
    // No reading: nothing to say, nothing done.
    assert_eq!(
        desired(&p, &seen(3, Reading::Total(None)), &History::default()),
        3
    );
}

/// "the highest recommendation from within [the stabilization] window is
/// used": a dip inside the window does not shrink the service.
#[test]
fn shrinking_waits_for_the_stabilization_window() {
    let p = policy(1, 100, Target::AverageValue(10.0));
    let low = seen(8, rps(&[3.0; 8]));
    let h = History {
        recommendations: vec![(NOW - 200 * S, 8), (NOW - 100 * S, 5)],
        ..History::default()
    };
    let d = decide(&p, &low, &h, NOW);
    assert_eq!(d.desired, 8, "{}", d.reason);
    assert_eq!(d.recommendation, 3);
    // 150 s later the 8 has left the window; the 5 has not.
    assert_eq!(decide(&p, &low, &h, NOW + 150 * S).desired, 5);
    assert_eq!(decide(&p, &low, &h, NOW + 250 * S).desired, 3);
}

/// The documentation's scale-down example: policies of 10 % and of 5 pods per
/// minute, the one allowing the larger change applies. "if there are 80
/// replicas and the target has to be scaled down to 10 replicas then during
/// the first step 8 replicas will be reduced. In the next iteration when the
/// number of replicas is 72, 10% of the pods is 7.2 but the number is rounded
/// up to 8."
#[test]
fn scale_down_policies_from_the_documentation() {
    let mut p = policy(1, 100, Target::AverageValue(10.0));
    p.behavior.down = Rules {
        stabilization_ms: 0,
        select: Select::Max,
        policies: vec![
            RatePolicy::Percent {
                value: 10,
                period_ms: 60 * S,
            },
            RatePolicy::Instances {
                value: 5,
                period_ms: 60 * S,
            },
        ],
    };
    let mut h = History::default();
    let first = decide(&p, &seen(80, rps(&[1.25; 80])), &h, NOW);
    assert_eq!(first.desired, 72, "{}", first.reason);
    assert!(first.reason.contains("scale-down rate"), "{}", first.reason);
    h.changes.push((NOW, -8));
    // Within the same minute the period's budget is spent.
    assert_eq!(
        decide(&p, &seen(72, rps(&[1.0; 72])), &h, NOW + 30 * S).desired,
        72
    );
    // A minute later: 72 × 0.9 = 64.8 → 64 (8 fewer).
    assert_eq!(
        decide(&p, &seen(72, rps(&[1.0; 72])), &h, NOW + 61 * S).desired,
        64
    );
    // Below 50 the 5-pod policy allows more than 10 %.
    assert_eq!(
        decide(&p, &seen(40, rps(&[1.0; 40])), &History::default(), NOW).desired,
        35
    );
    // `Min` picks the smaller change; `Disabled` none.
    p.behavior.down.select = Select::Min;
    assert_eq!(
        decide(&p, &seen(40, rps(&[1.0; 40])), &History::default(), NOW).desired,
        36
    );
    p.behavior.down.select = Select::Disabled;
    assert_eq!(
        decide(&p, &seen(40, rps(&[1.0; 40])), &History::default(), NOW).desired,
        40
    );
}

/// The documentation's scale-up examples: the default allows "4 pods or a
/// 100% of the currently running replicas … whichever is higher" per 15 s;
/// a 900 % policy "allows 9 times the current number of pods to be added".
#[test]
fn scale_up_policies_from_the_documentation() {
    let p = policy(1, 1000, Target::AverageValue(1.0));
    let h = History::default();
    assert_eq!(desired(&p, &seen(1, rps(&[100.0])), &h), 5);
    assert_eq!(desired(&p, &seen(10, rps(&[100.0; 10])), &h), 20);
    let mut p = p;
    p.behavior.up.policies = vec![RatePolicy::Percent {
        value: 900,
        period_ms: 60 * S,
    }];
    assert_eq!(desired(&p, &seen(1, rps(&[100.0])), &h), 10);
    // Changes already made in the period count against it.
    let h = History {
        changes: vec![(NOW - 10 * S, 9)],
        ..History::default()
    };
    assert_eq!(desired(&p, &seen(10, rps(&[100.0; 10])), &h), 10);
}

#[test]
fn max_and_min_bound_every_decision() {
    let p = policy(2, 5, Target::AverageValue(1.0));
    let h = History::default();
    let d = decide(&p, &seen(4, rps(&[100.0; 4])), &h, NOW);
    assert_eq!(d.desired, 5);
    assert!(d.reason.contains("by max"), "{}", d.reason);
    assert_eq!(desired(&p, &seen(4, rps(&[0.0; 4])), &h), 2);
}

/// KEDA's activation: a worker pool rests at zero while the queue is empty,
/// wakes on the first message, and goes back to zero only after the cooldown.
#[test]
fn workers_scale_to_zero_and_wake() {
    let mut p = policy(0, 10, Target::AverageValue(10.0));
    p.metrics[0].activation = 0.0;
    let empty = Reading::Total(Some(0.0));
    let h = History::default();
    let d = decide(&p, &seen(0, empty.clone()), &h, NOW);
    assert_eq!((d.desired, d.active), (0, false), "{}", d.reason);
    let d = decide(&p, &seen(0, Reading::Total(Some(3.0))), &h, NOW);
    assert_eq!((d.desired, d.active), (1, true), "{}", d.reason);
    let d = decide(&p, &seen(0, Reading::Total(Some(35.0))), &h, NOW);
    assert_eq!(d.desired, 4, "{}", d.reason);
    // Empty again, but active 100 s ago: one stays.
    let h = History {
        last_active_ms: Some(NOW - 100 * S),
        ..History::default()
    };
    assert_eq!(desired(&p, &seen(3, empty.clone()), &h), 1);
    let h = History {
        last_active_ms: Some(NOW - 301 * S),
        ..History::default()
    };
    let d = decide(&p, &seen(3, empty), &h, NOW);
    assert_eq!(d.desired, 0, "{}", d.reason);
    // A higher activation threshold: small backlogs do not wake it.
    p.metrics[0].activation = 5.0;
    assert_eq!(
        desired(&p, &seen(0, Reading::Total(Some(4.0))), &History::default()),
        0
    );
}

fn arb_rules() -> impl Strategy<Value = Rules> {
    (
        0i64..600,
        prop_oneof![Just(Select::Max), Just(Select::Min), Just(Select::Disabled)],
        proptest::collection::vec(
            prop_oneof![
                (1u32..20, 1i64..120).prop_map(|(value, p)| RatePolicy::Instances {
                    value,
                    period_ms: p * S
                }),
                (prop_oneof![1u32..=100, Just(900)], 1i64..120).prop_map(|(value, p)| {
                    RatePolicy::Percent {
                        value,
                        period_ms: p * S,
                    }
                }),
            ],
            1..3,
        ),
    )
        .prop_map(|(w, select, policies)| Rules {
            stabilization_ms: w * S,
            select,
            policies,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the readings and the past: min ≤ desired ≤ max, and the
    /// count moves no faster than the policies allow.
    #[test]
    fn decisions_stay_within_bounds_and_rates(
        min in 0u32..5,
        span in 0u32..50,
        current in 0u32..60,
        values in proptest::collection::vec(0.0f64..1000.0, 0..60),
        target in 0.5f64..200.0,
        up in arb_rules(),
        down in arb_rules(),
        recs in proptest::collection::vec((0i64..900, 0u32..80), 0..10),
        changes in proptest::collection::vec((0i64..900, -20i64..20), 0..6),
    ) {
        let max = min + span.max(1);
        let p = Policy {
            min,
            max,
            metrics: vec![Metric { name: "m".into(), target: Target::AverageValue(target), activation: 0.0 }],
            behavior: Behavior { up, down, cooldown_ms: 300 * S },
        };
        let readings: Vec<f64> = values.into_iter().take(current as usize).collect();
        let h = History {
            recommendations: recs.iter().map(|(t, r)| (NOW - t * S, *r)).collect(),
            changes: changes.iter().map(|(t, c)| (NOW - t * S, *c)).collect(),
            last_active_ms: None,
        };
        let d = decide(&p, &seen(current, rps(&readings)), &h, NOW);
        prop_assert!(d.desired >= min && d.desired <= max, "{} not in {}..={}\n{}", d.desired, min, max, d.reason);
        if d.desired > current.max(min) {
            prop_assert!(p.behavior.up.select != Select::Disabled, "{}", d.reason);
        }
        if d.desired < current.min(max) {
            prop_assert!(p.behavior.down.select != Select::Disabled, "{}", d.reason);
        }
    }

    /// More load never asks for fewer instances (same past, same clock).
    #[test]
    fn more_load_never_means_fewer_instances(
        current in 1u32..30,
        base in proptest::collection::vec(0.0f64..500.0, 30),
        extra in 0.0f64..500.0,
        target in 1.0f64..100.0,
    ) {
        let p = policy(1, 100, Target::AverageValue(target));
        let before: Vec<f64> = base[..current as usize].to_vec();
        let mut after = before.clone();
        after[0] += extra;
        let h = History::default();
        let a = desired(&p, &seen(current, rps(&before)), &h);
        let b = desired(&p, &seen(current, rps(&after)), &h);
        prop_assert!(b >= a, "{} then {} with more load", a, b);
    }
}
