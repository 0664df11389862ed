//! Alerting rules by comparison with the real thing: random series and rules
//! (thresholds on gauges, sums and rates; `for`, `keep_firing_for`, rule
//! labels) evaluated by steward every minute, and what steward says fires at
//! each minute handed to Debian's `promtool test rules` as the expected
//! alerts of a rule unit test on the same series. promtool evaluates the rule
//! with Prometheus's own rule manager and fails on any difference.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;

use steward_metrics::promql::eval::{Value, instant};
use steward_metrics::rules::{AlertLabels, AlertState, RuleDef, RuleState, evaluate};
use steward_metrics::tsdb::head::Head;

use crate::promql::Rng;

const MINUTE: i64 = 60_000;

struct Scenario {
    /// Series (labels in PromQL form) and a value or nothing per minute.
    series: Vec<(String, Vec<Option<f64>>)>,
    expr: String,
    for_min: i64,
    keep_min: i64,
    labels: AlertLabels,
}

fn scenario(rng: &mut Rng, minutes: usize) -> Scenario {
    let jobs = 1 + rng.below(3) as usize;
    let mut series = Vec::new();
    let counters = rng.below(2) == 0;
    for j in 0..jobs {
        let name = if counters { "reqs_total" } else { "queue" };
        let mut values = Vec::new();
        let mut v = 0.0;
        for _ in 0..minutes {
            if rng.below(8) == 0 {
                values.push(None);
                continue;
            }
            if counters {
                v += rng.below(600) as f64;
            } else {
                v = rng.below(10) as f64;
            }
            values.push(Some(v));
        }
        series.push((format!("{name}{{job=\"j{j}\",env=\"e{}\"}}", j % 2), values));
    }
    let threshold = if counters {
        rng.below(5) + 2
    } else {
        rng.below(6) + 2
    };
    let expr = match (counters, rng.below(3)) {
        (false, 0) => format!("queue > {threshold}"),
        (false, 1) => format!("sum by (env) (queue) > {}", threshold + 3),
        (false, _) => format!("max_over_time(queue[3m]) >= {threshold}"),
        (true, 0) => format!("rate(reqs_total[3m]) > {threshold}"),
        (true, 1) => format!(
            "sum without (job) (rate(reqs_total[2m])) > {}",
            threshold + 2
        ),
        (true, _) => format!("increase(reqs_total[5m]) > {}", threshold * 60),
    };
    let mut labels = AlertLabels::new();
    if rng.below(2) == 0 {
        labels.insert("severity".into(), "page".into());
    }
    if rng.below(4) == 0 {
        labels.insert("team".into(), "core".into());
    }
    Scenario {
        series,
        expr,
        for_min: rng.below(4) as i64,
        keep_min: [0, 0, 1, 2][rng.below(4) as usize],
        labels,
    }
}

fn head_of(s: &Scenario) -> Head {
    let mut h = Head::new();
    for (sel, values) in &s.series {
        let (name, rest) = sel.split_once('{').unwrap();
        let mut pairs: Vec<(String, String)> = vec![("__name__".into(), name.into())];
        for kv in rest.trim_end_matches('}').split(',') {
            let (k, v) = kv.split_once('=').unwrap();
            pairs.push((k.into(), v.trim_matches('"').into()));
        }
        pairs.sort();
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = h.series_ref(&refs);
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v {
                h.append(r, i as i64 * MINUTE, *v).unwrap();
            }
        }
    }
    h
}

/// What steward says fires at each minute.
fn steward_firing(s: &Scenario, minutes: usize) -> Vec<Vec<AlertLabels>> {
    let head = head_of(s);
    let def = RuleDef {
        name: "Rule".into(),
        for_ms: s.for_min * MINUTE,
        keep_firing_for_ms: s.keep_min * MINUTE,
        labels: s.labels.clone(),
    };
    let mut state = RuleState::default();
    let mut out = Vec::new();
    for m in 0..minutes as i64 {
        let result = match instant(&head, &s.expr, m * MINUTE).unwrap() {
            Value::Vector(v) => v
                .into_iter()
                .map(|x| {
                    (
                        x.labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect::<AlertLabels>(),
                        x.value,
                    )
                })
                .collect(),
            other => panic!("{other:?}"),
        };
        evaluate(&def, &mut state, result, m * MINUTE).unwrap();
        out.push(
            state
                .active
                .values()
                .filter(|a| a.state == AlertState::Firing)
                .map(|a| {
                    let mut l = a.labels.clone();
                    l.remove("alertname");
                    l
                })
                .collect(),
        );
    }
    out
}

fn yaml_map(m: &BTreeMap<String, String>) -> String {
    let items: Vec<String> = m.iter().map(|(k, v)| format!("{k}: '{v}'")).collect();
    format!("{{{}}}", items.join(", "))
}

#[test]
fn alerts_fire_and_resolve_when_prometheus_says_they_do() {
    let promtool = std::env::var("STEWARD_TEST_PROMTOOL").unwrap_or_else(|_| {
        panic!("STEWARD_TEST_PROMTOOL is not set: start the test servers with `scripts/testbed up` and source `scripts/testbed env` (scripts/test does both)")
    });
    let dir = tempfile::tempdir().unwrap();
    let minutes = 24;
    let mut rng = Rng(0xa1e7_5eed_0042);
    let mut files = Vec::new();
    let mut fired_somewhere = 0;
    let mut resolved_somewhere = 0;
    for n in 0..40 {
        let s = scenario(&mut rng, minutes);
        let firing = steward_firing(&s, minutes);
        if firing.iter().any(|f| !f.is_empty()) {
            fired_somewhere += 1;
        }
        if firing
            .windows(2)
            .any(|w| w[0].iter().any(|a| !w[1].contains(a)))
        {
            resolved_somewhere += 1;
        }
        let mut rules = format!(
            "groups:\n- name: g\n  rules:\n  - alert: Rule\n    expr: '{}'\n    for: {}m\n",
            s.expr, s.for_min
        );
        if s.keep_min > 0 {
            writeln!(rules, "    keep_firing_for: {}m", s.keep_min).unwrap();
        }
        if !s.labels.is_empty() {
            writeln!(rules, "    labels: {}", yaml_map(&s.labels)).unwrap();
        }
        let rules_file = dir.path().join(format!("rules{n}.yml"));
        std::fs::write(&rules_file, rules).unwrap();
        let mut test = format!(
            "rule_files: [{}]\nevaluation_interval: 1m\ntests:\n- interval: 1m\n  input_series:\n",
            rules_file.display()
        );
        for (sel, values) in &s.series {
            let v: Vec<String> = values
                .iter()
                .map(|v| v.map_or("_".to_string(), |x| format!("{x}")))
                .collect();
            writeln!(test, "  - series: '{sel}'\n    values: '{}'", v.join(" ")).unwrap();
        }
        test.push_str("  alert_rule_test:\n");
        for (m, alerts) in firing.iter().enumerate() {
            writeln!(test, "  - eval_time: {m}m\n    alertname: Rule").unwrap();
            if alerts.is_empty() {
                test.push_str("    exp_alerts: []\n");
            } else {
                test.push_str("    exp_alerts:\n");
                for a in alerts {
                    writeln!(test, "    - exp_labels: {}", yaml_map(a)).unwrap();
                }
            }
        }
        let test_file = dir.path().join(format!("test{n}.yml"));
        std::fs::write(&test_file, test).unwrap();
        files.push(test_file);
    }
    // Scenarios that never fire or never resolve would prove little.
    assert!(
        fired_somewhere >= 15,
        "only {fired_somewhere} scenarios fire"
    );
    assert!(resolved_somewhere >= 8, "only {resolved_somewhere} resolve");
    let out = Command::new(&promtool)
        .args(["test", "rules"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool disagrees with steward:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
