//! The exposition parser against the examples in the two format
//! specifications (fixtures copied from the Prometheus documentation's
//! "Text format example" and the OpenMetrics 1.0 specification's examples,
//! with a stateset, an info and a gaugehistogram family added in the
//! specification's own syntax), malformed bodies that must fail whole, and
//! properties over generated expositions.

use std::borrow::Cow;

use proptest::prelude::*;
use steward_metrics::exposition::{Exposition, Format, MetricType, ParseError, Sample, parse};

/// One sample as `family-type name{labels} value [@ts] [# exemplar]`, labels as written.
fn show(e: &Exposition<'_>, s: &Sample<'_>) -> String {
    let fam = match s.family {
        Some(i) => e.families[i as usize].kind.as_str(),
        None => "-",
    };
    let labels: Vec<String> = e
        .labels_of(s)
        .iter()
        .map(|l| format!("{}={:?}", l.name, l.value))
        .collect();
    let mut out = format!("{fam} {}{{{}}} {}", s.name, labels.join(","), s.value);
    if let Some(ts) = s.timestamp_ms {
        out.push_str(&format!(" @{ts}"));
    }
    if let Some(e) = &s.exemplar {
        let labels: Vec<String> = e
            .labels
            .iter()
            .map(|l| format!("{}={:?}", l.name, l.value))
            .collect();
        out.push_str(&format!(" # {{{}}} {}", labels.join(","), e.value));
        if let Some(ts) = e.timestamp {
            out.push_str(&format!(" {ts}"));
        }
    }
    out
}

fn shown(body: &str, format: Format) -> Vec<String> {
    let e = parse(body, format).unwrap_or_else(|e| panic!("{e}"));
    e.samples.iter().map(|s| show(&e, s)).collect()
}

#[test]
fn the_text_format_example_from_the_prometheus_documentation() {
    let body = include_str!("fixtures/prometheus-docs.txt");
    let got = shown(body, Format::Text);
    let want = [
        r#"counter http_requests_total{method="post",code="200"} 1027 @1395066363000"#,
        r#"counter http_requests_total{method="post",code="400"} 3 @1395066363000"#,
        r#"- msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1458255915"#,
        r#"- metric_without_timestamp_and_labels{} 12.47"#,
        r#"- something_weird{problem="division by zero"} inf @-3982045"#,
        r#"histogram http_request_duration_seconds_bucket{le="0.05"} 24054"#,
        r#"histogram http_request_duration_seconds_bucket{le="0.1"} 33444"#,
        r#"histogram http_request_duration_seconds_bucket{le="0.2"} 100392"#,
        r#"histogram http_request_duration_seconds_bucket{le="0.5"} 129389"#,
        r#"histogram http_request_duration_seconds_bucket{le="1"} 133988"#,
        r#"histogram http_request_duration_seconds_bucket{le="+Inf"} 144320"#,
        r#"histogram http_request_duration_seconds_sum{} 53423"#,
        r#"histogram http_request_duration_seconds_count{} 144320"#,
        r#"summary rpc_duration_seconds{quantile="0.01"} 3102"#,
        r#"summary rpc_duration_seconds{quantile="0.05"} 3272"#,
        r#"summary rpc_duration_seconds{quantile="0.5"} 4773"#,
        r#"summary rpc_duration_seconds{quantile="0.9"} 9001"#,
        r#"summary rpc_duration_seconds{quantile="0.99"} 76656"#,
        r#"summary rpc_duration_seconds_sum{} 17560473"#,
        r#"summary rpc_duration_seconds_count{} 2693"#,
    ];
    assert_eq!(got, want);
    let e = parse(body, Format::Text).unwrap();
    let help: Vec<(&str, &str)> = e
        .families
        .iter()
        .map(|f| (f.name, f.help.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        help,
        [
            ("http_requests_total", "The total number of HTTP requests."),
            (
                "http_request_duration_seconds",
                "A histogram of the request duration."
            ),
            (
                "rpc_duration_seconds",
                "A summary of the RPC duration in seconds."
            ),
        ]
    );
}

#[test]
fn the_openmetrics_examples_from_the_specification() {
    let body = include_str!("fixtures/openmetrics-spec.txt");
    let got = shown(body, Format::OpenMetrics);
    let want = [
        r#"summary acme_http_router_request_seconds_sum{path="/api/v1",method="GET"} 9036.32"#,
        r#"summary acme_http_router_request_seconds_count{path="/api/v1",method="GET"} 807283"#,
        r#"summary acme_http_router_request_seconds_created{path="/api/v1",method="GET"} 1605281325"#,
        r#"summary acme_http_router_request_seconds_sum{path="/api/v2",method="POST"} 479.3"#,
        r#"summary acme_http_router_request_seconds_count{path="/api/v2",method="POST"} 34"#,
        r#"summary acme_http_router_request_seconds_created{path="/api/v2",method="POST"} 1605281325"#,
        r#"gauge go_goroutines{} 69"#,
        r#"counter process_cpu_seconds_total{} 4200722.46"#,
        r#"histogram foo_bucket{le="0.01"} 0"#,
        r#"histogram foo_bucket{le="0.1"} 8 # {} 0.054"#,
        r#"histogram foo_bucket{le="1"} 11 # {trace_id="KOO5S4vxi0o"} 0.67"#,
        r#"histogram foo_bucket{le="10"} 17 # {trace_id="oHg5SJYRHA0"} 9.8 1520879607.789"#,
        r#"histogram foo_bucket{le="+Inf"} 17"#,
        r#"histogram foo_count{} 17"#,
        r#"histogram foo_sum{} 324789.3"#,
        r#"histogram foo_created{} 1520430000.123"#,
        r#"stateset a_stateset{a_stateset="ready"} 1"#,
        r#"stateset a_stateset{a_stateset="waiting"} 0"#,
        r#"info build_info{version="1.2.3",revision="a\\b \"c\" \nd"} 1"#,
        r#"gaugehistogram temp_bucket{le="0"} 3 @1520879607789"#,
        r#"gaugehistogram temp_bucket{le="+Inf"} 5 @1520879607789"#,
        r#"gaugehistogram temp_gcount{} 5 @1520879607789"#,
        r#"gaugehistogram temp_gsum{} NaN @1520879607789"#,
    ];
    assert_eq!(got, want);
    let e = parse(body, Format::OpenMetrics).unwrap();
    let units: Vec<(&str, Option<&str>)> = e.families.iter().map(|f| (f.name, f.unit)).collect();
    assert_eq!(
        units[0],
        ("acme_http_router_request_seconds", Some("seconds"))
    );
    assert_eq!(units[2], ("process_cpu_seconds", Some("seconds")));
    assert_eq!(
        e.families[0].help.as_deref(),
        Some("Latency though all of ACME's HTTP request router.")
    );
    let kinds: Vec<MetricType> = e.families.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            MetricType::Summary,
            MetricType::Gauge,
            MetricType::Counter,
            MetricType::Histogram,
            MetricType::StateSet,
            MetricType::Info,
            MetricType::GaugeHistogram
        ]
    );
}

#[test]
fn label_values_borrow_from_the_body_unless_they_hold_an_escape() {
    let body = "a{x=\"plain ünïcode\",y=\"tab\\tstays\",z=\"q\\\"\"} 1\n";
    let e = parse(body, Format::Text).unwrap();
    let l = e.labels_of(&e.samples[0]);
    assert!(matches!(l[0].value, Cow::Borrowed("plain ünïcode")));
    // An escape the format does not know is kept as written, as Prometheus does.
    assert_eq!(l[1].value, "tab\\tstays");
    assert!(matches!(&l[2].value, Cow::Owned(v) if v == "q\""));
}

#[test]
fn the_text_format_allows_blanks_comments_and_a_trailing_comma() {
    let body = "  # just a comment\n#no space is a comment too\n\n \t a { x = \"1\" , } \t 2 \t 17 \t\nb{} -Inf\nc NaN\n";
    assert_eq!(
        shown(body, Format::Text),
        [r#"- a{x="1"} 2 @17"#, "- b{} -inf", "- c{} NaN"]
    );
    // No final line feed: still read (Prometheus reads it too).
    assert_eq!(shown("a 1", Format::Text), ["- a{} 1"]);
}

#[test]
fn duplicate_series_are_all_reported_for_the_ingester_to_judge() {
    let got = shown("a{x=\"1\"} 1\na{x=\"1\"} 2\n", Format::Text);
    assert_eq!(got, [r#"- a{x="1"} 1"#, r#"- a{x="1"} 2"#]);
}

fn error(body: &str, format: Format) -> ParseError {
    match parse(body, format) {
        Ok(e) => panic!("{body:?} parsed: {e:?}"),
        Err(e) => e,
    }
}

#[test]
fn malformed_text_fails_whole_and_says_where() {
    let cases: &[(&str, usize, usize, &str)] = &[
        ("ok 1\na{b=\"c\"}\n", 2, 9, "expected sample value"),
        ("a{b=\"c} 1\n", 1, 5, "not closed"),
        ("a{b=\"c\",b=\"d\"} 1\n", 1, 9, "label `b` appears twice"),
        ("a 1 2.5\n", 1, 5, "not a timestamp"),
        ("a one\n", 1, 3, "`one` is not a valid sample value"),
        ("a 1 2 3\n", 1, 7, "unexpected text"),
        ("a{1b=\"x\"} 1\n", 1, 3, "expected a label name"),
        ("a{b=\"x\" c=\"y\"} 1\n", 1, 9, "expected `,` or `}`"),
        ("1a 1\n", 1, 1, "expected a metric name"),
        ("# TYPE a counter\n# TYPE a gauge\n", 2, 8, "second TYPE"),
        ("# HELP a x\n# HELP a y\n", 2, 8, "second HELP"),
        ("# TYPE a countr\n", 1, 10, "`countr` is not a metric type"),
        ("# TYPE a stateset\n", 1, 10, "not a metric type"),
        ("a 0x1p3\n", 1, 3, "not a valid sample value"),
        ("a 1_000\n", 1, 3, "not a valid sample value"),
        ("a 1 # {x=\"y\"} 1\n", 1, 5, "not a timestamp"),
    ];
    for (body, line, column, needle) in cases {
        let e = error(body, Format::Text);
        assert!(
            e.message.contains(needle) && (e.line, e.column) == (*line, *column),
            "{body:?}: got {e} (line {}, column {}), want line {line}, column {column}: {needle}",
            e.line,
            e.column
        );
    }
}

#[test]
fn malformed_openmetrics_fails_whole_and_says_where() {
    let cases: &[(&str, usize, usize, &str)] = &[
        ("a 1\n", 2, 1, "does not end with `# EOF`"),
        ("", 1, 1, "does not end with `# EOF`"),
        ("a 1\n# EOF\nb 2\n", 3, 1, "nothing may follow"),
        ("a 1\n\nb 2\n# EOF\n", 2, 1, "blank lines"),
        ("# a comment\n# EOF\n", 1, 3, "allows only"),
        ("a  1\n# EOF\n", 1, 3, "expected sample value"),
        ("a{x = \"1\"} 1\n# EOF\n", 1, 4, "expected `=`"),
        (
            "# TYPE a_seconds gauge\n# UNIT a_seconds bytes\n# EOF\n",
            2,
            18,
            "not a suffix",
        ),
        (
            "# TYPE a untyped\n# EOF\n",
            1,
            10,
            "not an OpenMetrics type",
        ),
        (
            "a_total 1 # {x=\"y\"}\n# EOF\n",
            1,
            20,
            "expected a space before the exemplar's value",
        ),
        ("a 1 1e400000\n# EOF\n", 1, 5, "finite"),
        ("a 1 NaN\n# EOF\n", 1, 5, "finite"),
    ];
    for (body, line, column, needle) in cases {
        let e = error(body, Format::OpenMetrics);
        assert!(
            e.message.contains(needle) && (e.line, e.column) == (*line, *column),
            "{body:?}: got {e} (line {}, column {}), want line {line}, column {column}: {needle}",
            e.line,
            e.column
        );
    }
    let long = format!("a_total 1 # {{id=\"{}\"}} 1\n# EOF\n", "x".repeat(127));
    assert!(
        error(&long, Format::OpenMetrics)
            .message
            .contains("128 characters")
    );
    let fits = format!("a_total 1 # {{id=\"{}\"}} 1\n# EOF\n", "x".repeat(126));
    assert!(parse(&fits, Format::OpenMetrics).is_ok());
}

#[test]
fn openmetrics_accepts_an_empty_exposition_and_no_final_line_feed() {
    assert!(
        parse("# EOF\n", Format::OpenMetrics)
            .unwrap()
            .samples
            .is_empty()
    );
    assert_eq!(shown("a 1\n# EOF", Format::OpenMetrics), ["- a{} 1"]);
}

#[test]
fn the_format_comes_from_the_content_type() {
    for (ct, f) in [
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::OpenMetrics,
        ),
        ("Application/OpenMetrics-Text", Format::OpenMetrics),
        ("text/plain; version=0.0.4; charset=utf-8", Format::Text),
        ("", Format::Text),
        ("application/json", Format::Text),
    ] {
        assert_eq!(Format::from_content_type(ct), f, "{ct}");
    }
}

/// Writes a label value in exposition syntax.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever a writer puts in names, label values and values comes back.
    #[test]
    fn what_is_written_is_read_back(
        series in proptest::collection::vec(
            (
                "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
                proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,10}", "\\PC{0,12}|[\\\\\"\n]{0,4}", 0..4),
                prop_oneof![any::<f64>().prop_filter("finite", |v| v.is_finite()), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
                proptest::option::of(-1_000_000_000_000_000i64..1_000_000_000_000_000),
            ),
            0..20,
        ),
        open_metrics in any::<bool>(),
    ) {
        let mut body = String::new();
        for (name, labels, value, ts) in &series {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            body.push_str(&format!("{name}{{{}}} {value:?}", labels.join(",")));
            if let Some(ts) = ts {
                if open_metrics {
                    body.push_str(&format!(" {:.3}", *ts as f64 / 1000.0));
                } else {
                    body.push_str(&format!(" {ts}"));
                }
            }
            body.push('\n');
        }
        let format = if open_metrics {
            body.push_str("# EOF\n");
            Format::OpenMetrics
        } else {
            Format::Text
        };
        let e = parse(&body, format).map_err(|e| TestCaseError::fail(format!("{e}\n{body}")))?;
        prop_assert_eq!(e.samples.len(), series.len());
        for (s, (name, labels, value, ts)) in e.samples.iter().zip(&series) {
            prop_assert_eq!(s.name, name.as_str());
            let got: Vec<(&str, &str)> = e.labels_of(s).iter().map(|l| (l.name, l.value.as_ref())).collect();
            let want: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(s.value, *value);
            if open_metrics {
                // Seconds with three decimals: the milliseconds, within a float's rounding.
                if let (Some(got), Some(want)) = (s.timestamp_ms, ts) {
                    prop_assert!((got - want).abs() <= 1, "{} vs {}", got, want);
                } else {
                    prop_assert_eq!(s.timestamp_ms.is_some(), ts.is_some());
                }
            } else {
                prop_assert_eq!(s.timestamp_ms, *ts);
            }
        }
    }

    /// Anything at all: an answer or an error, never a panic.
    #[test]
    fn arbitrary_text_never_panics(body in "\\PC{0,200}|[a-z{}=\",# \n\\\\0-9.]{0,200}") {
        let _ = parse(&body, Format::Text);
        let _ = parse(&body, Format::OpenMetrics);
    }
}
