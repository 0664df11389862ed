//! PromQL conformance by comparison with the real thing: the same samples
//! (an OpenMetrics file with timestamps, backfilled into Debian's Prometheus
//! with `promtool tsdb create-blocks-from openmetrics`, and read into
//! steward's store by steward's parser) and the same expressions, evaluated
//! by both at the same times; every result must agree within float
//! tolerance. Range queries too.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use steward_metrics::exposition::{Format, parse};
use steward_metrics::promql::eval::{self, Value};
use steward_metrics::tsdb::head::Head;

fn testbed(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: start the test servers with `scripts/testbed up` and source `scripts/testbed env` (scripts/test does both)")
    })
}

/// A small deterministic generator (xorshift), so the data is the same each
/// run (the rules' comparison uses it too).
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const STEP: i64 = 15;

/// An hour of samples every 15 s ending at `end` (Unix seconds): counters
/// (one resets), gauges, a histogram, and a series that stops early.
fn data(end: i64) -> String {
    let start = end - 3600;
    let mut rng = Rng(0x5eed_cafe_f00d);
    let mut out = String::new();
    let times: Vec<i64> = (0..)
        .map(|i| start + i * STEP)
        .take_while(|t| *t <= end)
        .collect();
    out.push_str("# TYPE http_requests counter\n");
    for (instance, code, rate, reset) in [
        ("a", "200", 20, false),
        ("b", "200", 12, true),
        ("a", "500", 2, false),
        ("b", "500", 1, false),
    ] {
        let mut v = 0u64;
        for (i, t) in times.iter().enumerate() {
            v += rng.below(rate + 1);
            if reset && i == times.len() / 2 {
                v = rng.below(3);
            }
            out.push_str(&format!("http_requests_total{{code=\"{code}\",instance=\"{instance}\",job=\"api\"}} {v} {t}\n"));
        }
    }
    out.push_str("# TYPE queue_depth gauge\n");
    for queue in ["render", "mail"] {
        let mut v = 10.0f64;
        for t in &times {
            v = (v + rng.below(9) as f64 - 4.0).max(0.0) + 0.25;
            out.push_str(&format!(
                "queue_depth{{job=\"worker\",queue=\"{queue}\"}} {v} {t}\n"
            ));
        }
    }
    // Irregular gaps (5 s to 3 min): the edges of a range are far from its
    // samples, which is where rate's extrapolation rules differ.
    out.push_str("# TYPE sparse counter\n");
    let (mut t, mut v) = (start, 100u64);
    while t <= end {
        out.push_str(&format!("sparse_total{{job=\"api\"}} {v} {t}\n"));
        t += 5 + rng.below(176) as i64;
        v += rng.below(50);
    }
    out.push_str("# TYPE early_gauge gauge\n");
    for t in times.iter().take(times.len() / 3) {
        out.push_str(&format!(
            "early_gauge{{job=\"api\"}} {} {t}\n",
            rng.below(100)
        ));
    }
    out.push_str("# TYPE latency_seconds histogram\n");
    let bounds = ["0.05", "0.1", "0.5", "1", "+Inf"];
    for instance in ["a", "b"] {
        let mut counts = [0u64; 5];
        let mut sum = 0.0f64;
        let mut series: Vec<(i64, [u64; 5], f64)> = Vec::new();
        for t in &times {
            for _ in 0..rng.below(6) {
                let bucket = rng.below(5) as usize;
                for c in counts.iter_mut().skip(bucket) {
                    *c += 1;
                }
                sum += [0.03, 0.07, 0.3, 0.8, 2.0][bucket];
            }
            series.push((*t, counts, sum));
        }
        for (b, le) in bounds.iter().enumerate() {
            for (t, counts, _) in &series {
                out.push_str(&format!("latency_seconds_bucket{{instance=\"{instance}\",job=\"api\",le=\"{le}\"}} {} {t}\n", counts[b]));
            }
        }
        for (t, counts, _) in &series {
            out.push_str(&format!(
                "latency_seconds_count{{instance=\"{instance}\",job=\"api\"}} {} {t}\n",
                counts[4]
            ));
        }
        for (t, _, sum) in &series {
            out.push_str(&format!(
                "latency_seconds_sum{{instance=\"{instance}\",job=\"api\"}} {sum} {t}\n"
            ));
        }
    }
    out.push_str("# EOF\n");
    out
}

struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::Client {
    steward_net::http(steward_net::HttpOptions {
        timeout: Some(Duration::from_secs(30)),
        connect_timeout: Some(Duration::from_secs(2)),
        no_proxy: true,
    })
    .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's Prometheus on a free port, with `body` backfilled.
async fn prometheus(body: &str) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data.om");
    std::fs::write(&input, body).unwrap();
    let tsdb = dir.path().join("tsdb");
    let out = Command::new(testbed("STEWARD_TEST_PROMTOOL"))
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&tsdb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, "global: {}\n").unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(testbed("STEWARD_TEST_PROMETHEUS"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--storage.tsdb.retention.time=30d")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Prometheus {
        child,
        addr,
        _dir: dir,
    };
    let client = http();
    for _ in 0..300 {
        if let Ok(r) = client
            .get(format!("http://{}/-/ready", p.addr))
            .send()
            .await
            && r.status().is_success()
        {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("prometheus did not become ready");
}

/// Prometheus's answer to `/api/v1/PATH?PARAMS`.
async fn ask(
    client: &reqwest::Client,
    prom: &Prometheus,
    path: &str,
    params: &[(&str, &str)],
) -> serde_json::Value {
    client
        .get(format!("http://{}/api/v1/{path}", prom.addr))
        .query(params)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The same samples in steward's store, through steward's parser.
fn store(body: &str) -> Head {
    let e = parse(body, Format::OpenMetrics).unwrap();
    let mut head = Head::new();
    for s in &e.samples {
        let mut labels: Vec<(&str, &str)> = e
            .labels_of(s)
            .iter()
            .map(|l| (l.name, l.value.as_ref()))
            .collect();
        labels.push(("__name__", s.name));
        labels.sort();
        let r = head.series_ref(&labels);
        head.append(r, s.timestamp_ms.unwrap(), s.value).unwrap();
    }
    head
}

type Result = BTreeMap<Vec<(String, String)>, Vec<(i64, f64)>>;

fn parse_value(v: &serde_json::Value) -> (i64, f64) {
    let t = (v[0].as_f64().unwrap() * 1000.0).round() as i64;
    let s = v[1].as_str().unwrap();
    let f = match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s.parse().unwrap(),
    };
    (t, f)
}

fn labels_of(m: &serde_json::Value) -> Vec<(String, String)> {
    let mut l: Vec<(String, String)> = m
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default();
    l.sort();
    l
}

/// Prometheus's answer as label set → points.
fn theirs(data: &serde_json::Value) -> std::result::Result<Result, String> {
    if data["status"] != "success" {
        return Err(data["error"].as_str().unwrap_or("?").to_string());
    }
    let d = &data["data"];
    let mut out = Result::new();
    match d["resultType"].as_str().unwrap() {
        "scalar" => {
            out.insert(Vec::new(), vec![parse_value(&d["result"])]);
        }
        "vector" => {
            for s in d["result"].as_array().unwrap() {
                out.insert(labels_of(&s["metric"]), vec![parse_value(&s["value"])]);
            }
        }
        "matrix" => {
            for s in d["result"].as_array().unwrap() {
                out.insert(
                    labels_of(&s["metric"]),
                    s["values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(parse_value)
                        .collect(),
                );
            }
        }
        other => return Err(format!("result type {other}")),
    }
    Ok(out)
}

/// Our labels as the comparison keys them.
fn owned(l: &eval::Labels) -> Vec<(String, String)> {
    l.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn ours_instant(head: &Head, q: &str, t_ms: i64) -> std::result::Result<Result, String> {
    let mut out = Result::new();
    match eval::instant(head, q, t_ms)? {
        Value::Scalar(v) => {
            out.insert(Vec::new(), vec![(t_ms, v)]);
        }
        Value::Vector(v) => {
            for s in v {
                out.insert(owned(&s.labels), vec![(t_ms, s.value)]);
            }
        }
        Value::Matrix(m) => {
            for s in m {
                out.insert(owned(&s.labels), s.points);
            }
        }
        Value::String(_) => return Err("string".into()),
    }
    Ok(out)
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn agree(a: &Result, b: &Result) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((la, pa), (lb, pb))| {
            la == lb
                && pa.len() == pb.len()
                && pa.iter().zip(pb).all(|(x, y)| x.0 == y.0 && same(x.1, y.1))
        })
}

/// Expressions evaluated by both, at several times.
const EXPRESSIONS: &[&str] = &[
    // selectors, matchers, offsets
    "http_requests_total",
    "http_requests_total{code=\"200\"}",
    "http_requests_total{code!=\"200\"}",
    "http_requests_total{instance=~\"a|b\",code=~\"5..\"}",
    "http_requests_total{instance!~\"a\"}",
    "{__name__=~\"queue_.*\"}",
    "queue_depth offset 10m",
    "early_gauge",
    "http_requests_total[1m]",
    "queue_depth[2m] offset 5m",
    // counters and gauges over time
    "rate(http_requests_total[1m])",
    "rate(http_requests_total[5m])",
    "rate(http_requests_total[5m] offset 20m)",
    "irate(http_requests_total[1m])",
    "rate(sparse_total[5m])",
    "rate(sparse_total[3m])",
    "increase(sparse_total[2m])",
    "increase(sparse_total[10m])",
    "delta(sparse_total[4m])",
    "irate(sparse_total[5m])",
    "sparse_total",
    "count_over_time(sparse_total[10m])",
    "max_over_time(sparse_total[3m])",
    "avg by (job) (queue_depth)",
    "sum by (queue) (queue_depth) * 2",
    "topk(1, sparse_total)",
    "increase(http_requests_total[10m])",
    "delta(queue_depth[10m])",
    "idelta(queue_depth[5m])",
    "avg_over_time(queue_depth[10m])",
    "sum_over_time(queue_depth[5m])",
    "count_over_time(queue_depth[5m])",
    "min_over_time(queue_depth[10m])",
    "max_over_time(queue_depth[10m])",
    "last_over_time(queue_depth[5m])",
    // aggregations
    "sum(http_requests_total)",
    "sum by (instance) (rate(http_requests_total[5m]))",
    "sum without (instance) (rate(http_requests_total[5m]))",
    "avg by (code) (http_requests_total)",
    "max(queue_depth)",
    "min by (job) (queue_depth)",
    "count(http_requests_total)",
    "count by (code) (http_requests_total)",
    "stddev(queue_depth)",
    "stdvar(queue_depth)",
    "group by (job) (http_requests_total)",
    "topk(2, http_requests_total)",
    "bottomk(1, queue_depth)",
    "topk by (code) (1, rate(http_requests_total[5m]))",
    "quantile(0.5, http_requests_total)",
    "quantile by (instance) (0.9, rate(http_requests_total[5m]))",
    // binary operators
    "http_requests_total * 2",
    "2 - queue_depth",
    "queue_depth / 0",
    "queue_depth % 3",
    "queue_depth ^ 2",
    "1 + 2 * 3",
    "2 ^ 3 ^ 2",
    "queue_depth > 10",
    "queue_depth > bool 10",
    "10 < queue_depth",
    "queue_depth == bool 10.25",
    "rate(http_requests_total{code=\"500\"}[5m]) / rate(http_requests_total{code=\"200\"}[5m])",
    "rate(http_requests_total{code=\"500\"}[5m]) / ignoring (code) rate(http_requests_total{code=\"200\"}[5m])",
    "sum by (instance) (rate(http_requests_total{code=\"500\"}[5m])) / on (instance) sum by (instance) (rate(http_requests_total[5m]))",
    "rate(http_requests_total[5m]) / ignoring (code) group_left sum by (instance, job) (rate(http_requests_total[5m]))",
    "sum by (instance, job) (rate(http_requests_total[5m])) / ignoring (code) group_right rate(http_requests_total[5m])",
    "http_requests_total > on (instance) group_left sum by (instance) (queue_depth)",
    "http_requests_total and http_requests_total{code=\"200\"}",
    "http_requests_total unless http_requests_total{code=\"200\"}",
    "queue_depth or http_requests_total",
    "-queue_depth",
    // histograms
    "histogram_quantile(0.9, rate(latency_seconds_bucket[5m]))",
    "histogram_quantile(0.5, sum by (le) (rate(latency_seconds_bucket[5m])))",
    "histogram_quantile(0.99, sum by (le, instance) (rate(latency_seconds_bucket[10m])))",
    "rate(latency_seconds_sum[5m]) / rate(latency_seconds_count[5m])",
    // functions
    "abs(-queue_depth)",
    "ceil(queue_depth)",
    "floor(queue_depth)",
    "round(queue_depth)",
    "round(queue_depth, 5)",
    "sqrt(queue_depth)",
    "exp(queue_depth / 100)",
    "ln(queue_depth)",
    "log2(queue_depth)",
    "log10(queue_depth)",
    "clamp_min(queue_depth, 10)",
    "clamp_max(queue_depth, 10)",
    "clamp(queue_depth, 5, 10)",
    "time()",
    "vector(1)",
    "scalar(sum(queue_depth))",
    "absent(nonexistent{job=\"api\"})",
    "absent(queue_depth)",
    "label_replace(queue_depth, \"q\", \"$1-x\", \"queue\", \"(.*)\")",
    "label_replace(queue_depth, \"queue\", \"\", \"queue\", \"render\")",
    "sum(rate(http_requests_total[5m])) > bool 0",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expressions_agree_with_prometheus() {
    // An hour of data ending ten minutes ago (backfilled blocks must not
    // overlap what Prometheus's head would hold).
    let end = (steward_state::now_ms() / 1000 / 60) * 60 - 600;
    let body = data(end);
    let prom = prometheus(&body).await;
    let head = store(&body);
    let client = http();
    // Inside the data, just past its end (the lookback still sees the last
    // sample), beyond the lookback, and between two samples.
    let times = [end - 1800, end - 600 + 7, end, end + 120, end + 400];
    let mut disagreements = Vec::new();
    let mut compared = 0;
    let mut with_data = 0;
    for q in EXPRESSIONS {
        for t in times {
            let resp = ask(
                &client,
                &prom,
                "query",
                &[("query", q), ("time", &t.to_string())],
            )
            .await;
            let theirs = theirs(&resp);
            let ours = ours_instant(&head, q, t * 1000);
            compared += 1;
            if theirs.as_ref().is_ok_and(|r| !r.is_empty()) {
                with_data += 1;
            }
            match (&theirs, &ours) {
                (Ok(a), Ok(b)) if agree(a, b) => {}
                (Err(_), Err(_)) => {
                    disagreements.push(format!("{q} @ {t}: both failed: {theirs:?} / {ours:?}"))
                }
                _ => disagreements.push(format!(
                    "{q} @ {t}:\n  prometheus: {theirs:?}\n  steward:    {ours:?}"
                )),
            }
        }
    }
    // Range queries: a window crossing the counter reset and the data's end.
    let ranged = [
        "rate(http_requests_total[2m])",
        "increase(sparse_total[3m])",
        "sum by (code) (increase(http_requests_total[5m]))",
        "queue_depth",
        "histogram_quantile(0.9, sum by (le) (rate(latency_seconds_bucket[5m])))",
        "early_gauge",
    ];
    for q in ranged {
        let (start, stop, step) = (end - 2400, end + 360, 60);
        let resp = ask(
            &client,
            &prom,
            "query_range",
            &[
                ("query", q),
                ("start", &start.to_string()),
                ("end", &stop.to_string()),
                ("step", &step.to_string()),
            ],
        )
        .await;
        let theirs = theirs(&resp);
        let ours = eval::range(&head, q, start * 1000, stop * 1000, step * 1000).map(|v| {
            v.into_iter()
                .map(|s| (owned(&s.labels), s.points))
                .collect::<Result>()
        });
        compared += 1;
        match (&theirs, &ours) {
            (Ok(a), Ok(b)) if agree(a, b) => {}
            _ => disagreements.push(format!(
                "range {q}:\n  prometheus: {theirs:?}\n  steward:    {ours:?}"
            )),
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {compared} evaluations disagree:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert!(
        EXPRESSIONS.len() + ranged.len() >= 100,
        "{} expressions",
        EXPRESSIONS.len() + ranged.len()
    );
    assert!(compared >= 400, "{compared}");
    // Not a comparison of empty answers: most hold series.
    assert!(
        with_data * 10 >= compared * 7,
        "only {with_data} of {compared} answers hold data"
    );
    eprintln!("{compared} evaluations agree with Prometheus ({with_data} with data)");
}
