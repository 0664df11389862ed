//! Parsing a scrape: steward's parser against the `prometheus-parse` crate on
//! the same body, in one run; prints µs per sample for both and the ratio.
//!
//!   cargo bench -p steward-metrics --bench exposition [-- SERIES]
//!
//! The body is what a busy service exposes: counters and gauges with a few
//! labels, histograms with 12 buckets, HELP and TYPE lines — SERIES samples
//! (default 10,000) in the Prometheus text format.

use std::hint::black_box;
use std::time::{Duration, Instant};

fn body(series: usize) -> String {
    let mut out = String::new();
    let mut n = 0;
    let mut family = 0;
    while n < series {
        family += 1;
        match family % 3 {
            0 => {
                out.push_str(&format!(
                    "# HELP http_requests_{family}_total Requests served.\n# TYPE http_requests_{family}_total counter\n"
                ));
                for i in 0..20 {
                    out.push_str(&format!(
                        "http_requests_{family}_total{{method=\"GET\",code=\"{}\",handler=\"/api/v1/items/{i}\"}} {}\n",
                        200 + i % 5,
                        1000 + i * 37
                    ));
                    n += 1;
                }
            }
            1 => {
                out.push_str(&format!(
                    "# HELP queue_depth_{family} Jobs waiting.\n# TYPE queue_depth_{family} gauge\n"
                ));
                for i in 0..10 {
                    out.push_str(&format!(
                        "queue_depth_{family}{{queue=\"q{i}\"}} {}.5\n",
                        i * 3
                    ));
                    n += 1;
                }
            }
            _ => {
                out.push_str(&format!(
                    "# HELP latency_{family}_seconds Request latency.\n# TYPE latency_{family}_seconds histogram\n"
                ));
                for route in 0..3 {
                    let mut cum = 0;
                    for le in [
                        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
                        "10", "+Inf",
                    ] {
                        cum += 7;
                        out.push_str(&format!(
                            "latency_{family}_seconds_bucket{{route=\"r{route}\",le=\"{le}\"}} {cum}\n"
                        ));
                    }
                    out.push_str(&format!(
                        "latency_{family}_seconds_sum{{route=\"r{route}\"}} 12.5\n"
                    ));
                    out.push_str(&format!(
                        "latency_{family}_seconds_count{{route=\"r{route}\"}} {cum}\n"
                    ));
                    n += 14;
                }
            }
        }
    }
    out
}

/// Runs `f` repeatedly for about `budget` and returns the time per call.
fn time(budget: Duration, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut samples = f(); // warm-up
    let start = Instant::now();
    let mut runs = 0u32;
    while start.elapsed() < budget {
        samples = black_box(f());
        runs += 1;
    }
    (start.elapsed() / runs, samples)
}

fn main() {
    let series: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let text = body(series);
    let budget = Duration::from_secs(3);
    let (ours, n_ours) = time(budget, || {
        steward_metrics::exposition::parse(&text, steward_metrics::exposition::Format::Text)
            .expect("steward parses it")
            .samples
            .len()
    });
    // For profiling steward's side alone: STEWARD_BENCH_ONLY=steward.
    if std::env::var("STEWARD_BENCH_ONLY").is_ok_and(|v| v == "steward") {
        println!(
            "steward {:.3} µs/sample",
            ours.as_secs_f64() * 1e6 / n_ours as f64
        );
        return;
    }
    let (theirs, n_theirs) = time(budget, || {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines)
            .expect("prometheus-parse parses it")
            .samples
            .len()
    });
    // Per sample line for both (prometheus-parse folds a histogram's lines
    // into one value, so its own count is smaller).
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n_ours as f64;
    println!(
        "body: {} bytes, {n_ours} sample lines (prometheus-parse returns {n_theirs} values)",
        text.len()
    );
    println!("steward          {:>8.3} µs/sample", per(ours));
    println!("prometheus-parse {:>8.3} µs/sample", per(theirs));
    println!(
        "prometheus-parse / steward = {:.1}x",
        per(theirs) / per(ours)
    );
}
