//! Scraping real servers: the test bed's nginx serving an exposition file,
//! and targets built here for what nginx will not do (OpenMetrics content
//! type, a body that never ends, a slow answer).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use steward_metrics::scrape::{Limits, ScrapeError, Scraper, Target, is_stale};
use steward_metrics::tsdb::head::{Head, MatchOp, Matcher};

fn testbed(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: start the test servers with `scripts/testbed up` and source `scripts/testbed env` (scripts/test does both)")
    })
}

fn client() -> reqwest::Client {
    steward_net::http(steward_net::HttpOptions {
        timeout: None,
        connect_timeout: Some(Duration::from_secs(2)),
        no_proxy: true,
    })
    .unwrap()
}

fn target(url: String) -> Target {
    Target {
        url,
        labels: vec![
            ("instance".into(), "i1".into()),
            ("job".into(), "api".into()),
        ],
        timeout: Duration::from_secs(5),
        limits: Limits::default(),
    }
}

/// Puts an exposition where the test bed's nginx serves it (`.txt`: text/plain).
fn served(name: &str, body: &str) -> String {
    let www = testbed("STEWARD_TEST_WWW");
    let file = format!("metrics-{name}-{}.txt", std::process::id());
    std::fs::write(std::path::Path::new(&www).join(&file), body).unwrap();
    format!("{}/{file}", testbed("STEWARD_TEST_NGINX_URL"))
}

/// A series as `(labels, samples)`.
type Found = (Vec<(String, String)>, Vec<(i64, f64)>);

fn select(head: &Mutex<Head>, name: &str) -> Vec<Found> {
    let m = Matcher::new("__name__", MatchOp::Eq, name).unwrap();
    head.lock()
        .unwrap()
        .select(&[m], i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|(l, s)| {
            (
                l.iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                s,
            )
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn nginx_serves_the_text_format_and_every_sample_gets_the_target_labels() {
    let url = served(
        "text",
        "# TYPE requests_total counter\nrequests_total{code=\"200\",job=\"inner\"} 7\nrequests_total{code=\"500\"} 1 1700000000000\n",
    );
    let head = Mutex::new(Head::new());
    let mut s = Scraper::new(target(url));
    let now = 1_800_000_000_000;
    let r = s.scrape(&client(), &head, now).await;
    assert!(r.up, "{r:?}");
    assert_eq!((r.scraped, r.added, r.rejected), (2, 2, 0));
    let got = select(&head, "requests_total");
    assert_eq!(
        got,
        [
            (
                labels(&[
                    ("__name__", "requests_total"),
                    ("code", "200"),
                    ("exported_job", "inner"),
                    ("instance", "i1"),
                    ("job", "api")
                ]),
                vec![(now, 7.0)]
            ),
            (
                labels(&[
                    ("__name__", "requests_total"),
                    ("code", "500"),
                    ("instance", "i1"),
                    ("job", "api")
                ]),
                // The target's own timestamp is kept.
                vec![(1_700_000_000_000, 1.0)]
            ),
        ]
    );
    assert_eq!(select(&head, "up")[0].1, [(now, 1.0)]);
    assert_eq!(select(&head, "scrape_samples_scraped")[0].1, [(now, 2.0)]);
    assert_eq!(select(&head, "scrape_series_added")[0].1, [(now, 2.0)]);
}

/// A target built here: answers every request with `content_type` and `body`
/// after `delay`.
async fn target_server(content_type: &'static str, body: String, delay: Duration) -> SocketAddr {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let body = body.clone();
            async move {
                tokio::time::sleep(delay).await;
                // Prometheus's Accept header arrived.
                let accept = headers
                    .get("accept")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                assert!(
                    accept.starts_with("application/openmetrics-text;version=1.0.0"),
                    "{accept}"
                );
                ([("content-type", content_type)], body)
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn openmetrics_is_read_as_openmetrics_and_a_malformed_body_stores_nothing() {
    const OM: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let good = target_server(
        OM,
        "# TYPE jobs counter\njobs_total 3\njobs_created 1.5\n# EOF\n".into(),
        Duration::ZERO,
    )
    .await;
    let head = Mutex::new(Head::new());
    let mut s = Scraper::new(target(format!("http://{good}/metrics")));
    let r = s.scrape(&client(), &head, 1000).await;
    assert!(r.up, "{r:?}");
    assert_eq!(select(&head, "jobs_total")[0].1, [(1000, 3.0)]);
    // The same body without `# EOF` is not OpenMetrics: the whole scrape fails.
    let bad = target_server(OM, "jobs_total 3\n".into(), Duration::ZERO).await;
    let head = Mutex::new(Head::new());
    let mut s = Scraper::new(target(format!("http://{bad}/metrics")));
    let r = s.scrape(&client(), &head, 1000).await;
    assert!(!r.up);
    assert!(
        matches!(&r.error, Some(ScrapeError::Parse(e)) if e.message.contains("# EOF")),
        "{r:?}"
    );
    assert!(select(&head, "jobs_total").is_empty());
    assert_eq!(select(&head, "up")[0].1, [(1000, 0.0)]);
}

#[tokio::test]
async fn limits_fail_the_scrape_whole() {
    let body: String = (0..11).map(|i| format!("m{{i=\"{i}\"}} 1\n")).collect();
    let url = served("limits", &body);
    let head = Mutex::new(Head::new());
    let mut t = target(url.clone());
    t.limits.samples = 10;
    let r = Scraper::new(t).scrape(&client(), &head, 1000).await;
    assert_eq!(
        r.error,
        Some(ScrapeError::SampleLimit {
            limit: 10,
            found: 11
        })
    );
    assert!(select(&head, "m").is_empty(), "nothing stored");
    let mut t = target(url.clone());
    t.limits.labels = 3; // __name__, i, instance, job: 4
    let r = Scraper::new(t).scrape(&client(), &head, 1000).await;
    assert!(
        matches!(r.error, Some(ScrapeError::LabelLimit { found: 4, .. })),
        "{r:?}"
    );
    let mut t = target(url);
    t.limits.body_bytes = 50;
    let r = Scraper::new(t).scrape(&client(), &head, 1000).await;
    assert_eq!(r.error, Some(ScrapeError::TooLarge(50)));
    assert!(select(&head, "m").is_empty());
}

#[tokio::test]
async fn a_slow_target_times_out() {
    let slow = target_server(
        "text/plain; version=0.0.4",
        "a 1\n".into(),
        Duration::from_secs(30),
    )
    .await;
    let mut t = target(format!("http://{slow}/metrics"));
    t.timeout = Duration::from_millis(300);
    let head = Mutex::new(Head::new());
    let r = Scraper::new(t).scrape(&client(), &head, 1000).await;
    assert_eq!(
        r.error,
        Some(ScrapeError::Timeout(Duration::from_millis(300)))
    );
}

/// A series that leaves the target, and every series of a failed scrape,
/// gets Prometheus's staleness marker at that scrape's time.
#[tokio::test]
async fn vanished_series_and_failed_scrapes_mark_series_stale() {
    let url = served("stale", "a 1\nb 2\n");
    let head = Mutex::new(Head::new());
    let mut s = Scraper::new(target(url.clone()));
    assert!(s.scrape(&client(), &head, 1000).await.up);
    served("stale", "a 3\n");
    assert!(s.scrape(&client(), &head, 2000).await.up);
    let b = &select(&head, "b")[0].1;
    assert_eq!(b[0], (1000, 2.0));
    assert!(b[1].0 == 2000 && is_stale(b[1].1), "{b:?}");
    // Now the target breaks: `a` is stale too.
    s.target.url = format!(
        "{}/nowhere-{}",
        testbed("STEWARD_TEST_NGINX_URL"),
        std::process::id()
    );
    let r = s.scrape(&client(), &head, 3000).await;
    assert_eq!(r.error, Some(ScrapeError::Status(404)));
    let a = &select(&head, "a")[0].1;
    assert_eq!(a[..2], [(1000, 1.0), (2000, 3.0)]);
    assert!(a[2].0 == 3000 && is_stale(a[2].1), "{a:?}");
    // Another failure marks nothing twice.
    s.scrape(&client(), &head, 4000).await;
    assert_eq!(select(&head, "a")[0].1.len(), 3);
    // Back, with `a` and a new `c`: `a` resumes, `b` gets no second marker.
    s.target.url = url;
    served("stale", "a 5\nc 6\n");
    assert!(s.scrape(&client(), &head, 5000).await.up);
    assert_eq!(select(&head, "a")[0].1[3], (5000, 5.0));
    assert_eq!(select(&head, "b")[0].1.len(), 2);
    // `a` leaves: marked stale once, at the scrape that misses it; `c` not.
    served("stale", "c 7\n");
    assert!(s.scrape(&client(), &head, 6000).await.up);
    assert!(s.scrape(&client(), &head, 7000).await.up);
    let a = &select(&head, "a")[0].1;
    assert_eq!(a.len(), 5, "{a:?}");
    assert!(a[4].0 == 6000 && is_stale(a[4].1), "{a:?}");
    let c = &select(&head, "c")[0].1;
    assert_eq!(c[..], [(5000, 6.0), (6000, 7.0), (7000, 7.0)]);
}

/// `scrape.service.SERVICE` through its controller: the ready instances the
/// fleet's state lists are scraped, labelled with `service` and `instance`;
/// one that is no longer ready has its series marked stale, and a starting
/// one is not scraped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_s_ready_instances_are_scraped_through_the_fleet_state() {
    use std::sync::Arc;
    use steward_runtime::Controller;
    use steward_state::{FleetState, InstanceRow, InstanceState, Store};

    let one = target_server(
        "text/plain; version=0.0.4",
        "inflight 1\n".into(),
        Duration::ZERO,
    )
    .await;
    let two = target_server(
        "text/plain; version=0.0.4",
        "inflight 2\n".into(),
        Duration::ZERO,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let row = |id: &str, addr: SocketAddr, state: InstanceState| InstanceRow {
        id: id.into(),
        service: "api".into(),
        digest: "d".into(),
        state,
        addr: addr.to_string(),
        provider: serde_json::Value::Null,
        created_ms: 0,
        ready_ms: None,
        updated_ms: 0,
        reason: None,
    };
    store
        .fleet_put_instance(&row("api-1", one, InstanceState::Ready))
        .unwrap();
    store
        .fleet_put_instance(&row("api-2", two, InstanceState::Starting))
        .unwrap();
    let head: steward_metrics::controller::Series = Default::default();
    let metrics = steward_spec::ServiceMetrics {
        path: "/metrics".into(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        limits: steward_spec::ScrapeLimits::default(),
    };
    let mut c = steward_metrics::controller::ServiceScrape::new(
        "api",
        metrics,
        store.clone(),
        client(),
        head.clone(),
    );
    c.reconcile().await.unwrap();
    let got = select(&head, "inflight");
    assert_eq!(got.len(), 1, "only the ready instance: {got:?}");
    assert_eq!(
        got[0].0,
        labels(&[
            ("__name__", "inflight"),
            ("instance", &one.to_string()),
            ("job", "api"),
            ("service", "api")
        ])
    );
    // api-2 is ready now, api-1 is gone.
    store
        .fleet_put_instance(&row("api-2", two, InstanceState::Ready))
        .unwrap();
    store.fleet_delete_instance("api-1").unwrap();
    c.reconcile().await.unwrap();
    let got = select(&head, "inflight");
    assert_eq!(got.len(), 2);
    let first = got
        .iter()
        .find(|(l, _)| l.contains(&("instance".into(), one.to_string())))
        .unwrap();
    assert!(is_stale(first.1.last().unwrap().1), "{first:?}");
    let second = got
        .iter()
        .find(|(l, _)| l.contains(&("instance".into(), two.to_string())))
        .unwrap();
    assert_eq!(second.1.len(), 1);
    assert_eq!(second.1[0].1, 2.0);
}

#[test]
fn the_stores_series_limit_fails_a_scrape_that_would_pass_it() {
    use steward_metrics::exposition::Format;
    let mut head = Head::new();
    head.set_series_limit(5);
    let mut s = Scraper::new(target("http://127.0.0.1:9/metrics".into()));
    // Three series fit; the same three again cost nothing new.
    let three: String = (0..3).map(|i| format!("m{{i=\"{i}\"}} 1\n")).collect();
    assert_eq!(
        s.ingest(&mut head, Format::Text, &three, 1000).unwrap().0,
        3
    );
    assert_eq!(
        s.ingest(&mut head, Format::Text, &three, 2000).unwrap().1,
        0
    );
    // Three more would make six: the scrape fails whole, nothing stored.
    let six: String = (0..6).map(|i| format!("m{{i=\"{i}\"}} 2\n")).collect();
    let e = s.ingest(&mut head, Format::Text, &six, 3000).unwrap_err();
    assert!(
        matches!(e, ScrapeError::SeriesLimit { limit: 5, new: 3 }),
        "{e}"
    );
    assert!(e.to_string().contains("max_series"), "{e}");
    assert_eq!(head.series_count(), 3);
    // Without the limit they fit.
    head.set_series_limit(0);
    assert_eq!(s.ingest(&mut head, Format::Text, &six, 4000).unwrap().1, 3);
}
